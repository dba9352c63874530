"""Official-format map and label folders: validate them, read them in batches, write labels.

The folders the public NSROM / OAA code reads and writes (docs/method.md §2–§6):

    LIST                          train_cls.txt format: "name c1 c2 ...", 0-based class ids
    SAL_DIR/{name}.png            8-bit gray saliency, 0..255
    OACAM_DIR/{name}_{cls}.png    8-bit gray OA-CAM of listed class cls, image size (BE, §3)
    CAM_DIR/{name}_{cls}.png      8-bit gray CAM of listed class cls, image size (POM, §4)
    PRED_DIR/{name}.png           round-1 prediction, palette or gray label PNG (NSRM, §6)
    PSEUDO_DIR/{name}.png         POM pseudo label, palette or gray label PNG (NSRM, §6)
    OUT_DIR/{name}.png            output: VOC-palette PNG, 0 bg, c + 1 class c, 255 ignore

Validation comes first and reads every file's header (`load_label_inputs`: signature and
IHDR, 33 bytes a file): a missing saliency / prediction / pseudo-label file, a map whose size
differs from the saliency map, a class id out of range, a file that is not an 8-bit PNG is a
`DataError` that names the file(s), before anything is computed; pixel data damaged further
into a file is found when the file is decoded, still before anything is written. A per-class
map that is missing is treated as the reference does, as a constant map (which normalises to
zeros), and listed; with `strict=True` it is an error too. The images are then read batch by
batch, grouped by size (`plan_batches`, `read_batch`, `iter_batches`), and their labels are
written by `write_labels` into a staging folder inside OUT_DIR that is moved into place only
when every label is done: a run that fails at any point leaves OUT_DIR as it was.

This module reads and writes files only; `nsrom_lib.label_folders.make_labels` computes the
labels between the two (the `labels` commands), and the `pseudo` stage of a run uses the same
functions on the run's `maps/oacam` and `maps/cam` folders.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nsrom_lib.data.cls_list import read_cls_list
from nsrom_lib.data.io import (
    DataError,
    atomic_write_bytes,
    read_gray_png,
    read_label_png,
    voc_palette,
    write_error,
)
from nsrom_lib.data.label_defaults import MASKED_DEFAULTS, PSEUDO_DEFAULTS
from nsrom_lib.parallel import OrderedMap, default_workers

__all__ = [
    "PSEUDO_DEFAULTS",
    "MASKED_DEFAULTS",
    "IGNORE",
    "ImageEntry",
    "LabelInputs",
    "LabelBatch",
    "load_label_inputs",
    "plan_batches",
    "read_batch",
    "iter_batches",
    "encode_label_png",
    "encode_label",
    "write_labels",
    "write_encoded",
    "StagedFolder",
]

log = logging.getLogger(__name__)

IGNORE = 255

_PALETTE = voc_palette()

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

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: (bit depth, colour type) of an IHDR chunk -> the mode Pillow opens the PNG in.
_PNG_MODES = {
    (1, 0): "1", (2, 0): "L", (4, 0): "L", (8, 0): "L", (16, 0): "I;16",
    (8, 2): "RGB", (16, 2): "RGB",
    (1, 3): "P", (2, 3): "P", (4, 3): "P", (8, 3): "P",
    (8, 4): "LA", (16, 4): "LA",
    (8, 6): "RGBA", (16, 6): "RGBA",
}  # fmt: skip


def _ihdr(path: Path) -> tuple[tuple[int, int], str] | None:
    """((H, W), Pillow mode) from a PNG's signature and IHDR chunk (33 bytes), or None.

    None: not a well-formed PNG start (the caller asks Pillow for the reason). Raises OSError
    if the file cannot be opened (FileNotFoundError if it does not exist).
    """
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    length, w, h, depth, colour = struct.unpack(">I4xIIBB", head[8:26])
    crc = struct.unpack(">I", head[29:33])[0]
    if length != 13 or zlib.crc32(head[12:29]) != crc or not w or not h:
        return None
    mode = _PNG_MODES.get((depth, colour))
    return None if mode is None else ((h, w), mode)


def _png_header(path: Path, label: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """((H, W), None) for a PNG whose header is sound and whose mode fits, or (None, why).

    Reads the first 33 bytes only (signature and IHDR, its checksum verified); a file whose
    pixel data is damaged further on is found when it is decoded (read_gray_png /
    read_label_png raise a DataError naming it), before anything is written. A file that
    does not start like a PNG is handed to Pillow for the reason.
    label: the file is a label PNG (8-bit palette or gray), else a gray map (8-bit, or RGB).
    """
    try:
        head = _ihdr(path)
    except OSError as e:
        return None, f"{path}: cannot be read ({e.strerror or e})"
    if head is None:
        try:
            with Image.open(path) as im:
                (w, h), mode = im.size, im.mode
                im.verify()
            head = (h, w), mode
        except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError) as e:
            return (
                None,
                f"{path}: unreadable image ({e}); the file is corrupt or truncated, regenerate it",
            )
    size, mode = head
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
    return size, None


def _dir(path: str | os.PathLike, what: str, flag: str, problems: list[str]) -> Path:
    p = Path(path)
    if not p.is_dir():
        problems.append(
            f"{what} folder not found: {p} ({flag}): pass the folder that holds the {what} PNGs"
        )
    return p


def _mode_of(oacam_dir, cam_dir, pred_dir, pseudo_dir, num_classes: int) -> str:
    """The mode ("pseudo" or "masked") the passed folders ask for; ValueError if they mix."""
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
    return "pseudo" if pseudo_mode else "masked"


@dataclass
class _Folders:
    """The input folders of one call, checked to exist."""

    sal: Path
    maps: dict[str, Path]  # "oacam", "cam" -> folder (pseudo labels)
    labels: dict[str, Path]  # "pred", "pseudo" -> folder (masked labels)


def _folders(mode: str, saliency_dir, oacam_dir, cam_dir, pred_dir, pseudo_dir) -> _Folders:
    problems: list[str] = []
    sal = _dir(saliency_dir, "saliency", "--saliency", problems)
    if mode == "pseudo":
        maps = {
            "oacam": _dir(oacam_dir, "OA-CAM", "--oacam", problems),
            "cam": _dir(cam_dir, "CAM", "--cam", problems),
        }
        labels: dict[str, Path] = {}
    else:
        maps = {}
        labels = {
            "pred": _dir(pred_dir, "prediction", "--pred", problems),
            "pseudo": _dir(pseudo_dir, "pseudo-label", "--pseudo", problems),
        }
    if problems:
        raise DataError("; ".join(problems) + ". Nothing was written.")
    return _Folders(sal, maps, labels)


def _check_entry(
    name: str, classes: list[int], dirs: _Folders, problems: list[str], missing: list[Path]
) -> ImageEntry | None:
    """One listed image's entry, its files' headers checked; problems and missing maps appended."""
    sal_path = dirs.sal / f"{name}.png"
    size, why = _png_header(sal_path)
    if size is None:
        exists = sal_path.is_file()
        problems.append(why if exists else f"saliency map not found: {sal_path}")
        return None
    entry = ImageEntry(name, classes, size, sal_path)

    def check(path: Path, what: str) -> bool:
        """False if the file does not exist; a problem is noted if it is bad."""
        got, why = _png_header(path, label=what == "label")
        if got is None and not path.is_file():
            return False
        if got is None:
            problems.append(why)
        elif got != size:
            problems.append(
                f"{path}: {what} of size {got[0]}x{got[1]} (HxW), but the saliency "
                f"map {sal_path.name} is {size[0]}x{size[1]}; maps must have the image's size"
            )
        return True

    for kind, d in dirs.maps.items():
        entry.maps[kind] = {}
        for c in classes:
            p = d / f"{name}_{c}.png"
            if check(p, f"{kind} map"):
                entry.maps[kind][c] = p
            else:
                missing.append(p)
                entry.maps[kind][c] = None
    for kind, d in dirs.labels.items():
        p = d / f"{name}.png"
        if check(p, "label"):
            entry.labels[kind] = p
        else:
            what = "prediction" if kind == "pred" else "pseudo label"
            problems.append(f"{what} not found: {p}")
    return entry


def _report(list_path, problems: list[str], missing: list[Path], strict: bool) -> None:
    """Raise one DataError for every problem (missing maps too with strict), or warn of them."""
    if strict and missing:
        problems = problems + [f"per-class map not found (--strict): {p}" for p in missing]
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
    masked labels (NSRM). Every file is checked (exists, is a PNG whose header is sound, has a
    mode that fits and the saliency map's size); all problems are gathered into one DataError
    naming the files. Damaged pixel data further into a file is found when it is read, before
    anything is written. A missing per-class map is listed in `missing_maps` and later read as
    a constant map (as the reference does), or is an error with strict=True.
    """
    mode = _mode_of(oacam_dir, cam_dir, pred_dir, pseudo_dir, num_classes)
    labels = read_cls_list(list_path, num_classes)  # DataError names file:line for bad ids
    if not labels:
        raise DataError(f"{list_path} lists no image: write one 'name c1 c2 ...' line per image.")
    dirs = _folders(mode, saliency_dir, oacam_dir, cam_dir, pred_dir, pseudo_dir)

    items: Iterable[tuple[str, list[int]]] = labels.items()
    if progress:
        from nsrom_lib.progress import progress_bar as tqdm

        items = tqdm(items, desc="checking inputs", unit="img", leave=False)
    entries: list[ImageEntry] = []
    problems: list[str] = []
    missing: list[Path] = []
    for name, classes in items:
        entry = _check_entry(name, classes, dirs, problems, missing)
        if entry is not None:
            entries.append(entry)
    _report(list_path, problems, missing, strict)
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


def plan_batches(
    inputs: LabelInputs, batch_size: int = 32, max_pixels: int | None = None
) -> list[list[ImageEntry]]:
    """The entries in batches of at most `batch_size` images of one size (nothing is read).

    Within a size, images that list the same number of classes go together (list order
    otherwise): the batched label functions then work on one (n, k, HW) stack per batch.
    max_pixels: a batch also holds at most this many pixels (at least one image), so that
    large images come in smaller batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int, int], list[ImageEntry]] = {}
    for e in inputs.entries:
        groups.setdefault((*e.size, len(e.classes)), []).append(e)
    plan = []
    for (H, W, _), group in groups.items():
        n = batch_size if max_pixels is None else max(1, min(batch_size, max_pixels // (H * W)))
        plan += [group[i : i + n] for i in range(0, len(group), n)]
    return plan


def read_batch(inputs: LabelInputs, chunk: list[ImageEntry]) -> LabelBatch:
    """Read one planned batch (same-size entries) into arrays (safe to call from threads)."""
    H, W = size = chunk[0].size
    B, C = len(chunk), inputs.num_classes
    present = np.zeros((B, C), bool)
    sal = np.empty((B, H, W), np.uint8)
    batch = LabelBatch([e.name for e in chunk], present, sal)
    for b, e in enumerate(chunk):
        present[b, e.classes] = True
        sal[b] = _read_map(e.saliency, size)
    if inputs.mode == "pseudo":
        # zeros for absent classes: np.zeros maps untouched pages lazily, so they cost nothing
        batch.oa_cam = np.zeros((B, C, H, W), np.uint8)
        batch.cam = np.zeros((B, C, H, W), np.uint8)
        for b, e in enumerate(chunk):
            for c in e.classes:
                batch.oa_cam[b, c] = _read_map(e.maps["oacam"][c], size)
                batch.cam[b, c] = _read_map(e.maps["cam"][c], size)
    else:
        batch.pred = np.empty((B, H, W), np.uint8)
        batch.pseudo = np.empty((B, H, W), np.uint8)
        for b, e in enumerate(chunk):
            batch.pred[b] = _read_label(e.labels["pred"], size, C, "prediction")
            batch.pseudo[b] = _read_label(e.labels["pseudo"], size, C, "pseudo label")
    return batch


def iter_batches(
    inputs: LabelInputs, batch_size: int = 32, workers: int = 1
) -> Iterator[LabelBatch]:
    """Read the images in batches of at most `batch_size` images of one size (`plan_batches`).

    workers > 1: batches are decoded ahead by that many threads (PNG decoding releases the
    GIL), still handed out in order.
    """
    with OrderedMap(lambda chunk: read_batch(inputs, chunk), plan_batches(inputs, batch_size),
                    workers, name="nsrom-read") as batches:  # fmt: skip
        yield from batches


# ----------------------------------------------------------------------------- writing


def encode_label_png(label: np.ndarray) -> bytes:
    """The bytes `save_label_png` writes for an (H, W) uint8 label (VOC palette, Pillow's
    default zlib level 6, as the official scripts' `Image.save`)."""
    h, w = label.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_label(item: tuple[str, np.ndarray]) -> tuple[str, bytes, int, int]:
    """(name, PNG bytes, pixels, ignore pixels) of one (name, label) pair: what
    `write_encoded` writes."""
    name, label = item
    label = np.asarray(label)
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label of {name!r} must be (H, W) uint8, got {label.shape} {label.dtype}")
    return name, encode_label_png(label), label.size, int(np.count_nonzero(label == IGNORE))


def _staging(out: Path) -> Path:
    """A fresh staging folder inside out (created); staging folders of killed calls removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(".staging-*"):  # left by a process that was killed while writing
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as e:
        raise write_error(out, e, "the output folder") from e


def write_labels(
    out_dir: str | os.PathLike,
    labels: Iterable[tuple[str, np.ndarray]],
    workers: int | None = None,
) -> dict[str, int]:
    """Write (name, (H, W) uint8 label) pairs as OUT_DIR/{name}.png (VOC palette), all or nothing.

    The pairs are encoded by `workers` threads (zlib releases the GIL; default: the CPU cores,
    at most 8) and written in order by `write_encoded`. Returns counts: images, pixels, ignore
    (pixels equal to 255).
    """
    workers = default_workers() if workers is None else workers
    with OrderedMap(encode_label, labels, workers, name="nsrom-encode") as encoded:
        return write_encoded(out_dir, encoded)


def write_encoded(
    out_dir: str | os.PathLike, encoded: Iterable[tuple[str, bytes, int, int]]
) -> dict[str, int]:
    """Write `encode_label` results (name, PNG bytes, pixels, ignore) as OUT_DIR/{name}.png,
    all or nothing (`StagedFolder`): if `encoded` raises (validation or compute error),
    out_dir is left as it was. Returns counts: images, pixels, ignore.
    """
    with StagedFolder(out_dir) as folder:
        for item in encoded:
            folder.write(*item)
    return folder.stats


class StagedFolder:
    """OUT_DIR/{name}.png files written all or nothing, one at a time, as a context manager.

    Each file goes to a staging folder inside out_dir; on a clean exit of the `with` block they
    are moved into place (each move atomic); on an error out_dir is left as it was (a folder
    this call created is removed again). Staging folders of a killed earlier call are removed
    first. `stats`: counts of images, pixels and ignore pixels written.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out = Path(out_dir)
        self.stats = dict(images=0, pixels=0, ignore=0)
        self._names: list[str] = []

    def __enter__(self) -> StagedFolder:
        self._created = not self.out.exists()
        self._staging = _staging(self.out)
        return self

    def write(self, name: str, data: bytes, pixels: int, ignore: int) -> None:
        """Stage one encoded label (`encode_label`'s tuple)."""
        from nsrom_lib.faults import crash_point

        try:
            atomic_write_bytes(self._staging / f"{name}.png", data)
        except OSError as e:
            raise write_error(self.out / f"{name}.png", e, "the label") from e
        self._names.append(name)
        self.stats["images"] += 1
        self.stats["pixels"] += pixels
        self.stats["ignore"] += ignore
        crash_point("label", self.stats["images"])  # tests: a SIGKILL in the middle of writing

    def __exit__(self, exc_type, exc, tb) -> None:
        done = False
        try:
            if exc_type is None:
                for name in self._names:
                    os.replace(self._staging / f"{name}.png", self.out / f"{name}.png")
                done = True
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
            if not done and self._created:  # a failed run leaves no empty output folder either
                with contextlib.suppress(OSError):
                    self.out.rmdir()
