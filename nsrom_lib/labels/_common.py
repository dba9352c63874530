"""What every label step shares: the label values, input checks, map normalisation and the
1% rule (docs/method.md §3 and "Where the official code differs from the paper's text")."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from nsrom_lib.params import RULE

#: The ignore label value; 0 is the background, c + 1 the foreground class c.
IGNORE = 255

#: Per-image maps of the listed classes: {class id: (H, W) uint8} or a (K, H, W) stack.
MapsLike = Mapping[int, np.ndarray] | np.ndarray | Sequence[np.ndarray]


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


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------


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
# Normalisation (docs/method.md §3)
# ----------------------------------------------------------------------------------------


def normalize_map_ref(m: np.ndarray) -> np.ndarray:
    """Min-max normalise one 8-bit map: (v - min) / (max - min + 1e-8), in float64.

    m: (H, W) uint8, raw 0..255. Returns (H, W) float64 in [0, 1); a constant map gives zeros.
    """
    m = _check_u8_array("m", m, 2)
    # docs/method.md §3: a_c = (v - min) / (max - min + 1e-8), float64
    return (m - m.min()) / (m.max() - m.min() + 1e-8)


def normalize_maps(m: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation in float64, as normalize_map_ref, for a batch of maps.

    m: (B, H, W) uint8, raw 0..255. Returns (B, H, W) float64 in [0, 1).
    """
    _check_u8_tensor("m", m, 3)
    lo = m.amin(dim=(1, 2), keepdim=True).double()  # (B, 1, 1)
    hi = m.amax(dim=(1, 2), keepdim=True).double()  # (B, 1, 1)
    # docs/method.md §3: (v - min) / (max - min + 1e-8). The divisor is a tensor: torch on a
    # GPU turns x / number into x * (1 / number), which can be one bit off
    return (m.double() - lo) / (hi - lo + 1e-8)


def value_table(maps: torch.Tensor) -> torch.Tensor:
    """The normalised value of every raw value 0..255 of each map: (P, N) uint8 -> (P, 256) float64.

    A map holds raw values only, so its normalised map (normalize_map_ref) takes at most 256
    values: entry v of row p is the value at the pixels of map p whose raw value is v.
    Entries below the map's minimum are negative and match no pixel. Within a map the value
    increases with the raw value, so "value > x" is "raw value >= first_raw_above(...)".
    """
    lo = maps.amin(dim=1, keepdim=True).double()  # (P, 1)
    hi = maps.amax(dim=1, keepdim=True).double()  # (P, 1)
    v = torch.arange(256, dtype=torch.float64, device=maps.device)  # (256,)
    # docs/method.md §3: (v - min) / (max - min + 1e-8), a tensor divisor (see normalize_maps)
    return (v - lo) / (hi - lo + 1e-8)  # (P, 256)


def first_raw_above(values: torch.Tensor, x: float | torch.Tensor) -> torch.Tensor:
    """The smallest raw value whose entry of `values` is strictly above x: (P, 1) int64, 256 if none.

    values: (P, 256) rows that never decrease (value_table); x: a number or a (P,) tensor
    (NaN: nothing is above it). Since a row never decreases, the raw values above x are a
    suffix v..255, and v = 256 - its length: value > x  <=>  raw >= v.
    """
    x = x[:, None] if isinstance(x, torch.Tensor) else x
    return 256 - (values > x).sum(dim=1, keepdim=True)  # (P, 1)


# ----------------------------------------------------------------------------------------
# The 1% rule
# ----------------------------------------------------------------------------------------


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


def min_label_ratio_rule_ref(label: np.ndarray, ratio: float = RULE.ratio) -> np.ndarray:
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


def is_class(label: torch.Tensor) -> torch.Tensor:
    """label in 1..254 (a class: neither background 0 nor ignore 255), as a bool tensor.

    The same as (label >= 1) & (label <= 254), written as clamp-and-compare: on a CPU torch
    runs these two tensor-to-tensor operations several times faster than comparisons with a
    number.
    """
    return label.clamp(1, 254) == label


def min_label_ratio_rule(label: torch.Tensor, ratio: float = RULE.ratio) -> torch.Tensor:
    """The 1% rule for a batch: each label with fewer than ratio * H * W pixels in 1..254 -> all 255.

    label: (B, H, W) uint8. Returns (B, H, W) uint8, equal to min_label_ratio_rule_ref per image.
    """
    _check_u8_tensor("label", label, 3)
    B, H, W = label.shape
    # pixels with a class, 1..254, per image
    valid = is_class(label).flatten(1).sum(dim=1, dtype=torch.int32)  # (B,)
    # the 1% rule: valid / (H * W) < ratio, as the equivalent integer test valid < n_min
    too_few = valid < _min_valid_count(H * W, ratio)  # (B,)
    return torch.where(too_few[:, None, None], IGNORE, label)


def at_least(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """x >= threshold as numpy compares a uint8 array with a Python float: a bool tensor.

    For integer x the test is x >= ceil(threshold); a NaN threshold holds nowhere.
    """
    if math.isnan(threshold) or threshold > 255:
        return torch.zeros_like(x, dtype=torch.bool)
    return x >= max(math.ceil(threshold), 0)
