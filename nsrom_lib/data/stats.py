"""Statistics of a VOC-layout dataset, and the colour-only baseline (notebook 00, tests).

They check that SynthVOC shows the phenomena it is built to have: multi-label scenes,
balanced classes, saliency that covers salient objects and misses non-salient ones,
saliency exactly 0 away from objects, and images that colour alone does not solve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nsrom_lib.data.io import DataError, read_label_png
from nsrom_lib.data.voc import VOCSegDataset, read_instances
from nsrom_lib.metrics import confusion_matrix, iou_from_confusion

__all__ = ["load_split_arrays", "explorer_inputs", "dataset_statistics", "colour_baseline"]


def load_split_arrays(
    root: str | os.PathLike,
    split: str,
    limit: int | None = None,
    stack: bool = True,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Read a whole split into arrays (for statistics and figures).

    Returns names (N,), image (N, H, W, 3) uint8, mask (N, H, W) uint8, saliency (N, H, W) uint8,
    classes (list of class ids per image), objects (per-instance metadata per image, empty
    lists without instances.json) and instances (N, H, W) uint8 when SegmentationObject exists.
    stack: stack the images into (N, ...) arrays, which needs one image size (a DataError names
    two images of different sizes); False gives lists of per-image arrays (any sizes, e.g. VOC).
    num_classes: as VOCSegDataset's (default: classes.txt, else VOC's 20); masks and label lists
    with ids outside it are a DataError naming the file.
    """
    root = Path(root)
    ds = VOCSegDataset(root, split, with_mask=True, num_classes=num_classes)
    items = [ds.get_raw(i) for i in range(len(ds) if limit is None else min(limit, len(ds)))]
    names = [it["name"] for it in items]
    if stack and items:
        first = items[0]
        for it in items[1:]:
            if it["image"].shape != first["image"].shape:
                (h0, w0), (h, w) = first["image"].shape[:2], it["image"].shape[:2]
                raise DataError(
                    f"split {split!r} of {root} has images of different sizes: {first['name']} is "
                    f"{h0}x{w0}, {it['name']} is {h}x{w} (HxW). Stacked arrays need one size: pass "
                    "stack=False for per-image lists (as `nsrom data stats` does), or resize the images."
                )
    gather = np.stack if stack else list
    out: dict[str, Any] = dict(names=names)
    for key in ("image", "mask", "saliency"):
        out[key] = gather([it[key] for it in items])
    out["classes"] = [it["label_ids"] for it in items]
    if (root / "SegmentationObject").is_dir():
        out["instances"] = gather(
            [read_label_png(root / "SegmentationObject" / f"{n}.png", "instance mask") for n in names]
        )
    inst_meta = read_instances(root) or {}
    out["objects"] = [inst_meta.get(n, []) for n in names]
    return out


def explorer_inputs(
    arrays: Mapping[str, Any],
    oa_cam: np.ndarray,
    cam: np.ndarray,
    num_classes: int,
    pred: np.ndarray | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The threshold explorer's inputs (`widgets.explore_labels`) from `load_split_arrays`
    output and the maps of the same images.

    oa_cam, cam: (N, C, H, W) uint8; pred: optional (N, H, W) uint8; limit: keep the first images.
    """
    n = len(arrays["names"]) if limit is None else min(limit, len(arrays["names"]))
    present = np.zeros((n, num_classes), bool)
    for i, cl in enumerate(arrays["classes"][:n]):
        present[i, cl] = True
    out: dict[str, Any] = dict(
        sal=arrays["saliency"][:n],
        oa_cam=oa_cam[:n],
        cam=cam[:n],
        present=present,
        gt=arrays["mask"][:n],
        image=arrays["image"][:n],
        names=list(arrays["names"][:n]),
    )
    if "instances" in arrays and any(arrays.get("objects", [])):
        out["instances"], out["objects"] = arrays["instances"][:n], arrays["objects"][:n]
    if pred is not None:
        out["pred"] = pred[:n]
    return out


def dataset_statistics(arrays: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The benchmark's statistics from `load_split_arrays` output (stacked or per-image lists).

    class_share: (C,) share of images that contain each class; multi_class_share: images with
    2+ classes; salient_coverage / nonsalient_coverage: mean over instances of the share of the
    instance's pixels with saliency >= 128; nonsalient_touched: share of non-salient pixels with
    saliency != 0; bg_saliency_nonzero: share of background pixels with saliency != 0.
    """
    sal, mask = arrays["saliency"], arrays["mask"]
    n = len(arrays["names"])
    class_share = np.zeros(num_classes)
    for cl in arrays["classes"]:
        for c in set(cl):
            class_share[c] += 1
    class_share /= max(n, 1)
    cov: dict[bool, list[float]] = {True: [], False: []}
    touched: list[float] = []
    area: dict[bool, list[int]] = {True: [], False: []}
    for i, objs in enumerate(arrays["objects"]):
        for o in objs:
            px = arrays["instances"][i] == o["id"]
            s = sal[i][px]
            cov[o["salient"]].append(float((s >= 128).mean()))
            area[o["salient"]].append(int(px.sum()))
            if not o["salient"]:
                touched.append(float((s != 0).mean()))
    n_obj = [len(o) for o in arrays["objects"]]
    pixels = fg_px = bg_px = bg_sal = 0  # per image: the arrays may have different sizes
    for m, s in zip(mask, sal, strict=True):
        bg = m == 0
        pixels += m.size
        fg_px += int((m != 0).sum())
        bg_px += int(bg.sum())
        bg_sal += int((s[bg] != 0).sum())
    return dict(
        images=n,
        class_share=class_share.round(4).tolist(),
        min_class_over_mean=float(class_share.min() / class_share.mean()),
        multi_class_share=float(np.mean([len(set(c)) >= 2 for c in arrays["classes"]])),
        objects_per_image=float(np.mean(n_obj)) if n_obj else 0.0,
        salient_instances=len(cov[True]),
        nonsalient_instances=len(cov[False]),
        salient_coverage=float(np.mean(cov[True])) if cov[True] else float("nan"),
        nonsalient_coverage=float(np.mean(cov[False])) if cov[False] else float("nan"),
        nonsalient_touched=float(np.mean(touched)) if touched else float("nan"),
        salient_area_px=float(np.mean(area[True])) if area[True] else float("nan"),
        nonsalient_area_px=float(np.mean(area[False])) if area[False] else float("nan"),
        foreground_share=fg_px / pixels if pixels else float("nan"),
        bg_saliency_nonzero=bg_sal / bg_px if bg_px else float("nan"),
    )


def _colour_bins(image: np.ndarray, bins: int) -> np.ndarray:
    q = (image.astype(np.int64) * bins) // 256  # (..., 3) in 0..bins-1
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def colour_baseline(
    train: dict[str, Any], val: dict[str, Any], num_classes: int, bins: int = 16
) -> dict[str, Any]:
    """The best per-pixel colour classifier, fitted on GT: how far colour alone gets.

    Each of bins**3 RGB cells predicts the label most frequent among training pixels of that
    colour (the Bayes rule for a colour-only classifier; unseen colours predict background).
    Returns val mIoU, pixel accuracy and per-label IoU.
    """
    L = num_classes + 1
    tb, tm = _colour_bins(train["image"], bins).ravel(), train["mask"].astype(np.int64).ravel()
    keep = tm != 255
    counts = np.bincount(tb[keep] * L + tm[keep], minlength=bins**3 * L).reshape(bins**3, L)
    table = counts.argmax(1)
    pred = table[_colour_bins(val["image"], bins)]
    conf = confusion_matrix(pred, val["mask"], L)
    m, iou = iou_from_confusion(conf)
    return dict(miou=m, pixel_accuracy=float(np.trace(conf) / conf.sum()), iou=iou.round(4).tolist())
