"""The VOC-layout data layer: split and label-list files, and a torch `Dataset` over a root.

Every stage reads one on-disk layout, the PASCAL VOC 2012 one (see `data/README.md`), so
the embedded benchmark SynthVOC and real VOC 2012 (with SBD's `SegmentationClassAug` and
the user's saliency maps) go through this same code:

    <root>/JPEGImages/{name}.jpg|.jpeg|.png         RGB image
    <root>/SegmentationClass[Aug]/{name}.png        palette PNG: 0 = bg, c + 1 = class c, 255 = void
    <root>/Saliency/{name}.png                      8-bit gray saliency, 0..255
    <root>/ImageSets/Segmentation/{split}.txt       one image name per line
    <root>/ImageSets/Segmentation/{split}_cls.txt   "name c1 c2 ..." (0-based class ids)
    <root>/classes.txt                              foreground class names (optional)
    <root>/instances.json                           SynthVOC per-instance metadata (optional)

This module is the one import point for the data layer: it re-exports the PNG and
atomic-write helpers of `nsrom_lib.data.io` and the `DataError` they raise. Every problem
with the files on disk raises `DataError` with a message that names the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from nsrom_lib.data.cls_list import read_cls_list, write_cls_list  # torch-free home of both
from nsrom_lib.data.io import (
    DataError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    read_gray_png,
    read_label_png,
    read_rgb,
    save_gray_png,
    save_label_png,
    save_rgb_png,
    voc_palette,
)

__all__ = [
    "gt_mask_dir",
    # re-exported from nsrom_lib.data.io
    "DataError",
    "voc_palette",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "save_label_png",
    "save_gray_png",
    "save_rgb_png",
    "read_label_png",
    "read_gray_png",
    "read_rgb",
    # this module
    "VOC_CLASSES",
    "IGNORE_INDEX",
    "IMAGE_EXTENSIONS",
    "split_path",
    "cls_list_path",
    "read_split",
    "read_names",
    "read_cls_list",
    "write_cls_list",
    "read_class_names",
    "read_instances",
    "labels_from_mask",
    "VOCSegDataset",
    "collate",
]

log = logging.getLogger(__name__)

#: The 20 PASCAL VOC foreground classes, in id order (class c has label value c + 1).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: Label value for void / ignored pixels in masks (as in VOC).
IGNORE_INDEX = 255

#: Image file extensions looked for in `JPEGImages/`, in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

_SPLIT_DIR = Path("ImageSets") / "Segmentation"


# ----------------------------------------------------------------------------- list files


def split_path(root: str | os.PathLike, split: str) -> Path:
    """Path of the split file `<root>/ImageSets/Segmentation/{split}.txt`."""
    return Path(root) / _SPLIT_DIR / f"{split}.txt"


def cls_list_path(root: str | os.PathLike, split: str) -> Path:
    """Path of the image-level label file `<root>/ImageSets/Segmentation/{split}_cls.txt`."""
    return Path(root) / _SPLIT_DIR / f"{split}_cls.txt"


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(
            f"dataset root not found: {root}. Pass the folder that holds JPEGImages/ and "
            "ImageSets/ (e.g. data/synthvoc-default, or VOCdevkit/VOC2012), or generate "
            "SynthVOC with `python -m nsrom_lib data synthvoc --out DIR`."
        )


def gt_mask_dir(root: str | os.PathLike) -> Path:
    """The folder of GT masks under a VOC-layout root: `SegmentationClassAug/` (SBD, the
    reference's training masks) when it exists, else `SegmentationClass/`."""
    aug = Path(root) / "SegmentationClassAug"
    return aug if aug.is_dir() else Path(root) / "SegmentationClass"


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Read the image names of `split` from `<root>/ImageSets/Segmentation/{split}.txt`.

    One name per line; blank lines are ignored. Lines in SBD's `train_aug.txt` style
    (`/JPEGImages/x.jpg /SegmentationClassAug/x.png`) are accepted too: the first token's
    file stem is the name. Returns the names in file order (duplicates are an error).
    """
    root = Path(root)
    _check_root(root)
    path = split_path(root, split)
    if not (root / _SPLIT_DIR).is_dir():
        raise DataError(
            f"{root} is not a VOC-layout dataset root: {root / _SPLIT_DIR} is missing. Pass the "
            "folder that holds JPEGImages/ and ImageSets/Segmentation/ (e.g. VOCdevkit/VOC2012), "
            "or generate SynthVOC with `python -m nsrom_lib data synthvoc --out DIR`."
        )
    if not path.is_file():
        found = sorted(
            p.stem for p in (root / _SPLIT_DIR).glob("*.txt") if not p.stem.endswith("_cls")
        )
        raise DataError(
            f"split file not found: {path}. Splits present in {root / _SPLIT_DIR}: "
            f"{found or 'none'}. Pick one of them, or write {path.name} with one image name per line."
        )
    return read_names(path)


def read_names(path: str | os.PathLike) -> list[str]:
    """The image names of a list file, one per line: the first token, or its file stem in
    SBD's `train_aug.txt` style (`/JPEGImages/x.jpg ...`), so a `train_cls.txt` is a list
    file too. Blank lines are skipped; a name listed twice or an empty list is a DataError."""
    path = Path(path)
    names: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        name = Path(tokens[0]).stem if "/" in tokens[0] else tokens[0]
        if name in seen:
            raise DataError(
                f"{path}:{lineno}: image {name!r} is listed twice. Remove the duplicate line."
            )
        seen.add(name)
        names.append(name)
    if not names:
        raise DataError(f"split file {path} is empty: it must list at least one image name.")
    return names


def read_class_names(root: str | os.PathLike) -> list[str]:
    """Foreground class names from `<root>/classes.txt` (one per line), else VOC's 20."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(
            f"{path} is empty: list the foreground class names, one per line, or delete it."
        )
    if len(set(names)) != len(names):
        raise DataError(f"{path} lists a class name twice: each class must appear once.")
    return names


def read_instances(root: str | os.PathLike) -> dict[str, list[dict[str, Any]]] | None:
    """Per-image instance metadata from `<root>/instances.json` (SynthVOC), or None if absent.

    Returns {name: [{"id", "class", "salient", "area", "bbox", ...}, ...]}.
    """
    path = Path(root) / "instances.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot parse {path}: {e}. Regenerate the dataset (or delete the file)."
        ) from e
    if not isinstance(data, dict):
        raise DataError(
            f"{path} must hold a JSON object {{name: [instance, ...]}}, got {type(data).__name__}."
        )
    return data


def labels_from_mask(mask: np.ndarray, num_classes: int) -> list[int]:
    """Image-level class ids present in a GT mask: the unique values 1..C, minus 1.

    mask: (H, W) integer label map (0 = background, c + 1 = class c, 255 = void).
    Returns sorted 0-based foreground class ids.
    """
    values = np.unique(mask)
    return [int(v) - 1 for v in values if 1 <= v <= num_classes]


# ----------------------------------------------------------------------------- dataset


def _index_folder(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Map file stem -> path for the files in `folder` with one of `extensions` (first wins)."""
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext in extensions:
                rank = extensions.index(ext)
                if stem not in found or rank < found[stem][0]:
                    found[stem] = (rank, Path(entry.path))
    return {stem: p for stem, (_, p) in found.items()}


class VOCSegDataset(Dataset):
    """Images, image-level labels, saliency and (optionally) GT masks of one split of a VOC root.

    Where things come from:
      - images: `JPEGImages/{name}.jpg|.jpeg|.png`;
      - saliency: `saliency_dir/{name}.png` (default `<root>/Saliency`), when `with_saliency`;
      - masks: `mask_dir` if given, else `SegmentationClassAug/` when present, else
        `SegmentationClass/`. `with_mask="auto"` returns masks when that folder holds one
        for every image of the split; True requires them; False never returns them;
      - image-level labels, first found of: `cls_list` (a path or a {name: ids} mapping);
        `ImageSets/Segmentation/{split}_cls.txt`; else **derived from the GT mask** (its
        unique values 1..C, minus 1; void 255 and background 0 are not classes). Derived
        labels need the masks (they are read even when `with_mask=False`).

    With `validate=True` the construction checks what is cheap (folders and files exist,
    label lists cover the split, class ids in range) without decoding any image;
    `__getitem__` checks sizes, mask values and decoding; `check()` decodes everything.

    Item `i` is a dict:
      name: str; index: int;
      image: (3, H, W) float32 in 0..1 (before `transform`);
      label: (C,) float32 multi-hot image-level labels;
      saliency: (H, W) uint8 0..255 (when `with_saliency`);
      mask: (H, W) int64, 0 = background, c + 1 = class c, 255 = void (when masks are used).
    `transform` (e.g. `transforms.Compose([...])`) maps that dict to a dict.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_classes: int | None = None,
        saliency_dir: str | os.PathLike | None = None,
        cls_list: str | os.PathLike | Mapping[str, Iterable[int]] | None = None,
        mask_dir: str | os.PathLike | None = None,
        with_saliency: bool = True,
        with_mask: bool | str = "auto",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        validate: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.with_saliency = with_saliency
        if with_mask not in (True, False, "auto"):
            raise ValueError(f"with_mask must be True, False or 'auto', got {with_mask!r}")

        _check_root(self.root)
        self.names: list[str] = read_split(self.root, split)
        self.num_classes, self.class_names = self._classes(num_classes)
        # images: one directory listing, no decoding
        self.image_dir = self.root / "JPEGImages"
        if not self.image_dir.is_dir():
            raise DataError(
                f"image folder not found: {self.image_dir}. A VOC root holds JPEGImages/."
            )
        self._images = _index_folder(self.image_dir, IMAGE_EXTENSIONS)
        self._find_saliency(saliency_dir)
        masks_complete = self._find_masks(mask_dir)
        self._find_labels(cls_list, validate)
        self._decide_masks(with_mask, masks_complete)
        if validate:
            self._validate_files()

    # -- construction steps -------------------------------------------------------------

    def _classes(self, num_classes: int | None) -> tuple[int, list[str]]:
        """classes.txt (or VOC's 20 names) and num_classes must agree."""
        names = read_class_names(self.root)
        if num_classes is None:
            num_classes = len(names)
        elif num_classes != len(names):
            if (self.root / "classes.txt").is_file():
                raise DataError(
                    f"num_classes={num_classes} but {self.root / 'classes.txt'} lists {len(names)} "
                    "classes. Leave num_classes unset, or fix classes.txt."
                )
            names = [f"class_{c}" for c in range(num_classes)]
        if num_classes < 1 or num_classes > 254:
            raise ValueError(
                f"num_classes must lie in 1..254 (label PNGs are 8-bit), got {num_classes}"
            )
        return num_classes, names

    def _find_saliency(self, saliency_dir: str | os.PathLike | None) -> None:
        self.saliency_dir: Path | None = None
        self._saliency: dict[str, Path] = {}
        if not self.with_saliency:
            return
        self.saliency_dir = (
            Path(saliency_dir) if saliency_dir is not None else self.root / "Saliency"
        )
        if not self.saliency_dir.is_dir():
            raise DataError(
                f"saliency folder not found: {self.saliency_dir}. Put 8-bit gray saliency PNGs "
                "there, pass saliency_dir=..., or with_saliency=False."
            )
        self._saliency = _index_folder(self.saliency_dir, (".png",))

    def _find_masks(self, mask_dir: str | os.PathLike | None) -> bool:
        """Index the GT mask folder; True when it holds a mask for every image of the split."""
        self.mask_dir: Path = Path(mask_dir) if mask_dir is not None else gt_mask_dir(self.root)
        self._masks: dict[str, Path] = {}
        if not self.mask_dir.is_dir():
            return False
        self._masks = _index_folder(self.mask_dir, (".png",))
        return all(n in self._masks for n in self.names)

    def _find_labels(self, cls_list, validate: bool) -> None:
        """Image-level labels: a mapping, a class-list file, or (neither) the GT masks."""
        self._labels: dict[str, list[int]] | None
        if cls_list is not None and not isinstance(cls_list, (str, os.PathLike)):
            self._labels = {str(k): sorted({int(c) for c in v}) for k, v in cls_list.items()}
            self.label_source = "cls_list"
            self._labels_origin = "the cls_list mapping"
            return
        path = Path(cls_list) if cls_list is not None else cls_list_path(self.root, self.split)
        if cls_list is not None or path.is_file():
            self._labels = read_cls_list(path, self.num_classes if validate else None)
            self.label_source = "cls_list" if cls_list is not None else "cls_file"
            self._labels_origin = str(path)
        else:
            self._labels = None
            self.label_source = "mask"
            self._labels_origin = f"masks in {self.mask_dir}"

    def _decide_masks(self, with_mask: bool | str, masks_complete: bool) -> None:
        """Whether items carry masks, and whether the masks must be there (labels from masks)."""
        if with_mask == "auto":
            self.with_mask = masks_complete
            if self._masks and not masks_complete:
                log.warning(
                    "%s holds masks for only some images of split %r: masks are not returned",
                    self.mask_dir,
                    self.split,
                )
        else:
            self.with_mask = bool(with_mask)
        self._need_mask = self.with_mask or self.label_source == "mask"
        if self._need_mask and not self.mask_dir.is_dir():
            why = (
                f"{cls_list_path(self.root, self.split)} is absent, so image-level labels come from the GT masks"
                if self.label_source == "mask"
                else "with_mask=True"
            )
            raise DataError(
                f"mask folder not found: {self.mask_dir} ({why}). Provide the masks, pass mask_dir=..., "
                f"or write {cls_list_path(self.root, self.split)} (train_cls.txt format)."
            )

    # -- cheap checks -----------------------------------------------------------------

    def _validate_files(self) -> None:
        """Check that every file of the split exists and the label lists are in range."""
        for name in self.names:
            self._image_path(name)
            if self.with_saliency:
                self._saliency_path(name)
            if self._need_mask:
                self._mask_path(name)
            if self._labels is not None:
                self._label_ids(name)

    def _image_path(self, name: str) -> Path:
        path = self._images.get(name)
        if path is None:
            raise DataError(
                f"image {name!r} listed in {split_path(self.root, self.split)} has no file "
                f"{self.image_dir / name}.jpg|.jpeg|.png. Add the image or remove the name from the split."
            )
        return path

    def _saliency_path(self, name: str) -> Path:
        path = self._saliency.get(name)
        if path is None:
            raise DataError(
                f"saliency map missing for image {name!r}: {self.saliency_dir / (name + '.png')} "
                "not found. Compute saliency for every image of the split, or pass with_saliency=False."
            )
        return path

    def _mask_path(self, name: str) -> Path:
        path = self._masks.get(name)
        if path is None:
            raise DataError(
                f"GT mask missing for image {name!r}: {self.mask_dir / (name + '.png')} not found. "
                "Add it, pass with_mask=False, or provide an image-level label list (cls_list)."
            )
        return path

    def _label_ids(self, name: str) -> list[int]:
        if self._labels is None:
            raise RuntimeError("labels come from the masks")  # internal misuse only
        ids = self._labels.get(name)
        if ids is None:
            raise DataError(
                f"image {name!r} of split {self.split!r} has no entry in {self._labels_origin}. "
                "Add a line 'name c1 c2 ...' for it."
            )
        bad = [c for c in ids if c < 0 or c >= self.num_classes]
        if bad:
            raise DataError(
                f"class id(s) {bad} for image {name!r} in {self._labels_origin} are out of range "
                f"0..{self.num_classes - 1} (num_classes={self.num_classes}). Fix the label list or num_classes."
            )
        return ids

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def get_raw(self, i: int) -> dict[str, Any]:
        """Item `i` as untransformed numpy arrays, for notebooks and figures.

        Returns {"name", "index", "image": (H, W, 3) uint8, "label_ids": list[int],
        "label": (C,) float32 multi-hot, "saliency": (H, W) uint8 (if with_saliency),
        "mask": (H, W) uint8 raw label ids, 255 = void (if masks are used)}.
        Raises DataError naming the file on a missing, corrupt or mis-sized file.
        """
        if not -len(self) <= i < len(self):
            raise IndexError(
                f"index {i} out of range for split {self.split!r} of {len(self)} images"
            )
        i = i % len(self)
        name = self.names[i]
        image = read_rgb(self._image_path(name), "image")
        H, W = image.shape[:2]
        out: dict[str, Any] = {"name": name, "index": i, "image": image}

        if self.with_saliency:
            path = self._saliency_path(name)
            sal = read_gray_png(path, "saliency map")
            self._check_size(sal, (H, W), path, "saliency map")
            out["saliency"] = sal

        mask = None
        if self._need_mask:
            path = self._mask_path(name)
            mask = read_label_png(path, "GT mask")
            self._check_size(mask, (H, W), path, "GT mask")
            bad = np.setdiff1d(
                np.unique(mask), np.r_[np.arange(self.num_classes + 1), IGNORE_INDEX]
            )
            if bad.size:
                raise DataError(
                    f"GT mask {path} has label values {bad.tolist()} outside 0..{self.num_classes} and "
                    f"{IGNORE_INDEX} (num_classes={self.num_classes}). Check the mask or num_classes / classes.txt."
                )
            if self.with_mask:
                out["mask"] = mask

        ids = (
            labels_from_mask(mask, self.num_classes)
            if self._labels is None
            else self._label_ids(name)
        )
        label = np.zeros(self.num_classes, dtype=np.float32)
        label[ids] = 1.0
        out["label_ids"] = list(ids)
        out["label"] = label
        return out

    def read_image(self, i: int) -> np.ndarray:
        """Image `i` alone, (H, W, 3) uint8 RGB: what `get_raw` returns as "image", without
        reading the image's other files."""
        return read_rgb(self._image_path(self.names[i]), "image")

    def image_shape(self, i: int) -> tuple[int, int]:
        """(H, W) of image `i`, from its file's header (no decoding)."""
        path = self._image_path(self.names[i])
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(
                f"cannot read image {path}: {e}. The file is corrupt or truncated; "
                "regenerate or re-download it."
            ) from e
        return h, w

    @staticmethod
    def _check_size(arr: np.ndarray, hw: tuple[int, int], path: Path, what: str) -> None:
        if arr.shape[:2] != hw:
            raise DataError(
                f"{what} {path} is {arr.shape[0]}x{arr.shape[1]} (HxW) but its image is "
                f"{hw[0]}x{hw[1]}. It must have the image's size: regenerate it for this image."
            )

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item `i` as tensors (see the class docstring), after `transform`."""
        raw = self.get_raw(i)
        sample: dict[str, Any] = {
            "name": raw["name"],
            # (H, W, 3) uint8 -> (3, H, W) float32 in 0..1
            "image": torch.from_numpy(raw["image"]).permute(2, 0, 1).float().div_(255.0),
            "label": torch.from_numpy(raw["label"]),
            "index": raw["index"],
        }
        if "saliency" in raw:
            sample["saliency"] = torch.from_numpy(raw["saliency"])  # (H, W) uint8
        if "mask" in raw:
            sample["mask"] = torch.from_numpy(raw["mask"]).long()  # (H, W) int64
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    # -- whole-split helpers ----------------------------------------------------------

    def label_ids(self, i: int) -> list[int]:
        """0-based class ids of image `i` (reads its mask when labels come from masks)."""
        name = self.names[i]
        if self._labels is not None:
            return list(self._label_ids(name))
        path = self._mask_path(name)
        return labels_from_mask(read_label_png(path, "GT mask"), self.num_classes)

    def cls_list(self) -> dict[str, list[int]]:
        """{name: class ids} for the whole split (decodes every mask when labels come from masks).

        Write it with `write_cls_list(path, ds.cls_list())` to cache derived labels.
        """
        return {name: self.label_ids(i) for i, name in enumerate(self.names)}

    def check(self, progress: bool = False) -> int:
        """Decode and validate every item; raise DataError on the first problem (names the file).

        progress: show a tqdm progress bar. Returns the number of items checked.
        """
        indices: Iterable[int] = range(len(self))
        if progress:
            from nsrom_lib.progress import progress_bar as tqdm

            indices = tqdm(indices, desc=f"checking {self.root.name}/{self.split}", unit="img")
        for i in indices:
            self.get_raw(i)
        log.info("checked %d images of %s split %r", len(self), self.root, self.split)
        return len(self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"C={self.num_classes}, labels from {self.label_source}, saliency={self.with_saliency}, "
            f"mask={self.with_mask})"
        )


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items for a DataLoader: stack tensors, keep names (and other values) as lists.

    batch: list of B item dicts. Returns image (B, 3, H, W), label (B, C), saliency (B, H, W),
    mask (B, H, W), index (B,) int64, name: list of B str.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot stack {key!r}: items have different shapes {sorted(shapes)}. "
                    "Add a Resize or RandomScaleCrop transform, or use batch_size=1."
                )
            out[key] = torch.stack(values)
        elif isinstance(first, int) and not isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out
