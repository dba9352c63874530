"""CAM normalisation and export, online attention accumulation, IAM loss (docs/method.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsrom_lib.cam import OAAccumulator, cam_to_uint8, iam_loss, normalize_cam


def test_normalize_cam_clamps_and_divides_by_the_max() -> None:
    cam = torch.tensor([[[[2.0, -1.0], [1.0, 0.5]], [[0.0, 0.0], [0.0, -3.0]]]])  # (1, 2, 2, 2)
    out = normalize_cam(cam)
    assert out.shape == cam.shape
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 0.0], [0.5, 0.25]]))
    assert (out[0, 1] == 0).all()  # an all-negative map becomes 0, not NaN


def test_cam_to_uint8_without_resize_truncates_like_the_reference() -> None:
    cam = torch.tensor([[1.0, -2.0], [0.5, 0.2501]])
    out = cam_to_uint8(cam)
    assert out.dtype == torch.uint8
    # 255, 0, 127.5 -> 127, 63.78 -> 63: truncation (np.array(a * 255, dtype=np.uint8))
    assert out.tolist() == [[255, 0], [127, 63]]


@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7), (2, 3, 5, 7)])
def test_cam_to_uint8_range_and_shape(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    cam = torch.randn(*shape) * 3
    out = cam_to_uint8(cam, size=(21, 30))
    assert out.dtype == torch.uint8
    assert out.shape == (*shape[:-2], 21, 30)
    assert int(out.min()) >= 0 and int(out.max()) <= 255
    assert int(out.max()) >= 250  # max-normalised before the resize
    # a constant map stays constant through the bicubic resize
    flat = cam_to_uint8(torch.ones(4, 4) * 0.3, size=(9, 9))
    assert (flat == 255).all()


def _opencv_cubic_resize(a: np.ndarray, out_h: int, out_w: int, A: float = -0.75) -> np.ndarray:
    """A readable float version of OpenCV's INTER_CUBIC: half-pixel centres, a = -0.75,
    replicated border, separable (rows then columns)."""

    def weights(t: float) -> list[float]:
        w0 = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A
        w1 = ((A + 2) * t - (A + 3)) * t * t + 1
        w2 = ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1
        return [w0, w1, w2, 1 - w0 - w1 - w2]

    def resize_axis(x: np.ndarray, n_out: int) -> np.ndarray:
        n_in = x.shape[0]
        out = np.zeros((n_out, *x.shape[1:]))
        for d in range(n_out):
            f = (d + 0.5) * n_in / n_out - 0.5
            s = int(np.floor(f))
            for k, w in enumerate(weights(f - s)):
                out[d] += w * x[min(max(s - 1 + k, 0), n_in - 1)]
        return out

    return resize_axis(resize_axis(a.astype(np.float64), out_h).T, out_w).T


def test_cam_to_uint8_bicubic_matches_an_opencv_style_resize() -> None:
    torch.manual_seed(0)
    cam = torch.rand(6, 5)
    small = cam_to_uint8(cam)
    out = cam_to_uint8(cam, size=(23, 17)).numpy().astype(int)
    ref = np.clip(np.round(_opencv_cubic_resize(small.numpy(), 23, 17)), 0, 255).astype(int)
    assert np.abs(out - ref).max() <= 1
    assert (out == ref).mean() > 0.95


def _att(cam: list[list[float]]) -> torch.Tensor:
    """§2 by hand, as the reference stores it: clamp, / (max + 1e-8), * 255, round (imwrite)."""
    a = np.clip(np.asarray(cam, dtype=np.float32), 0, None)
    a = a / (a.max() + np.float32(1e-8)) * np.float32(255)
    return torch.from_numpy(np.round(a).astype(np.uint8))


def test_accumulation_rule_on_a_hand_made_sequence() -> None:
    """3 images, 3 classes, 2x2 maps, 4 epochs (0..3): the first-epoch skip, the 0.1 gate,
    max-fusion and the last-epoch write."""
    num_epochs = 4
    acc = OAAccumulator(num_images=3, num_classes=3, size=(2, 2))
    m1 = [[1.0, -2.0], [0.5, 0.25]]  # -> 255, 0, 128 (127.5 rounds to even), 64 (63.75)
    m2 = [[0.0, 4.0], [1.0, 3.0]]  # -> 0, 255, 64 (63.75), 191 (191.25)
    m3 = [[2.0, 2.0], [4.0, 0.0]]  # -> 128, 128, 255, 0
    assert _att(m1).tolist() == [[255, 0], [128, 64]]
    assert _att(m2).tolist() == [[0, 255], [64, 191]]
    zero = [[0.0, 0.0], [0.0, 0.0]]

    def step(epoch: int, indices: list[int], cams: list, probs: list, labels: list) -> None:
        acc.update(
            torch.tensor(indices),
            torch.tensor(cams),
            torch.tensor(probs),
            torch.tensor(labels),
            epoch,
            num_epochs,
        )

    # Epoch 0: nothing is accumulated, whatever the probabilities.
    step(0, [0, 1], [[m1, m1, m1], [m1, m1, m1]], [[0.9] * 3, [0.9] * 3], [[1, 1, 1], [1, 1, 1]])
    assert not acc.exists.any() and (acc.maps() == 0).all()

    # Epoch 1: (0, 0) written; (0, 1) gated (p < 0.1); (0, 2) not listed; (1, 0) written at p = 0.1.
    step(
        1,
        [0, 1],
        [[m1, m2, m2], [m2, m1, m1]],
        [[0.9, 0.05, 0.99], [0.1, 0.9, 0.9]],
        [[1, 1, 0], [1, 0, 0]],
    )
    assert acc.exists.tolist() == [[True, False, False], [True, False, False], [False] * 3]
    assert torch.equal(acc.maps()[0, 0], _att(m1))
    assert torch.equal(acc.maps()[1, 0], _att(m2))
    assert (acc.maps()[0, 1:] == 0).all() and (acc.maps()[1, 1:] == 0).all()

    # Epoch 2 (batch in another order): (0, 0) max-fused; (0, 1) still gated; (1, 0) gated.
    step(
        2,
        [1, 0],
        [[m1, zero, zero], [m2, m2, zero]],
        [[0.09, 0.9, 0.9], [0.5, 0.05, 0.9]],
        [[1, 0, 0], [1, 1, 0]],
    )
    assert torch.equal(acc.maps()[0, 0], torch.maximum(_att(m1), _att(m2)))
    assert acc.maps()[0, 0].tolist() == [[255, 255], [128, 191]]
    assert torch.equal(acc.maps()[1, 0], _att(m2))
    assert not acc.exists[0, 1]

    # Epoch 3 (last): (0, 1) written despite p < 0.1; (0, 0) exists and is gated: unchanged;
    # (1, 0) max-fused; (2, 2) written at p = 0.01.
    step(
        3,
        [0, 1, 2],
        [[m3, m3, zero], [m3, zero, zero], [zero, zero, m3]],
        [[0.05, 0.05, 0.9], [0.5, 0.9, 0.9], [0.9, 0.9, 0.01]],
        [[1, 1, 0], [1, 0, 0], [0, 0, 1]],
    )
    maps = acc.maps()
    assert maps.dtype == torch.uint8 and maps.shape == (3, 3, 2, 2)
    assert maps[0, 0].tolist() == [[255, 255], [128, 191]]
    assert torch.equal(maps[0, 1], _att(m3))
    assert torch.equal(maps[1, 0], torch.maximum(_att(m2), _att(m3)))
    assert torch.equal(maps[2, 2], _att(m3))
    assert acc.exists.tolist() == [[True, True, False], [True, False, False], [False, False, True]]
    assert (maps[~acc.exists] == 0).all()
    # first writes: epoch 1 x2, epoch 3 x2; fusions: epoch 2 x1, epoch 3 x1; skips: 1 + 2 + 1
    assert acc.stats() == {"written": 4, "fused": 2, "skipped": 4}
    torch.testing.assert_close(acc.targets(torch.tensor([2])), maps[2:].float() / 255)


def test_accumulation_without_quantisation_keeps_floats() -> None:
    acc = OAAccumulator(1, 1, (1, 3), quantize=False)
    for epoch, cam in [(1, [0.5, 1.0, 0.0]), (2, [1.0, 0.0, 0.3])]:
        acc.update(
            torch.tensor([0]),
            torch.tensor([[[cam]]]),
            torch.tensor([[0.9]]),
            torch.tensor([[1]]),
            epoch,
            5,
        )
    maps = acc.maps()
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps[0, 0, 0], torch.tensor([255.0, 255.0, 76.5]))


def test_single_epoch_training_accumulates_nothing() -> None:
    acc = OAAccumulator(1, 1, (2, 2))
    acc.update(torch.tensor([0]), torch.ones(1, 1, 2, 2), torch.zeros(1, 1), torch.ones(1, 1), 0, 1)
    assert not acc.exists.any()


def test_accumulator_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    acc = OAAccumulator(4, 3, (5, 5))
    for epoch in (1, 2, 3):
        acc.update(
            torch.randperm(4)[:2],
            torch.randn(2, 3, 5, 5),
            torch.rand(2, 3),
            (torch.rand(2, 3) < 0.6).long(),
            epoch,
            4,
        )
    state = acc.state_dict()
    other = OAAccumulator(4, 3, (5, 5))
    other.load_state_dict(state)
    assert torch.equal(other.maps(), acc.maps())
    assert torch.equal(other.exists, acc.exists)
    assert other.stats() == acc.stats()
    # the checkpoint is a copy: later updates do not change it
    acc.update(
        torch.tensor([0, 1, 2, 3]),
        torch.randn(4, 3, 5, 5),
        torch.ones(4, 3),
        torch.ones(4, 3),
        3,
        4,
    )
    assert torch.equal(other.maps(), state["maps"])
    with pytest.raises(ValueError, match="num_images"):
        OAAccumulator(5, 3, (5, 5)).load_state_dict(state)
    with pytest.raises(ValueError, match="num_images"):
        OAAccumulator(4, 3, (5, 5), quantize=False).load_state_dict(state)


def test_accumulator_rejects_bad_input() -> None:
    acc = OAAccumulator(4, 2, (3, 3))
    ones = torch.ones(2, 2)
    with pytest.raises(ValueError, match="size"):
        acc.update(torch.tensor([0, 1]), torch.rand(2, 2, 4, 4), ones, ones, 1, 3)
    with pytest.raises(ValueError, match="distinct"):
        acc.update(torch.tensor([1, 1]), torch.rand(2, 2, 3, 3), ones, ones, 1, 3)
    with pytest.raises(ValueError, match="probs"):
        acc.update(torch.tensor([0, 1]), torch.rand(2, 2, 3, 3), torch.ones(2, 3), ones, 1, 3)


def _iam_loss_direct(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """§2 written naively (unstable for large |x|)."""
    s = torch.sigmoid(x)
    pos, neg = t > 0, t == 0
    return (-t[pos] * torch.log(s[pos])).mean() + (-torch.log(1 - s[neg])).mean()


def test_iam_loss_matches_the_direct_formula_on_safe_inputs() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64) * 3
    t = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    t[t < 0.4] = 0  # about 40 % of the pixels are negatives
    torch.testing.assert_close(iam_loss(x, t), _iam_loss_direct(x, t))
    torch.testing.assert_close(iam_loss(x.float(), t.float()), _iam_loss_direct(x, t).float())


def test_iam_loss_handles_empty_sets() -> None:
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    zeros, halves = torch.zeros_like(x), torch.full_like(x, 0.5)
    torch.testing.assert_close(iam_loss(x, zeros), F.softplus(x).mean())  # no positives
    torch.testing.assert_close(iam_loss(x, halves), (-0.5 * F.logsigmoid(x)).mean())  # no negatives
    # pixels with t < 0 count in neither mean
    t = zeros.clone()
    t[0, 0, 0, 0] = -1.0
    torch.testing.assert_close(iam_loss(x, t), F.softplus(x).flatten()[1:].mean())


def test_iam_loss_is_finite_on_extreme_logits() -> None:
    x = torch.tensor([[[[100.0, -100.0], [100.0, -100.0]]]], requires_grad=True)
    t = torch.tensor([[[[1.0, 0.7], [0.0, 0.0]]]])
    loss = iam_loss(x, t)
    assert torch.isfinite(loss)
    # −0.7 · log σ(−100) ≈ 70 on the wrong positive pixel, softplus(100) = 100 on the negative
    torch.testing.assert_close(loss, torch.tensor((0.0 + 70.0) / 2 + (100.0 + 0.0) / 2))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="must match"):
        iam_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))


def test_object_cell_maps_mark_the_cells_that_touch_the_object() -> None:
    from nsrom_lib.cam import object_cell_maps
    from nsrom_lib.metrics import map_quality

    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1  # class 0: exactly one 4 x 4 feature cell
    mask[9:11, 9:11] = 3  # class 2: 2 x 2 pixels that straddle four cells
    maps = object_cell_maps(mask, [0, 2, 1], (4, 4), mode="nearest")
    assert set(maps) == {0, 2, 1} and all(m.shape == (16, 16) and m.dtype == np.uint8
                                          for m in maps.values())
    assert ((maps[0] > 76) == (mask == 1)).all()  # an aligned object: its cell, nothing more
    want = np.zeros((16, 16), bool)
    want[8:12, 8:12] = True  # every cell the small object touches
    assert ((maps[2] > 76) == want).all()
    assert (maps[1] == 0).all()  # a class that is not in the mask
    q = map_quality([{0: maps[0], 2: maps[2]}], [mask])
    assert q["coverage"] == 1.0
    assert q["precision"] == pytest.approx((16 + 4) / (16 + 16))
    # one cell wider: the aligned object's map covers 3 x 3 cells (clipped at no border here)
    wide = object_cell_maps(mask, [0], (4, 4), dilate=1, mode="nearest")[0]
    assert ((wide > 76).sum()) == 144 and (wide[mask == 1] == 255).all()
    # the default export is bicubic, as the OA-CAM's: still covers the object, a bit wider
    soft = object_cell_maps(mask, [0], (4, 4))[0]
    assert (soft[mask == 1] > 76).all() and (soft > 76).sum() >= 16
    # graded: a cell holds its share of object pixels (the small object fills 1/4 of each cell)
    graded = object_cell_maps(mask, [2], (4, 4), graded=True, mode="nearest")[2]
    assert graded[8, 8] == 255 and graded[0, 0] == 0  # max-normalised: 0.25 / 0.25 -> 255
    half = np.zeros((8, 8), np.uint8)
    half[:4, :4] = 1  # one full cell, and one cell with a quarter of its pixels
    half[4:6, 4:6] = 1
    g = object_cell_maps(half, [0], (2, 2), graded=True, mode="nearest")[0]
    assert g[0, 0] == 255 and g[7, 7] == 63 and g[0, 7] == 0  # 0.25 * 255, truncated
    # an image side that the cells do not divide (10 px, 3 cells): the corner pixel's cell only
    edge = np.zeros((10, 10), np.uint8)
    edge[9, 9] = 1
    m = object_cell_maps(torch.from_numpy(edge), [0], (3, 3), mode="nearest")[0]
    assert m.shape == (10, 10) and m[9, 9] == 255 and m[0, 0] == 0 and m[5, 5] == 0
    with pytest.raises(ValueError, match="feature_size"):
        object_cell_maps(mask, [0], (0, 4))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        object_cell_maps(mask[None], [0], (4, 4))
