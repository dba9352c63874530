"""Potential object mining (POM, docs/method.md §4): the class-adaptive thresholds T_c, POM
itself and the POM pseudo labels (BE + POM + the 1% rule).

The ``*_ref`` functions are the specification, one image in numpy; the batched torch
functions compute the same results, bit for bit (T_c as the same float64, NaN included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from nsrom_lib.labels._common import (
    IGNORE,
    MapsLike,
    _check_present,
    _check_same_hw,
    _check_u8_array,
    _check_u8_tensor,
    _maps_by_class,
    first_raw_above,
    min_label_ratio_rule,
    min_label_ratio_rule_ref,
    normalize_map_ref,
    value_table,
)
from nsrom_lib.labels.be import background_extraction, background_extraction_ref
from nsrom_lib.params import BE, POM, RULE

# ----------------------------------------------------------------------------------------
# One image, numpy (the specification)
# ----------------------------------------------------------------------------------------


def pom_threshold_ref(cam: np.ndarray, in_class: np.ndarray, pom: float = POM.pom) -> float:
    """The class-adaptive POM threshold T_c (docs/method.md §4) of one class on one image.

    cam: (H, W) float64, the class's normalised CAM (normalize_map_ref).
    in_class: (H, W) bool, the pixels the current label gives to this class.
    Returns T_c as a float: the median on the class (MED), else the median above the
    median of values > pom (TQ; NaN if that set is empty), else 1.
    """
    inside = cam[in_class]
    # §4 MED: the class's pixels have a non-zero CAM sum -> their median
    if inside.sum() != 0:
        return float(np.median(inside))
    above = cam[cam > pom]
    if above.size > 0:
        # §4 TQ: m = median of values > pom; T = median of the values strictly above m
        top = cam[cam > np.median(above)]
        return float(np.median(top)) if top.size > 0 else math.nan
    # §4: nothing above pom -> T = 1 (selects nothing)
    return 1.0


def potential_object_mining_ref(
    label: np.ndarray, cams: MapsLike, classes: Sequence[int], pom: float = POM.pom
) -> np.ndarray:
    """Potential object mining (docs/method.md §4) on one image, without the 1% rule.

    label: (H, W) uint8, the BE label (background_extraction_ref).
    cams: the listed classes' CAMs (not OA-CAMs), raw (H, W) uint8: a dict {class id: map}
        or a (K, H, W) uint8 stack in the order of `classes`.
    classes: 0-based class ids of the image-level label.
    Returns (H, W) uint8: background pixels where some class's CAM > T_c become 255;
    class pixels and existing 255s are unchanged.
    """
    label = _check_u8_array("label", label, 2)
    classes = list(dict.fromkeys(int(c) for c in classes))
    maps = _maps_by_class(cams, classes, label.shape, "cams")
    potential = np.zeros(label.shape, dtype=bool)
    for c in classes:
        cam = normalize_map_ref(maps[c])  # (H, W) float64
        t = pom_threshold_ref(cam, label == c + 1, pom)
        # §4: a pixel whose CAM is strictly above T_c is a potential object of class c
        potential |= cam > t
    out = label.copy()
    # §4: only pixels still labelled background become 255
    out[(label == 0) & potential] = IGNORE
    return out


def pseudo_label_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    pom: float = POM.pom,
    ratio: float = RULE.ratio,
) -> np.ndarray:
    """The POM pseudo label of one image: BE, then POM, then the 1% rule.

    sal: (H, W) uint8; oa_cams, cams: the listed classes' raw uint8 maps (dict or stack).
    Returns (H, W) uint8.
    """
    label = background_extraction_ref(sal, oa_cams, classes, num_classes, fg, conflict, bg, att)
    label = potential_object_mining_ref(label, cams, classes, pom)
    return min_label_ratio_rule_ref(label, ratio)


# ----------------------------------------------------------------------------------------
# A batch, torch
# ----------------------------------------------------------------------------------------


def histograms(raw: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Counts of each raw value 0..255 per map: (P, N) int64 raw values -> (P, 256) int64.

    where: (P, N) bool, the pixels to count (None: all). The others go to a spare bin 256,
    dropped at the end.
    """
    if where is not None:
        raw = torch.where(where, raw, 256)
    one = torch.ones((1, 1), dtype=torch.int64, device=raw.device).expand_as(raw)
    counts = torch.zeros((raw.shape[0], 257), dtype=torch.int64, device=raw.device)
    return counts.scatter_add_(1, raw, one)[:, :256]


def median_of_counts(counts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """numpy's median of the values each row of a histogram counts: (P,) float64, NaN if none.

    counts: (P, 256) int64 by raw value; values: (P, 256) float64, the normalised value of
    each raw value (value_table), increasing with it. numpy's median of n values is the mean
    of the two middle ones, sorted ranks (n - 1) // 2 and n // 2 (one and the same for an odd
    n): the raw value holding rank k is the first whose cumulative count exceeds k.
    """
    n = counts.sum(dim=1)  # (P,)
    cum = counts.cumsum(dim=1)  # (P, 256)
    ranks = torch.stack([(n - 1) // 2, n // 2], dim=1)  # (P, 2)
    raw = torch.searchsorted(cum, ranks, right=True).clamp_max_(255)  # (P, 2)
    middle = values.gather(1, raw)  # (P, 2) float64
    median = (middle[:, 0] + middle[:, 1]) / 2  # numpy's mean of the two middle values
    return torch.where(n > 0, median, math.nan)


def _pair_thresholds(
    label: torch.Tensor, cam: torch.Tensor, b: torch.Tensor, c: torch.Tensor, pom: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """T_c (§4) of the listed pairs (image b[p], class c[p]), as pom_threshold_ref.

    label: (B, N) uint8; cam: (P, N) uint8 the pairs' raw CAMs. Returns t: (P,) float64 and
    values: (P, 256) float64, each pair's normalised CAM value of every raw value. T_c only
    depends on how many pixels hold each raw value, so histograms replace the sorting.
    """
    values = value_table(cam)  # (P, 256)
    raw = cam.long()  # (P, N) int64
    in_class = label[b] == (c + 1)[:, None]  # (P, N): the pixels labelled with the class
    counts_in = histograms(raw, in_class)  # (P, 256)
    counts_all = histograms(raw)  # (P, 256)
    # §4 MED: the class's pixels have a non-zero CAM sum (one value above 0) -> their median
    use_median = (counts_in * (values > 0)).sum(dim=1) > 0
    t_median = median_of_counts(counts_in, values)
    # §4 TQ: m = median of the values > pom; T = median of the values strictly above m
    counts_above = counts_all * (values > pom)
    m = median_of_counts(counts_above, values)  # NaN where nothing is above pom
    t_top = median_of_counts(counts_all * (values > m[:, None]), values)  # NaN if empty
    # §4: nothing above pom -> T = 1 (selects nothing)
    t_top = torch.where(counts_above.sum(dim=1) > 0, t_top, 1.0)
    return torch.where(use_median, t_median, t_top), values


def _check_pom_inputs(label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor) -> None:
    _check_u8_tensor("label", label, 3)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = cam.shape
    _check_same_hw("label", label, B, H, W)
    _check_present(present, B, C)


def pom_thresholds(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = POM.pom
) -> torch.Tensor:
    """The POM thresholds T_c (docs/method.md §4) of every (image, class), as pom_threshold_ref.

    label: (B, H, W) uint8 BE labels; cam: (B, C, H, W) uint8 raw CAMs; present: (B, C) bool.
    Returns (B, C) float64; NaN where the class is absent or the TQ set is empty.
    """
    _check_pom_inputs(label, cam, present)
    B, C, H, W = cam.shape
    out = torch.full((B, C), math.nan, dtype=torch.float64, device=cam.device)
    if H * W == 0:
        return out
    b, c = present.nonzero(as_tuple=True)  # (P,), (P,) the listed pairs
    cam_p = cam[b, c].reshape(-1, H * W)  # (P, N)
    out[b, c] = _pair_thresholds(label.reshape(B, H * W), cam_p, b, c, pom)[0]
    return out


def potential_object_mining(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = POM.pom
) -> torch.Tensor:
    """Potential object mining (docs/method.md §4) for a batch; no 1% rule (see pseudo_labels).

    label: (B, H, W) uint8 BE labels (background_extraction).
    cam: (B, C, H, W) uint8 raw CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool.
    Returns (B, H, W) uint8, equal to potential_object_mining_ref.
    """
    _check_pom_inputs(label, cam, present)
    B, C, H, W = cam.shape
    N = H * W
    if N == 0:
        return label.clone()
    rows = label.reshape(B, N)
    b, c = present.nonzero(as_tuple=True)  # (P,), (P,) the listed pairs
    cam_p = cam[b, c].reshape(-1, N)  # (P, N) raw CAMs
    t, values = _pair_thresholds(rows, cam_p, b, c, pom)  # (P,), (P, 256)
    # §4: a pixel whose CAM is strictly above T_c is a potential object of class c;
    # CAM > T_c  <=>  raw value >= first_raw_above(values, T_c)
    above = (cam_p >= first_raw_above(values, t)).int()  # (P, N)
    potential = torch.zeros((B, N), dtype=torch.int32, device=cam.device).index_add_(0, b, above)
    # §4: only pixels still labelled background become 255
    out = torch.where((rows == 0) & (potential > 0), IGNORE, rows)
    return out.reshape(B, H, W)


def pseudo_labels(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    pom: float = POM.pom,
    ratio: float = RULE.ratio,
) -> torch.Tensor:
    """POM pseudo labels: BE, then POM, then the 1% rule.

    sal: (B, H, W) uint8; oa_cam, cam: (B, C, H, W) uint8 raw maps; present: (B, C) bool.
    Returns (B, H, W) uint8, equal to pseudo_label_ref per image.
    """
    _check_u8_tensor("oa_cam", oa_cam, 4)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("cam", cam, B, H, W)
    _check_present(present, B, cam.shape[1])
    label = background_extraction(sal, oa_cam, present, fg, conflict, bg, att)
    label = potential_object_mining(label, cam, present, pom)
    return min_label_ratio_rule(label, ratio)
