"""The images and label maps of a split, read when an item is asked for.

The training and prediction loops (`nsrom_lib.loop`) read these `Dataset`s batch by batch
through a torch `DataLoader`, so no stage holds a whole split's images or labels: PASCAL VOC's
10,582 training images at 321 px would take several GB.

- `load_split`: what a stage keeps of a split (names, image-level labels, original sizes: a few
  numbers per image) and its images as a `SplitImages`.
- `SplitImages`: item i is image i, decoded and resized to the training size.
- `LabelFiles`: item i is the label PNG i, resized (nearest) to the training size.
- `load_split_tensors`: the images of a split stacked into one tensor, for figures and
  benchmarks on a few hundred images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from nsrom_lib.data.io import read_label_png
from nsrom_lib.data.transforms import Resize
from nsrom_lib.data.voc import VOCSegDataset

__all__ = ["SplitImages", "LabelFiles", "load_split", "load_split_tensors"]


class SplitImages(Dataset):
    """The images of one split of a VOC-layout root, decoded (and resized) when read.

    dataset: the split (`VOCSegDataset`); image_size: the square side S every image is resized
    to (bilinear with antialiasing, on 0..1 floats, rounded back to uint8), or None to keep
    each image's size. Item i: (3, S, S) uint8.
    """

    def __init__(self, dataset: VOCSegDataset, image_size: int | None = None) -> None:
        self.dataset = dataset
        self.resize = Resize(image_size) if image_size else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tensor:
        img = torch.from_numpy(self.dataset.read_image(i)).permute(2, 0, 1)  # (3, H, W) uint8
        if self.resize is not None and tuple(img.shape[-2:]) != self.resize.size:
            # Resize works on float images in 0..1: (3, H, W) -> (3, S, S)
            img = self.resize({"image": img.float() / 255})["image"].mul(255).round().clamp(0, 255)
            img = img.to(torch.uint8)
        return img

    def __repr__(self) -> str:
        size = self.resize.size if self.resize is not None else "own size"
        return f"SplitImages({self.dataset.root}, {self.dataset.split!r}, n={len(self)}, {size})"


class LabelFiles(Dataset):
    """Label maps read from PNG files when read: item i is (S, S) uint8, file i resized to
    `size` with nearest neighbour (at its own size with size None).

    paths: one PNG per image, in split order (0 background, c + 1 class c, 255 ignore);
    what: how errors name the files (e.g. "GT mask", "pseudo label").
    """

    def __init__(self, paths: Sequence[str | os.PathLike], size: tuple[int, int] | None = None,
                 what: str = "label") -> None:
        self.paths = [Path(p) for p in paths]
        self.size = tuple(size) if size is not None else None
        self.what = what

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        t = torch.from_numpy(read_label_png(self.paths[i], self.what))  # (H, W) uint8
        if self.size is not None and tuple(t.shape) != self.size:
            t = F.interpolate(t[None, None].float(), size=self.size, mode="nearest")[0, 0]
            t = t.to(torch.uint8)
        return t


def load_split(
    root: str | os.PathLike, split: str, num_classes: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """A split for training or prediction, its images read on demand.

    root: a VOC-layout folder; split: e.g. "train" or "val"; num_classes: C (None: from
    classes.txt); image_size: the square side every image is resized to (None: keep; then all
    must match). Returns names (N,) list, images (`SplitImages`: item i (3, S, S) uint8),
    labels (N, C) float32 multi-hot, label_ids (list of class-id lists), sizes (list of the
    original (H, W), read from the files' headers) and class_names.
    """
    ds = VOCSegDataset(root, split, num_classes=num_classes, with_saliency=False, with_mask=False)
    sizes = [ds.image_shape(i) for i in range(len(ds))]
    if image_size is None and len(set(sizes)) > 1:
        shapes = sorted({(3, *hw) for hw in sizes})
        raise ValueError(
            f"images of split {split!r} in {root} have different sizes {shapes[:3]}...; "
            "pass image_size=... to resize them"
        )
    label_ids = [list(ds.label_ids(i)) for i in range(len(ds))]
    labels = torch.zeros(len(ds), ds.num_classes)  # (N, C) float32
    for i, ids in enumerate(label_ids):
        labels[i, ids] = 1.0
    return dict(
        names=list(ds.names),
        images=SplitImages(ds, image_size),
        labels=labels,
        label_ids=label_ids,
        sizes=sizes,
        class_names=list(ds.class_names),
    )


def load_split_tensors(
    root: str | os.PathLike, split: str, num_classes: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """`load_split` with the images read into memory: images (N, 3, S, S) uint8.

    For figures and benchmarks on a few hundred images; the stages read through `load_split`.
    """
    data = load_split(root, split, num_classes, image_size)
    images = data["images"]
    data["images"] = torch.stack([images[i] for i in range(len(images))])  # (N, 3, S, S) uint8
    return data
