"""`nsrom labels pseudo|masked` on official-format folders: round trips against the numpy
references, mixed image sizes, every bad-input case (clear error, non-zero exit, nothing
written), missing per-class maps (warning vs --strict)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsrom_lib import cli
from nsrom_lib import labels as L
from nsrom_lib.data.io import read_label_png, save_gray_png, save_label_png, voc_palette
from nsrom_lib.data.maps_io import load_label_inputs, write_labels
from nsrom_lib.data.voc import write_cls_list

ROOT = Path(__file__).resolve().parent.parent
C = 5  # --num-classes of the test folders


def _blob(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A smooth 8-bit map with a random peak, quantised (ties), sometimes flat."""
    if rng.random() < 0.1:
        return np.full((H, W), rng.integers(256), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    cy, cx, s = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(2, max(H, W))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return (np.round(blob * rng.integers(30, 256) / 4) * 4).clip(0, 255).astype(np.uint8)


def _sal(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    sal = np.zeros((H, W), np.uint8)
    y0, x0 = rng.integers(H // 2), rng.integers(W // 2)
    sal[y0 : y0 + H // 2, x0 : x0 + W // 2] = rng.choice([255, 200, 40])
    return sal


def make_folders(
    tmp: Path, sizes=((20, 24), (20, 24), (17, 13), (20, 24), (17, 13), (9, 31)), seed: int = 0
) -> dict:
    """Write an official-format set (list, saliency, OA-CAMs, CAMs, predictions) under tmp."""
    rng = np.random.default_rng(seed)
    data: dict = {"names": [], "classes": {}, "sal": {}, "oa": {}, "cam": {}, "pred": {}}
    for i, (H, W) in enumerate(sizes):
        name = f"img_{i:03d}"
        k = 1 if i % 3 == 0 else int(rng.integers(2, 4))
        classes = sorted(rng.choice(C, size=k, replace=False).tolist())
        data["names"].append(name)
        data["classes"][name] = classes
        data["sal"][name] = _sal(rng, H, W)
        save_gray_png(tmp / "sal" / f"{name}.png", data["sal"][name])
        for c in classes:
            data["oa"][name, c], data["cam"][name, c] = _blob(rng, H, W), _blob(rng, H, W)
            save_gray_png(tmp / "oacam" / f"{name}_{c}.png", data["oa"][name, c])
            save_gray_png(tmp / "cam" / f"{name}_{c}.png", data["cam"][name, c])
        pred = np.asarray(classes + [0])[rng.integers(len(classes) + 1, size=(H, W))] + 1
        pred[rng.random((H, W)) < 0.5] = 0
        data["pred"][name] = pred.astype(np.uint8)
        save_label_png(tmp / "pred" / f"{name}.png", data["pred"][name])
    write_cls_list(tmp / "list.txt", data["classes"])
    return data


def pseudo_args(tmp: Path, out: str = "out", *extra: str) -> list[str]:
    return [
        "labels",
        "pseudo",
        "--list",
        str(tmp / "list.txt"),
        "--saliency",
        str(tmp / "sal"),
        "--oacam",
        str(tmp / "oacam"),
        "--cam",
        str(tmp / "cam"),
        "--out",
        str(tmp / out),
        "--num-classes",
        str(C),
        "--quiet",
        *extra,
    ]


def masked_args(tmp: Path, out: str = "masked", *extra: str) -> list[str]:
    return [
        "labels",
        "masked",
        "--list",
        str(tmp / "list.txt"),
        "--pred",
        str(tmp / "pred"),
        "--pseudo",
        str(tmp / "out"),
        "--saliency",
        str(tmp / "sal"),
        "--out",
        str(tmp / out),
        "--num-classes",
        str(C),
        "--quiet",
        *extra,
    ]


def ref_pseudo(data: dict, name: str, missing=(), **kw) -> np.ndarray:
    cl = data["classes"][name]
    H, W = data["sal"][name].shape
    oa = {c: data["oa"][name, c] for c in cl}
    cam = {
        c: np.zeros((H, W), np.uint8) if (name, c) in missing else data["cam"][name, c] for c in cl
    }
    return L.pseudo_label_ref(data["sal"][name], oa, cam, cl, C, **kw)


def written(out: Path) -> list[str]:
    """Every entry in out (hidden staging folders included), or [] if out does not exist."""
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.fixture
def folders(tmp_path):
    return tmp_path, make_folders(tmp_path)


# ----------------------------------------------------------------------------- round trips


def test_pseudo_round_trip_mixed_sizes_matches_reference(folders, capsys):
    tmp, data = folders
    assert cli.main(pseudo_args(tmp, "out", "--batch-size", "2")) == 0
    summary = capsys.readouterr().out
    assert "6 images written" in summary and "images/s" in summary and "ignore pixels" in summary
    for name in data["names"]:
        img = Image.open(tmp / "out" / f"{name}.png")
        assert img.mode == "P" and img.getpalette()[: 3 * 256] == voc_palette()
        np.testing.assert_array_equal(
            read_label_png(tmp / "out" / f"{name}.png"), ref_pseudo(data, name)
        )
    assert written(tmp / "out") == [f"{n}.png" for n in data["names"]]  # no staging left


def test_pseudo_thresholds_are_passed_through(folders):
    tmp, data = folders
    kw = dict(fg=0.2, conflict=0.7, bg=10, att=0.6, pom=0.45, ratio=0.05)
    opts = [
        "--fg",
        "0.2",
        "--conflict",
        "0.7",
        "--bg",
        "10",
        "--att",
        "0.6",
        "--pom",
        "0.45",
        "--min-ratio",
        "0.05",
    ]
    assert cli.main(pseudo_args(tmp, "out", *opts)) == 0
    for name in data["names"]:
        np.testing.assert_array_equal(
            read_label_png(tmp / "out" / f"{name}.png"), ref_pseudo(data, name, **kw)
        )


def test_masked_round_trip_matches_reference(folders):
    tmp, data = folders
    assert cli.main(pseudo_args(tmp)) == 0
    assert cli.main(masked_args(tmp, "masked", "--kernel", "5", "--batch-size", "3")) == 0
    for name in data["names"]:
        pseudo = read_label_png(tmp / "out" / f"{name}.png")
        ref = L.non_salient_region_masking_ref(
            data["pred"][name], pseudo, data["sal"][name], data["classes"][name], kernel=5
        )
        np.testing.assert_array_equal(read_label_png(tmp / "masked" / f"{name}.png"), ref)


def test_subprocess_round_trip(folders):
    tmp, data = folders
    r = subprocess.run(
        [sys.executable, "-m", "nsrom_lib", *pseudo_args(tmp, "sub")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "6 images written" in r.stdout
    name = data["names"][2]
    np.testing.assert_array_equal(
        read_label_png(tmp / "sub" / f"{name}.png"), ref_pseudo(data, name)
    )


def test_label_defaults_come_from_maps_io(monkeypatch, capsys):
    """The CLI's defaults (and their --help text) are PSEUDO_DEFAULTS / MASKED_DEFAULTS."""
    from nsrom_lib.data.maps_io import MASKED_DEFAULTS, PSEUDO_DEFAULTS

    flags = {"fg": "fg", "conflict": "conflict", "bg": "bg", "att": "att", "pom": "pom",
             "ratio": "min_ratio"}
    req = ["--list", "l", "--saliency", "s", "--out", "o"]
    pseudo = ["labels", "pseudo", *req, "--oacam", "a", "--cam", "c"]
    masked = ["labels", "masked", *req, "--pred", "p", "--pseudo", "q"]
    args = cli._parser().parse_args(pseudo)
    assert {k: getattr(args, f) for k, f in flags.items()} == PSEUDO_DEFAULTS
    args = cli._parser().parse_args(masked)
    assert {"kernel": args.kernel, "ratio": args.min_ratio} == MASKED_DEFAULTS

    # one source of truth: changing the dicts changes the parsed defaults and the help
    for key in flags:
        monkeypatch.setitem(PSEUDO_DEFAULTS, key, 0.123)
    monkeypatch.setitem(MASKED_DEFAULTS, "kernel", 7)
    monkeypatch.setitem(MASKED_DEFAULTS, "ratio", 0.456)
    args = cli._parser().parse_args(pseudo)
    assert all(getattr(args, f) == 0.123 for f in flags.values())
    args = cli._parser().parse_args(masked)
    assert (args.kernel, args.min_ratio) == (7, 0.456)
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    with pytest.raises(SystemExit):
        cli.main(["labels", "pseudo", "--help"])
    help_text = capsys.readouterr().out
    assert help_text.count("(default 0.123)") == len(flags)


def test_labels_help_does_not_import_torch():
    code = (
        "import sys\nfrom nsrom_lib import cli\n"
        "for a in (['labels', 'pseudo', '--help'], ['bench', 'labels', '--help']):\n"
        "    try:\n        cli.main(a)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    for opt in (
        "--fg",
        "--conflict",
        "--bg",
        "--att",
        "--pom",
        "--min-ratio",
        "--strict",
        "--batch-size",
        "--device",
        "--num-classes",
    ):
        assert opt in r.stdout


# ----------------------------------------------------------------------------- bad inputs


def _break(tmp: Path, data: dict, case: str) -> Path:
    """Damage the folders as `case` says; returns the file the error must name."""
    n0, n1 = data["names"][0], data["names"][1]
    c1 = data["classes"][n1][0]
    if case == "missing saliency":
        p = tmp / "sal" / f"{n1}.png"
        p.unlink()
    elif case == "map size":
        p = tmp / "oacam" / f"{n1}_{c1}.png"
        save_gray_png(p, np.zeros((5, 7), np.uint8))
    elif case == "class out of range":
        p = tmp / "list.txt"
        p.write_text(p.read_text() + f"extra {C}\n")
    elif case == "garbage png":
        p = tmp / "cam" / f"{n1}_{c1}.png"
        p.write_bytes(b"not a png at all")
    elif case == "truncated saliency":
        p = tmp / "sal" / f"{n0}.png"
        p.write_bytes(p.read_bytes()[:40])
    else:
        raise ValueError(case)
    return p


@pytest.mark.parametrize(
    "case",
    ["missing saliency", "map size", "class out of range", "garbage png", "truncated saliency"],
)
def test_pseudo_bad_inputs_fail_cleanly(folders, capsys, case):
    tmp, data = folders
    bad = _break(tmp, data, case)
    assert cli.main(pseudo_args(tmp)) != 0
    err = capsys.readouterr().err
    assert bad.name in err and "error" in err
    assert written(tmp / "out") == []


@pytest.mark.parametrize("case", ["missing pred", "pred size", "pred values", "missing saliency"])
def test_masked_bad_inputs_fail_cleanly(folders, capsys, case):
    tmp, data = folders
    assert cli.main(pseudo_args(tmp)) == 0
    name = data["names"][-1]  # the last image: a late error must still leave nothing written
    if case == "missing pred":
        bad = tmp / "pred" / f"{name}.png"
        bad.unlink()
    elif case == "pred size":
        bad = tmp / "pred" / f"{name}.png"
        save_label_png(bad, np.zeros((3, 3), np.uint8))
    elif case == "pred values":  # found only while computing: the staging folder is dropped
        bad = tmp / "pred" / f"{name}.png"
        save_label_png(bad, np.full(data["sal"][name].shape, C + 1, np.uint8))
    else:
        bad = tmp / "sal" / f"{name}.png"
        bad.unlink()
    capsys.readouterr()
    assert cli.main(masked_args(tmp)) != 0
    err = capsys.readouterr().err
    assert bad.name in err
    assert written(tmp / "masked") == []


def test_cli_subprocess_error_exit_code(folders):
    tmp, data = folders
    _break(tmp, data, "missing saliency")
    r = subprocess.run(
        [sys.executable, "-m", "nsrom_lib", *pseudo_args(tmp)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 2 and f"{data['names'][1]}.png" in r.stderr
    assert "Traceback" not in r.stderr
    assert written(tmp / "out") == []


def test_missing_map_warns_and_strict_fails(folders, capsys, caplog):
    tmp, data = folders
    name = data["names"][1]
    cls = data["classes"][name]
    for c in cls:
        (tmp / "cam" / f"{name}_{c}.png").unlink()
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.data.maps_io"):
        assert cli.main(pseudo_args(tmp)) == 0
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{len(cls)} per-class map(s) missing" in warning and f"{name}_{cls[0]}.png" in warning
    assert f"missing maps      {len(cls)}" in capsys.readouterr().out
    missing = {(name, c) for c in cls}
    np.testing.assert_array_equal(
        read_label_png(tmp / "out" / f"{name}.png"), ref_pseudo(data, name, missing=missing)
    )
    # --strict: an error naming the file, nothing written
    assert cli.main(pseudo_args(tmp, "strict", "--strict")) != 0
    assert f"{name}_{cls[0]}.png" in capsys.readouterr().err
    assert written(tmp / "strict") == []


def test_bad_option_values(folders, capsys):
    tmp, _ = folders
    assert cli.main(pseudo_args(tmp, "out", "--batch-size", "0")) != 0
    assert cli.main(masked_args(tmp, "m", "--kernel", "0")) != 0
    assert "--kernel" in capsys.readouterr().err
    assert written(tmp / "out") == [] and written(tmp / "m") == []
    import torch

    if not torch.cuda.is_available():
        assert cli.main(pseudo_args(tmp, "out", "--device", "cuda")) != 0
        assert "no CUDA device" in capsys.readouterr().err
        assert written(tmp / "out") == []


# ----------------------------------------------------------------------------- library API


def test_load_label_inputs_groups_sizes(folders):
    tmp, data = folders
    inputs = load_label_inputs(
        tmp / "list.txt", tmp / "sal", oacam_dir=tmp / "oacam", cam_dir=tmp / "cam", num_classes=C
    )
    assert inputs.mode == "pseudo" and len(inputs.entries) == 6 and not inputs.missing_maps
    assert inputs.sizes == {(20, 24): 3, (17, 13): 2, (9, 31): 1}
    with pytest.raises(ValueError, match="either"):
        load_label_inputs(tmp / "list.txt", tmp / "sal", oacam_dir=tmp / "oacam", num_classes=C)


def test_write_labels_is_all_or_nothing(tmp_path):
    def stream():
        yield "a", np.zeros((4, 4), np.uint8)
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError):
        write_labels(tmp_path / "o", stream())
    assert written(tmp_path / "o") == []
    stats = write_labels(tmp_path / "o", [("a", np.full((2, 2), 255, np.uint8))])
    assert stats == dict(images=1, pixels=4, ignore=4)
    assert written(tmp_path / "o") == ["a.png"]


# ----------------------------------------------------------------------------- bench labels


def test_bench_labels_json_and_run_maps(tmp_path, capsys):
    """`bench labels` on GT-derived maps, then on a run's maps/ folders (written here)."""
    import json

    from nsrom_lib.bench import gt_derived_maps
    from nsrom_lib.data.stats import load_split_arrays
    from nsrom_lib.pipeline import ensure_data, open_run

    args = ["bench", "labels", "--profile", "smoke", "--limit", "12", "--repeats", "1",
            "--batch-size", "5", "--json"]  # fmt: skip
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["identical"] for r in res["rows"]] == [True, True, True]
    assert res["threads"] == 1 and "derived from GT" in res["source"]

    run = open_run(tmp_path / "run", "smoke")
    root = ensure_data(run, progress=False)
    arrays = load_split_arrays(root, "train")
    present = np.zeros((len(arrays["names"]), 6), bool)
    for i, cl in enumerate(arrays["classes"]):
        present[i, cl] = True
    oa, cam = gt_derived_maps(arrays["mask"], present, oa_sigma=0.1)
    for i, name in enumerate(arrays["names"]):
        for c in arrays["classes"][i]:
            save_gray_png(run.dir / "maps" / "oacam" / f"{name}_{c}.png", oa[i, c])
            save_gray_png(run.dir / "maps" / "cam" / f"{name}_{c}.png", cam[i, c])
    assert cli.main([*args[:-1], "--run-dir", str(run.dir)]) == 0
    out = capsys.readouterr().out
    assert f"run {run.dir}" in out and "NO" not in out


# ----------------------------------------------------------------------------- errors: one line


def test_bad_label_folder_is_one_line_and_exit_2(folders, capsys):
    tmp, data = folders
    for name in data["names"][:3]:  # several problems: still one line, every file named
        (tmp / "sal" / f"{name}.png").unlink()
    assert cli.main(pseudo_args(tmp)) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsrom: error: 3 problem(s)") and err.count("\n") == 1, err
    assert all(f"{n}.png" in err for n in data["names"][:3]) and "Traceback" not in err
    args = pseudo_args(tmp)
    args[args.index("--oacam") + 1] = str(tmp / "nope")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsrom: error: OA-CAM folder not found") and err.count("\n") == 1
    assert written(tmp / "out") == []


def test_debug_shows_the_traceback(folders):
    tmp, data = folders
    _break(tmp, data, "missing saliency")
    r = subprocess.run(
        [sys.executable, "-m", "nsrom_lib", "--debug", *pseudo_args(tmp)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" in r.stderr and "DataError" in r.stderr
    assert f"{data['names'][1]}.png" in r.stderr and "nsrom: error:" not in r.stderr
    assert written(tmp / "out") == []


def test_interrupt_exits_130_and_unexpected_errors_keep_their_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(["compare", "x"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("nsrom: error: interrupted") and "kept" in err and err.count("\n") == 1
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "compare", "x"])

    def bug(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "_dispatch", bug)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["compare", "x"])


def test_damaged_pixel_data_is_found_before_anything_is_written(folders, capsys):
    """The check reads headers only; a map cut after its header fails when decoded, and the
    labels already computed are dropped with the staging folder."""
    tmp, data = folders
    name = data["names"][-1]
    p = tmp / "cam" / f"{name}_{data['classes'][name][0]}.png"
    p.write_bytes(p.read_bytes()[:60])
    assert load_label_inputs(tmp / "list.txt", tmp / "sal", oacam_dir=tmp / "oacam",
                             cam_dir=tmp / "cam", num_classes=C).entries  # fmt: skip
    assert cli.main(pseudo_args(tmp, "out", "--batch-size", "1", "--workers", "2")) == 2
    err = capsys.readouterr().err
    assert p.name in err and "corrupt or truncated" in err
    assert written(tmp / "out") == [] and not list(tmp.rglob(".staging-*"))


# ----------------------------------------------------------------------------- workers, layering


def test_workers_and_batch_size_do_not_change_the_files(folders):
    tmp, data = folders
    assert cli.main(pseudo_args(tmp, "w1", "--workers", "1", "--batch-size", "32")) == 0
    assert cli.main(pseudo_args(tmp, "w3", "--workers", "3", "--batch-size", "1")) == 0
    for name in data["names"]:
        one = (tmp / "w1" / f"{name}.png").read_bytes()
        assert one == (tmp / "w3" / f"{name}.png").read_bytes()
        save_label_png(tmp / "ref.png", ref_pseudo(data, name))
        assert one == (tmp / "ref.png").read_bytes()  # the bytes save_label_png writes


def test_ordered_map_keeps_order_raises_in_turn_and_stops():
    import threading
    import time

    from nsrom_lib.parallel import OrderedMap

    def slow(i: int) -> int:
        time.sleep(0.001 * (i % 3))
        if i == 7:
            raise ValueError("item 7")
        return i * i

    for workers in (1, 3):
        got = []
        with pytest.raises(ValueError, match="item 7"), OrderedMap(slow, range(20), workers) as m:
            for x in m:
                got.append(x)
        assert got == [i * i for i in range(7)]
    started = []
    lock = threading.Lock()

    def note(i: int) -> int:
        with lock:
            started.append(i)
        return i

    m = OrderedMap(note, range(1000), workers=2, ahead=4)
    assert next(m) == 0
    m.close()
    assert len(started) <= 6  # bounded: at most `ahead` in flight, nothing after close
    assert list(OrderedMap(note, [], workers=2)) == []


def test_data_layer_does_not_import_the_label_math():
    """nsrom_lib/data/ imports neither nsrom_lib.labels nor nsrom_lib.pipeline, and the label
    folders' reader loads no torch (it checks inputs while torch loads)."""
    import ast

    for path in sorted((ROOT / "nsrom_lib" / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for m in mods:
                bad = m in ("nsrom_lib.labels", "nsrom_lib.pipeline") or m.startswith(
                    ("nsrom_lib.labels.", "nsrom_lib.pipeline.")
                )
                assert not bad, f"{path.name} imports {m}"
    code = ("import sys\nimport nsrom_lib.data.maps_io, nsrom_lib.label_folders\n"
            "bad = [m for m in ('torch', 'nsrom_lib.labels', 'nsrom_lib.pipeline') if m in sys.modules]\n"
            "assert not bad, bad\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_header_check_reads_pillow_modes(tmp_path):
    """The 33-byte header check agrees with Pillow on size and mode for every PNG kind."""
    from nsrom_lib.data.maps_io import _ihdr

    rng = np.random.default_rng(0)
    cases = {
        "L": rng.integers(0, 256, (5, 7), dtype=np.uint8),
        "RGB": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        "RGBA": rng.integers(0, 256, (5, 7, 4), dtype=np.uint8),
        "LA": rng.integers(0, 256, (5, 7, 2), dtype=np.uint8),
        "I;16": rng.integers(0, 65535, (5, 7), dtype=np.uint16),
    }
    for mode, arr in cases.items():
        p = tmp_path / f"{mode.replace(';', '')}.png"
        Image.fromarray(arr).save(p)
        with Image.open(p) as im:
            assert _ihdr(p) == ((5, 7), im.mode), mode
    save_label_png(tmp_path / "p.png", np.zeros((3, 4), np.uint8))
    Image.new("1", (4, 3)).save(tmp_path / "1.png")
    assert _ihdr(tmp_path / "p.png") == ((3, 4), "P") and _ihdr(tmp_path / "1.png") == ((3, 4), "1")
    (tmp_path / "x.png").write_bytes(b"not a png")
    assert _ihdr(tmp_path / "x.png") is None
