"""SynthVOC: layout, determinism, and the phenomena it is built to have, measured on `quick`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from nsrom_lib.config import make_config
from nsrom_lib.data.stats import colour_baseline, dataset_statistics, load_split_arrays
from nsrom_lib.data.synthvoc import (
    SynthVOCConfig,
    generate_synthvoc,
    render_scene,
    synthvoc_is_complete,
)
from nsrom_lib.data.voc import VOCSegDataset, read_cls_list, read_split
from nsrom_lib.pipeline import synthvoc_config_for


@pytest.fixture(scope="module")
def quick_stats(quick_synthvoc):
    train = load_split_arrays(quick_synthvoc, "train")
    val = load_split_arrays(quick_synthvoc, "val")
    return train, val, dataset_statistics(train, 6), dataset_statistics(val, 6)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_voc_and_readable(quick_synthvoc):
    root = quick_synthvoc
    assert len(read_split(root, "train")) == 400 and len(read_split(root, "val")) == 100
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Saliency"):
        assert len(list((root / sub).glob("*.png"))) == 500, sub
    ds = VOCSegDataset(root, "val", with_mask=True)
    assert ds.num_classes == 6 and ds.label_source == "cls_file"
    assert ds.check() == 100  # every file decodes, sizes and label values are valid
    item = ds[0]
    assert item["image"].shape == (3, 96, 96) and item["mask"].shape == (96, 96)
    # image-level labels equal the classes present in the GT mask
    cls = read_cls_list(root / "ImageSets/Segmentation/val_cls.txt")
    for i in range(20):
        raw = ds.get_raw(i)
        present = sorted(set(np.unique(raw["mask"]).tolist()) - {0, 255})
        assert [c - 1 for c in present] == cls[raw["name"]]


def test_instances_match_masks(quick_stats):
    train = quick_stats[0]
    for i in range(50):
        for o in train["objects"][i]:
            px = train["instances"][i] == o["id"]
            assert px.sum() == o["area"] > 0
            assert (train["mask"][i][px] == o["class"] + 1).all()


def test_multi_label_and_balance(quick_stats):
    _, _, s, _ = quick_stats
    print("quick train statistics:", json.dumps(s))
    assert s["multi_class_share"] >= 0.40
    share = np.array(s["class_share"])
    assert share.min() >= 0.5 * share.mean()


def test_saliency_covers_salient_and_misses_nonsalient(quick_stats):
    _, _, s, sv = quick_stats
    for st in (s, sv):
        assert st["salient_instances"] > 0 and st["nonsalient_instances"] > 0
        assert st["salient_coverage"] >= 0.8
        assert st["nonsalient_coverage"] <= 0.3
        # NSRM's object mask is sal != 0: background must be exactly 0 almost everywhere
        assert st["bg_saliency_nonzero"] <= 0.1
        # salient objects are large, non-salient ones small
        assert st["salient_area_px"] > 2 * st["nonsalient_area_px"]


def test_not_solvable_by_colour(quick_stats):
    train, val, _, _ = quick_stats
    base = colour_baseline(train, val, 6)
    print(f"colour-only baseline val mIoU {base['miou']:.3f}")
    assert base["miou"] < 0.35
    # every foreground class is poorly separated by colour
    assert max(base["iou"][1:]) < 0.4


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    """Every file of two builds is identical, metadata (synthvoc.json) included."""
    cfg = synthvoc_config_for(make_config("smoke"))
    a, b = tmp_path / "a", tmp_path / "b"
    generate_synthvoc(a, cfg, progress=False, workers=1)
    generate_synthvoc(b, cfg, progress=False, workers=2)
    files = _digest(a)
    assert "synthvoc.json" in files and "instances.json" in files and len(files) > 4 * 64
    assert files == _digest(b)
    # nothing of the build itself in the metadata: no timing, no folder
    meta = (a / "synthvoc.json").read_text()
    assert "seconds" not in meta and str(a) not in meta and str(tmp_path) not in meta
    other = synthvoc_config_for(make_config("smoke", seed=1))
    generate_synthvoc(tmp_path / "c", other, progress=False)
    assert _digest(a) != _digest(tmp_path / "c")


def test_generation_time_goes_to_the_data_record(tmp_path, monkeypatch):
    from nsrom_lib.pipeline import ensure_data, open_run

    monkeypatch.setenv("NSROM_DATA_DIR", str(tmp_path / "data"))
    run = open_run(tmp_path / "run", "smoke")
    root = ensure_data(run, progress=False)
    assert run.record("data")["metrics"]["generate_seconds"] > 0
    assert "seconds" not in json.loads((root / "synthvoc.json").read_text())
    # a second run finds the folder complete: nothing generated, nothing timed
    other = open_run(tmp_path / "run2", "smoke")
    assert ensure_data(other, progress=False) == root
    assert other.record("data")["metrics"]["generate_seconds"] == 0.0


def test_images_do_not_depend_on_dataset_size():
    cfg = SynthVOCConfig(image_size=64, n_train=5, n_val=1)
    big = SynthVOCConfig(image_size=64, n_train=50, n_val=9)
    for i in range(3):
        s1 = render_scene(cfg, np.random.default_rng(np.random.SeedSequence([0, i])))
        s2 = render_scene(big, np.random.default_rng(np.random.SeedSequence([0, i])))
        assert np.array_equal(s1["image"], s2["image"])


def test_interrupted_generation_is_redone_and_complete_is_reused(tmp_path):
    cfg = synthvoc_config_for(make_config("smoke"))
    root = tmp_path / "d"
    generate_synthvoc(root, cfg, progress=False)
    assert synthvoc_is_complete(root, cfg)
    stamp = (root / "synthvoc.json").stat().st_mtime_ns
    generate_synthvoc(root, cfg, progress=False)  # complete: nothing rewritten
    assert (root / "synthvoc.json").stat().st_mtime_ns == stamp
    # simulate an interruption: the completion file is missing and an image is half-written
    (root / "synthvoc.json").unlink()
    victim = root / "JPEGImages" / "train_00003.png"
    victim.write_bytes(victim.read_bytes()[:40])
    assert not synthvoc_is_complete(root, cfg)
    generate_synthvoc(root, cfg, progress=False)
    assert synthvoc_is_complete(root, cfg)
    VOCSegDataset(root, "train").check()
    # another configuration is not mistaken for this one
    assert not synthvoc_is_complete(root, SynthVOCConfig(image_size=64, n_train=48, n_val=16, seed=3))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_classes"):
        SynthVOCConfig(num_classes=99)
    with pytest.raises(ValueError, match="image_size"):
        SynthVOCConfig(image_size=8)
