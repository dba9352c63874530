"""The classical saliency methods, `nsrom data saliency` and the evaluation against SynthVOC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsrom_lib import cli
from nsrom_lib.data.io import read_label_png, save_gray_png, save_rgb_png
from nsrom_lib.data.saliency import (
    METHODS,
    evaluate_saliency,
    frequency_tuned,
    saliency_map,
    spectral_residual,
)
from nsrom_lib.data.synthvoc import SynthVOCConfig, generate_synthvoc


def _square_image(h: int = 40, w: int = 52) -> tuple[np.ndarray, np.ndarray]:
    """A bright square on a flat dull background: (H, W, 3) uint8 image, (H, W) bool square."""
    image = np.full((h, w, 3), (70, 80, 90), np.uint8)
    square = np.zeros((h, w), bool)
    square[8:18, 30:40] = True
    image[square] = (230, 210, 60)
    return image, square


def _noise_image(h: int = 23, w: int = 37, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("method", METHODS)
def test_a_bright_square_is_salient(method):
    image, square = _square_image()
    sal = saliency_map(image, method)
    assert sal[square].mean() > sal[~square].mean() + 40


@pytest.mark.parametrize("method", METHODS)
def test_shape_dtype_range_and_determinism(method):
    image = _noise_image()
    sal = saliency_map(image, method)
    assert sal.shape == (23, 37) and sal.dtype == np.uint8
    assert sal.min() == 0 and sal.max() == 255  # stretched to the full range
    assert np.array_equal(sal, saliency_map(image.copy(), method))
    direct = frequency_tuned if method == "ft" else spectral_residual
    assert np.array_equal(sal, direct(image))
    # a larger image than the spectral method's working size comes back at its own size
    assert saliency_map(_noise_image(90, 130, seed=1), method).shape == (90, 130)
    # nothing stands out of a flat image
    assert not saliency_map(np.full((9, 11, 3), 120, np.uint8), method).any()


def test_bad_method_and_bad_image_are_refused():
    with pytest.raises(ValueError, match="ft, spectral"):
        saliency_map(_noise_image(), "itti")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        saliency_map(_noise_image().astype(np.float32), "ft")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        saliency_map(_noise_image()[..., 0], "spectral")


# ----------------------------------------------------------------------------- the command


def _images(folder: Path) -> dict[str, tuple[int, int]]:
    """Four small images (PNG and JPEG) in `folder`: {name: (H, W)}."""
    sizes = {"a": (20, 30), "b": (24, 24), "c": (31, 17), "d": (16, 22)}
    folder.mkdir(parents=True)
    for i, (name, (h, w)) in enumerate(sizes.items()):
        image = _noise_image(h, w, seed=i)
        if name == "d":
            Image.fromarray(image).save(folder / f"{name}.jpg", quality=90)
        else:
            save_rgb_png(folder / f"{name}.png", image)
    return sizes


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["data", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("method", METHODS)
def test_cli_writes_one_map_per_image_and_resumes(tmp_path, capsys, method):
    images, out = tmp_path / "JPEGImages", tmp_path / "maps" / "Saliency"
    sizes = _images(images)
    before = _listing(images)
    args = ["saliency", "--images", str(images), "--out", str(out), "--method", method, "--quiet"]
    rc, stdout, _ = _run(capsys, *args)
    assert rc == 0 and "4 map(s) written, 0 skipped" in stdout
    maps = sorted(p.name for p in out.glob("*.png"))
    assert maps == ["a.png", "b.png", "c.png", "d.png"]
    for name, shape in sizes.items():
        img = Image.open(out / f"{name}.png")
        assert img.mode == "L" and img.size[::-1] == shape
    assert _listing(images) == before  # nothing written, touched or added beside the images
    stamps = _listing(out)
    rc, stdout, _ = _run(capsys, *args)
    assert rc == 0 and "0 map(s) written, 4 skipped" in stdout
    assert _listing(out) == stamps
    (out / "c.png").unlink()  # as if the run had stopped before this image
    rc, stdout, _ = _run(capsys, *args, "--json")
    summary = json.loads(stdout)
    assert (summary["written"], summary["skipped"]) == (1, 3)
    direct = saliency_map(np.array(Image.open(images / "c.png")), method)
    assert np.array_equal(np.array(Image.open(out / "c.png")), direct)
    assert _listing(images) == before


def test_cli_list_picks_the_images(tmp_path, capsys):
    images, out = tmp_path / "JPEGImages", tmp_path / "out"
    _images(images)
    lst = tmp_path / "train_aug.txt"
    lst.write_text("/JPEGImages/b.jpg /SegmentationClassAug/b.png\n\n/JPEGImages/d.jpg x\n")
    rc, stdout, _ = _run(capsys, "saliency", "--images", str(images), "--out", str(out),
                         "--list", str(lst), "--quiet")
    assert rc == 0 and "2 map(s) written" in stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["b.png", "d.png"]


def test_cli_errors_name_the_folder_and_exit_2(tmp_path, capsys):
    images, out = tmp_path / "JPEGImages", tmp_path / "out"
    base = ["saliency", "--out", str(out), "--quiet"]
    # a missing folder, an empty one
    rc, _, err = _run(capsys, *base, "--images", str(tmp_path / "nope"))
    assert rc == 2 and f"images folder not found: {tmp_path / 'nope'}" in err and "--images" in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    rc, _, err = _run(capsys, *base, "--images", str(tmp_path / "empty"))
    assert rc == 2 and str(tmp_path / "empty") in err and "holds no .jpg" in err
    _images(images)
    # a name in --list without an image: nothing is written
    lst = tmp_path / "list.txt"
    lst.write_text("a 1\nzebra 2\n")
    rc, _, err = _run(capsys, *base, "--images", str(images), "--list", str(lst))
    assert rc == 2 and "zebra" in err and str(images) in err and str(lst) in err
    assert not out.exists()
    # the output folder inside the images folder
    rc, _, err = _run(capsys, "saliency", "--images", str(images), "--out", str(images))
    assert rc == 2 and "inside the images folder" in err and not (images / "saliency.json").exists()
    # an unknown method
    rc, _, err = _run(capsys, *base, "--images", str(images), "--method", "itti")
    assert rc == 2 and "ft, spectral" in err
    # an image that cannot be decoded: the maps before it are kept, the message names the file
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    rc, _, err = _run(capsys, *base, "--images", str(images))
    assert rc == 2 and str(images / "b.png") in err and "run the same command again" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png"]
    # maps of another method are not mixed in
    rc, _, err = _run(capsys, *base, "--images", str(images), "--method", "spectral")
    assert rc == 2 and str(out) in err and "another --out" in err
    # a folder of PNG files this command did not write
    other = tmp_path / "Saliency"
    save_gray_png(other / "a.png", np.zeros((4, 4), np.uint8))
    rc, _, err = _run(capsys, "saliency", "--images", str(images), "--out", str(other))
    assert rc == 2 and str(other) in err and "new or empty folder" in err


# ----------------------------------------------------------------------------- the evaluation


@pytest.fixture(scope="module")
def tiny_synthvoc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthvoc_tiny")
    cfg = SynthVOCConfig(image_size=32, n_train=2, n_val=8)
    generate_synthvoc(root, cfg, progress=False, workers=1)
    return root


def _maps_from_instances(root: Path, out: Path, split: str, value) -> Path:
    """A folder of maps made from each image's instance mask by `value(inst) -> uint8 map`."""
    for name in (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split():
        inst = read_label_png(root / "SegmentationObject" / f"{name}.png")
        save_gray_png(out / f"{name}.png", value(inst))
    return out


def _objects(inst: np.ndarray) -> np.ndarray:
    """The perfect map: 255 on every ground-truth instance, 0 elsewhere."""
    return (((inst > 0) & (inst < 255)) * 255).astype(np.uint8)


def _everything(inst: np.ndarray) -> np.ndarray:
    return np.full(inst.shape, 255, np.uint8)


def _dim_objects(inst: np.ndarray) -> np.ndarray:
    return (_objects(inst) > 0).astype(np.uint8) * 200


def _rates(r: dict) -> list[float]:
    keys = ("salient_found", "nonsalient_found", "salient_coverage", "nonsalient_coverage",
            "false_alarm", "background_nonzero")
    return [r[k] for k in keys]


def test_evaluation_rates_and_a_perfect_map(tiny_synthvoc, tmp_path):
    for method in (*METHODS, None):
        r = evaluate_saliency(tiny_synthvoc, "val", method=method)
        assert r["images"] == 8 and r["salient_instances"] > 0 and r["nonsalient_instances"] > 0
        assert all(0.0 <= x <= 1.0 for x in _rates(r)), r
        assert (r["ms_per_image"] is None) == (method is None)
    # the synthetic detector covers its salient objects and leaves the non-salient ones
    dataset = evaluate_saliency(tiny_synthvoc, "val")
    assert dataset["salient_found"] > 0.8 and dataset["nonsalient_found"] < 0.2
    perfect = _maps_from_instances(tiny_synthvoc, tmp_path / "perfect", "val", _objects)
    r = evaluate_saliency(tiny_synthvoc, "val", maps_dir=perfect)
    assert _rates(r) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert all(not im["missed"] and im["false_alarm"] == 0.0 for im in r["per_image"])
    everything = _maps_from_instances(tiny_synthvoc, tmp_path / "all", "val", _everything)
    r = evaluate_saliency(tiny_synthvoc, "val", maps_dir=everything)
    assert r["false_alarm"] == r["background_nonzero"] == r["salient_found"] == 1.0
    # the threshold: 200 in the objects, below a threshold of 201
    dim = _maps_from_instances(tiny_synthvoc, tmp_path / "dim", "val", _dim_objects)
    for threshold, found in ((200, 1.0), (201, 0.0)):
        r = evaluate_saliency(tiny_synthvoc, "val", maps_dir=dim, threshold=threshold)
        assert (r["salient_found"], r["nonsalient_found"]) == (found, found)


def test_evaluation_cli(tiny_synthvoc, tmp_path, capsys):
    rc, stdout, _ = _run(capsys, "saliency-eval", "--root", str(tiny_synthvoc), "--limit", "3",
                         "--json")
    rows = json.loads(stdout)
    assert rc == 0 and [r["source"] for r in rows] == ["ft", "spectral", "dataset Saliency/"]
    assert all(r["images"] == 3 and all(0 <= x <= 1 for x in _rates(r)) for r in rows)
    rc, stdout, _ = _run(capsys, "saliency-eval", "--root", str(tiny_synthvoc))
    assert rc == 0 and "| ft | 8 |" in stdout and "non-salient found" in stdout
    # a folder without the maps of the split, a root without instances
    rc, _, err = _run(capsys, "saliency-eval", "--root", str(tiny_synthvoc), "--maps",
                      str(tmp_path))
    assert rc == 2 and str(tmp_path) in err and "data saliency" in err
    bare = tmp_path / "bare"
    shutil.copytree(tiny_synthvoc, bare)
    (bare / "instances.json").unlink()
    rc, _, err = _run(capsys, "saliency-eval", "--root", str(bare))
    assert rc == 2 and str(bare) in err and "instances.json" in err and "data synthvoc" in err
    rc, _, err = _run(capsys, "saliency-eval", "--root", str(tiny_synthvoc), "--threshold", "300")
    assert rc == 2 and "--threshold" in err
