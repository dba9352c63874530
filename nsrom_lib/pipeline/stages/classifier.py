"""Stages `classifier` (with its warm-up sub-stage), `iam` and `maps` (docs/method.md §1–§2);
the training itself is `nsrom_lib.train`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsrom_lib import distributed as dist
from nsrom_lib import train as T
from nsrom_lib.config import RunConfig
from nsrom_lib.data.io import atomic_write_json, read_gray_png
from nsrom_lib.metrics import MapQuality, classification_map
from nsrom_lib.models.classifier import Classifier
from nsrom_lib.pipeline.run import WARMUP_STAGE, Run, variant_stage
from nsrom_lib.pipeline.stages.common import (
    PREDICT_BATCH,
    GroundTruth,
    ensure_trained,
    history_metrics,
    load_torch,
    map_quality,
    map_record,
    open_ground_truth,
    save_torch,
    training_context,
)
from nsrom_lib.pipeline.stages.data import ensure_data

__all__ = [
    "build_classifier", "snapshot_indices", "ensure_warmup", "warm_start", "ensure_classifier",
    "OAA_PROBE_IMAGES", "load_classifier", "load_accumulated", "load_oaa_snapshots", "ensure_iam",
    "load_iam", "MAP_KINDS", "ensure_maps", "map_path", "load_map_dicts", "load_maps",
]


def _classifier_stage(glore: bool) -> str:
    return variant_stage("classifier", glore)


def build_classifier(cfg: RunConfig, glore: bool = True, iam: bool = False):
    """The classifier (or, with `iam`, the integral attention model) of a run configuration."""
    return Classifier(cfg.num_classes, backbone=cfg.backbone, glore=glore, iam=iam,
                      width=cfg.width, pretrained=cfg.pretrained and not iam,
                      output_stride=cfg.output_stride, channels_last=cfg.channels_last)


def snapshot_indices(label_ids: list[list[int]], k: int) -> list[int]:
    """The images whose accumulated maps are kept after every epoch: the first k with 2+
    classes (then the others), so a figure shows several objects."""
    multi = [i for i, ids in enumerate(label_ids) if len(ids) >= 2]
    rest = [i for i, ids in enumerate(label_ids) if len(ids) < 2]
    return (multi + rest)[:k]


def ensure_warmup(run: Run, progress: bool = True) -> dict[str, Any] | None:
    """Sub-stage `classifier/warmup`: the backbone that initialises the classifier and the IAM.

    With `cls_warmup_epochs` = E > 0, a plain classifier (backbone, extra convs, CAM head; no
    GloRe, no OAA) is trained for E epochs on the same image-level labels, and its backbone
    weights are kept in `classifier/warmup/backbone.pt`. It stands in for the reference's
    ImageNet initialisation: the classifier that OAA watches then starts from features that
    already respond to the objects, so its second-epoch CAMs are not the noise of a network
    trained from scratch. Uses no labels beyond the image-level ones. Returns the stage record
    (train / val mAP of the warm-up classifier, history metrics), or None when E = 0.
    """
    cfg = run.cfg
    if cfg.cls_warmup_epochs == 0:
        return None
    root = ensure_data(run, progress=progress)

    def compute() -> dict[str, Any]:
        d, device, data = training_context(run, WARMUP_STAGE, root)
        workers = T.loader_workers(cfg.num_workers, device)
        T.seed_everything(cfg.seed + 2)
        model = build_classifier(cfg, glore=False)
        res = T.train_classifier(
            model, data["images"], data["labels"], epochs=cfg.cls_warmup_epochs,
            **cfg.recipe("classifier").as_dict(),
            seed=cfg.seed + 2, device=device, accumulate=False, checkpoint=d / "checkpoint.pt",
            tag=run.stage_key(WARMUP_STAGE), progress=progress,
            cpu_bf16=cfg.cpu_bf16, num_workers=workers)
        if not dist.is_main():  # one of several training processes: rank 0 measures and writes
            return {}
        save_torch(d / "backbone.pt", dict(features=model.features.state_dict()))
        logits = _logits(model, data["images"], device, workers)
        val = T.load_split(root, "val", cfg.num_classes, cfg.image_size)
        val_logits = _logits(model, val["images"], device, workers)
        atomic_write_json(d / "history.json", res["history"])
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return dict(epochs=cfg.cls_warmup_epochs,
                    train_map=round(classification_map(logits, data["labels"]), 4),
                    val_map=round(classification_map(val_logits, val["labels"]), 4),
                    **history_metrics(res["history"], res["resumed_from"]),
                    torch_threads=torch.get_num_threads())

    return ensure_trained(run, WARMUP_STAGE, compute, ["warmup"])


def _logits(model: Any, images: Any, device: torch.device, workers: int) -> torch.Tensor:
    """Eval-mode logits (N, C) of every image, read and predicted batch by batch."""
    model.to(device).eval()
    batches = T.image_batches(images, PREDICT_BATCH, num_workers=workers, device=device)
    return torch.cat([T.cams_of_batch(model, x, device)[0] for _, x in batches])


def warm_start(run: Run, model: Any, progress: bool = True) -> Any:
    """Load the warm-up backbone (`ensure_warmup`) into `model.features`; a no-op with
    `cls_warmup_epochs` = 0. model: a `Classifier` (or IAM) of the run's configuration."""
    if ensure_warmup(run, progress=progress) is None:
        return model
    state = load_torch(run.dir / WARMUP_STAGE / "backbone.pt", "classifier")
    model.features.load_state_dict(state["features"])
    return model


def ensure_classifier(run: Run, glore: bool = True, progress: bool = True) -> dict[str, Any]:
    """Stage `classifier`: train the classifier with OAA (docs/method.md §1–§2); return the record.

    glore=False trains the ablation without the GloRe unit in `classifier/no_glore/` (its own
    record). Artefacts: `model.pt` (weights and constructor arguments), `accumulated.pt` (the
    accumulated maps at feature resolution, uint8, with `exists` and the image names),
    `snapshots.pt` (a few images' accumulated maps after every epoch), `history.json`.
    Metrics: train loss, train/val mAP (eval mode), img/s, OAA counts, and the coverage /
    precision of the CAMs and of the accumulated maps on the train split (with GT masks), and
    `oaa_epochs`: for every fused epoch, the same measures of that epoch's own maps and of the
    accumulated maps after it, on the first `OAA_PROBE_IMAGES` training images.
    An interrupted training resumes from `checkpoint.pt` (removed once the stage is complete).
    """
    root = ensure_data(run, progress=progress)
    stage = _classifier_stage(glore)
    cfg = run.cfg

    def compute() -> dict[str, Any]:
        d, device, data = training_context(run, stage, root)
        workers = T.loader_workers(cfg.num_workers, device)
        threads = torch.get_num_threads()
        T.seed_everything(cfg.seed)
        model = warm_start(run, build_classifier(cfg, glore=glore), progress)
        snaps = snapshot_indices(data["label_ids"], cfg.oaa_snapshots)
        res = T.train_classifier(
            model, data["images"], data["labels"], epochs=cfg.cls_epochs,
            **cfg.recipe("classifier").as_dict(),
            seed=cfg.seed, device=device, snapshot_indices=snaps, accumulate_from=cfg.oaa_from_epoch,
            probe_indices=range(min(len(data["names"]), OAA_PROBE_IMAGES)),
            checkpoint=d / "checkpoint.pt", tag=run.stage_key(stage), progress=progress,
            cpu_bf16=cfg.cpu_bf16, num_workers=workers)
        if not dist.is_main():
            return {}
        acc = res["accumulator"]
        save_torch(d / "model.pt", dict(state_dict=model.state_dict(), glore=glore, iam=False))
        save_torch(d / "accumulated.pt", dict(maps=acc.maps().cpu(), exists=acc.exists.cpu(),
                                               names=data["names"]))
        save_torch(d / "snapshots.pt", dict(indices=res["snapshots"]["indices"],
                                             names=[data["names"][i] for i in snaps],
                                             maps=res["snapshots"]["maps"]))
        atomic_write_json(d / "history.json", res["history"])
        # Measures: eval-mode CAMs on train, logits on train and val.
        gt = open_ground_truth(root, "train", data["names"])
        logits, quality = _train_measures(model, data, acc, gt, device, workers)
        val = T.load_split(root, "val", cfg.num_classes, cfg.image_size)
        val_logits = _logits(model, val["images"], device, workers)
        hist = res["history"]
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return dict(
            glore=glore,
            train_map=round(classification_map(logits, data["labels"]), 4),
            val_map=round(classification_map(val_logits, val["labels"]), 4),
            **history_metrics(hist, res["resumed_from"]),
            threads=threads, device=str(device), oaa=acc.stats(),
            cam=map_record(quality["cam"]), accumulated=map_record(quality["accumulated"]),
            oaa_epochs=_oaa_epoch_quality(res["probe"], data, gt, hist),
            torch_threads=torch.get_num_threads(),
        )

    if not run.is_done(stage):  # before, not inside: its time is its own, and training it must
        ensure_warmup(run, progress)  # not move the RNG that compute() seeds
    return ensure_trained(run, stage, compute, ["classifier"] + ([] if glore else ["--no-glore"]),
                          glore=glore)


def _train_measures(model: Any, data: dict[str, Any], acc: Any, gt: GroundTruth | None,
                    device: torch.device, workers: int
                    ) -> tuple[torch.Tensor, dict[str, MapQuality | None]]:
    """The trained classifier's eval-mode logits (N, C) on the training images, and against GT
    the quality of its CAMs and of the accumulated maps (`acc`), added up batch by batch.

    Returns (logits, {"cam": MapQuality, "accumulated": MapQuality}), None for each without GT.
    """
    model.to(device).eval()
    quality = {kind: (MapQuality() if gt is not None else None) for kind in ("cam", "accumulated")}
    logits = []
    for idx, x in T.image_batches(data["images"], PREDICT_BATCH, num_workers=workers,
                                  device=device):
        lo, cams = T.cams_of_batch(model, x, device)  # (B, C), (B, C, h, w)
        logits.append(lo)
        if gt is None:
            continue
        idx = idx.tolist()
        ids, sizes = [data["label_ids"][i] for i in idx], [data["sizes"][i] for i in idx]
        maps = {"cam": T.maps_to_uint8(cams, ids, sizes),
                "accumulated": T.maps_to_uint8(acc.maps(torch.tensor(idx)).cpu(), ids, sizes,
                                               normalized=True)}
        for j, i in enumerate(idx):
            truth = gt.image(i)
            for kind, q in quality.items():
                q.add(maps[kind][j], *truth)
    return torch.cat(logits), quality


#: Training images (the first ones) whose per-epoch maps the classifier stage measures.
OAA_PROBE_IMAGES = 256


def _oaa_epoch_quality(probe: dict[str, Any], data: dict[str, Any], gt: GroundTruth | None,
                       history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """What every fused epoch adds to OAA, measured on the probe images (notebook 02).

    probe: `train_classifier`'s probe dict (maps and accumulated: (F, p, C, h, w) uint8);
    data: the training split (label_ids, sizes); gt: the whole split's (`open_ground_truth`),
    or None. Returns one row per fused epoch: epoch (1-based, as the history), loss, `own` (that
    epoch's maps) and `accumulated` (the maps after it), each a `map_quality` dict; None
    without GT masks.
    """
    if gt is None:
        return None
    idx = probe["indices"].tolist()
    sub = gt.load(idx)
    ids = [data["label_ids"][i] for i in idx]
    sizes = [data["sizes"][i] for i in idx]
    loss = {h["epoch"]: round(h["loss"], 5) for h in history}
    rows = []
    for f, e in enumerate(probe["epochs"].tolist()):
        own = T.maps_to_uint8(probe["maps"][f], ids, sizes, normalized=True)
        accumulated = T.maps_to_uint8(probe["accumulated"][f], ids, sizes, normalized=True)
        rows.append(dict(epoch=e + 1, loss=loss.get(e + 1), images=len(idx),
                         own=map_quality(own, sub), accumulated=map_quality(accumulated, sub)))
    return rows


def load_classifier(run: Run, glore: bool = True):
    """The trained classifier of a run (eval mode, CPU); trains it first if needed."""
    ensure_classifier(run, glore=glore)
    state = load_torch(run.dir / _classifier_stage(glore) / "model.pt", "classifier")
    model = build_classifier(run.cfg, glore=glore)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_accumulated(run: Run, glore: bool = True) -> dict[str, Any]:
    """The accumulated maps of a run: maps (N, C, h, w) uint8, exists (N, C) bool, names."""
    ensure_classifier(run, glore=glore)
    return load_torch(run.dir / _classifier_stage(glore) / "accumulated.pt", "classifier")


def load_oaa_snapshots(run: Run, glore: bool = True) -> dict[str, Any]:
    """Per-epoch accumulated maps of a few images: indices (k,), names, maps (E, k, C, h, w)."""
    ensure_classifier(run, glore=glore)
    return load_torch(run.dir / _classifier_stage(glore) / "snapshots.pt", "classifier")


def ensure_iam(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `iam`: train the integral attention model on the accumulated maps (§2).

    Artefacts: `iam/model.pt`, `iam/history.json`. Metrics: final loss, seconds, img/s.
    glore=False: the ablation's IAM (no GloRe unit) on the GloRe-off classifier's accumulated
    maps, in `iam/no_glore/`.
    """
    ensure_classifier(run, glore=glore, progress=progress)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    stage = variant_stage("iam", glore)

    def compute() -> dict[str, Any]:
        d, device, data = training_context(run, stage, root)
        cls_dir = run.dir / _classifier_stage(glore)
        acc = load_torch(cls_dir / "accumulated.pt", "classifier")
        if list(acc["names"]) != data["names"]:
            raise RuntimeError(f"{cls_dir} was trained on other images: "
                               "delete its record.json to retrain it")
        T.seed_everything(cfg.seed + 1)
        model = warm_start(run, build_classifier(cfg, glore=glore, iam=True), progress)
        res = T.train_iam(
            model, data["images"], acc["maps"], epochs=cfg.iam_epochs,
            **cfg.recipe("iam").as_dict(),
            seed=cfg.seed + 1, device=device, checkpoint=d / "checkpoint.pt",
            tag=run.stage_key(stage), progress=progress, cpu_bf16=cfg.cpu_bf16,
            num_workers=T.loader_workers(cfg.num_workers, device))
        if not dist.is_main():
            return {}
        save_torch(d / "model.pt", dict(state_dict=model.state_dict(), glore=glore, iam=True))
        atomic_write_json(d / "history.json", res["history"])
        hist = res["history"]
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return history_metrics(hist, res["resumed_from"])

    if not run.is_done(stage):
        ensure_warmup(run, progress)  # as in ensure_classifier: outside compute()
    return ensure_trained(run, stage, compute, ["iam"] + ([] if glore else ["--no-glore"]),
                          glore=glore)


def load_iam(run: Run, glore: bool = True):
    """The trained integral attention model of a run (eval mode, CPU); trains it if needed."""
    ensure_iam(run, glore=glore)
    state = load_torch(run.dir / variant_stage("iam", glore) / "model.pt", "iam")
    model = build_classifier(run.cfg, glore=glore, iam=True)
    model.load_state_dict(state["state_dict"])
    return model.eval()


MAP_KINDS = ("cam", "accumulated", "oacam")


def ensure_maps(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `maps`: the 8-bit, image-size maps of every training image and listed class.

    `maps/cam/{name}_{cls}.png` (final GloRe classifier, eval mode), `maps/oacam/...` (the
    integral attention model: the OA-CAMs) and `maps/accumulated/...` (the OAA maps, resized),
    cls the 0-based class id. Metrics: per kind, coverage / precision against GT (train split).
    glore=False: the same from the GloRe-off classifier and IAM, in `maps/no_glore/{kind}/`.
    """
    ensure_iam(run, progress=progress, glore=glore)
    root = ensure_data(run, progress=progress)
    stage = variant_stage("maps", glore)

    def compute() -> dict[str, Any]:
        d, device, data = training_context(run, stage, root)
        workers = T.loader_workers(run.cfg.num_workers, device)
        names, ids, sizes = data["names"], data["label_ids"], data["sizes"]
        classifier = load_classifier(run, glore).to(device)
        iam = load_iam(run, glore).to(device)
        acc = load_accumulated(run, glore)["maps"]
        gt = open_ground_truth(root, "train", names)
        quality = {kind: (MapQuality() if gt is not None else None) for kind in MAP_KINDS}
        files = dict.fromkeys(MAP_KINDS, 0)
        # batch by batch: both networks' CAMs of the batch, every kind exported and measured
        for idx, x in T.image_batches(data["images"], PREDICT_BATCH, num_workers=workers,
                                      device=device, progress=progress, desc="maps"):
            idx = idx.tolist()
            b_ids, b_sizes = [ids[i] for i in idx], [sizes[i] for i in idx]
            maps = {"cam": T.maps_to_uint8(T.cams_of_batch(classifier, x, device)[1], b_ids, b_sizes),
                    "accumulated": T.maps_to_uint8(acc[idx], b_ids, b_sizes, normalized=True),
                    "oacam": T.maps_to_uint8(T.cams_of_batch(iam, x, device)[1], b_ids, b_sizes)}
            for kind in MAP_KINDS:
                files[kind] += T.export_maps(d / kind, [names[i] for i in idx], maps[kind])
            if gt is not None:
                for j, i in enumerate(idx):
                    truth = gt.image(i)
                    for kind in MAP_KINDS:
                        quality[kind].add(maps[kind][j], *truth)
        metrics: dict[str, Any] = {}
        for kind in MAP_KINDS:
            metrics[f"{kind}_files"] = files[kind]
            metrics[kind] = map_record(quality[kind])
        return metrics

    return run.ensure(stage, compute, glore=glore)


def map_path(run: Run, kind: str, name: str, cls: int, glore: bool = True) -> Path:
    """Where the `maps` stage writes the map of (image `name`, 0-based class `cls`)."""
    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    return run.dir / variant_stage("maps", glore) / kind / f"{name}_{cls}.png"


def load_map_dicts(run: Run, kind: str, names: list[str],
                   classes: list[list[int]]) -> list[dict[int, Any]]:
    """The `maps` stage's maps of `names`, one {class id: (H, W) uint8} per image, images of any
    size (the input of `metrics.map_quality`); classes: the listed class ids of each image."""
    ensure_maps(run)
    per_image = []
    for n, cl in zip(names, classes, strict=True):
        maps = {c: read_gray_png(map_path(run, kind, n, c), f"{kind} map") for c in cl}
        shapes = {m.shape for m in maps.values()}
        if len(shapes) > 1:
            raise ValueError(f"the {kind} maps of {n} differ in size: {sorted(shapes)}")
        per_image.append(maps)
    return per_image


def load_maps(run: Run, kind: str, names: list[str], classes: list[list[int]]):
    """The `maps` stage's maps of `names` as one (N, C, H, W) uint8 array (zeros for unlisted
    classes); classes: the listed class ids of each image. All images must have one size."""
    per_image = load_map_dicts(run, kind, names, classes)
    sizes = {m.shape for maps in per_image for m in maps.values()}
    if len(sizes) > 1:
        raise ValueError(f"load_maps needs images of one size; {kind} maps have {sorted(sizes)[:3]}")
    H, W = sizes.pop() if sizes else (0, 0)
    out = np.zeros((len(names), run.cfg.num_classes, H, W), np.uint8)  # (N, C, H, W)
    for i, maps in enumerate(per_image):
        for c, m in maps.items():
            out[i, c] = m
    return out
