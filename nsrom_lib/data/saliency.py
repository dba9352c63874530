"""Saliency maps without a trained detector: two classical methods, a folder writer, a measure.

The method needs one 8-bit gray saliency map per image (`Saliency/{name}.png`, 0..255). For
images that come without one, two training-free methods make it from the image alone:

    ft          frequency-tuned saliency (Achanta et al., CVPR 2009): how far each pixel's
                colour, lightly blurred, lies from the image's mean colour in CIE Lab
    spectral    spectral residual (Hou & Zhang, CVPR 2007): the part of the log amplitude
                spectrum that its local average does not explain, brought back to the image
                with the original phase, squared and smoothed

Both are deterministic functions of the image: (H, W, 3) uint8 RGB -> (H, W) uint8, stretched
to 0..255 (a flat image gives zeros). `write_saliency_maps` runs one of them over a folder of
images (`nsrom data saliency`), and `evaluate_saliency` measures a source of maps against
SynthVOC's instances (`nsrom data saliency-eval`): which salient and which non-salient objects
a map covers, and how much background it marks.

numpy, scipy and scikit-image only: no torch, so the command starts quickly. The evaluation
reads the split file through `nsrom_lib.data.voc`, which imports torch, when it is called.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import color, transform

from nsrom_lib.data.io import (
    DataError,
    atomic_write_json,
    read_gray_png,
    read_label_png,
    read_rgb,
    save_gray_png,
)
from nsrom_lib.progress import progress_bar

__all__ = [
    "METHODS",
    "IMAGE_EXTENSIONS",
    "frequency_tuned",
    "spectral_residual",
    "saliency_map",
    "list_images",
    "read_name_list",
    "write_saliency_maps",
    "evaluate_saliency",
    "format_saliency_eval",
]

#: The method names `saliency_map` accepts.
METHODS: tuple[str, ...] = ("ft", "spectral")

#: Image files looked for, in order of preference when two share a name (as `data/voc.py`).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

#: What a folder written by `write_saliency_maps` records about its maps (in MANIFEST).
SALIENCY_VERSION = 1
MANIFEST = "saliency.json"

#: spectral residual: the working size (longer side, px) and the Gaussian's sigma at that size
#: (px; this project's choice of the smoothing the method applies to its map).
SR_SIZE = 64
SR_SIGMA = 3.0

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # the 5-tap blur of the ft method
#: spectral residual: amplitudes below this share of their mean are raised to it before the
#: log, so that exact zeros of the spectrum (a flat synthetic shape has them) do not dominate
_AMP_FLOOR = 0.01


# ----------------------------------------------------------------------------- the methods


def _check_image(image: np.ndarray) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array; ValueError naming the shape and dtype otherwise."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
        raise ValueError(
            f"a saliency method takes an (H, W, 3) uint8 RGB image, got {image.shape} "
            f"{image.dtype}; read files with nsrom_lib.data.io.read_rgb"
        )
    return image


def _stretch(s: np.ndarray) -> np.ndarray:
    """(H, W) float -> (H, W) uint8: min -> 0, max -> 255, rounded; a flat map -> zeros."""
    lo, hi = float(s.min()), float(s.max())
    if not hi - lo > 1e-12 * max(1.0, abs(hi)):
        return np.zeros(s.shape, np.uint8)
    return np.rint((s - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def frequency_tuned(image: np.ndarray) -> np.ndarray:
    """Frequency-tuned saliency: (H, W, 3) uint8 RGB -> (H, W) uint8, 0..255.

    Each pixel's saliency is the Euclidean distance in CIE Lab between the image blurred by a
    5-tap binomial filter (which removes noise and fine texture, keeping most of the band)
    and the mean Lab colour of the whole image; the distances are stretched to 0..255.
    """
    lab = color.rgb2lab(_check_image(image))  # (H, W, 3) float64
    mean = lab.reshape(-1, 3).mean(axis=0)
    blurred = lab
    for axis in (0, 1):
        blurred = ndimage.convolve1d(blurred, _BINOMIAL, axis=axis, mode="reflect")
    return _stretch(np.linalg.norm(blurred - mean, axis=2))


def _working_gray(image: np.ndarray, size: int) -> np.ndarray:
    """The image in gray (float64, 0..1), shrunk so that its longer side is at most `size`."""
    gray = color.rgb2gray(image)
    h, w = gray.shape
    scale = size / max(h, w)
    if scale >= 1.0:
        return gray
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    return transform.resize(gray, shape, order=1, anti_aliasing=True)


def spectral_residual(
    image: np.ndarray, size: int = SR_SIZE, sigma: float = SR_SIGMA
) -> np.ndarray:
    """Spectral-residual saliency: (H, W, 3) uint8 RGB -> (H, W) uint8, 0..255.

    On the gray image shrunk to `size` px (longer side; smaller images keep theirs): the log
    amplitude of its 2-D Fourier transform (amplitudes floored at 1% of their mean) minus that
    log amplitude averaged over 3 x 3 neighbouring frequencies (periodic) is the spectral residual; with the original phase it
    goes back to the image plane, where the squared magnitude, smoothed by a Gaussian of
    `sigma` px at `size` px, is the map. It is resized to (H, W) bilinearly and stretched to
    0..255. A flat image gives zeros.
    """
    image = _check_image(image)
    gray = _working_gray(image, size)
    if float(np.ptp(gray)) < 1e-9:
        return np.zeros(image.shape[:2], np.uint8)
    spectrum = np.fft.fft2(gray)
    amplitude = np.abs(spectrum)
    log_amp = np.log(np.maximum(amplitude, _AMP_FLOOR * amplitude.mean()))
    residual = log_amp - ndimage.uniform_filter(log_amp, size=3, mode="wrap")
    back = np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))
    s = ndimage.gaussian_filter(np.abs(back) ** 2, sigma * max(gray.shape) / size, mode="nearest")
    if s.shape != image.shape[:2]:
        s = transform.resize(s, image.shape[:2], order=1, anti_aliasing=False)
    return _stretch(s)


_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ft": frequency_tuned,
    "spectral": spectral_residual,
}


def _method_function(method: str) -> Callable[[np.ndarray], np.ndarray]:
    if method not in _FUNCTIONS:
        raise ValueError(
            f"saliency method {method!r} is not known; choose one of {', '.join(METHODS)} "
            "(ft: frequency-tuned, spectral: spectral residual)"
        )
    return _FUNCTIONS[method]


def saliency_map(image: np.ndarray, method: str = "ft") -> np.ndarray:
    """The saliency map of one image by `method` (one of METHODS).

    image: (H, W, 3) uint8 RGB. Returns (H, W) uint8, 0..255. ValueError for another method
    name (listing the choices) or another image shape or dtype.
    """
    return _method_function(method)(image)


# ----------------------------------------------------------------------------- a folder of images


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """{name: path} of the .jpg / .jpeg / .png files in `folder` (not its sub-folders).

    Extensions are matched without case; when two files share a name, .jpg wins over .jpeg
    over .png. Sorted by name.
    """
    found: dict[str, tuple[int, Path]] = {}
    for entry in os.scandir(folder):
        stem, ext = os.path.splitext(entry.name)
        ext = ext.lower()
        if ext in IMAGE_EXTENSIONS and entry.is_file() and not stem.startswith("."):
            rank = IMAGE_EXTENSIONS.index(ext)
            if stem not in found or rank < found[stem][0]:
                found[stem] = (rank, Path(entry.path))
    return {stem: found[stem][1] for stem in sorted(found)}


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Image names from a list file, one per line, first token: `train_cls.txt` lines
    (`name c1 c2 ...`) or `train_aug.txt` lines (`/JPEGImages/x.jpg /Segmentation.../x.png`,
    whose first token's file stem is the name). Blank lines are skipped, repeats kept once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"image list not found: {path}. Pass --list a file with one image name per line "
            "(train_cls.txt or train_aug.txt format), or leave --list out to use every image."
        )
    names: dict[str, None] = {}
    for line in path.read_text().splitlines():
        tokens = line.split()
        if tokens:
            first = tokens[0]
            names[Path(first).stem if "/" in first else first] = None
    if not names:
        raise DataError(f"image list {path} is empty: list at least one image name, one per line.")
    return list(names)


def _check_folders(images_dir: Path, out_dir: Path) -> dict[str, Path]:
    """The images of `images_dir` ({name: path}); DataError for a missing or empty folder, or
    an output folder that is the image folder or lies inside it."""
    if not images_dir.is_dir():
        raise DataError(
            f"images folder not found: {images_dir}. Pass --images the folder that holds the "
            ".jpg, .jpeg or .png images (e.g. ROOT/JPEGImages)."
        )
    images = list_images(images_dir)
    if not images:
        raise DataError(
            f"images folder {images_dir} holds no .jpg, .jpeg or .png image. Pass --images the "
            "folder that holds the images (e.g. ROOT/JPEGImages)."
        )
    inside = images_dir.resolve()
    if out_dir.resolve() == inside or inside in out_dir.resolve().parents:
        raise DataError(
            f"--out {out_dir} is inside the images folder {images_dir}; the maps never go "
            "there. Choose a folder outside it, e.g. ROOT/Saliency beside ROOT/JPEGImages."
        )
    return images


def _pick(images: dict[str, Path], images_dir: Path, list_file: str | os.PathLike | None):
    """[(name, image path)] of every image, or of the names in `list_file` (all must exist)."""
    if list_file is None:
        return list(images.items())
    names = read_name_list(list_file)
    missing = [n for n in names if n not in images]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{list_file} names {len(missing)} image(s) with no .jpg, .jpeg or .png file in "
            f"{images_dir}: {shown}. Fix the list, or pass --images the folder that holds them."
        )
    return [(n, images[n]) for n in names]


def _manifest(method: str) -> dict[str, Any]:
    settings = {"size": SR_SIZE, "sigma": SR_SIGMA} if method == "spectral" else {}
    return {"method": method, "settings": settings, "version": SALIENCY_VERSION}


def _claim_out_dir(out_dir: Path, method: str) -> None:
    """Make `out_dir` a folder of `method`'s maps, or check that it is one already.

    Its MANIFEST says which method wrote its maps, and is written before any map, so that a
    map found there is known to be one of them (and is skipped). DataError for a folder of
    another method's maps, or one holding PNG files this command did not write.
    """
    path = out_dir / MANIFEST
    want = _manifest(method)
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            have = None
        if have != want:
            made = have.get("method") if isinstance(have, dict) else "unknown"
            raise DataError(
                f"--out {out_dir} holds saliency maps made with other settings (method {made}, "
                f"see {path}). Choose another --out for --method {method}, or delete the folder "
                "to remake its maps."
            )
        return
    if out_dir.is_dir() and any(p.suffix.lower() == ".png" for p in out_dir.iterdir()):
        raise DataError(
            f"--out {out_dir} already holds PNG files that this command did not write (it has "
            f"no {MANIFEST}). Choose a new or empty folder, so that no map is mistaken for one "
            "of these."
        )
    atomic_write_json(path, want)


def _read_image(path: Path, written: int) -> np.ndarray:
    try:
        return read_rgb(path, "image")
    except DataError as e:
        raise DataError(
            f"{e} The {written} map(s) written so far are kept: replace or remove the file (or "
            "leave its name out of the list) and run the same command again to go on."
        ) from e


def write_saliency_maps(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str = "ft",
    list_file: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write `out_dir/{name}.png`, the `method` saliency map of every image in `images_dir`
    (or of the names in `list_file`): 8-bit gray, the image's size, the `Saliency/` format.

    Every map is written atomically, and a map already in `out_dir` is skipped, so a run that
    was interrupted goes on where it stopped. Nothing is ever written into `images_dir`. The
    inputs are checked before any map is written (DataError naming the folder or file and the
    fix); an image that cannot be decoded stops the run with a DataError, the maps before it kept.
    Returns method, images, written, skipped, out_dir, seconds, ms_per_image (computing and
    writing one map, over the maps written; None if none was).
    """
    compute = _method_function(method)
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    todo = _pick(_check_folders(images_dir, out_dir), images_dir, list_file)
    _claim_out_dir(out_dir, method)
    written = skipped = 0
    t0 = time.perf_counter()
    for name, path in progress_bar(todo, desc=f"saliency ({method})", unit="img",
                                   disable=not progress):
        target = out_dir / f"{name}.png"
        if target.is_file():
            skipped += 1
            continue
        save_gray_png(target, compute(_read_image(path, written)))
        written += 1
    seconds = time.perf_counter() - t0
    return dict(method=method, images=len(todo), written=written, skipped=skipped,
                out_dir=str(out_dir), seconds=seconds,
                ms_per_image=1000 * seconds / written if written else None)


# ----------------------------------------------------------------------------- the measure


def _score_image(
    sal: np.ndarray, inst: np.ndarray, objects: Sequence[dict[str, Any]], threshold: int
) -> dict[str, Any]:
    """One image's scores. sal, inst: (H, W) uint8, the map and the instance ids (0 background,
    255 void); objects: its instances.json entries. An instance is found when at least half of
    its pixels have saliency >= threshold; `coverage` is that share per instance id."""
    on = sal >= threshold
    bg = inst == 0
    coverage, salient = {}, {}
    for o in objects:
        px = inst == o["id"]
        if px.any():
            coverage[int(o["id"])] = float(on[px].mean())
            salient[int(o["id"])] = bool(o["salient"])
    return dict(coverage=coverage, salient=salient,
                found=[i for i, c in coverage.items() if c >= 0.5],
                missed=[i for i, c in coverage.items() if c < 0.5],
                background=int(bg.sum()), false_alarm_px=int((on & bg).sum()),
                nonzero_px=int((bg & (sal != 0)).sum()))


def _summarise(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """The rates over images: found share and mean coverage per kind; over all background
    pixels, the share at or above the threshold and the share not 0."""
    out: dict[str, Any] = {}
    for kind, want in (("salient", True), ("nonsalient", False)):
        cov = [c for im in per_image for i, c in im["coverage"].items() if im["salient"][i] == want]
        out[f"{kind}_instances"] = len(cov)
        out[f"{kind}_found"] = float(np.mean([c >= 0.5 for c in cov])) if cov else float("nan")
        out[f"{kind}_coverage"] = float(np.mean(cov)) if cov else float("nan")
    bg = sum(im["background"] for im in per_image)
    for key, px in (("false_alarm", "false_alarm_px"), ("background_nonzero", "nonzero_px")):
        out[key] = sum(im[px] for im in per_image) / bg if bg else float("nan")
    return out


def _eval_inputs(root: Path, split: str, limit: int | None):
    """(names, instances.json entries) of the split; DataError without instance ground truth."""
    from nsrom_lib.data.voc import read_instances, read_split  # voc imports torch: only here

    names = read_split(root, split)[:limit]
    meta = read_instances(root)
    if meta is None or not (root / "SegmentationObject").is_dir():
        raise DataError(
            f"{root} has no instance ground truth (instances.json and SegmentationObject/), "
            "which the saliency evaluation needs. Use a SynthVOC folder (`python -m nsrom_lib "
            "data synthvoc --out DIR`)."
        )
    return names, meta


def _map_reader(root: Path, maps_dir: Path | None, method: str | None):
    """(source name, name -> (map, seconds computing it or None)) for one source of maps."""
    if method is not None:
        compute = _method_function(method)
        images = list_images(root / "JPEGImages") if (root / "JPEGImages").is_dir() else {}

        def computed(name: str):
            if name not in images:
                raise DataError(f"image {name!r} of {root} not found in {root / 'JPEGImages'}.")
            image = read_rgb(images[name], "image")
            t0 = time.perf_counter()
            sal = compute(image)
            return sal, time.perf_counter() - t0

        return method, computed
    folder = maps_dir if maps_dir is not None else root / "Saliency"

    def stored(name: str):
        path = folder / f"{name}.png"
        if not path.is_file():
            raise DataError(
                f"saliency map not found: {path}. Write the maps of this split first (`python -m "
                f"nsrom_lib data saliency --images {root / 'JPEGImages'} --out {folder}`), or "
                "pass the folder that holds them."
            )
        return read_gray_png(path, "saliency map"), None

    return ("dataset Saliency/" if maps_dir is None else str(maps_dir)), stored


def evaluate_saliency(
    root: str | os.PathLike,
    split: str = "val",
    maps_dir: str | os.PathLike | None = None,
    method: str | None = None,
    limit: int | None = None,
    threshold: int = 128,
) -> dict[str, Any]:
    """Measure one source of saliency maps against a SynthVOC split's instances.

    The source: `method` (one of METHODS, computed from `JPEGImages/` and timed), else the
    maps in `maps_dir`, else the dataset's own `Saliency/`. Per image, an instance (from
    `SegmentationObject/{name}.png` and `instances.json`) is found when at least half of its
    pixels have saliency >= `threshold`; background is instance id 0.
    Returns source, split, images, threshold, salient_instances, nonsalient_instances,
    salient_found / nonsalient_found (shares of the instances found), salient_coverage /
    nonsalient_coverage (mean share of an instance's pixels at or above the threshold),
    false_alarm (share of all background pixels at or above it), background_nonzero (share
    of background pixels whose saliency is not 0: NSRM's object mask), ms_per_image (computing a
    map; None for stored maps) and per_image ([{name, found, missed, false_alarm}], ids).
    """
    if method is not None and maps_dir is not None:
        raise ValueError("evaluate_saliency: give method or maps_dir, not both")
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in 0..255 (maps are 8-bit), got {threshold}")
    root = Path(root)
    names, meta = _eval_inputs(root, split, limit)
    source, read = _map_reader(root, None if maps_dir is None else Path(maps_dir), method)
    per_image, seconds = [], 0.0
    for name in names:
        inst_path = root / "SegmentationObject" / f"{name}.png"
        inst = read_label_png(inst_path, "instance mask")
        sal, took = read(name)
        if sal.shape != inst.shape:
            raise DataError(
                f"the saliency map of {name} is {sal.shape[0]}x{sal.shape[1]} but its instance "
                f"mask {inst_path} is {inst.shape[0]}x{inst.shape[1]} (HxW): a map must have its "
                "image's size. Remake the maps from this dataset's images."
            )
        seconds += took or 0.0
        scores = _score_image(sal, inst, meta.get(name, []), threshold)
        per_image.append(dict(name=name, **scores))
    out = dict(source=source, split=split, images=len(names), threshold=threshold,
               **_summarise(per_image),
               ms_per_image=1000 * seconds / len(names) if method is not None and names else None)
    out["per_image"] = [
        dict(name=im["name"], found=im["found"], missed=im["missed"],
             false_alarm=im["false_alarm_px"] / im["background"] if im["background"] else 0.0)
        for im in per_image
    ]
    return out


def format_saliency_eval(results: Sequence[dict[str, Any]]) -> str:
    """`evaluate_saliency` results side by side, as a Markdown table (every rate a fraction)."""
    lines = [
        "| source | images | salient found | non-salient found | salient coverage | "
        "non-salient coverage | false alarm | background not 0 | ms / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = "–" if r["ms_per_image"] is None else f"{r['ms_per_image']:.2f}"
        lines.append(
            f"| {r['source']} | {r['images']} | {r['salient_found']:.3f} | "
            f"{r['nonsalient_found']:.3f} | {r['salient_coverage']:.3f} | "
            f"{r['nonsalient_coverage']:.3f} | {r['false_alarm']:.3f} | "
            f"{r['background_nonzero']:.3f} | {ms} |"
        )
    return "\n".join(lines)
