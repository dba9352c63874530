"""Finished runs side by side: the ablation of several seeds (or variants), with mean and range.

One run is one draw: other images, other initialisations. Whether a step "helps" is only a
finding if it holds across draws, so `python -m nsrom_lib compare RUN [RUN ...]` puts the
`results/metrics.json` of several runs in one table, with the mean and the range of every
figure, the gain of each step per run, and how many runs meet each of the run's checks.

Reads only JSON (no torch): `config.json` and `results/metrics.json` of each run folder; the
rows and their titles are the pipeline's (`RESULT_ROWS`, `SEG_MODELS`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from nsrom_lib.config import NOT_RESULT_KEYS, ConfigError, RunConfig, make_config
from nsrom_lib.data.io import DataError
from nsrom_lib.pipeline import RESULT_ROWS, SEG_MODELS

__all__ = ["load_run_results", "compare_runs", "compare_table", "RUN_ONLY_KEYS"]

#: Config keys that are never column labels: where or how fast a run ran, not what it computed,
#: and the dataset's path (the same data lies at other paths on other machines).
RUN_ONLY_KEYS = NOT_RESULT_KEYS | {"data_root"}

# Differences of val mIoU between two rows, per run: what each step added.
_STEPS = (
    ("POM (BE+POM r1 - BE r1)", "pom_round1", "be_round1"),
    ("NSRM (r2 - BE+POM r1)", "nsrm_round2", "pom_round1"),
    ("GloRe (on - off, r2)", "nsrm_round2", "nsrm_round2_no_glore"),
)


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
    missing = [k for k in RESULT_ROWS if not isinstance(metrics.get(k), dict) or "miou" not in metrics[k]]
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


def _stats(values: list[float | None]) -> dict[str, float | None]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return dict(mean=None, min=None, max=None)
    return dict(mean=sum(v) / len(v), min=min(v), max=max(v))


def compare_runs(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """Collect the ablation of several finished runs.

    Returns runs: [{dir, label, profile, seed}]; rows: {key: {title, miou, ratio,
    nonsalient_recall (lists, one value per run), and for each a {mean, min, max}}};
    steps: {name: {values, mean, min, max, positive (runs where the step raised mIoU)}};
    checks: {name: {text, ok (list of bool per run), met (count)}}.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    dirs = [Path(d) for d in run_dirs]
    loaded = [load_run_results(d) for d in dirs]
    configs = [c for c, _ in loaded]
    metrics = [m for _, m in loaded]
    rows: dict[str, Any] = {}
    for key in RESULT_ROWS:
        row: dict[str, Any] = dict(title=SEG_MODELS[key]["title"])
        for field, name in (("miou", "miou"), ("ratio_to_upper_bound", "ratio"),
                            ("nonsalient_recall", "nonsalient_recall")):
            vals = [m[key].get(field) for m in metrics]
            row[name] = vals
            row[f"{name}_stats"] = _stats(vals)
        rows[key] = row
    steps: dict[str, Any] = {}
    for name, a, b in _STEPS:
        vals = [m[a]["miou"] - m[b]["miou"] for m in metrics]
        steps[name] = dict(values=vals, positive=sum(v > 0 for v in vals), **_stats(vals))
    checks: dict[str, Any] = {}
    for m in metrics:
        for name, chk in m.get("checks", {}).items():
            checks.setdefault(name, dict(text=chk.get("text", name), ok=[]))
    for name, c in checks.items():
        c["ok"] = [bool(m.get("checks", {}).get(name, {}).get("ok")) for m in metrics]
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
