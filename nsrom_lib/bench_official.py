"""`labels pseudo` / `labels masked` against the official label scripts, as whole processes.

    python -m nsrom_lib.bench_official --official PATH [--cases 1000] [--size 375x500]
        [--repeats 3] [--official-python PY] [--keep DIR] [--json]

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
object regions. Each repeat runs, in this order, official pseudo, ours pseudo, official masked,
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


# ----------------------------------------------------------------------------- inputs


def _blob(rng: np.random.Generator, H: int, W: int, cy: float, cx: float, s: float) -> np.ndarray:
    """A separable Gaussian bump (H, W) float32 with peak 1 at (cy, cx), spread s pixels."""
    y = np.exp(-(((np.arange(H, dtype=np.float32) - cy) / s) ** 2) / 2)
    x = np.exp(-(((np.arange(W, dtype=np.float32) - cx) / (s * rng.uniform(0.7, 1.4))) ** 2) / 2)
    return np.outer(y, x)


def _case(rng: np.random.Generator, H: int, W: int, num_classes: int):
    """One image's classes, saliency, OA-CAMs, CAMs and prediction (uint8 arrays)."""
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
        oa[c] = np.round(obj**0.7 * rng.integers(120, 256)).astype(np.uint8)
        part = _blob(rng, H, W, cy + rng.normal(0, s / 3), cx + rng.normal(0, s / 3), s / 2)
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
) -> dict[str, Any]:
    """Write `cases` generated images' inputs in the official layout under root (see module doc).

    size: (H, W). pred_dir: where the predictions go (default root/pred). Returns the names
    and their class ids, in list order.
    """
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
            case = _case(rng, H, W, num_classes)
            listed[name] = case[0]
            jobs.append(pool.submit(write, name, case))
        for j in jobs:
            j.result()
    # every line ends with a newline: the official scripts cut each line's last character
    (root / "data" / "train_cls.txt").write_text(
        "".join(" ".join([n, *map(str, cl)]) + "\n" for n, cl in listed.items())
    )
    return {"names": list(listed), "classes": listed, "size": [H, W]}
