"""A PASCAL VOC 2012 tree laid out as it is downloaded, drawn: for the tests of the `voc` profile
(a few dozen small images) and for measuring what a run costs at VOC's scale (`nsrom bench
memory`: thousands of images of VOC's sizes).

    <base>/VOCdevkit/VOC2012/JPEGImages/{name}.jpg           RGB JPEGs, 60..120 px a side
                                                             (voc_sizes: 330..500, as VOC's)
    <base>/VOCdevkit/VOC2012/SegmentationClass/{name}.png    palette PNGs, val images only
    <base>/VOCdevkit/VOC2012/SegmentationClassAug/{name}.png SBD's 8-bit gray ("L") masks, train_aug + val
    <base>/VOCdevkit/VOC2012/ImageSets/Segmentation/
        train_aug.txt   SBD's lines: /JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png
        train.txt, trainval.txt, val.txt   plain names, as VOC 2012 ships them
    <base>/saliency_aug/{name}.png    8-bit gray saliency of every image (outside VOC2012)
    <base>/train_cls.txt              "name c1 c2 ..." (0-based ids) of train_aug (outside VOC2012)

Every image holds 1-3 classes drawn as simple shapes (rectangle, ellipse, triangle) in a
class colour on a noisy background; its mask, its saliency and its class list describe the
same shapes, so the three agree. The training images cover all 20 classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nsrom_lib.data.io import save_label_png, voc_palette

NUM_CLASSES = 20
VOID = 255
SEG = Path("ImageSets") / "Segmentation"


@dataclass(frozen=True)
class VocTree:
    """Where the parts of a built tree are, and what it holds."""

    base: Path  # the folder holding VOCdevkit/, saliency_aug/ and train_cls.txt
    devkit: Path  # <base>/VOCdevkit
    root: Path  # <base>/VOCdevkit/VOC2012: what data_root points at
    saliency_dir: Path  # <base>/saliency_aug
    cls_list: Path  # <base>/train_cls.txt
    train: tuple[str, ...]  # the names of train_aug.txt
    val: tuple[str, ...]  # the names of val.txt
    labels: dict[str, tuple[int, ...]]  # 0-based class ids of every image (train and val)
    sizes: dict[str, tuple[int, int]]  # (H, W) of every image


def _shape_mask(kind: int, h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) bool: a rectangle (kind 0), an ellipse (1) or a triangle (2) inside box
    (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = box
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    if kind == 0:
        return inside
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    ry, rx = max((y1 - y0) / 2, 1), max((x1 - x0) / 2, 1)
    if kind == 1:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    # a triangle with its apex at the top centre of the box
    t = (yy - y0 + 0.5) / max(y1 - y0, 1)  # 0 at the top, 1 at the bottom
    return inside & (np.abs(xx - cx) <= t * rx)


def _void_border(mask: np.ndarray) -> np.ndarray:
    """The mask with a 1-pixel void ring where two labels meet (as VOC marks object borders)."""
    out = mask.copy()
    edge = np.zeros(mask.shape, bool)
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    out[edge & (mask != 0)] = VOID  # the object's own outer pixels
    return out


def _draw(rng: np.random.Generator, classes: list[int], h: int, w: int,
          palette: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image: (H, W, 3) uint8 RGB, (H, W) uint8 mask (0 bg, c + 1, 255 void) and
    (H, W) uint8 saliency, the objects of `classes` placed from left to right."""
    bg = rng.integers(60, 140, 3)
    rgb = np.clip(bg + rng.normal(0, 18, (h, w, 3)), 0, 255)
    mask = np.zeros((h, w), np.uint8)
    n = len(classes)
    for k, c in enumerate(classes):
        # each object in its own vertical band, so none hides another
        bx0, bx1 = k * w // n, (k + 1) * w // n
        bw = bx1 - bx0
        ow = int(rng.integers(max(8, bw // 2), max(9, bw - 2)))
        oh = int(rng.integers(max(10, h // 3), max(11, h - 6)))
        x0 = bx0 + int(rng.integers(0, max(1, bw - ow)))
        y0 = int(rng.integers(2, max(3, h - oh - 1)))
        shape = _shape_mask(int(rng.integers(0, 3)), h, w, (y0, x0, min(y0 + oh, h - 1),
                                                             min(x0 + ow, bx1)))
        colour = palette[c + 1] * 0.8 + 30
        rgb[shape] = np.clip(colour + rng.normal(0, 10, (int(shape.sum()), 3)), 0, 255)
        mask[shape] = c + 1
    saliency = np.where(mask > 0, rng.integers(200, 256, (h, w)), rng.integers(0, 40, (h, w)))
    return rgb.astype(np.uint8), _void_border(mask), saliency.astype(np.uint8)


def _size(rng: np.random.Generator, i: int, voc_sizes: bool = False) -> tuple[int, int]:
    """(H, W) between 60 and 120 px a side (voc_sizes: a long side of 480..500 and a short one
    of 330..375, as most VOC images have): landscape for even i, portrait for odd i."""
    if voc_sizes:
        long, short = int(rng.integers(480, 501)), int(rng.integers(330, 376))
    else:
        long, short = int(rng.integers(90, 121)), int(rng.integers(60, 90))
    return (short, long) if i % 2 == 0 else (long, short)


def build_voc_tree(base: str | os.PathLike, n_train: int = 24, n_val: int = 8,
                   seed: int = 0, voc_sizes: bool = False) -> VocTree:
    """Write the tree described in the module docstring under `base`; return where it is.
    voc_sizes: images of VOC's sizes (about 500 x 375) instead of 60..120 px."""
    base = Path(base)
    root = base / "VOCdevkit" / "VOC2012"
    sal_dir = base / "saliency_aug"
    for d in (root / "JPEGImages", root / "SegmentationClass", root / "SegmentationClassAug",
              root / SEG, sal_dir):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = np.array(voc_palette(), float).reshape(256, 3)
    train = tuple(f"2008_{i:06d}" for i in range(n_train))
    val = tuple(f"2007_{i:06d}" for i in range(n_val))
    labels: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(train + val):
        # the first class walks through all 20 (train covers each), 0-2 more at random
        first = i % NUM_CLASSES
        others = [int(c) for c in rng.permutation(NUM_CLASSES) if c != first]
        classes = [first, *others[: int(rng.integers(0, 3))]]
        h, w = _size(rng, i, voc_sizes)
        rgb, mask, saliency = _draw(rng, classes, h, w, palette)
        present = tuple(sorted(int(v) - 1 for v in np.unique(mask) if 1 <= v <= NUM_CLASSES))
        if present != tuple(sorted(classes)):  # an object drawn over another: a bug here
            raise RuntimeError(f"{name}: mask holds classes {present}, drew {sorted(classes)}")
        labels[name], sizes[name] = present, (h, w)
        Image.fromarray(rgb, mode="RGB").save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        Image.fromarray(saliency, mode="L").save(sal_dir / f"{name}.png")
        if name in val:
            save_label_png(root / "SegmentationClass" / f"{name}.png", mask)
    seg = root / SEG
    seg.joinpath("train_aug.txt").write_text(
        "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in train))
    voc_train = train[: max(1, n_train // 3)]  # VOC 2012's own (smaller) train split
    seg.joinpath("train.txt").write_text("".join(f"{n}\n" for n in voc_train))
    seg.joinpath("val.txt").write_text("".join(f"{n}\n" for n in val))
    seg.joinpath("trainval.txt").write_text("".join(f"{n}\n" for n in voc_train + val))
    cls_list = base / "train_cls.txt"
    cls_list.write_text("".join(" ".join([n, *map(str, labels[n])]) + "\n" for n in train))
    return VocTree(base=base, devkit=base / "VOCdevkit", root=root, saliency_dir=sal_dir,
                   cls_list=cls_list, train=train, val=val, labels=labels, sizes=sizes)


def tree_listing(*paths: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{path: (size, st_mtime_ns)} of every file and folder under (and including) `paths`,
    recursively, links not followed: what a run must leave as it found."""
    out: dict[str, tuple[int, int]] = {}
    for top in map(Path, paths):
        st = top.lstat()
        out[str(top)] = (st.st_size, st.st_mtime_ns)
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):
                for n in dirnames + filenames:
                    p = os.path.join(dirpath, n)
                    st = os.lstat(p)
                    out[p] = (st.st_size, st.st_mtime_ns)
    return out
