"""File helpers shared by every stage: atomic writes and PNG label / gray-map I/O.

Label PNGs follow PASCAL VOC: 8-bit palette ("P") images whose pixel values are the
label ids (0 = background, c + 1 = class c, 255 = void / ignore), saved with the VOC
palette so that any viewer shows colours and every reader gets the raw indices back.
Gray maps (saliency, CAMs) are 8-bit "L" PNGs.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataError",
    "WriteError",
    "voc_palette",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "write_error",
    "save_label_png",
    "save_gray_png",
    "save_rgb_png",
    "read_label_png",
    "read_gray_png",
    "read_rgb",
]


class DataError(ValueError):
    """Bad input on disk: the message names the file, the problem and the fix."""


class WriteError(OSError):
    """A failed write (disk full, read-only, a file in the way): the message names the file and
    the fix; `errno` is the original one."""

    def __str__(self) -> str:
        return str(self.strerror)


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat [r0, g0, b0, r1, ...] list of 3 * n ints.

    Entry 0 is black (background), entry 255 is (224, 224, 192) (void), as in VOC.
    """
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = voc_palette()

#: Image modes read_gray_png converts to 8-bit luminance; wider modes (I;16, I, F) are refused.
_GRAY_CONVERTIBLE = ("1", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "PA", "La", "RGBa", "RGBX")


#: errnos of a failed write (as opposed to a missing input): disk full, quota, read-only, denied.
_WRITE_ERRNOS = {
    getattr(errno, n)
    for n in "ENOSPC EDQUOT EFBIG EROFS EACCES EPERM EIO ENOTDIR EEXIST EISDIR".split()
    if hasattr(errno, n)
}
_FULL_ERRNOS = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n)}


def write_error(path: str | os.PathLike, e: OSError, what: str = "") -> WriteError:
    """A WriteError (an OSError, same errno) whose message names `path` and the fix for `e`.

    Disk full / quota: free space or write elsewhere. Read-only, denied, a file in the way:
    choose a writable folder. `what` names the file's role, e.g. "the output folder".
    """
    if isinstance(e, WriteError) and isinstance(e.__cause__, OSError):
        e = e.__cause__  # re-worded once already (e.g. for a staging file): use the original
    code = e.errno
    why = e.strerror or str(e)
    target = f"{what} {path}" if what else str(path)
    if code in _FULL_ERRNOS:
        fix = (
            "free disk space (or write to another disk) and run the command again; "
            "no half-written file was left"
        )
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to, or fix its permissions"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "a part of that path is a file, not a folder: choose another folder"
    else:
        fix = "check the folder and the disk, then run the command again"
    return WriteError(code, f"cannot write {target}: {why}; {fix}")


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e, "the folder") from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash, a full disk or an exception inside the block leaves `path` as it was (absent
    or old) and removes the temporary file: readers never see a half-written file. A failed
    write (disk full, read-only or not a folder) raises an OSError that names `path` and the fix.
    """
    path = Path(path)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of several training processes
        from nsrom_lib.distributed import check_may_write  # (torch: only then)

        check_may_write(path)  # rank 0 alone writes
    _mkdir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:
            if e.errno in _WRITE_ERRNOS:
                raise write_error(path, e) from e
            raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    """The one low-level write of this module's atomic writers (tests simulate a full disk here)."""
    with open(path, "wb") as f:
        f.write(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (write to a temporary file, then rename)."""
    with atomic_path(path) as tmp:
        _write_bytes(tmp, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (write to a temporary file, then rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save_png(img: Image.Image, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Save a label map as an 8-bit VOC-palette PNG, atomically.

    label: (H, W) integer array with values in 0..255 (255 = void / ignore).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label for {path} must be 2-D (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label for {path} has values outside 0..255")
    h, w = label.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    # Pillow keeps the indices only when a palette is set explicitly.
    img.putpalette(_PALETTE)
    _save_png(img, path)


def save_gray_png(path: str | os.PathLike, gray: np.ndarray) -> None:
    """Save an (H, W) uint8 map (saliency, CAM) as an 8-bit gray PNG, atomically."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        hint = "quantise float maps to 0..255 first (nsrom_lib.cam.cam_to_uint8)"
        if np.issubdtype(gray.dtype, np.floating) and not np.isfinite(gray).all():
            hint = (
                "it holds NaN or infinite values (did the model diverge? lower the learning "
                "rate and retrain); " + hint
            )
        raise ValueError(
            f"gray map for {path} must be (H, W) uint8, got {gray.shape} {gray.dtype}: {hint}"
        )
    _save_png(Image.fromarray(gray, mode="L"), path)


def save_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Save an (H, W, 3) uint8 image as PNG, atomically."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image for {path} must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    _save_png(Image.fromarray(rgb, mode="RGB"), path)


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}. Check the dataset root and the file name.")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(
            f"cannot read {what} {path}: {e}. The file is corrupt or truncated; "
            "regenerate or re-download it."
        ) from e
    return img


def read_label_png(path: str | os.PathLike, what: str = "label PNG") -> np.ndarray:
    """Read a label PNG (palette or gray) as an (H, W) uint8 array of raw label ids."""
    img = _open(path, what)
    if img.mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    raise DataError(
        f"{what} {path} has mode {img.mode!r}; a label must be an 8-bit palette (P) or gray (L) "
        "PNG whose pixel values are the label ids (0 background, c + 1 class c, 255 ignore). "
        "Convert it to label ids and save it with nsrom_lib.data.io.save_label_png."
    )


def read_gray_png(path: str | os.PathLike, what: str = "gray map") -> np.ndarray:
    """Read an 8-bit gray map (saliency, CAM) as an (H, W) uint8 array.

    RGB inputs are converted to luminance; palette inputs keep their raw indices.
    """
    img = _open(path, what)
    if img.mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if img.mode not in _GRAY_CONVERTIBLE:  # 16-bit, 32-bit int or float: convert("L") would clip
        raise DataError(
            f"{what} {path} has {img.mode!r} pixels (more than 8 bits); {what}s must be 8-bit "
            "gray PNGs with values 0..255. Rescale it to 0..255 and save it as 8-bit gray "
            "(e.g. nsrom_lib.data.io.save_gray_png)."
        )
    return np.array(img.convert("L"), dtype=np.uint8)


def read_rgb(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file (JPEG or PNG) as an (H, W, 3) uint8 RGB array."""
    return np.array(_open(path, what).convert("RGB"), dtype=np.uint8)
