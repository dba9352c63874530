"""Classifier / IAM training, checkpoints and resume, stage records, map export, measures.

docs/method.md §1–§2. Everything here is tiny (a few images of 32–64 px, narrow
networks) so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nsrom_lib import train as T
from nsrom_lib.metrics import average_precision, classification_map, map_quality
from nsrom_lib.models.classifier import Classifier
from nsrom_lib.pipeline import (
    MAP_KINDS,
    ensure_classifier,
    ensure_maps,
    map_path,
    open_run,
)

# ----------------------------------------------------------------------------- training


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _toy_data(n: int = 12, size: int = 32, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = (torch.rand(n, classes, generator=g) > 0.5).float()
    labels[labels.sum(1) == 0, 0] = 1.0
    return images, labels


def _toy_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(3, width=8, output_stride=4)


def _train(ckpt, max_epochs=None):
    images, labels = _toy_data()
    return T.train_classifier(
        _toy_model(), images, labels, epochs=3, batch_size=5, seed=1, snapshot_indices=[0, 2],
        probe_indices=[3, 1, 7], checkpoint=ckpt, tag="t", max_epochs=max_epochs, progress=False,
    )


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    full = _train(tmp_path / "a.pt")
    part = _train(tmp_path / "b.pt", max_epochs=2)  # "interrupted" after epoch 2
    assert not part["completed"] and part["epochs_done"] == 2
    resumed = _train(tmp_path / "b.pt")  # a fresh model and process state, same checkpoint
    assert resumed["completed"] and resumed["epochs_done"] == 3
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert torch.equal(full["accumulator"].maps(), resumed["accumulator"].maps())
    assert torch.equal(full["accumulator"].exists, resumed["accumulator"].exists)
    assert full["accumulator"].stats() == resumed["accumulator"].stats()
    assert torch.equal(full["snapshots"]["maps"], resumed["snapshots"]["maps"])
    for k in ("epochs", "maps", "accumulated"):  # the per-epoch probe survives the interruption
        assert torch.equal(full["probe"][k], resumed["probe"][k]), k
    assert [h["loss"] for h in full["history"]] == [h["loss"] for h in resumed["history"]]
    # snapshots: one per epoch, of the chosen images; the first epoch never accumulates
    assert full["snapshots"]["maps"].shape == (3, 2, 3, 8, 8)
    assert full["snapshots"]["maps"][0].sum() == 0 and full["snapshots"]["maps"][-1].sum() > 0
    # every listed (image, class) has a map after the last epoch (the last-epoch write)
    _, labels = _toy_data()
    assert torch.equal(full["accumulator"].exists, labels > 0)
    # a finished checkpoint is not trained further
    again = _train(tmp_path / "a.pt")
    assert again["epochs_done"] == 3 and len(again["history"]) == 3


def test_probe_records_exactly_what_each_epoch_fuses():
    out = _train(None)
    probe, acc = out["probe"], out["accumulator"]
    assert probe["indices"].tolist() == [3, 1, 7]
    assert probe["epochs"].tolist() == [1, 2]  # 0-based: the first epoch never accumulates
    assert probe["maps"].shape == probe["accumulated"].shape == (2, 3, 3, 8, 8)
    assert probe["maps"].dtype == torch.uint8
    # after the last epoch the probe holds the accumulator's maps of those images
    assert torch.equal(probe["accumulated"][-1], acc.maps(probe["indices"]))
    # each epoch's accumulated map is the previous one, max-fused with that epoch's own map
    # unless the 0.1 gate skipped it; a first write is max(0, own) = own
    before = torch.zeros_like(probe["accumulated"][0])
    for f in range(2):
        own, after = probe["maps"][f].int(), probe["accumulated"][f].int()
        fused = torch.maximum(before.int(), own)
        same = (after == before.int()).flatten(2).all(-1)  # (p, C)
        took = (after == fused).flatten(2).all(-1)
        assert (same | took).all()
        assert took.any()  # something was fused in every epoch of this run
        before = probe["accumulated"][f]
    # listed classes have non-empty own maps; unlisted ones are never written to the accumulator
    _, labels = _toy_data()
    listed = labels[probe["indices"]] > 0  # (p, C)
    assert (probe["maps"].flatten(3).amax(-1)[:, listed] == 255).all()
    assert (probe["accumulated"][:, ~listed] == 0).all()
    with pytest.raises(ValueError, match="distinct"):
        images, labels = _toy_data()
        T.train_classifier(_toy_model(), images, labels, epochs=2, probe_indices=[1, 1],
                           progress=False)


def test_checkpoint_of_another_configuration_is_ignored(tmp_path):
    _train(tmp_path / "c.pt", max_epochs=1)
    images, labels = _toy_data()
    out = T.train_classifier(_toy_model(), images, labels, epochs=2, batch_size=6, seed=1,
                             checkpoint=tmp_path / "c.pt", tag="other", progress=False)
    assert out["epochs_done"] == 2 and out["history"][0]["epoch"] == 1


def test_iam_learns_its_targets_and_checks_their_size():
    images, labels = _toy_data(n=8)
    torch.manual_seed(0)
    iam = Classifier(3, width=8, output_stride=4, iam=True)
    targets = torch.zeros(8, 3, 8, 8, dtype=torch.uint8)
    targets[:, 0, 2:6, 2:6] = 255
    out = T.train_iam(iam, images, targets, epochs=4, batch_size=4, lr=3e-3, jitter=0.0,
                      progress=False)
    losses = [h["loss"] for h in out["history"]]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="targets"):
        T.train_iam(iam, images, targets[..., :4, :4], epochs=1, progress=False)


def test_learning_rate_schedules():
    assert T.learning_rate(1.0, 0, 10, "cosine") == 1.0
    assert T.learning_rate(1.0, 5, 10, "cosine") == pytest.approx(0.5)
    assert [T.learning_rate(1.0, e, 15, "step") for e in (0, 4, 5, 9, 10, 14)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError):
        T.learning_rate(1.0, 0, 10, "exponential")
    assert T.poly_lr(1.0, 0, 100) == 1.0
    assert T.poly_lr(1.0, 50, 100) == pytest.approx(0.5 ** 0.9)
    assert T.poly_lr(1.0, 100, 100) == 0.0


def test_map_export_sizes_and_values(tmp_path):
    cams = torch.zeros(2, 3, 4, 4)
    cams[0, 1, :2, :2] = 2.0
    cams[1, 0] = torch.arange(16.0).reshape(4, 4)
    maps = T.maps_to_uint8(cams, [[1, 2], [0]], [(16, 16), (12, 20)])
    assert set(maps[0]) == {1, 2} and set(maps[1]) == {0}
    assert maps[0][1].shape == (16, 16) and maps[1][0].shape == (12, 20)
    assert maps[0][1].dtype == np.uint8 and maps[0][1].max() >= 250 and maps[0][2].max() == 0
    assert T.export_maps(tmp_path / "cam", ["a", "b"], maps) == 3
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == ["a_1.png", "a_2.png", "b_0.png"]
    # resize_uint8 keeps 0..255 maps as they are (no re-normalisation)
    acc = torch.full((1, 4, 4), 200, dtype=torch.uint8)
    assert T.resize_uint8(acc, (8, 8)).unique().tolist() == [200]


# ----------------------------------------------------------------------------- measures


def test_average_precision_and_map_by_hand():
    # ranks of positives 1 and 3: AP = (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3]])
    labels = np.array([[1, 0], [0, 1], [0, 0]])
    assert classification_map(scores, labels) == 1.0


def test_map_quality_on_hand_made_maps():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, :] = 1  # object 1: class 0, 4 px (salient)
    gt[3, :2] = 2  # object 2: class 1, 2 px (non-salient)
    inst = np.zeros((4, 4), np.uint8)
    inst[0, :] = 1
    inst[3, :2] = 2
    objs = [{"id": 1, "class": 0, "salient": True}, {"id": 2, "class": 1, "salient": False}]
    m0 = np.zeros((4, 4), np.uint8)
    m0[0, :2] = 255  # half of object 1
    m0[1, 0] = 200  # one activated px of background
    m1 = np.full((4, 4), 0.2)  # float map, nothing above 0.3
    q = map_quality([{0: m0, 1: m1}], [gt], [inst], [objs])
    assert q["coverage_salient"] == pytest.approx(0.5)
    assert q["coverage_nonsalient"] == 0.0
    assert q["coverage"] == pytest.approx(0.25)
    assert q["precision"] == pytest.approx(2 / 3)
    assert q["objects"] == 2
    # without instances each (image, class) region is one object
    q2 = map_quality([{0: m0}], [gt])
    assert q2["coverage"] == pytest.approx(0.25) and np.isnan(q2["coverage_salient"])


# ----------------------------------------------------------------------------- stages


@pytest.mark.slow
def test_stages_record_skip_and_export_layout(tmp_path):
    over = dict(n_train=12, n_val=4, cls_epochs=2, iam_epochs=1, width=8, oaa_snapshots=2)
    run = open_run(tmp_path / "run", "smoke", **over)
    rec = ensure_maps(run, progress=False)
    assert run.is_done("classifier") and run.is_done("iam") and run.is_done("maps")
    cls_rec = run.record("classifier")
    for key in ("train_map", "val_map", "final_loss", "cam", "accumulated", "oaa"):
        assert key in cls_rec["metrics"]
    assert json.loads((run.dir / "classifier" / "history.json").read_text())[-1]["epoch"] == 2
    # per fused epoch (only the second here): its own maps and the accumulated maps, measured on
    # the probe images; after the last epoch the accumulated row is the stage's `accumulated`
    # on those images (all 12 here, fewer than OAA_PROBE_IMAGES)
    rows = cls_rec["metrics"]["oaa_epochs"]
    assert [r["epoch"] for r in rows] == [2] and rows[0]["images"] == 12
    assert rows[0]["accumulated"] == cls_rec["metrics"]["accumulated"]
    assert 0 <= rows[0]["own"]["precision"] <= 1 and rows[0]["own"]["objects"] > 0
    assert not (run.dir / "classifier" / "checkpoint.pt").exists()
    # every listed (image, class) has one PNG of image size per kind
    from nsrom_lib.data.io import read_gray_png
    from nsrom_lib.data.voc import VOCSegDataset

    ds = VOCSegDataset(run.record("data")["metrics"]["data_root"], "train", with_saliency=False)
    pairs = [(ds.names[i], c) for i in range(len(ds)) for c in ds.get_raw(i)["label_ids"]]
    for kind in MAP_KINDS:
        files = sorted(p.name for p in (run.dir / "maps" / kind).glob("*.png"))
        assert files == sorted(f"{n}_{c}.png" for n, c in pairs)
        assert rec["metrics"][f"{kind}_files"] == len(pairs)
    png = read_gray_png(map_path(run, "oacam", *pairs[0]))
    assert png.shape == (64, 64) and png.dtype == np.uint8
    # the loaders give back exactly those files: per image dicts, and stacked (N, C, H, W)
    from nsrom_lib.pipeline import load_map_dicts, load_maps

    ids = [ds.get_raw(i)["label_ids"] for i in range(len(ds))]
    dicts = load_map_dicts(run, "oacam", ds.names, ids)
    stacked = load_maps(run, "oacam", ds.names, ids)
    assert [sorted(d) for d in dicts] == [sorted(c) for c in ids]
    n0, c0 = pairs[0]
    assert np.array_equal(dicts[ds.names.index(n0)][c0], png)
    for i, d in enumerate(dicts):
        assert all(np.array_equal(stacked[i, c], m) for c, m in d.items())
        assert not stacked[i, [c for c in range(stacked.shape[1]) if c not in d]].any()
    # a second call finds the records and recomputes nothing
    stamp = {s: run.record(s)["finished"] for s in ("classifier", "iam", "maps")}
    mtime = (run.dir / "classifier" / "model.pt").stat().st_mtime_ns
    ensure_maps(run, progress=False)
    assert {s: run.record(s)["finished"] for s in stamp} == stamp
    assert (run.dir / "classifier" / "model.pt").stat().st_mtime_ns == mtime
    # a downstream-only change keeps the classifier, an upstream change does not
    run2 = open_run(tmp_path / "run", "smoke", **{**over, "iam_epochs": 2})
    assert run2.is_done("classifier") and not run2.is_done("iam")
    run3 = open_run(tmp_path / "run", "smoke", **{**over, "cls_lr": 3e-3})
    assert not run3.is_done("classifier")
    # the GloRe-off classifier has its own folder and record
    ensure_classifier(run, glore=False, progress=False)
    assert run.is_done("classifier/no_glore") and run.is_done("classifier")
    assert run.record("classifier/no_glore")["metrics"]["glore"] is False


def test_warmup_backbone_initialises_classifier_and_iam(tmp_path, monkeypatch):
    """cls_warmup_epochs > 0: a warm-up classifier is trained once, its backbone is what the
    classifier and the IAM start from, and OAA-only settings do not retrain it."""
    from nsrom_lib import pipeline as P

    over = dict(n_train=12, n_val=4, cls_epochs=2, iam_epochs=1, width=8, oaa_snapshots=2)
    assert P.ensure_warmup(open_run(tmp_path / "cold", "smoke", **over), progress=False) is None
    run = open_run(tmp_path / "run", "smoke", cls_warmup_epochs=2, **over)
    started = {}  # model kind -> backbone weights when its training began
    real_cls, real_iam = T.train_classifier, T.train_iam

    def spy(fn, kind):
        def wrapped(model, *a, **k):
            if kind != "classifier" or k.get("accumulate", True):  # not the warm-up itself
                started[kind] = {n: v.clone() for n, v in model.features.state_dict().items()}
            return fn(model, *a, **k)
        return wrapped

    monkeypatch.setattr(T, "train_classifier", spy(real_cls, "classifier"))
    monkeypatch.setattr(T, "train_iam", spy(real_iam, "iam"))
    P.ensure_iam(run, progress=False)
    rec = run.record(P.WARMUP_STAGE)
    assert rec["metrics"]["epochs"] == 2 and 0 <= rec["metrics"]["val_map"] <= 1
    warm = torch.load(run.dir / P.WARMUP_STAGE / "backbone.pt", weights_only=True)["features"]
    for kind in ("classifier", "iam"):
        assert started[kind].keys() == warm.keys()
        assert all(torch.equal(started[kind][n], warm[n]) for n in warm), kind
    # a freshly built model differs from it: the weights really came from the warm-up
    fresh = P.build_classifier(run.cfg).features.state_dict()
    assert not all(torch.equal(fresh[n], warm[n]) for n in warm if warm[n].is_floating_point())
    # OAA settings leave the warm-up alone; its own epochs retrain it (and the classifier)
    stamp = rec["finished"]
    run2 = open_run(tmp_path / "run", "smoke", cls_warmup_epochs=2, **{**over, "oaa_from_epoch": 0})
    assert run2.is_done(P.WARMUP_STAGE)
    assert not run2.is_done("classifier")
    run3 = open_run(tmp_path / "run", "smoke", cls_warmup_epochs=3, **over)
    assert not run3.is_done(P.WARMUP_STAGE)
    assert P.ensure_warmup(run2, progress=False)["finished"] == stamp
    # at its default (0) the setting is left out of the keys: older run folders stay valid
    cold = open_run(tmp_path / "cold", "smoke", **over)
    older = [f for f in P.STAGE_FIELDS["classifier"] if f != "cls_warmup_epochs"]
    assert cold.stage_key("classifier") == cold.stage_key("classifier", older)
    assert run.stage_key("classifier") != run.stage_key("classifier", older)
