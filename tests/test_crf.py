"""Dense CRF post-processing (nsrom_lib/crf.py) and the `seg_crf` setting of the segmentation stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nsrom_lib import crf as CRF
from nsrom_lib import train as T
from nsrom_lib.models.segmentation import DeepLabV2
from nsrom_lib.pipeline import ensure_segmentation, open_run


def _two_region_image(size: int = 32):
    """A dark left half and a bright right half, and a blurry, shifted probability map whose
    argmax puts the boundary 3 px too far right."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, size // 2 :] = 220
    truth = np.zeros((size, size), np.uint8)
    truth[:, size // 2 :] = 1
    x = np.arange(size)[None, :].repeat(size, 0).astype(np.float32)
    p1 = 1 / (1 + np.exp(-(x - (size // 2 + 3)) / 3.0))  # P(class 1), boundary 3 px to the right
    prob = np.stack([1 - p1, p1]).astype(np.float32)
    return img, prob, truth


def test_crf_snaps_a_blurry_boundary_to_the_colour_edge():
    img, prob, truth = _two_region_image()
    before = (prob.argmax(0) == truth).mean()
    q = CRF.dense_crf(img, prob, CRF.crf_params_for(32))
    assert q.shape == prob.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)  # marginals
    after = (q.argmax(0) == truth).mean()
    assert before == pytest.approx(0.875) and after == 1.0


def test_zero_iterations_keep_the_argmax():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    prob = rng.dirichlet(np.ones(4), size=(12, 10)).transpose(2, 0, 1).astype(np.float32)
    q = CRF.dense_crf(img, prob, CRF.CRFParams(iterations=0))
    np.testing.assert_array_equal(q.argmax(0), prob.argmax(0))


def test_params_scale_with_the_image_side():
    assert CRF.crf_params_for(500) == CRF.REFERENCE_CRF
    assert CRF.crf_params_for(1000).bi_xy_std == 67.0  # never larger than the reference's
    p = CRF.crf_params_for(96)
    assert p.bi_xy_std == pytest.approx(67 * 96 / 500)
    assert (p.pos_xy_std, p.bi_rgb_std, p.iterations, p.pos_w, p.bi_w) == (1.0, 3.0, 10, 3.0, 4.0)
    with pytest.raises(ValueError):
        CRF.CRFParams(iterations=-1)
    with pytest.raises(ValueError):
        CRF.CRFParams(bi_xy_std=0)


def test_bad_inputs_are_refused():
    img, prob, _ = _two_region_image(16)
    with pytest.raises(ValueError, match="uint8"):
        CRF.dense_crf(img.astype(np.float32), prob)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        CRF.dense_crf(img, prob[:, :8])
    bad = prob.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CRF.dense_crf(img, bad)
    with pytest.raises(ValueError, match="differ"):
        CRF.crf_labels(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 2, 16, 16))


def test_missing_package_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_crf(name, *a, **k):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_crf)
    img, prob, _ = _two_region_image(8)
    with pytest.raises(CRF.CRFUnavailable, match=r"pip install pydensecrf2==1\.1.*seg_crf=false"):
        CRF.dense_crf(img, prob)


def test_predict_segmentation_with_crf_is_the_crf_of_the_averaged_softmax():
    torch.manual_seed(0)
    model = DeepLabV2(num_classes=3, width=8)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    params = CRF.crf_params_for(32)
    got = T.predict_segmentation(model, images, flip=True, crf=params)
    assert got.shape == (3, 32, 32) and got.dtype == torch.uint8
    # by hand: softmax of the image and of its mirror, averaged, then the CRF
    model.eval()
    with torch.no_grad():
        x = T.normalize_images(images)
        logits = [model(x), model(x.flip(-1)).flip(-1)]
        prob = sum(torch.nn.functional.interpolate(lo.float(), size=(32, 32), mode="bilinear",
                                                   align_corners=False).softmax(1) for lo in logits) / 2
    assert torch.equal(got, CRF.crf_labels(images, prob, params))
    # zero CRF iterations give the plain prediction back
    plain = T.predict_segmentation(model, images, flip=True)
    assert torch.equal(T.predict_segmentation(model, images, flip=True,
                                              crf=CRF.CRFParams(iterations=0)), plain)


@pytest.mark.slow
def test_seg_crf_repredicts_round_one_without_retraining(tmp_path):
    over = dict(n_train=16, n_val=6, cls_epochs=2, iam_epochs=1, width=8, seg_width=8,
                seg_epochs=1, oaa_snapshots=1)
    run = open_run(tmp_path / "r", "smoke", **over)
    rec = ensure_segmentation(run, "upper_bound", progress=False)
    assert rec["metrics"]["crf"] is None and rec["metrics"]["model_reused"] is False
    model_pt = run.dir / "seg1" / "gt" / "model.pt"
    mtime, hist = model_pt.stat().st_mtime_ns, (run.dir / "seg1" / "gt" / "history.json").read_text()
    run_crf = open_run(tmp_path / "r", "smoke", seg_crf=True, **over)
    assert not run_crf.is_done("seg1/gt")  # a new key: predictions change
    rec2 = ensure_segmentation(run_crf, "upper_bound", progress=False)
    m2 = rec2["metrics"]
    assert m2["model_reused"] is True and m2["crf"]["bi_xy_std"] == pytest.approx(67 * 64 / 500)
    assert model_pt.stat().st_mtime_ns == mtime  # the stored model was not retrained
    assert json.loads(hist) == json.loads((run.dir / "seg1" / "gt" / "history.json").read_text())
    # a training setting does retrain
    run_lr = open_run(tmp_path / "r", "smoke", seg_crf=True, seg_lr=2e-3, **over)
    assert ensure_segmentation(run_lr, "upper_bound", progress=False)["metrics"]["model_reused"] is False
