"""Tests for nsrom_lib.labels: each rule of docs/method.md §3, §4, §6 by itself on hand-made
inputs, then exact parity of the batched torch functions with the per-image references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nsrom_lib import labels as L

# Thresholds that switch off the saliency / attention ignore rules of BE (§3.5), so that a
# test sees one rule at a time.
NO_IGNORE = {"bg": 256, "att": 1.0}


def u8(x) -> np.ndarray:
    return np.asarray(x, dtype=np.uint8)


def be_both(sal, maps: dict[int, np.ndarray], num_classes: int, **kw) -> np.ndarray:
    """BE by the reference and by the batched version (asserted equal); returns the label."""
    sal = u8(sal)
    ref = L.background_extraction_ref(sal, maps, list(maps), num_classes, **kw)
    oa = np.zeros((1, num_classes, *sal.shape), dtype=np.uint8)
    present = np.zeros((1, num_classes), dtype=bool)
    for c, m in maps.items():
        oa[0, c], present[0, c] = m, True
    got = L.background_extraction(
        torch.from_numpy(sal)[None], torch.from_numpy(oa), torch.from_numpy(present), **kw
    )
    np.testing.assert_array_equal(got[0].numpy(), ref)
    return ref


def pom_both(label, cams: dict[int, np.ndarray], num_classes: int, **kw) -> np.ndarray:
    """POM by the reference and by the batched version (asserted equal); returns the label."""
    label = u8(label)
    ref = L.potential_object_mining_ref(label, cams, list(cams), **kw)
    cam = np.zeros((1, num_classes, *label.shape), dtype=np.uint8)
    present = np.zeros((1, num_classes), dtype=bool)
    for c, m in cams.items():
        cam[0, c], present[0, c] = m, True
    got = L.potential_object_mining(
        torch.from_numpy(label)[None], torch.from_numpy(cam), torch.from_numpy(present), **kw
    )
    np.testing.assert_array_equal(got[0].numpy(), ref)
    return ref


def nsrm_both(pred, pseudo, sal, classes, num_classes: int = 3, **kw) -> np.ndarray:
    """NSRM by the reference and by the batched version (asserted equal); returns the label."""
    pred, pseudo, sal = u8(pred), u8(pseudo), u8(sal)
    ref = L.non_salient_region_masking_ref(pred, pseudo, sal, classes, **kw)
    present = torch.zeros(1, num_classes, dtype=torch.bool)
    present[0, list(classes)] = True
    t = [torch.from_numpy(x)[None] for x in (pred, pseudo, sal)]
    got = L.non_salient_region_masking(*t, present, **kw)
    np.testing.assert_array_equal(got[0].numpy(), ref)
    return ref


# ---------------------------------------------------------------------------------------
# Normalisation and the background score
# ---------------------------------------------------------------------------------------


def test_normalize_matches_formula_and_constant_map_is_zero():
    m = u8([[3, 5], [13, 3]])
    expected = (m.astype(np.float64) - 3) / (10 + 1e-8)
    np.testing.assert_array_equal(L.normalize_map_ref(m), expected)
    np.testing.assert_array_equal(L.normalize_maps(torch.from_numpy(m)[None])[0].numpy(), expected)
    flat = np.full((2, 3), 7, np.uint8)
    assert not L.normalize_map_ref(flat).any()
    assert not L.normalize_maps(torch.from_numpy(flat)[None]).any()


def test_background_scores_are_numpy_float32():
    from nsrom_lib.labels.be import background_scores

    sal = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = 1 - sal.astype(np.float32) / 255
    assert expected.dtype == np.float32
    fg_off = torch.tensor(-1.0)  # no floor
    got = background_scores(torch.from_numpy(sal), fg_off).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------
# Background extraction (§3)
# ---------------------------------------------------------------------------------------


def test_be_floor_at_fg_compares_float32_stack():
    # sal 200: background score 0.216 < fg -> floored to 0 everywhere
    # class map 0, 2, 3, 10 (range 10): 0, 0.2 (floored), 3/(10+1e-8) -> float32(0.3) == fg
    # (kept: "below fg" is strict, compared in float32), ~1
    label = be_both([[200, 200, 200, 200]], {0: u8([[0, 2, 3, 10]])}, 2, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 0, 1, 1]])
    assert 3 / (10 + 1e-8) < 0.3  # in float64 the value would have been floored


def test_be_floor_applies_to_background_channel_too():
    # sal 200: bg score 0.216 and class score 0.25 are both below fg -> all zero -> background
    label = be_both([[255, 200, 255]], {0: u8([[0, 25, 100]])}, 1, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 0, 1]])
    # the floor comes before the conflict count: with fg 0.95 the background score 0.941
    # (sal 15) is floored and no longer conflicts with the class score ~1 (else 255)
    label = be_both([[255, 15]], {0: u8([[0, 100]])}, 1, fg=0.95, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 1]])
    label = be_both([[255, 15]], {0: u8([[0, 100]])}, 1, fg=0.9, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 255]])


def test_be_conflict_two_classes_and_background_counts():
    # px0: two classes ~1 -> 255; px1: background 1.0 (sal 0) and a class ~1 -> 255;
    # px2: one class ~1 -> class; px3: 9/10 == float32(0.9) is not above conflict -> argmax
    # (tie between the two classes -> the lower one); px4: all zero -> background
    sal = [[255, 0, 255, 255, 255]]
    a0 = u8([[10, 10, 10, 9, 0]])
    a1 = u8([[10, 0, 0, 9, 0]])
    label = be_both(sal, {0: a0, 1: a1}, 2, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[255, 255, 1, 1, 0]])
    assert np.float32(9 / (10 + 1e-8)) == np.float32(0.9)


def test_be_argmax_ties_go_to_lowest_channel():
    # classes 1 and 3 share the same map: equal scores everywhere -> the lower class id wins
    m = u8([[0, 5, 10]])
    label = be_both([[255, 255, 255]], {3: m, 1: m.copy()}, 4, conflict=1.0, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 2, 2]])
    # different float64 values that are the same float32 number tie as well
    a, b = u8([[0, 1, 3]]), u8([[0, 2, 6]])
    assert np.float32(1 / (3 + 1e-8)) == np.float32(2 / (6 + 1e-8))
    label = be_both([[255, 255, 255]], {2: a, 0: b}, 3, fg=0.0, conflict=1.0, **NO_IGNORE)
    np.testing.assert_array_equal(label, [[0, 1, 1]])


def test_be_all_zero_pixel_is_background():
    label = be_both(
        [[255, 255]], {0: u8([[0, 10]]), 1: u8([[0, 10]])}, 2, conflict=1.0, **NO_IGNORE
    )
    np.testing.assert_array_equal(label, [[0, 1]])


def test_be_saliency_ignore_is_greater_or_equal():
    # background pixels: sal 31 -> stays 0, sal 32 -> 255 (bg = 32); a class pixel is untouched
    label = be_both([[31, 32, 40]], {0: u8([[0, 0, 10]])}, 1)
    np.testing.assert_array_equal(label, [[0, 255, 1]])


def test_be_attention_ignore_is_strict_and_float64():
    # sal 0 -> background score 1 wins everywhere (no conflict below 0.9)
    # 81/100 > 0.8 -> 255; 80/(100+1e-8) < 0.8 in float64 (its float32 cast is not) -> stays 0
    m = u8([[0, 80, 81, 100]])
    label = be_both([[0, 0, 0, 0]], {0: m}, 1, conflict=1.0)
    np.testing.assert_array_equal(label, [[0, 0, 255, 255]])
    assert np.float64(np.float32(80 / (100 + 1e-8))) > 0.8


def test_be_ignores_absent_classes_and_constant_maps():
    sal = u8([[255, 255, 255]])
    oa = np.zeros((1, 3, 1, 3), np.uint8)
    oa[0, 0] = [[0, 5, 10]]
    oa[0, 1] = [[10, 0, 10]]  # class 1 is absent: its map must not count
    oa[0, 2] = 9  # constant map of a listed class: all zero
    present = torch.tensor([[True, False, True]])
    got = L.background_extraction(
        torch.from_numpy(sal)[None], torch.from_numpy(oa), present, **NO_IGNORE
    )
    np.testing.assert_array_equal(got[0].numpy(), [[0, 1, 1]])
    ref = L.background_extraction_ref(sal, {0: oa[0, 0], 2: oa[0, 2]}, [0, 2], 3, **NO_IGNORE)
    np.testing.assert_array_equal(ref, [[0, 1, 1]])


def test_be_reference_accepts_stack_in_class_order():
    sal = u8([[255, 255, 255]])
    a, b = u8([[0, 10, 0]]), u8([[0, 0, 10]])
    by_dict = L.background_extraction_ref(sal, {4: a, 1: b}, [4, 1], 5, **NO_IGNORE)
    by_stack = L.background_extraction_ref(sal, np.stack([a, b]), [4, 1], 5, **NO_IGNORE)
    np.testing.assert_array_equal(by_dict, by_stack)
    np.testing.assert_array_equal(by_dict, [[0, 5, 2]])


# ---------------------------------------------------------------------------------------
# Potential object mining (§4)
# ---------------------------------------------------------------------------------------


def test_pom_median_even_count_is_mean_of_middle_values():
    # class pixels (label 1) have CAM 10, 20, 40, 100 of range 100 -> T = (0.2 + 0.4) / 2 ~ 0.3
    cam = u8([[0, 10, 20, 40, 100, 29, 31, 20]])
    label = u8([[0, 1, 1, 1, 1, 0, 0, 0]])
    t = L.pom_threshold_ref(L.normalize_map_ref(cam), label == 1)
    assert t == (20 / (100 + 1e-8) + 40 / (100 + 1e-8)) / 2
    out = pom_both(label, {0: cam}, 1)
    # 0.29 < T stays background, 0.31 > T becomes 255 (a lower / upper median would differ)
    np.testing.assert_array_equal(out, [[0, 1, 1, 1, 1, 0, 255, 0]])


def test_pom_top_quartile_branch():
    # no pixel carries label 1: values > 0.3 are 0.4, 0.5, 0.6, 0.7, 1.0 -> m = 0.6;
    # values above m: 0.7, 0.9, 1.0 -> T = 0.9 (up to the 1e-8)
    cam = u8([[0, 40, 50, 60, 70, 90, 100, 20]])
    label = u8([[0, 0, 0, 0, 0, 0, 255, 2]])
    n = L.normalize_map_ref(cam)
    assert L.pom_threshold_ref(n, label == 1) == n[0, 5]
    out = pom_both(label, {0: cam}, 2)
    np.testing.assert_array_equal(out, [[0, 0, 0, 0, 0, 0, 255, 2]])
    t = L.pom_thresholds(
        torch.from_numpy(label)[None],
        torch.from_numpy(cam)[None, None].expand(1, 2, 1, 8).contiguous(),
        torch.tensor([[True, False]]),
    )
    assert t[0, 0].item() == n[0, 5] and math.isnan(t[0, 1].item())


def test_pom_class_pixels_with_zero_sum_use_top_quartile():
    # label 1 exists but only where the CAM is at its minimum (sum 0): MED is skipped
    cam = u8([[0, 0, 40, 50, 60, 100]])
    label = u8([[1, 1, 0, 0, 0, 0]])
    n = L.normalize_map_ref(cam)
    # TQ: above 0.3: 0.4, 0.5, 0.6, 1.0 -> m = 0.55 -> above m: 0.6, 1.0 -> T = 0.8
    assert L.pom_threshold_ref(n, label == 1) == (n[0, 4] + n[0, 5]) / 2
    np.testing.assert_array_equal(pom_both(label, {0: cam}, 1), [[1, 1, 0, 0, 0, 255]])


def test_pom_empty_top_set_selects_nothing():
    # values above 0.3 are all equal -> nothing strictly above their median -> NaN
    cam = u8([[0, 0, 100, 100]])
    label = u8([[0, 0, 0, 0]])
    assert math.isnan(L.pom_threshold_ref(L.normalize_map_ref(cam), label == 1))
    np.testing.assert_array_equal(pom_both(label, {0: cam}, 1), label)


def test_pom_threshold_one_branch():
    # a constant CAM (all zero after normalisation), or nothing above pom -> T = 1
    flat = np.full((1, 4), 50, np.uint8)
    assert L.pom_threshold_ref(L.normalize_map_ref(flat), np.zeros((1, 4), bool)) == 1.0
    np.testing.assert_array_equal(pom_both(u8([[0, 0, 0, 0]]), {0: flat}, 1), [[0, 0, 0, 0]])
    cam = u8([[0, 10, 50, 100]])
    assert L.pom_threshold_ref(L.normalize_map_ref(cam), np.zeros((1, 4), bool), pom=1.0) == 1.0
    np.testing.assert_array_equal(pom_both(u8([[0, 0, 0, 0]]), {0: cam}, 1, pom=1.0), [[0] * 4])


def test_pom_never_changes_class_pixels_or_ignore():
    # T_0 = median of cam0 on label 1 = (0 + 0.1) / 2; T_1 = median of cam1 on label 2 = 0.5.
    # Pixels above a threshold: only the background ones (px 6) become 255; class pixels
    # (px 0, 1, 2, 4) and the existing 255 (px 3) stay as they are
    cam0 = u8([[0, 10, 10, 100, 100, 0, 0]])
    cam1 = u8([[100, 100, 50, 100, 50, 0, 100]])
    label = u8([[1, 1, 2, 255, 2, 0, 0]])
    out = pom_both(label, {0: cam0, 1: cam1}, 2)
    np.testing.assert_array_equal(out, [[1, 1, 2, 255, 2, 0, 255]])


def test_pom_uses_threshold_of_each_class():
    # background pixel 4 is above class 1's T but not class 0's: one class is enough
    cam0 = u8([[0, 100, 100, 100, 10]])
    cam1 = u8([[0, 0, 0, 10, 100]])
    label = u8([[0, 1, 1, 2, 0]])
    out = pom_both(label, {0: cam0, 1: cam1}, 2)
    np.testing.assert_array_equal(out, [[0, 1, 1, 2, 255]])


# ---------------------------------------------------------------------------------------
# The 1% rule
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("valid, kept", [(1, False), (2, True), (3, True)])
def test_min_ratio_rule_boundary_is_strict(valid, kept):
    label = np.zeros((10, 20), np.uint8)  # 200 px: 1% = 2 px
    label.flat[:valid] = 3
    label[5, 5:9] = 255  # 255 is not valid
    ref = L.min_label_ratio_rule_ref(label)
    got = L.min_label_ratio_rule(torch.from_numpy(label)[None])[0].numpy()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(ref, label if kept else np.full_like(label, 255))


def test_min_ratio_rule_on_whole_batch_independently():
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 0, 0] = 1
    got = L.min_label_ratio_rule(torch.from_numpy(labels)).numpy()
    for i in range(3):
        np.testing.assert_array_equal(got[i], L.min_label_ratio_rule_ref(labels[i]))
    assert (got[0] == 255).all() and (got[1] == labels[1]).all()


@pytest.mark.parametrize("H, W", [(1, 1), (3, 7), (10, 10), (13, 29), (96, 96)])
def test_min_ratio_rule_matches_float_division_at_every_count(H, W):
    """Images with 0..H * W class pixels, ratios at and next to count / (H * W)."""
    N = H * W
    counts = sorted({0, 1, 2, N // 3, N // 2, N - 1, N} & set(range(N + 1)))
    labels = np.zeros((len(counts), H, W), np.uint8)
    for i, n in enumerate(counts):
        labels[i].reshape(-1)[:n] = 1 + i % 3
    ratios = {0.0, 0.01, 1.0, 1.5, 1e-9, math.nan}
    for n in counts:
        if n:
            ratios |= {n / N, float(np.nextafter(n / N, 0.0)), float(np.nextafter(n / N, 1.0))}
    for ratio in sorted(ratios):
        got = L.min_label_ratio_rule(torch.from_numpy(labels), ratio).numpy()
        for i in range(len(counts)):
            want = L.min_label_ratio_rule_ref(labels[i], ratio)
            np.testing.assert_array_equal(got[i], want, err_msg=f"ratio {ratio}")


# ---------------------------------------------------------------------------------------
# Non-salient region masking (§6)
# ---------------------------------------------------------------------------------------


def test_nsrm_single_class_keeps_prediction():
    pred = np.zeros((8, 8), np.uint8)
    pred[:4, :4] = 2
    pseudo = np.full((8, 8), 255, np.uint8)
    sal = np.zeros((8, 8), np.uint8)
    out = nsrm_both(pred, pseudo, sal, [1], kernel=1)
    np.testing.assert_array_equal(out, pred)
    # ... and then the 1% rule
    tiny = np.zeros((20, 20), np.uint8)
    tiny[0, 0] = 2
    np.testing.assert_array_equal(
        nsrm_both(tiny, pseudo[:1, :1].repeat(20, 0).repeat(20, 1), tiny * 0, [1]),
        np.full((20, 20), 255),
    )


def test_nsrm_expansion_takes_classes_only():
    pred = u8([[0, 0, 0, 1, 0, 0]])
    pseudo = u8([[2, 255, 0, 3, 0, 0]])
    # expanded P = [2, 0, 0, 1, 0, 0]: L's class 2 fills P's background, L's 255 does not,
    # P's class 1 wins over L's 3. The mask (P != 0) grown by a 3 x 3 box keeps px 0..4.
    out = nsrm_both(pred, pseudo, u8([[0] * 6]), [0, 1], kernel=3)
    np.testing.assert_array_equal(out, [[2, 0, 0, 1, 0, 255]])
    # with kernel 1 the mask is the expanded objects only
    out = nsrm_both(pred, pseudo, u8([[0] * 6]), [0, 1], kernel=1)
    np.testing.assert_array_equal(out, [[2, 255, 255, 1, 255, 255]])


def test_nsrm_saliency_mask_is_any_nonzero_byte():
    pred = u8([[1, 0, 0, 0]])
    sal = u8([[0, 1, 0, 255]])
    out = nsrm_both(pred, u8([[0, 0, 0, 0]]), sal, [0, 2], kernel=1)
    np.testing.assert_array_equal(out, [[1, 0, 255, 0]])


def test_box_dilation_even_kernel_anchor():
    mask = np.zeros((64, 64), bool)
    mask[32, 32] = True
    ref = L.box_dilation_ref(mask, 30)
    got = L.box_dilation(torch.from_numpy(mask)[None], 30)[0].numpy()
    np.testing.assert_array_equal(got, ref)
    rows, cols = np.nonzero(ref)
    # 15 px down/right, 14 px up/left
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 47, 18, 47)
    # odd kernel: symmetric
    rows, cols = np.nonzero(L.box_dilation_ref(mask, 5))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 34, 30, 34)
    assert (L.box_dilation_ref(mask, 1) == mask).all()


def test_box_dilation_matches_brute_force_definition():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 4, 7, 30):
        mask = rng.random((9, 13)) < 0.05
        a = k // 2
        brute = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask), strict=True):
            brute[max(y - (k - 1 - a), 0) : y + a + 1, max(x - (k - 1 - a), 0) : x + a + 1] = True
        np.testing.assert_array_equal(L.box_dilation_ref(mask, k), brute)
        np.testing.assert_array_equal(
            L.box_dilation(torch.from_numpy(mask)[None], k)[0].numpy(), brute
        )


def test_nsrm_even_kernel_anchor_and_border():
    H = W = 64
    pred = np.zeros((H, W), np.uint8)
    pred[32, 32] = 1
    pred[0, 0] = 2  # top-left corner: reaches 15 down/right, nothing beyond the border
    pred[H - 1, W - 1] = 3  # bottom-right corner: reaches 14 up/left
    out = nsrm_both(pred, np.zeros_like(pred), np.zeros_like(pred), [0, 1, 2], kernel=30, ratio=0.0)
    kept = out != 255
    assert kept[32 + 15, 32] and not kept[32 + 16, 32]
    assert kept[32, 32 + 15] and not kept[32, 32 + 16]
    assert kept[32 - 14, 32] and not kept[32 - 15, 32]
    assert kept[32, 32 - 14] and not kept[32, 32 - 15]
    assert kept[15, 15] and not kept[16, 0] and not kept[0, 16]
    assert kept[H - 15, W - 15] and not kept[H - 16, W - 1] and not kept[H - 1, W - 16]
    # inside the grown mask, the expanded prediction (here background 0) is kept
    assert out[40, 40] == 0 and out[32, 32] == 1


def test_nsrm_applies_min_ratio_rule_to_complex_images():
    pred = np.zeros((64, 64), np.uint8)
    pred[32, 32] = 1  # 1 px of 4096 < 1%
    out = nsrm_both(pred, np.zeros_like(pred), np.zeros_like(pred), [0, 1])
    assert (out == 255).all()


# ---------------------------------------------------------------------------------------
# Input checks and devices
# ---------------------------------------------------------------------------------------


def test_inputs_are_checked_with_clear_errors():
    sal = torch.zeros(1, 2, 2, dtype=torch.uint8)
    oa = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match="oa_cam"):
        L.background_extraction(sal, oa.float(), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="present"):
        L.background_extraction(sal, oa, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="sal"):
        L.background_extraction(sal[:, :1], oa, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="sal"):
        L.background_extraction_ref(np.zeros((2, 2)), {0: np.zeros((2, 2), np.uint8)}, [0], 3)
    with pytest.raises(ValueError, match="size"):
        L.background_extraction_ref(
            np.zeros((2, 2), np.uint8), {0: np.zeros((2, 3), np.uint8)}, [0], 3
        )
    with pytest.raises(ValueError, match="out of range"):
        L.background_extraction_ref(
            np.zeros((2, 2), np.uint8), {3: np.zeros((2, 2), np.uint8)}, [3], 3
        )
    with pytest.raises(KeyError, match="cams"):
        L.potential_object_mining_ref(np.zeros((2, 2), np.uint8), {}, [1])
    with pytest.raises(ValueError, match="kernel"):
        L.box_dilation_ref(np.zeros((2, 2), bool), 0)


def test_batch_without_listed_classes():
    # no (image, class) pair at all: BE is background / saliency ignore, POM changes nothing
    sal = torch.tensor([[[0, 40], [10, 255]]], dtype=torch.uint8)
    maps = torch.full((1, 2, 2, 2), 200, dtype=torch.uint8)
    present = torch.zeros(1, 2, dtype=torch.bool)
    be = L.background_extraction(sal, maps, present)
    np.testing.assert_array_equal(be[0].numpy(), [[0, 255], [0, 255]])
    np.testing.assert_array_equal(
        be[0].numpy(), L.background_extraction_ref(sal[0].numpy(), {}, [], 2)
    )
    assert torch.equal(L.potential_object_mining(be, maps, present), be)
    assert L.pom_thresholds(be, maps, present).isnan().all()


def test_inputs_are_not_modified():
    rng = np.random.default_rng(5)
    sal, oa, cam, present = rand_case(rng, 3, 9, 11, 4)
    t = [torch.from_numpy(x.copy()) for x in (sal, oa, cam, present)]
    out = L.pseudo_labels(*t)
    L.non_salient_region_masking(out, out.clone(), t[0], t[3], kernel=4)
    for x, y in zip(t, (sal, oa, cam, present), strict=True):
        np.testing.assert_array_equal(x.numpy(), y)
    classes = [int(c) for c in np.nonzero(present[0])[0]]
    sal0, oa0 = sal[0].copy(), {c: oa[0, c].copy() for c in classes}
    label = L.background_extraction_ref(sal0, oa0, classes, 4)
    label0 = label.copy()
    L.potential_object_mining_ref(label, {c: cam[0, c] for c in classes}, classes)
    L.min_label_ratio_rule_ref(label, 0.9)
    np.testing.assert_array_equal(label, label0)
    np.testing.assert_array_equal(sal0, sal[0])


def test_outputs_stay_on_input_device_and_dtype():
    sal = torch.zeros(2, 3, 4, dtype=torch.uint8)
    maps = torch.randint(0, 256, (2, 3, 3, 4), dtype=torch.uint8)
    present = torch.tensor([[True, False, True], [False, True, False]])
    out = L.pseudo_labels(sal, maps, maps, present)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4) and out.device == sal.device
    out = L.non_salient_region_masking(out, out, sal, present)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4)


# ---------------------------------------------------------------------------------------
# Randomised parity: batched torch == per-image numpy reference, exactly
# ---------------------------------------------------------------------------------------

EDGE_LEVELS = [
    (0, 3, 10),
    (0, 9, 10),
    (0, 80, 81, 100),
    (0, 1, 2, 3),
    (0, 2, 6),
    (0, 255),
    (0, 30, 100),
]
SAL_LEVELS = [0, 1, 31, 32, 33, 178, 179, 180, 200, 230, 255]


def rand_map(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A raw 8-bit map: quantised to few levels (ties, equal medians), edge levels, constant,
    a smooth blob, or full noise."""
    kind = rng.integers(6)
    if kind == 0:
        return np.full((H, W), rng.integers(256), np.uint8)
    if kind == 1:
        levels = np.asarray(EDGE_LEVELS[rng.integers(len(EDGE_LEVELS))])
        return levels[rng.integers(len(levels), size=(H, W))].astype(np.uint8)
    if kind == 2:
        levels = rng.choice(256, size=rng.integers(2, 6), replace=False)
        return levels[rng.integers(len(levels), size=(H, W))].astype(np.uint8)
    if kind == 3:
        yy, xx = np.mgrid[:H, :W]
        cy, cx, s = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(1, max(H, W))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        step = int(rng.integers(1, 9))  # quantised to multiples of step
        return (np.round(blob * rng.integers(1, 256) / step) * step).clip(0, 255).astype(np.uint8)
    if kind == 4:
        # a tiny object: everything at one value but a few pixels
        m = np.full((H, W), rng.integers(0, 60), np.uint8)
        n = rng.integers(1, 4)
        m[rng.integers(H, size=n), rng.integers(W, size=n)] = rng.integers(60, 256, size=n)
        return m
    return rng.integers(0, 256, size=(H, W), dtype=np.uint8)


def rand_sal(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:
        return np.asarray(SAL_LEVELS, np.uint8)[rng.integers(len(SAL_LEVELS), size=(H, W))]
    if kind == 1:
        sal = np.zeros((H, W), np.uint8)
        y0, x0 = rng.integers(H), rng.integers(W)
        sal[y0 : y0 + rng.integers(1, H + 1), x0 : x0 + rng.integers(1, W + 1)] = rng.choice(
            [255, 200, 31]
        )
        return sal
    return rng.integers(0, 256, size=(H, W), dtype=np.uint8)


def rand_case(rng: np.random.Generator, B: int, H: int, W: int, C: int):
    sal = np.stack([rand_sal(rng, H, W) for _ in range(B)])
    oa = np.stack([[rand_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    cam = np.stack([[rand_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    present = np.zeros((B, C), bool)
    for b in range(B):
        k = rng.integers(1, min(3, C) + 1) if rng.random() > 0.05 else 0
        present[b, rng.choice(C, size=k, replace=False)] = True
        if rng.random() < 0.2:  # two classes sharing a map: ties
            c0, c1 = rng.choice(C, size=2, replace=False)
            oa[b, c1] = oa[b, c0]
            present[b, [c0, c1]] = True
    return sal, oa, cam, present


SIZES = [(1, 1), (1, 5), (4, 1), (3, 3), (7, 9), (10, 10), (16, 23), (31, 17), (40, 50), (12, 40)]


def random_thresholds(rng: np.random.Generator) -> dict:
    if rng.random() < 0.6:
        return {}
    return {
        "fg": float(rng.choice([0.3, 0.2, 0.5, 0.0])),
        "conflict": float(rng.choice([0.9, 0.6, 0.3])),
        "bg": int(rng.choice([32, 1, 128, 256])),
        "att": float(rng.choice([0.8, 0.5, 0.95])),
    }


N_BE_CASES, N_NSRM_CASES = 60, 40  # about 270 + 180 images


def case_shape(rng: np.random.Generator, seed: int) -> tuple[int, int, int, int]:
    """(B, C, H, W) of a random case: the first draws of its generator."""
    H, W = SIZES[seed % len(SIZES)]
    B, C = int(rng.integers(1, 9)), int(rng.integers(2, 6))
    return B, C, H, W


@pytest.mark.parametrize("seed", range(N_BE_CASES))
def test_be_pom_parity_random(seed):
    rng = np.random.default_rng(seed)
    B, C, H, W = case_shape(rng, seed)
    sal, oa, cam, present = rand_case(rng, B, H, W, C)
    thr = random_thresholds(rng)
    pom = float(rng.choice([0.3, 0.3, 0.1, 0.6]))
    ratio = float(rng.choice([0.01, 0.01, 0.0, 0.2]))
    t = [torch.from_numpy(x) for x in (sal, oa, cam, present)]

    be = L.background_extraction(t[0], t[1], t[3], **thr).numpy()
    init = L.initial_labels(t[0], t[1], t[3], **thr, ratio=ratio).numpy()
    pseudo = L.pseudo_labels(t[0], t[1], t[2], t[3], **thr, pom=pom, ratio=ratio).numpy()
    # POM on a random label as well (class pixels anywhere, including 255 and absent classes)
    rand_label = rng.choice(np.array([0, 0, 0, 255, *range(1, C + 1)], np.uint8), size=(B, H, W))
    pom_rand = L.potential_object_mining(torch.from_numpy(rand_label), t[2], t[3], pom).numpy()
    thr_rand = L.pom_thresholds(torch.from_numpy(rand_label), t[2], t[3], pom).numpy()

    for b in range(B):
        classes = [int(c) for c in np.nonzero(present[b])[0]]
        oa_b = {c: oa[b, c] for c in classes}
        cam_b = {c: cam[b, c] for c in classes}
        ref_be = L.background_extraction_ref(sal[b], oa_b, classes, C, **thr)
        np.testing.assert_array_equal(be[b], ref_be)
        np.testing.assert_array_equal(
            init[b], L.initial_label_ref(sal[b], oa_b, classes, C, **thr, ratio=ratio)
        )
        np.testing.assert_array_equal(
            pseudo[b],
            L.pseudo_label_ref(sal[b], oa_b, cam_b, classes, C, **thr, pom=pom, ratio=ratio),
        )
        np.testing.assert_array_equal(
            pom_rand[b], L.potential_object_mining_ref(rand_label[b], cam_b, classes, pom)
        )
        for c in range(C):
            expected = (
                L.pom_threshold_ref(L.normalize_map_ref(cam[b, c]), rand_label[b] == c + 1, pom)
                if present[b, c]
                else math.nan
            )
            np.testing.assert_array_equal(thr_rand[b, c], expected)


@pytest.mark.parametrize("seed", range(N_NSRM_CASES))
def test_nsrm_parity_random(seed):
    rng = np.random.default_rng(1000 + seed)
    B, C, H, W = case_shape(rng, seed)
    kernel = int([1, 30, 2, 3, 4, 5, 7, 30, 11, 16, 29, 31][seed % 12])
    ratio = float(rng.choice([0.01, 0.0, 0.05]))
    present = np.zeros((B, C), bool)
    for b in range(B):
        present[b, rng.choice(C, size=rng.integers(1, min(3, C) + 1), replace=False)] = True
    # predictions: mostly background with a few blocks; pseudo labels with 255s; sparse saliency
    pred = np.zeros((B, H, W), np.uint8)
    for b in range(B):
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(H), rng.integers(W)
            pred[b, y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = rng.integers(1, C + 1)
    pseudo = rng.choice(
        np.array([0] * 12 + [255] * 3 + list(range(1, C + 1)), np.uint8), size=(B, H, W)
    )
    pseudo[rng.random((B, H, W)) < 0.7] = 0
    sal = np.where(rng.random((B, H, W)) < 0.01, rng.integers(1, 256, size=(B, H, W)), 0).astype(
        np.uint8
    )
    got = L.non_salient_region_masking(
        *(torch.from_numpy(x) for x in (pred, pseudo, sal)),
        torch.from_numpy(present),
        kernel,
        ratio,
    ).numpy()
    for b in range(B):
        classes = [int(c) for c in np.nonzero(present[b])[0]]
        ref = L.non_salient_region_masking_ref(pred[b], pseudo[b], sal[b], classes, kernel, ratio)
        np.testing.assert_array_equal(got[b], ref)


def test_parity_covers_enough_images():
    """The random parity tests above check at least 200 images each (guards the budget)."""
    be = sum(case_shape(np.random.default_rng(s), s)[0] for s in range(N_BE_CASES))
    nsrm = sum(case_shape(np.random.default_rng(1000 + s), s)[0] for s in range(N_NSRM_CASES))
    assert be >= 200 and nsrm >= 150, (be, nsrm)


# ---------------------------------------------------------------------------------------
# Batches of mixed class counts, extreme thresholds, thread control
# ---------------------------------------------------------------------------------------


def _assert_pseudo_parity(sal, oa, cam, present, **kw):
    C = present.shape[1]
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (sal, oa, cam, present)]
    be_kw = {k: v for k, v in kw.items() if k in ("fg", "conflict", "bg", "att")}
    be = L.background_extraction(t[0], t[1], t[3], **be_kw).numpy()
    pseudo = L.pseudo_labels(t[0], t[1], t[2], t[3], **kw).numpy()
    for b in range(len(sal)):
        cl = [int(c) for c in np.nonzero(present[b])[0]]
        np.testing.assert_array_equal(
            be[b], L.background_extraction_ref(sal[b], oa[b, cl], cl, C, **be_kw)
        )
        np.testing.assert_array_equal(
            pseudo[b], L.pseudo_label_ref(sal[b], oa[b, cl], cam[b, cl], cl, C, **kw)
        )


@pytest.mark.parametrize(
    "thr",
    [
        dict(conflict=-0.5),
        dict(conflict=0.0, fg=0.0),
        dict(fg=-0.1, conflict=1.0, att=-1.0),
        dict(fg=1.0, bg=0, att=0.0),
        dict(bg=0.5, att=1.0, pom=-0.2),
        dict(bg=255.5, pom=1.0),
        dict(bg=float("nan"), pom=0.0, ratio=1.0),
    ],
)
def test_be_pom_parity_extreme_thresholds(thr):
    rng = np.random.default_rng(7)
    sal, oa, cam, present = rand_case(rng, 6, 9, 11, 4)
    _assert_pseudo_parity(sal, oa, cam, present, **thr)


def test_be_pom_parity_many_groups_and_classes():
    """Images listing 0..C classes in one batch (one group per count), C = 8."""
    rng = np.random.default_rng(11)
    B, C, H, W = 12, 8, 13, 10
    sal, oa, cam, _ = rand_case(rng, B, H, W, C)
    present = np.zeros((B, C), bool)
    for b in range(B):
        present[b, rng.choice(C, size=b % (C + 1), replace=False)] = True
    _assert_pseudo_parity(sal, oa, cam, present)
    _assert_pseudo_parity(sal, oa, cam, present, fg=0.1, conflict=0.5, pom=0.2)


def _box_scenes(rng, B, C, H, W, max_classes, max_side):
    """(B, H, W) uint8 GT masks of 1..max_classes random boxes (sides 4..max_side - 1) per image,
    each of its own class, and the (B, C) bool list of the classes each image holds."""
    mask = np.zeros((B, H, W), np.uint8)
    present = np.zeros((B, C), bool)
    for b in range(B):
        for c in rng.choice(C, size=rng.integers(1, max_classes + 1), replace=False):
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
            mask[b, y : y + rng.integers(4, max_side), x : x + rng.integers(4, max_side)] = c + 1
            present[b, c] = True
    return mask, present


def test_parity_on_gt_derived_maps():
    """Smooth maps of the size and kind the benchmark uses (blurred GT objects)."""
    from nsrom_lib.bench import gt_derived_maps

    rng = np.random.default_rng(3)
    mask, present = _box_scenes(rng, 10, 5, 48, 40, max_classes=3, max_side=20)
    oa, cam = gt_derived_maps(mask, present)
    sal = np.where(mask > 0, 220, 0).astype(np.uint8)
    _assert_pseudo_parity(sal, oa, cam, present)


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with L.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with L.torch_threads(None):
        assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------------------
# Maps that span 0..255 or are constant, as the maps stage writes them
# ---------------------------------------------------------------------------------------

# saliency values around the float32 steps of the background score 1 - sal / 255
SAL_EDGE = [0, 1, 25, 26, 31, 32, 63, 64, 65, 66, 67, 126, 127, 128, 129, 178, 179, 253, 254, 255]


def full_range_map(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A raw map with min 0 and max 255 (as the maps stage writes them), or a constant map."""
    if rng.random() < 0.1:
        return np.full((H, W), rng.integers(256), np.uint8)
    m = rand_map(rng, H, W)
    flat = m.reshape(-1)
    if flat.size == 1:
        return np.full((H, W), rng.choice([0, 255]), np.uint8)
    i, j = rng.choice(flat.size, size=2, replace=False)
    flat[i], flat[j] = 0, 255
    if rng.random() < 0.3:  # saturated blobs: long runs of 255 and of 0
        flat[rng.random(flat.size) < 0.3] = rng.choice([0, 255])
        flat[i], flat[j] = 0, 255
    return m


def full_range_case(rng, B, H, W, C, kmax=3, mixed=0.0):
    """Like rand_case, with full-range maps (a share `mixed` of images keep rand_map's maps)
    and saliency that is 0 over large areas."""
    sal = np.zeros((B, H, W), np.uint8)
    for b in range(B):
        kind = rng.integers(4)
        if kind == 0:
            sal[b] = np.asarray(SAL_EDGE, np.uint8)[rng.integers(len(SAL_EDGE), size=(H, W))]
        elif kind == 1:
            sal[b] = rand_sal(rng, H, W)
        elif kind == 2:  # a salient box, 0 elsewhere
            y0, x0 = rng.integers(H), rng.integers(W)
            y1, x1 = y0 + rng.integers(1, H + 1), x0 + rng.integers(1, W + 1)
            box = sal[b, y0:y1, x0:x1]
            box[:] = rng.integers(0, 256, size=box.shape)
    oa = np.stack([[full_range_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    cam = np.stack([[full_range_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    present = np.zeros((B, C), bool)
    for b in range(B):
        k = int(rng.integers(0, min(kmax, C) + 1)) if rng.random() > 0.05 else 0
        present[b, rng.choice(C, size=k, replace=False)] = True
        if k >= 2 and rng.random() < 0.2:  # two classes sharing a map: ties
            c0, c1 = rng.choice(np.flatnonzero(present[b]), size=2, replace=False)
            oa[b, c1] = oa[b, c0]
        if rng.random() < mixed:
            oa[b] = np.stack([rand_map(rng, H, W) for _ in range(C)])
    return sal, oa, cam, present


def _assert_all_stages(sal, oa, cam, present, **kw):
    """BE, initial, pseudo labels, POM on BE's labels and T_c: batched == reference."""
    C = present.shape[1]
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (sal, oa, cam, present)]
    be_kw = {k: v for k, v in kw.items() if k in ("fg", "conflict", "bg", "att")}
    pom = kw.get("pom", 0.3)
    be = L.background_extraction(t[0], t[1], t[3], **be_kw)
    pseudo = L.pseudo_labels(t[0], t[1], t[2], t[3], **kw).numpy()
    pomd = L.potential_object_mining(be, t[2], t[3], pom).numpy()
    thr = L.pom_thresholds(be, t[2], t[3], pom).numpy()
    be = be.numpy()
    for b in range(len(sal)):
        cl = [int(c) for c in np.nonzero(present[b])[0]]
        ref_be = L.background_extraction_ref(sal[b], oa[b, cl], cl, C, **be_kw)
        np.testing.assert_array_equal(be[b], ref_be, err_msg=f"BE, image {b}")
        np.testing.assert_array_equal(
            pseudo[b],
            L.pseudo_label_ref(sal[b], oa[b, cl], cam[b, cl], cl, C, **kw),
            err_msg=f"pseudo, image {b}",
        )
        np.testing.assert_array_equal(
            pomd[b], L.potential_object_mining_ref(ref_be, cam[b, cl], cl, pom), err_msg=f"POM {b}"
        )
        for c in cl:
            t_ref = L.pom_threshold_ref(L.normalize_map_ref(cam[b, c]), ref_be == c + 1, pom)
            np.testing.assert_array_equal(thr[b, c], t_ref)


# More random parity cases of the batched pseudo labels: test_labels_fast_paths.py,
# test_pseudo_labels_parity_random.


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_full_range_each_class_count(k):
    """Every image lists k classes (k = 0: no pair at all; k = 1: no argmax between classes)."""
    rng = np.random.default_rng(70 + k)
    B, H, W, C = 5, 32, 48, 6
    sal, oa, cam, _ = full_range_case(rng, B, H, W, C)
    present = np.zeros((B, C), bool)
    for b in range(B):
        present[b, rng.choice(C, size=k, replace=False)] = True
    _assert_all_stages(sal, oa, cam, present)
    _assert_all_stages(sal, oa, cam, present, fg=0.1, conflict=0.5, att=0.95, pom=0.2)


@pytest.mark.parametrize(
    "thr",
    [
        dict(conflict=-0.5),
        dict(conflict=0.0, fg=0.0),
        dict(fg=-0.1, conflict=1.0, att=-1.0),
        dict(fg=1.0, bg=0, att=0.0),
        dict(fg=0.5, att=0.2),  # att below the floor: the raw codes
        dict(att=0.95, conflict=0.6),  # att above conflict: no merged att cause
        dict(conflict=1.5, bg=1),  # the background never conflicts
        dict(bg=0.5, att=1.0, pom=-0.2),
        dict(bg=255.5, pom=1.0),
        dict(fg=float("nan"), conflict=float("nan"), att=float("nan"), pom=float("nan")),
        dict(bg=float("nan"), pom=0.0, ratio=1.0),
    ],
)
def test_full_range_parity_extreme_thresholds(thr):
    rng = np.random.default_rng(17)
    sal, oa, cam, present = full_range_case(rng, 6, 16, 24, 4)
    _assert_all_stages(sal, oa, cam, present, **thr)


def test_full_range_mixed_with_other_maps():
    """Batches where some images have maps that do not span 0..255 (any min and max)."""
    for seed, mixed in ((1, 0.3), (2, 0.7), (3, 1.0)):
        rng = np.random.default_rng(seed)
        sal, oa, cam, present = full_range_case(rng, 9, 24, 32, 5, mixed=mixed)
        _assert_all_stages(sal, oa, cam, present)


def test_full_range_many_classes():
    """Label values above 127 and 200 classes."""
    rng = np.random.default_rng(9)
    B, H, W, C = 4, 16, 16, 200
    sal, _, _, _ = full_range_case(rng, B, H, W, 1)
    oa = np.stack([[full_range_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    cam = np.stack([[full_range_map(rng, H, W) for _ in range(C)] for _ in range(B)])
    present = np.zeros((B, C), bool)
    for b in range(B):
        present[b, rng.choice(np.arange(120, C), size=b % 4, replace=False)] = True
    _assert_all_stages(sal, oa, cam, present)


def test_full_range_gt_derived_maps_in_batches():
    """The benchmark's kind of inputs, batches in arbitrary and sorted class-count order."""
    from nsrom_lib.bench import gt_derived_maps

    rng = np.random.default_rng(4)
    mask, present = _box_scenes(rng, 24, 6, 64, 64, max_classes=4, max_side=30)
    oa, cam = gt_derived_maps(mask, present)
    sal = np.where(mask > 0, rng.integers(8, 256, size=mask.shape), 0).astype(np.uint8)
    _assert_all_stages(sal, oa, cam, present)
    order = np.argsort(-present.sum(axis=1), kind="stable")
    _assert_all_stages(sal[order], oa[order], cam[order], present[order])


def test_results_do_not_share_memory():
    """Results are new tensors: later calls leave them alone, in and outside inference mode."""
    rng = np.random.default_rng(8)
    sal, oa, cam, present = (torch.from_numpy(x) for x in full_range_case(rng, 5, 16, 16, 3))
    with torch.inference_mode():
        first = L.pseudo_labels(sal, oa, cam, present)
        be = L.background_extraction(sal, oa, present)
    kept, kept_be = first.clone(), be.clone()
    other = full_range_case(np.random.default_rng(9), 5, 16, 16, 3)
    L.pseudo_labels(*(torch.from_numpy(x) for x in other))
    L.potential_object_mining(be, cam, present)
    assert torch.equal(first, kept) and torch.equal(be, kept_be)
    assert torch.equal(L.pseudo_labels(sal, oa, cam, present), kept)


def test_empty_batch_and_non_contiguous_inputs():
    sal = torch.zeros(0, 4, 5, dtype=torch.uint8)
    maps = torch.zeros(0, 3, 4, 5, dtype=torch.uint8)
    present = torch.zeros(0, 3, dtype=torch.bool)
    assert L.pseudo_labels(sal, maps, maps, present).shape == (0, 4, 5)
    assert L.background_extraction(sal, maps, present).shape == (0, 4, 5)
    assert L.potential_object_mining(sal, maps, present).shape == (0, 4, 5)
    assert L.pom_thresholds(sal, maps, present).shape == (0, 3)
    rng = np.random.default_rng(0)
    sal, oa, cam, present = full_range_case(rng, 4, 16, 8, 3)
    t = [torch.from_numpy(x) for x in (sal, oa, cam, present)]
    got = L.pseudo_labels(t[0].transpose(1, 2).contiguous().transpose(1, 2), *t[1:]).numpy()
    for b in range(4):
        cl = [int(c) for c in np.nonzero(present[b])[0]]
        ref = L.pseudo_label_ref(sal[b], oa[b, cl], cam[b, cl], cl, 3)
        np.testing.assert_array_equal(got[b], ref)
