"""What the training and labelling stages share: torch files, the training split (read on
demand), ground truth (read whole or image by image) and the label / map measures kept in stage
records."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsrom_lib import distributed as dist
from nsrom_lib import train as T
from nsrom_lib.data.io import atomic_path, read_label_png
from nsrom_lib.data.voc import gt_mask_dir, read_instances
from nsrom_lib.device import resolve_device
from nsrom_lib.metrics import LabelTally, MapQuality
from nsrom_lib.metrics import map_quality as _map_quality_of
from nsrom_lib.pipeline.run import Run

log = logging.getLogger(__name__)

#: Images per batch of the stages' predictions (as `train.predict_cams` and
#: `train.predict_segmentation`).
PREDICT_BATCH = 64

__all__ = ["PREDICT_BATCH", "training_context", "ensure_trained", "save_torch", "load_torch", "history_metrics", "GroundTruth",
           "open_ground_truth", "load_ground_truth", "map_quality", "map_record", "label_metrics",
           "label_record"]


def training_context(run: Run, stage: str, root: Path) -> tuple[Path, Any, dict[str, Any]]:
    """What every training or prediction stage starts with: its folder, the device, torch's
    threads set from the configuration, and the training split (`train.load_split`: names,
    labels and sizes in memory, the images read on demand, `loader_workers` of the
    configuration's `num_workers` DataLoader processes reading them). Returns (stage folder,
    torch.device, split dict). One of several training processes (torchrun) joins their
    process group here; on CUDA each takes the GPU of its local rank."""
    cfg = run.cfg
    d = run.stage_dir(stage)
    device = dist.init(resolve_device(cfg.device))
    T.configure_threads(cfg.num_threads)
    if cfg.cpu_bf16 and device.type == "cpu" and not T.cpu_has_bf16():
        log.warning("%s: cpu_bf16 is set, but this CPU has no native bfloat16 (AVX512-BF16 or "
                    "AMX): training computes the bf16 numbers and is slower, not faster; "
                    "leave out --set cpu_bf16=true on this machine", stage)
    return d, device, T.load_split(root, "train", cfg.num_classes, cfg.image_size)


def ensure_trained(run: Run, stage: str, compute: Callable[[], dict[str, Any]],
                   command: list[str], key: str | None = None, launch: bool = True,
                   **info: Any) -> dict[str, Any]:
    """`run.ensure` for a stage that trains a network: with `nproc` > 1 it is computed in that
    many processes, and its record returned.

    command: the `nsrom stage` arguments that compute `stage` of this run (e.g. ["classifier",
    "--no-glore"]); torchrun starts them (`distributed.launch`) on the run folder's stored
    configuration, and rank 0 of them writes the record. This process computes the stage
    itself (collectively, `Run.ensure`) with one process, when it is one of several already,
    when the stage is done, or with `launch` false (nothing to train).
    """
    key = key or run.stage_key(stage)
    n = run.cfg.nproc
    if not launch or n <= 1 or dist.launched() or run.is_done(stage, key):
        return run.ensure(stage, compute, key=key, collective=True, **info)
    log.info("stage %s: training in %d processes", stage, n)
    dist.launch(n, ["stage", *command, "--run-dir", str(run.dir)], what=f"stage {stage}")
    if not run.is_done(stage, key):
        raise RuntimeError(f"stage {stage}: the {n} training processes finished without its "
                           f"record in {run.dir / stage}; was the run folder's config.json "
                           "changed meanwhile? Run the stage again.")
    return run.record(stage) or {}


def save_torch(path: Path, obj: Any) -> None:
    """`torch.save` through a temporary file, so `path` is either complete or absent."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path, stage: str) -> Any:
    """A stage's torch file on the CPU (weights only); a missing one names the stage to run."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage `{stage}` first "
                                f"(e.g. ensure_{stage.split('/')[0]}(run)).")
    return torch.load(path, map_location="cpu", weights_only=True)


def history_metrics(hist: list[dict[str, Any]], resumed_from: int = 0) -> dict[str, Any]:
    """The training summary kept in a stage record: final loss, mean img/s, seconds (of every
    epoch, also those before an interruption), and the epoch a resumed training restarted after."""
    return dict(final_loss=round(hist[-1]["loss"], 5),
                img_per_s=round(sum(h["img_per_s"] for h in hist) / len(hist), 1),
                train_seconds=round(sum(h["seconds"] for h in hist), 1),
                resumed_from_epoch=resumed_from)


class GroundTruth:
    """The ground truth of a split's images, read image by image (`open_ground_truth`).

    `image(i)` of the i-th of `names`: (mask, instance, objects): the GT mask (H, W) uint8 and,
    for SynthVOC, the instance map (H, W) uint8 and the instance dicts, both None without
    instances (`with_instances` says which); `load` reads some or all of them into memory.
    """

    def __init__(self, root: Path, names: list[str]) -> None:
        self.names = list(names)
        self.mask_dir = gt_mask_dir(root)
        meta = read_instances(root)
        self.instance_dir = root / "SegmentationObject"
        self.with_instances = meta is not None and self.instance_dir.is_dir()
        self.objects = [meta.get(n, []) for n in self.names] if self.with_instances else None

    def __len__(self) -> int:
        return len(self.names)

    def mask_path(self, i: int) -> Path:
        return self.mask_dir / f"{self.names[i]}.png"

    def mask(self, i: int) -> np.ndarray:
        return read_label_png(self.mask_path(i), "GT mask")

    def instance(self, i: int) -> np.ndarray | None:
        if not self.with_instances:
            return None
        return read_label_png(self.instance_dir / f"{self.names[i]}.png", "instance mask")

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]] | None]:
        """(mask, instance map, objects) of image i, the last two None without instances: the
        arguments of `metrics.MapQuality.add` and `metrics.LabelTally.add` after the image's
        maps or label."""
        return self.mask(i), self.instance(i), self.objects[i] if self.objects is not None else None

    def load(self, indices: list[int] | None = None) -> dict[str, Any]:
        """The GT of images `indices` (default: all) in memory, as `load_ground_truth`."""
        idx = list(range(len(self))) if indices is None else list(indices)
        masks = [self.mask(i) for i in idx]
        if not self.with_instances:
            return dict(masks=masks, instances=None, objects=None)
        return dict(masks=masks, instances=[self.instance(i) for i in idx],
                    objects=[self.objects[i] for i in idx])


def open_ground_truth(root: Path, split: str, names: list[str]) -> GroundTruth | None:
    """The GT of `names` to read image by image, or None when a mask is missing (as
    `load_ground_truth`)."""
    mask_dir = gt_mask_dir(root)
    if not all((mask_dir / f"{n}.png").is_file() for n in names):
        return None
    return GroundTruth(root, names)


def load_ground_truth(root: Path, split: str, names: list[str]) -> dict[str, Any] | None:
    """GT masks (and SynthVOC instances) of `names`, for the map measures; None without masks.

    Returns masks: list of (H, W) uint8; instances: list of (H, W) uint8 or None;
    objects: per image instance dicts or None. For a whole split, `open_ground_truth` reads
    one image at a time instead.
    """
    gt = open_ground_truth(root, split, names)
    return None if gt is None else gt.load()


def _rounded(measures: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in measures.items()}


def map_quality(maps: list[dict[int, Any]], gt: dict[str, Any] | None) -> dict[str, float] | None:
    """`metrics.map_quality` of `maps` against `gt` (`load_ground_truth`), rounded for a
    record; None without GT."""
    if gt is None:
        return None
    return _rounded(_map_quality_of(maps, gt["masks"], gt["instances"], gt["objects"]))


def map_record(quality: MapQuality | None) -> dict[str, float] | None:
    """A `metrics.MapQuality` added up image by image, as `map_quality` puts it in a record;
    None without GT."""
    return None if quality is None else _rounded(quality.result())


def label_metrics(labels: list[Any], gt: dict[str, Any] | None, num_labels: int) -> dict[str, Any]:
    """Ignore share, images left all-ignore and, with GT, the label quality of docs/method.md §8."""
    tally = LabelTally(num_labels)
    for i, lab in enumerate(labels):
        if gt is None:
            tally.add(lab)
        elif gt["instances"] is None:
            tally.add(lab, gt["masks"][i])
        else:
            tally.add(lab, gt["masks"][i], gt["instances"][i], gt["objects"][i])
    return label_record(tally, with_gt=gt is not None)


def label_record(tally: LabelTally, with_gt: bool) -> dict[str, Any]:
    """`label_metrics` of labels added up image by image (`metrics.LabelTally`): ignore share,
    all-ignore images and, `with_gt`, label quality and (SynthVOC) object recall."""
    m: dict[str, Any] = dict(ignore_share=tally.ignore_share(), empty_images=tally.empty_images)
    if with_gt:
        m.update(tally.label_quality())
        if tally.instances:
            for salient, key in ((False, "nonsalient_recall"), (True, "salient_recall")):
                m[key] = tally.instance_recall(salient)
            m["nonsalient_as_background"] = tally.instance_background_share()
    return _rounded(m)
