"""The `pseudo` stage on the smoke profile: one label per training image, equal to the per-image
numpy references computed from the run's map PNGs and to the CLI's code on the same folders;
its record is reused, and recomputed (without retraining anything) when a threshold changes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nsrom_lib import labels as L
from nsrom_lib.config import make_config
from nsrom_lib.data.io import read_gray_png, read_label_png
from nsrom_lib.data.voc import read_cls_list
from nsrom_lib.pipeline import (
    PSEUDO_KINDS,
    STAGE_FIELDS,
    ensure_data,
    ensure_pseudo,
    load_explorer_inputs,
    load_labels,
    map_path,
    open_run,
    pseudo_thresholds,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke run with its `pseudo` stage done, and that stage's first record."""
    run = open_run(tmp_path_factory.mktemp("pseudo") / "run", "smoke")
    rec = ensure_pseudo(run, progress=False)
    return run, rec


def _ref_labels(run, name, classes, **th):
    """(initial, pseudo) of one image from the numpy references on the run's PNGs."""
    sal = read_gray_png(ensure_data(run) / "Saliency" / f"{name}.png")
    oa = {c: read_gray_png(map_path(run, "oacam", name, c)) for c in classes}
    cam = {c: read_gray_png(map_path(run, "cam", name, c)) for c in classes}
    C = run.cfg.num_classes
    be = {k: th[k] for k in ("fg", "conflict", "bg", "att")}
    initial = L.initial_label_ref(sal, oa, classes, C, ratio=th["ratio"], **be)
    pseudo = L.pseudo_label_ref(sal, oa, cam, classes, C, pom=th["pom"], ratio=th["ratio"], **be)
    return initial, pseudo


def test_config_fields_and_stage_key():
    cfg = make_config("smoke")
    assert pseudo_thresholds(cfg) == dict(fg=0.3, conflict=0.9, bg=32, att=0.8, pom=0.3, ratio=0.01)
    assert set(STAGE_FIELDS["maps"]) < set(STAGE_FIELDS["pseudo"])
    assert {"be_fg", "be_conflict", "be_bg", "be_att", "pom_threshold", "min_label_ratio"} <= set(
        STAGE_FIELDS["pseudo"]
    )


def test_one_label_per_image_with_valid_values(smoke):
    run, rec = smoke
    listed = read_cls_list(run.dir / "pseudo" / "train_cls.txt")
    C = run.cfg.num_classes
    for kind in PSEUDO_KINDS:
        files = sorted(p.stem for p in (run.dir / "pseudo" / kind).glob("*.png"))
        assert files == sorted(listed) and len(files) == rec["metrics"]["images"] == run.cfg.n_train
        labels = load_labels(run, kind)
        assert labels.dtype == np.uint8 and labels.shape[0] == run.cfg.n_train
        assert set(np.unique(labels).tolist()) <= set(range(C + 1)) | {255}
    m = rec["metrics"]
    for kind in PSEUDO_KINDS:
        for k in ("precision", "coverage", "miou", "ignore_share", "nonsalient_recall",
                  "nonsalient_as_background"):
            assert 0 <= m[kind][k] <= 1, (kind, k)
    # POM only turns background into ignore: coverage and object pixels taught as background
    # can only go down, recall (class pixels) stays
    assert m["pseudo"]["coverage"] <= m["initial"]["coverage"]
    assert m["pseudo"]["nonsalient_as_background"] <= m["initial"]["nonsalient_as_background"]
    assert m["pseudo"]["nonsalient_recall"] == m["initial"]["nonsalient_recall"]
    assert m["pseudo"]["ignore_share"] == pytest.approx(
        m["initial"]["ignore_share"] + m["pom_ignored_share"], abs=2e-4
    )
    assert m["images_per_s"] > 0 and rec["seconds"] > 0


def test_labels_equal_the_references(smoke):
    run, _ = smoke
    listed = read_cls_list(run.dir / "pseudo" / "train_cls.txt")
    th = pseudo_thresholds(run.cfg)
    multi = [n for n, cl in listed.items() if len(cl) >= 2][:3]
    single = [n for n, cl in listed.items() if len(cl) == 1][:2]
    for name in multi + single:
        initial, pseudo = _ref_labels(run, name, listed[name], **th)
        np.testing.assert_array_equal(read_label_png(run.dir / "pseudo/initial" / f"{name}.png"), initial)
        np.testing.assert_array_equal(read_label_png(run.dir / "pseudo/pseudo" / f"{name}.png"), pseudo)


def test_pseudo_labels_equal_the_cli_code(smoke, tmp_path):
    from nsrom_lib.data.maps_io import load_label_inputs
    from nsrom_lib.label_folders import make_labels

    run, _ = smoke
    inputs = load_label_inputs(
        run.dir / "pseudo" / "train_cls.txt", ensure_data(run) / "Saliency",
        oacam_dir=run.dir / "maps" / "oacam", cam_dir=run.dir / "maps" / "cam",
        num_classes=run.cfg.num_classes,
    )
    make_labels(inputs, tmp_path / "cli", device="cpu", progress=False, **pseudo_thresholds(run.cfg))
    for p in sorted((run.dir / "pseudo" / "pseudo").glob("*.png")):
        np.testing.assert_array_equal(read_label_png(p), read_label_png(tmp_path / "cli" / p.name))


def test_record_reused_then_recomputed_when_a_threshold_changes(smoke):
    run, rec = smoke
    maps_rec = run.record("maps")
    again = ensure_pseudo(run, progress=False)
    assert again == rec  # reused: same record, nothing recomputed

    run2 = open_run(run.dir, "smoke", be_att=0.5, pom_threshold=0.5)
    rec2 = ensure_pseudo(run2, progress=False)
    assert rec2["key"] != rec["key"] and rec2["thresholds"]["att"] == 0.5
    assert run2.record("maps") == maps_rec  # upstream stages untouched
    assert json.loads((run.dir / "pseudo" / "record.json").read_text())["key"] == rec2["key"]
    listed = read_cls_list(run.dir / "pseudo" / "train_cls.txt")
    name = next(n for n, cl in listed.items() if len(cl) >= 2)
    initial, pseudo = _ref_labels(run2, name, listed[name], **pseudo_thresholds(run2.cfg))
    np.testing.assert_array_equal(load_labels(run2, "initial", [name])[0], initial)
    np.testing.assert_array_equal(load_labels(run2, "pseudo", [name])[0], pseudo)
    # a lower att ignores more background
    assert rec2["metrics"]["initial"]["ignore_share"] >= rec["metrics"]["initial"]["ignore_share"]

    with pytest.raises(ValueError, match="be_fg"):
        ensure_pseudo(open_run(run.dir, "smoke", be_fg=1.5), progress=False)
    # back to the reference thresholds: recomputed again, same labels as the first time
    rec3 = ensure_pseudo(open_run(run.dir, "smoke"), progress=False)
    assert rec3["key"] == rec["key"] and rec3["metrics"]["pseudo"] == rec["metrics"]["pseudo"]


def test_explorer_inputs_from_the_run(smoke):
    from nsrom_lib.widgets import explore_labels

    run, _ = smoke
    x = load_explorer_inputs(run, limit=12)
    assert x["oa_cam"].shape == (12, run.cfg.num_classes, *x["sal"].shape[1:])
    res = explore_labels(x, **pseudo_thresholds(run.cfg))
    np.testing.assert_array_equal(res["labels"]["pseudo"], load_labels(run, "pseudo", x["names"]))
    np.testing.assert_array_equal(res["labels"]["initial"], load_labels(run, "initial", x["names"]))


def test_instance_background_share_by_hand():
    from nsrom_lib.metrics import instance_background_share

    inst = np.array([[1, 1, 2, 2]], np.uint8)  # instance 1 salient, instance 2 not
    objs = [[dict(id=1, salient=True, **{"class": 0}), dict(id=2, salient=False, **{"class": 1})]]
    lab = np.array([[0, 1, 0, 255]], np.uint8)
    assert instance_background_share([lab], [inst], objs) == 0.5
    assert instance_background_share([lab], [inst], objs, salient=True) == 0.5
    assert instance_background_share([lab], [inst], objs, salient=None) == 0.5
    assert np.isnan(instance_background_share([lab], [np.zeros_like(inst)], [[]]))
