"""Finished runs side by side: the ablation of several seeds (or variants), with mean and range.

One run is one draw: other images, other initialisations. Whether a step "helps" is only a
finding if it holds across draws, so `python -m nsrom_lib compare RUN [RUN ...]` puts the
`results/metrics.json` of several runs in one table, with the mean and the range of every
figure, the gain of each step per run, and how many runs meet each of the run's checks.
`summarise_seeds` is the same over the seed runs of `python -m nsrom_lib results --seeds`:
every row as mean ± sd and min–max, every step (`STEPS`) as a paired difference per seed with
the seeds where it is positive, and the machines the seeds ran on.

Computes from JSON only: `config.json`, `results/metrics.json` and `results/record.json` (the
machine) of each run folder; the rows and their titles are the pipeline's (`RESULT_ROWS`,
`LABEL_ROWS`, `SEG_MODELS`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nsrom_lib.config import NOT_RESULT_KEYS, ConfigError, RunConfig, make_config
from nsrom_lib.data.io import DataError, atomic_write_json, atomic_write_text
from nsrom_lib.pipeline import (
    GAP_ROWS,
    LABEL_ROWS,
    LABEL_TITLES,
    LATER_ROWS,
    RESULT_ROWS,
    SEG_MODELS,
    TARGETS,
    seeds_figure,
    stored_checks,
)
from nsrom_lib.pipeline.report import GAP_COLUMNS

__all__ = ["load_run_results", "compare_runs", "compare_table", "RUN_ONLY_KEYS", "STEPS",
           "ROW_FIELDS", "GAP_FIELDS", "summarise_seeds", "seeds_markdown", "write_seeds_summary"]

#: Config keys that are never column labels: where or how fast a run ran, not what it computed,
#: and the dataset's path (the same data lies at other paths on other machines).
RUN_ONLY_KEYS = NOT_RESULT_KEYS | {"data_root"}

#: The steps of the method: (step, the row with it, the row without it, what is subtracted).
#: A step's gain is the difference of val mIoU between its two rows within one run (paired: the
#: same seed, the same images). A step whose rows some run lacks is left out of that summary, so
#: a row the results stage measures later (the dense CRF) needs only its line here. OAA: round 1
#: on labels whose BE read the OA-CAM against the same round 1 on labels whose BE read the
#: final CAM (no accumulation, no IAM); POM reads the final CAM in both.
STEPS: tuple[tuple[str, str, str, str], ...] = (
    ("POM", "pom_round1", "be_round1", "BE+POM r1 - BE r1"),
    ("NSRM", "nsrm_round2", "pom_round1", "r2 - BE+POM r1"),
    ("GloRe", "nsrm_round2", "nsrm_round2_no_glore", "on - off, r2"),
    ("OAA", "pom_round1", "pom_round1_cam", "OA-CAM - CAM, r1"),
    # ("CRF", <row with the dense CRF>, <row without>, "on - off, r2"),
)

#: The measures of `metrics.json['gap']` summarised per model over seeds (`summarise_seeds`'
#: `gap`): the gap to the upper bound, the part of it the non-salient objects explain and the
#: rest, and where the object pixels go (`stages.results.gap_measures`, method.md §8).
GAP_FIELDS = ("gap", "gap_from_nonsalient", "gap_nonsalient_void", "nonsalient_as_background",
              "salient_as_background", "background_as_object")

#: The measures summarised per row: the val rows (`RESULT_ROWS`) and the label rows
#: (`LABEL_ROWS`, training images).
ROW_FIELDS = {
    "val": ("miou", "ratio_to_upper_bound", "nonsalient_recall", "salient_recall"),
    "labels": ("precision", "coverage", "miou", "nonsalient_recall"),
}


def load_run_results(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, metrics dict) of a finished run folder.

    Raises FileNotFoundError naming the missing file and the command that makes it, and
    DataError for a file that is not the JSON the `results` stage writes.
    """
    run_dir = Path(run_dir)
    cfg_path, met_path = run_dir / "config.json", run_dir / "results" / "metrics.json"
    for p in (cfg_path, met_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing: {run_dir} is not a finished run; finish it with "
                f"`python -m nsrom_lib run --profile <profile> --run-dir {run_dir}` "
                "(the results stage writes results/metrics.json)."
            )
    out = []
    for p in (cfg_path, met_path):
        try:
            out.append(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{p} is not valid JSON ({e}); delete it and re-run its stage.") from e
    cfg, metrics = out
    missing = [k for k in RESULT_ROWS if k not in LATER_ROWS
               and (not isinstance(metrics.get(k), dict) or "miou" not in metrics[k])]
    if missing:
        raise DataError(f"{met_path} lacks the rows {missing}: it was not written by the `results` "
                        "stage of this version; delete the run's results/ folder and run it again.")
    return cfg, metrics


def _labels(configs: list[dict[str, Any]], dirs: list[Path]) -> list[str]:
    """Column labels: the config keys whose values differ between the runs (e.g. `seed=1`),
    or the folder names when none differ."""
    # a run made before a setting existed ran with that setting's default
    defaults = RunConfig().to_dict()
    configs = [{**{k: v for k, v in defaults.items() if k not in c}, **c} for c in configs]
    keys = sorted({k for c in configs for k in c} - RUN_ONLY_KEYS)
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    if "profile" in differ:  # name the profile, not every size it sets
        base = {}
        for c in configs:
            try:
                base[c.get("profile")] = make_config(c.get("profile")).to_dict()
            except ConfigError:
                base[c.get("profile")] = {}
        differ = ["profile"] + [k for k in differ if k != "profile" and any(
            c.get(k) != base[c.get("profile")].get(k) for c in configs)]
    if not differ:
        return [d.name for d in dirs]
    labels = [", ".join(f"{k}={c.get(k)}" for k in differ) for c in configs]
    if len(set(labels)) < len(labels):  # same settings twice: tell them apart by folder
        labels = [f"{lab} ({d.name})" for lab, d in zip(labels, dirs, strict=True)]
    return labels


def _stats(values: list[float | None]) -> dict[str, Any]:
    """mean, sd (sample sd, n - 1; None for fewer than two values), min, max and n of the
    values that are numbers (None and NaN left out)."""
    v = [x for x in values if isinstance(x, int | float) and not isinstance(x, bool)
         and not math.isnan(x)]
    if not v:
        return dict(mean=None, sd=None, min=None, max=None, n=0)
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return dict(mean=mean, sd=sd, min=min(v), max=max(v), n=len(v))


def _rows_present(keys: Any, metrics: list[dict[str, Any]]) -> tuple[str, ...]:
    """The rows of `keys` that at least one run has: a row of `LATER_ROWS` that every run lacks
    (metrics.json files older than it) is left out, one that some lack is *n/a* for those."""
    return tuple(k for k in keys if k not in LATER_ROWS
                 or any(isinstance(m.get(k), dict) for m in metrics))


def _step_values(metrics: list[dict[str, Any]], row: str, base: str) -> list[float] | None:
    """The paired differences row - base of val mIoU, one per run; None when a run lacks one."""
    try:
        return [m[row]["miou"] - m[base]["miou"] for m in metrics]
    except (KeyError, TypeError):
        return None


def compare_runs(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """Collect the ablation of several finished runs.

    Returns runs: [{dir, label, profile, seed}]; rows: {key: {title, miou, ratio,
    nonsalient_recall (lists, one value per run), and for each a {mean, sd, min, max, n}}};
    steps: {name: {step, row, baseline, values, mean, sd, min, max, n, positive (runs where
    the step raised mIoU)}}, one per `STEPS` entry whose rows every run has;
    checks: {name: {text, ok (list of bool per run), met (count)}}, the targets of `TARGETS`
    (checks a metrics.json stores for targets no longer listed are left out).
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    dirs = [Path(d) for d in run_dirs]
    loaded = [load_run_results(d) for d in dirs]
    configs = [c for c, _ in loaded]
    metrics = [m for _, m in loaded]
    rows: dict[str, Any] = {}
    for key in _rows_present(RESULT_ROWS, metrics):
        row: dict[str, Any] = dict(title=SEG_MODELS[key]["title"])
        for field, name in (("miou", "miou"), ("ratio_to_upper_bound", "ratio"),
                            ("nonsalient_recall", "nonsalient_recall")):
            vals = [(m.get(key) or {}).get(field) for m in metrics]
            row[name] = vals
            row[f"{name}_stats"] = _stats(vals)
        rows[key] = row
    steps: dict[str, Any] = {}
    for step, a, b, what in STEPS:
        vals = _step_values(metrics, a, b)
        if vals is not None:
            steps[f"{step} ({what})"] = dict(step=step, row=a, baseline=b, values=vals,
                                             positive=sum(v > 0 for v in vals), **_stats(vals))
    checks: dict[str, Any] = {}
    for m in metrics:
        for name, chk in stored_checks(m).items():
            checks.setdefault(name, dict(text=chk.get("text", TARGETS[name]), ok=[]))
    for name, c in checks.items():
        c["ok"] = [bool(stored_checks(m).get(name, {}).get("ok")) for m in metrics]
        c["met"] = sum(c["ok"])
    runs = [dict(dir=str(d), label=lab, profile=c.get("profile"), seed=c.get("seed"))
            for d, lab, c in zip(dirs, _labels(configs, dirs), configs, strict=True)]
    return dict(runs=runs, rows=rows, steps=steps, checks=checks)


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def compare_table(summary: dict[str, Any]) -> str:
    """`compare_runs`' summary as Markdown: val mIoU per run with mean and range, the ratio and
    the non-salient recall of round 2, the gain of every step, and the targets met."""
    labels = [r["label"] for r in summary["runs"]]
    n = len(labels)
    head = "| val | " + " | ".join(labels) + " | mean | range |\n" + "|---" * (n + 3) + "|\n"
    lines = []
    rows = summary["rows"]

    def line(title: str, vals: list, st: dict, signed: bool = False) -> str:
        cells = [_f(v, signed) for v in vals]
        rng = f"{_f(st['min'], signed)} to {_f(st['max'], signed)}"
        return f"| {title} | " + " | ".join(cells) + f" | {_f(st['mean'], signed)} | {rng} |"

    for row in rows.values():
        lines.append(line(f"{row['title']}: mIoU", row["miou"], row["miou_stats"]))
    r2 = rows["nsrm_round2"]
    lines.append(line("round 2: ratio to upper bound", r2["ratio"], r2["ratio_stats"]))
    lines.append(line("round 2: non-salient recall", r2["nonsalient_recall"],
                      r2["nonsalient_recall_stats"]))
    for name, st in summary["steps"].items():
        lines.append(line(f"step {name}", st["values"], st, signed=True))
    table = head + "\n".join(lines)
    steps = "\n".join(f"- {name}: raised val mIoU in {st['positive']} of {n} runs"
                      for name, st in summary["steps"].items())
    checks = "\n".join(
        f"- {c['text']}: met in {c['met']} of {n} runs ("
        + ", ".join(f"{lab}: {'met' if ok else 'missed'}" for lab, ok in zip(labels, c["ok"], strict=True))
        + ")" for c in summary["checks"].values())
    return "\n\n".join(p for p in (table, steps, checks) if p)


# ----------------------------------------------------------------------------- seeds


#: What names a machine in a stage record (`device.machine_info`).
_MACHINE_KEYS = ("cpu", "torch", "torch_cuda", "threads", "gpu")


def _run_machine(run_dir: Path) -> dict[str, Any] | None:
    """The machine the run's results stage recorded (`results/record.json`), or None."""
    try:
        rec = json.loads((run_dir / "results" / "record.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict):
        return None
    return {k: rec.get(k) for k in _MACHINE_KEYS}


def summarise_seeds(run_dirs: list[str | os.PathLike],
                    machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of several seed runs of one configuration (`compare_runs` plus sd and k/n).

    Returns `compare_runs`' runs (each with the `machine` its results record names) and
    steps, and n (the seeds); rows: {key: {title, split ("val" or "labels"), and per measure of
    `ROW_FIELDS` {values (one per seed), mean, sd, min, max, n}}} for every `RESULT_ROWS` and
    `LABEL_ROWS` key; gap: {key: {title, and per measure of `GAP_FIELDS` the same stats}} for
    every model of `GAP_ROWS` that some seed's `metrics.json['gap']` has; step_checks:
    {step: {text ("POM positive in 3/3 seeds"), positive, n,
    ok (positive in every seed)}}; checks: the targets met per seed; machine: `machine` (where
    the summary was made; default the first seed's record).
    """
    base = compare_runs(run_dirs)
    metrics = [load_run_results(d)[1] for d in run_dirs]
    n = len(metrics)
    rows: dict[str, Any] = {}
    for split, keys in (("val", RESULT_ROWS), ("labels", tuple(LABEL_ROWS))):
        for key in _rows_present(keys, metrics):
            title = SEG_MODELS[key]["title"] if split == "val" else LABEL_TITLES[key]
            row: dict[str, Any] = dict(title=title, split=split)
            for field in ROW_FIELDS[split]:
                vals = [(m.get(key) or {}).get(field) for m in metrics]
                row[field] = dict(values=vals, **_stats(vals))
            rows[key] = row
    step_checks = {
        st["step"]: dict(text=f"{st['step']} positive in {st['positive']}/{n} seeds",
                         positive=st["positive"], n=n, ok=st["positive"] == n)
        for st in base["steps"].values()}
    gap: dict[str, Any] = {}
    for key in GAP_ROWS:
        vals = {f: [(m.get("gap") or {}).get(f"{key}.{f}") for m in metrics] for f in GAP_FIELDS}
        if any(v is not None for vs in vals.values() for v in vs):
            gap[key] = dict(title=SEG_MODELS[key]["title"],
                            **{f: dict(values=v, **_stats(v)) for f, v in vals.items()})
    runs = base["runs"]
    for r in runs:
        r["machine"] = _run_machine(Path(r["dir"]))
    if machine is None:
        machine = next((r["machine"] for r in runs if r["machine"]), None)
    else:
        machine = {k: machine.get(k) for k in _MACHINE_KEYS}
    return dict(n=n, runs=runs, rows=rows, steps=base["steps"], step_checks=step_checks,
                checks=base["checks"], gap=gap, machine=machine)


def _machine_text(m: dict[str, Any] | None) -> str:
    if not m:
        return "not recorded"
    build = f"CUDA {m['torch_cuda']} build" if m.get("torch_cuda") else "CPU build"
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"CPU {m.get('cpu') or '?'}, torch {m.get('torch') or '?'} ({build}), "
            f"{m.get('threads') or '?'} threads{gpu}")


def _pm(st: dict[str, Any], signed: bool = False) -> str:
    if st["mean"] is None:
        return "n/a"
    return _f(st["mean"], signed) + ("" if st["sd"] is None else f" ± {st['sd']:.3f}")


def _range(st: dict[str, Any], signed: bool = False) -> str:
    if st["min"] is None:
        return "n/a"
    return f"{_f(st['min'], signed)} – {_f(st['max'], signed)}"


def seeds_markdown(summary: dict[str, Any], title: str | None = "Results over seeds") -> str:
    """`summarise_seeds`' summary as Markdown: the machine, every row's measures as mean ± sd
    and min – max, the val mIoU of each seed, the steps per seed, and the checks (title: its
    level-1 heading, None for none)."""
    seeds = [f"seed {r['seed']}" for r in summary["runs"]]
    n = summary["n"]
    lines = ([f"# {title}", ""] if title else []) + [
             f"{n} seed(s) of profile `{summary['runs'][0]['profile']}`: "
             + ", ".join(f"`{Path(r['dir']).name}`" for r in summary["runs"])
             + ". Machine: " + _machine_text(summary["machine"]) + "."]
    others = {_machine_text(r["machine"]) for r in summary["runs"] if r["machine"]}
    if others - {_machine_text(summary["machine"])}:
        lines.append("The seeds' results were computed on: " + "; ".join(
            f"{s} on {_machine_text(r['machine'])}" for s, r in zip(seeds, summary["runs"],
                                                                      strict=True)) + ".")
    lines += ["", "Each cell: mean ± sample sd (n - 1) over the seeds, then min – max; every rate "
              "a fraction. The value of every seed is in `summary.json`.", ""]
    names = dict(miou="mIoU", ratio_to_upper_bound="ratio to upper bound",
                 nonsalient_recall="non-salient recall", salient_recall="salient recall",
                 precision="precision", coverage="coverage")
    for split, heading in (("val", "## Models (validation split)"),
                           ("labels", "## Labels (training images, against GT)")):
        fields = ROW_FIELDS[split]
        lines += [heading, "", "| | " + " | ".join(names[f] for f in fields) + " |",
                  "|---" * (1 + len(fields)) + "|"]
        for key, row in summary["rows"].items():
            if row["split"] == split:
                cells = " | ".join(f"{_pm(row[f])} ({_range(row[f])})" for f in fields)
                lines.append(f"| {row['title']} (`{key}`) | {cells} |")
        lines.append("")
    lines += ["## Val mIoU per seed", "", "| | " + " | ".join(seeds) + " |",
              "|---" * (1 + n) + "|"]
    for row in summary["rows"].values():
        if row["split"] == "val":
            lines.append(f"| {row['title']} | " + " | ".join(_f(v) for v in row["miou"]["values"])
                         + " |")
    lines += ["", "## Steps (paired differences of val mIoU within each seed)", "",
              "| step | mean ± sd | min – max | positive | " + " | ".join(seeds) + " |",
              "|---" * (4 + n) + "|"]
    for name, st in summary["steps"].items():
        cells = " | ".join(_f(v, True) for v in st["values"])
        lines.append(f"| {name} | {_pm(st, True)} | {_range(st, True)} | "
                     f"{st['positive']}/{n} | {cells} |")
    if summary.get("gap"):
        lines += ["", "## Where the gap to the upper bound goes (val)", "",
                  "The gap is the upper bound's val mIoU minus the model's; the part the "
                  "non-salient objects explain is what disappears when their pixels are void in "
                  "the ground truth of both models (docs/method.md §8). Mean ± sd over the seeds.",
                  "", "| | " + " | ".join(GAP_COLUMNS[f] for f in GAP_FIELDS) + " |",
                  "|---" * (1 + len(GAP_FIELDS)) + "|"]
        for key, row in summary["gap"].items():
            lines.append(f"| {row['title']} (`{key}`) | "
                         + " | ".join(_pm(row[f]) for f in GAP_FIELDS) + " |")
    lines += ["", "## Checks", ""]
    lines += [f"- {c['text']}" + (" (every seed)" if c["ok"] else "")
              for c in summary["step_checks"].values()]
    lines += [f"- {c['text']}: met in {c['met']}/{n} seeds" for c in summary["checks"].values()]
    lines += ["", "![summary](summary.png)"]
    return "\n".join(lines) + "\n"


def write_seeds_summary(summary: dict[str, Any], out_dir: str | os.PathLike,
                        title: str = "Results over seeds") -> dict[str, Path]:
    """Write `summary.json`, `summary.md` and `summary.png` into `out_dir`; return their paths."""
    out = Path(out_dir)
    paths = {ext: out / f"summary.{ext}" for ext in ("json", "md", "png")}
    atomic_write_json(paths["json"], summary)
    atomic_write_text(paths["md"], seeds_markdown(summary, title))
    seeds_figure(summary, paths["png"])
    return paths
