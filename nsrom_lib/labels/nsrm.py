"""Non-salient region masking (NSRM, docs/method.md §6) and its box dilation.

The ``*_ref`` functions are the specification, one image in numpy; the batched torch
functions compute the same masks and labels, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from nsrom_lib.labels._common import (
    IGNORE,
    _check_present,
    _check_same_hw,
    _check_u8_array,
    _check_u8_tensor,
    is_class,
    min_label_ratio_rule,
    min_label_ratio_rule_ref,
)
from nsrom_lib.params import NSRM, RULE

# ----------------------------------------------------------------------------------------
# One image, numpy (the specification)
# ----------------------------------------------------------------------------------------


def box_dilation_ref(mask: np.ndarray, kernel: int = NSRM.kernel) -> np.ndarray:
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
    kernel: int = NSRM.kernel,
    ratio: float = RULE.ratio,
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
# A batch, torch
# ----------------------------------------------------------------------------------------


def _window_any(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """y[i] = any(x[i : i + k]) along dim, for bool (or 0/1 uint8) x; the output is k - 1 shorter.

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


def box_dilation(mask: torch.Tensor, kernel: int = NSRM.kernel) -> torch.Tensor:
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
    # a box is separable: any over k rows, then any over k columns
    rows = _window_any(padded, k, dim=1)  # (B, H, W + k - 1)
    return _window_any(rows, k, dim=2)  # (B, H, W)


def non_salient_region_masking(
    pred: torch.Tensor,
    pseudo: torch.Tensor,
    sal: torch.Tensor,
    present: torch.Tensor,
    kernel: int = NSRM.kernel,
    ratio: float = RULE.ratio,
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

    # §6.1: expand: where P = 0 and L is a class (1..254), take L
    # (x.bool() is x != 0: a cast, which torch runs faster on a CPU than a comparison)
    expanded = torch.where(~pred.bool() & is_class(pseudo), pseudo, pred)  # (B, H, W)
    # §6.2: object mask = (expanded P != 0) or (sal != 0)
    mask = expanded.bool() | sal.bool()
    # §6.3: dilate with a k x k box, anchor (k // 2, k // 2)
    grown = box_dilation(mask, kernel)
    # §6.4: outside the dilated mask -> 255
    masked = torch.where(grown, expanded, IGNORE)
    # §6: images with one class keep the prediction; complex images (>= 2 classes) are masked
    is_complex = present.sum(dim=1) >= 2  # (B,)
    out = torch.where(is_complex[:, None, None], masked, pred)
    # §6.5: the 1% rule
    return min_label_ratio_rule(out, ratio)
