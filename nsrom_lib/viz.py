"""Figures shared by the notebooks: one class palette, label overlays, image grids.

Every notebook draws through these helpers, so a class has the same colour everywhere
(the VOC palette: 0 black background, 255 light gray = ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nsrom_lib.data.io import voc_palette

__all__ = ["PALETTE", "colorize", "overlay", "image_grid", "outline"]

PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) uint8 RGB with the VOC palette."""
    return PALETTE[np.asarray(label, dtype=np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.55,
            show_background: bool = False) -> np.ndarray:
    """Blend a label map over an (H, W, 3) uint8 image; background (0) left clear unless asked."""
    img = np.asarray(image, dtype=np.float64)
    col = colorize(label).astype(np.float64)
    a = np.full(label.shape, alpha)
    if not show_background:
        a[np.asarray(label) == 0] = 0.0
    out = img * (1 - a[..., None]) + col * a[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's 1-px inner border (for drawing an object's contour)."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]] | None = None,
               row_labels: Sequence[str] | None = None, size: float = 1.8, cmap: str = "gray",
               **imshow: Any):
    """Show a grid of images (RGB, or 2-D maps drawn with `cmap`); returns the figure."""
    import matplotlib.pyplot as plt

    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(size * nc, size * nr), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(nc):
            ax = axes[i, j]
            ax.axis("off")
            if j >= len(row):
                continue
            im = row[j]
            if im.ndim == 2:
                ax.imshow(im, cmap=cmap, vmin=0, vmax=255, interpolation="nearest", **imshow)
            else:
                ax.imshow(im, interpolation="nearest", **imshow)
            if titles is not None and j < len(titles[i]) and titles[i][j]:
                ax.set_title(titles[i][j], fontsize=8)
        if row_labels is not None:
            axes[i, 0].text(-0.08, 0.5, row_labels[i], transform=axes[i, 0].transAxes,
                            ha="right", va="center", fontsize=9, rotation=90)
    fig.tight_layout()
    return fig
