"""Pseudo labels: background extraction (BE), potential object mining (POM) and
non-salient region masking (NSRM).

Implements ALGORITHM.md §3, §4 and §6: the paper's sections "Potential Object Mining"
(the class-adaptive threshold, median MED or top quartile TQ) and "Non-Salient Region
Masking" of "Non-Salient Region Object Mining for Weakly Supervised Semantic
Segmentation" (Yao et al., CVPR 2021), on top of the background extraction of
OAA that the paper starts from, as the public implementation runs them, pixel for pixel.

Two versions of every stage live here:

- ``*_ref`` functions: one image at a time, plain numpy, written to be read next to
  ALGORITHM.md. They are the specification: the tests and the notebooks use them.
- batched torch functions on (B, ...) tensors: the same results bit for bit, on
  whatever device the inputs are on, with no Python loop over pixels or images (loops run
  over the groups of images that list the same number k of classes, so that each group's
  maps are one (n, k, HW) stack without padding, and over the k slots of a group).
  They work on the listed (image, class) maps only, and because every normalised value
  is a function of the raw 8-bit value, per-pixel values are lookups in 256-entry
  tables or raw-value thresholds; BE's argmax is the max of one int64 key per channel
  (float32 score bits, then channel order for ties, then the label); the POM medians come
  from per-raw-value histograms (numpy's median reproduced exactly, without sorting). The
  per-pixel work is uint8 arithmetic (max, subtract, clamp, |, *), which torch vectorises
  on the CPU, rather than comparisons into bool tensors. The tests assert exact equality
  with the references; `nsrom bench labels` times both.

Label values: 0 = background, c + 1 = foreground class c (0-based class id),
255 = ignore. Maps (saliency, OA-CAM, CAM) are raw 8-bit values 0..255, as read from
their PNGs; every normalisation happens in here.

Where the 1% rule (ALGORITHM.md "Final rule of each label stage": a label whose
pixels with values 1..254 are strictly fewer than ``ratio`` of the image becomes all
255) is applied:

- ``background_extraction[_ref]`` and ``potential_object_mining[_ref]`` do NOT apply
  it: they are the raw stages, and POM must see the BE label as it is;
- ``initial_label[s][_ref]`` = BE + rule (the "initial" label, ``initial/``);
- ``pseudo_label[s][_ref]`` = BE + POM + rule (the POM pseudo label, ``pseudo/``);
- ``non_salient_region_masking[_ref]`` applies it at its end, for single-class images
  as well (the masked pseudo label).

Applying the rule after BE as well as after POM would give the same pseudo labels:
POM only turns background into 255, so it never lifts an image over the threshold.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    # per-image numpy references
    "normalize_map_ref",
    "background_extraction_ref",
    "pom_threshold_ref",
    "potential_object_mining_ref",
    "min_label_ratio_rule_ref",
    "initial_label_ref",
    "pseudo_label_ref",
    "box_dilation_ref",
    "non_salient_region_masking_ref",
    # batched torch
    "normalize_maps",
    "background_extraction",
    "pom_thresholds",
    "potential_object_mining",
    "min_label_ratio_rule",
    "initial_labels",
    "pseudo_labels",
    "box_dilation",
    "non_salient_region_masking",
    "torch_threads",
]

IGNORE = 255

MapsLike = Mapping[int, np.ndarray] | np.ndarray | Sequence[np.ndarray]


# ----------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with torch limited to `n` CPU threads (None or 0: leave as is), then restore.

    The batched label functions are many short passes over uint8 maps; extra threads gain
    little, and on a busy machine (others training) they lose a lot: measured on the 2-core
    build machine under load, 2 threads ran 3-5x slower than 1 (`nsrom bench labels`).
    """
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sal_scores_lut() -> np.ndarray:
    """(256,) float32: the background score 1 - sal / 255 for every 8-bit value.

    Computed with numpy's float32 arithmetic, exactly as the reference computes it on
    a float32 saliency map, so the batched version can look the scores up.
    """
    sal = np.arange(256, dtype=np.float32)
    return (1 - sal / np.float32(255)).astype(np.float32)


def _min_valid_count(num_pixels: int, ratio: float) -> int:
    """The smallest count n with float(n) / float(num_pixels) >= ratio (num_pixels + 1 if none).

    The 1% rule compares a float ratio; this turns it into an exact integer threshold
    that gives the same decision for every count, on any device.
    """
    if num_pixels == 0 or math.isnan(ratio):
        return 0
    n = min(max(int(math.floor(ratio * num_pixels)) - 2, 0), num_pixels + 1)
    while n > 0 and (n - 1) / num_pixels >= ratio:
        n -= 1
    while n <= num_pixels and n / num_pixels < ratio:
        n += 1
    return n


def _check_u8_array(name: str, x: np.ndarray, ndim: int) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != ndim:
        raise TypeError(
            f"{name} must be a {ndim}-d uint8 array of raw 8-bit values, got "
            f"{x.ndim}-d {x.dtype}; convert with np.asarray(..., dtype=np.uint8)"
        )
    return x


def _check_u8_tensor(name: str, x: torch.Tensor, ndim: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != ndim:
        got = f"{x.dim()}-d {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(
            f"{name} must be a {ndim}-d torch.uint8 tensor of raw 8-bit values, got {got}; "
            f"convert with .to(torch.uint8)"
        )


def _check_present(present: torch.Tensor, B: int, C: int) -> None:
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        raise TypeError("present must be a (B, C) torch.bool tensor; convert with .bool()")
    if tuple(present.shape) != (B, C):
        raise ValueError(f"present has shape {tuple(present.shape)}, expected (B, C) = {(B, C)}")


def _check_same_hw(name: str, x: torch.Tensor, B: int, H: int, W: int) -> None:
    if x.shape[0] != B or tuple(x.shape[-2:]) != (H, W):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected batch {B} and size {(H, W)}")


def _maps_by_class(
    maps: MapsLike, classes: Sequence[int], shape: tuple[int, int], name: str
) -> dict[int, np.ndarray]:
    """{class id: (H, W) uint8} from a dict keyed by class id or a (K, H, W) stack in `classes` order."""
    if isinstance(maps, Mapping):
        missing = [c for c in classes if c not in maps]
        if missing:
            raise KeyError(f"{name} has no map for listed classes {missing}")
        by_class = {c: maps[c] for c in classes}
    else:
        if len(maps) != len(classes):
            raise ValueError(
                f"{name} holds {len(maps)} maps but {len(classes)} classes are listed; "
                f"pass one map per listed class, in the order of `classes`"
            )
        by_class = dict(zip(classes, maps, strict=True))
    for c, m in by_class.items():
        m = _check_u8_array(f"{name}[{c}]", m, 2)
        if m.shape != shape:
            raise ValueError(f"{name}[{c}] has size {m.shape}, the saliency map has {shape}")
        by_class[c] = m
    return by_class


# ----------------------------------------------------------------------------------------
# Per-image numpy references (the specification)
# ----------------------------------------------------------------------------------------


def normalize_map_ref(m: np.ndarray) -> np.ndarray:
    """Min-max normalise one 8-bit map: (v - min) / (max - min + 1e-8), in float64.

    m: (H, W) uint8, raw 0..255. Returns (H, W) float64 in [0, 1); a constant map gives zeros.
    """
    m = _check_u8_array("m", m, 2)
    # ALGORITHM.md §3: a_c = (v - min) / (max - min + 1e-8), float64
    return (m - m.min()) / (m.max() - m.min() + 1e-8)


def background_extraction_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
) -> np.ndarray:
    """Background extraction (ALGORITHM.md §3) on one image: the initial label, without the 1% rule.

    sal: (H, W) uint8 saliency, 0..255.
    oa_cams: the listed classes' OA-CAMs, raw (H, W) uint8 maps: a dict {class id: map}
        or a (K, H, W) uint8 stack in the order of `classes`.
    classes: the image-level label, 0-based class ids (< num_classes).
    num_classes: C, the number of foreground classes.
    fg, conflict, att: score thresholds; bg: saliency threshold (0..255 units).
    Returns (H, W) uint8: 0 background, c + 1 class c, 255 ignore.
    """
    sal = _check_u8_array("sal", sal, 2)
    H, W = sal.shape
    classes = list(dict.fromkeys(int(c) for c in classes))
    if any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"classes {classes} out of range 0..{num_classes - 1}")
    maps = _maps_by_class(oa_cams, classes, (H, W), "oa_cams")

    # §3.1: (C+1)-channel float32 score stack; channel 0 = 1 - sal / 255
    score = np.zeros((num_classes + 1, H, W), dtype=np.float32)
    score[0] = 1 - sal.astype(np.float32) / np.float32(255)
    high_att = np.zeros((H, W), dtype=bool)
    for c in classes:
        a = normalize_map_ref(maps[c])  # (H, W) float64
        # §3.1: channel c+1 = a_c cast to float32
        score[c + 1] = a
        # §3.5 (second part): any listed float64 OA-CAM strictly above att
        high_att |= a > att

    # §3.2: every score below fg becomes 0 (compared in float32), background included
    score[score < np.float32(fg)] = 0
    # §3.3: two or more channels above conflict -> 255 (background channel counts)
    n_high = (score > np.float32(conflict)).sum(axis=0)
    # §3.4: argmax over channels, ties to the lowest channel; all-zero -> 0
    label = score.argmax(axis=0).astype(np.uint8)
    label[n_high > 1] = IGNORE
    # §3.5: background where sal >= bg or some OA-CAM > att -> 255
    label[(label == 0) & ((sal >= bg) | high_att)] = IGNORE
    return label


def pom_threshold_ref(cam: np.ndarray, in_class: np.ndarray, pom: float = 0.3) -> float:
    """The class-adaptive POM threshold T_c (ALGORITHM.md §4) of one class on one image.

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
    label: np.ndarray, cams: MapsLike, classes: Sequence[int], pom: float = 0.3
) -> np.ndarray:
    """Potential object mining (ALGORITHM.md §4) on one image, without the 1% rule.

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


def min_label_ratio_rule_ref(label: np.ndarray, ratio: float = 0.01) -> np.ndarray:
    """The 1% rule: a label with fewer than ratio * H * W pixels in 1..254 becomes all 255.

    label: (H, W) uint8. Returns a new (H, W) uint8 label.
    """
    label = _check_u8_array("label", label, 2)
    H, W = label.shape
    # ALGORITHM.md §4, final rule: strictly fewer than ratio of the whole image
    valid = int(((label > 0) & (label < IGNORE)).sum())
    if H * W > 0 and float(valid) / float(H * W) < ratio:
        return np.full_like(label, IGNORE)
    return label.copy()


def initial_label_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
    ratio: float = 0.01,
) -> np.ndarray:
    """The initial label of one image: BE then the 1% rule. Arguments as background_extraction_ref."""
    label = background_extraction_ref(sal, oa_cams, classes, num_classes, fg, conflict, bg, att)
    return min_label_ratio_rule_ref(label, ratio)


def pseudo_label_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
    pom: float = 0.3,
    ratio: float = 0.01,
) -> np.ndarray:
    """The POM pseudo label of one image: BE, then POM, then the 1% rule.

    sal: (H, W) uint8; oa_cams, cams: the listed classes' raw uint8 maps (dict or stack).
    Returns (H, W) uint8.
    """
    label = background_extraction_ref(sal, oa_cams, classes, num_classes, fg, conflict, bg, att)
    label = potential_object_mining_ref(label, cams, classes, pom)
    return min_label_ratio_rule_ref(label, ratio)


def box_dilation_ref(mask: np.ndarray, kernel: int = 30) -> np.ndarray:
    """Dilate a binary mask with a kernel x kernel box, OpenCV's default anchor (k // 2, k // 2).

    mask: (H, W) bool. Returns (H, W) bool with
    out[y, x] = any(mask[y - a : y - a + k, x - a : x - a + k]), a = k // 2, nothing
    beyond the border: a pixel reaches k - 1 - a px up/left and a px down/right
    (for k = 30: 14 up/left, 15 down/right).
    """
    mask = np.asarray(mask, dtype=bool)
    k = int(kernel)
    if k < 1:
        raise ValueError(f"kernel must be >= 1, got {kernel}")
    a = k // 2
    padded = np.pad(mask, ((a, k - 1 - a), (a, k - 1 - a)))  # (H + k - 1, W + k - 1)
    # a box is separable: any over k rows, then any over k columns
    rows = sliding_window_view(padded, k, axis=0).any(axis=-1)  # (H, W + k - 1)
    return sliding_window_view(rows, k, axis=1).any(axis=-1)  # (H, W)


def non_salient_region_masking_ref(
    pred: np.ndarray,
    pseudo: np.ndarray,
    sal: np.ndarray,
    classes: Sequence[int],
    kernel: int = 30,
    ratio: float = 0.01,
) -> np.ndarray:
    """Non-salient region masking (ALGORITHM.md §6) on one image, 1% rule included.

    pred: (H, W) uint8, round-1 prediction (0..C).
    pseudo: (H, W) uint8, the POM pseudo label.
    sal: (H, W) uint8 raw saliency.
    classes: 0-based class ids of the image-level label; fewer than two distinct
        classes -> pred is kept unchanged (then the 1% rule).
    Returns (H, W) uint8, the masked pseudo label.
    """
    pred = _check_u8_array("pred", pred, 2)
    pseudo = _check_u8_array("pseudo", pseudo, 2)
    sal = _check_u8_array("sal", sal, 2)
    if not pred.shape == pseudo.shape == sal.shape:
        raise ValueError(f"sizes differ: pred {pred.shape}, pseudo {pseudo.shape}, sal {sal.shape}")
    if len(set(classes)) < 2:
        # §6: images with one class keep the prediction
        return min_label_ratio_rule_ref(pred, ratio)
    # §6.1: expand: where P = 0 and L is a class (1..254), take L
    expanded = np.where((pred == 0) & (pseudo >= 1) & (pseudo <= 254), pseudo, pred)
    # §6.2: object mask = (expanded P != 0) or (sal != 0)
    mask = (expanded != 0) | (sal != 0)
    # §6.3: dilate with a k x k box, anchor (k // 2, k // 2)
    grown = box_dilation_ref(mask, kernel)
    # §6.4: outside the dilated mask -> 255
    out = np.where(grown, expanded, IGNORE).astype(np.uint8)
    # §6.5: the 1% rule
    return min_label_ratio_rule_ref(out, ratio)


# ----------------------------------------------------------------------------------------
# Batched torch versions (exactly equal to the references)
# ----------------------------------------------------------------------------------------


def normalize_maps(m: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation in float64, as normalize_map_ref, for a batch of maps.

    m: (B, H, W) uint8, raw 0..255. Returns (B, H, W) float64 in [0, 1).
    """
    _check_u8_tensor("m", m, 3)
    B, H, W = m.shape
    lo = m.amin(dim=(1, 2), keepdim=True).double()  # (B, 1, 1)
    hi = m.amax(dim=(1, 2), keepdim=True).double()  # (B, 1, 1)
    # ALGORITHM.md §3: (v - min) / (max - min + 1e-8); a tensor divisor, so a true division
    return (m.double() - lo) / (hi - lo + 1e-8)


def _bin_values(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, N) uint8 raw maps -> the normalised value of every raw value 0..255, and each map's min.

    Returns values: (P, 256) float64 and lo: (P,) int64. Entry v of values equals
    normalize_map_ref at the pixels that hold raw value v, so a per-pixel value is a lookup,
    and since values increase from lo on, "value > x" is "raw value >= some v" (_first_raw_above).
    """
    P, N = maps.shape
    lo = maps.amin(dim=1).long()  # (P,)
    hi = maps.amax(dim=1).long()  # (P,)
    v = torch.arange(256, dtype=torch.float64, device=maps.device)[None]  # (1, 256)
    # ALGORITHM.md §3: (v - min) / (max - min + 1e-8), float64, a tensor divisor (true division)
    values = (v - lo.double()[:, None]) / ((hi - lo).double()[:, None] + 1e-8)  # (P, 256)
    return values, lo


def _first_raw_above(
    values: torch.Tensor, lo: torch.Tensor, x: float | torch.Tensor
) -> torch.Tensor:
    """The smallest raw value v >= lo whose value is strictly above x (256 if none).

    values: (P, 256), non-decreasing from lo on (normalised values, or their float32 scores
    after the fg floor); lo: (P,) int64; x: a number or (P,) float64 (NaN: none).
    Returns (P,) int64. Exact: the values above x form a suffix of lo..255.
    """
    v = torch.arange(256, device=values.device)[None]  # (1, 256)
    x = x[:, None] if isinstance(x, torch.Tensor) else x
    above = (values > x) & (v >= lo[:, None])  # (P, 256)
    return 256 - above.sum(dim=1)


def _u8_at_least_rows(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """x >= first as 0/1 uint8, first broadcast over x's last dim, for first in 0..256 (256: never).

    x: (..., N) uint8; first: (..., 1) int64. Computed with uint8 arithmetic (max, subtract,
    clamp), which torch vectorises, instead of a comparison that makes a bool tensor.
    """
    s = (first - 1).clamp(0, 254).to(torch.uint8)  # x > s  <=>  x >= first, for first in 1..255
    y = (torch.maximum(x, s) - s).clamp_max_(1)  # (..., N) 0/1
    y.mul_((first <= 255).to(torch.uint8)).bitwise_or_((first <= 0).to(torch.uint8))
    return y


def _u8_first_at_least(threshold: float) -> int:
    """The smallest uint8 v with v >= threshold as numpy compares them (256 if none)."""
    if math.isnan(threshold) or threshold > 255:
        return 256
    if threshold <= 0:
        return 0
    return math.ceil(threshold)


def _is_class(label: torch.Tensor) -> torch.Tensor:
    """1 where 1 <= label <= 254 (a class), else 0; uint8 arithmetic. label: uint8, any shape."""
    q = label - 1  # wraps: 0 -> 255, 255 -> 254; a class gives 0..253
    return 1 - (
        torch.maximum(q, torch.tensor(253, dtype=torch.uint8, device=q.device)) - 253
    ).clamp_max_(1)


def _is_zero(x: torch.Tensor) -> torch.Tensor:
    """1 where x == 0, else 0, as uint8 (uint8 arithmetic)."""
    return 1 - x.clamp_max(1)


def _median_of_counts(counts: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """numpy's median of a multiset given as counts per bin, for each row.

    counts: (P, 256) int64 >= 0; values: (P, 256) float64, increasing over the bins
    that have counts. Returns (P,) float64: the middle value for an odd count, the mean
    of the two middle values for an even count, NaN for an empty row.
    """
    n = counts.sum(dim=1)  # (P,)
    cum = counts.cumsum(dim=1)  # (P, 256)
    k_lo = (n - 1).clamp(min=0) // 2  # (P,) rank of the lower middle value
    k_hi = n // 2  # (P,) rank of the upper middle value
    # the bin of the k-th smallest value = number of bins whose cumulative count is <= k
    b_lo = (cum <= k_lo[:, None]).sum(dim=1).clamp(max=255)  # (P,)
    b_hi = (cum <= k_hi[:, None]).sum(dim=1).clamp(max=255)  # (P,)
    v_lo = values.gather(1, b_lo[:, None])[:, 0]  # (P,)
    v_hi = values.gather(1, b_hi[:, None])[:, 0]  # (P,)
    med = torch.where(b_lo == b_hi, v_lo, (v_lo + v_hi) / 2)
    return med.masked_fill(n == 0, math.nan)


def _groups(present: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The images of a batch grouped by their number k of listed classes.

    Returns [(k, rows, b, c)]: rows (n,) the images listing k classes; b, c (n * k,) their
    listed (image, class) pairs, by image then class, so that a (n * k, ...) tensor of
    per-pair rows reshapes to (n, k, ...): slot j = each image's j-th class, no padding.
    """
    counts = present.sum(dim=1)  # (B,)
    groups = []
    for k in torch.unique(counts).tolist():
        rows = (counts == k).nonzero()[:, 0]  # (n,)
        i, c = present[rows].nonzero(as_tuple=True)  # (n * k,), (n * k,)
        groups.append((k, rows, rows[i], c))
    return groups


def _pair_maps(maps: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """maps[b, c] as (P, H * W): the listed pairs' maps. maps: (B, C, H, W); b, c: (P,)."""
    B, C, H, W = maps.shape
    return maps.reshape(B * C, H * W).index_select(0, b * C + c)  # (P, HW)


def background_extraction(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
) -> torch.Tensor:
    """Background extraction (ALGORITHM.md §3) for a batch; no 1% rule (see initial_labels).

    sal: (B, H, W) uint8 saliency, 0..255.
    oa_cam: (B, C, H, W) uint8 raw OA-CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool, the image-level labels.
    Returns (B, H, W) uint8 labels on the inputs' device, equal to background_extraction_ref.

    Every per-pixel quantity is a function of a raw 8-bit value, so it is computed once per raw
    value (256-entry tables per map) and looked up, or turned into a raw-value threshold.
    Images are processed in groups that list the same number k of classes: (n, k, HW) maps.
    """
    _check_u8_tensor("sal", sal, 3)
    _check_u8_tensor("oa_cam", oa_cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("sal", sal, B, H, W)
    _check_present(present, B, C)
    N, dev = H * W, sal.device
    fg32 = float(np.float32(fg))  # thresholds as the float32 values the reference compares with
    conflict32 = float(np.float32(conflict))
    # §3.1: channel 0 = 1 - sal / 255 in float32 (numpy's float32 values, per raw value)
    s0 = torch.from_numpy(_sal_scores_lut()).to(dev)  # (256,) float32
    # §3.2: every score below fg -> 0, background channel included
    s0 = s0.masked_fill(s0 < fg32, 0.0)
    # §3.4: argmax over channels, ties to the lowest channel, as the max of an int64 key per
    # (channel, raw value): float32 bits (ordered like the scores, all >= 0), then 255 - channel
    # (a tie goes to the lower channel), then the label the channel gives (0 or class + 1).
    # Unlisted classes score 0 and never win: channel 0 comes first and scores >= 0.
    key0 = (s0.view(torch.int32).long() << 16) | (255 << 8)  # (256,) label 0
    # §3.3: background above conflict <=> sal <= a threshold <=> 255 - sal >= first0
    first0 = torch.tensor(256 - int((s0 > conflict32).sum()), device=dev)
    # §3.5: sal >= bg, as numpy compares a uint8 with any number
    first_bg = torch.tensor(_u8_first_at_least(bg), device=dev)

    sal = sal.reshape(B, N)
    out = torch.empty((B, N), dtype=torch.uint8, device=dev)
    for k, rows, b, c in _groups(present):
        n = rows.numel()
        sal_g = sal if n == B else sal[rows]  # (n, N)
        best = key0.expand(n, 256).gather(1, sal_g.long())  # (n, N) int64
        n_high = _u8_at_least_rows(255 - sal_g, first0)  # (n, N) 0/1
        cause = _u8_at_least_rows(sal_g, first_bg)  # (n, N) 0/1
        if k:
            maps = _pair_maps(oa_cam, b, c)  # (n * k, N) raw OA-CAMs, slot order
            values, lo = _bin_values(maps)  # (n * k, 256) float64, (n * k,)
            # §3.1: channel c+1 = a_c cast to float32; §3.2: below fg -> 0
            score = values.to(torch.float32)
            score = score.masked_fill(score < fg32, 0.0)  # (n * k, 256)
            slot = torch.arange(k, device=dev).repeat(n)  # (n * k,)
            key = (score.view(torch.int32).long() << 16) | ((254 - slot) << 8)[:, None]
            key |= (c + 1)[:, None]  # (n * k, 256)
            g = key.gather(1, maps.long()).view(n, k, N)  # (n, k, N)
            for j in range(k):  # a running maximum: faster than amax over the middle dim
                best = torch.maximum(best, g[:, j])
            stack = maps.view(n, k, N)
            # §3.3: a class score above conflict <=> raw value >= a threshold
            hi = _u8_at_least_rows(stack, _first_raw_above(score, lo, conflict32).view(n, k, 1))
            n_high += hi.sum(dim=1, dtype=torch.uint8).clamp_max_(2)
            # §3.5: a listed class's float64 a_c strictly above att <=> raw value >= a threshold
            high = _u8_at_least_rows(stack, _first_raw_above(values, lo, att).view(n, k, 1))
            cause |= high.amax(dim=1)
        label = (best & 255).to(torch.uint8)  # (n, N) the argmax label
        # §3.3: two or more channels above conflict -> 255 (unlisted channels hold 0: they
        # count only when 0 > conflict, and then every channel does)
        if 0.0 > conflict32:
            n_high.fill_(2 if C + 1 >= 2 else 1)
        conflicted = n_high.clamp_max_(2) >> 1  # (n, N) 1 where two or more
        # §3.5: background where sal >= bg or some listed OA-CAM > att -> 255
        result = label | (conflicted | (cause & _is_zero(label))) * IGNORE
        if n == B:
            return result.reshape(B, H, W)
        out[rows] = result
    return out.reshape(B, H, W)


def _pom_group(
    label: torch.Tensor, maps: torch.Tensor, c: torch.Tensor, k: int, pom: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T_c (ALGORITHM.md §4) of a group's pairs, with the bin values and minimum of each CAM.

    label: (n, N) uint8 BE labels of n images that list k classes each; maps: (n * k, N)
    uint8 raw CAMs in slot order; c: (n * k,) their class ids.
    Returns T: (n * k,) float64 (NaN selects nothing), values: (n * k, 256) float64, lo.
    Normalisation is monotonic, so every median only needs the counts per raw value.
    """
    n, N = label.shape
    P, dev = n * k, maps.device
    values, lo = _bin_values(maps)  # (P, 256) float64, (P,)
    # histograms of raw CAM values on each pair's class pixels: one bincount over (pair, value)
    # bins; a pixel labelled with its image's j-th class counts slot j's CAM value, any other
    # pixel goes to the spare bins of pair P
    lab = label.long()  # (n, N), an index
    first_bin = torch.full((n, 256), P * 256, dtype=torch.int32, device=dev)  # label -> bin 0
    i = torch.arange(n, device=dev).repeat_interleave(k)  # (P,) image of each pair
    first_bin[i, c + 1] = torch.arange(0, P * 256, 256, dtype=torch.int32, device=dev)
    stack = maps.view(n, k, N)
    # the CAM value of the slot whose class the pixel carries (slot 0's where none does), in
    # uint8 arithmetic: slot 0's value plus (slot j - slot 0) where the label is slot j's class
    # (modulo 256, so exact)
    cam_at = stack[:, 0]  # (n, N) uint8
    if k > 1:
        cls = (c + 1).to(torch.uint8).view(n, k, 1)  # (n, k, 1) label value of each slot
        for j in range(1, k):
            is_j = _is_zero(label ^ cls[:, j])  # (n, N) 0/1
            cam_at = cam_at + (stack[:, j] - stack[:, 0]) * is_j
    bins = (first_bin.gather(1, lab) + cam_at).reshape(-1)  # (n * N,) int32
    counts_in = torch.bincount(bins, minlength=(P + 1) * 256)[: P * 256].reshape(P, 256)

    # §4 MED: non-zero CAM sum on the class's pixels (all values are >= 0) -> their median
    has_inside = (counts_in * (values > 0)).sum(dim=1) > 0  # (P,)
    t = _median_of_counts(counts_in, values)  # (P,)
    # §4 TQ (pairs without such pixels only): m = median of the values > pom; T = median of
    # the values strictly above m; otherwise T = 1
    rest = (~has_inside).nonzero()[:, 0]  # (R,)
    if rest.numel():
        R = rest.numel()
        offset = torch.arange(0, R * 256, 256, dtype=torch.int32, device=dev)[:, None]
        flat = maps[rest].int() + offset  # (R, N) int32 bins (pair, raw value)
        counts_all = torch.bincount(flat.reshape(-1), minlength=R * 256).reshape(R, 256)
        v_r = values[rest]  # (R, 256)
        counts_above = counts_all * (v_r > pom)  # (R, 256)
        has_above = counts_above.sum(dim=1) > 0  # (R,)
        m_above = _median_of_counts(counts_above, v_r)  # (R,)
        t_tq = _median_of_counts(counts_all * (v_r > m_above[:, None]), v_r)  # NaN if empty
        t[rest] = torch.where(has_above, t_tq, torch.ones_like(t_tq))
    return t, values, lo


def pom_thresholds(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = 0.3
) -> torch.Tensor:
    """The POM thresholds T_c (ALGORITHM.md §4) of every (image, class), as pom_threshold_ref.

    label: (B, H, W) uint8 BE labels; cam: (B, C, H, W) uint8 raw CAMs; present: (B, C) bool.
    Returns (B, C) float64; NaN where the class is absent or the TQ set is empty.
    """
    _check_u8_tensor("label", label, 3)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = cam.shape
    _check_same_hw("label", label, B, H, W)
    _check_present(present, B, C)
    out = torch.full((B, C), math.nan, dtype=torch.float64, device=cam.device)
    flat = label.reshape(B, H * W)
    for k, rows, b, c in _groups(present):
        if k:
            maps = _pair_maps(cam, b, c)  # (n * k, N)
            out[b, c] = _pom_group(flat[rows], maps, c, k, pom)[0]
    return out


def potential_object_mining(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = 0.3
) -> torch.Tensor:
    """Potential object mining (ALGORITHM.md §4) for a batch; no 1% rule (see pseudo_labels).

    label: (B, H, W) uint8 BE labels (background_extraction).
    cam: (B, C, H, W) uint8 raw CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool.
    Returns (B, H, W) uint8, equal to potential_object_mining_ref.
    """
    _check_u8_tensor("label", label, 3)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = cam.shape
    _check_same_hw("label", label, B, H, W)
    _check_present(present, B, C)
    N = H * W
    flat = label.reshape(B, N)
    groups = _groups(present)
    out = flat.clone() if len(groups) > 1 else flat
    for k, rows, b, c in groups:
        if k == 0:
            continue
        n = rows.numel()
        lab = flat if n == B else flat[rows]  # (n, N)
        maps = _pair_maps(cam, b, c)  # (n * k, N) raw CAMs, slot order
        t, values, lo = _pom_group(lab, maps, c, k, pom)
        # §4: CAM strictly above T_c (NaN selects nothing): raw value >= the first one above T_c
        first = _first_raw_above(values, lo, t).view(n, k, 1)
        potential = _u8_at_least_rows(maps.view(n, k, N), first).amax(dim=1)  # (n, N) 0/1
        # §4: only background pixels become 255
        result = lab | (potential & _is_zero(lab)) * IGNORE
        if n == B:
            return result.reshape(B, H, W)
        out[rows] = result
    return (out if out is not flat else flat.clone()).reshape(B, H, W)


def min_label_ratio_rule(label: torch.Tensor, ratio: float = 0.01) -> torch.Tensor:
    """The 1% rule for a batch: each label with fewer than ratio * H * W pixels in 1..254 -> all 255.

    label: (B, H, W) uint8. Returns (B, H, W) uint8, equal to min_label_ratio_rule_ref per image.
    """
    _check_u8_tensor("label", label, 3)
    B, H, W = label.shape
    # ALGORITHM.md §4, final rule: float(valid) / (H * W) < ratio, as an exact integer threshold
    n_min = _min_valid_count(H * W, ratio)
    valid = _is_class(label).reshape(B, H * W).sum(dim=1)  # (B,)
    return label | ((valid < n_min).to(torch.uint8) * IGNORE)[:, None, None]


def initial_labels(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
    ratio: float = 0.01,
) -> torch.Tensor:
    """Initial labels: BE then the 1% rule. Arguments as background_extraction; (B, H, W) uint8."""
    label = background_extraction(sal, oa_cam, present, fg, conflict, bg, att)
    return min_label_ratio_rule(label, ratio)


def pseudo_labels(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
    pom: float = 0.3,
    ratio: float = 0.01,
) -> torch.Tensor:
    """POM pseudo labels: BE, then POM, then the 1% rule.

    sal: (B, H, W) uint8; oa_cam, cam: (B, C, H, W) uint8 raw maps; present: (B, C) bool.
    Returns (B, H, W) uint8, equal to pseudo_label_ref per image.
    """
    label = background_extraction(sal, oa_cam, present, fg, conflict, bg, att)
    label = potential_object_mining(label, cam, present, pom)
    return min_label_ratio_rule(label, ratio)


def _window_any(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """y[i] = any(x[i : i + k]) along dim, for bool x; the output is k - 1 shorter.

    Doubling: windows of 1, 2, 4, ... w <= k by OR-ing shifted copies, then two overlapping
    windows of w cover one of k (k - w <= w): log2(k) cheap passes.
    """
    n = x.shape[dim] - k + 1
    w = 1
    while 2 * w <= k:
        m = x.shape[dim] - w
        x = x.narrow(dim, 0, m) | x.narrow(dim, w, m)  # any over a window of 2w
        w *= 2
    return x.narrow(dim, 0, n) | x.narrow(dim, k - w, n)


def box_dilation(mask: torch.Tensor, kernel: int = 30) -> torch.Tensor:
    """Dilate binary masks with a kernel x kernel box, anchor (k // 2, k // 2), as box_dilation_ref.

    mask: (B, H, W) bool (or 0/1 uint8). Returns (B, H, W) of the same dtype: a pixel reaches
    k // 2 px down/right and k - 1 - k // 2 px up/left; nothing beyond the border.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    B, H, W = mask.shape
    k = int(kernel)
    if k < 1:
        raise ValueError(f"kernel must be >= 1, got {kernel}")
    a = k // 2
    # zeros beyond the border, a before and k - 1 - a after: out[y] = any(mask[y - a : y - a + k])
    padded = mask.new_zeros((B, H + k - 1, W + k - 1))
    padded[:, a : a + H, a : a + W] = mask
    rows = _window_any(padded, k, dim=1)  # (B, H, W + k - 1)
    return _window_any(rows, k, dim=2)  # (B, H, W)


def non_salient_region_masking(
    pred: torch.Tensor,
    pseudo: torch.Tensor,
    sal: torch.Tensor,
    present: torch.Tensor,
    kernel: int = 30,
    ratio: float = 0.01,
) -> torch.Tensor:
    """Non-salient region masking (ALGORITHM.md §6) for a batch, 1% rule included.

    pred: (B, H, W) uint8 round-1 predictions (0..C).
    pseudo: (B, H, W) uint8 POM pseudo labels.
    sal: (B, H, W) uint8 raw saliency.
    present: (B, C) bool; images with fewer than two classes keep pred.
    Returns (B, H, W) uint8 masked pseudo labels, equal to non_salient_region_masking_ref.
    """
    _check_u8_tensor("pred", pred, 3)
    _check_u8_tensor("pseudo", pseudo, 3)
    _check_u8_tensor("sal", sal, 3)
    B, H, W = pred.shape
    _check_same_hw("pseudo", pseudo, B, H, W)
    _check_same_hw("sal", sal, B, H, W)
    if present.dim() != 2:
        raise ValueError(f"present must be (B, C), got shape {tuple(present.shape)}")
    _check_present(present, B, present.shape[1])

    # uint8 arithmetic throughout (0/1 masks, | and *), which torch vectorises on the CPU
    # §6.1: expand: where P = 0 and L is a class (1..254), take L
    expanded = pred | pseudo * (_is_zero(pred) & _is_class(pseudo))  # (B, H, W)
    # §6.2: object mask = (expanded P != 0) or (sal != 0)
    mask = (expanded | sal).clamp_max_(1)  # (B, H, W) 0/1
    # §6.3: dilate with a k x k box, anchor (k // 2, k // 2)
    grown = box_dilation(mask, kernel)  # (B, H, W) 0/1
    # §6.4: outside the dilated mask -> 255
    masked = expanded | _is_zero(grown) * IGNORE
    # §6: images with one class keep the prediction; complex images (>= 2 classes) are masked
    is_complex = (present.sum(dim=1) >= 2).to(torch.uint8)[:, None, None]  # (B, 1, 1)
    out = masked * is_complex | pred * (1 - is_complex)
    # §6.5: the 1% rule
    return min_label_ratio_rule(out, ratio)
