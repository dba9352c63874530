"""Measures used everywhere (ALGORITHM.md §8): mIoU, pseudo-label quality, non-salient recall.

Pure array code: label maps in, numbers out. Label convention: 0 = background, c + 1 = class c,
255 = ignore / void. Inputs may be numpy arrays or torch tensors of any integer dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "confusion_matrix",
    "iou_from_confusion",
    "miou",
    "label_quality",
    "instance_recall",
]

IGNORE = 255


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: Any, gt: Any, num_labels: int, ignore_index: int = IGNORE) -> np.ndarray:
    """(L, L) int64 confusion matrix, rows = ground truth, columns = prediction.

    pred, gt: integer label maps of the same shape, (H, W) or (B, H, W); values 0..L-1 or
    `ignore_index`. Pixels whose GT or prediction is `ignore_index` are not counted.
    num_labels: L = C + 1 (background included).
    """
    p, g = _np(pred).astype(np.int64).ravel(), _np(gt).astype(np.int64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction and ground truth differ in size: {p.shape} vs {g.shape}")
    keep = (g != ignore_index) & (p != ignore_index)
    p, g = p[keep], g[keep]
    bad = (g < 0) | (g >= num_labels) | (p < 0) | (p >= num_labels)
    if bad.any():
        raise ValueError(
            f"label values outside 0..{num_labels - 1} (and {ignore_index}): "
            f"{sorted(set(np.concatenate([g[bad], p[bad]]).tolist()))[:10]}"
        )
    return np.bincount(g * num_labels + p, minlength=num_labels**2).reshape(num_labels, num_labels)


def iou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Per-label IoU = TP / (TP + FP + FN) and their mean over labels present in GT or prediction.

    Returns (miou, iou) with iou an (L,) float64 array, NaN for labels absent from both.
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return (float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")), iou


def miou(preds: Iterable[Any], gts: Iterable[Any], num_labels: int) -> float:
    """Mean IoU over pairs of label maps (summed into one confusion matrix)."""
    conf = np.zeros((num_labels, num_labels), np.int64)
    for p, g in zip(preds, gts, strict=True):
        conf += confusion_matrix(p, g, num_labels)
    return iou_from_confusion(conf)[0]


def label_quality(labels: Sequence[Any], gts: Sequence[Any], num_labels: int) -> dict[str, float]:
    """Pseudo-label quality against ground truth (ALGORITHM.md §8).

    precision: accuracy on labelled (non-255) pixels whose GT is not void;
    coverage: share of pixels (GT not void) that are labelled;
    miou: mIoU on labelled pixels.
    """
    conf = np.zeros((num_labels, num_labels), np.int64)
    labelled = total = 0
    for lab, gt in zip(labels, gts, strict=True):
        lab, gt = _np(lab), _np(gt)
        valid = gt != IGNORE
        total += int(valid.sum())
        labelled += int((valid & (lab != IGNORE)).sum())
        conf += confusion_matrix(lab, gt, num_labels)
    correct = int(np.trace(conf))
    return dict(
        precision=correct / max(int(conf.sum()), 1),
        coverage=labelled / max(total, 1),
        miou=iou_from_confusion(conf)[0],
    )


def instance_recall(
    labels: Sequence[Any],
    instance_maps: Sequence[Any],
    objects: Sequence[Sequence[dict[str, Any]]],
    *,
    salient: bool | None = False,
    min_share: float = 0.5,
) -> float:
    """Share of GT instances whose pixels are at least `min_share` labelled with their class.

    labels: label maps or predictions (H, W); instance_maps: (H, W), value k = instance k;
    objects: per image, dicts with `id`, `class` (0-based) and `salient`.
    salient=False measures non-salient objects (ALGORITHM.md §8), True salient ones, None all.
    Returns NaN if no instance qualifies.
    """
    hits = n = 0
    for lab, inst, objs in zip(labels, instance_maps, objects, strict=True):
        lab, inst = _np(lab), _np(inst)
        for o in objs:
            if salient is not None and bool(o["salient"]) != salient:
                continue
            px = inst == o["id"]
            if not px.any():
                continue
            n += 1
            hits += (lab[px] == o["class"] + 1).mean() >= min_share
    return hits / n if n else float("nan")
