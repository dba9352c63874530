"""`nsrom_lib.compare` and `python -m nsrom_lib compare`: several finished runs side by side."""

from __future__ import annotations

import json

import pytest

from nsrom_lib import compare as CMP
from nsrom_lib.cli import main
from nsrom_lib.config import make_config
from nsrom_lib.data.io import DataError


def _fake_run(path, seed, mious, ratio, ns, checks, **cfg_over):
    """A run folder as the results stage leaves it (only the files `compare` reads)."""
    cfg = make_config("default", seed=seed, **cfg_over).to_dict()
    keys = ("upper_bound", "be_round1", "pom_round1", "nsrm_round2", "nsrm_round2_no_glore")
    metrics = {k: dict(miou=m, ratio_to_upper_bound=m / mious[0], nonsalient_recall=ns)
               for k, m in zip(keys, mious, strict=True)}
    metrics["nsrm_round2"]["ratio_to_upper_bound"] = ratio
    metrics["checks"] = {name: dict(ok=ok, text=f"target {name}") for name, ok in checks.items()}
    (path / "results").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "results" / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_two_seeds_mean_range_steps_and_checks(tmp_path):
    a = _fake_run(tmp_path / "a", 0, [0.8, 0.60, 0.62, 0.64, 0.61], 0.80, 0.2,
                  dict(monotone=True, glore=True))
    b = _fake_run(tmp_path / "b", 1, [0.8, 0.56, 0.55, 0.60, 0.62], 0.75, 0.1,
                  dict(monotone=False, glore=False))
    s = CMP.compare_runs([a, b])
    assert [r["label"] for r in s["runs"]] == ["seed=0", "seed=1"]
    r2 = s["rows"]["nsrm_round2"]
    assert r2["miou"] == [0.64, 0.60]
    assert r2["miou_stats"]["mean"] == pytest.approx(0.62)
    assert (r2["miou_stats"]["min"], r2["miou_stats"]["max"]) == (0.60, 0.64)
    assert r2["ratio"] == [0.80, 0.75]
    pom = s["steps"]["POM (BE+POM r1 - BE r1)"]
    assert pom["values"] == pytest.approx([0.02, -0.01]) and pom["positive"] == 1
    glore = s["steps"]["GloRe (on - off, r2)"]
    assert glore["values"] == pytest.approx([0.03, -0.02]) and glore["positive"] == 1
    assert s["checks"]["monotone"]["ok"] == [True, False] and s["checks"]["monotone"]["met"] == 1
    table = CMP.compare_table(s)
    assert "| val | seed=0 | seed=1 | mean | range |" in table
    assert "| round 2 on NSRM labels: mIoU | 0.640 | 0.600 | 0.620 | 0.600 to 0.640 |" in table
    assert "target monotone: met in 1 of 2 runs (seed=0: met, seed=1: missed)" in table
    assert "+0.020" in table and "-0.010" in table


def test_the_oaa_step_from_round_1_on_cam_labels(tmp_path):
    runs = []
    for seed, cam in ((0, 0.58), (1, 0.64)):
        r = _fake_run(tmp_path / f"s{seed}", seed, [0.8, 0.60, 0.62, 0.64, 0.61], 0.8, 0.2, {})
        path = r / "results" / "metrics.json"
        m = json.loads(path.read_text())
        m["pom_round1_cam"] = dict(miou=cam, ratio_to_upper_bound=cam / 0.8, nonsalient_recall=0.1)
        path.write_text(json.dumps(m))
        runs.append(r)
    s = CMP.compare_runs(runs)
    oaa = s["steps"]["OAA (OA-CAM - CAM, r1)"]
    assert (oaa["row"], oaa["baseline"]) == ("pom_round1", "pom_round1_cam")
    assert oaa["values"] == pytest.approx([0.04, -0.02]) and oaa["positive"] == 1
    assert s["rows"]["pom_round1_cam"]["miou"] == [0.58, 0.64]
    table = CMP.compare_table(s)
    assert "| step OAA (OA-CAM - CAM, r1) | +0.040 | -0.020 | +0.010 | -0.020 to +0.040 |" in table
    assert "- OAA (OA-CAM - CAM, r1): raised val mIoU in 1 of 2 runs" in table
    assert "from the CAM (OAA off): mIoU | 0.580 | 0.640 |" in table
    # with a run from before the OAA ablation: its cell n/a, the step left out
    old = _fake_run(tmp_path / "old", 2, [0.8, 0.60, 0.62, 0.64, 0.61], 0.8, 0.2, {})
    s = CMP.compare_runs(runs + [old])
    assert s["rows"]["pom_round1_cam"]["miou"] == [0.58, 0.64, None]
    assert not any(st["step"] == "OAA" for st in s["steps"].values())
    # and runs that all lack it: no row at all
    assert "pom_round1_cam" not in CMP.compare_runs([old])["rows"]


def test_labels_name_what_differs(tmp_path):
    a = _fake_run(tmp_path / "x", 0, [0.8] * 5, 0.8, 0.1, {})
    b = _fake_run(tmp_path / "y", 0, [0.8] * 5, 0.8, 0.1, {}, oaa_from_epoch=3)
    c = _fake_run(tmp_path / "z", 0, [0.8] * 5, 0.8, 0.1, {})
    assert [r["label"] for r in CMP.compare_runs([a, b])["runs"]] == [
        "oaa_from_epoch=1", "oaa_from_epoch=3"]
    # nothing differs: the folder names
    assert [r["label"] for r in CMP.compare_runs([a, c])["runs"]] == ["x", "z"]
    # a run written before a setting existed counts as having its default
    cfg = json.loads((c / "config.json").read_text())
    (c / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "seg_crf"}))
    assert [r["label"] for r in CMP.compare_runs([a, b, c])["runs"]] == [
        "oaa_from_epoch=1 (x)", "oaa_from_epoch=3 (y)", "oaa_from_epoch=1 (z)"]
    # where or how fast a run ran is not a difference
    cfg = json.loads((c / "config.json").read_text())
    (c / "config.json").write_text(json.dumps({**cfg, "num_threads": 1, "device": "cpu"}))
    assert [r["label"] for r in CMP.compare_runs([a, c])["runs"]] == ["x", "z"]


def test_bad_runs_are_named(tmp_path):
    good = _fake_run(tmp_path / "good", 0, [0.8] * 5, 0.8, 0.1, {})
    with pytest.raises(FileNotFoundError, match=r"missing.*--run-dir .*empty"):
        CMP.compare_runs([good, tmp_path / "empty"])
    bad = _fake_run(tmp_path / "bad", 0, [0.8] * 5, 0.8, 0.1, {})
    (bad / "results" / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json is not valid JSON"):
        CMP.compare_runs([bad])
    old = _fake_run(tmp_path / "old", 0, [0.8] * 5, 0.8, 0.1, {})
    m = json.loads((old / "results" / "metrics.json").read_text())
    del m["be_round1"]
    (old / "results" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"lacks the rows \['be_round1'\]"):
        CMP.compare_runs([old])
    with pytest.raises(ValueError):
        CMP.compare_runs([])


def test_cli_compare(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", 0, [0.8, 0.6, 0.62, 0.64, 0.61], 0.8, 0.2, {})
    b = _fake_run(tmp_path / "b", 2, [0.8, 0.6, 0.62, 0.66, 0.61], 0.825, 0.2, {})
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| val | seed=0 | seed=2 | mean | range |" in out
    assert main(["compare", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"]["nsrm_round2"]["miou"] == [0.64]
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "is not a finished run" in capsys.readouterr().err


def test_cli_compare_into_a_closed_pipe_is_quiet(tmp_path):
    """`nsrom compare ... | head`: the reader leaves early; no error message, exit 0."""
    import subprocess
    import sys

    runs = [str(_fake_run(tmp_path / f"r{s}", s, [0.8, 0.6, 0.62, 0.64, 0.61], 0.8, 0.2, {}))
            for s in range(3)]
    p = subprocess.Popen([sys.executable, "-m", "nsrom_lib", "compare", *runs],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line (like `head` exiting early)
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err
