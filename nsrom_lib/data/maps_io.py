"""Official-format map and label folders: validate them, read them in batches, write labels.

The folders the public NSROM / OAA code reads and writes (docs/method.md §2–§6):

    LIST                          train_cls.txt format: "name c1 c2 ...", 0-based class ids
    SAL_DIR/{name}.png            8-bit gray saliency, 0..255
    OACAM_DIR/{name}_{cls}.png    8-bit gray OA-CAM of listed class cls, image size (BE, §3)
    CAM_DIR/{name}_{cls}.png      8-bit gray CAM of listed class cls, image size (POM, §4)
    PRED_DIR/{name}.png           round-1 prediction, palette or gray label PNG (NSRM, §6)
    PSEUDO_DIR/{name}.png         POM pseudo label, palette or gray label PNG (NSRM, §6)
    OUT_DIR/{name}.png            output: VOC-palette PNG, 0 bg, c + 1 class c, 255 ignore

Validation comes first and reads every file's header and checks its PNG chunks
(`load_label_inputs`): a missing saliency / prediction / pseudo-label file, a map whose size
differs from the saliency map, a class id out of range or an unreadable PNG is a `DataError`
that names the file(s), before anything is computed. A per-class map that is missing is
treated as the reference does, as a constant map (which normalises to zeros), and listed; with
`strict=True` it is an error too. Labels are then computed batch by batch, images grouped by
size (`iter_batches`, `make_labels`), and written by `write_labels` into a staging folder
inside OUT_DIR that is moved into place only when every label is done: a run that fails at
any point leaves OUT_DIR as it was.

The `pseudo` stage of a run can use the same functions on the run's `maps/oacam` and
`maps/cam` folders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from nsrom_lib.data.io import (
    DataError,
    read_gray_png,
    read_label_png,
    save_label_png,
    write_error,
)
from nsrom_lib.data.label_defaults import MASKED_DEFAULTS, PSEUDO_DEFAULTS
from nsrom_lib.data.voc import read_cls_list

__all__ = [
    "PSEUDO_DEFAULTS",
    "MASKED_DEFAULTS",
    "IGNORE",
    "ImageEntry",
    "LabelInputs",
    "LabelBatch",
    "load_label_inputs",
    "iter_batches",
    "write_labels",
    "make_labels",
]

log = logging.getLogger(__name__)

IGNORE = 255

_MAX_LISTED = 12  # problems named in one error message


@dataclass
class ImageEntry:
    """One listed image: its class ids, size and the files it needs (None = missing map)."""

    name: str
    classes: list[int]
    size: tuple[int, int]  # (H, W) of the saliency map
    saliency: Path
    maps: dict[str, dict[int, Path | None]] = field(default_factory=dict)  # kind -> {cls: path}
    labels: dict[str, Path] = field(default_factory=dict)  # "pred", "pseudo" -> path


@dataclass
class LabelInputs:
    """A validated set of official-format inputs for the `pseudo` or `masked` labels."""

    mode: str  # "pseudo" (BE + POM) or "masked" (NSRM)
    num_classes: int
    entries: list[ImageEntry]
    missing_maps: list[Path]  # per-class maps treated as constant maps

    @property
    def sizes(self) -> dict[tuple[int, int], int]:
        """{(H, W): number of images} in the order sizes first appear."""
        out: dict[tuple[int, int], int] = {}
        for e in self.entries:
            out[e.size] = out.get(e.size, 0) + 1
        return out


@dataclass
class LabelBatch:
    """Same-size images read into arrays: inputs of the batched label functions."""

    names: list[str]
    present: np.ndarray  # (B, C) bool
    sal: np.ndarray  # (B, H, W) uint8
    oa_cam: np.ndarray | None = None  # (B, C, H, W) uint8, zeros for absent classes
    cam: np.ndarray | None = None  # (B, C, H, W) uint8
    pred: np.ndarray | None = None  # (B, H, W) uint8
    pseudo: np.ndarray | None = None  # (B, H, W) uint8


# ----------------------------------------------------------------------------- validation


#: Modes a gray map may have (read_gray_png converts them to 8-bit); a label must be P or L.
_MAP_MODES = ("L", "P", "1", "LA", "RGB", "RGBA", "PA")
_LABEL_MODES = ("L", "P")


def _png_header(path: Path, label: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """((H, W), None) for a readable PNG (header read, chunks and checksums verified), or (None, why).

    label: the file is a label PNG (8-bit palette or gray), else a gray map (8-bit, or RGB).
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            im.verify()  # walks every chunk and checks its CRC: truncated files fail here
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as e:
        return (
            None,
            f"{path}: unreadable image ({e}); the file is corrupt or truncated, regenerate it",
        )
    if label and mode not in _LABEL_MODES:
        return None, (
            f"{path}: label PNG of mode {mode!r}; labels must be 8-bit palette (P) or gray (L) "
            "PNGs of label ids (0 bg, c + 1 class c, 255 ignore): save them with save_label_png"
        )
    if not label and mode not in _MAP_MODES:
        return None, (
            f"{path}: map of mode {mode!r} (more than 8 bits); maps must be 8-bit gray PNGs "
            "with values 0..255: rescale to 0..255 and save as 8-bit gray"
        )
    return (h, w), None


def _dir(path: str | os.PathLike, what: str, flag: str, problems: list[str]) -> Path:
    p = Path(path)
    if not p.is_dir():
        problems.append(
            f"{what} folder not found: {p} ({flag}): pass the folder that holds the {what} PNGs"
        )
    return p


def load_label_inputs(
    list_path: str | os.PathLike,
    saliency_dir: str | os.PathLike,
    *,
    oacam_dir: str | os.PathLike | None = None,
    cam_dir: str | os.PathLike | None = None,
    pred_dir: str | os.PathLike | None = None,
    pseudo_dir: str | os.PathLike | None = None,
    num_classes: int = 20,
    strict: bool = False,
    progress: bool = False,
) -> LabelInputs:
    """Validate official-format folders and list what every image needs; reads no pixels.

    Pass oacam_dir and cam_dir for the pseudo labels (BE + POM), pred_dir and pseudo_dir for the
    masked labels (NSRM). Every file is checked (exists, PNG readable to its last chunk, size
    equal to the saliency map's); all problems are gathered into one DataError naming the files.
    A missing per-class map is listed in `missing_maps` and later read as a constant map (as the
    reference does), or is an error with strict=True.
    """
    pseudo_mode = oacam_dir is not None or cam_dir is not None
    masked_mode = pred_dir is not None or pseudo_dir is not None
    if (
        pseudo_mode == masked_mode
        or (pseudo_mode and (oacam_dir is None or cam_dir is None))
        or (masked_mode and (pred_dir is None or pseudo_dir is None))
    ):
        raise ValueError(
            "pass either oacam_dir and cam_dir (pseudo labels) or pred_dir and pseudo_dir (masked labels)"
        )
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes={num_classes} must be in 1..254")
    mode = "pseudo" if pseudo_mode else "masked"
    labels = read_cls_list(list_path, num_classes)  # DataError names file:line for bad ids
    if not labels:
        raise DataError(f"{list_path} lists no image: write one 'name c1 c2 ...' line per image.")

    problems: list[str] = []
    sal_dir = _dir(saliency_dir, "saliency", "--saliency", problems)
    if mode == "pseudo":
        map_dirs = {
            "oacam": _dir(oacam_dir, "OA-CAM", "--oacam", problems),
            "cam": _dir(cam_dir, "CAM", "--cam", problems),
        }
        label_dirs: dict[str, Path] = {}
    else:
        map_dirs = {}
        label_dirs = {
            "pred": _dir(pred_dir, "prediction", "--pred", problems),
            "pseudo": _dir(pseudo_dir, "pseudo-label", "--pseudo", problems),
        }
    if problems:
        raise DataError("; ".join(problems) + ". Nothing was written.")

    from nsrom_lib.progress import progress_bar as tqdm

    entries: list[ImageEntry] = []
    missing: list[Path] = []
    for name, classes in tqdm(
        labels.items(), desc="checking inputs", unit="img", disable=not progress, leave=False
    ):
        sal_path = sal_dir / f"{name}.png"
        if not sal_path.is_file():
            problems.append(f"saliency map not found: {sal_path}")
            continue
        size, why = _png_header(sal_path)
        if size is None:
            problems.append(why)
            continue
        entry = ImageEntry(name, classes, size, sal_path)

        def check(
            path: Path, what: str, size: tuple[int, int] = size, sal_path: Path = sal_path
        ) -> None:
            got, why = _png_header(path, label=what == "label")
            if got is None:
                problems.append(why)
            elif got != size:
                problems.append(
                    f"{path}: {what} of size {got[0]}x{got[1]} (HxW), but the saliency "
                    f"map {sal_path.name} is {size[0]}x{size[1]}; maps must have the image's size"
                )

        for kind, d in map_dirs.items():
            entry.maps[kind] = {}
            for c in classes:
                p = d / f"{name}_{c}.png"
                if p.is_file():
                    check(p, f"{kind} map")
                    entry.maps[kind][c] = p
                else:
                    missing.append(p)
                    entry.maps[kind][c] = None
        for kind, d in label_dirs.items():
            p = d / f"{name}.png"
            if not p.is_file():
                what = "prediction" if kind == "pred" else "pseudo label"
                problems.append(f"{what} not found: {p}")
            else:
                check(p, "label")
                entry.labels[kind] = p
        entries.append(entry)

    if strict and missing:
        problems += [f"per-class map not found (--strict): {p}" for p in missing]
    if problems:
        shown = "\n  ".join(problems[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        )
        raise DataError(
            f"{len(problems)} problem(s) in the inputs of {list_path}; nothing was "
            f"written:\n  {shown}{more}"
        )
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
        log.warning(
            "%d per-class map(s) missing, treated as constant maps (as the reference does; "
            "--strict / strict=True makes this an error): %s",
            len(missing),
            shown,
        )
    return LabelInputs(mode, num_classes, entries, missing)


# ----------------------------------------------------------------------------- reading


def _read_map(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    if path is None:  # missing map: a constant map, which normalises to zeros (docs/method.md §3)
        return np.zeros(size, np.uint8)
    m = read_gray_png(path, "class map")
    if m.shape != size:
        raise DataError(f"{path}: size {m.shape} differs from the saliency map's {size}")
    return m


def _read_label(path: Path, size: tuple[int, int], num_classes: int, what: str) -> np.ndarray:
    lab = read_label_png(path, what)
    if lab.shape != size:
        raise DataError(f"{path}: size {lab.shape} differs from the saliency map's {size}")
    bad = (lab > num_classes) & (lab != IGNORE)
    if bad.any():
        raise DataError(
            f"{path}: {what} holds label values {sorted(set(np.unique(lab[bad]).tolist()))[:5]} "
            f"outside 0..{num_classes} and {IGNORE}; check --num-classes ({num_classes})"
        )
    return lab


def iter_batches(inputs: LabelInputs, batch_size: int = 32) -> Iterator[LabelBatch]:
    """Read the images in batches of at most `batch_size` images of one size.

    Within a size, images that list the same number of classes go together (list order
    otherwise): the batched label functions then work on one (n, k, HW) stack per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int, int], list[ImageEntry]] = {}
    for e in inputs.entries:
        groups.setdefault((*e.size, len(e.classes)), []).append(e)
    C = inputs.num_classes
    for (H, W, _), group in groups.items():
        size = (H, W)
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            B = len(chunk)
            present = np.zeros((B, C), bool)
            sal = np.empty((B, H, W), np.uint8)
            batch = LabelBatch([e.name for e in chunk], present, sal)
            for b, e in enumerate(chunk):
                present[b, e.classes] = True
                sal[b] = _read_map(e.saliency, size)
            if inputs.mode == "pseudo":
                batch.oa_cam = np.zeros((B, C, H, W), np.uint8)  # (B, C, H, W)
                batch.cam = np.zeros((B, C, H, W), np.uint8)  # (B, C, H, W)
                for b, e in enumerate(chunk):
                    for c in e.classes:
                        batch.oa_cam[b, c] = _read_map(e.maps["oacam"][c], size)
                        batch.cam[b, c] = _read_map(e.maps["cam"][c], size)
            else:
                batch.pred = np.stack(
                    [_read_label(e.labels["pred"], size, C, "prediction") for e in chunk]
                )  # (B, H, W)
                batch.pseudo = np.stack(
                    [_read_label(e.labels["pseudo"], size, C, "pseudo label") for e in chunk]
                )  # (B, H, W)
            yield batch


# ----------------------------------------------------------------------------- writing


def write_labels(
    out_dir: str | os.PathLike, labels: Iterable[tuple[str, np.ndarray]]
) -> dict[str, int]:
    """Write (name, (H, W) uint8 label) pairs as OUT_DIR/{name}.png (VOC palette), all or nothing.

    Labels go to a staging folder inside out_dir and are moved into place only after the last
    one is written (each move is atomic): if `labels` raises (validation or compute error),
    out_dir is left as it was; staging folders of a killed earlier call are removed first.
    Returns counts: images, pixels, ignore (pixels equal to 255).
    """
    from nsrom_lib.faults import crash_point

    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(".staging-*"):  # left by a process that was killed while writing
            shutil.rmtree(old, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as e:
        raise write_error(out, e, "the output folder") from e
    stats = dict(images=0, pixels=0, ignore=0)
    names: list[str] = []
    done = False
    try:
        for name, label in labels:
            label = np.asarray(label)
            if label.dtype != np.uint8 or label.ndim != 2:
                raise ValueError(
                    f"label of {name!r} must be (H, W) uint8, got {label.shape} {label.dtype}"
                )
            try:
                save_label_png(staging / f"{name}.png", label)
            except OSError as e:
                raise write_error(out / f"{name}.png", e, "the label") from e
            names.append(name)
            stats["images"] += 1
            stats["pixels"] += label.size
            stats["ignore"] += int((label == IGNORE).sum())
            crash_point("label", stats["images"])  # tests: a SIGKILL in the middle of writing
        for name in names:
            os.replace(staging / f"{name}.png", out / f"{name}.png")
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done and created:  # a failed run leaves no empty output folder behind either
            with contextlib.suppress(OSError):
                out.rmdir()
    return stats


# ----------------------------------------------------------------------------- compute


def _label_stream(
    inputs: LabelInputs,
    params: dict[str, float],
    batch_size: int,
    device: Any,
    on_batch: Callable[[int], None] | None,
) -> Iterator[tuple[str, np.ndarray]]:
    import torch

    from nsrom_lib import labels as L

    for batch in iter_batches(inputs, batch_size):
        present = torch.from_numpy(batch.present).to(device)
        sal = torch.from_numpy(batch.sal).to(device)
        with torch.inference_mode():
            if inputs.mode == "pseudo":
                out = L.pseudo_labels(
                    sal,
                    torch.from_numpy(batch.oa_cam).to(device),
                    torch.from_numpy(batch.cam).to(device),
                    present,
                    **params,
                )
            else:
                kernel = int(params["kernel"])
                out = L.non_salient_region_masking(
                    torch.from_numpy(batch.pred).to(device),
                    torch.from_numpy(batch.pseudo).to(device),
                    sal,
                    present,
                    kernel=kernel,
                    ratio=params["ratio"],
                )
        out = out.cpu().numpy()
        yield from zip(batch.names, out, strict=True)
        if on_batch is not None:
            on_batch(len(batch.names))


def make_labels(
    inputs: LabelInputs,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    device: str = "auto",
    threads: int | None = 1,
    progress: bool = True,
    **thresholds: float,
) -> dict[str, Any]:
    """Compute the pseudo (BE + POM + 1% rule) or masked (NSRM) labels of `inputs` and write them.

    thresholds: for "pseudo" fg, conflict, bg, att, pom, ratio; for "masked" kernel, ratio
    (defaults: PSEUDO_DEFAULTS / MASKED_DEFAULTS, the reference's). Nothing is written unless
    every label is computed. threads: torch CPU threads while computing (None: torch's
    setting; 1 is fastest on a busy machine, see labels.torch_threads). Returns a summary: images, ignore_share, seconds, images_per_s,
    missing_maps, sizes, device.
    """
    from nsrom_lib.labels import torch_threads
    from nsrom_lib.pipeline import resolve_device
    from nsrom_lib.progress import progress_bar as tqdm

    defaults = PSEUDO_DEFAULTS if inputs.mode == "pseudo" else MASKED_DEFAULTS
    unknown = set(thresholds) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown threshold(s) {sorted(unknown)} for {inputs.mode} labels; "
            f"known: {sorted(defaults)}"
        )
    params = {**defaults, **thresholds}
    if inputs.mode == "masked" and (
        int(params["kernel"]) != params["kernel"] or params["kernel"] < 1
    ):
        raise ValueError(f"kernel must be a positive integer, got {params['kernel']}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    with (
        torch_threads(threads),
        tqdm(
            total=len(inputs.entries),
            desc=f"{inputs.mode} labels",
            unit="img",
            disable=not progress,
        ) as bar,
    ):
        stats = write_labels(out_dir, _label_stream(inputs, params, batch_size, dev, bar.update))
    seconds = time.perf_counter() - t0
    return dict(
        mode=inputs.mode,
        images=stats["images"],
        ignore_share=stats["ignore"] / max(stats["pixels"], 1),
        seconds=seconds,
        images_per_s=stats["images"] / seconds if seconds > 0 else float("inf"),
        missing_maps=len(inputs.missing_maps),
        sizes={f"{h}x{w}": n for (h, w), n in inputs.sizes.items()},
        device=str(dev),
        params=params,
        out_dir=str(Path(out_dir)),
    )
