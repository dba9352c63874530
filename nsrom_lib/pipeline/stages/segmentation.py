"""Stages `seg1`, `masked` and `seg2` (docs/method.md §5–§7): the segmentation rounds, their
baselines and non-salient region masking.

The training loop is `nsrom_lib.train`, the masking `nsrom_lib.labels` through the CLI's code
(`label_folders.make_labels`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nsrom_lib import distributed as dist
from nsrom_lib import train as T
from nsrom_lib.config import RunConfig
from nsrom_lib.crf import crf_params_for, require_densecrf
from nsrom_lib.data.io import DataError, atomic_write_json, read_label_png
from nsrom_lib.data.maps_io import load_label_inputs, write_labels
from nsrom_lib.data.split import LabelFiles
from nsrom_lib.data.voc import VOCSegDataset, read_split, write_cls_list
from nsrom_lib.label_folders import make_labels
from nsrom_lib.metrics import LabelTally
from nsrom_lib.models.segmentation import DeepLabV2
from nsrom_lib.params import NSRM
from nsrom_lib.pipeline.run import (
    SEG_PREDICT_FIELDS,
    STAGE_FIELDS,
    UPPER_BOUND_FIELDS,
    Run,
    variant_stage,
)
from nsrom_lib.pipeline.stages.common import (
    PREDICT_BATCH,
    GroundTruth,
    ensure_trained,
    history_metrics,
    label_record,
    load_torch,
    open_ground_truth,
    save_torch,
    training_context,
)
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.pipeline.stages.pseudo import PSEUDO_KINDS, ensure_pseudo, pseudo_stage

log = logging.getLogger(__name__)

__all__ = [
    "SEG_MODELS", "nsrm_kernel_for", "build_segmenter", "segmentation_key", "ensure_segmentation",
    "load_segmenter", "load_predictions", "ensure_masked", "load_masked",
]


#: Every segmentation model a run trains: key (as in `results/metrics.json`) -> its stage folder,
#: the labels it learns from, the classifier variant those labels come from and, for pseudo
#: labels, the maps BE read (`source`, `pseudo.PSEUDO_SOURCES`; default the OA-CAM).
SEG_MODELS: dict[str, dict[str, Any]] = {
    "upper_bound": dict(stage="seg1/gt", labels="gt", glore=True,
                        title="fully supervised (GT masks)"),
    "be_round1": dict(stage="seg1/be", labels="initial", glore=True,
                      title="round 1 on BE labels"),
    "pom_round1": dict(stage="seg1", labels="pseudo", glore=True,
                       title="round 1 on BE + POM labels"),
    "pom_round1_cam": dict(stage="seg1/cam", labels="pseudo", glore=True, source="cam",
                           title="round 1 on BE + POM labels from the CAM (OAA off)"),
    "nsrm_round2": dict(stage="seg2", labels="masked", glore=True,
                        title="round 2 on NSRM labels"),
    "pom_round1_no_glore": dict(stage="seg1/no_glore", labels="pseudo", glore=False,
                                title="round 1, GloRe off"),
    "nsrm_round2_no_glore": dict(stage="seg2/no_glore", labels="masked", glore=False,
                                 title="round 2, GloRe off"),
}


def nsrm_kernel_for(cfg: RunConfig) -> int:
    """The NSRM dilation kernel of a run: `nsrm_kernel`, or 0 -> the reference's 30 px scaled.

    The reference dilates with k = NSRM.kernel = 30 on PASCAL VOC images, whose long side is (at
    most) 500 px; scaled to the run's image side S that is k = max(1, round(30 * S / 500)): 6 px
    at 96 px, 8 px at 128 px, 19 px at 321 px. The `voc` profile sets 30 explicitly.
    """
    if cfg.nsrm_kernel > 0:
        return int(cfg.nsrm_kernel)
    return max(1, round(NSRM.kernel * cfg.image_size / 500))


def build_segmenter(cfg: RunConfig):
    """The segmentation network of a run configuration (DeepLab-v2 style, §5)."""
    return DeepLabV2(cfg.num_classes, backbone=cfg.seg_backbone, width=cfg.seg_width,
                     image_size=cfg.image_size, pretrained=cfg.seg_pretrained,
                     output_stride=cfg.seg_output_stride, channels_last=cfg.channels_last)


def segmentation_key(run: Run, which: str) -> str:
    spec = SEG_MODELS[which]
    fields = UPPER_BOUND_FIELDS if spec["labels"] == "gt" else None
    return run.stage_key(spec["stage"], fields)


def _seg_train_key(run: Run, which: str) -> str:
    """The key of a segmentation model's *training*: its stage key without the prediction-only
    settings (`SEG_PREDICT_FIELDS`), except for round 2, whose labels are made from round 1's
    predictions and so change with them."""
    spec = SEG_MODELS[which]
    if spec["labels"] == "masked":
        return segmentation_key(run, which)
    fields = UPPER_BOUND_FIELDS if spec["labels"] == "gt" else STAGE_FIELDS["seg1"]
    return run.stage_key(spec["stage"], [f for f in fields if f not in SEG_PREDICT_FIELDS],
                         part="training")


def _seg_crf(cfg: RunConfig):
    """The CRF settings of a run's predictions (None without `seg_crf`); fails at once, before
    any training, when the CRF package is missing."""
    if not cfg.seg_crf:
        return None
    require_densecrf()
    return crf_params_for(cfg.image_size)


def _to_size(pred: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """An (h, w) uint8 prediction at its image's size (H, W) (nearest neighbour), as numpy."""
    if tuple(pred.shape) != tuple(size):
        pred = F.interpolate(pred[None, None].float(), size=size, mode="nearest")[0, 0].byte()
    return pred.numpy()


def _training_labels(run: Run, which: str, names: list[str], root: Path,
                     progress: bool = True) -> LabelFiles:
    """The labels model `which` learns from, for the training images `names`: their files,
    read on demand at each image's size; the stages that make them are run first."""
    spec = SEG_MODELS[which]
    if spec["labels"] == "gt":
        gt = open_ground_truth(root, "train", names)
        if gt is None:
            raise DataError(f"the fully supervised upper bound needs GT masks of the training "
                            f"images in {root}/SegmentationClass(Aug); without them skip it")
        return LabelFiles([gt.mask_path(i) for i in range(len(gt))], what="GT mask")
    if spec["labels"] in PSEUDO_KINDS:
        source = spec.get("source", "oacam")
        ensure_pseudo(run, glore=spec["glore"], progress=progress, source=source)
        folder = run.dir / pseudo_stage(spec["glore"], source) / spec["labels"]
        return LabelFiles([folder / f"{n}.png" for n in names], what=f"{spec['labels']} label")
    ensure_masked(run, glore=spec["glore"], progress=progress)
    folder = run.dir / variant_stage("masked", spec["glore"]) / "labels"
    return LabelFiles([folder / f"{n}.png" for n in names], what="masked label")


def _label_coverage(labels: LabelFiles) -> float:
    """The mean share of labelled (not ignored) pixels per training label, at the images' sizes."""
    shares = [(labels[i].numpy() != 255).mean() for i in range(len(labels))]
    return round(float(np.mean(shares)), 4)


def _predict_split(model: torch.nn.Module, split: dict[str, Any], gt: GroundTruth | None,
                   folder: Path, device: torch.device, cfg: RunConfig, crf: Any,
                   workers: int) -> LabelTally:
    """Predict every image of `split` (`train.load_split`) batch by batch, write each
    prediction at its image's size as `folder/{name}.png` (all or nothing, `write_labels`), and
    add it up against `gt` (None: the predictions' own measures only). Returns the tally."""
    tally = LabelTally(cfg.num_classes + 1)
    model.to(device).eval()

    def predictions():
        for idx, x in T.image_batches(split["images"], PREDICT_BATCH, num_workers=workers,
                                      device=device):
            batch = T.segment_batch(model, x, device, flip=cfg.seg_test_flip, crf=crf)
            for i, pred in zip(idx.tolist(), batch, strict=True):
                pred = _to_size(pred, split["sizes"][i])
                if gt is None:
                    tally.add(pred)
                else:
                    tally.add(pred, *gt.image(i))
                yield split["names"][i], pred

    write_labels(folder, predictions())
    return tally


def _prediction_metrics(tally: LabelTally, gt: GroundTruth | None) -> dict[str, Any]:
    """mIoU, per-class IoU and (SynthVOC) non-salient / salient object recall of predictions."""
    if gt is None:
        return {}
    m, iou = tally.miou()
    out: dict[str, Any] = dict(miou=round(m, 4),
                               iou=[None if np.isnan(v) else round(float(v), 4) for v in iou])
    if gt.with_instances:
        for salient, key in ((False, "nonsalient_recall"), (True, "salient_recall")):
            out[key] = round(tally.instance_recall(salient), 4)
    return out


def ensure_segmentation(run: Run, which: str = "pom_round1", progress: bool = True) -> dict[str, Any]:
    """Train one segmentation model of the run (docs/method.md §5, §7) and evaluate it; the record.

    which: a key of `SEG_MODELS` — "pom_round1" is the stage `seg1` (round 1 on the BE + POM
    pseudo labels), "nsrm_round2" the stage `seg2` (round 2 on the masked labels); the others are
    the baselines and the GloRe-off ablation in sub-folders (`seg1/gt`, `seg1/be`,
    `seg1/no_glore`, `seg2/no_glore`). All share the network, budget and seed, so they differ
    only in their labels. Artefacts in the stage folder: `model.pt`, `history.json`,
    `val_pred/{name}.png` (VOC palette) and, for round-1 models that feed NSRM,
    `train_pred/{name}.png`. Metrics: val mIoU, per-class IoU, non-salient / salient object
    recall, training summary; for `train_pred`, the quality of those predictions as labels.
    """
    if which not in SEG_MODELS:
        raise ValueError(f"unknown segmentation model {which!r}; choose one of {list(SEG_MODELS)}")
    spec = SEG_MODELS[which]
    stage = spec["stage"]
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    key = segmentation_key(run, which)
    feeds_nsrm = which in ("pom_round1", "pom_round1_no_glore")
    if run.is_done(stage, key):
        return run.record(stage) or {}
    # upstream stages first (each returns at once when done), so this stage's time is its own
    crf = _seg_crf(cfg)  # before any training: a missing CRF package fails now
    names = read_split(root, "train")
    labels = _training_labels(run, which, names, root, progress=progress)
    train_key = _seg_train_key(run, which)

    def compute() -> dict[str, Any]:
        d, device, data = training_context(run, stage, root)
        if data["names"] != names:
            raise RuntimeError(f"the training split of {root} changed while the run was going")
        workers = T.loader_workers(cfg.num_workers, device)
        coverage = _label_coverage(labels) if dist.is_main() else None  # before any training
        T.seed_everything(cfg.seed + 2)  # before the model is built: its initialisation
        model = build_segmenter(cfg)
        res, reused = _train_or_reuse(run, which, model, d, device, data["images"], labels,
                                      key, train_key, progress, workers)
        if not dist.is_main():  # one of several training processes: rank 0 predicts and writes
            return {}
        t0 = time.perf_counter()
        val = T.load_split(root, "val", cfg.num_classes, cfg.image_size)
        val_gt = open_ground_truth(root, "val", val["names"])
        val_tally = _predict_split(model, val, val_gt, d / "val_pred", device, cfg, crf, workers)
        metrics: dict[str, Any] = dict(
            which=which, trained_on=spec["labels"], glore=spec["glore"],
            **_prediction_metrics(val_tally, val_gt),
            **history_metrics(res["history"], res["resumed_from"]),
            label_coverage=coverage,
        )
        if feeds_nsrm:
            gt = open_ground_truth(root, "train", names)
            tally = _predict_split(model, data, gt, d / "train_pred", device, cfg, crf, workers)
            metrics["train_pred"] = label_record(tally, with_gt=gt is not None)
        metrics["predict_seconds"] = round(time.perf_counter() - t0, 2)
        metrics["device"] = str(device)
        metrics["crf"] = dataclasses.asdict(crf) if crf is not None else None
        metrics["model_reused"] = reused
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return metrics

    # a model already trained under these settings is only predicted with: no processes
    untrained = _trained_model(run.stage_dir(stage), train_key) is None
    return ensure_trained(run, stage, compute, ["segmentation", "--which", which], key=key,
                          launch=untrained, which=which)


def _train_or_reuse(run: Run, which: str, model: torch.nn.Module, d: Path, device: torch.device,
                    images: Any, labels: LabelFiles, key: str, train_key: str,
                    progress: bool, workers: int) -> tuple[dict[str, Any], bool]:
    """Train `model` on `labels`, or load the stored model when only prediction settings changed.

    images: the training images (`train.load_split`); labels: their label files, read (and
    resized to the images' size) batch by batch with `workers` DataLoader processes.
    Returns (training result with `history` and `resumed_from`, whether the stored model was
    reused). A freshly trained model is saved with its `train_key`, and its history beside it.
    """
    cfg = run.cfg
    old = _trained_model(d, train_key)
    if old is not None:  # only prediction settings changed: predict with the stored model
        state, hist = old
        model.load_state_dict(state["state_dict"])
        log.info("%s: the model in %s was trained with the same settings; predicting only",
                 which, d)
        return dict(history=hist, resumed_from=len(hist)), True
    y = LabelFiles(labels.paths, T.item_shape(images)[-2:], labels.what)  # items (S, S) uint8
    res = T.train_segmentation(
        model, images, y, epochs=cfg.seg_epochs, **cfg.recipe("segmentation").as_dict(),
        scale=(1 - cfg.seg_scale, 1 + cfg.seg_scale), seed=cfg.seed + 2,
        device=device, checkpoint=d / "checkpoint.pt", tag=key, progress=progress,
        desc=which, cpu_bf16=cfg.cpu_bf16, num_workers=workers)
    if not dist.is_main():
        return res, False
    save_torch(d / "model.pt", dict(state_dict=model.state_dict(), which=which,
                                    train_key=train_key))
    atomic_write_json(d / "history.json", res["history"])
    return res, False


def _trained_model(stage_dir: Path, train_key: str
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The stored model of a segmentation stage and its training history, if it was trained
    under `train_key`; else None (train again). A model or history that is there but cannot be
    read is trained again with a warning naming the file."""
    path, hist_path = stage_dir / "model.pt", stage_dir / "history.json"
    if not path.is_file() or not hist_path.is_file():
        return None
    try:
        state = load_torch(path, str(stage_dir))
    except Exception as e:  # any unpickling or zip error: the file is not a model we wrote
        log.warning("the stored model %s cannot be read (%s: %s): training it again",
                    path, type(e).__name__, e)
        return None
    if not isinstance(state, dict) or state.get("train_key") != train_key:
        return None  # trained with other settings
    try:
        hist = json.loads(hist_path.read_text())
        if not isinstance(hist, list) or not hist:
            raise ValueError("not a list of epochs")
    except (OSError, ValueError) as e:
        log.warning("the training history %s cannot be read (%s): training the model again",
                    hist_path, e)
        return None
    return state, hist


def load_segmenter(run: Run, which: str = "pom_round1"):
    """A trained segmentation model of the run (eval mode, CPU); trains it first if needed."""
    ensure_segmentation(run, which)
    state = load_torch(run.dir / SEG_MODELS[which]["stage"] / "model.pt", SEG_MODELS[which]["stage"])
    model = build_segmenter(run.cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_predictions(run: Run, which: str, split: str = "val", names: list[str] | None = None):
    """Stored predictions of a segmentation model: `val_pred` or (round-1 models) `train_pred`.

    Returns (N, H, W) uint8 for same-size images, else a list of (H, W) uint8.
    """
    ensure_segmentation(run, which)
    folder = run.dir / SEG_MODELS[which]["stage"] / f"{split}_pred"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: only the round-1 models "
                                "(pom_round1, pom_round1_no_glore) keep train predictions")
    names = read_split(ensure_data(run), split) if names is None else names
    preds = [read_label_png(folder / f"{n}.png", f"{which} prediction") for n in names]
    return np.stack(preds) if preds and len({p.shape for p in preds}) == 1 else preds


def ensure_masked(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `masked`: non-salient region masking (docs/method.md §6) of the round-1 predictions.

    Reads `seg1/train_pred` (round-1 predictions on the training images), `pseudo/pseudo` (POM
    labels) and the saliency maps with the CLI's code (`maps_io.load_label_inputs` and
    `make_labels`, i.e. `python -m nsrom_lib labels masked`), kernel `nsrm_kernel_for(cfg)`, and
    writes `masked/labels/{name}.png`. glore=False: the ablation's, in `masked/no_glore/labels/`.
    Metrics: label quality of the masked labels and, for comparison, of the round-1 predictions
    and the POM labels (precision, coverage, mIoU, non-salient recall), the share of pixels that
    masking turned to ignore, the kernel, images/s.
    """
    which = "pom_round1" if glore else "pom_round1_no_glore"
    stage = variant_stage("masked", glore)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    kernel = nsrm_kernel_for(cfg)
    if run.is_done(stage):
        return run.record(stage) or {}
    ensure_segmentation(run, which, progress=progress)
    ensure_pseudo(run, progress=progress, glore=glore)

    def compute() -> dict[str, Any]:
        d = run.stage_dir(stage)
        ds = VOCSegDataset(root, "train", num_classes=cfg.num_classes, with_mask=False)
        names = list(ds.names)
        list_path = d / "train_cls.txt"
        write_cls_list(list_path, ds.cls_list())
        pred_dir = run.dir / SEG_MODELS[which]["stage"] / "train_pred"
        pseudo_dir = run.dir / variant_stage("pseudo", glore) / "pseudo"
        inputs = load_label_inputs(list_path, ds.saliency_dir, pred_dir=pred_dir,
                                   pseudo_dir=pseudo_dir, num_classes=cfg.num_classes,
                                   strict=True, progress=progress)
        summary = make_labels(inputs, d / "labels", device=cfg.device, progress=progress,
                              kernel=kernel, ratio=cfg.rule_params().ratio)
        gt = open_ground_truth(root, "train", names)
        sets = {"masked": d / "labels", "round1_pred": pred_dir, "pseudo": pseudo_dir}
        tallies = {k: LabelTally(cfg.num_classes + 1) for k in sets}
        pixels = turned = expanded = 0
        for i, n in enumerate(names):  # one image at a time: no label set is held in memory
            truth = gt.image(i) if gt is not None else ()
            labs = {k: read_label_png(folder / f"{n}.png", f"{k} label") for k, folder in sets.items()}
            for k, lab in labs.items():
                tallies[k].add(lab, *truth)
            p, m = labs["round1_pred"], labs["masked"]
            pixels += m.size
            turned += int(((p != 255) & (m == 255)).sum())
            expanded += int(((p == 0) & (m != 0) & (m != 255)).sum())
        complex_images = sum(len(c) >= 2 for c in ds.cls_list().values())
        return dict(
            kernel=kernel, images=len(names), complex_images=complex_images,
            **{k: label_record(t, with_gt=gt is not None) for k, t in tallies.items()},
            masked_to_ignore_share=round(turned / max(pixels, 1), 4),
            expanded_share=round(expanded / max(pixels, 1), 4),
            images_per_s=round(summary["images_per_s"], 1), device=summary["device"],
        )

    return run.ensure(stage, compute, kernel=kernel, glore=glore)


def load_masked(run: Run, names: list[str] | None = None, glore: bool = True,
                progress: bool = True):
    """The `masked` stage's labels in training-split order ((N, H, W) uint8 or a list)."""
    ensure_masked(run, glore=glore, progress=progress)
    names = read_split(ensure_data(run, progress=progress), "train") if names is None else names
    folder = run.dir / variant_stage("masked", glore) / "labels"
    labels = [read_label_png(folder / f"{n}.png", "masked label") for n in names]
    return np.stack(labels) if labels and len({x.shape for x in labels}) == 1 else labels
