"""Stage `results` (docs/method.md §8): every model and label set of the ablation measured into
`results/metrics.json`, and the checks of `TARGETS`.

Drawing the figure and writing `report.md` belong to `nsrom_lib.pipeline.report`, which passes
the figure in (`compute_results(..., figure=...)`), so this module needs no plotting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nsrom_lib.data.io import DataError, atomic_write_json, read_label_png
from nsrom_lib.data.voc import gt_mask_dir, read_split
from nsrom_lib.metrics import GAP_MEASURES, gap_decomposition, nonsalient_object_masks
from nsrom_lib.pipeline.run import Run
from nsrom_lib.pipeline.stages.common import load_ground_truth
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.pipeline.stages.pseudo import PSEUDO_SOURCES, ensure_pseudo
from nsrom_lib.pipeline.stages.segmentation import SEG_MODELS, ensure_masked, ensure_segmentation

__all__ = ["RESULT_ROWS", "LABEL_ROWS", "LABEL_TITLES", "LATER_ROWS", "GAP_ROWS", "TARGETS", "results_checks",
           "stored_checks", "compute_results", "gap_measures", "read_metrics"]


#: The rows of the ablation table, in order (keys of `results/metrics.json`).
RESULT_ROWS = ("upper_bound", "be_round1", "pom_round1", "pom_round1_cam", "nsrm_round2",
               "nsrm_round2_no_glore")


#: The models of `metrics.json['gap']`: the rows of the table but the OAA one, and round 1 with
#: GloRe off.
GAP_ROWS = ("upper_bound", "be_round1", "pom_round1", "nsrm_round2", "nsrm_round2_no_glore",
            "pom_round1_no_glore")


#: The label sets measured on the training images: key -> (stage, record field, folder).
LABEL_ROWS = {
    "be_labels": ("pseudo", "initial", "pseudo/initial"),
    "pom_labels": ("pseudo", "pseudo", "pseudo/pseudo"),
    "masked_labels": ("masked", "masked", "masked/labels"),
    # the OAA ablation: the same labels with BE on the final CAM, and on the accumulated maps
    "be_labels_cam": ("pseudo/cam", "initial", "pseudo/cam/initial"),
    "pom_labels_cam": ("pseudo/cam", "pseudo", "pseudo/cam/pseudo"),
    "be_labels_accumulated": ("pseudo/accumulated", "initial", "pseudo/accumulated/initial"),
    "pom_labels_accumulated": ("pseudo/accumulated", "pseudo", "pseudo/accumulated/pseudo"),
}

#: The label rows' titles in tables and figures.
LABEL_TITLES = {"be_labels": "BE labels", "pom_labels": "BE + POM labels",
                "masked_labels": "NSRM labels",
                "be_labels_cam": "BE labels from the CAM",
                "pom_labels_cam": "BE + POM labels from the CAM",
                "be_labels_accumulated": "BE labels from the accumulated maps",
                "pom_labels_accumulated": "BE + POM labels from the accumulated maps"}

#: Rows the results stage measures since the OAA ablation: a metrics.json written before it
#: lacks them, and tables and summaries leave them out (or show *n/a* for such a run).
LATER_ROWS = ("pom_round1_cam", "be_labels_cam", "pom_labels_cam", "be_labels_accumulated",
              "pom_labels_accumulated")


#: The targets one run is checked against, computed from its metrics.json. A target that
#: compares two rows of one draw (GloRe on against off, round 2 against a fixed share of the
#: upper bound) is no target here: the ratio to the upper bound stays a reported number of every
#: row, and whether a step helps is counted over seeds (`python -m nsrom_lib results --seeds`,
#: `nsrom_lib.compare.STEPS`).
TARGETS = {
    "monotone": "val mIoU rises: BE round 1 < BE+POM round 1 < NSRM round 2",
    "nonsalient_2x": "non-salient recall of the final model >= 2 x that of the BE labels",
}


def results_checks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of `TARGETS` evaluated on a `metrics.json` dict: {name: {ok, value, text}}."""
    r = {k: metrics[k] for k in ("be_round1", "pom_round1", "nsrm_round2")}
    be_ns = metrics["be_labels"].get("nonsalient_recall")
    final_ns = r["nsrm_round2"].get("nonsalient_recall")
    mi = [r[k]["miou"] for k in ("be_round1", "pom_round1", "nsrm_round2")]
    out = {"monotone": dict(value=mi, ok=mi[0] < mi[1] < mi[2])}
    if be_ns is not None and final_ns is not None:
        out["nonsalient_2x"] = dict(value=[final_ns, be_ns], ok=final_ns >= 2 * be_ns)
    for k, v in out.items():
        v["text"] = TARGETS[k]
    return out


def stored_checks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The checks a `metrics.json` dict stores, those of `TARGETS` only: a file written when
    other targets existed (e.g. `round2_ratio`, `glore_not_worse`) still reads, without them."""
    checks = metrics.get("checks")
    if not isinstance(checks, dict):
        return {}
    return {k: v for k, v in checks.items() if k in TARGETS and isinstance(v, dict)}


def _require_val_masks(root: Path) -> None:
    """The results need GT masks of every val image (mIoU, the upper bound): fail before any
    training with the folder and the first missing file, not with a KeyError at the end. The
    folder is the one `load_ground_truth` reads (`gt_mask_dir`)."""
    names = read_split(root, "val")
    d = gt_mask_dir(root)
    missing = [n for n in names if not (d / f"{n}.png").is_file()]
    if missing:
        raise DataError(
            f"the results stage measures val mIoU against ground truth, but {len(missing)} of "
            f"the {len(names)} val images of {root} have no mask in {d} (first: "
            f"{missing[0]}.png). Put the palette PNG masks there (VOC: SegmentationClass/ or "
            "SegmentationClassAug/), or list only images with masks in "
            f"{root / 'ImageSets' / 'Segmentation' / 'val.txt'}."
        )


def compute_results(run: Run, progress: bool = True,
                    figure: Callable[[dict[str, Any], Path], None] | None = None) -> dict[str, Any]:
    """The stage `results` without its presentation: train what is missing, then measure it.

    Trains every model of `SEG_MODELS`, both masked label sets and the pseudo labels of every
    BE source (`PSEUDO_SOURCES`) if needed, writes
    `results/metrics.json` and, with `figure`, calls `figure(metrics, results/ablation.png)`
    before the record is written; returns the record. `report.ensure_results` is this plus the
    figure and `report.md`.
    """
    _require_val_masks(ensure_data(run, progress=progress))
    for which in SEG_MODELS:
        ensure_segmentation(run, which, progress=progress)
    for glore in (True, False):
        ensure_masked(run, progress=progress, glore=glore)
    for source in PSEUDO_SOURCES:
        ensure_pseudo(run, progress=progress, source=source)

    def compute() -> dict[str, Any]:
        return _collect_results(run, figure)

    return run.ensure("results", compute)


def _collect_results(run: Run, figure: Callable[[dict[str, Any], Path], None] | None
                     ) -> dict[str, Any]:
    d = run.stage_dir("results")
    out: dict[str, Any] = dict(profile=run.cfg.profile, run_dir=str(run.dir))
    recs = {w: run.record(SEG_MODELS[w]["stage"]) or {} for w in SEG_MODELS}
    no_miou = [SEG_MODELS[w]["stage"] for w, r in recs.items() if "miou" not in r.get("metrics", {})]
    if no_miou:
        raise DataError(f"stages {no_miou} of {run.dir} have no val mIoU (were they trained "
                        "without val ground truth?); delete them and run the results stage again.")
    upper = recs["upper_bound"]["metrics"]["miou"]
    for which in list(RESULT_ROWS) + ["pom_round1_no_glore"]:
        m = recs[which]["metrics"]
        out[which] = dict(
            miou=m["miou"], ratio_to_upper_bound=round(m["miou"] / upper, 4) if upper else None,
            nonsalient_recall=m.get("nonsalient_recall"), salient_recall=m.get("salient_recall"),
            iou=m.get("iou"), stage=SEG_MODELS[which]["stage"], title=SEG_MODELS[which]["title"],
            train_seconds=m.get("train_seconds"),
        )
    for key, (stage, field_, folder) in LABEL_ROWS.items():
        m = (run.record(stage) or {}).get("metrics", {}).get(field_, {})
        out[key] = {k: m.get(k) for k in ("precision", "coverage", "miou", "nonsalient_recall",
                                          "ignore_share")}
        out[key]["stage"] = folder
    out["checks"] = results_checks(out)
    out["gap"] = gap_measures(run)
    atomic_write_json(d / "metrics.json", out)
    if figure is not None:
        figure(out, d / "ablation.png")
    return {k: out[k] for k in RESULT_ROWS + tuple(LABEL_ROWS) + ("checks", "gap")}


def gap_measures(run: Run) -> dict[str, float | None]:
    """Where each model's gap to the upper bound goes, from the stored val predictions.

    For every model of `GAP_ROWS`, `metrics.gap_decomposition` of its `val_pred/` PNGs against
    the val ground truth, the non-salient objects those that `nonsalient_recall` counts
    (`metrics.nonsalient_object_masks`; without SynthVOC instance data the measures that need
    them are None). Returns the flat dict of `metrics.json['gap']`, {"<row>.<measure>": value}
    rounded to 4 digits, with two more measures per row: `gap` (upper-bound mIoU - the row's)
    and `gap_nonsalient_void` (the same with the non-salient object pixels void in both), so
    `gap - gap_nonsalient_void` is the part of the gap the non-salient objects explain
    (`gap_from_nonsalient`). Reads only files: no stage is recomputed.
    """
    root = ensure_data(run, progress=False)
    names = read_split(root, "val")
    gt = load_ground_truth(root, "val", names)
    if gt is None:
        raise DataError(f"the val images of {root} have no GT masks in {gt_mask_dir(root)}: "
                        "the gap to the upper bound cannot be measured")
    ns = (None if gt["instances"] is None
          else nonsalient_object_masks(gt["masks"], gt["instances"], gt["objects"]))
    dec = {}
    for which in GAP_ROWS:
        folder = run.dir / SEG_MODELS[which]["stage"] / "val_pred"
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: the results need every model's val "
                            f"predictions; run the stage `{SEG_MODELS[which]['stage']}` again")
        preds = [read_label_png(folder / f"{n}.png", f"{which} prediction") for n in names]
        dec[which] = gap_decomposition(preds, gt["masks"], ns, run.cfg.num_classes)
    up = dec["upper_bound"]
    out: dict[str, float | None] = {}
    for which, d in dec.items():
        d = dict(d, gap=up["miou"] - d["miou"],
                 gap_nonsalient_void=up["miou_nonsalient_void"] - d["miou_nonsalient_void"])
        d["gap_from_nonsalient"] = d["gap"] - d["gap_nonsalient_void"]
        for k in (*GAP_MEASURES, "gap", "gap_nonsalient_void", "gap_from_nonsalient"):
            out[f"{which}.{k}"] = None if math.isnan(d[k]) else round(float(d[k]), 4)
    return out


def read_metrics(run: Run) -> dict[str, Any]:
    """`results/metrics.json` of a run whose results stage is done, with `gap` added if missing.

    A metrics.json written before the gap decomposition existed gets `gap_measures(run)` (from
    the stored val predictions; nothing is trained) and is written back with it.
    """
    path = run.dir / "results" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage `results` first "
                                "(pipeline.ensure_results(run)).")
    metrics = json.loads(path.read_text())
    if "gap" not in metrics:
        metrics["gap"] = gap_measures(run)
        atomic_write_json(path, metrics)
    return metrics
