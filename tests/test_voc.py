"""Tests for the VOC-layout data layer (nsrom_lib.data.voc) and joint transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nsrom_lib.data.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
)
from nsrom_lib.data.voc import (
    VOC_CLASSES,
    DataError,
    VOCSegDataset,
    atomic_path,
    atomic_write_text,
    collate,
    read_class_names,
    read_cls_list,
    read_instances,
    read_label_png,
    read_split,
    save_gray_png,
    save_label_png,
    write_cls_list,
)

C = 3  # foreground classes in the toy tree
H, W = 12, 16
SEG = Path("ImageSets") / "Segmentation"


def _mask(classes: list[int]) -> np.ndarray:
    """(H, W) uint8 label map with one rectangle per class (value c + 1), a void border."""
    m = np.zeros((H, W), np.uint8)
    for k, c in enumerate(classes):
        m[2:6, 1 + 5 * k : 4 + 5 * k] = c + 1
    m[0, :] = 255
    return m


IMAGES = {"img_a": [0], "img_b": [1, 2], "img_c": [2]}


def make_voc(
    root: Path,
    *,
    cls_file: bool = True,
    mask_folder: str = "SegmentationClass",
    ext: str = ".jpg",
) -> Path:
    """Write a tiny VOC-layout tree: 3 images (JPEG), masks, saliency, split and cls files."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / SEG).mkdir(parents=True)
    for name, classes in IMAGES.items():
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{name}{ext}")
        mask = _mask(classes)
        save_label_png(root / mask_folder / f"{name}.png", mask)
        save_gray_png(
            root / "Saliency" / f"{name}.png", np.where(mask == 0, 0, 200).astype(np.uint8)
        )
    (root / SEG / "train.txt").write_text("\n".join(IMAGES) + "\n\n")
    if cls_file:
        write_cls_list(root / SEG / "train_cls.txt", IMAGES)
    (root / "classes.txt").write_text("circle\nsquare\ntriangle\n")
    return root


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


# ----------------------------------------------------------------------------- reading


def test_dataset_shapes_dtypes_labels(voc: Path) -> None:
    ds = VOCSegDataset(voc, "train")
    assert len(ds) == 3 and ds.num_classes == C and ds.label_source == "cls_file"
    assert ds.class_names == ["circle", "square", "triangle"]
    item = ds[1]
    assert item["name"] == "img_b" and item["index"] == 1
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [0.0, 1.0, 1.0]
    assert item["saliency"].shape == (H, W) and item["saliency"].dtype == torch.uint8
    assert item["mask"].shape == (H, W) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) == {0, 2, 3, 255}
    raw = ds.get_raw(0)
    assert raw["image"].shape == (H, W, 3) and raw["image"].dtype == np.uint8
    assert raw["saliency"].dtype == np.uint8 and raw["mask"].dtype == np.uint8
    assert ds.check() == 3


def test_labels_derived_from_masks(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", cls_file=False, ext=".png")
    ds = VOCSegDataset(root, "train", with_mask=False)
    assert ds.label_source == "mask"
    assert ds.cls_list() == IMAGES
    item = ds[1]
    assert "mask" not in item and item["label"].tolist() == [0.0, 1.0, 1.0]


def test_segmentation_class_aug_preferred(voc: Path) -> None:
    # An Aug folder with a different label for img_a: the reader must use it.
    for name in IMAGES:
        save_label_png(voc / "SegmentationClassAug" / f"{name}.png", _mask([0]))
    ds = VOCSegDataset(voc, "train")
    assert ds.mask_dir == voc / "SegmentationClassAug"
    assert set(ds[1]["mask"].unique().tolist()) == {0, 1, 255}


def test_explicit_cls_list_and_no_saliency(voc: Path) -> None:
    ds = VOCSegDataset(
        voc,
        "train",
        cls_list={"img_a": [1], "img_b": [], "img_c": [0, 2]},
        with_saliency=False,
        with_mask=False,
    )
    item = ds[2]
    assert "saliency" not in item and "mask" not in item
    assert item["label"].tolist() == [1.0, 0.0, 1.0]


def test_dataloader_collate(voc: Path) -> None:
    ds = VOCSegDataset(voc, "train", transform=Compose([Resize(8), Normalize()]))
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["name"] == list(IMAGES)
    assert batch["image"].shape == (3, 3, 8, 8) and batch["label"].shape == (3, C)
    assert batch["saliency"].shape == (3, 8, 8) and batch["mask"].shape == (3, 8, 8)
    assert batch["index"].tolist() == [0, 1, 2]


def test_list_files(voc: Path, tmp_path: Path) -> None:
    assert read_split(voc, "train") == list(IMAGES)
    assert read_cls_list(voc / SEG / "train_cls.txt") == IMAGES
    p = tmp_path / "x_cls.txt"
    p.write_text("a 3 1\n\nb\n")
    assert read_cls_list(p) == {"a": [1, 3], "b": []}
    assert read_class_names(tmp_path) == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert read_instances(voc) is None
    (voc / "instances.json").write_text('{"img_a": [{"id": 1, "class": 0}]}')
    assert read_instances(voc)["img_a"][0]["class"] == 0


# ----------------------------------------------------------------------------- PNG + atomic


def test_palette_round_trip(tmp_path: Path) -> None:
    label = np.array([[0, 1, 2, 3], [20, 21, 254, 255]], dtype=np.uint8)
    path = tmp_path / "l.png"
    save_label_png(path, label)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_label_png(path), label)


def test_atomic_path_failure_leaves_nothing(tmp_path: Path) -> None:
    new = tmp_path / "new.txt"
    with pytest.raises(RuntimeError), atomic_path(new) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.txt"
    atomic_write_text(old, "original")
    with pytest.raises(RuntimeError), atomic_path(old) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert old.read_text() == "original" and list(tmp_path.iterdir()) == [old]


# ----------------------------------------------------------------------------- bad inputs


def _corrupt(voc: Path, case: str) -> str:
    """Break the tree in one way; return the file name the error must mention."""
    if case == "no_saliency":
        (voc / "Saliency" / "img_b.png").unlink()
        return "img_b.png"
    if case == "mask_size":
        save_label_png(voc / "SegmentationClass" / "img_c.png", np.zeros((H + 1, W), np.uint8))
        return "img_c.png"
    if case == "saliency_size":
        save_gray_png(voc / "Saliency" / "img_a.png", np.zeros((H, W - 2), np.uint8))
        return "img_a.png"
    if case == "cls_out_of_range":
        (voc / SEG / "train_cls.txt").write_text("img_a 0\nimg_b 1 3\nimg_c 2\n")
        return "train_cls.txt"
    if case == "mask_values":
        m = _mask([0])
        m[5, 5] = 7
        save_label_png(voc / "SegmentationClass" / "img_b.png", m)
        return "img_b.png"
    if case == "garbage_image":
        (voc / "JPEGImages" / "img_c.jpg").write_bytes(b"this is not a jpeg" * 10)
        return "img_c.jpg"
    if case == "truncated_png":
        p = voc / "SegmentationClass" / "img_a.png"
        p.write_bytes(p.read_bytes()[:60])
        return "img_a.png"
    if case == "missing_image":
        (voc / "JPEGImages" / "img_b.jpg").unlink()
        return "img_b"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "no_saliency",
        "mask_size",
        "saliency_size",
        "cls_out_of_range",
        "mask_values",
        "garbage_image",
        "truncated_png",
        "missing_image",
    ],
)
def test_bad_inputs_name_the_file(voc: Path, case: str) -> None:
    expected = _corrupt(voc, case)
    with pytest.raises(DataError, match=expected.replace(".", r"\.")):
        VOCSegDataset(voc, "train").check()


def test_missing_root_and_split(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        VOCSegDataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"val\.txt"):
        VOCSegDataset(voc, "val")
    (voc / SEG / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.txt"):
        VOCSegDataset(voc, "empty")


def test_cheap_checks_at_construction_and_item_checks_at_getitem(voc: Path) -> None:
    _corrupt(voc, "no_saliency")
    with pytest.raises(DataError, match=r"img_b\.png"):
        VOCSegDataset(voc, "train")  # file existence: at construction
    ds = VOCSegDataset(voc, "train", validate=False)
    ds[0]
    with pytest.raises(DataError, match=r"img_b\.png"):
        ds[1]
    save_gray_png(voc / "Saliency" / "img_b.png", np.zeros((H, W), np.uint8))
    _corrupt(voc, "mask_size")
    ds = VOCSegDataset(voc, "train")  # sizes are not checked at construction
    with pytest.raises(DataError, match=r"img_c\.png"):
        ds[2]


# ----------------------------------------------------------------------------- transforms


def _sample(h: int = 10, w: int = 14) -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, 4, (h, w), generator=g)
    return {
        "name": "x",
        "image": torch.rand(3, h, w, generator=g),
        "saliency": torch.randint(0, 256, (h, w), generator=g, dtype=torch.uint8),
        "mask": mask,
        "label": torch.tensor([1.0, 0.0]),
    }


def test_resize_shapes_and_dtypes() -> None:
    out = Resize((6, 9))(_sample())
    assert out["image"].shape == (3, 6, 9) and out["image"].dtype == torch.float32
    assert out["saliency"].shape == (6, 9) and out["saliency"].dtype == torch.uint8
    assert out["mask"].shape == (6, 9) and out["mask"].dtype == torch.int64
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3}  # nearest: no blended ids
    assert out["name"] == "x"


def test_random_scale_crop_shape_and_padding() -> None:
    s = _sample()
    out = RandomScaleCrop(8, scale_range=(0.5, 1.5), generator=torch.Generator().manual_seed(0))(s)
    assert out["image"].shape == (3, 8, 8) and out["saliency"].shape == (8, 8)
    assert out["mask"].shape == (8, 8)
    # A crop larger than the image: padded right/bottom with 255 in the mask, 0 elsewhere.
    big = RandomScaleCrop((16, 20), scale_range=(1.0, 1.0))(s)
    assert big["image"].shape == (3, 16, 20)
    assert (big["mask"][10:] == 255).all() and (big["mask"][:, 14:] == 255).all()
    assert (big["image"][:, 10:] == 0).all() and (big["saliency"][:, 14:] == 0).all()
    assert torch.equal(big["mask"][:10, :14], s["mask"])


def test_flip_moves_image_and_mask_together() -> None:
    s = _sample()
    out = RandomHorizontalFlip(p=1.0)(s)
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["mask"], s["mask"].flip(-1))
    assert torch.equal(out["saliency"], s["saliency"].flip(-1))
    assert RandomHorizontalFlip(p=0.0)(s)["mask"] is s["mask"]


def test_seeded_transforms_are_deterministic() -> None:
    def run(seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        t = Compose(
            [
                RandomScaleCrop(7, generator=g),
                RandomHorizontalFlip(generator=g),
                ColorJitter(0.3, 0.3, 0.3, generator=g),
                Normalize(),
            ]
        )
        return t(_sample())

    a, b = run(3), run(3)
    for key in ("image", "saliency", "mask"):
        assert torch.equal(a[key], b[key])
    c = run(4)
    assert not torch.equal(a["image"], c["image"])
    torch.manual_seed(5)
    x = RandomScaleCrop(7)(_sample())
    torch.manual_seed(5)
    assert torch.equal(x["mask"], RandomScaleCrop(7)(_sample())["mask"])


def test_color_jitter_and_normalize_touch_image_only() -> None:
    s = _sample()
    out = Normalize()(ColorJitter(0.5, 0.5, 0.5)(s))
    assert out["mask"] is s["mask"] and out["saliency"] is s["saliency"]
    assert out["image"].shape == s["image"].shape and not torch.equal(out["image"], s["image"])
