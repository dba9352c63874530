"""Background extraction (BE, docs/method.md §3) and the initial labels (BE + the 1% rule).

``background_extraction_ref`` is the specification, one image in numpy;
``background_extraction`` computes the same labels, bit for bit, for a batch in torch.
"""

from __future__ import annotations

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
    at_least,
    first_raw_above,
    min_label_ratio_rule,
    min_label_ratio_rule_ref,
    normalize_map_ref,
    value_table,
)
from nsrom_lib.params import BE, RULE

# ----------------------------------------------------------------------------------------
# One image, numpy (the specification)
# ----------------------------------------------------------------------------------------


def background_extraction_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
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


def initial_label_ref(
    sal: np.ndarray,
    oa_cams: MapsLike,
    classes: Sequence[int],
    num_classes: int,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    ratio: float = RULE.ratio,
) -> np.ndarray:
    """The initial label of one image: BE then the 1% rule. Arguments as background_extraction_ref."""
    label = background_extraction_ref(sal, oa_cams, classes, num_classes, fg, conflict, bg, att)
    return min_label_ratio_rule_ref(label, ratio)


# ----------------------------------------------------------------------------------------
# A batch, torch
# ----------------------------------------------------------------------------------------


def background_scores(sal: torch.Tensor, fg32: torch.Tensor) -> torch.Tensor:
    """The background channel of §3.1-§3.2 for every pixel: (B, N) uint8 -> (B, N) float32.

    1 - sal / 255 in float32, then 0 below fg, exactly as the reference's float32 stack: the
    256 possible scores are computed once with a tensor divisor (torch on a GPU turns
    x / number into x * (1 / number), which can be one bit off) and looked up.
    """
    v = torch.arange(256, dtype=torch.float32, device=sal.device)
    # §3.1: channel 0 = 1 - sal / 255 (float32 arithmetic)
    table = 1 - v / torch.full_like(v, 255)  # (256,)
    # §3.2: every score below fg becomes 0
    table = torch.where(table < fg32, 0.0, table)
    return table[sal.long()]


def background_extraction(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
) -> torch.Tensor:
    """Background extraction (docs/method.md §3) for a batch; no 1% rule (see initial_labels).

    sal: (B, H, W) uint8 saliency, 0..255.
    oa_cam: (B, C, H, W) uint8 raw OA-CAMs of all C classes; entries of absent classes are ignored.
    present: (B, C) bool, the image-level labels.
    Returns (B, H, W) uint8 labels on the inputs' device, equal to background_extraction_ref.

    Only the P listed (image, class) pairs are read. A map's normalised value takes one of
    256 values (value_table), so every per-pixel score is a lookup in a (P, 256) table.
    """
    _check_u8_tensor("sal", sal, 3)
    _check_u8_tensor("oa_cam", oa_cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("sal", sal, B, H, W)
    _check_present(present, B, C)
    N, dev = H * W, sal.device
    # the reference compares its float32 scores with fg and conflict as float32
    fg32 = torch.tensor(fg, dtype=torch.float32, device=dev)
    conflict32 = torch.tensor(conflict, dtype=torch.float32, device=dev)

    # the listed (image, class) pairs, by image then class: image b[p] lists class c[p]
    b, c = present.nonzero(as_tuple=True)  # (P,), (P,)
    if N == 0:  # no pixel: nothing to label
        return torch.zeros((B, H, W), dtype=torch.uint8, device=dev)
    oa = oa_cam[b, c].reshape(-1, N)  # (P, N) raw OA-CAMs
    a = value_table(oa)  # (P, 256) float64: a_c of each raw value
    # §3.1: channel c+1 = a_c cast to float32; §3.2: every score below fg becomes 0
    score_of = a.float()
    score_of = torch.where(score_of < fg32, 0.0, score_of)  # (P, 256)
    raw = oa.long()  # (P, N) int64: the raw values as indices
    score = score_of.gather(1, raw)  # (P, N) float32
    bg_score = background_scores(sal.reshape(B, N), fg32)  # (B, N) float32

    # §3.4: argmax over the channels, ties to the lowest. Among each image's classes: the
    # best score, then the lowest class that reaches it. Unlisted classes score 0: they never
    # beat the background, which comes first and scores >= 0.
    pairs = b[:, None].expand(-1, N)  # (P, N): the image of each pair's pixels
    best = score.new_zeros((B, N)).scatter_reduce_(0, pairs, score, "amax")  # (B, N)
    reaches = torch.where(score == best[b], (c + 1).to(torch.uint8)[:, None], IGNORE)  # (P, N)
    first = torch.full((B, N), IGNORE, dtype=torch.uint8, device=dev)
    first.scatter_reduce_(0, pairs, reaches, "amin")  # (B, N) the lowest class label
    # the class wins where it beats the background (the background wins ties)
    label = torch.where(best > bg_score, first, 0).to(torch.uint8)  # (B, N)

    # §3.3: two or more channels above conflict -> 255; the background channel counts, and
    # so do the unlisted channels (score 0) when conflict is below 0
    n_high = (bg_score > conflict32).int()  # (B, N)
    n_high.index_add_(0, b, (score > conflict32).int())
    unlisted = C - present.sum(dim=1, keepdim=True)  # (B, 1)
    n_high += unlisted * (0 > conflict32)
    label.masked_fill_(n_high >= 2, IGNORE)

    # §3.5: a background pixel with sal >= bg or some listed a_c > att (float64) -> 255;
    # a_c > att  <=>  raw value >= first_raw_above(a, att)
    above_att = (raw >= first_raw_above(a, att)).int()  # (P, N)
    high_att = torch.zeros((B, N), dtype=torch.int32, device=dev).index_add_(0, b, above_att)
    cause = at_least(sal.reshape(B, N), bg) | (high_att > 0)
    label.masked_fill_((label == 0) & cause, IGNORE)
    return label.reshape(B, H, W)


def initial_labels(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    ratio: float = RULE.ratio,
) -> torch.Tensor:
    """Initial labels: BE then the 1% rule. Arguments as background_extraction; (B, H, W) uint8."""
    label = background_extraction(sal, oa_cam, present, fg, conflict, bg, att)
    return min_label_ratio_rule(label, ratio)
