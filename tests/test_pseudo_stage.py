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
    load_maps,
    map_path,
    open_run,
    pseudo_stage,
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


#: The keys of the smoke profile's stages as they were before the OAA ablation added its label
#: sources and round-1 model: adding them must not retrain, nor relabel, any older run. (A change
#: of the smoke profile or of SynthVOC's generator changes them all: then update these.)
_SMOKE_KEYS = {"data": "c5befb0ade5f4594", "classifier": "21b849f0968f44dd",
               "iam": "7dbc6ddb9dcac355", "maps": "beab49b7a0795ddd",
               "pseudo": "00d089057e21954b", "pseudo/no_glore": "bde0584bfff83905",
               "masked": "f752c28f9cd638f0", "seg2": "d10a56c7acd1f06f"}
_SMOKE_SEG_KEYS = {"upper_bound": "a5fb30f21ace54ac", "be_round1": "2ab5e9749fbb9633",
                   "pom_round1": "d847b9e5210e542a", "nsrm_round2": "d10a56c7acd1f06f",
                   "pom_round1_no_glore": "165ce1637c88d402",
                   "nsrm_round2_no_glore": "635f37973628ccae"}


def test_keys_of_the_existing_stages_are_unchanged(tmp_path):
    from nsrom_lib.pipeline import SEG_MODELS, segmentation_key

    run = open_run(tmp_path / "run", "smoke")
    assert {s: run.stage_key(s) for s in _SMOKE_KEYS} == _SMOKE_KEYS
    assert {w: segmentation_key(run, w) for w in _SMOKE_SEG_KEYS} == _SMOKE_SEG_KEYS
    # the new label sets and model have keys of their own
    new = {run.stage_key(pseudo_stage(True, s)) for s in ("cam", "accumulated")}
    new.add(segmentation_key(run, "pom_round1_cam"))
    assert len(new) == 3 and not new & (set(_SMOKE_KEYS.values()) | set(_SMOKE_SEG_KEYS.values()))
    assert SEG_MODELS["pom_round1_cam"]["stage"] == "seg1/cam"
    assert pseudo_stage(False, "cam") == "pseudo/no_glore/cam"
    with pytest.raises(ValueError, match="source"):
        pseudo_stage(True, "gradcam")


def _maps_labels(run, source, names, classes):
    """(initial, pseudo) labels of `names` from `labels.initial_labels` / `pseudo_labels` on the
    run's `maps/<source>` (BE) and `maps/cam` (POM) PNGs."""
    import torch

    sal = torch.from_numpy(np.stack([read_gray_png(ensure_data(run) / "Saliency" / f"{n}.png")
                                     for n in names]))
    be_maps = torch.from_numpy(load_maps(run, source, names, classes))
    cam = torch.from_numpy(load_maps(run, "cam", names, classes))
    present = torch.zeros(len(names), run.cfg.num_classes, dtype=torch.bool)
    for i, cl in enumerate(classes):
        present[i, cl] = True
    th = pseudo_thresholds(run.cfg)
    be = {k: th[k] for k in ("fg", "conflict", "bg", "att")}
    initial = L.initial_labels(sal, be_maps, present, ratio=th["ratio"], **be)
    pseudo = L.pseudo_labels(sal, be_maps, cam, present, pom=th["pom"], ratio=th["ratio"], **be)
    return initial.numpy(), pseudo.numpy()


def test_label_sets_from_the_cam_and_the_accumulated_maps(smoke, record_property):
    import time

    run, _ = smoke
    rec = ensure_pseudo(run, progress=False)  # the OA-CAM set (a test above may have redone it)
    listed = read_cls_list(run.dir / "pseudo" / "train_cls.txt")
    names, classes = list(listed), list(listed.values())
    oa = load_labels(run, "pseudo", names)
    for source in ("cam", "accumulated"):
        t0 = time.perf_counter()
        src_rec = ensure_pseudo(run, progress=False, source=source)
        record_property(f"pseudo/{source} seconds", round(time.perf_counter() - t0, 2))
        assert src_rec["stage"] == f"pseudo/{source}" and src_rec["source"] == source
        for kind in PSEUDO_KINDS:
            m = src_rec["metrics"][kind]
            assert {"precision", "coverage", "miou", "nonsalient_recall"} <= set(m)
            assert 0 <= m["coverage"] <= 1 and 0 <= m["precision"] <= 1
        initial, pseudo = _maps_labels(run, source, names, classes)
        np.testing.assert_array_equal(load_labels(run, "initial", names, source=source), initial)
        np.testing.assert_array_equal(load_labels(run, "pseudo", names, source=source), pseudo)
        assert (run.dir / "pseudo" / source / "pseudo" / f"{names[0]}.png").is_file()
        # other maps, other labels: BE read them, not the OA-CAM
        assert (pseudo != oa).any(), source
    # the OA-CAM labels are those pseudo_labels gives on the OA-CAM; record and key untouched
    np.testing.assert_array_equal(oa, _maps_labels(run, "oacam", names, classes)[1])
    assert ensure_pseudo(run, progress=False) == rec and "source" not in rec
    assert run.record("pseudo/cam")["metrics"] != rec["metrics"]
    with pytest.raises(ValueError, match="source"):
        load_labels(run, "pseudo", names[:1], source="gradcam")
