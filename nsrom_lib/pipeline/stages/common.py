"""What the training and labelling stages share: torch files, the training split in memory,
ground truth and the label / map measures kept in stage records."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsrom_lib import train as T
from nsrom_lib.data.io import atomic_path, read_label_png
from nsrom_lib.data.voc import gt_mask_dir, read_instances
from nsrom_lib.device import resolve_device
from nsrom_lib.metrics import LabelTally
from nsrom_lib.metrics import map_quality as _map_quality_of
from nsrom_lib.pipeline.run import Run

log = logging.getLogger(__name__)

__all__ = ["training_context", "save_torch", "load_torch", "history_metrics",
           "GroundTruth", "load_ground_truth", "map_quality", "label_metrics", "rounded"]


def training_context(run: Run, stage: str, root: Path) -> tuple[Path, Any, dict[str, Any]]:
    """What every training or prediction stage starts with: its folder, the device, torch's
    threads set from the configuration, and the training split in memory
    (`train.load_split_tensors`). Returns (stage folder, torch.device, split dict)."""
    cfg = run.cfg
    d = run.stage_dir(stage)
    device = resolve_device(cfg.device)
    T.configure_threads(cfg.num_threads)
    if cfg.cpu_bf16 and device.type == "cpu" and not T.cpu_has_bf16():
        log.warning("%s: cpu_bf16 is set, but this CPU has no native bfloat16 (AVX512-BF16 or "
                    "AMX): training computes the bf16 numbers and is slower, not faster; "
                    "leave out --set cpu_bf16=true on this machine", stage)
    return d, device, T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)


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
    """The GT masks (and SynthVOC instances) of a split, read one image at a time.

    `available`: every name has a mask in the root's mask folder (`gt_mask_dir`); `get(name)`
    returns (mask (H, W) uint8, instance map (H, W) uint8 or None, instance dicts or None).
    """

    def __init__(self, root: Path, names: list[str]) -> None:
        self.mask_dir = gt_mask_dir(root)
        self.available = all((self.mask_dir / f"{n}.png").is_file() for n in names)
        meta = read_instances(root)
        inst_dir = root / "SegmentationObject"
        self._meta = meta if meta is not None and inst_dir.is_dir() else None
        self._inst_dir = inst_dir

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray | None, list | None]:
        mask = read_label_png(self.mask_dir / f"{name}.png", "GT mask")
        if self._meta is None:
            return mask, None, None
        inst = read_label_png(self._inst_dir / f"{name}.png", "instance mask")
        return mask, inst, self._meta.get(name, [])


def load_ground_truth(root: Path, split: str, names: list[str]) -> dict[str, Any] | None:
    """GT masks (and SynthVOC instances) of `names`, for the map measures; None without masks.

    Returns masks: list of (H, W) uint8; instances: list of (H, W) uint8 or None;
    objects: per image instance dicts or None. (`GroundTruth` reads them one at a time.)
    """
    gt = GroundTruth(root, names)
    if not gt.available:
        return None
    masks, instances, objects = zip(*(gt.get(n) for n in names), strict=True) if names else ((), (), ())
    if gt._meta is None:
        return dict(masks=list(masks), instances=None, objects=None)
    return dict(masks=list(masks), instances=list(instances), objects=list(objects))


def map_quality(maps: list[dict[int, Any]], gt: dict[str, Any] | None) -> dict[str, float] | None:
    """`metrics.map_quality` of `maps` against `gt` (`load_ground_truth`), rounded for a
    record; None without GT."""
    if gt is None:
        return None
    q = _map_quality_of(maps, gt["masks"], gt["instances"], gt["objects"])
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in q.items()}


def label_metrics(labels: list[Any], gt: dict[str, Any] | None, num_labels: int) -> dict[str, Any]:
    """Ignore share, images left all-ignore and, with GT, the label quality of docs/method.md §8
    (`metrics.LabelTally` over the list; `rounded` of its result)."""
    tally = LabelTally(num_labels)
    for i, lab in enumerate(labels):
        if gt is None:
            tally.add(lab)
        else:
            inst = None if gt["instances"] is None else gt["instances"][i]
            objs = None if gt["objects"] is None else gt["objects"][i]
            tally.add(lab, gt["masks"][i], inst, objs)
    return rounded(tally.result())


def rounded(measures: dict[str, Any]) -> dict[str, Any]:
    """Floats rounded to 4 digits, as stage records keep them."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in measures.items()}
