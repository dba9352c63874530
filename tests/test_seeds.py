"""`python -m nsrom_lib results --seeds`: the pipeline once per seed, then the summary over seeds
(`nsrom_lib.compare.summarise_seeds`), on hand-made run folders; the pipeline call is replaced
by a fake that writes what the results stage writes, so no model trains here."""

from __future__ import annotations

import json
import math

import pytest

from nsrom_lib import compare as CMP
from nsrom_lib.cli import main
from nsrom_lib.config import make_config
from nsrom_lib.pipeline import (
    LATER_ROWS,
    RESULT_ROWS,
    TARGETS,
    open_run,
    results_checks,
    stored_checks,
)
from nsrom_lib.pipeline import report as REPORT

# upper_bound, be_round1, pom_round1, nsrm_round2, nsrm_round2_no_glore: the rows every
# metrics.json has (those of the OAA ablation only with `cam=`)
VAL = tuple(k for k in RESULT_ROWS if k not in LATER_ROWS)


def _metrics(mious, ns=0.2, label_miou=0.5, be_ns=0.05, cam=None, cam_label_miou=0.4):
    """A metrics.json dict as the results stage writes it (the fields the summary reads);
    cam: the val mIoU of round 1 on the CAM-source labels (None: a metrics.json from before the
    OAA ablation, without its rows)."""
    m = {k: dict(miou=v, ratio_to_upper_bound=v / mious[0], nonsalient_recall=ns,
                 salient_recall=0.9, title=k, stage=k) for k, v in zip(VAL, mious, strict=True)}
    labels = ("be_labels", "pom_labels", "masked_labels")
    if cam is not None:
        m["pom_round1_cam"] = dict(miou=cam, ratio_to_upper_bound=cam / mious[0],
                                   nonsalient_recall=ns, salient_recall=0.9, title="cam r1",
                                   stage="seg1/cam")
        labels += tuple(k for k in LATER_ROWS if "_labels" in k)
    for k in labels:
        m[k] = dict(precision=0.9, coverage=0.6, ignore_share=0.2, stage=k,
                    miou=cam_label_miou if k.endswith("_cam") else label_miou,
                    nonsalient_recall=be_ns)
    m["checks"] = results_checks(m)
    return m


def _fake_seed(path, seed, mious, machine=None, **kw):
    """A finished seed folder: config.json, results/metrics.json and results/record.json."""
    (path / "results").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(make_config("smoke", seed=seed).to_dict()))
    (path / "results" / "metrics.json").write_text(json.dumps(_metrics(mious, **kw)))
    rec = dict(stage="results", key="x", metrics={}, seconds=1.0,
               **(machine or dict(cpu="Test CPU", torch="9.9", torch_cuda=None, threads=2,
                                  gpu=None)))
    (path / "results" / "record.json").write_text(json.dumps(rec))
    return path


def test_summary_arithmetic_rows_steps_and_counts(tmp_path):
    runs = [_fake_seed(tmp_path / "seed0", 0, [0.80, 0.50, 0.55, 0.60, 0.58], label_miou=0.4),
            _fake_seed(tmp_path / "seed1", 1, [0.82, 0.52, 0.51, 0.62, 0.65], label_miou=0.6),
            _fake_seed(tmp_path / "seed2", 2, [0.78, 0.54, 0.56, 0.56, 0.50], label_miou=0.5)]
    s = CMP.summarise_seeds(runs)
    assert s["n"] == 3 and [r["seed"] for r in s["runs"]] == [0, 1, 2]
    r2 = s["rows"]["nsrm_round2"]["miou"]
    assert r2["values"] == [0.60, 0.62, 0.56]
    assert r2["mean"] == pytest.approx(0.59333333)
    # sample sd (n - 1): deviations 0.00667, 0.02667, -0.03333
    assert r2["sd"] == pytest.approx(math.sqrt((0.02 ** 2 / 9 + 0.08 ** 2 / 9 + 0.1 ** 2 / 9) / 2))
    assert (r2["min"], r2["max"]) == (0.56, 0.62)
    # the label rows too, on their own measures
    lab = s["rows"]["pom_labels"]
    assert lab["split"] == "labels" and lab["title"] == "BE + POM labels"
    assert lab["miou"]["mean"] == pytest.approx(0.5) and lab["miou"]["sd"] == pytest.approx(0.1)
    assert set(lab) >= {"precision", "coverage", "nonsalient_recall"}
    assert "salient_recall" in s["rows"]["upper_bound"] and "salient_recall" not in lab
    # paired steps: the difference within each seed, then its mean, sd and k/n positive
    pom = s["steps"]["POM (BE+POM r1 - BE r1)"]
    assert pom["values"] == pytest.approx([0.05, -0.01, 0.02])
    assert pom["mean"] == pytest.approx(0.02) and pom["sd"] == pytest.approx(0.03)
    assert pom["positive"] == 2
    nsrm = s["steps"]["NSRM (r2 - BE+POM r1)"]
    assert nsrm["values"] == pytest.approx([0.05, 0.11, 0.0]) and nsrm["positive"] == 2
    glore = s["steps"]["GloRe (on - off, r2)"]
    assert glore["values"] == pytest.approx([0.02, -0.03, 0.06]) and glore["positive"] == 2
    assert s["step_checks"]["POM"] == dict(text="POM positive in 2/3 seeds", positive=2, n=3,
                                           ok=False)
    # the machine comes from the seeds' results records
    assert s["machine"]["cpu"] == "Test CPU" and s["runs"][0]["machine"]["threads"] == 2


def test_the_gap_decomposition_is_summarised_per_model(tmp_path):
    runs = []
    for seed, (gap, from_ns) in enumerate([(0.20, 0.15), (0.24, 0.15), (0.22, 0.12)]):
        run = _fake_seed(tmp_path / f"seed{seed}", seed, [0.8, 0.5, 0.55, 0.6, 0.58])
        met = json.loads((run / "results" / "metrics.json").read_text())
        met["gap"] = {"nsrm_round2.gap": gap, "nsrm_round2.gap_from_nonsalient": from_ns,
                      "nsrm_round2.gap_nonsalient_void": round(gap - from_ns, 4),
                      "upper_bound.gap": 0.0}
        (run / "results" / "metrics.json").write_text(json.dumps(met))
        runs.append(run)
    s = CMP.summarise_seeds(runs)
    r2 = s["gap"]["nsrm_round2"]
    assert r2["title"] == "round 2 on NSRM labels"
    assert r2["gap"]["values"] == [0.20, 0.24, 0.22] and r2["gap"]["mean"] == pytest.approx(0.22)
    assert r2["gap"]["sd"] == pytest.approx(0.02)
    assert r2["gap_from_nonsalient"]["mean"] == pytest.approx(0.14)
    assert r2["gap_nonsalient_void"]["mean"] == pytest.approx(0.08)
    assert r2["background_as_object"]["n"] == 0  # a measure no seed has: n/a, not 0
    assert "be_round1" not in s["gap"]  # no seed measured it
    md = CMP.seeds_markdown(s)
    assert "## Where the gap to the upper bound goes (val)" in md
    assert "| round 2 on NSRM labels (`nsrm_round2`) | 0.220 ± 0.020 | 0.140 ± 0.017 |" in md
    # runs without the decomposition: no section
    assert "gap to the upper bound goes" not in CMP.seeds_markdown(
        CMP.summarise_seeds([_fake_seed(tmp_path / "old", 5, [0.8, 0.5, 0.55, 0.6, 0.58])]))


def test_one_seed_has_no_sd_and_all_positive_is_ok(tmp_path):
    run = _fake_seed(tmp_path / "seed4", 4, [0.8, 0.5, 0.55, 0.6, 0.58])
    s = CMP.summarise_seeds([run], machine=dict(cpu="Here", torch="1.0", torch_cuda="12.4",
                                                threads=8, gpu=None, extra="dropped"))
    st = s["rows"]["be_round1"]["miou"]
    assert st["mean"] == 0.5 and st["sd"] is None and st["min"] == st["max"] == 0.5
    assert s["step_checks"]["NSRM"]["ok"] and s["step_checks"]["NSRM"]["text"] == (
        "NSRM positive in 1/1 seeds")
    assert s["machine"] == dict(cpu="Here", torch="1.0", torch_cuda="12.4", threads=8, gpu=None)
    md = CMP.seeds_markdown(s)
    assert "CPU Here, torch 1.0 (CUDA 12.4 build), 8 threads" in md
    assert "| round 1 on BE labels (`be_round1`) | 0.500 (0.500 – 0.500) |" in md  # no "± sd"
    assert "- POM positive in 1/1 seeds (every seed)" in md


def test_a_step_whose_rows_are_missing_is_skipped(tmp_path, monkeypatch):
    runs = [_fake_seed(tmp_path / f"seed{k}", k, [0.8, 0.5, 0.55, 0.6, 0.58]) for k in (0, 1)]
    monkeypatch.setattr(CMP, "STEPS", CMP.STEPS + (("CRF", "crf_round2", "nsrm_round2", "x"),))
    s = CMP.summarise_seeds(runs)
    # OAA too: these metrics.json files have no round 1 on CAM-source labels
    assert [st["step"] for st in s["steps"].values()] == ["POM", "NSRM", "GloRe"]
    assert "CRF" not in s["step_checks"] and "OAA" not in s["step_checks"]
    assert "pom_round1_cam" not in s["rows"] and "pom_labels_cam" not in s["rows"]


def test_the_oaa_step_and_rows(tmp_path):
    mious = [0.8, 0.5, 0.55, 0.6, 0.58]  # pom_round1 = 0.55 in every seed
    runs = [_fake_seed(tmp_path / f"seed{k}", k, mious, cam=c, cam_label_miou=lm)
            for k, c, lm in ((0, 0.50, 0.3), (1, 0.57, 0.5), (2, 0.52, 0.4))]
    s = CMP.summarise_seeds(runs)
    oaa = s["steps"]["OAA (OA-CAM - CAM, r1)"]
    assert (oaa["row"], oaa["baseline"]) == ("pom_round1", "pom_round1_cam")
    assert oaa["values"] == pytest.approx([0.05, -0.02, 0.03]) and oaa["positive"] == 2
    assert s["step_checks"]["OAA"] == dict(text="OAA positive in 2/3 seeds", positive=2, n=3,
                                           ok=False)
    row = s["rows"]["pom_round1_cam"]
    assert row["split"] == "val" and row["miou"]["values"] == [0.50, 0.57, 0.52]
    lab = s["rows"]["pom_labels_cam"]
    assert lab["title"] == "BE + POM labels from the CAM" and lab["miou"]["mean"] == pytest.approx(0.4)
    assert s["rows"]["be_labels_accumulated"]["split"] == "labels"
    md = CMP.seeds_markdown(s)
    assert "| OAA (OA-CAM - CAM, r1) | +0.020 ± 0.036 | -0.020 – +0.050 | 2/3 |" in md
    assert "- OAA positive in 2/3 seeds" in md
    assert "(`pom_round1_cam`) | 0.530" in md and "(`pom_labels_accumulated`)" in md
    # a seed from before the OAA ablation: its cells n/a, the step left out
    old = _fake_seed(tmp_path / "seed3", 3, mious)
    s = CMP.summarise_seeds(runs + [old])
    assert s["rows"]["pom_round1_cam"]["miou"]["values"][3] is None
    assert "OAA" not in s["step_checks"]


def test_old_metrics_with_removed_checks_still_read(tmp_path):
    """A metrics.json written when round2_ratio and glore_not_worse were targets: read, without
    them, by compare, the summary and the report's helper."""
    run = _fake_seed(tmp_path / "seed0", 0, [0.8, 0.5, 0.55, 0.6, 0.58])
    path = run / "results" / "metrics.json"
    m = json.loads(path.read_text())
    m["checks"]["round2_ratio"] = dict(value=0.75, target=0.85, ok=False, text="old ratio")
    m["checks"]["glore_not_worse"] = dict(value=[0.6, 0.58], ok=True, text="old glore")
    path.write_text(json.dumps(m))
    assert set(stored_checks(m)) == {"monotone", "nonsalient_2x"}
    assert set(CMP.compare_runs([run])["checks"]) == {"monotone", "nonsalient_2x"}
    assert "old ratio" not in CMP.seeds_markdown(CMP.summarise_seeds([run]))
    assert set(TARGETS) == {"monotone", "nonsalient_2x"}
    assert stored_checks({}) == {}


def test_write_summary_files(tmp_path):
    runs = [_fake_seed(tmp_path / f"seed{k}", k, [0.8, 0.5 + k / 100, 0.55, 0.6, 0.58])
            for k in (0, 1)]
    paths = CMP.write_seeds_summary(CMP.summarise_seeds(runs), tmp_path, title="T")
    assert set(paths) == {"json", "md", "png"}
    data = json.loads(paths["json"].read_text())
    assert data["rows"]["be_round1"]["miou"]["values"] == [0.5, 0.51]
    assert paths["md"].read_text().startswith("# T\n")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


@pytest.mark.parametrize("bad, says", [
    ("0,a", "comma-separated non-negative integers"),
    ("0,,1", "comma-separated non-negative integers"),
    ("", "comma-separated non-negative integers"),
    ("-1", "comma-separated non-negative integers"),
    ("0,1,1", "seed 1 is listed twice"),
])
def test_cli_rejects_bad_seed_lists(bad, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(REPORT, "ensure_results", _never)
    assert main(["results", f"--seeds={bad}", "--run-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsrom: error: --seeds") and says in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_rejects_a_seed_in_set(tmp_path, capsys):
    assert main(["results", "--seeds", "0,1", "--set", "seed=3", "--run-root", str(tmp_path)]) == 2
    assert "nsrom: error: --set seed=3" in capsys.readouterr().err


def _never(run, progress=True):
    raise AssertionError(f"the pipeline ran for {run.dir}")


def test_cli_runs_each_seed_reuses_finished_ones_and_writes_the_summary(tmp_path, capsys,
                                                                        monkeypatch):
    root = tmp_path / "myname"
    # seed 0 finished before: a results record with this configuration's key, and its metrics
    done = open_run(root / "seed0", "smoke", seed=0, seg_epochs=1)
    (done.dir / "results").mkdir(parents=True)
    (done.dir / "results" / "metrics.json").write_text(json.dumps(
        _metrics([0.8, 0.50, 0.52, 0.55, 0.54])))
    done.complete("results", {}, 1.0)
    calls = []

    def fake_ensure_results(run, progress=True):
        calls.append((run.dir.name, run.cfg.seed, run.cfg.seg_epochs))
        (run.dir / "results").mkdir(parents=True, exist_ok=True)
        mious = [0.8, 0.50 + run.cfg.seed / 100, 0.53, 0.56, 0.57]
        (run.dir / "results" / "metrics.json").write_text(json.dumps(_metrics(mious)))
        return run.complete("results", {}, 2.0)

    monkeypatch.setattr(REPORT, "ensure_results", fake_ensure_results)
    argv = ["results", "--seeds", "0,1,2", "--profile", "smoke", "--name", "myname",
            "--run-root", str(tmp_path), "--set", "seg_epochs=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert calls == [("seed1", 1, 1), ("seed2", 2, 1)]  # seed 0 was not recomputed
    assert "seed 0: finished before, reused" in out and "seed 1: computed" in out
    for name in ("summary.json", "summary.md", "summary.png"):
        assert (root / name).is_file(), name
    s = json.loads((root / "summary.json").read_text())
    assert [r["seed"] for r in s["runs"]] == [0, 1, 2] and s["n"] == 3
    assert s["rows"]["be_round1"]["miou"]["values"] == [0.50, 0.51, 0.52]
    assert s["step_checks"]["GloRe"]["text"] == "GloRe positive in 1/3 seeds"
    assert s["machine"]["torch"] and "torch_cuda" in s["machine"] and s["machine"]["threads"] >= 1
    assert "Results over seeds: myname" in out and "NSRM positive in 3/3 seeds" in out
    # a second call reuses every seed
    monkeypatch.setattr(REPORT, "ensure_results", _never)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished before, reused") == 3
    # another setting is another configuration: the seed is computed again
    calls.clear()
    monkeypatch.setattr(REPORT, "ensure_results", fake_ensure_results)
    assert main(argv[:-1] + ["seg_epochs=2"] + ["--seeds", "1"]) == 0
    assert calls == [("seed1", 1, 2)]


def test_cli_results_default_name_is_the_profile(tmp_path, capsys, monkeypatch):
    def fake(run, progress=True):
        (run.dir / "results").mkdir(parents=True, exist_ok=True)
        (run.dir / "results" / "metrics.json").write_text(json.dumps(
            _metrics([0.8, 0.5, 0.55, 0.6, 0.58])))
        return run.complete("results", {}, 1.0)

    monkeypatch.setattr(REPORT, "ensure_results", fake)
    assert main(["results", "--seeds", "3", "--profile", "smoke", "--run-root", str(tmp_path)]) == 0
    assert (tmp_path / "smoke" / "seed3" / "results" / "metrics.json").is_file()
    assert (tmp_path / "smoke" / "summary.md").is_file()
    assert main(["results", "--seeds", "3", "--name", "a/b", "--run-root", str(tmp_path)]) == 2
    assert "nsrom: error: --name 'a/b'" in capsys.readouterr().err


def test_the_chart_draws_every_row_and_step_with_its_sd(tmp_path):
    from matplotlib.collections import PathCollection

    from nsrom_lib import viz

    runs = [_fake_seed(tmp_path / f"seed{k}", k, [0.8, 0.5 + k / 50, 0.55, 0.6, 0.58])
            for k in (0, 1, 2)]
    s = CMP.summarise_seeds(runs)
    fig = viz.seeds_chart(s)
    rows_ax, steps_ax = fig.axes
    heights = [b.get_height() for b in rows_ax.patches]
    assert len(heights) == 8 and heights[1] == pytest.approx(s["rows"]["be_round1"]["miou"]["mean"])
    assert [b.get_height() for b in steps_ax.patches] == pytest.approx(
        [st["mean"] for st in s["steps"].values()])
    # one dot per seed and row, one per seed and step
    def dots(ax):
        return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))

    assert (dots(rows_ax), dots(steps_ax)) == (8 * 3, 3 * 3)
    assert [t.get_text() for t in steps_ax.get_xticklabels()] == ["POM", "NSRM", "GloRe"]
