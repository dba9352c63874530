"""Measures used everywhere (docs/method.md §8): mIoU, pseudo-label quality, non-salient recall.

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
    "average_precision",
    "classification_map",
    "map_quality",
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
    """Pseudo-label quality against ground truth (docs/method.md §8).

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
    salient=False measures non-salient objects (docs/method.md §8), True salient ones, None all.
    Returns NaN if no instance qualifies.
    """
    hits = n = 0
    for lab, inst, objs in zip(labels, instance_maps, objects, strict=True):
        h, k = _recall_counts(lab, inst, objs, salient, min_share)
        hits, n = hits + h, n + k
    return hits / n if n else float("nan")


def _recall_counts(label: Any, instance_map: Any, objects: Sequence[dict[str, Any]],
                   salient: bool | None, min_share: float = 0.5) -> tuple[int, int]:
    """`instance_recall` of one image as counts: (instances recalled, instances counted)."""
    lab, inst = _np(label), _np(instance_map)
    hits = n = 0
    for o in objects:
        if salient is not None and bool(o["salient"]) != salient:
            continue
        px = inst == o["id"]
        if not px.any():
            continue
        n += 1
        hits += int((lab[px] == o["class"] + 1).mean() >= min_share)
    return hits, n


# ----------------------------------------------------------------------------- classification and maps
# (notebook 02's table)


def average_precision(scores: Any, labels: Any) -> float:
    """Average precision of one class: mean of the precision at each positive's rank.

    scores: (N,) float, higher = more confident; labels: (N,) 0/1. NaN if there is no positive.
    Ties are broken by the order of a stable sort on descending scores.
    """
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).astype(bool).ravel()
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    hits = y[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def classification_map(scores: Any, labels: Any) -> float:
    """Classification mAP: the mean over classes (with a positive) of `average_precision`.

    scores: (N, C) float (logits or probabilities); labels: (N, C) 0/1 multi-hot.
    """
    s, y = _np(scores), _np(labels)
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be (N, C)")
    aps = [average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def map_quality(
    maps: Sequence[dict[int, Any]],
    masks: Sequence[Any],
    instance_maps: Sequence[Any] | None = None,
    objects: Sequence[Sequence[dict[str, Any]]] | None = None,
    threshold: float = 0.3,
) -> dict[str, float]:
    """Coverage and precision of per-class attention maps against ground truth (notebook 02).

    maps: per image {class id (0-based): (H, W) map}, uint8 0..255 (divided by 255) or float in
    [0, 1]; masks: (H, W) GT label maps (0 bg, c + 1 class c, 255 void);
    instance_maps / objects: SynthVOC instances (value k = instance k; dicts with `id`, `class`,
    `salient`), or None to count each (image, class) GT region as one object.
    A pixel is *active* for class c where its map is > `threshold`.
    Returns:
      coverage: mean over GT objects of the share of the object's pixels active for its class
        (an object whose class has no map counts 0);
      coverage_salient / coverage_nonsalient: the same over salient / non-salient objects
        (NaN without instance metadata);
      precision: share of active (image, class, pixel) triples, void excluded, whose GT is that
        class, pooled over all maps;
      objects: the number of objects counted.
    `MapQuality` computes the same image by image.
    """
    quality = MapQuality(threshold)
    with_instances = instance_maps is not None and objects is not None
    for i, per_class in enumerate(maps):
        quality.add(per_class, masks[i], instance_maps[i] if with_instances else None,
                    objects[i] if with_instances else None)
    return quality.result()


class MapQuality:
    """`map_quality`, added up image by image: `add` each image's maps with its ground truth,
    then `result()` (the same numbers as `map_quality` over all the images at once)."""

    def __init__(self, threshold: float = 0.3) -> None:
        self.threshold = threshold
        self.coverage: dict[str, list[float]] = {"all": [], "salient": [], "nonsalient": []}
        self.correct = self.active_total = self.images = 0

    def add(self, per_class: dict[int, Any], mask: Any, instance_map: Any = None,
            objects: Sequence[dict[str, Any]] | None = None) -> None:
        """One image: its maps {class id: (H, W) map}, its GT mask (H, W) and, for SynthVOC, its
        instance map and object dicts (both, or neither)."""
        gt = _np(mask)
        act = {}
        for c, m in per_class.items():
            m = _np(m)
            v = m.astype(np.float64) / 255.0 if m.dtype == np.uint8 else m.astype(np.float64)
            if v.shape != gt.shape:
                raise ValueError(f"image {self.images}: map of class {c} is {v.shape}, GT is {gt.shape}")
            a = v > self.threshold
            act[int(c)] = a
            valid = a & (gt != IGNORE)
            self.active_total += int(valid.sum())
            self.correct += int((valid & (gt == int(c) + 1)).sum())
        cov = self.coverage
        if instance_map is not None and objects is not None:
            inst = _np(instance_map)
            for o in objects:
                px = inst == o["id"]
                if not px.any():
                    continue
                a = act.get(int(o["class"]))
                share = float(a[px].mean()) if a is not None else 0.0
                cov["all"].append(share)
                cov["salient" if o["salient"] else "nonsalient"].append(share)
        else:
            for v in np.unique(gt):
                if v == 0 or v == IGNORE:
                    continue
                px = gt == v
                a = act.get(int(v) - 1)
                cov["all"].append(float(a[px].mean()) if a is not None else 0.0)
        self.images += 1

    def result(self) -> dict[str, float]:
        """coverage, coverage_salient, coverage_nonsalient, precision, objects (`map_quality`)."""

        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else float("nan")

        cov = self.coverage
        return dict(
            coverage=mean(cov["all"]),
            coverage_salient=mean(cov["salient"]),
            coverage_nonsalient=mean(cov["nonsalient"]),
            precision=self.correct / self.active_total if self.active_total else float("nan"),
            objects=len(cov["all"]),
        )


__all__ += ["MapQuality"]


def active_share(maps: Sequence[dict[int, Any]], threshold: float = 0.3) -> float:
    """Mean share of its image that a map marks active (> `threshold`), over all maps.

    maps: as `map_quality` (per image {class id: (H, W) map}, uint8 0..255 or float in [0, 1]).
    With threshold 0 this is the *support* of the maps: e.g. the share of each image where an
    accumulated map is a positive target of the integral attention model's loss (§2).
    Returns NaN without maps.
    """
    shares = []
    for per_class in maps:
        for m in per_class.values():
            m = _np(m)
            v = m.astype(np.float64) / 255.0 if m.dtype == np.uint8 else m.astype(np.float64)
            shares.append(float((v > threshold).mean()))
    return float(np.mean(shares)) if shares else float("nan")


__all__ += ["active_share"]


# ----------------------------------------------------------------------------- coverage-precision curves
# (notebook 02's figure, notebook 02b's analysis of the OA-CAM's precision)

#: Thresholds of a coverage-precision curve, strict to lax; 0 measures the maps' support.
CURVE_THRESHOLDS: tuple[float, ...] = (0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.0)


def coverage_precision_curve(
    maps: Sequence[dict[int, Any]],
    gt: dict[str, Any],
    thresholds: Sequence[float] = CURVE_THRESHOLDS,
) -> dict[str, list[float]]:
    """`map_quality` of one kind of maps at every threshold: its coverage-precision curve.

    maps: per image {class id: (H, W) map}, uint8 0..255 or float in [0, 1] (as `map_quality`);
    gt: the ground truth of the same images, a dict with `masks` and optionally `instances` and
    `objects` (what `pipeline.load_ground_truth` returns); thresholds: the activation thresholds,
    strict to lax, so that coverage rises along the curve.
    Returns lists with one value per threshold: `threshold`, `coverage`, `precision` and
    `share` (`active_share`: the mean share of its image that a map marks active).
    """
    curve: dict[str, list[float]] = {"threshold": [], "coverage": [], "precision": [], "share": []}
    for t in thresholds:
        q = map_quality(maps, gt["masks"], gt.get("instances"), gt.get("objects"), threshold=t)
        curve["threshold"].append(float(t))
        curve["coverage"].append(q["coverage"])
        curve["precision"].append(q["precision"])
        curve["share"].append(active_share(maps, t))
    return curve


def curve_point(curve: dict[str, list[float]], threshold: float) -> dict[str, float]:
    """The point of a `coverage_precision_curve` at one of its thresholds, as a dict of floats
    (`threshold`, `coverage`, `precision`, `share`)."""
    if threshold not in curve["threshold"]:
        raise ValueError(f"threshold {threshold} is not on the curve; it has {curve['threshold']}")
    i = curve["threshold"].index(threshold)
    return {k: v[i] for k, v in curve.items()}


def compare_with_curve(point: dict[str, float], curve: dict[str, list[float]],
                       tolerance: float = 0.02) -> dict[str, Any]:
    """Where a (coverage, precision) point lies against another map's coverage-precision curve.

    point: a dict with `coverage` and `precision` (e.g. `curve_point` of the OA-CAM at 0.3);
    curve: a `coverage_precision_curve` (e.g. the CAM's). The curve's precision at the point's
    coverage is interpolated linearly between its points (NaN points dropped; left of the
    curve's strictest point, that point's precision counts). Returns `precision_on_curve`
    (None when no threshold gives the curve that much coverage) and `verdict`: "above" or
    "below" the curve (by more than `tolerance`), "on" it, or "beyond" its reach.
    A map shows an effect of its own only above the curve: on or below it, another threshold on
    the curve's map buys the same coverage at the same or a better precision.
    """
    cov, prec = np.asarray(curve["coverage"], float), np.asarray(curve["precision"], float)
    keep = np.isfinite(cov) & np.isfinite(prec)
    cov, prec = cov[keep], prec[keep]
    if not cov.size or point["coverage"] > cov.max():
        return {"precision_on_curve": None, "verdict": "beyond"}
    order = np.argsort(cov, kind="stable")
    same = float(np.interp(point["coverage"], cov[order], prec[order]))
    diff = point["precision"] - same
    verdict = "above" if diff > tolerance else "below" if diff < -tolerance else "on"
    return {"precision_on_curve": same, "verdict": verdict}


def per_class_quality(
    maps_by_kind: dict[str, Sequence[dict[int, Any]]],
    gt: dict[str, Any],
    num_classes: int,
    threshold: float = 0.3,
) -> dict[int, dict[str, dict[str, float]]]:
    """`map_quality` class by class, for several kinds of maps of the same images.

    maps_by_kind: {kind: per image {class id: (H, W) map}}; gt: as `coverage_precision_curve`;
    num_classes: C. For class c only its maps count, and the other classes' pixels become
    background: still wrong for c's map, but no object of c to cover.
    Returns {class id: {kind: map_quality dict}}, for the classes present in the GT.
    """
    objects = gt.get("objects")
    out: dict[int, dict[str, dict[str, float]]] = {}
    for c in range(num_classes):
        masks_c = [np.where((_np(m) == c + 1) | (_np(m) == IGNORE), _np(m), 0) for m in gt["masks"]]
        if not any((m == c + 1).any() for m in masks_c):
            continue
        objs_c = None if objects is None else [[o for o in os_ if o["class"] == c] for os_ in objects]
        out[c] = {kind: map_quality([{c: per[c]} if c in per else {} for per in maps], masks_c,
                                    gt.get("instances"), objs_c, threshold=threshold)
                  for kind, maps in maps_by_kind.items()}
    return out


__all__ += ["CURVE_THRESHOLDS", "coverage_precision_curve", "curve_point", "compare_with_curve",
            "per_class_quality"]


# ----------------------------------------------------------------------------- OAA, epoch by epoch
# (notebook 02b: the classifier record's `oaa_epochs` rows)


def oaa_epoch_summary(epochs: Sequence[dict[str, Any]], share: float = 0.9) -> dict[str, Any]:
    """What the fused epochs of online attention accumulation bring, and when the maps settle.

    epochs: one row per fused epoch, with `epoch` (1-based, as the training log), `images`,
    `own` (that epoch's maps) and `accumulated` (the maps after it), each a `map_quality` dict:
    the `oaa_epochs` that `pipeline.ensure_classifier` measures on its probe images.
    The own maps have *settled* in the first epoch whose own-map precision is at least `share`
    of the last epoch's. Returns `settled` and `last` (rows), `before` (fused epochs before the
    settled one), `coverage_before` (the accumulated coverage after them, 0.0 if none) and
    `settled_epochs` (epochs from the settled one to the last).
    """
    if not epochs:
        raise ValueError("no fused epochs to summarise (a run without GT masks, or an older record)")
    last = epochs[-1]
    settled = next((r for r in epochs if r["own"]["precision"] >= share * last["own"]["precision"]), last)
    before = [r for r in epochs if r["epoch"] < settled["epoch"]]
    return {"settled": settled, "last": last, "before": len(before),
            "coverage_before": before[-1]["accumulated"]["coverage"] if before else 0.0,
            "settled_epochs": len(epochs) - len(before)}


__all__ += ["oaa_epoch_summary"]


# ----------------------------------------------------------------------------- pseudo labels


def instance_background_share(
    labels: Sequence[Any],
    instance_maps: Sequence[Any],
    objects: Sequence[Sequence[dict[str, Any]]],
    *,
    salient: bool | None = False,
) -> float:
    """Share of GT instance pixels that a label map teaches as background (label 0).

    The pixels of objects that a label calls background are what potential object mining
    (docs/method.md §4) turns into ignore; this measures how many are left. Arguments as
    `instance_recall` (salient=False: non-salient objects only, True: salient, None: all).
    Returns NaN if no instance qualifies.
    """
    as_bg = n = 0
    for lab, inst, objs in zip(labels, instance_maps, objects, strict=True):
        b, k = _background_counts(lab, inst, objs, salient)
        as_bg, n = as_bg + b, n + k
    return as_bg / n if n else float("nan")


def _background_counts(label: Any, instance_map: Any, objects: Sequence[dict[str, Any]],
                       salient: bool | None) -> tuple[int, int]:
    """`instance_background_share` of one image as counts: (instance pixels labelled
    background, instance pixels)."""
    ids = [o["id"] for o in objects if salient is None or bool(o["salient"]) == salient]
    if not ids:
        return 0, 0
    lab, inst = _np(label), _np(instance_map)
    px = np.isin(inst, ids)
    return int((lab[px] == 0).sum()), int(px.sum())


class LabelTally:
    """The measures of label maps or predictions, added up image by image in integer counts,
    so that they do not depend on how the images are grouped into batches.

    `add` each image's label map and, when there is ground truth, its GT mask and (SynthVOC)
    instance map and objects; then read `label_quality()` (as the function of that name),
    `miou()`, `instance_recall(salient)`, `instance_background_share()`, and the label's own
    `ignore_share()` and `empty_images`.
    """

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.confusion = np.zeros((num_labels, num_labels), np.int64)
        self.labelled = self.valid = 0  # label_quality's coverage: labelled / valid GT pixels
        self.pixels = self.ignored = self.empty_images = 0
        self.recall = {False: [0, 0], True: [0, 0]}  # salient -> [recalled, counted]
        self.background = [0, 0]  # non-salient instance pixels: [labelled background, all]
        self.instances = False  # whether instance maps were added

    def add(self, label: Any, gt: Any = None, instance_map: Any = None,
            objects: Sequence[dict[str, Any]] | None = None) -> None:
        lab = _np(label)
        ignore = lab == IGNORE
        self.pixels += lab.size
        self.ignored += int(ignore.sum())
        self.empty_images += bool(np.all(ignore))
        if gt is None:
            return
        g = _np(gt)
        valid = g != IGNORE
        self.valid += int(valid.sum())
        self.labelled += int((valid & ~ignore).sum())
        self.confusion += confusion_matrix(lab, g, self.num_labels)
        if instance_map is not None and objects is not None:
            self.instances = True
            for salient, counts in self.recall.items():
                h, n = _recall_counts(lab, instance_map, objects, salient)
                counts[0] += h
                counts[1] += n
            b, n = _background_counts(lab, instance_map, objects, salient=False)
            self.background[0] += b
            self.background[1] += n

    def ignore_share(self) -> float:
        return self.ignored / max(self.pixels, 1)

    def miou(self) -> tuple[float, np.ndarray]:
        """(mIoU, per-label IoU) of the summed confusion matrix (`iou_from_confusion`)."""
        return iou_from_confusion(self.confusion)

    def label_quality(self) -> dict[str, float]:
        """precision, coverage and miou, as `label_quality` of the added images."""
        return dict(
            precision=int(np.trace(self.confusion)) / max(int(self.confusion.sum()), 1),
            coverage=self.labelled / max(self.valid, 1),
            miou=iou_from_confusion(self.confusion)[0],
        )

    def instance_recall(self, salient: bool) -> float:
        hits, n = self.recall[salient]
        return hits / n if n else float("nan")

    def instance_background_share(self) -> float:
        as_bg, n = self.background
        return as_bg / n if n else float("nan")


__all__ += ["LabelTally"]


__all__ += ["instance_background_share"]


def instance_max(
    maps: Sequence[Any],
    instance_maps: Sequence[Any],
    objects: Sequence[Sequence[dict[str, Any]]],
    *,
    salient: bool | None = False,
) -> np.ndarray:
    """The largest value of a per-image map on each GT instance, e.g. its saliency (0..255).

    maps: per image an (H, W) map (saliency, an attention map); instance_maps: (H, W), value
    k = instance k; objects: per image, dicts with `id` and `salient` (as `instance_recall`).
    salient=False: non-salient instances only, True: salient ones, None: all. Instances
    without pixels are skipped. Returns an (n,) array in image, then object order (the maps'
    dtype; empty if none qualifies), so `(instance_max(sal, ...) == 0).mean()` is the share
    of non-salient objects that the saliency map does not touch at all.
    """
    out = []
    for m, inst, objs in zip(maps, instance_maps, objects, strict=True):
        m, inst = _np(m), _np(inst)
        if m.shape != inst.shape:
            raise ValueError(f"map {m.shape} and instance map {inst.shape} differ in size")
        for o in objs:
            if salient is not None and bool(o["salient"]) != salient:
                continue
            px = inst == o["id"]
            if px.any():
                out.append(m[px].max())
    dtype = _np(maps[0]).dtype if len(maps) else np.float64
    return np.asarray(out, dtype=dtype)


__all__ += ["instance_max"]


# ----------------------------------------------------------------------------- the gap to the upper bound
# (the results stage's metrics.json['gap'], notebook 08)


def nonsalient_object_masks(
    masks: Sequence[Any],
    instance_maps: Sequence[Any],
    objects: Sequence[Sequence[dict[str, Any]]],
) -> list[np.ndarray]:
    """Per image, the pixels of its non-salient GT objects: an (H, W) bool mask.

    The objects are non-salient as `instance_recall(..., salient=False)` counts them: the
    instances whose metadata flag `salient` is False. Only object pixels count (GT class > 0,
    not `IGNORE`). masks: (H, W) GT label maps; instance_maps: (H, W), value k = instance k;
    objects: per image, dicts with `id` and `salient`.
    """
    out = []
    for gt, inst, objs in zip(masks, instance_maps, objects, strict=True):
        gt, inst = _np(gt), _np(inst)
        if gt.shape != inst.shape:
            raise ValueError(f"GT mask {gt.shape} and instance map {inst.shape} differ in size")
        ids = [o["id"] for o in objs if not bool(o["salient"])]
        out.append(np.isin(inst, ids) & (gt != 0) & (gt != IGNORE))
    return out


#: The measures of `gap_decomposition`, in the order the report shows them.
GAP_MEASURES: tuple[str, ...] = (
    "miou", "miou_nonsalient_void", "nonsalient_share", "nonsalient_as_background",
    "salient_as_background", "lost_nonsalient", "lost_salient", "background_as_object",
    "object_false_share",
)


def gap_decomposition(
    preds: Sequence[Any],
    gts: Sequence[Any],
    nonsalient_masks: Sequence[Any] | None,
    num_classes: int,
    ignore: int = IGNORE,
) -> dict[str, float]:
    """Where one model's val mIoU is lost: on non-salient objects, on salient ones, or elsewhere.

    preds, gts: (H, W) label maps (0 background, c + 1 class c, `ignore` void); nonsalient_masks:
    per image an (H, W) bool mask of the non-salient object pixels (`nonsalient_object_masks`),
    or None without instance data (then every measure that needs it is NaN); num_classes: C.
    *Object pixels* are those with GT in 1..C; *salient* object pixels the object pixels outside
    the non-salient masks. A pixel predicted `ignore` is predicted neither background nor object.
    Returns (all fractions, NaN when the denominator is empty):
      miou: mIoU (`miou`); miou_nonsalient_void: mIoU with the non-salient object pixels set to
        void in the GT, i.e. not counted at all;
      nonsalient_share: non-salient object pixels / object pixels;
      nonsalient_as_background, salient_as_background: share of the non-salient (salient)
        object pixels predicted background;
      lost_nonsalient, lost_salient: non-salient (salient) object pixels predicted background /
        all object pixels (their sum is the share of object pixels predicted background);
      background_as_object: share of the background pixels predicted as an object class;
      object_false_share: share of the pixels predicted as an object class (GT not void) whose
        GT is background or another class.
    """
    n_lab = num_classes + 1
    conf = np.zeros((n_lab, n_lab), np.int64)
    conf_void = np.zeros((n_lab, n_lab), np.int64)
    n = dict(obj=0, ns=0, ns_bg=0, s_bg=0, bg=0, bg_obj=0, pred_obj=0, pred_obj_wrong=0)
    ns_masks = [None] * len(gts) if nonsalient_masks is None else nonsalient_masks
    for p, g, ns in zip(preds, gts, ns_masks, strict=True):
        p, g = _np(p).astype(np.int64), _np(g).astype(np.int64)
        if p.shape != g.shape:
            raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in size")
        conf += confusion_matrix(p, g, n_lab, ignore)
        obj = (g != 0) & (g != ignore)
        ns = np.zeros_like(obj) if ns is None else _np(ns).astype(bool)
        if ns.shape != g.shape:
            raise ValueError(f"non-salient mask {ns.shape} and ground truth {g.shape} differ in size")
        ns = ns & obj
        conf_void += confusion_matrix(p, np.where(ns, ignore, g), n_lab, ignore)
        p_bg, p_obj = p == 0, (p != 0) & (p != ignore)
        n["obj"] += int(obj.sum())
        n["ns"] += int(ns.sum())
        n["ns_bg"] += int((ns & p_bg).sum())
        n["s_bg"] += int((obj & ~ns & p_bg).sum())
        n["bg"] += int((g == 0).sum())
        n["bg_obj"] += int(((g == 0) & p_obj).sum())
        n["pred_obj"] += int((p_obj & (g != ignore)).sum())
        n["pred_obj_wrong"] += int((p_obj & (g != ignore) & (p != g)).sum())

    def share(a: int, b: int, known: bool = True) -> float:
        return a / b if b and known else float("nan")

    known = nonsalient_masks is not None
    return dict(
        miou=iou_from_confusion(conf)[0],
        miou_nonsalient_void=iou_from_confusion(conf_void)[0] if known else float("nan"),
        nonsalient_share=share(n["ns"], n["obj"], known),
        nonsalient_as_background=share(n["ns_bg"], n["ns"], known),
        salient_as_background=share(n["s_bg"], n["obj"] - n["ns"], known),
        lost_nonsalient=share(n["ns_bg"], n["obj"], known),
        lost_salient=share(n["s_bg"], n["obj"], known),
        background_as_object=share(n["bg_obj"], n["bg"]),
        object_false_share=share(n["pred_obj_wrong"], n["pred_obj"]),
    )


__all__ += ["nonsalient_object_masks", "GAP_MEASURES", "gap_decomposition"]
