"""Pseudo labels: background extraction (BE), potential object mining (POM) and
non-salient region masking (NSRM).

Implements docs/method.md §3, §4 and §6: the paper's sections "Potential Object Mining"
(the class-adaptive threshold, median MED or top quartile TQ) and "Non-Salient Region
Masking" of "Non-Salient Region Object Mining for Weakly Supervised Semantic
Segmentation" (Yao et al., CVPR 2021), on top of the background extraction of
OAA that the paper starts from, as the public implementation runs them, pixel for pixel.

Two versions of every stage live here:

- ``*_ref`` functions: one image at a time, plain numpy, written to be read next to
  docs/method.md. They are the specification: the tests and the notebooks use them.
- batched torch functions on (B, ...) tensors: the same results bit for bit, on
  whatever device the inputs are on, with no Python loop over pixels or images. They read
  the listed (image, class) maps only, laid out slot-major over the images sorted by class
  count (_Layout): one pass per slot over prefixes of (B, H * W) tensors, whatever the mix
  of class counts. The tests assert exact equality with the references; `nsrom bench
  labels` times both.

How the batched versions get their speed (each point checked against the references):

- BE's uint8 code path (_BECodes, _be_pass). For a map that spans 0..255 (as the maps
  stage writes them) or is constant, the float32 score of raw value v is the float32
  nearest to v / 255, and distinct codes never share a score; the background score is
  also a code, V(sal) (_v_codes: 255 - sal, one float32 step lower for some sal). So BE's
  argmax, floor, conflict and ignore rules are uint8 max / min / clamp on the raw maps, no
  float map, no lookup. Other maps take the table path (_background_extraction_lut:
  256-entry tables per map and int64 argmax keys).
- Segments (_pseudo_fused). Where an image segment (16..64 px) has saliency 0, the
  background wins the argmax whatever the classes score, and the label only depends on
  the classes' highest code and POM's potential objects (a few full-size passes); the full
  BE pass runs on the gathered other segments only (38% of the pixels on the benchmark).
- POM's thresholds come from per-raw-value histograms (numpy's median reproduced exactly,
  without sorting): int16 bincounts over the segments that hold class pixels (resp. CAM
  values above pom, for TQ); the pixels nobody asks about get spread bins (runs of one bin
  slow bincount down about 2x). The per-pair arithmetic runs in numpy on the host.
- Scratch memory (_Workspace): fresh large CPU tensors are fresh pages on every call, and
  the page faults cost as much as the arithmetic; the scratch tensors are reused.
- Short rows: per-row broadcasts over rows of 32 bytes are slow in torch; per-row
  constants go through int64 words (_rows_affine, _add_rows_), reductions over short rows
  through wide-int views (_segments_any), index lists through numpy (_nonzero).

Label values: 0 = background, c + 1 = foreground class c (0-based class id),
255 = ignore. Maps (saliency, OA-CAM, CAM) are raw 8-bit values 0..255, as read from
their PNGs; every normalisation happens in here.

Where the 1% rule (docs/method.md, "Where the official code differs from the paper's
text": a label whose pixels with values 1..254 are strictly fewer than ``ratio`` of the
image becomes all 255) is applied:

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
import functools
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

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
    # docs/method.md §3: a_c = (v - min) / (max - min + 1e-8), float64
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
    """Background extraction (docs/method.md §3) on one image: the initial label, without the 1% rule.

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
    label: np.ndarray, cams: MapsLike, classes: Sequence[int], pom: float = 0.3
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


def min_label_ratio_rule_ref(label: np.ndarray, ratio: float = 0.01) -> np.ndarray:
    """The 1% rule: a label with fewer than ratio * H * W pixels in 1..254 becomes all 255.

    label: (H, W) uint8. Returns a new (H, W) uint8 label.
    """
    label = _check_u8_array("label", label, 2)
    H, W = label.shape
    # the 1% rule (docs/method.md): strictly fewer than ratio of the whole image
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
    """Non-salient region masking (docs/method.md §6) on one image, 1% rule included.

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
    # docs/method.md §3: (v - min) / (max - min + 1e-8); a tensor divisor, so a true division
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
    # docs/method.md §3: (v - min) / (max - min + 1e-8), float64, a tensor divisor (true division)
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


# ----------------------------------------------------------------------------------------
# Scratch memory and the layout of the listed pairs
# ----------------------------------------------------------------------------------------

#: Most bytes of scratch tensors kept per thread and device (see _Workspace).
WORKSPACE_MAX_BYTES = 512 * 2**20

_workspaces = threading.local()


class _Workspace:
    """Scratch tensors kept from call to call, by name (on the CPU).

    The batched functions make a few dozen passes over (B, H * W) uint8 tensors. A fresh CPU
    tensor of that size is fresh memory from the OS on most calls (glibc maps large blocks
    and returns them on free), and first-touch page faults then cost more than the
    arithmetic: half the time of `nsrom bench labels` on the 2-core build machine (55k faults
    for 2000 images of 96 x 96, measured with getrusage). So the scratch tensors of a call
    are views into buffers that each thread keeps per device and reuses; a function's result
    is always a new tensor. At most WORKSPACE_MAX_BYTES are kept (larger requests get plain
    tensors). Other devices have a caching allocator: there, get() just allocates.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.nbytes = 0

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8):
        """A (shape) dtype tensor that no other live scratch tensor of this call shares."""
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=self.device)
        numel = math.prod(shape)
        buf = self.bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            old = 0 if buf is None else buf.numel() * buf.element_size()
            new = numel * torch.empty((), dtype=dtype).element_size()
            if self.nbytes - old + new > WORKSPACE_MAX_BYTES:
                return torch.empty(shape, dtype=dtype, device=self.device)
            with torch.inference_mode(False):  # usable in and outside inference mode
                buf = torch.empty(numel, dtype=dtype, device=self.device)
            self.bufs[(name, dtype)] = buf
            self.nbytes += new - old
        return buf[:numel].view(shape)


def _workspace(device: torch.device) -> _Workspace:
    """This thread's scratch buffers for `device`."""
    by_device = getattr(_workspaces, "by_device", None)
    if by_device is None:
        by_device = _workspaces.by_device = {}
    ws = by_device.get(device)
    if ws is None:
        ws = by_device[device] = _Workspace(device)
    return ws


class _Layout(NamedTuple):
    """A batch's listed (image, class) pairs, slot-major, over images sorted by class count.

    The images are sorted by their number k of listed classes, most first (``order``: the
    original index of each sorted image, None when the batch is sorted already), so that the
    images listing more than j classes are the first ``rows[j]`` sorted images. Per-pair tensors
    (P, ...) hold slot 0 (the first listed class, by class id) of every image that has one, then
    slot 1, and so on: block j is pairs ``starts[j] : starts[j] + rows[j]``, the j-th class of
    sorted images 0 .. rows[j] - 1 in order. Per-pixel work is then one pass per slot over a
    prefix of (n, N) tensors, whatever the mix of class counts in the batch.
    """

    order: torch.Tensor | None  # (B,) int64
    inverse: torch.Tensor | None  # (B,) int64: the sorted position of each image
    rows: tuple[int, ...]  # (kmax,)
    starts: tuple[int, ...]  # (kmax,)
    b: torch.Tensor  # (P,) original image of each pair
    c: torch.Tensor  # (P,) class id
    r: torch.Tensor  # (P,) sorted image
    lab: torch.Tensor  # (P, 1) uint8: the label value c + 1

    def block(self, j: int) -> slice:
        return slice(self.starts[j], self.starts[j] + self.rows[j])

    @property
    def na(self) -> int:
        """The images that list at least one class: the first na sorted images."""
        return self.rows[0] if self.rows else 0


def _layout(present: torch.Tensor) -> _Layout:
    """The slot-major layout of the listed pairs of present: (B, C) bool (see _Layout).

    Small integer work on (B, C): done with numpy (faster for arrays this small), then moved
    to present's device.
    """
    B, C = present.shape
    dev = present.device
    pres = present.cpu().numpy()
    k = pres.sum(axis=1)  # (B,)
    per_k = np.bincount(k, minlength=C + 1)
    kmax = int(np.flatnonzero(per_k).max()) if B else 0
    rows = tuple(int(per_k[j + 1 :].sum()) for j in range(kmax))
    starts = tuple(sum(rows[:j]) for j in range(kmax))
    order = None
    if B > 1 and (k[1:] > k[:-1]).any():
        order = np.argsort(-k, kind="stable")
        pres, k = pres[order], k[order]
    r, c = np.nonzero(pres)  # (P,) by image, then class id
    slot = np.arange(r.size) - (np.cumsum(k) - k)[r]  # (P,) j-th class of r
    o = np.argsort(slot * max(B, 1) + r, kind="stable")  # slot-major
    r, c = r[o], c[o]
    b = r if order is None else order[r]
    inverse = None if order is None else np.argsort(order)

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).long().to(dev)

    lab = torch.from_numpy((c + 1).astype(np.uint8)).to(dev)[:, None]
    return _Layout(t(order), t(inverse), rows, starts, t(b), t(c), t(r), lab)


def _sorted_rows(x: torch.Tensor, lay: _Layout, ws: _Workspace, name: str) -> torch.Tensor:
    """(B, H, W) -> (B, H * W) in the layout's image order: a view when already sorted, else
    a scratch tensor."""
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    if lay.order is None:
        return x
    return torch.index_select(x, 0, lay.order, out=ws.get(name, tuple(x.shape), x.dtype))


def _result(x: torch.Tensor, lay: _Layout, H: int, W: int) -> torch.Tensor:
    """(B, H * W) rows in the layout's order (scratch) -> a new (B, H, W) tensor, batch order."""
    if lay.inverse is None:
        return x.clone().reshape(x.shape[0], H, W)
    return x.index_select(0, lay.inverse).reshape(x.shape[0], H, W)


def _ge01(x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
    """x >= t as 0/1 uint8 written to out (may be x), for uint8 x and any integer t.

    A comparison written to a uint8 out is one vectorised pass; written to a bool tensor it
    is twenty times slower when one side is a scalar or a broadcast column, and a scalar
    loop otherwise (torch 2.x CPU), so every comparison here goes to uint8.
    """
    if t <= 0:
        return out.fill_(1)
    if t > 255:
        return out.zero_()
    return torch.ge(x, t, out=out)


def _words_ok(*xs: torch.Tensor) -> bool:
    """Whether (R, L) tensors can be seen as (R, L * size / 8) int64 words (row per row)."""
    return all(
        x.dim() == 2
        and x.is_contiguous()
        and (x.shape[1] * x.element_size()) % 8 == 0
        and x.data_ptr() % 8 == 0
        for x in xs
    )


def _lane_ones(size: int) -> int:
    """The int64 word with 1 in each lane of `size` bytes: 0x0101..01 (uint8), 0x0001..0001
    (int16). A value v below the lane's sign bit times it is v in every lane."""
    return sum(1 << (8 * size * i) for i in range(8 // size))


def _words(col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1) values -> (R, 1) int64 words holding the value in each of their dtype lanes
    (uint8 or int16 lanes: 0x0101.. or 0x0001.. times the value, which stays below 2**63 for
    values below 128 or 2**15; otherwise the lanes are copied)."""
    size = torch.empty((), dtype=dtype).element_size()
    v = col.reshape(-1, 1).to(torch.int64)
    if v.numel() == 0 or int(v.max()) < 2 ** (8 * size - 1):
        return v * _lane_ones(size)
    lanes = 8 // size
    out = torch.empty((v.shape[0], lanes), dtype=dtype, device=col.device)
    return out.copy_(col.reshape(-1, 1).expand(-1, lanes)).view(torch.int64)


def _rows_affine(
    x: torch.Tensor, d: torch.Tensor, base: torch.Tensor | None, out: torch.Tensor, small: bool
) -> torch.Tensor:
    """out = base + x * d for (R, L) uint8 x in 0..1 and one uint8 d and base per row ((R, 1)).

    A per-row broadcast over short uint8 rows is slow (five times slower than a plain pass
    for rows of 32 bytes); with small (every d and result below 128, so that no lane carries
    into the next or into the sign bit), rows of a multiple of 8 bytes run on int64 words of
    8 lanes instead."""
    R = x.shape[0]
    if small and _words_ok(x, out):
        x64, d64 = x.view(torch.int64), d.to(torch.int64).view(R, 1)
        if base is None:
            torch.mul(x64, d64, out=out.view(torch.int64))
        else:
            torch.addcmul(_words(base, torch.uint8), x64, d64, out=out.view(torch.int64))
        return out
    if base is None:
        return torch.mul(x, d, out=out)
    return torch.addcmul(base, x, d, out=out)


def _add_rows_(x: torch.Tensor, col: torch.Tensor | np.ndarray) -> torch.Tensor:
    """x += col, one value per row ((R, 1)), in place, for (R, L) uint8 or int16 x whose
    lanes stay below 128 (uint8) or 2**15 (int16): on int64 words where possible. col may be
    a numpy int array (the words are then made in numpy)."""
    if isinstance(col, np.ndarray):
        v = col.reshape(-1, 1).astype(np.int64)
        bits = 8 * x.element_size()
        if _words_ok(x) and (v.size == 0 or (v.min() >= 0 and v.max() < 2 ** (bits - 1))):
            x.view(torch.int64).add_(
                torch.from_numpy(v * _lane_ones(x.element_size())).to(x.device)
            )
            return x
        col = torch.from_numpy(v).to(x.device)
    if _words_ok(x):
        x.view(torch.int64).add_(_words(col, x.dtype))
        return x
    return x.add_(col.to(x.dtype))


def _pair_rows(maps: torch.Tensor, lay: _Layout, ws: _Workspace, name: str) -> torch.Tensor:
    """maps[b, c] of the layout's pairs as a (P, H * W) scratch tensor. maps: (B, C, H, W)."""
    B, C, H, W = maps.shape
    idx = lay.b * C + lay.c
    out = ws.get(name, (idx.numel(), H * W))
    return torch.index_select(maps.reshape(B * C, H * W), 0, idx, out=out)


# ----------------------------------------------------------------------------------------
# BE on the uint8 code path
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# BE on the uint8 code path
# ----------------------------------------------------------------------------------------


class _BECodes(NamedTuple):
    """BE's thresholds as integer codes, for maps whose raw values are their codes (min 0, max 255).

    A listed OA-CAM with min 0 and max 255 has a_c = v / (255 + 1e-8) at raw value v, and its
    float32 score is the float32 nearest to v / 255; every score is a function of v, increasing,
    and distinct values of v / 255 and (255 - sal) / 255 never round to the same float32 unless
    they are equal. So BE's comparisons between channels are comparisons of integer codes:
    the class code v, and for the background the code V(sal) below. (A constant map has a_c = 0
    everywhere: code 0.) See _be_codes for how each field is derived and checked.
    """

    all_conflict: bool  # 0 > conflict (float32): every channel counts, all pixels are 255
    z: int  # class codes 0..z score 0 after the fg floor (z >= 0)
    t_cf: int  # a class scores above conflict <=> code >= t_cf (256: never)
    s_cf: int  # the background scores above conflict <=> sal <= s_cf (-1: never)
    t_att: int  # a class's float64 a_c > att <=> code >= t_att (0: always, 256: never)
    t_bg: int  # sal >= bg <=> sal >= t_bg (256: never)
    v_table: np.ndarray  # (256,) uint8: V(sal), the highest class code that does not beat sal
    v_formula: bool  # V(sal) equals _v_codes's uint8 arithmetic (else looked up in v_table)
    v_cap: int = -1  # K: V(sal) = _v_short_np(sal, K), the shorter arithmetic (-1: not so)


def _v_formula_np(sal: np.ndarray, z: int) -> np.ndarray:
    """numpy twin of _v_codes's arithmetic, to check it against the exact table."""
    s = np.minimum(sal, 254)
    e0 = ((s >> 6) + (s & 1) + 2) >> 2
    return np.maximum(255 - s - e0, z)


def _v_short_np(sal: np.ndarray, cap: int) -> np.ndarray:
    """numpy twin of _v_codes's short arithmetic: 255 - v - e0(v), v = min(sal, cap).

    e0(v) = (v + 64 * (v & 1)) >> 7 is 1 for v >= 128 and for odd v >= 65 (as _v_codes's
    e0), in uint8 without overflow for v <= 191. Capping sal at the K where the formula
    reaches the floor code z replaces the final clamp to z.
    """
    v = np.minimum(sal, cap)
    return 255 - v - ((v + 64 * (v & 1)) >> 7)


def _v_cap(v_table: np.ndarray) -> int:
    """The largest K <= 191 with _v_short_np(sal, K) == v_table for every sal, or -1."""
    code = np.arange(256)
    for cap in range(191, -1, -1):
        if (_v_short_np(code, cap) == v_table).all():
            return cap
    return -1


@functools.lru_cache(maxsize=64)
def _be_codes(fg: float, conflict: float, bg: float, att: float) -> _BECodes | None:
    """The integer codes of BE's thresholds (see _BECodes), or None where an assumption fails.

    Everything is computed with numpy from the same float32 / float64 values the reference
    compares (docs/method.md §3), for all 256 raw values, and the monotonicity the uint8 path
    relies on is checked here rather than assumed.
    """
    fg32, cf32 = np.float32(fg), np.float32(conflict)
    code = np.arange(256)
    a = code / (255 + 1e-8)  # §3: float64 a_c of raw value v of a map with min 0 and max 255
    fc = a.astype(np.float32)  # §3.1: the class score, float32
    fc[fc < fg32] = 0  # §3.2: floor
    f0 = _sal_scores_lut()  # §3.1: the background score 1 - sal / 255, float32
    f0[f0 < fg32] = 0  # §3.2
    z = int((fc == 0).sum()) - 1
    if not ((fc[: z + 1] == 0).all() and (np.diff(fc[z:]) > 0).all() and (np.diff(f0) <= 0).all()):
        return None
    # §3.4: class code v beats the background at sal <=> fc[v] > f0[sal] <=> v > V(sal)
    v_table = (fc[None, :] <= f0[:, None]).sum(axis=1) - 1  # (256,) >= 0: fc[0] = 0
    # §3.3 / §3.5: each threshold as a suffix of codes or a prefix of saliency values
    hi, bg_hi, above_att = fc > cf32, f0 > cf32, a > att
    t_cf, s_cf, t_att = 256 - int(hi.sum()), int(bg_hi.sum()) - 1, 256 - int(above_att.sum())
    if not (
        (hi == (code >= t_cf)).all()
        and (bg_hi == (code <= s_cf)).all()
        and (above_att == (code >= t_att)).all()
    ):
        return None
    return _BECodes(
        all_conflict=bool(np.float32(0) > cf32),
        z=z,
        t_cf=t_cf,
        s_cf=s_cf,
        t_att=t_att,
        t_bg=_u8_first_at_least(bg),
        v_table=v_table.astype(np.uint8),
        v_formula=bool((_v_formula_np(code, z) == v_table).all()),
        v_cap=_v_cap(v_table),
    )


def _v_codes(s: torch.Tensor, th: _BECodes, ws: _Workspace) -> torch.Tensor:
    """V(sal) of _BECodes for every pixel: (n, N) uint8 -> (n, N) uint8 scratch.

    The background score 1 - sal / 255 (float32 arithmetic) is the float32 nearest to
    (255 - sal) / 255, except for odd sal in 65..127 and every sal in 128..254, where it is one
    float32 step below (e0 = 1: bit 7, or bits 6 and 0; checked against the table in
    _be_codes): there a class with the same code 255 - sal beats the background. So
    V = max(255 - sal - e0, z), with z from the floor; uint8 arithmetic, no lookup. Where the
    floor makes V = z from some sal K <= 191 on (fg about 0.25 and above: fg = 0.3 gives
    K = 178), the same in six passes instead of nine: 255 - v - e0(v), v = min(sal, K)
    (_v_short_np, checked against the table in _be_codes).
    """
    if th.v_cap >= 0:
        v = torch.clamp(s, max=th.v_cap, out=ws.get("v", tuple(s.shape)))
        e0 = torch.bitwise_and(v, 1, out=ws.get("e0", tuple(s.shape)))
        torch.add(v, e0, alpha=64, out=e0).bitwise_right_shift_(7)  # v + 64 <= 255: no wrap
        return v.add_(e0).bitwise_not_()  # 255 - v - e0
    if not th.v_formula:
        return torch.from_numpy(th.v_table).to(s.device)[s.long()]
    v = torch.clamp(s, max=254, out=ws.get("v", tuple(s.shape)))  # V(255) = V(254)
    e0 = torch.bitwise_right_shift(v, 6, out=ws.get("e0", tuple(s.shape)))  # bits 7, 6
    e0 += torch.bitwise_and(v, 1, out=ws.get("t0", tuple(s.shape)))  # + bit 0
    e0.add_(2).bitwise_right_shift_(2)  # 1 where >= 2: bit 7, or bits 6 and 0
    v.add_(e0).bitwise_not_()  # 255 - sal - e0 (sal + e0 <= 255)
    return v.clamp_min_(th.z) if th.z > 0 else v


def _full_range_pairs(lo, hi):
    """(P,) bool: maps whose raw values are their _BECodes codes: min 0 and max 255, or constant.
    lo, hi: (P,) each map's min and max, torch tensors or numpy arrays (the same operators)."""
    return ((lo == 0) & (hi == 255)) | (lo == hi)


class _BEPass(NamedTuple):
    """What the uint8 BE pass leaves for the images that list a class (scratch, (na, N) each)."""

    label: torch.Tensor  # uint8: the winning class's label, 0 where the background wins or conf
    win: torch.Tensor  # uint8 0/1: a class wins (§3.4) and no conflict (§3.3)
    conf: torch.Tensor | None  # uint8 0/1: two or more channels above conflict (§3.3)
    cause: torch.Tensor  # uint8 0/1: sal >= bg or a listed a_c > att (§3.5)
    cam_at: torch.Tensor | None  # uint8: the CAM of the winning class (where win), if asked


def _be_pass(
    s: torch.Tensor,
    oa: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    ws: _Workspace,
    cam: torch.Tensor | None = None,
    att: bool = True,
) -> _BEPass:
    """BE (docs/method.md §3) on the uint8 code path, for the na sorted images that list a class.

    s: (na, N) uint8 sorted saliency; oa: (P, N) uint8 slot-major raw OA-CAMs whose maps
    span 0..255 or are 0 (constant maps zeroed), clamped here in place; cam: (P, N) raw CAMs
    to carry the winning class's CAM value along (for POM), or None. att=False leaves the
    att cause out of cause (the caller adds it).

    One uint8 pass per slot keeps the highest class code m1 (a tie keeps the earlier, lower
    class), its label and the second highest m2; then the background competes with its code
    V(sal), and the conflict and ignore rules are thresholds on codes. No lookup, no sort.
    """
    na, N = s.shape
    kmax, z = len(lay.rows), th.z
    conflicts = th.t_cf <= 255  # a class can score above conflict
    att_raw = 0 < th.t_att <= z  # att below the floor: needs the raw codes (rare)
    shape = (na, N)
    m2 = lab = raw = cam_at = None
    lab0 = lay.lab[lay.block(0)]  # (na, 1) label of slot 0
    small = bool(lay.lab.numel()) and int(lay.lab.max()) < 128  # label values below 128
    m1 = oa[lay.block(0)]  # (na, N), updated in place: block 0 is not read again
    if att_raw:
        raw = m1.clone()
    if z > 0:
        m1.clamp_min_(z)  # §3.2: every code that scores 0 after the floor ties at z
    if cam is not None:
        cam_at = ws.get("cam_at", shape)
        n1 = lay.rows[1] if kmax > 1 else 0  # rows below n1 are written with slot 1 below
        cam_at[n1:].copy_(cam[lay.block(0)][n1:])
    for j in range(1, kmax):
        nj, blk = lay.rows[j], lay.block(j)
        e = oa[blk]  # (nj, N) raw codes of slot j
        if att_raw:
            torch.maximum(raw[:nj], e, out=raw[:nj])
        if z > 0:
            e.clamp_min_(z)
        m1p = m1[:nj]
        gt = torch.gt(e, m1p, out=ws.get("gt", (nj, N)))  # 0/1 uint8 (see _ge01)
        if conflicts:
            if m2 is None:
                m2 = ws.get("m2", shape).zero_()  # one class only: no second
                torch.minimum(m1p, e, out=m2[:nj])
            else:
                m2p = m2[:nj]
                torch.maximum(m2p, torch.minimum(m1p, e, out=ws.get("t0", (nj, N))), out=m2p)
        torch.maximum(m1p, e, out=m1p)
        # the label of the best: += (label of slot j - label) where slot j wins (wraps: exact)
        if lab is None:  # slot 1 over slot 0: lab0 + gt * (lab1 - lab0), lab1 > lab0
            lab = ws.get("lab", shape)  # rows nj.. (one class): lab0, written with win below
            _rows_affine(gt, lay.lab[blk] - lab0[:nj], lab0[:nj], lab[:nj], small)
        else:
            labp = lab[:nj]
            labp.addcmul_(torch.sub(lay.lab[blk], labp, out=ws.get("t0", (nj, N))), gt)
        if cam is not None:
            cp = cam_at[:nj]
            if j == 1:  # cam of slot 0, or of slot 1 where it wins
                c0 = cam[lay.block(0)][:nj]
                torch.addcmul(c0, torch.sub(cam[blk], c0, out=ws.get("t0", (nj, N))), gt, out=cp)
            else:
                cp.addcmul_(torch.sub(cam[blk], cp, out=ws.get("t0", (nj, N))), gt)
    # §3.3: two or more channels above conflict: the second highest of the classes' codes
    # and the background's (>= t_cf where it is above conflict, below t_cf elsewhere)
    conf = None
    if conflicts and th.s_cf >= 0:
        # the background is above conflict exactly where sal <= s_cf; the second highest of
        # all codes is then m1 (m2 <= m1), elsewhere m2: max(m1 * [sal <= s_cf], m2)
        b = torch.le(s, th.s_cf, out=ws.get("conf", shape)).mul_(m1)  # 0/1 uint8, then m1
        conf = b if m2 is None else torch.maximum(b, m2, out=b)
    elif conflicts and m2 is not None:
        conf = m2
    if conf is not None:
        _ge01(conf, th.t_cf, conf)  # 0/1
    # §3.4: argmax with the background (channel 0 wins ties): a class wins where m1 > V(sal);
    # where two channels conflict the label is 255 whoever wins (§3.3), so win is 0 there:
    # label then holds exactly the class pixels (what POM counts)
    win = torch.gt(m1, _v_codes(s, th, ws), out=ws.get("win", shape))  # (na, N) 0/1
    if conf is not None:
        torch.gt(win, conf, out=win)
    n1 = lay.rows[1] if kmax > 1 else 0  # images with two classes or more: lab holds theirs
    label = lab if lab is not None else ws.get("lab", shape)
    if n1:
        label[:n1].mul_(win[:n1])
    if n1 < na:  # one class: lab0 where it wins
        _rows_affine(win[n1:], lab0[n1:], None, label[n1:], small)
    # §3.5: the ignore causes of background pixels: sal >= bg, or a listed a_c > att
    cause = _ge01(s, th.t_bg, ws.get("cause", shape))
    if not att:
        pass
    elif th.t_att <= 0:
        cause.fill_(1)
    elif th.t_att <= 255:
        cause |= _ge01(raw if att_raw else m1, th.t_att, ws.get("t0", shape))
    return _BEPass(label, win, conf, cause, cam_at)


def _be_assemble(p: _BEPass, cause: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The label from a BE pass: 255 where two channels conflict, the class where one wins,
    255 where a cause hits a background pixel, else 0. cause: (na, N) 0/1 (p.cause, or with
    POM's potential objects added). Written to out and returned."""
    ignore = torch.gt(cause, p.win, out=cause)  # 0/1 uint8, in place
    if p.conf is not None:
        ignore |= p.conf
    # label | 255 * ignore as one add: the label is 0 wherever ignore is 1 (no class wins
    # there: win is 0, conflicts included)
    return torch.add(p.label, ignore, alpha=IGNORE, out=out)


def _background_extraction_lut(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float,
    conflict: float,
    bg: float,
    att: float,
) -> torch.Tensor:
    """BE for any maps: 256-entry tables per map and int64 argmax keys (the general path).

    Used for the images with a listed OA-CAM that neither spans 0..255 nor is constant (and
    for thresholds _be_codes cannot turn into codes). Arguments and result as
    background_extraction; images are processed in groups that list the same number k of
    classes: (n, k, HW) maps.
    """
    B, C, H, W = oa_cam.shape
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


# ----------------------------------------------------------------------------------------
# The batched stages
# ----------------------------------------------------------------------------------------


def _be_rows(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    lay: _Layout,
    ws: _Workspace,
    th: _BECodes | None,
    thresholds: tuple[float, float, float, float],
) -> torch.Tensor:
    """BE of a checked batch as (B, H * W) uint8 rows in the layout's order (scratch "out").

    The uint8 code path for the images whose listed OA-CAMs all span 0..255 or are constant
    (the maps stage writes them max-normalised to 255), the table path for the others (and
    for all when th is None); the two agree wherever both apply.
    """
    B, C, H, W = oa_cam.shape
    N = H * W
    slow = None
    if th is not None and N and lay.na:
        oa = _pair_rows(oa_cam, lay, ws, "oa")  # (P, N) raw OA-CAMs, slot-major
        lo, hi = oa.amin(dim=1), oa.amax(dim=1)  # (P,)
        flat = ((lo == hi) & (lo != 0)).nonzero()[:, 0]
        if flat.numel():
            oa.index_fill_(0, flat, 0)  # a constant map normalises to 0 everywhere: code 0
        slow = torch.unique(lay.r[~_full_range_pairs(lo, hi)])  # sorted images, table path
        if 2 * slow.numel() > B:
            th = None
    if th is None or N == 0:
        label = _background_extraction_lut(sal, oa_cam, present, *thresholds)
        return _sorted_rows(label, lay, ws, "out") if lay.order is not None else label.reshape(B, N)
    out = ws.get("out", (B, N))
    s = _sorted_rows(sal, lay, ws, "sal")
    na = lay.na
    if th.all_conflict and C >= 1:
        return out.fill_(IGNORE)  # §3.3: every channel is above conflict
    if na:
        p = _be_pass(s[:na], oa, lay, th, ws)
        _be_assemble(p, p.cause, out[:na])
    if na < B:  # images without a listed class: background, 255 where sal >= bg (§3.5)
        _ge01(s[na:], th.t_bg, out[na:]).mul_(IGNORE)
    if slow is not None and slow.numel():
        orig = slow if lay.order is None else lay.order[slow]
        part = _background_extraction_lut(
            sal[orig], oa_cam[orig], present[orig], *thresholds
        ).reshape(slow.numel(), N)
        out[slow] = part
    return out


def background_extraction(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = 0.3,
    conflict: float = 0.9,
    bg: float = 32,
    att: float = 0.8,
) -> torch.Tensor:
    """Background extraction (docs/method.md §3) for a batch; no 1% rule (see initial_labels).

    sal: (B, H, W) uint8 saliency, 0..255.
    oa_cam: (B, C, H, W) uint8 raw OA-CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool, the image-level labels.
    Returns (B, H, W) uint8 labels on the inputs' device, equal to background_extraction_ref.

    Maps that span 0..255 (or are constant) take the uint8 code path (_BECodes, _be_pass): a
    few uint8 passes per listed class. Other maps take the table path
    (_background_extraction_lut). Only the listed (image, class) maps are read.
    """
    _check_u8_tensor("sal", sal, 3)
    _check_u8_tensor("oa_cam", oa_cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("sal", sal, B, H, W)
    _check_present(present, B, C)
    lay, ws = _layout(present), _workspace(sal.device)
    th = _be_codes(float(fg), float(conflict), float(bg), float(att))
    label = _be_rows(sal, oa_cam, present, lay, ws, th, (fg, conflict, bg, att))
    return _result(label, lay, H, W)


# ----------------------------------------------------------------------------------------
# POM: thresholds from per-raw-value histograms
# ----------------------------------------------------------------------------------------


def _pattern_row(N: int, m: int, device: torch.device) -> torch.Tensor:
    """(1, N) uint8: 0, 1, .., m - 1, 0, 1, .. (m in 1..256)."""
    return (torch.arange(N, device=device) % m).to(torch.uint8)[None]


# ----------------------------------------------------------------------------------------
# Segments: skipping pixels that cannot matter
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _segment_len(N: int) -> int:
    """The length L of the segments an image of N pixels is cut into (a divisor of N, 16..64
    pixels, as many factors of 2 as possible, then the shortest), or N if there is none.

    Shorter segments skip more saliency-free pixels but cost more per-row work: at 96 x 96,
    16 px measured about 2% faster than 32 and 8 px 4% slower than 16 (`nsrom bench labels`).
    """
    cands = [L for L in range(16, 65) if N % L == 0]
    if not cands:
        return N
    return max(cands, key=lambda L: (min(L & -L, 8), -L))


def _segments_any(x: torch.Tensor) -> torch.Tensor:
    """(R, L) uint8 -> (R,) bool: the rows with a non-zero byte.

    Through wide-int views: words of up to 8 bytes -> bool, and the bools of a row (2, 4 or
    8 of them) as one int -> bool; torch's reductions over short rows are twenty times slower.
    """
    R, L = x.shape
    x = x.contiguous()
    w = min(L & -L, 8)  # bytes per word: a power of 2 dividing L
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    y = x.view(ints[w]).bool()  # (R, L / w)
    while y.shape[1] > 1:
        n = y.shape[1]
        if n in ints:
            return y.view(ints[n]).view(R).bool()
        h = n // 2  # a halving step, for word counts that are not a power of 2
        z = y[:, :h] | y[:, h : 2 * h]
        if n % 2:
            z[:, :1] |= y[:, 2 * h :]
        y = z
    return y[:, 0]


def _take_rows(
    src: torch.Tensor, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """src[index] for (R, L) rows -> (len(index), L), into out if given, else a new tensor.

    On the CPU numpy's take with each row seen as one opaque item of L bytes (np.void): two
    to three times faster than torch's index_select on rows of a few dozen bytes, which
    copies them element by element (mode="clip" writes into out unbuffered; every index
    here is in range). index: (k,) int64, numpy or a tensor on src's device.
    """
    R, L = src.shape
    k = len(index)
    cpu = src.device.type == "cpu" and src.is_contiguous() and L > 0
    if cpu and (out is None or out.is_contiguous()):
        item = np.dtype((np.void, L * src.element_size()))
        idx = index if isinstance(index, np.ndarray) else index.numpy()
        rows = src.numpy().view(item).reshape(R)
        if out is None:
            got = np.take(rows, idx, mode="clip")  # (k,) items
            return torch.from_numpy(got.view(src.numpy().dtype).reshape(k, L))
        np.take(rows, idx, out=out.numpy().view(item).reshape(k), mode="clip")
        return out
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index).to(src.device)
    return torch.index_select(src, 0, index, out=out) if out is not None else src[index]


def _put_rows(dst: torch.Tensor, index: np.ndarray, src: torch.Tensor) -> torch.Tensor:
    """dst[index] = src for (R, L) rows (index: (k,) int64 numpy, distinct, in range; src:
    (k, L)), in place. On the CPU numpy's fancy assignment of opaque L-byte items (as in
    _take_rows); elsewhere index_copy_."""
    R, L = dst.shape
    k = len(index)
    if dst.device.type == "cpu" and dst.is_contiguous() and src.is_contiguous() and L > 0:
        item = np.dtype((np.void, L * dst.element_size()))
        dst.numpy().view(item).reshape(R)[index] = src.numpy().view(item).reshape(k)
        return dst
    return dst.index_copy_(0, torch.from_numpy(index).to(dst.device), src)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """(n,) bool -> the int64 indices of its True entries (numpy's on the CPU: ten times faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero()[:, 0]


def _chunked_bincount(bins: torch.Tensor, key: np.ndarray, n: int, per: int, nbins: int):
    """Counts of (R, L) int16 bins whose rows are sorted by key (R,) numpy int in 0..n-1 and
    offset by (key % per) * nbins: one bincount per chunk of per keys -> (n * nbins,) int64."""
    ends = np.searchsorted(key, np.arange(0, n + per, per)).tolist()
    return torch.cat(
        [
            torch.bincount(bins[r0:r1].reshape(-1), minlength=min(per, n - i) * nbins)
            for i, r0, r1 in zip(range(0, n, per), ends, ends[1:], strict=False)
        ]
    )


def _class_counts(
    g: torch.Tensor, val: torch.Tensor, img: np.ndarray, na: int, K1: int, ws: _Workspace
) -> torch.Tensor:
    """Histograms of val by (image, group): (na * K1, 256) int64, row i * K1 + q.

    g, val: (S, L) uint8 segments of images img: (S,) int64 numpy, sorted; g in 0..K1-1, 0 = no
    group. Only pieces of 8 pixels with a grouped pixel are counted (about 0.6x the pixels of
    the segments with one, on the benchmark). With longer rows (L not a multiple of 8), the
    values of group 0 are spread over its bins (xor with a position pattern): bincount slows
    down about 2x on the long runs of one bin they would form (store/load aliasing); in
    pieces of 8 pixels the runs are short, and spreading them cost more than it saved (2%
    of `nsrom bench labels`). int16 bins, one bincount per chunk of images.
    """
    S, L = g.shape
    w = 8 if L % 8 == 0 and g.is_contiguous() and val.is_contiguous() else L
    if w < L:  # pieces of 8 pixels: one int64 word each
        g, val = g.view(S * (L // w), w), val.view(S * (L // w), w)
        S, rep, L = S * (L // w), L // w, w
    else:
        rep = 1
    hit = _nonzero(_segments_any(g))
    S2 = hit.numel()
    if S2 < S:
        g = _take_rows(g, hit, ws.get("h0", (S2, L)))
        val = _take_rows(val, hit, ws.get("h1", (S2, L)))
        h = hit.cpu().numpy()
        img = img[h >> (rep.bit_length() - 1) if rep & (rep - 1) == 0 else h // rep]
    else:
        g = ws.get("h0", (S, L)).copy_(g)
        val = ws.get("h1", (S, L)).copy_(val)
        img = np.repeat(img, rep)
    per = 128 // K1  # images per bincount: bins < 2**15
    words = L == 8 and _words_ok(g, val)  # one int64 word per piece
    if not words:
        rest = torch.eq(g, 0, out=ws.get("h2", (S2, L)))  # 0/1 uint8 (see _ge01)
        val ^= rest.mul_(_pattern_row(L, 256, g.device))
    if per >= 1:
        off = (np.arange(na) % per) * K1  # (na,) each image's group offset, <= 127 - (K1 - 1)
        if words:  # per-row constants as whole words: no broadcast over short rows
            words_off = off * _lane_ones(1)  # (na,) the offset in each uint8 lane
            g.view(torch.int64).add_(torch.from_numpy(words_off[img]).to(g.device)[:, None])
        else:
            _add_rows_(g, off[img])  # <= 127
        # (g + offset) * 256 + val <= 127 * 256 + 255: int16; val widened, then one add of
        # the uint8 g (two passes instead of four)
        bins = ws.get("bins", (S2, L), torch.int16).copy_(val)
        torch.add(bins, g, alpha=256, out=bins)
        return _chunked_bincount(bins, img, na, per, K1 * 256).view(na * K1, 256)
    bins = ws.get("bins", (S2, L), torch.int32).copy_(g)  # many classes: int32, one call
    bins += torch.from_numpy((img * K1).astype(np.int32)).to(g.device)[:, None]
    bins.bitwise_left_shift_(8).bitwise_or_(val)
    return torch.bincount(bins.view(-1), minlength=na * K1 * 256).view(na * K1, 256)


# The per-pair arithmetic of §4 (medians of histograms, thresholds) works on a few hundred
# pairs at a time: numpy on the host does it in a fraction of the time of torch's small ops.


def _norm_value(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """p / (d + 1e-8) in float64, the normalised value (docs/method.md §3) of raw value min + p
    of a map with max - min = d, computed as normalize_map_ref computes it. p, d: int64."""
    return p / (d + 1e-8)


def _median_of_cum(
    cum: np.ndarray, base: np.ndarray, n: np.ndarray, lo: np.ndarray, d: np.ndarray
) -> np.ndarray:
    """numpy's median of n values whose ranks start at base in a cumulative histogram.

    cum: (P, 256) int64 cumulative counts by raw value; base, n: (P,); lo, d: (P,) each map's
    min and max - min. Returns (P,) float64: the middle value, or the mean of the two middle
    values for an even n; NaN for n == 0. (The rows laid end to end: see _median_flat.)
    """
    P = cum.shape[0]
    start = np.zeros(P, np.int64)  # the counts of the rows before each row
    np.cumsum(cum[:-1, -1], out=start[1:])
    return _median_flat((cum + start[:, None]).ravel(), start, base, n, lo, d)


def _flat_cum(counts: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rows histograms of 256 bins laid end to end and cumulated across rows (_median_flat).

    counts: (rows * 256,) or (rows, 256) int64. Returns flat: (rows * 256,) the cumulative sum
    (row r's count of raw values <= v is flat[r * 256 + v] - start[r]); start: (rows,) the
    counts of the rows before each row; total: (rows,) each row's count.
    """
    flat = np.cumsum(counts.ravel())
    row0 = np.arange(rows) * 256
    start = np.zeros(rows, np.int64)
    start[1:] = flat[row0[1:] - 1]
    return flat, start, flat[row0 + 255] - start


def _median_flat(
    flat: np.ndarray,
    start: np.ndarray,
    base: np.ndarray,
    n: np.ndarray,
    lo: np.ndarray,
    d: np.ndarray,
) -> np.ndarray:
    """_median_of_cum on P histograms of 256 bins laid end to end, cumulated across rows.

    flat: (P * 256,) int64, the cumulative sum of the (P, 256) counts raveled (so each row's
    cumulative counts are flat[row] - start, no pass to separate the rows); start: (P,) the
    counts before each row (flat at the end of the previous row). base, n, lo, d: (P,) as in
    _median_of_cum; ranks must stay below the row's total (n == 0 rows give NaN).
    """
    P = start.size
    s0 = start + base
    k = np.concatenate((s0 + (n - 1) // 2, s0 + n // 2))  # (2 P,) the two middle ranks
    # the raw value holding each rank: the first bin whose cumulative count exceeds it; one
    # searchsorted over all rows (flat is non-decreasing and every rank < its row's total)
    b = np.searchsorted(flat, k, side="right")  # (2 P,) flat positions
    first = np.arange(P) * 256 + lo  # (P,) the flat position of each row's min
    v = _norm_value(b - np.concatenate((first, first)), np.concatenate((d, d)))  # (2 P,)
    med = (v[:P] + v[P:]) / 2
    med[n == 0] = np.nan
    return med


def _first_above(lo: np.ndarray, d: np.ndarray, x: np.ndarray | float) -> np.ndarray:
    """The smallest raw value >= lo whose normalised value is strictly above x (256 if none).

    lo, d: (P,) int64 each map's min and max - min; x: (P,) float64 or a number (NaN: none).
    Returns (P,) int64. floor(x * (d + 1e-8)) is within one of the answer's p - 1; the
    candidates are then checked with the exact values (_norm_value).
    """
    # whole numbers in float64 throughout (exact), NaN carried along to the end: few numpy
    # calls (they cost more than their arithmetic on a few hundred pairs)
    dd = d + 1e-8
    x = np.asarray(x, dtype=np.float64)
    q = np.floor(x * dd)
    np.clip(q, 0, 256, out=q)
    first = q + (q / dd <= x) + ((q + 1) / dd <= x)  # _norm_value(q, d) <= x, ...
    first += lo
    np.fmin(first, 256, out=first)  # fmin: 256 where first is NaN (x NaN: none above)
    return first.astype(np.int64)


def _pom_from_counts(
    counts_in: torch.Tensor, cam: torch.Tensor, pom: float, L: int, ws: _Workspace
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """T_c (docs/method.md §4) of every pair from its class pixels' histogram.

    counts_in: (P, 256) int64 counts by raw CAM value on the pixels labelled with the pair's
    class; cam: (P, N) uint8 the pairs' raw CAMs (for the TQ branch, in segments of L). Returns
    t: (P,) float64 (NaN selects nothing) and below: (P, 1) uint8, the raw threshold: CAM > T_c
    <=> raw value > below, both on cam's device, and n_in: (P,) int64 numpy, the pair's class
    pixels. Normalisation is monotonic, so every median only needs counts by raw value.
    """
    P, N = cam.shape
    dev = cam.device
    lo_t = cam.amin(dim=1)  # (P,)
    lo = lo_t.cpu().numpy().astype(np.int64)
    d = cam.amax(dim=1).cpu().numpy().astype(np.int64) - lo
    # cumulative counts, the rows laid end to end (_flat_cum, _median_flat)
    flat, start, n_in = _flat_cum(counts_in.cpu().numpy(), P)
    # §4 MED: non-zero CAM sum on the class's pixels <=> one of them is above the map's min
    has_inside = n_in > flat[np.arange(P) * 256 + lo] - start
    t = _median_flat(flat, start, np.zeros_like(n_in), n_in, lo, d)
    rest = np.flatnonzero(~has_inside)  # (R,)
    if rest.size:
        # §4 TQ: m = median of the values > pom; T = median of the values strictly above m;
        # T = 1 if no value is above pom. Only raw values >= a (values > pom) matter: the
        # histogram skips the segments without one and spreads the smaller values over
        # the bins below a (a position pattern, see _class_counts)
        R, Q = rest.size, N // L
        lo_r, d_r = lo[rest], d[rest]
        a = _first_above(lo_r, d_r, pom)  # (R,)
        rest_t = torch.from_numpy(rest).to(dev)
        x = torch.index_select(cam, 0, rest_t, out=ws.get("tq_x", (R, N)))
        seg_pair = np.repeat(np.arange(R), Q)  # (R * Q,) numpy
        if a.min() > 0:
            a1 = torch.from_numpy(np.minimum(a - 1, 255).astype(np.uint8)).to(dev)[:, None]
            y = torch.gt(x, a1, out=ws.get("tq_y", (R, N)))  # 0/1 uint8: x >= a
            hit = _nonzero(_segments_any(y.view(R * Q, L)))
            x = _take_rows(x.view(R * Q, L), hit, ws.get("tq_y", (hit.numel(), L)))
            seg_pair = seg_pair[hit.cpu().numpy()]
            m_pat = min(int(a.min()), 256)
            if m_pat > 1:
                torch.maximum(x, _pattern_row(L, m_pat, dev), out=x)
        else:
            x = x.view(R * Q, L)
        bins = ws.get("tq_bins", tuple(x.shape), torch.int16).copy_(x)
        _add_rows_(bins, seg_pair % 128 * 256)  # <= 2**15 - 1
        h = _chunked_bincount(bins, seg_pair, R, 128, 256).cpu().numpy()  # (R * 256,)
        # counts of raw values <= v, exact for v >= a - 1 (the skipped pixels are all < a):
        # flat_r[r * 256 + v] - start_r[r], the skipped pixels counted in start_r
        flat_r, start_r, counted = _flat_cum(h, R)
        start_r -= N - counted
        r0 = np.arange(R) * 256

        def count_below(v: np.ndarray) -> np.ndarray:
            """(R,) counts of raw values < v, for v in a..256 (0 for v == 0)."""
            return np.where(v > 0, flat_r[r0 + np.maximum(v - 1, 0)] - start_r, 0)

        base = count_below(np.minimum(a, 256))
        m = _median_flat(flat_r, start_r, base, N - base, lo_r, d_r)
        base_m = count_below(_first_above(lo_r, d_r, m))
        t_tq = _median_flat(flat_r, start_r, base_m, N - base_m, lo_r, d_r)
        t[rest] = np.where(base < N, t_tq, 1.0)
    # CAM > T_c <=> raw value >= first <=> raw value > first - 1; first >= lo + 1 since
    # T_c >= 0 (or NaN: first = 256, nothing)
    below = np.clip(_first_above(lo, d, t) - 1, 0, 255).astype(np.uint8)
    return torch.from_numpy(t).to(dev), torch.from_numpy(below).to(dev)[:, None], n_in


def _listed(n_in: np.ndarray, lay: _Layout) -> torch.Tensor:
    """(na,) int64 on the layout's device: the pixels of each sorted image labelled with a
    listed class, the sum of its pairs' class pixels n_in: (P,) (the labels hold no other
    class). For the 1% rule."""
    return torch.from_numpy(_listed_np(n_in, lay)).to(lay.r.device)


def _listed_np(n_in: np.ndarray, lay: _Layout) -> np.ndarray:
    """_listed as a numpy (na,) int64 array. A weighted bincount sums in float64: exact, the
    sums being at most a few pixel counts (far below 2**53)."""
    r = lay.r.cpu().numpy()
    return np.bincount(r, weights=n_in, minlength=lay.na).astype(np.int64)


def _potential(
    cam: torch.Tensor,
    lay: _Layout,
    below: torch.Tensor,
    ws: _Workspace,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """(na, N) uint8 scratch, 1 where some listed class's CAM is above its T_c (§4), else 0;
    or'ed into acc (na, N) 0/1 if given."""
    for j in range(len(lay.rows)):
        nj, blk = lay.rows[j], lay.block(j)
        buf = ws.get("pot" if acc is None else "t0", (nj, cam.shape[1]))
        above = torch.gt(cam[blk], below[blk], out=buf)  # 0/1 uint8 (see _ge01)
        if acc is None:
            acc = above
        else:
            acc[:nj] |= above
    return acc


def _pom_counts_from_labels(
    label: torch.Tensor, cam: torch.Tensor, lay: _Layout, C: int, L: int, ws: _Workspace
) -> torch.Tensor:
    """(na * (C + 1), 256) counts of each image's raw CAM values of class c on its pixels
    labelled c + 1 (row i * (C + 1) + c + 1), for the listed classes; label: (n, N) sorted."""
    na, N = lay.na, label.shape[1]
    Q = N // L
    g = ws.get("g", (na, N)).zero_()  # the label where it is a listed class, else 0
    cam_at = ws.get("cam_at", (na, N)).zero_()  # that class's CAM value
    for j in range(len(lay.rows)):
        nj, blk = lay.rows[j], lay.block(j)
        is_j = torch.bitwise_xor(label[:nj], lay.lab[blk], out=ws.get("t0", (nj, N)))
        is_j.clamp_max_(1).bitwise_xor_(1)  # (nj, N) 0/1: labelled with slot j's class
        cam_at[:nj].addcmul_(cam[blk], is_j)
        g[:nj].addcmul_(is_j, lay.lab[blk])
    img = np.arange(na * Q) // Q
    return _class_counts(g.view(na * Q, L), cam_at.view(na * Q, L), img, na, C + 1, ws)


def pom_thresholds(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = 0.3
) -> torch.Tensor:
    """The POM thresholds T_c (docs/method.md §4) of every (image, class), as pom_threshold_ref.

    label: (B, H, W) uint8 BE labels; cam: (B, C, H, W) uint8 raw CAMs; present: (B, C) bool.
    Returns (B, C) float64; NaN where the class is absent or the TQ set is empty.
    """
    _check_u8_tensor("label", label, 3)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = cam.shape
    _check_same_hw("label", label, B, H, W)
    _check_present(present, B, C)
    out = torch.full((B, C), math.nan, dtype=torch.float64, device=cam.device)
    lay, ws, L = _layout(present), _workspace(cam.device), _segment_len(H * W)
    if lay.na and H * W:
        cam_p = _pair_rows(cam, lay, ws, "cam")  # (P, N)
        rows = _sorted_rows(label, lay, ws, "out")
        counts = _pom_counts_from_labels(rows, cam_p, lay, C, L, ws)
        counts_in = counts.index_select(0, lay.r * (C + 1) + lay.c + 1)  # (P, 256)
        out[lay.b, lay.c] = _pom_from_counts(counts_in, cam_p, pom, L, ws)[0]
    return out


def _pom_rows(
    label: torch.Tensor, cam: torch.Tensor, lay: _Layout, ws: _Workspace, pom: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """POM (docs/method.md §4) of (B, N) sorted label rows -> (new rows in scratch "out", (na,)
    count of the pixels labelled with a listed class). label may be "out" itself."""
    B, N = label.shape
    C = cam.shape[1]
    na, L = lay.na, _segment_len(N)
    out = ws.get("out", (B, N))
    if out.data_ptr() != label.data_ptr():
        out.copy_(label)
    if not (na and N):
        return out, torch.zeros(na, dtype=torch.int64, device=label.device)
    cam_p = _pair_rows(cam, lay, ws, "cam")  # (P, N)
    counts = _pom_counts_from_labels(out, cam_p, lay, C, L, ws)
    counts_in = counts.index_select(0, lay.r * (C + 1) + lay.c + 1)  # (P, 256)
    _, below, n_in = _pom_from_counts(counts_in, cam_p, pom, L, ws)
    listed = _listed(n_in, lay)
    pot = _potential(cam_p, lay, below, ws)  # (na, N) 0/1
    # §4: only pixels still labelled background become 255
    is_bg = torch.clamp(out[:na], max=1, out=ws.get("t0", (na, N)))  # 0: background
    new = torch.gt(pot, is_bg, out=pot)  # 0/1 uint8, in place
    out[:na] |= new.mul_(IGNORE)
    return out, listed


def potential_object_mining(
    label: torch.Tensor, cam: torch.Tensor, present: torch.Tensor, pom: float = 0.3
) -> torch.Tensor:
    """Potential object mining (docs/method.md §4) for a batch; no 1% rule (see pseudo_labels).

    label: (B, H, W) uint8 BE labels (background_extraction).
    cam: (B, C, H, W) uint8 raw CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool.
    Returns (B, H, W) uint8, equal to potential_object_mining_ref.

    T_c from per-raw-value histograms of the listed pairs (one bincount for the class pixels
    of a batch, numpy's median reproduced exactly, without sorting), then raw-value
    thresholds in uint8 arithmetic, one pass per slot (see _Layout).
    """
    _check_u8_tensor("label", label, 3)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = cam.shape
    _check_same_hw("label", label, B, H, W)
    _check_present(present, B, C)
    lay, ws = _layout(present), _workspace(cam.device)
    rows = _sorted_rows(label, lay, ws, "out")  # a view of label when sorted: copied first
    return _result(_pom_rows(rows, cam, lay, ws, pom)[0], lay, H, W)


def min_label_ratio_rule(label: torch.Tensor, ratio: float = 0.01) -> torch.Tensor:
    """The 1% rule for a batch: each label with fewer than ratio * H * W pixels in 1..254 -> all 255.

    label: (B, H, W) uint8. Returns (B, H, W) uint8, equal to min_label_ratio_rule_ref per image.
    """
    _check_u8_tensor("label", label, 3)
    B, H, W = label.shape
    # the 1% rule (docs/method.md): float(valid) / (H * W) < ratio, as an exact integer threshold
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


def _pseudo_fused(
    sal: torch.Tensor,
    oa: torch.Tensor,
    cam: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    pom: float,
    C: int,
    ws: _Workspace,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """BE + POM on the uint8 code path, the stages sharing their passes, segment by segment.

    sal: (n, N) uint8 saliency in the batch's order; oa, cam: (P, N) uint8 slot-major raw
    maps, the OA-CAMs all full-range or zeroed constants (both overwritten). Returns src:
    (n * Q + S, L) uint8 scratch rows: the n sorted images' labels as Q segments of L pixels
    each, right except on the S active segments, whose labels follow; seg_b: (S,) int64 numpy,
    the place of each active segment in the batch (row of sal.view(n * Q, L)); and listed:
    (na,) int64 numpy, the pixels labelled with a listed class.

    Where an image segment has saliency 0 throughout, the background beats every class
    (V(0) = 255), so the label there only depends on the highest class code m1: 255 where
    m1 reaches conflict (the background is above it too) or att, else 0, and POM's potential
    objects. The full BE pass (_be_pass) runs on the other segments only, gathered into
    (S, L) rows, and carries the winning class's CAM value along for POM's histogram.
    """
    n, N = sal.shape
    na, kmax, z = lay.na, len(lay.rows), th.z
    L = _segment_len(N)
    Q = N // L
    dev = sal.device
    sal_seg = sal.reshape(n * Q, L)
    # the index arithmetic on (S,) segment lists runs in numpy on the host: a few dozen
    # microseconds less per op than torch's on arrays of this size
    order = None if lay.order is None else lay.order.cpu().numpy()  # (n,)

    def to_dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    # the shortcut needs: the background above conflict at sal 0, no saliency cause at 0, att
    # on codes above the floor, a class code that can beat the background somewhere
    short = L < N and th.s_cf >= 0 and th.t_bg >= 1 and not 0 < th.t_att <= z and z < 255
    idx = None
    # at sal 0 the att cause and the conflict with the background need m1 >= t_att or t_cf;
    # with t_att <= t_cf the first is all of it, and it is the active pixels' att cause too:
    # computed once at full size, with POM's potential objects (below)
    merged = short and th.t_att <= min(th.t_cf, 255)
    m1 = None
    if short:
        act = _segments_any(sal_seg).view(n, Q)  # segments with some saliency
        if lay.order is not None:
            act = act.index_select(0, lay.order)
        idx = _nonzero(act[:na].reshape(-1))  # (S,) active segments of the sorted images
        if idx.numel() == na * Q:
            idx = None
            # the BE pass below works on oa itself: m1 first, in its own buffer
            m1 = torch.clamp(oa[lay.block(0)], min=z, out=ws.get("m1", (na, N)))
            for j in range(1, kmax):
                torch.maximum(m1[: lay.rows[j]], oa[lay.block(j)], out=m1[: lay.rows[j]])
    # i: (S,) the active segments of the sorted images (all of them when idx is None); img:
    # their sorted image; seg_b: the same segments in the batch (same image, same place)
    i = np.arange(na * Q) if idx is None else idx.cpu().numpy()
    S = i.size
    # per image counts of active segments (i is sorted), then repeats: no (S,) division
    per_img = np.diff(np.searchsorted(i, np.arange(na + 1) * Q))  # (na,)
    img = np.repeat(np.arange(na), per_img)
    seg_b = i if order is None else i + np.repeat((order[:na] - np.arange(na)) * Q, per_img)
    s_a = _take_rows(sal_seg, seg_b, ws.get("s_a", (S, L)))
    if idx is None:
        rows = tuple(r * Q for r in lay.rows)
        oa_a, cam_a = oa.view(-1, L), cam.view(-1, L)
        lab_a = lay.lab.repeat_interleave(Q, dim=0)
    else:
        rows = tuple(np.searchsorted(i, np.asarray(lay.rows) * Q).tolist())  # of images < rows[j]
        gidx = np.concatenate([i[:rj] + lay.starts[j] * Q for j, rj in enumerate(rows)])
        pair = np.concatenate([img[:rj] + lay.starts[j] for j, rj in enumerate(rows)])
        oa_a = _take_rows(oa.view(-1, L), gidx, ws.get("oa_a", (len(gidx), L)))
        cam_a = _take_rows(cam.view(-1, L), gidx, ws.get("cam_a", (len(gidx), L)))
        lab_a = lay.lab.view(-1).index_select(0, to_dev(pair))[:, None]
        # oa is not read again: m1, the highest listed code, in place in its first block (the
        # floor z only matters for thresholds at or below z: never t_att when merged)
        m1 = oa[lay.block(0)]
        for j in range(1, kmax):
            torch.maximum(m1[: lay.rows[j]], oa[lay.block(j)], out=m1[: lay.rows[j]])
        if not merged and z > 0:
            m1.clamp_min_(z)
    empty = lab_a.new_empty(0)
    starts = tuple(sum(rows[:j]) for j in range(kmax))
    lay_a = _Layout(None, None, rows, starts, empty, empty, empty, lab_a)
    p = _be_pass(s_a, oa_a, lay_a, th, ws, cam=cam_a, att=not merged)
    # §4 on BE's label: the class pixels are those a class wins without a conflict (p.label)
    counts = _class_counts(p.label, p.cam_at, img, na, C + 1, ws)  # (na * (C + 1), 256)
    # (P, 256) each pair's rows, picked in numpy (P small rows: a fraction of torch's cost)
    rows_in = lay.r.cpu().numpy() * (C + 1) + lay.c.cpu().numpy() + 1
    counts_in = torch.from_numpy(counts.cpu().numpy()[rows_in])
    _, below, n_in = _pom_from_counts(counts_in, cam, pom, L, ws)
    listed = _listed_np(n_in, lay)
    acc = _ge01(m1, th.t_att, ws.get("pot", (na, N))) if merged else None
    pot = _potential(cam, lay, below, ws, acc)  # (na, N) 0/1: a potential object
    # the rows: the sorted images' segments, then the gathered ones
    src = ws.get("src", (n * Q + S, L))
    full = src[: n * Q].view(n, N)
    if merged:  # §3.3 / §3.5 at sal 0: 255 where m1 >= t_att; §4: or a potential object
        torch.mul(pot, IGNORE, out=full[:na])
    elif short:  # §3.3 / §3.5 at sal 0: 255 where m1 >= t_cf or t_att, or a potential object
        _ge01(m1, min(th.t_cf, th.t_att), full[:na]).bitwise_or_(pot).mul_(IGNORE)
    if na < n:  # images without a listed class: background, 255 where sal >= bg
        rest = sal[na:] if lay.order is None else sal.index_select(0, lay.order[na:])
        _ge01(rest, th.t_bg, full[na:]).mul_(IGNORE)
    pot_a = pot.view(-1, L)
    if idx is not None:
        pot_a = _take_rows(pot_a, idx, ws.get("t0", (S, L)))
    p.cause.bitwise_or_(pot_a)  # §4: potential objects become 255 as §3.5's causes do
    _be_assemble(p, p.cause, src[n * Q :])
    return src, seg_b, listed


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

    On the uint8 code path (all listed OA-CAMs full-range or constant) the stages share
    their passes (_pseudo_fused); the 1% rule counts from POM's histogram (BE labels only
    listed classes, POM keeps them). Otherwise BE, POM and the rule run one after the other.
    """
    _check_u8_tensor("sal", sal, 3)
    _check_u8_tensor("oa_cam", oa_cam, 4)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("sal", sal, B, H, W)
    _check_same_hw("cam", cam, B, H, W)
    _check_present(present, B, C)
    _check_present(present, B, cam.shape[1])
    N = H * W
    lay, ws = _layout(present), _workspace(sal.device)
    na = lay.na
    th = _be_codes(float(fg), float(conflict), float(bg), float(att))
    fused = th is not None and N > 0 and na > 0 and not (th.all_conflict and C >= 1)
    if fused:
        oa = _pair_rows(oa_cam, lay, ws, "oa")  # (P, N) raw OA-CAMs, slot-major
        # (P,) each map's min and max; the checks on them in numpy (a few hundred pairs:
        # numpy's small ops cost a fraction of torch's)
        lo, hi = oa.amin(dim=1).cpu().numpy(), oa.amax(dim=1).cpu().numpy()
        fused = bool(_full_range_pairs(lo, hi).all())
    n_min = _min_valid_count(N, ratio)
    if fused:
        flat = np.flatnonzero((lo == hi) & (lo != 0))
        if flat.size:  # a constant map normalises to 0 everywhere: code 0
            oa.index_fill_(0, torch.from_numpy(flat).to(oa.device), 0)
        cam_p = _pair_rows(cam, lay, ws, "cam")  # (P, N)
        src, seg_b, listed = _pseudo_fused(sal.reshape(B, N), oa, cam_p, lay, th, pom, C, ws)
        # the images in the batch's order as whole rows (N-byte items: copied at memcpy
        # speed), then the S active segments put in their places: two to three times
        # faster than taking all B * Q segments one by one
        Q = N // _segment_len(N)
        full = src[: B * Q].view(B, N)
        if lay.inverse is None:
            out = full.clone()  # a new tensor
        else:
            out = _take_rows(full, lay.inverse.cpu().numpy())
        _put_rows(out.view(B * Q, -1), seg_b, src[B * Q :])
        # the 1% rule (sorted images; those without a listed class have no class pixel)
        few = np.flatnonzero(listed < n_min)
        if n_min > 0 and na < B:
            few = np.concatenate((few, np.arange(na, B)))
        if few.size:
            if lay.order is not None:
                few = lay.order.cpu().numpy()[few]
            out.index_fill_(0, torch.from_numpy(few).to(out.device), IGNORE)
        return out.view(B, H, W)
    # the stages one after the other (the table path for some images)
    label = _be_rows(sal, oa_cam, present, lay, ws, th, (fg, conflict, bg, att))
    out, listed = _pom_rows(label, cam, lay, ws, pom)
    valid = torch.zeros(B, dtype=torch.int64, device=out.device)
    valid[:na] = listed
    few = (valid < n_min).nonzero()[:, 0]  # the 1% rule: pixels in 1..254 are listed classes
    if few.numel():
        out.index_fill_(0, few, IGNORE)
    return _result(out, lay, H, W)


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
    """Non-salient region masking (docs/method.md §6) for a batch, 1% rule included.

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
