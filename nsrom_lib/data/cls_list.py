"""The official image-level label list, `train_cls.txt` format: "name c1 c2 ..." (0-based ids).

Kept apart from `nsrom_lib.data.voc` (which re-exports both functions) because it needs no
torch: the `labels` commands read the list and check their inputs while torch is still loading.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from nsrom_lib.data.io import DataError, atomic_write_text

__all__ = ["read_cls_list", "write_cls_list"]


def read_cls_list(path: str | os.PathLike, num_classes: int | None = None) -> dict[str, list[int]]:
    """Read an image-level label list in the official `train_cls.txt` format.

    Each line is `name c1 c2 ...` with 0-based foreground class ids (an image with no
    foreground class has just its name); blank lines are ignored.
    path: the list file. num_classes: when given, every id must lie in 0..num_classes-1.
    Returns {name: sorted unique class ids}.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"image-level label list not found: {path}. Write it in train_cls.txt format "
            "('name c1 c2 ...', 0-based class ids), or let the labels come from the GT masks."
        )
    labels: dict[str, list[int]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        name, ids = tokens[0], []
        for tok in tokens[1:]:
            try:
                ids.append(int(tok))
            except ValueError:
                raise DataError(
                    f"{path}:{lineno}: class id {tok!r} for image {name!r} is not an integer. "
                    "Each line must read 'name c1 c2 ...' with 0-based class ids."
                ) from None
        bad = [c for c in ids if c < 0 or (num_classes is not None and c >= num_classes)]
        if bad:
            raise DataError(
                f"{path}:{lineno}: class id(s) {bad} for image {name!r} out of range 0..{num_classes - 1 if num_classes else 'C-1'}. "
                "Ids are 0-based foreground classes (VOC: 0..19); check the file or num_classes / classes.txt."
            )
        if name in labels:
            raise DataError(
                f"{path}:{lineno}: image {name!r} is listed twice. Keep one line per image."
            )
        labels[name] = sorted(set(ids))
    return labels


def write_cls_list(path: str | os.PathLike, labels: Mapping[str, Iterable[int]]) -> None:
    """Write {name: class ids} atomically in `train_cls.txt` format (`name c1 c2 ...`).

    Names keep the mapping's order; ids are written sorted and unique.
    """
    lines = []
    for name, ids in labels.items():
        ids = sorted({int(c) for c in ids})
        if any(c < 0 for c in ids):
            raise ValueError(f"negative class id for image {name!r} in labels for {path}")
        lines.append(" ".join([name, *map(str, ids)]))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
