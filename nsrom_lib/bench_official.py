"""`labels pseudo` / `labels masked` against the official label scripts, as whole processes.

    python -m nsrom_lib.bench_official --official PATH [--cases 1000] [--size 375x500]
        [--repeats 3] [--official-python PY] [--keep DIR] [--maps official|partial] [--json]

PATH is a checkout of the public NSROM code (the folder holding `classification/gen_label.py`
and `classification/gen_masked_label.py`); nothing is downloaded. The official scripts run
unchanged, as `PY classification/gen_label.py` with the working folder laid out as they expect:

    data/train_cls.txt              the list ("name c1 c2 ...", 0-based class ids)
    data/saliency_aug/{name}.png    8-bit gray saliency maps
    runs/exp2/attention/{name}_{c}.png   OA-CAMs (read by background extraction)
    runs/exp1/attention/{name}_{c}.png   CAMs (read by potential object mining)
    pseudo_labels/                  written by gen_label.py, read by gen_masked_label.py
    masked_labels/                  written by gen_masked_label.py

and the round-1 predictions (palette PNGs) at the script's `seg_path`, read from the script: an
absolute path (the published script has `/your_dir/...`) is made a symbolic link into the
scratch folder for the run and removed afterwards, so this needs the right to create it. Their
unused `pydensecrf` import is satisfied by an empty stand-in package on PYTHONPATH. PY needs
numpy, opencv-python-headless and pillow (default: this interpreter).

The inputs are generated (`make_official_inputs`, seeded): `cases` images of one size, 20
classes, 1 to 3 classes per image, smooth saliency and attention maps and predictions with
object regions. The attention maps are scaled to their maximum as the official test scripts
write them (`--maps official`, so each reaches 255), or to peaks of 120..255 (`--maps
partial`: maps that do not span the full range, which the label CLI computes on its slower
general path). Each repeat runs, in this order, official pseudo, ours pseudo, official masked,
ours masked (A B A B: a change of the machine's load hits both tools); both masked runs read the
official pseudo labels. Every output of ours is then compared with the official one, pixel by
pixel and byte by byte. The table gives the median wall time of each tool and stage, its ratio
and whether the outputs agree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "OFFICIAL_SCRIPTS",
    "MAP_KINDS",
    "make_official_inputs",
    "seg_path_of",
    "compare_folders",
    "bench_official",
    "format_table",
    "main",
]

#: stage -> the official script (under the checkout) that makes it.
OFFICIAL_SCRIPTS = {
    "pseudo": "classification/gen_label.py",
    "masked": "classification/gen_masked_label.py",
}

_SCRATCH_PREFIX = "nsrom-bench-official-"

#: How the generated OA-CAMs and CAMs are scaled (`_case`).
MAP_KINDS = ("official", "partial")


# ----------------------------------------------------------------------------- inputs


def _blob(rng: np.random.Generator, H: int, W: int, cy: float, cx: float, s: float) -> np.ndarray:
    """A separable Gaussian bump (H, W) float32 with peak 1 at (cy, cx), spread s pixels."""
    y = np.exp(-(((np.arange(H, dtype=np.float32) - cy) / s) ** 2) / 2)
    x = np.exp(-(((np.arange(W, dtype=np.float32) - cx) / (s * rng.uniform(0.7, 1.4))) ** 2) / 2)
    return np.outer(y, x)


def _as_written(att: np.ndarray) -> np.ndarray:
    """A non-negative float32 map as the official test scripts save attention maps: scaled by
    its maximum and truncated to uint8 (`att / (max + 1e-8) * 255`), so that it reaches 255."""
    return np.array(att / (np.max(att) + 1e-8) * 255, dtype=np.uint8)


def _case(rng: np.random.Generator, H: int, W: int, num_classes: int, maps: str = "official"):
    """One image's classes, saliency, OA-CAMs, CAMs and prediction (uint8 arrays).

    maps: "official": the OA-CAMs and CAMs scaled as the official scripts write them
    (`_as_written`); "partial": each scaled to a random peak of 120..255, maps that do not
    span the full range of raw values."""
    k = int(rng.integers(1, 4))
    classes = sorted(rng.choice(num_classes, size=k, replace=False).tolist())
    sal = np.zeros((H, W), np.float32)
    pred = np.zeros((H, W), np.uint8)
    oa, cam = {}, {}
    for c in classes:
        cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
        s = rng.uniform(0.06, 0.2) * min(H, W)
        obj = _blob(rng, H, W, cy, cx, s)
        if rng.random() < 0.8:  # salient object; the others only the attention finds
            sal = np.maximum(sal, np.clip(obj * rng.uniform(1.2, 2.5), 0, 1))
        part = _blob(rng, H, W, cy + rng.normal(0, s / 3), cx + rng.normal(0, s / 3), s / 2)
        if maps == "official":
            oa[c] = _as_written(obj**0.7 * np.float32(rng.uniform(0.5, 3.0)))
            cam[c] = _as_written(part * np.float32(rng.uniform(0.5, 3.0)))
        else:
            oa[c] = np.round(obj**0.7 * rng.integers(120, 256)).astype(np.uint8)
            cam[c] = np.round(part * rng.integers(120, 256)).astype(np.uint8)
        pred[obj > rng.uniform(0.3, 0.6)] = c + 1
    return classes, np.round(sal * 255).astype(np.uint8), oa, cam, pred


def _save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """An (H, W) uint8 array as an 8-bit gray PNG, or as a palette PNG of raw indices."""
    if palette is None:
        img = Image.frombytes("L", array.shape[::-1], array.tobytes())
    else:
        img = Image.frombytes("P", array.shape[::-1], array.tobytes())
        img.putpalette(palette)
    img.save(path)


def make_official_inputs(
    root: str | os.PathLike,
    cases: int = 1000,
    size: tuple[int, int] = (375, 500),
    *,
    num_classes: int = 20,
    seed: int = 0,
    pred_dir: str | os.PathLike | None = None,
    workers: int = 2,
    maps: str = "official",
) -> dict[str, Any]:
    """Write `cases` generated images' inputs in the official layout under root (see module doc).

    size: (H, W). pred_dir: where the predictions go (default root/pred). maps: "official" or
    "partial" (see `_case`). Returns the names and their class ids, in list order.
    """
    if maps not in MAP_KINDS:
        raise ValueError(f"maps must be one of {MAP_KINDS}, got {maps!r}")
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    H, W = size
    if H < 8 or W < 8:
        raise ValueError(f"size must be at least 8x8, got {H}x{W}")
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
    from nsrom_lib.data.io import voc_palette

    root = Path(root)
    dirs = {k: root / v for k, v in (("sal", "data/saliency_aug"), ("oa", "runs/exp2/attention"),
                                     ("cam", "runs/exp1/attention"))}
    dirs["pred"] = Path(pred_dir) if pred_dir is not None else root / "pred"
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    rng = np.random.default_rng(seed)
    listed: dict[str, list[int]] = {}

    def write(name: str, case) -> None:
        classes, sal, oa, cam, pred = case
        _save(dirs["sal"] / f"{name}.png", sal)
        for c in classes:
            _save(dirs["oa"] / f"{name}_{c}.png", oa[c])
            _save(dirs["cam"] / f"{name}_{c}.png", cam[c])
        _save(dirs["pred"] / f"{name}.png", pred, palette)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        jobs = []
        for i in range(cases):
            name = f"2007_{i:06d}"
            case = _case(rng, H, W, num_classes, maps)
            listed[name] = case[0]
            jobs.append(pool.submit(write, name, case))
        for j in jobs:
            j.result()
    # every line ends with a newline: the official scripts cut each line's last character
    (root / "data" / "train_cls.txt").write_text(
        "".join(" ".join([n, *map(str, cl)]) + "\n" for n, cl in listed.items())
    )
    return {"names": list(listed), "classes": listed, "size": [H, W]}


# ----------------------------------------------------------------------------- layout


def seg_path_of(script: str | os.PathLike) -> str:
    """The `seg_path = '...'` literal of the official gen_masked_label.py (where it reads the
    round-1 predictions)."""
    text = Path(script).read_text()
    m = re.search(r"^seg_path\s*=\s*(['\"])(.+?)\1\s*$", text, re.MULTILINE)
    if m is None:
        raise ValueError(f"{script}: no line `seg_path = '...'`; is this the official script?")
    return m.group(2)


def _check_official(official: Path) -> dict[str, Path]:
    scripts = {stage: official / rel for stage, rel in OFFICIAL_SCRIPTS.items()}
    missing = [str(p) for p in scripts.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"--official {official}: {', '.join(missing)} not found; pass the folder of a "
            "checkout of the official NSROM code (the one holding classification/)"
        )
    return scripts


def _check_python(python: str) -> None:
    try:
        r = subprocess.run([python, "-c", "import cv2, numpy, PIL"], capture_output=True,
                           text=True)  # fmt: skip
        why = r.stderr.strip().splitlines()[-1] if r.returncode and r.stderr.strip() else None
    except OSError as e:
        r, why = None, e.strerror or str(e)
    if r is None or r.returncode != 0:
        raise RuntimeError(
            f"--official-python {python} cannot import cv2, numpy and PIL ({why}); "
            "make one: python3 -m venv /tmp/offvenv && /tmp/offvenv/bin/pip install numpy "
            "opencv-python-headless pillow, then pass --official-python /tmp/offvenv/bin/python"
        )


def _seg_folder(scratch: Path, tree: Path, seg_path: str) -> tuple[Path, Path | None]:
    """(folder to write the predictions to, symbolic link to remove afterwards or None)."""
    p = Path(seg_path)
    if not p.is_absolute():
        return tree / p, None
    top = Path(p.anchor) / p.parts[1]
    if top.is_symlink() and _SCRATCH_PREFIX in os.readlink(top) and not top.exists():
        top.unlink()  # a dangling link left by a killed earlier run of this benchmark
    if top.exists() or top.is_symlink():
        raise RuntimeError(
            f"{top} exists: the official gen_masked_label.py reads the predictions from "
            f"{seg_path}, and this benchmark links {top} to its scratch folder for the run; "
            f"move {top} away first"
        )
    target = scratch / "seg-root"
    folder = target.joinpath(*p.parts[2:])
    folder.mkdir(parents=True)
    try:
        os.symlink(target, top)
    except OSError as e:
        raise RuntimeError(
            f"cannot create {top} ({e.strerror or e}), where the official gen_masked_label.py "
            f"reads the predictions ({seg_path}): run as a user who may create it"
        ) from e
    return folder, top


def _stub(scratch: Path) -> Path:
    """A folder with an empty `pydensecrf.densecrf` (imported but unused by the scripts)."""
    pkg = scratch / "stub" / "pydensecrf"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "densecrf.py").write_text("# stand-in: the label scripts import it but never use it\n")
    return pkg.parent


# ----------------------------------------------------------------------------- running


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a whole process; RuntimeError with its stderr if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {r.returncode}: {tail}")
    return seconds, r.stdout


def _idat(data: bytes) -> bytes:
    """The concatenated IDAT payloads of a PNG (the compressed pixels)."""
    out, i = [], 8
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        if data[i + 4 : i + 8] == b"IDAT":
            out.append(data[i + 8 : i + 8 + n])
        i += 12 + n
    return b"".join(out)


def compare_folders(official: str | os.PathLike, ours: str | os.PathLike) -> dict[str, Any]:
    """How the label PNGs of two folders agree: files, pixel-, IDAT- and byte-identical counts."""
    a, b = Path(official), Path(ours)
    names = sorted(p.name for p in a.glob("*.png"))
    theirs = sorted(p.name for p in b.glob("*.png"))
    res = dict(files=len(names), ours=len(theirs), pixels=0, idat=0, bytes=0, first_diff=None)
    for name in names:
        if not (b / name).is_file():
            res["first_diff"] = res["first_diff"] or f"{name}: missing in ours"
            continue
        da, db = (a / name).read_bytes(), (b / name).read_bytes()
        pa = np.asarray(Image.open(a / name))
        pb = np.asarray(Image.open(b / name))
        same = pa.shape == pb.shape and np.array_equal(pa, pb)
        res["pixels"] += same
        res["idat"] += _idat(da) == _idat(db)
        res["bytes"] += da == db
        if not same and res["first_diff"] is None:
            n = int((pa != pb).sum()) if pa.shape == pb.shape else -1
            res["first_diff"] = f"{name}: {n} pixels differ"
    res["identical"] = res["pixels"] == res["files"] == res["ours"] and res["files"] > 0
    return res


def _env(pythonpath: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(pythonpath)
    return env


def bench_official(
    official: str | os.PathLike,
    *,
    cases: int = 1000,
    size: tuple[int, int] = (375, 500),
    repeats: int = 3,
    official_python: str | None = None,
    keep: str | os.PathLike | None = None,
    seed: int = 0,
    maps: str = "official",
) -> dict[str, Any]:
    """Time both tools on generated inputs (see the module doc); returns times and agreement.

    keep: a folder (must not exist) to keep the scratch tree in; default: a temporary folder,
    removed afterwards.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    official = Path(official).expanduser().resolve()
    scripts = _check_official(official)
    seg_path = seg_path_of(scripts["masked"])
    python = official_python or sys.executable
    _check_python(python)
    if keep is not None and Path(keep).exists():
        raise FileExistsError(f"--keep {keep} exists: pass a folder that does not exist yet")
    scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX))
    tree, link = scratch / "tree", None
    try:
        pred, link = _seg_folder(scratch, tree, seg_path)
        make_official_inputs(tree, cases, size, seed=seed, pred_dir=pred, maps=maps)
        off_env = _env(_stub(scratch))
        our_env = _env(Path(__file__).resolve().parent.parent)
        ours = [sys.executable, "-m", "nsrom_lib", "labels"]
        common = ["--list", "data/train_cls.txt", "--saliency", "data/saliency_aug", "--quiet",
                  "--json"]  # fmt: skip
        commands = {
            ("pseudo", "official"): ([python, str(scripts["pseudo"])], "pseudo_labels"),
            ("pseudo", "ours"): ([*ours, "pseudo", *common, "--oacam", "runs/exp2/attention",
                                  "--cam", "runs/exp1/attention", "--out", "ours_pseudo"],
                                 "ours_pseudo"),
            ("masked", "official"): ([python, str(scripts["masked"])], "masked_labels"),
            ("masked", "ours"): ([*ours, "masked", *common, "--pred", str(pred), "--pseudo",
                                  "pseudo_labels", "--out", "ours_masked"], "ours_masked"),
        }  # fmt: skip
        times: dict[str, list[float]] = {f"{s}/{t}": [] for s, t in commands}
        summaries: dict[str, list[dict]] = {"pseudo": [], "masked": []}
        for _ in range(repeats):
            for (stage, tool), (cmd, out) in commands.items():
                shutil.rmtree(tree / out, ignore_errors=True)
                seconds, stdout = _run(cmd, tree, off_env if tool == "official" else our_env)
                times[f"{stage}/{tool}"].append(seconds)
                if tool == "ours":
                    summaries[stage].append({**json.loads(stdout), "wall": seconds})
        agree = {
            "pseudo": compare_folders(tree / "pseudo_labels", tree / "ours_pseudo"),
            "masked": compare_folders(tree / "masked_labels", tree / "ours_masked"),
        }
        if keep is not None:  # the tree, and the predictions (outside it) as keep/pred
            shutil.copytree(tree, keep, symlinks=True)
            if link is not None:
                shutil.copytree(pred, Path(keep) / "pred")
    finally:
        if link is not None:
            link.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
    return {**_result(official, cases, size, repeats, times, summaries, agree), "maps": maps}


def _official_commit(official: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(official), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)  # fmt: skip
    return r.stdout.strip() or None if r.returncode == 0 else None


def _result(official, cases, size, repeats, times, summaries, agree) -> dict[str, Any]:
    from nsrom_lib.parallel import default_workers
    from nsrom_lib.pipeline import cpu_model

    rows = []
    for stage in ("pseudo", "masked"):
        off, our = times[f"{stage}/official"], times[f"{stage}/ours"]
        s = summaries[stage]
        rows.append(dict(
            stage=stage, official_s=off, ours_s=our,
            official_median=statistics.median(off), ours_median=statistics.median(our),
            ratio=statistics.median(off) / statistics.median(our),
            ours_check_s=statistics.median(x["check_seconds"] for x in s),
            ours_labels_s=statistics.median(x["seconds"] for x in s),
            ours_startup_s=statistics.median(
                x["wall"] - x["check_seconds"] - x["seconds"] for x in s),
            workers=s[0].get("workers", 1), agree=agree[stage],
        ))  # fmt: skip
    return dict(official=str(official), official_commit=_official_commit(official), cases=cases,
                size=f"{size[0]}x{size[1]}", repeats=repeats, cpu=cpu_model(),
                cores=default_workers(1024), rows=rows)  # fmt: skip


def format_table(res: dict[str, Any]) -> str:
    """The result of `bench_official` as a plain-text table."""
    lines = [
        f"{res['cases']} cases of {res['size']} px ({res.get('maps', 'official')} maps), "
        f"{res['repeats']} repeats (A B A B), "
        f"{res['cpu']}, {res['cores']} cores; official code {res['official']}"
        + (f" at {res['official_commit']}" if res["official_commit"] else ""),
        "",
        f"{'stage':<8}{'official s':>12}{'ours s':>10}{'ratio':>8}  {'identical outputs':<40}",
    ]
    for r in res["rows"]:
        a = r["agree"]
        same = (f"{'yes' if a['identical'] else 'NO'}: {a['pixels']}/{a['files']} pixels, "
                f"{a['idat']} IDAT, {a['bytes']} bytes")  # fmt: skip
        lines.append(f"{r['stage']:<8}{r['official_median']:>12.2f}{r['ours_median']:>10.2f}"
                     f"{r['ratio']:>7.2f}x  {same}")  # fmt: skip
    lines += ["", "seconds: median wall time of the whole process; ratio: official / ours",
              "ours, median per stage: startup and imports / input check / read, compute, write"]
    for r in res["rows"]:
        runs = " ".join(f"{x:.2f}" for x in r["official_s"])
        ours = " ".join(f"{x:.2f}" for x in r["ours_s"])
        lines.append(f"  {r['stage']:<7} {r['ours_startup_s']:.2f} / {r['ours_check_s']:.2f} / "
                     f"{r['ours_labels_s']:.2f} s ({r['workers']} workers); runs: official "
                     f"{runs}, ours {ours}")  # fmt: skip
        if r["agree"]["first_diff"]:
            lines.append(f"    first difference: {r['agree']['first_diff']}")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"size must read HxW, e.g. 375x500; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nsrom_lib.bench_official",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--official", required=True,
                   help="folder of a checkout of the official NSROM code (holds classification/)")
    p.add_argument("--cases", type=int, default=1000, help="generated images (default 1000)")
    p.add_argument("--size", type=_size, default=(375, 500), help="HxW (default 375x500)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each (default 3)")
    p.add_argument("--official-python", default=None,
                   help="Python with numpy, opencv-python-headless, pillow (default: this one)")
    p.add_argument("--keep", default=None,
                   help="copy the scratch tree (inputs and outputs) to this new folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--maps", choices=MAP_KINDS, default="official",
                   help="OA-CAMs and CAMs scaled to their maximum as the official scripts write "
                        "them (default), or 'partial': peaks of 120..255")
    p.add_argument("--json", action="store_true", help="print JSON only")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cases < 1 or args.repeats < 1:
        print("bench_official: error: --cases and --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        res = bench_official(args.official, cases=args.cases, size=args.size,
                             repeats=args.repeats, official_python=args.official_python,
                             keep=args.keep, seed=args.seed, maps=args.maps)  # fmt: skip
    except (ValueError, RuntimeError, OSError) as e:
        print(f"bench_official: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0 if all(r["agree"]["identical"] for r in res["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
