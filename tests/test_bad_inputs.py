"""Bad input, clear errors, nothing lost.

Every case feeds one bad input to the data layer, the CLI (in-process through `cli.main`), the
run configuration or the notebooks' parameters (`open_run`), and checks three things:
one message that names the file or parameter AND says the fix; a non-zero exit for the CLI;
no half-written artefact (no output folder / label / temporary file, no completion mark).

The cases already covered elsewhere are not repeated here: tests/test_voc.py
(`test_bad_inputs_name_the_file`, `test_missing_root_and_split`, ...), tests/test_labels_cli.py
(`test_pseudo_bad_inputs_fail_cleanly`, `test_masked_bad_inputs_fail_cleanly`, ...) and
tests/test_config_cli.py (`test_set_values_are_typed_and_checked`, ...).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_labels_cli import C as LC
from test_labels_cli import make_folders, masked_args, pseudo_args, ref_pseudo, written
from test_voc import IMAGES, SEG, H, W, make_voc

import nsrom_lib.data.io as io_mod
from nsrom_lib import cli
from nsrom_lib.config import ConfigError, make_config
from nsrom_lib.data.io import (
    DataError,
    WriteError,
    atomic_write_json,
    read_label_png,
    save_gray_png,
    save_label_png,
)
from nsrom_lib.data.voc import VOCSegDataset, read_cls_list, write_cls_list
from nsrom_lib.pipeline import open_run


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


@pytest.fixture
def folders(tmp_path: Path):
    return tmp_path, make_folders(tmp_path)


def _check(ds_or_call, *fragments: str, exc=DataError) -> str:
    """Run `ds_or_call()`; it must raise `exc` whose message holds every fragment."""
    with pytest.raises(exc) as err:
        ds_or_call()
    msg = str(err.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in: {msg}"
    return msg


def _cli_fails(capsys, args: list[str], *fragments: str, rc: int = 2) -> str:
    """`nsrom args` exits with `rc` and one `nsrom: error:` line on stderr holding every fragment."""
    capsys.readouterr()
    assert cli.main(args) == rc
    err = capsys.readouterr().err.strip()
    assert err.startswith("nsrom: error:") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, f"{f!r} not in: {err}"
    return err


def _leftovers(folder: Path) -> list[str]:
    """Temporary files (`.<name>.*.tmp`) and staging folders left anywhere under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith(".tmp") or p.name.startswith(".staging-")
    )


def _full_disk(monkeypatch, after: int = 0) -> list[Path]:
    """Make nsrom_lib.data.io's low-level write fail with ENOSPC after `after` good writes.

    The failing write leaves half the bytes in its temporary file, as a real full disk does.
    Returns the list of paths written (grows as the code writes).
    """
    calls: list[Path] = []
    real = io_mod._write_bytes

    def write(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) > after:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(io_mod, "_write_bytes", write)
    return calls


def _no_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device='cuda' is valid here")


# ============================================================================ data layer


def test_empty_dataset_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _check(lambda: VOCSegDataset(tmp_path / "empty"), str(tmp_path / "empty"),
           "ImageSets/Segmentation", "data synthvoc --out")  # fmt: skip


def test_empty_label_list(voc: Path) -> None:
    (voc / SEG / "train_cls.txt").write_text("")
    _check(lambda: VOCSegDataset(voc), "train_cls.txt", "img_a", "Add a line")


def test_label_list_not_found(voc: Path) -> None:
    _check(lambda: VOCSegDataset(voc, cls_list=voc / "nope_cls.txt"), "nope_cls.txt",
           "train_cls.txt format")  # fmt: skip


@pytest.mark.parametrize(
    "line, says, fix",
    [
        ("img_a x", "is not an integer", "'name c1 c2 ...'"),
        ("img_a -1", "out of range", "check the file"),
        ("img_a 0\nimg_a 1", "listed twice", "Keep one line per image"),
    ],
    ids=["non-integer id", "negative id", "image listed twice"],
)
def test_label_list_bad_line(tmp_path: Path, line: str, says: str, fix: str) -> None:
    p = tmp_path / "train_cls.txt"
    p.write_text(line + "\n")
    _check(lambda: read_cls_list(p, 3), f"{p}:", says, fix)


def test_split_lists_an_image_twice(voc: Path) -> None:
    (voc / SEG / "train.txt").write_text("img_a\nimg_b\nimg_a\n")
    _check(lambda: VOCSegDataset(voc), "train.txt:3", "img_a", "Remove the duplicate")


def test_num_classes_disagrees_with_classes_txt(voc: Path) -> None:
    _check(lambda: VOCSegDataset(voc, num_classes=5), "classes.txt", "num_classes=5",
           "Leave num_classes unset")  # fmt: skip
    (voc / "classes.txt").write_text("\n")
    _check(lambda: VOCSegDataset(voc), "classes.txt", "is empty", "one per line")


def test_truncated_jpeg(voc: Path) -> None:
    p = voc / "JPEGImages" / "img_b.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    _check(lambda: VOCSegDataset(voc).check(), str(p), "truncated", "regenerate")


def test_png_with_a_bad_checksum(voc: Path) -> None:
    p = voc / "Saliency" / "img_c.png"
    data = bytearray(p.read_bytes())
    data[data.find(b"IDAT") + 8] ^= 0xFF  # one flipped bit pattern inside the pixel data
    p.write_bytes(bytes(data))
    _check(lambda: VOCSegDataset(voc).check(), str(p), "corrupt", "regenerate")


def test_empty_png_file(voc: Path) -> None:
    p = voc / "SegmentationClass" / "img_a.png"
    p.write_bytes(b"")
    _check(lambda: VOCSegDataset(voc).check(), str(p), "corrupt or truncated", "regenerate")


def test_16_bit_saliency_is_refused_not_clipped(voc: Path) -> None:
    p = voc / "Saliency" / "img_b.png"
    Image.fromarray(np.full((H, W), 40000, np.uint16)).save(p)
    _check(lambda: VOCSegDataset(voc).check(), str(p), "I;16", "8-bit", "Rescale it to 0..255")


def test_rgb_colour_mask_is_refused(voc: Path) -> None:
    p = voc / "SegmentationClass" / "img_c.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(p)
    _check(lambda: VOCSegDataset(voc).check(), str(p), "'RGB'", "save_label_png")


def test_corrupt_instances_json(voc: Path) -> None:
    from nsrom_lib.data.voc import read_instances

    (voc / "instances.json").write_text('{"img_a": [')
    _check(lambda: read_instances(voc), "instances.json", "Regenerate the dataset")


def test_nan_map_is_refused_on_save(tmp_path: Path) -> None:
    p = tmp_path / "maps" / "img_0.png"
    m = np.full((4, 4), 0.5, np.float32)
    m[1, 1] = np.nan
    _check(lambda: save_gray_png(p, m), str(p), "NaN", "cam_to_uint8", exc=ValueError)
    assert not p.exists() and not (tmp_path / "maps").exists()


def _resize_one(voc: Path, name: str, h: int, w: int) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        voc / "JPEGImages" / f"{name}.jpg"
    )
    mask = np.zeros((h, w), np.uint8)
    mask[1:4, 1:4] = IMAGES[name][0] + 1
    save_label_png(voc / "SegmentationClass" / f"{name}.png", mask)
    save_gray_png(voc / "Saliency" / f"{name}.png", (mask != 0).astype(np.uint8) * 200)


def test_mixed_image_sizes_stack_error_and_stats_cli(voc: Path, capsys) -> None:
    from nsrom_lib.data.stats import load_split_arrays

    _resize_one(voc, "img_b", H + 4, W + 2)
    _check(lambda: load_split_arrays(voc, "train"), "img_a", "img_b", f"{H + 4}x{W + 2}",
           "stack=False")  # fmt: skip
    # `data stats` reads per-image arrays: a mixed-size dataset (like VOC) works
    assert cli.main(["data", "stats", "--root", str(voc), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


# ============================================================================ writes: full disk, no write access


def test_disk_full_text_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "lists" / "train_cls.txt"
    _full_disk(monkeypatch)
    msg = _check(lambda: write_cls_list(target, {"a": [1]}), str(target), "No space left",
                 "free disk space", exc=WriteError)  # fmt: skip
    assert "Errno" not in msg
    assert not target.exists() and _leftovers(tmp_path) == []


def test_disk_full_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    p = tmp_path / "label.png"
    old = np.ones((4, 5), np.uint8)
    save_label_png(p, old)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match="free disk space") as err:
        save_label_png(p, np.full((4, 5), 2, np.uint8))
    assert err.value.errno == errno.ENOSPC and str(p) in str(err.value)
    np.testing.assert_array_equal(read_label_png(p), old)
    assert _leftovers(tmp_path) == []


def test_disk_full_during_labels_cli(folders, capsys, monkeypatch) -> None:
    tmp, data = folders
    calls = _full_disk(monkeypatch, after=2)  # two labels staged, the third one fails
    _cli_fails(capsys, pseudo_args(tmp), str(tmp / "out"), "No space left", "free disk space",
               rc=1)  # fmt: skip
    assert len(calls) == 3
    assert not (tmp / "out").exists() and _leftovers(tmp) == []


def test_disk_full_during_synthvoc_leaves_it_incomplete(tmp_path: Path, monkeypatch) -> None:
    from nsrom_lib.data.synthvoc import SynthVOCConfig, generate_synthvoc, synthvoc_is_complete

    cfg = SynthVOCConfig(image_size=32, n_train=3, n_val=1)
    root = tmp_path / "sv"
    _full_disk(monkeypatch, after=5)
    _check(lambda: generate_synthvoc(root, cfg, progress=False, workers=1), str(root),
           "free disk space", exc=WriteError)  # fmt: skip
    assert not (root / "synthvoc.json").exists() and not synthvoc_is_complete(root, cfg)
    assert _leftovers(root) == []
    monkeypatch.undo()  # space freed: the same call finishes the dataset
    generate_synthvoc(root, cfg, progress=False, workers=1)
    assert synthvoc_is_complete(root, cfg)


def test_write_under_a_file_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / "sub" / "config.json"
    _check(lambda: atomic_write_json(target, {}), str(tmp_path / "file.txt"), "is a file",
           exc=WriteError)  # fmt: skip


def test_read_only_folder_names_the_file(tmp_path: Path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes through permission bits

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(io_mod.tempfile, "mkstemp", denied)
    try:
        _check(lambda: atomic_write_json(ro / "x.json", {}), str(ro / "x.json"), "denied",
               "choose a folder you can write to", exc=WriteError)  # fmt: skip
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_cli_labels_out_not_writable(folders, capsys) -> None:
    tmp, _ = folders
    (tmp / "file.txt").write_text("x")
    args = pseudo_args(tmp)
    args[args.index("--out") + 1] = str(tmp / "file.txt" / "out")
    _cli_fails(capsys, args, str(tmp / "file.txt" / "out"), "is a file", rc=1)
    assert (tmp / "file.txt").read_text() == "x"


def test_cli_synthvoc_out_not_writable(tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "sv"
    _cli_fails(capsys, ["data", "synthvoc", "--out", str(out), "--profile", "smoke"], str(out),
               "choose another folder", rc=1)  # fmt: skip


def test_cli_run_dir_not_writable(tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    run_dir = tmp_path / "file.txt" / "run"
    _cli_fails(capsys, ["run", "--profile", "smoke", "--run-dir", str(run_dir)], str(run_dir),
               "Choose a writable --run-dir")  # fmt: skip


# ============================================================================ `nsrom labels`


def test_labels_list_not_found(folders, capsys) -> None:
    tmp, _ = folders
    (tmp / "list.txt").unlink()
    _cli_fails(capsys, pseudo_args(tmp), str(tmp / "list.txt"), "train_cls.txt format")
    assert written(tmp / "out") == []


def test_labels_empty_list(folders, capsys) -> None:
    tmp, _ = folders
    (tmp / "list.txt").write_text("\n")
    _cli_fails(capsys, pseudo_args(tmp), "list.txt lists no image", "'name c1 c2 ...' line")
    assert written(tmp / "out") == []


def test_labels_input_folder_missing(folders, capsys) -> None:
    tmp, _ = folders
    args = pseudo_args(tmp)
    args[args.index("--cam") + 1] = str(tmp / "cams")
    _cli_fails(capsys, args, str(tmp / "cams"), "--cam", "pass the folder")
    assert written(tmp / "out") == []


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--num-classes", "0", "1..254"),
        ("--fg", "1.5", "0..1"),
        ("--bg", "300", "0..256"),
        ("--min-ratio", "nan", "0..1"),
        ("--threads", "-1", ">= 0"),
    ],
)
def test_labels_option_out_of_range(folders, capsys, option: str, value: str, says: str) -> None:
    tmp, _ = folders
    _cli_fails(capsys, pseudo_args(tmp, "out", option, value), option, says)
    assert not (tmp / "out").exists()


def test_labels_unknown_device_string(folders, capsys) -> None:
    tmp, _ = folders
    _cli_fails(capsys, pseudo_args(tmp, "out", "--device", "gpu"), "--device gpu", "cpu, cuda")
    assert not (tmp / "out").exists()


def test_labels_16_bit_saliency(folders, capsys) -> None:
    tmp, data = folders
    name = data["names"][2]
    p = tmp / "sal" / f"{name}.png"
    Image.fromarray(data["sal"][name].astype(np.uint16) * 257).save(p)
    _cli_fails(capsys, pseudo_args(tmp), str(p), "I;16", "rescale to 0..255")
    assert written(tmp / "out") == []


def test_labels_rgb_prediction_png(folders, capsys) -> None:
    tmp, data = folders
    assert cli.main(pseudo_args(tmp)) == 0
    name = data["names"][3]
    p = tmp / "pred" / f"{name}.png"
    Image.fromarray(np.stack([data["pred"][name]] * 3, -1)).save(p)
    _cli_fails(capsys, masked_args(tmp), str(p), "'RGB'", "save_label_png")
    assert not (tmp / "masked").exists()


def test_labels_pseudo_label_values_out_of_range(folders, capsys) -> None:
    tmp, data = folders
    assert cli.main(pseudo_args(tmp)) == 0
    name = data["names"][0]
    p = tmp / "out" / f"{name}.png"
    bad = read_label_png(p)
    bad[0, 0] = 254
    save_label_png(p, bad)
    _cli_fails(capsys, masked_args(tmp), str(p), "[254]", f"outside 0..{LC} and 255",
               "--num-classes")  # fmt: skip
    assert not (tmp / "masked").exists() and _leftovers(tmp) == []


def test_labels_constant_maps_are_zero_maps(folders, capsys) -> None:
    """Constant maps (flat 0, 7, 255) normalise to zeros as in the reference: no NaN, no crash."""
    tmp, data = folders
    for k, name in enumerate(data["names"][:3]):
        for c in data["classes"][name]:
            for kind, key in (("oacam", "oa"), ("cam", "cam")):
                flat = np.full(data["sal"][name].shape, (0, 7, 255)[k], np.uint8)
                data[key][name, c] = flat
                save_gray_png(tmp / kind / f"{name}_{c}.png", flat)
    assert cli.main(pseudo_args(tmp)) == 0
    for name in data["names"]:
        np.testing.assert_array_equal(read_label_png(tmp / "out" / f"{name}.png"),
                                      ref_pseudo(data, name))  # fmt: skip


# ============================================================================ `nsrom data`


def test_stats_split_not_found(voc: Path, capsys) -> None:
    _cli_fails(capsys, ["data", "stats", "--root", str(voc), "--split", "trainval"],
               "trainval.txt", "Splits present", "'train'")  # fmt: skip


def test_stats_mask_values_beyond_num_classes(voc: Path, capsys) -> None:
    (voc / "classes.txt").unlink()  # ids are checked against --num-classes alone
    _cli_fails(capsys, ["data", "stats", "--root", str(voc), "--num-classes", "1"],
               "out of range 0..0", "num_classes")  # fmt: skip


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--set", "num_classes=9"], "use 1..8"),
        (["--seed", "-1"], "seeds must be >= 0"),
        (["--set", "image_size=big"], "--set image_size=96"),
        (["--set", "n_trains=5"], "did you mean 'n_train'"),
    ],
    ids=["too many classes", "negative seed", "wrong type", "misspelt key"],
)
def test_synthvoc_bad_settings(tmp_path: Path, capsys, extra: list[str], says: str) -> None:
    out = tmp_path / "sv"
    _cli_fails(capsys, ["data", "synthvoc", "--out", str(out), "--profile", "smoke", *extra], says)
    assert not out.exists()


# ============================================================================ `nsrom run`


def _run(tmp_path: Path, *args: str) -> list[str]:
    return ["run", "--run-dir", str(tmp_path / "run"), *args]


def test_run_cuda_without_cuda(tmp_path: Path, capsys) -> None:
    _no_cuda()
    _cli_fails(capsys, _run(tmp_path, "--profile", "smoke", "--set", "device=cuda"),
               "device=cuda", "no CUDA device", "device=auto")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "settings, file",
    [
        (["--profile", "voc", "--set", "data_root={root}"], "vgg16-397923af.pth"),
        (["--profile", "smoke", "--set", "seg_backbone=resnet50", "--set", "seg_pretrained=true"],
         "resnet50-0676ba61.pth"),
    ],
    ids=["classifier vgg16", "segmenter resnet50"],
)
def test_run_pretrained_weights_not_cached(tmp_path, capsys, monkeypatch, settings, file) -> None:
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() follows TORCH_HOME again
    (tmp_path / "voc").mkdir()
    args = [a.format(root=tmp_path / "voc") for a in settings]
    key = "seg_pretrained" if "resnet" in file else "pretrained"
    _cli_fails(capsys, _run(tmp_path, *args), str(tmp_path / "torch" / "hub" / "checkpoints" / file),
               "Copy", f"--set {key}=false")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_run_only_unknown_notebook(tmp_path: Path, capsys) -> None:
    _cli_fails(capsys, _run(tmp_path, "--profile", "smoke", "--only", "99"), "--only 99",
               "choose among 00,01")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_run_data_root_missing(tmp_path: Path, capsys) -> None:
    _cli_fails(capsys, _run(tmp_path, "--profile", "smoke", "--set", f"data_root={tmp_path / 'x'}"),
               str(tmp_path / "x"), "VOC-layout folder")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "item, says",
    [("seed", "expected key=value"), ("cls_epochs=two", "--set cls_epochs=12"),
     ("be_fg=1.5", "use a value in [0, 1]")],
    ids=["no equals sign", "wrong type", "out of range"],
)
def test_run_bad_set(tmp_path: Path, capsys, item: str, says: str) -> None:
    _cli_fails(capsys, _run(tmp_path, "--profile", "smoke", "--set", item), item.split("=")[0], says)
    assert not (tmp_path / "run").exists()


# ============================================================================ configuration values


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("seed", -1, ">= 0"),
        ("device", "gpu", "'cuda:N'"),
        ("image_size", 16, "at least 32"),
        ("num_classes", 9, "1..8"),
        ("cls_epochs", 1, ">= 2"),
        ("width", 0, ">= 1"),
        ("cls_batch_size", 0, ">= 1"),
        ("iam_epochs", 0, ">= 1"),
        ("cls_lr", 0.0, "> 0"),
        ("iam_lr", "nan", "finite"),
        ("jitter", -0.1, ">= 0"),
        ("num_threads", -2, "thread count"),
        ("num_workers", -2, "process count"),
        ("oaa_from_epoch", 12, "0..2"),
        ("cls_warmup_epochs", -1, "from scratch"),
        ("be_fg", 1.5, "[0, 1]"),
        ("be_bg", 300, "0..255"),
        ("min_label_ratio", -0.01, "[0, 1]"),
        ("pretrained", True, "'vgg16' only"),
        ("seg_pretrained", True, "from scratch"),
        ("data_root", " ", "dataset folder"),
    ],
)
def test_config_value_out_of_range(key: str, value, says: str) -> None:
    _check(lambda: make_config("smoke", **{key: value}), key, says, f"--set {key}=",
           exc=ConfigError)  # fmt: skip


def test_config_vgg16_needs_output_stride_8() -> None:
    _check(lambda: make_config("smoke", backbone="vgg16", output_stride=4), "output_stride",
           "output stride 8", exc=ConfigError)  # fmt: skip


# ============================================================================ notebook parameters (open_run)


@pytest.mark.parametrize(
    "params, says",
    [
        (dict(seed=1.5), "pass a int value, e.g. seed=0"),
        (dict(pretrained=1), "pass a bool value, e.g. pretrained=False"),
        (dict(extra=[1]), "e.g. extra={}"),
        (dict(cls_lr="fast"), "--set cls_lr=0.001"),
        (dict(cls_epoch=3), "did you mean 'cls_epochs'"),
        (dict(be_att=2.0), "be_att=2.0: use a value in [0, 1]"),
    ],
    ids=["float for int", "int for bool", "list for dict", "word for float", "misspelt",
         "out of range"],  # fmt: skip
)
def test_notebook_parameters(tmp_path: Path, params: dict, says: str) -> None:
    _check(lambda: open_run(tmp_path / "run", "smoke", **params), says, exc=ConfigError)
    assert not (tmp_path / "run").exists()


def test_notebook_unknown_profile(tmp_path: Path) -> None:
    _check(lambda: open_run(tmp_path / "run", "smok"), "'smok'", "choose one of", "'smoke'",
           exc=ConfigError)  # fmt: skip
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- diverged or corrupt models


def test_corrupt_cached_weights_name_the_file(tmp_path):
    import torch

    from nsrom_lib.models.pretrained import cached_weights_path, load_cached_state

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        path = cached_weights_path("vgg16-397923af.pth")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="not a readable weights file") as e:
            load_cached_state("vgg16-397923af.pth", "torchvision.models.vgg16()")
        assert str(path) in str(e.value) and "delete it" in str(e.value)
    finally:
        torch.hub.set_dir(old)


def test_diverged_training_stops_with_the_learning_rate_named():
    import torch

    from nsrom_lib import train as T
    from nsrom_lib.models.segmentation import DeepLabV2

    imgs = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    labs = torch.zeros(4, 32, 32, dtype=torch.uint8)
    net = DeepLabV2(1, width=16, image_size=32)
    with torch.no_grad():
        net.aspp.branches[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="diverged.*seg_lr"):
        T.train_segmentation(net, imgs, labs, epochs=1, batch_size=4, progress=False)


def test_nan_class_maps_are_refused_on_export():
    import torch

    from nsrom_lib.cam import cam_to_uint8

    cam = torch.zeros(2, 4, 4)
    cam[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN.*lower its learning rate"):
        cam_to_uint8(cam, size=(8, 8))


def test_results_without_val_masks_fail_before_training(tmp_path: Path) -> None:
    """A VOC folder whose val images lack GT masks: the data stage says which folder and image
    before anything is trained (it used to train every model, then stop on a KeyError)."""
    root = make_voc(tmp_path / "voc")
    names = list(IMAGES)
    (root / SEG / "val.txt").write_text("\n".join(names) + "\n")
    (root / "SegmentationClass" / f"{names[1]}.png").unlink()
    run = open_run(tmp_path / "run", "smoke", data_root=str(root), num_classes=3)
    from nsrom_lib.pipeline import ensure_results

    msg = _check(lambda: ensure_results(run, progress=False), "1 of 3 val GT masks",
                 str(root / "SegmentationClass"), names[1], "val.txt")
    assert "mIoU" in msg
    assert not any((run.dir / s).exists() for s in ("classifier", "seg1", "results"))
