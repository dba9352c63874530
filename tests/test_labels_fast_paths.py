"""The opt-in fast path (nsrom_lib.labels._fast): the same labels as the readable version.

``_fast.pseudo_labels`` takes shortcuts whose results must stay bit for bit those of
``pseudo_labels`` and of the ``*_ref`` functions: row gathers through numpy (_take_rows,
_put_rows), the six-pass background code (_v_codes with _BECodes.v_cap), histograms over
pieces of 8 pixels, medians on rows laid end to end (_median_flat) and the 1% rule counted
from the pairs (_listed_np). Randomised cases over image sizes (segments of 16, 24, 40 px
and none), 1 to 4 classes, conflicts and ties, absent classes, flat maps, tiny objects and
the 1% rule's boundary; each also checks the readable batched functions against the
references.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_labels import _assert_all_stages, full_range_case, random_thresholds

from nsrom_lib import labels as L
from nsrom_lib.labels import _fast as F


def _assert_stages_and_fast(sal, oa, cam, present, **kw):
    """The readable batched stages equal the references, and the fast path equals them."""
    _assert_all_stages(sal, oa, cam, present, **kw)
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (sal, oa, cam, present)]
    want = L.pseudo_labels(*t, **kw)
    with F.scratch_memory():
        got = F.pseudo_labels(*t, **kw)
        again = F.pseudo_labels(*t, **kw)  # the buffers of the first call, reused
    assert torch.equal(got, want) and torch.equal(again, want)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("L_", [1, 3, 8, 16, 24, 32, 40, 9216])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.bool])
def test_take_rows_matches_index_select(L_, dtype):
    rng = np.random.default_rng(L_)
    R = 300 if L_ < 9216 else 7
    src = torch.from_numpy(rng.integers(0, 200, (R, L_))).to(dtype)
    for k in (0, 1, 5, R, 3 * R):
        idx = rng.integers(0, R, size=k)
        want = src.index_select(0, torch.from_numpy(idx))
        for index in (idx, torch.from_numpy(idx)):
            assert torch.equal(F._take_rows(src, index), want)
            out = torch.empty((k, L_), dtype=dtype)
            got = F._take_rows(src, index, out)
            assert got.data_ptr() == out.data_ptr() and torch.equal(out, want)
    # non-contiguous rows: the torch fallback
    wide = torch.from_numpy(rng.integers(0, 200, (R, 2 * L_))).to(dtype)[:, ::2]
    idx = rng.integers(0, R, size=50)
    assert torch.equal(F._take_rows(wide, idx), wide[torch.from_numpy(idx)])


def test_take_rows_result_is_new_memory():
    src = torch.arange(64, dtype=torch.uint8).view(8, 8)
    got = F._take_rows(src, np.array([1, 1, 7]))
    src.zero_()
    assert got[:, 0].tolist() == [8, 8, 56]


FG_GRID = sorted(
    {float(x) for x in np.linspace(-0.2, 1.1, 131)}
    | {0.3, 0.25, 0.2509804, 0.5, 0.95, 1.0, 0.0, 0.1}
)


def test_v_codes_short_arithmetic_equals_table():
    """Whenever _be_codes picks the short arithmetic (v_cap >= 0), it equals the exact table
    for every saliency value, and so does the long one; fg = 0.3 (the default) takes it."""
    s = torch.arange(256, dtype=torch.uint8)[None]
    ws = F._Workspace(torch.device("cpu"))
    taken = 0
    for fg in FG_GRID:
        for conflict in (0.9, 0.2, 1.5):
            th = F._be_codes(fg, conflict, 32.0, 0.8)
            if th is None:
                continue
            # never below 254 - sal: the bound the saliency-free shortcut relies on
            assert (th.v_table.astype(int) >= 254 - np.arange(256)).all()
            got = F._v_codes(s, th, ws)[0].numpy()
            np.testing.assert_array_equal(got, th.v_table, err_msg=f"fg {fg}")
            if th.v_cap >= 0:
                taken += 1
                assert th.v_cap <= 191
                np.testing.assert_array_equal(F._v_short_np(np.arange(256), th.v_cap), th.v_table)
                long = F._v_codes(s, th._replace(v_cap=-1), ws)[0].numpy()
                np.testing.assert_array_equal(long, th.v_table)
    assert taken > 50
    assert F._be_codes(0.3, 0.9, 32.0, 0.8).v_cap == 178


def test_segments_any_and_word_helpers():
    rng = np.random.default_rng(1)
    for L_ in (1, 3, 16, 20, 24, 32, 40, 48, 56, 60, 64, 25, 17, 9216):
        x = torch.from_numpy((rng.random((50, L_)) < 0.02) * rng.integers(1, 256, (50, L_)))
        x = x.to(torch.uint8)
        assert torch.equal(F._segments_any(x), (x != 0).any(dim=1))
    x01 = torch.from_numpy(rng.integers(0, 2, (30, 32)).astype(np.uint8))
    d = torch.from_numpy(rng.integers(1, 100, (30, 1)).astype(np.uint8))
    base = torch.from_numpy(rng.integers(0, 27, (30, 1)).astype(np.uint8))
    out = torch.empty_like(x01)
    F._rows_affine(x01, d, base, out, small=True)
    assert torch.equal(out, base + x01 * d)
    F._rows_affine(x01, d, None, out, small=True)
    assert torch.equal(out, x01 * d)
    y = torch.from_numpy(rng.integers(0, 100, (30, 32)).astype(np.int16))
    assert torch.equal(F._add_rows_(y.clone(), base), y + base.to(torch.int16))


def test_median_flat_matches_numpy_median_with_offsets():
    """Medians of rank windows [base, base + n) of histograms laid end to end, with the
    skipped-pixel offsets of POM's TQ branch (start shifted down by the uncounted pixels)."""
    rng = np.random.default_rng(3)
    P = 300
    lo = rng.integers(0, 256, size=P)
    d = np.minimum(rng.integers(0, 256, size=P), 255 - lo)
    counts = rng.integers(0, 4, size=(P, 256)) * (rng.random((P, 256)) < 0.1)
    counts[rng.random(P) < 0.1] = 0  # empty rows
    for i in range(P):
        counts[i, : lo[i]] = 0
        counts[i, lo[i] + d[i] + 1 :] = 0
    skipped = rng.integers(0, 50, size=P)  # pixels counted below every bin (TQ)
    flat = np.cumsum(counts.ravel())
    start = np.concatenate([[0], flat[np.arange(1, P) * 256 - 1]]) - skipped
    total = counts.sum(axis=1) + skipped
    base = np.minimum(rng.integers(0, 60, size=P), total)
    base = np.maximum(base, skipped)  # ranks start at or above the skipped pixels
    base = np.minimum(base, total)
    n = total - base
    got = F._median_flat(flat, start, base, n, lo, d)
    table = np.arange(256)[None, :] / (d[:, None] + 1e-8)
    for i in range(P):
        vals = np.concatenate([np.full(skipped[i], -1), np.repeat(np.arange(256), counts[i])])
        window = vals[base[i] : base[i] + n[i]]
        ref = np.median(table[i, window - lo[i]]) if window.size else np.nan
        np.testing.assert_array_equal(got[i], ref, err_msg=f"row {i}")


def test_first_above_scalar_nan_and_extremes():
    rng = np.random.default_rng(4)
    P = 200
    lo = rng.integers(0, 256, size=P)
    d = np.minimum(rng.integers(0, 256, size=P), 255 - lo)
    table = np.arange(256)[None, :] / (d[:, None] + 1e-8)
    for x in (0.3, 0.0, -0.5, 1.0, 1e12, -1e12, math.nan, 0.2509803921568627):
        got = F._first_above(lo, d, x)
        want = [
            256 if math.isnan(x) else min(lo[i] + int((table[i] <= x).sum()), 256) for i in range(P)
        ]
        np.testing.assert_array_equal(got, want, err_msg=f"x = {x}")


# ---------------------------------------------------------------------------------------
# Parity of the whole stages
# ---------------------------------------------------------------------------------------

# Two regimes of random cases (batch sizes, classes listed and maxima inclusive):
# "segments": segments of 16 px (96 x 96, 17 x 32, 24 x 24), 24 px (6 x 20: pieces of 8 px,
#   3 per segment), 40 px (10 x 20: 5 per segment) and none (13 x 11, 1 x 1); up to 3 classes
#   listed, every even case at the default BE thresholds, 1% rule ratios up to 0.3;
# "shapes": segments of 16..64 px (9216, 96 x 40, 17 x 32) and none (prime sizes, a column,
#   1 x 1); up to 4 classes listed, random POM floors.
PARITY_REGIMES = {
    "segments": dict(
        base_seed=9100,
        cases=32,
        sizes=[(96, 96), (6, 20), (10, 20), (17, 32), (24, 24), (13, 11), (1, 1), (48, 40)],
        max_batch=(5, 13),  # images over 2000 px, smaller images
        max_listed=3,
        default_thresholds_even=True,
        pom=None,
        ratio=[0.01, 0.0, 0.05, 0.3],
    ),
    "shapes": dict(
        base_seed=5000,
        cases=24,
        sizes=[(96, 96), (17, 32), (40, 96), (13, 11), (1, 1), (7, 1), (12, 40), (31, 17)],
        max_batch=(6, 11),
        max_listed=4,
        default_thresholds_even=False,
        pom=[0.3, 0.3, 0.1, 0.6, 0.0],
        ratio=[0.01, 0.0, 0.2],
    ),
}


@pytest.mark.parametrize(
    "regime, seed", [(r, s) for r, p in PARITY_REGIMES.items() for s in range(p["cases"])]
)
def test_pseudo_labels_parity_random(regime, seed):
    p = PARITY_REGIMES[regime]
    rng = np.random.default_rng(p["base_seed"] + seed)
    H, W = p["sizes"][seed % len(p["sizes"])]
    B = int(rng.integers(1, p["max_batch"][H * W <= 2000] + 1))
    C = int(rng.integers(1, 6))
    kmax = int(rng.integers(1, p["max_listed"] + 1))
    sal, oa, cam, present = full_range_case(rng, B, H, W, C, kmax=kmax)
    kw = {} if p["default_thresholds_even"] and seed % 2 == 0 else random_thresholds(rng)
    if p["pom"]:
        kw["pom"] = float(rng.choice(p["pom"]))
    kw["ratio"] = float(rng.choice(p["ratio"]))
    _assert_stages_and_fast(sal, oa, cam, present, **kw)


def _object_scene(rng, B, H, W, C, side):
    """Images of tiny objects (side x side boxes) on saliency 0: every map is a blob on the
    object of its class (0..255), a few flat maps, classes sharing a box (conflicts, ties)."""
    sal = np.zeros((B, H, W), np.uint8)
    oa = np.zeros((B, C, H, W), np.uint8)
    cam = np.zeros((B, C, H, W), np.uint8)
    present = np.zeros((B, C), bool)
    for b in range(B):
        k = int(rng.integers(0, 4))
        cls = rng.choice(C, size=min(k, C), replace=False)
        present[b, cls] = True
        y, x = 0, 0
        for j, c in enumerate(cls):
            if not (j and rng.random() < 0.3):  # else the same box as the previous class
                y, x = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
            box = (slice(y, y + side), slice(x, x + side))
            sal[b][box] = rng.integers(1, 256, size=(side, side))
            oa[b, c][box] = rng.integers(0, 256, size=(side, side))
            cam[b, c][box] = rng.integers(0, 256, size=(side, side))
            oa[b, c, y, x], cam[b, c, y, x] = 255, 255
            if rng.random() < 0.15:  # a flat map (normalises to 0)
                oa[b, c] = rng.integers(0, 256)
            if rng.random() < 0.15:
                cam[b, c] = rng.integers(0, 256)
    return sal, oa, cam, present


@pytest.mark.parametrize("side", [1, 2, 3, 5, 9])
def test_tiny_objects_and_the_one_percent_rule(side):
    """Objects of a few pixels, with ratios around each image's count of class pixels, so
    that the 1% rule keeps or drops images right at its boundary."""
    rng = np.random.default_rng(side)
    H, W, C = 24, 40, 4
    sal, oa, cam, present = _object_scene(rng, 12, H, W, C, side)
    counts = set()
    for b in range(len(sal)):
        cl = [int(c) for c in np.nonzero(present[b])[0]]
        lab = L.pseudo_label_ref(sal[b], oa[b, cl], cam[b, cl], cl, C, ratio=0.0)
        counts.add(int(((lab > 0) & (lab < 255)).sum()))
    N = H * W
    ratios = {0.01}
    for n in counts:
        for m in (n - 1, n, n + 1):
            if m > 0:
                ratios |= {m / N, np.nextafter(m / N, 0.0), np.nextafter(m / N, 1.0)}
    for ratio in sorted(ratios):
        _assert_stages_and_fast(sal, oa, cam, present, ratio=float(ratio))


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_around_the_codes(seed):
    """fg, conflict and att at and next to code boundaries: the short background code, the
    conflict folded into the winner and the merged att cause all switch on and off."""
    rng = np.random.default_rng(40 + seed)
    sal, oa, cam, present = full_range_case(rng, 7, 16, 32, 3)
    codes = np.arange(256) / 255.0
    for _ in range(4):
        fg, conflict, att = (float(codes[rng.integers(256)]) for _ in range(3))
        fg = float(np.nextafter(fg, rng.choice([0.0, 2.0])))
        kw = dict(fg=fg, conflict=conflict, att=att, bg=float(rng.integers(0, 257)))
        kw["pom"] = float(rng.choice([0.3, codes[rng.integers(256)]]))
        _assert_stages_and_fast(sal, oa, cam, present, **kw)


def test_batches_sorted_unsorted_and_no_classes():
    """The same images in list order, by class count, and with images that list nothing."""
    rng = np.random.default_rng(77)
    sal, oa, cam, present = full_range_case(rng, 16, 32, 48, 5, kmax=3)
    present[::5] = False
    _assert_stages_and_fast(sal, oa, cam, present)
    order = np.argsort(-present.sum(axis=1), kind="stable")
    _assert_stages_and_fast(sal[order], oa[order], cam[order], present[order])


# ---------------------------------------------------------------------------------------
# The output assembly of pseudo_labels: whole image rows, then the active segments put back
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("L_", [1, 3, 8, 16, 24, 9216])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_put_rows_matches_indexing(L_, dtype):
    rng = np.random.default_rng(300 + L_)
    R = 300 if L_ < 9216 else 7
    for k in (0, 1, 5, R):
        dst = torch.from_numpy(rng.integers(0, 200, (R, L_))).to(dtype)
        src = torch.from_numpy(rng.integers(0, 200, (k, L_))).to(dtype)
        idx = rng.permutation(R)[:k]
        want = dst.clone()
        want[torch.from_numpy(idx)] = src
        got = F._put_rows(dst, idx, src)
        assert got.data_ptr() == dst.data_ptr() and torch.equal(dst, want)
    # non-contiguous rows: the torch fallback
    wide = torch.from_numpy(rng.integers(0, 200, (R, 2 * L_))).to(dtype)
    dst = wide[:, ::2]
    idx = rng.permutation(R)[:5]
    src = torch.from_numpy(rng.integers(0, 200, (5, L_))).to(dtype)
    want = dst.clone()
    want[torch.from_numpy(idx)] = src
    F._put_rows(dst, idx, src)
    assert torch.equal(dst, want)


def test_first_above_nan_entries_and_listed_counts():
    """_first_above maps NaN entries of an array x to 256 (np.fmin), the others as before;
    _listed_np equals an exact integer sum per image."""
    rng = np.random.default_rng(5)
    P = 300
    lo = rng.integers(0, 256, size=P)
    d = np.minimum(rng.integers(0, 256, size=P), 255 - lo)
    x = rng.choice([0.3, 0.0, 1.0, -1.0, math.nan, 0.5], size=P)
    got = F._first_above(lo, d, x)
    table = np.arange(256)[None, :] / (d[:, None] + 1e-8)
    want = [
        256 if math.isnan(x[i]) else min(lo[i] + int((table[i] <= x[i]).sum()), 256)
        for i in range(P)
    ]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64
    present = torch.from_numpy(rng.random((40, 6)) < 0.4)
    lay = F._layout(present)
    n_in = rng.integers(0, 96 * 96 + 1, size=lay.r.numel())
    want = np.zeros(lay.na, np.int64)
    np.add.at(want, lay.r.numpy(), n_in)
    got = F._listed_np(n_in, lay)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(8))
def test_pseudo_labels_all_none_and_some_segments_active(seed):
    """Batches whose images have saliency everywhere (every segment active), nowhere (no
    active segment) or in parts, in list order and by class count, with and without images
    that list no class: the whole rows then the active segments put back in batch order."""
    rng = np.random.default_rng(500 + seed)
    H, W = [(16, 32), (24, 24), (6, 20), (13, 11)][seed % 4]
    B, C = 9, 4
    sal, oa, cam, present = full_range_case(rng, B, H, W, C, kmax=3)
    mode = seed % 3
    for b in range(B):
        kind = mode if mode < 2 else int(rng.integers(3))
        if kind == 0:  # all active
            sal[b] = rng.integers(1, 256, size=(H, W))
        elif kind == 1:  # none active
            sal[b] = 0
    if seed >= 4:
        present[rng.integers(B)] = False
    kw = dict(ratio=float(rng.choice([0.0, 0.01, 0.2])))
    _assert_stages_and_fast(sal, oa, cam, present, **kw)
    order = np.argsort(-present.sum(axis=1), kind="stable")
    _assert_stages_and_fast(sal[order], oa[order], cam[order], present[order], **kw)


def test_pseudo_labels_result_is_new_memory():
    """The result owns its memory: a later call (same workspace) leaves it unchanged, for
    sorted batches (clone of the rows) and unsorted ones (rows taken in batch order)."""
    rng = np.random.default_rng(8)
    for sort in (False, True):
        args = full_range_case(rng, 6, 16, 32, 3, kmax=3)
        if sort:
            order = np.argsort(-args[3].sum(axis=1), kind="stable")
            args = tuple(a[order] for a in args)
        t = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
        first = F.pseudo_labels(*t)
        keep = first.clone()
        other = [
            torch.from_numpy(np.ascontiguousarray(a)) for a in full_range_case(rng, 6, 16, 32, 3)
        ]
        F.pseudo_labels(*other)
        assert torch.equal(first, keep)


def test_scratch_memory_is_kept_inside_the_block_and_freed_on_exit():
    dev = torch.device("cpu")
    assert F._workspace(dev) is not F._workspace(dev)  # outside a block: one per call
    with F.scratch_memory():
        ws = F._workspace(dev)
        with F.scratch_memory():  # nested: the same buffers
            assert F._workspace(dev) is ws
        args = full_range_case(np.random.default_rng(3), 4, 16, 32, 3)
        F.pseudo_labels(*(torch.from_numpy(a) for a in args))
        assert ws.nbytes > 0 and F._workspace(dev) is ws
    assert F._active.by_device is None  # freed
    assert F._workspace(dev) is not ws
