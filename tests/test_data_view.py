"""PASCAL VOC as downloaded: each piece found where the settings say, one error for every
missing piece, and a run's view of the dataset that links the user's files (nsrom_lib.data.view)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nsrom_lib.data.view import build_view, check_sources, resolve_sources
from nsrom_lib.data.voc import DataError, VOCSegDataset, read_cls_list, read_split
from nsrom_lib.pipeline import ensure_data, open_run
from tests.test_voc import IMAGES, SEG, make_voc


def _as_downloaded(tmp_path: Path) -> dict[str, Path]:
    """The toy tree laid out as VOC + SBD + the official downloads keep it: SBD's train_aug.txt
    (its line format) and gray-folder masks in the root, saliency and class list outside."""
    root = make_voc(tmp_path / "VOCdevkit" / "VOC2012", mask_folder="SegmentationClassAug")
    split = root / SEG / "train.txt"
    (root / SEG / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in IMAGES))
    split.unlink()
    (root / SEG / "val.txt").write_text("img_a\nimg_c\n")
    shutil.move(root / "Saliency", tmp_path / "saliency_aug")
    shutil.move(root / SEG / "train_cls.txt", tmp_path / "train_cls.txt")
    return dict(root=root, saliency=tmp_path / "saliency_aug", cls=tmp_path / "train_cls.txt")


def _listing(*tops: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `tops` with its size and mtime (ns)."""
    out = {}
    for top in tops:
        for p in [top, *top.rglob("*")]:
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def test_plain_layout_needs_no_view(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    (root / SEG / "val.txt").write_text("img_a\n")
    src = resolve_sources(root)
    assert src.is_plain()
    assert src.cls_list == root / SEG / "train_cls.txt"
    assert check_sources(src, num_classes=3) == {"train": 3, "val": 1}


def test_view_reads_voc_as_downloaded(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)
    before = _listing(tmp_path / "VOCdevkit", t["saliency"], t["cls"])
    src = resolve_sources(t["root"], "train_aug", str(t["saliency"]), str(t["cls"]))
    assert not src.is_plain()
    assert check_sources(src, num_classes=3) == {"train": 3, "val": 2}
    view = build_view(src, tmp_path / "run" / "data" / "view")
    assert read_split(view, "train") == list(IMAGES)
    assert read_cls_list(view / SEG / "train_cls.txt") == IMAGES
    ds = VOCSegDataset(view, "train", num_classes=3)
    item = ds[1]
    assert item["name"] == "img_b" and item["saliency"].shape == item["mask"].shape
    assert build_view(src, view) == view  # the same sources: reused as it is
    other = resolve_sources(t["root"], "train_aug", str(t["saliency"]), None)
    build_view(other, view)  # other sources: the view is rebuilt, links removed, targets kept
    assert not (view / SEG / "train_cls.txt").exists()
    shutil.rmtree(tmp_path / "run")
    assert _listing(tmp_path / "VOCdevkit", t["saliency"], t["cls"]) == before


def test_gt_dir_elsewhere_replaces_the_root_masks(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)
    shutil.move(t["root"] / "SegmentationClassAug", tmp_path / "SegmentationClassAug")
    src = resolve_sources(t["root"], "train_aug", str(t["saliency"]), str(t["cls"]),
                          str(tmp_path / "SegmentationClassAug"))
    check_sources(src, num_classes=3)
    view = build_view(src, tmp_path / "view")
    assert os.path.realpath(view / "SegmentationClassAug") == str(tmp_path / "SegmentationClassAug")


def test_every_missing_piece_is_named_once_with_where_to_get_it(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)
    shutil.rmtree(t["root"] / "SegmentationClassAug")
    (t["root"] / SEG / "val.txt").unlink()
    src = resolve_sources(t["root"], "train_aug", None, str(tmp_path / "nope_cls.txt"))
    with pytest.raises(DataError) as e:
        check_sources(src, num_classes=3)
    msg = str(e.value)
    for says in ("val split not found", "official download", "saliency_dir",
                 "no GT mask folder", "SBD's SegmentationClassAug", "class list not found",
                 "cls_list=/path/to/train_cls.txt"):
        assert says in msg, says
    assert msg.count("\n- ") == 4  # val split, saliency, masks, class list


def test_partial_pieces_count_what_is_missing(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)
    (t["saliency"] / "img_b.png").unlink()
    (t["cls"]).write_text("img_a 0\n")
    src = resolve_sources(t["root"], "train_aug", str(t["saliency"]), str(t["cls"]))
    with pytest.raises(DataError, match=r"1 of 3 saliency maps .*img_b") as e:
        check_sources(src, num_classes=3)
    assert "2 of 3 training images in the class list" in str(e.value)
    (t["cls"]).write_text("img_a 0\nimg_b 7\nimg_c 2\n")
    (t["saliency"] / "img_b.png").write_bytes((t["saliency"] / "img_a.png").read_bytes())
    with pytest.raises(DataError, match="out of range"):
        check_sources(src, num_classes=3)


def test_a_split_file_path_and_labels_from_the_masks(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)  # the class list doubles as the split file; labels from masks
    src = resolve_sources(t["root"], str(t["cls"]), str(t["saliency"]))
    assert src.train_split == t["cls"] and src.cls_list is None
    check_sources(src, num_classes=3)
    (t["root"] / "SegmentationClassAug" / "img_c.png").unlink()
    with pytest.raises(DataError, match="1 of 3 training GT masks .* no cls_list"):
        check_sources(src, num_classes=3)


def test_run_reads_the_view_and_keys_the_settings(tmp_path: Path) -> None:
    t = _as_downloaded(tmp_path)
    settings = dict(data_root=str(t["root"]), num_classes=3, train_split="train_aug",
                    saliency_dir=str(t["saliency"]), cls_list=str(t["cls"]))
    run = open_run(tmp_path / "run", "smoke", **settings)
    root = ensure_data(run)
    assert root == run.dir / "data" / "view" and read_split(root, "train") == list(IMAGES)
    assert run.record("data")["metrics"]["images"] == {"train": 3, "val": 2}
    moved = open_run(tmp_path / "run", "smoke", **{**settings, "cls_list": None})
    assert moved.stage_key("data") != run.stage_key("data")
    with pytest.raises(DataError, match="saliency folder not found"):
        ensure_data(open_run(tmp_path / "run3", "smoke", **{**settings, "saliency_dir": None}))


def test_the_new_settings_at_their_defaults_leave_older_keys_as_they_were(tmp_path: Path) -> None:
    from nsrom_lib.pipeline import STAGE_FIELDS

    run = open_run(tmp_path / "run", "smoke")
    new = {"train_split", "saliency_dir", "cls_list", "gt_dir"}
    for stage in ("data", "seg1"):
        older = [f for f in STAGE_FIELDS[stage] if f not in new]
        assert run.stage_key(stage) == run.stage_key(stage, fields=older)
