"""A dataset as its user keeps it, read through the one VOC layout: check each piece, then link.

Every stage reads the layout of `nsrom_lib.data.voc` (images, masks, saliency and list files
under one root). PASCAL VOC as downloaded keeps its pieces in several places: the images, VOC's
own masks and splits in `VOCdevkit/VOC2012`; SBD's gray `SegmentationClassAug` masks and its
`train_aug.txt`; the saliency maps of the official download and the image-level label list
`train_cls.txt` wherever they were unpacked. Here:

- `resolve_sources` says where each piece is: where the layout puts it, unless a setting
  (`train_split`, `saliency_dir`, `cls_list`, `gt_dir`) names another place;
- `check_sources` looks for every piece at once and raises one `DataError` that lists each
  missing one and where users get it;
- `build_view` gives a run a folder in the VOC layout made of symbolic links to those pieces.

Nothing here writes into the dataset's folders: a view only holds links and its own manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from nsrom_lib.data.cls_list import read_cls_list
from nsrom_lib.data.io import DataError, atomic_write_json
from nsrom_lib.data.voc import (
    _SPLIT_DIR,
    IMAGE_EXTENSIONS,
    _index_folder,
    cls_list_path,
    gt_mask_dir,
    read_names,
    split_path,
)

__all__ = ["DataSources", "resolve_sources", "check_sources", "build_view", "WHERE_TO_GET"]

#: Where a user gets each piece of PASCAL VOC for this method, for the error messages.
WHERE_TO_GET: dict[str, str] = {
    "images": "PASCAL VOC 2012's JPEGImages/ (VOCtrainval_11-May-2012.tar); data_root must be "
              "the folder that holds it, e.g. VOCdevkit/VOC2012",
    "train_split": "SBD's train_aug.txt (10,582 images, shipped with SegmentationClassAug): put it "
                   "in ImageSets/Segmentation/ or pass --set train_split=/path/to/train_aug.txt "
                   "(any list whose first column is the image name works, train_cls.txt too)",
    "val_split": "VOC 2012's ImageSets/Segmentation/val.txt (part of VOCtrainval_11-May-2012.tar)",
    "gt_dir": "SBD's SegmentationClassAug/ (8-bit gray label PNGs) inside data_root, or pass "
              "--set gt_dir=/path/to/SegmentationClassAug; VOC 2012's own SegmentationClass/ "
              "also works for the val images",
    "saliency_dir": "the saliency maps of the official download (a folder of 8-bit gray PNGs, e.g. "
                    "saliency_aug/): pass --set saliency_dir=/path/to/saliency_aug, or compute "
                    "classical ones with `nsrom data saliency --images ROOT/JPEGImages --out DIR`",
    "labels_from_masks": "the official train_cls.txt ('name c1 c2 ...', 0-based class ids): "
                         "pass --set cls_list=/path/to/train_cls.txt; or SBD's "
                         "SegmentationClassAug/, whose masks cover the train_aug images",
    "cls_list": "the official train_cls.txt ('name c1 c2 ...', 0-based class ids): pass --set "
                "cls_list=/path/to/train_cls.txt, or leave cls_list unset to take the labels from "
                "GT masks that cover the training split",
}


@dataclass(frozen=True)
class DataSources:
    """Where each piece of a dataset is (absolute paths).

    root: the dataset root (images, `ImageSets/Segmentation/val.txt`); train_split: the list
    file of the training images; saliency_dir: their saliency maps; cls_list: their image-level
    labels, or None to take them from the GT masks; gt_dir: the GT masks (None: none found).
    """

    root: Path
    train_split: Path
    saliency_dir: Path
    cls_list: Path | None
    gt_dir: Path | None

    def is_plain(self) -> bool:
        """True when every piece lies where the VOC layout puts it: no view is needed."""
        return (self.train_split == split_path(self.root, "train")
                and self.saliency_dir == self.root / "Saliency"
                and self.cls_list in (None, cls_list_path(self.root, "train"))
                and self.gt_dir in (None, gt_mask_dir(self.root)))

    def to_dict(self) -> dict[str, str | None]:
        return {k: (None if v is None else str(v)) for k, v in asdict(self).items()}


def _path(value: str | os.PathLike) -> Path:
    return Path(value).expanduser().resolve()


def resolve_sources(root: str | os.PathLike, train_split: str = "train",
                    saliency_dir: str | None = None, cls_list: str | None = None,
                    gt_dir: str | None = None) -> DataSources:
    """Where each piece of the dataset at `root` is, from the settings of the same names.

    train_split: a split name (`ImageSets/Segmentation/<name>.txt`) or the path of a list file.
    saliency_dir: default `<root>/Saliency`. cls_list: default
    `ImageSets/Segmentation/<split>_cls.txt` when that file exists, else None (labels from the
    masks). gt_dir: default `SegmentationClassAug/`, else `SegmentationClass/`, when present.
    Nothing is checked here (`check_sources` does).
    """
    root = _path(root)
    is_file = "/" in train_split or train_split.endswith(".txt")
    split = _path(train_split) if is_file else split_path(root, train_split)
    if cls_list is not None:
        labels: Path | None = _path(cls_list)
    else:
        default = None if is_file else cls_list_path(root, train_split)
        labels = default if default is not None and default.is_file() else None
    if gt_dir is not None:
        masks: Path | None = _path(gt_dir)
    else:
        masks = gt_mask_dir(root) if gt_mask_dir(root).is_dir() else None
    return DataSources(root=root, train_split=split,
                       saliency_dir=_path(saliency_dir) if saliency_dir else root / "Saliency",
                       cls_list=labels, gt_dir=masks)


def _missing(names: list[str], present: set[str] | dict[str, object], what: str) -> str | None:
    """'k of n <what> missing (e.g. a, b, c)', or None when every name is present."""
    lost = [n for n in names if n not in present]
    if not lost:
        return None
    return f"{len(lost)} of {len(names)} {what} missing (e.g. {', '.join(lost[:3])})"


def _stems(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return _index_folder(folder, extensions) if folder.is_dir() else {}


def check_sources(src: DataSources, num_classes: int | None = None) -> dict[str, int]:
    """Look for every piece of `src`; raise one DataError listing each missing one.

    Checks the image folder, both split files, the saliency maps and the image-level labels of
    every training image, and the GT masks of every val image. Each problem names the setting
    that moves it and where the piece comes from (`WHERE_TO_GET`). Decodes no image.
    Returns the image counts {"train": n, "val": m}.
    """
    problems: list[str] = []

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            problems.append(f"- {what}. Get it from {WHERE_TO_GET[key]}.")

    images = src.root / "JPEGImages"
    need(images.is_dir(), "images", f"image folder not found: {images}")
    train = val = []
    if src.train_split.is_file():
        train = read_names(src.train_split)
    else:
        need(False, "train_split", f"training split not found: {src.train_split} (train_split)")
    val_file = split_path(src.root, "val")
    if val_file.is_file():
        val = read_names(val_file)
    else:
        need(False, "val_split", f"val split not found: {val_file}")
    if images.is_dir():
        found = _index_folder(images, IMAGE_EXTENSIONS)
        for names, split in ((train, "training"), (val, "val")):
            lost = _missing(names, found, f"{split} images in {images}")
            need(lost is None, "images", str(lost))
    if not src.saliency_dir.is_dir():
        need(False, "saliency_dir", f"saliency folder not found: {src.saliency_dir} (saliency_dir)")
    else:
        lost = _missing(train, _stems(src.saliency_dir, (".png",)),
                        f"saliency maps (.png) in {src.saliency_dir} (saliency_dir)")
        need(lost is None, "saliency_dir", str(lost))
    masks = _stems(src.gt_dir, (".png",)) if src.gt_dir is not None else {}
    if src.gt_dir is None:
        need(False, "gt_dir", f"no GT mask folder: neither {src.root / 'SegmentationClassAug'} "
                              f"nor {src.root / 'SegmentationClass'} exists (gt_dir)")
    elif not src.gt_dir.is_dir():
        need(False, "gt_dir", f"GT mask folder not found: {src.gt_dir} (gt_dir)")
    else:
        lost = _missing(val, masks, f"val GT masks in {src.gt_dir} (gt_dir; every mIoU is "
                                    "measured on them, listed in ImageSets/Segmentation/val.txt)")
        need(lost is None, "gt_dir", str(lost))
    if src.cls_list is not None:
        if src.cls_list.is_file():
            lost = _missing(train, read_cls_list(src.cls_list, num_classes),
                            f"training images in the class list {src.cls_list} (cls_list)")
            need(lost is None, "cls_list", str(lost))
        else:
            need(False, "cls_list", f"class list not found: {src.cls_list} (cls_list)")
    elif src.gt_dir is not None and src.gt_dir.is_dir():
        lost = _missing(train, masks, f"training GT masks in {src.gt_dir}")
        need(lost is None, "labels_from_masks",
             f"{lost}: with no cls_list, the image-level labels come from these masks")
    if problems:
        raise DataError(f"the dataset at {src.root} is not complete:\n" + "\n".join(problems))
    return {"train": len(train), "val": len(val)}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link, target_is_directory=target.is_dir())


def build_view(src: DataSources, view: Path) -> Path:
    """A folder at `view` in the VOC layout whose entries link to the pieces of `src`.

    The root's own entries are linked as they are, except the ones a setting moved: `Saliency`
    links to `saliency_dir`; with `gt_dir` set, `SegmentationClassAug` links to it (and VOC's
    `SegmentationClass` is left out); `ImageSets/Segmentation/train.txt` and `train_cls.txt`
    link to the training split and the class list. A view whose manifest (`view.json`) matches
    `src` is reused; any other is replaced (its links are removed, never what they point to).
    Returns `view`.
    """
    manifest = view / "view.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == src.to_dict():
        return view
    tmp = view.with_name(f"{view.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # links only: rmtree does not follow them
    moved = {"Saliency", "ImageSets"}
    if src.gt_dir is not None and src.gt_dir != gt_mask_dir(src.root):
        moved |= {"SegmentationClassAug", "SegmentationClass"}
        _link(src.gt_dir, tmp / "SegmentationClassAug")
    for entry in sorted(src.root.iterdir()):
        if entry.name not in moved:
            _link(entry, tmp / entry.name)
    _link(src.saliency_dir, tmp / "Saliency")
    lists = src.root / _SPLIT_DIR
    if lists.is_dir():
        for entry in sorted(lists.iterdir()):
            if entry.name not in ("train.txt", "train_cls.txt"):
                _link(entry, tmp / _SPLIT_DIR / entry.name)
    _link(src.train_split, split_path(tmp, "train"))
    if src.cls_list is not None:
        _link(src.cls_list, cls_list_path(tmp, "train"))
    atomic_write_json(tmp / "view.json", src.to_dict())
    shutil.rmtree(view, ignore_errors=True)
    try:
        os.replace(tmp, view)
    except OSError:  # another process put its view there meanwhile: keep it if it is this one
        shutil.rmtree(tmp, ignore_errors=True)
        if not (manifest.is_file() and json.loads(manifest.read_text()) == src.to_dict()):
            raise
    return view
