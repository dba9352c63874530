"""What a run shows: the results stage with its figure, the Markdown tables, `report.md`, and the
stage table a notebook prints before it trains. The only module of the package that draws
(`nsrom_lib.viz`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nsrom_lib.config import RunConfig
from nsrom_lib.data.io import DataError, atomic_path, atomic_write_text
from nsrom_lib.data.voc import read_class_names
from nsrom_lib.device import MACHINE_FIELDS, describe_machine, resolve_device
from nsrom_lib.pipeline.run import STAGES, Run, open_run
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.pipeline.stages.results import (
    GAP_ROWS,
    LABEL_ROWS,
    LABEL_TITLES,
    RESULT_ROWS,
    compute_results,
    read_metrics,
    stored_checks,
)
from nsrom_lib.pipeline.stages.segmentation import SEG_MODELS, segmentation_key
from nsrom_lib.viz import ablation_chart, gap_chart, quality_table, seeds_chart

__all__ = ["ensure_results", "ensure_seed_results", "seeds_figure", "load_results",
           "results_table", "label_table", "gap_table", "stage_times", "stage_machines",
           "write_report", "stage_status"]


def ensure_results(run: Run, progress: bool = True) -> dict[str, Any]:
    """Stage `results`: every model and label set of the ablation, `results/metrics.json`,
    `results/ablation.png` and the run's `report.md` (docs/method.md §8).

    Trains what is missing (upper bound, BE round 1, round 1, NSRM, round 2, the OAA ablation:
    labels with BE on the CAM and on the accumulated maps, round 1 on the CAM ones, and the
    GloRe-off pipeline: classifier, IAM, maps, pseudo labels, both rounds). metrics.json holds one entry per
    `RESULT_ROWS` key (`miou`, `ratio_to_upper_bound`, `nonsalient_recall`, `salient_recall`,
    `iou`, `stage`) and per `LABEL_ROWS` key (`precision`, `coverage`, `miou`,
    `nonsalient_recall`, `stage`), all rates as fractions in 0..1, plus the checks of `TARGETS`
    and `gap` (`stages.results.gap_measures`: where each model's gap to the upper bound goes).
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
    """`results/metrics.json` of a run (computing the results stage if needed; an older one
    without `gap` gets it, `read_metrics`)."""
    ensure_results(run)
    return read_metrics(run)


def _save_chart(metrics: dict[str, Any], path: Path, chart=ablation_chart) -> None:
    """Draw `chart(metrics)` (a `viz` figure of metrics.json) into the PNG `path`."""
    # lazy: pyplot is slow to import and only these figures need it (the labels CLI reaches this
    # package for resolve_device). No matplotlib.use(...): in a kernel it stops inline figures.
    import matplotlib.pyplot as plt

    fig = chart(metrics)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _ablation_figure(metrics: dict[str, Any], path: Path) -> None:
    _save_chart(metrics, path, ablation_chart)


def seeds_figure(summary: dict[str, Any], path: Path) -> None:
    """Draw the summary over seeds (`nsrom_lib.compare.summarise_seeds`) into the PNG `path`."""
    _save_chart(summary, path, seeds_chart)


def results_table(metrics: dict[str, Any]) -> str:
    """The ablation table of a `metrics.json` dict as Markdown (a row of `LATER_ROWS` that an
    older metrics.json lacks is left out)."""
    rows = {metrics[k]["title"] + f" (`{metrics[k]['stage']}`)": metrics[k] for k in RESULT_ROWS
            if k in metrics}
    return quality_table(rows, dict(miou="val mIoU", ratio_to_upper_bound="ratio to upper bound",
                                    nonsalient_recall="non-salient recall",
                                    salient_recall="salient recall"))


def label_table(metrics: dict[str, Any]) -> str:
    """The label-quality table (training images) of a `metrics.json` dict as Markdown."""
    rows = {f"{LABEL_TITLES[k]} (`{metrics[k]['stage']}`)": metrics[k] for k in LABEL_ROWS
            if k in metrics}
    return quality_table(rows, dict(precision="precision", coverage="coverage", miou="mIoU",
                                    nonsalient_recall="non-salient recall"))


#: The columns of `gap_table`: measure of `metrics.json['gap']` -> column title.
GAP_COLUMNS = dict(
    miou="val mIoU", gap="gap to upper bound", gap_nonsalient_void="gap, non-salient void",
    gap_from_nonsalient="gap from non-salient objects",
    nonsalient_as_background="non-salient as background",
    salient_as_background="salient as background", lost_nonsalient="object pixels lost, non-salient",
    lost_salient="object pixels lost, salient", background_as_object="background as object",
)


def gap_table(metrics: dict[str, Any]) -> str:
    """Where the gap to the upper bound goes (`metrics.json['gap']`) as Markdown: one row per
    model of `GAP_ROWS`, one column per measure of `GAP_COLUMNS` (*n/a* where a measure needs
    instance data the dataset lacks, or for a metrics.json without `gap`: see `read_metrics`)."""
    gap = metrics.get("gap") or {}
    rows = {metrics[k]["title"] + f" (`{metrics[k]['stage']}`)":
            {m: gap.get(f"{k}.{m}") for m in GAP_COLUMNS} for k in GAP_ROWS}
    return quality_table(rows, GAP_COLUMNS)


def _stage_records(run: Run | str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every readable stage record of the run (a `Run` or its folder): {stage folder: record},
    in pipeline order."""
    run_dir = run.dir if isinstance(run, Run) else Path(run)
    out: dict[str, dict[str, Any]] = {}
    for rec_path in sorted(run_dir.glob("**/record.json")):
        rel = rec_path.parent.relative_to(run_dir).as_posix()
        if rel.split("/", 1)[0] not in STAGES:
            continue
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
            continue
        if isinstance(rec, dict):
            out[rel] = rec
    order = {s: i for i, s in enumerate(STAGES)}
    return dict(sorted(out.items(), key=lambda kv: (order[kv[0].split("/")[0]], kv[0])))


def stage_times(run: Run | str | os.PathLike) -> dict[str, float]:
    """Wall time of every stage (and variant) with a record in the run (a `Run` or its folder):
    {stage folder: seconds}, in pipeline order."""
    out: dict[str, float] = {}
    for rel, rec in _stage_records(run).items():
        try:
            out[rel] = float(rec.get("seconds", 0.0))
        except (TypeError, ValueError):
            continue
    return out


def stage_machines(run: Run | str | os.PathLike) -> dict[str, list[str]]:
    """Which stages ran where: {`describe_machine` of a record: its stage folders}, one entry per
    CPU model, torch build, thread count and GPU (`MACHINE_FIELDS`; the host's name aside)."""
    groups: dict[tuple, tuple[str, list[str]]] = {}
    for rel, rec in _stage_records(run).items():
        sig = tuple(str(rec.get(k)) for k in MACHINE_FIELDS)
        groups.setdefault(sig, (describe_machine(rec), []))[1].append(rel)
    return {text: stages for text, stages in groups.values()}


def write_report(run: Run, notebooks: list[dict[str, Any]] | None = None) -> Path:
    """Write `<run>/report.md`: profile, machine, the ablation table, the checks, label quality,
    where the gap to the upper bound goes (table and `results/gap.png`), per-class IoU, the
    figure and the wall time per stage (and per notebook when given)."""
    metrics = read_metrics(run)
    _save_chart(metrics, run.dir / "results" / "gap.png", gap_chart)
    rec = run.record("results") or {}
    cfg = run.cfg
    lines = [
        f"# NSROM on {'SynthVOC' if cfg.data_root is None else cfg.data_root}: profile `{cfg.profile}`",
        "",
        f"Machine: {describe_machine(rec)}; device "
        f"`{resolve_device(cfg.device)}`; results finished {rec.get('finished', '?')}. Run folder "
        f"`{run.dir}`; configuration in `config.json`. Every number below is read from the run's "
        "stage records and `results/metrics.json`. The same machine and build give the same numbers "
        "again; another CPU or torch build gives other weakly supervised numbers for the same seed "
        "(the fully supervised upper bound moved less than 0.001 between the two CPUs compared so "
        "far), so compare runs made on one machine.",
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
    lines += ["## Where the gap to the upper bound goes (validation)", "",
              "Gap: upper-bound mIoU minus the model's; the same with the non-salient object "
              "pixels void in the GT of both; their difference is the part the non-salient "
              "objects explain. Object pixels lost: predicted background, as a share of all "
              "object pixels (docs/method.md, §8).", "",
              gap_table(metrics), "", "![gap](results/gap.png)", ""]
    names = _class_names(run)
    head = ["background", *names]
    lines += ["## Per-class IoU (validation)", "",
              "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in (k for k in RESULT_ROWS if k in metrics):
        iou = metrics[k].get("iou") or []
        lines.append(f"| {k} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in iou) + " |")
    machines = stage_machines(run)
    if len(machines) > 1:  # a resumed run: its numbers mix machines
        lines += ["", "## Machines", "",
                  "The stages of this run were computed on more than one machine (CPU model, torch "
                  "build, threads or GPU), so its weakly supervised numbers need not match a run "
                  "computed on any one of them:", ""]
        lines += [f"- {text}: " + ", ".join(f"`{s}`" for s in stages)
                  for text, stages in machines.items()]
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
