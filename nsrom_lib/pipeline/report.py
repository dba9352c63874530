"""What a run shows: the results stage with its figure, the Markdown tables, `report.md`, and the
stage table a notebook prints before it trains. The only module of the package that draws
(`nsrom_lib.viz`)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nsrom_lib.config import RunConfig
from nsrom_lib.data.io import DataError, atomic_path, atomic_write_text
from nsrom_lib.data.voc import read_class_names
from nsrom_lib.device import cpu_model, resolve_device
from nsrom_lib.pipeline.run import STAGES, Run, open_run
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.pipeline.stages.results import (
    LABEL_ROWS,
    LABEL_TITLES,
    RESULT_ROWS,
    compute_results,
    stored_checks,
)
from nsrom_lib.pipeline.stages.segmentation import SEG_MODELS, segmentation_key
from nsrom_lib.viz import ablation_chart, quality_table, seeds_chart

__all__ = ["ensure_results", "ensure_seed_results", "seeds_figure", "load_results",
           "results_table", "label_table", "stage_times", "write_report", "stage_status"]


def ensure_results(run: Run, progress: bool = True) -> dict[str, Any]:
    """Stage `results`: every model and label set of the ablation, `results/metrics.json`,
    `results/ablation.png` and the run's `report.md` (docs/method.md §8).

    Trains what is missing (upper bound, BE round 1, round 1, NSRM, round 2, and the GloRe-off
    pipeline: classifier, IAM, maps, pseudo labels, both rounds). metrics.json holds one entry per
    `RESULT_ROWS` key (`miou`, `ratio_to_upper_bound`, `nonsalient_recall`, `salient_recall`,
    `iou`, `stage`) and per `LABEL_ROWS` key (`precision`, `coverage`, `miou`,
    `nonsalient_recall`, `stage`), all rates as fractions in 0..1, plus the checks of `TARGETS`.
    """
    rec = compute_results(run, progress=progress, figure=_ablation_figure)
    write_report(run)
    return rec


def ensure_seed_results(run_dir: str | os.PathLike, profile: str, seed: int,
                        overrides: dict[str, Any] | None = None, progress: bool = True
                        ) -> tuple[Run, bool]:
    """One seed of `python -m nsrom_lib results`: the run folder `run_dir` of `profile` with
    `seed` (and `overrides`), its stages through `results` (`ensure_results`, no notebooks).

    Returns (run, reused): reused is True when the folder's results stage had finished with this
    configuration already, and then nothing is opened beyond its records. An interrupted seed
    resumes: every stage it finished is reused (`Run.ensure`).
    """
    run = open_run(run_dir, profile, seed=seed, **(overrides or {}))
    if run.is_done("results") and (run.dir / "results" / "metrics.json").is_file():
        return run, True
    ensure_results(run, progress=progress)
    return run, False


def load_results(run: Run) -> dict[str, Any]:
    """`results/metrics.json` of a run (computing the results stage if needed)."""
    ensure_results(run)
    return json.loads((run.dir / "results" / "metrics.json").read_text())


def _ablation_figure(metrics: dict[str, Any], path: Path) -> None:
    # lazy: pyplot is slow to import and only this figure needs it (the labels CLI reaches this
    # package for resolve_device). No matplotlib.use(...): in a kernel it stops inline figures.
    import matplotlib.pyplot as plt

    fig = ablation_chart(metrics)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def seeds_figure(summary: dict[str, Any], path: Path) -> None:
    """Draw the summary over seeds (`nsrom_lib.compare.summarise_seeds`) into the PNG `path`."""
    import matplotlib.pyplot as plt

    fig = seeds_chart(summary)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def results_table(metrics: dict[str, Any]) -> str:
    """The ablation table of a `metrics.json` dict as Markdown."""
    rows = {metrics[k]["title"] + f" (`{metrics[k]['stage']}`)": metrics[k] for k in RESULT_ROWS}
    return quality_table(rows, dict(miou="val mIoU", ratio_to_upper_bound="ratio to upper bound",
                                    nonsalient_recall="non-salient recall",
                                    salient_recall="salient recall"))


def label_table(metrics: dict[str, Any]) -> str:
    """The label-quality table (training images) of a `metrics.json` dict as Markdown."""
    rows = {f"{LABEL_TITLES[k]} (`{metrics[k]['stage']}`)": metrics[k] for k in LABEL_ROWS}
    return quality_table(rows, dict(precision="precision", coverage="coverage", miou="mIoU",
                                    nonsalient_recall="non-salient recall"))


def stage_times(run: Run | str | os.PathLike) -> dict[str, float]:
    """Wall time of every stage (and variant) with a record in the run (a `Run` or its folder):
    {stage folder: seconds}, in pipeline order."""
    run_dir = run.dir if isinstance(run, Run) else Path(run)
    out: dict[str, float] = {}
    for rec_path in sorted(run_dir.glob("**/record.json")):
        rel = rec_path.parent.relative_to(run_dir).as_posix()
        if rel.split("/", 1)[0] not in STAGES:
            continue
        try:
            out[rel] = float(json.loads(rec_path.read_text()).get("seconds", 0.0))
        except (json.JSONDecodeError, OSError, ValueError):
            continue
    order = {s: i for i, s in enumerate(STAGES)}
    return dict(sorted(out.items(), key=lambda kv: (order[kv[0].split("/")[0]], kv[0])))


def write_report(run: Run, notebooks: list[dict[str, Any]] | None = None) -> Path:
    """Write `<run>/report.md`: profile, machine, the ablation table, the checks, label quality,
    per-class IoU, the figure and the wall time per stage (and per notebook when given)."""
    metrics = json.loads((run.dir / "results" / "metrics.json").read_text())
    rec = run.record("results") or {}
    cfg = run.cfg
    lines = [
        f"# NSROM on {'SynthVOC' if cfg.data_root is None else cfg.data_root}: profile `{cfg.profile}`",
        "",
        f"Machine: {rec.get('machine', platform.node())}, CPU {rec.get('cpu') or cpu_model()}, "
        f"torch {rec.get('torch', '?')} with {rec.get('threads', '?')} threads; device "
        f"`{resolve_device(cfg.device)}`; results finished {rec.get('finished', '?')}. Run folder "
        f"`{run.dir}`; configuration in `config.json`. Every number below is read from the run's "
        "stage records and `results/metrics.json`. Another CPU or torch build gives other weakly "
        "supervised numbers for the same seed (the upper bound barely moves).",
        "",
        "## Ablation (validation split)",
        "",
        results_table(metrics),
        "",
        "![ablation](results/ablation.png)",
        "",
        "## Targets",
        "",
    ]
    for v in stored_checks(metrics).values():
        val = v["value"]
        shown = ", ".join(f"{x:.3f}" for x in val) if isinstance(val, list) else f"{val:.3f}"
        lines.append(f"- {'met' if v['ok'] else '**missed**'}: {v['text']} ({shown})")
    lines += ["", "## Label quality (training images, against GT)", "", label_table(metrics), ""]
    names = _class_names(run)
    head = ["background", *names]
    lines += ["## Per-class IoU (validation)", "",
              "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in RESULT_ROWS:
        iou = metrics[k].get("iou") or []
        lines.append(f"| {k} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in iou) + " |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    for stage, sec in stage_times(run).items():
        lines.append(f"| `{stage}` | {sec:.1f} |")
    if notebooks:
        lines += ["", "| notebook | seconds |", "|---|---|"]
        lines += [f"| {n['notebook']} | {n['seconds']:.1f} |" for n in notebooks]
        lines.append(f"| total | {sum(n['seconds'] for n in notebooks):.1f} |")
    path = run.dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _class_names(run: Run) -> list[str]:
    """The class names of the run's dataset (`classes.txt`), or c0, c1, ... without one."""
    try:
        names = read_class_names(ensure_data(run, progress=False))
    except (DataError, OSError):
        names = None
    return list(names) if names else [f"c{i}" for i in range(run.cfg.num_classes)]


def _stage_work(cfg: RunConfig, stage: str) -> str:
    """What computing `stage` means, in words a reader can weigh (epochs x images)."""
    top = stage.split("/", 1)[0]
    n = f"{cfg.n_train:,} images" if cfg.n_train else "the training split"
    return {
        "data": "generates the images" if cfg.data_root is None else "checks the dataset",
        "classifier": f"trains {cfg.cls_epochs} epochs on {n}",
        "iam": f"trains {cfg.iam_epochs} epochs on {n}",
        "maps": f"exports the maps of {n}",
        "pseudo": f"labels {n}",
        "seg1": f"trains {cfg.seg_epochs} epochs on {n}",
        "masked": f"predicts and masks {n}",
        "seg2": f"trains {cfg.seg_epochs} epochs on {n}",
        "results": "measures the models",
    }.get(top, "computes")


def stage_status(run: Run, stages: Iterable[str]) -> str:
    """A Markdown table: for each stage, done (and how long it took) or what computing it means.

    What a notebook shows before it trains: the reader knows what is coming and why a cell
    takes minutes. Segmentation stages are named as in `SEG_MODELS` (e.g. `seg1/be`).
    """
    by_stage = {spec["stage"]: which for which, spec in SEG_MODELS.items()}
    lines = ["| stage | in this run folder |", "|---|---|"]
    for stage in stages:
        key = segmentation_key(run, by_stage[stage]) if stage in by_stage else run.stage_key(stage)
        rec = run.record(stage)
        if rec is not None and rec.get("key") == key:
            lines.append(f"| `{stage}` | done, {rec.get('seconds', 0):.0f} s ({rec.get('finished', '')}) |")
        else:
            lines.append(f"| `{stage}` | **to compute now**: {_stage_work(run.cfg, stage)} |")
    return "\n".join(lines)
