"""Figures shared by the notebooks: one class palette, label overlays, image grids.

Every notebook draws through these helpers, so a class has the same colour everywhere
(the VOC palette: 0 black background, 255 light gray = ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nsrom_lib.data.io import voc_palette

__all__ = ["PALETTE", "colorize", "overlay", "image_grid", "outline", "heatmap", "receptive_field"]

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


# ----------------------------------------------------------------------------- attention maps (issue 3)


def heatmap(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend an attention map over an image: (H, W, 3) uint8 and (H, W) uint8 0..255 (or float
    0..1) -> (H, W, 3) uint8. Low values stay mostly the image, high values the colour map's top."""
    import matplotlib

    a = np.asarray(amap, dtype=np.float64)
    if np.asarray(amap).dtype == np.uint8:
        a = a / 255.0
    col = matplotlib.colormaps[cmap](np.clip(a, 0, 1))[..., :3] * 255.0  # (H, W, 3)
    w = alpha * np.clip(a, 0, 1)[..., None] ** 0.5
    out = np.asarray(image, dtype=np.float64) * (1 - w) + col * w
    return np.clip(out, 0, 255).astype(np.uint8)


def receptive_field(module: Any, shape: tuple[int, int, int, int], pixel: tuple[int, int],
                    seed: int = 0) -> np.ndarray:
    """Which input pixels one output pixel depends on: |d out[0, :, i, j].sum() / d x|.

    module: maps (B, D, H, W) -> (B, D', H, W) (eval mode is used); shape: the input's
    (B, D, H, W); pixel: (i, j) of the output. Returns (H, W) float64, the gradient magnitude
    summed over channels (0 where the output pixel cannot see the input pixel).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, requires_grad=True)  # (B, D, H, W)
    was_training = module.training
    module.eval()
    out = module(x)  # (B, D', H, W)
    module.train(was_training)
    i, j = pixel
    out[0, :, i, j].sum().backward()
    return x.grad[0].abs().sum(0).double().numpy()  # (H, W)


# ----------------------------------------------------------------------------- pseudo labels (issue 4)


def highlight(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0),
              alpha: float = 0.7) -> np.ndarray:
    """Paint the pixels of a boolean mask in one colour over an image (e.g. the pixels a rule
    changed): (H, W, 3) uint8 image and (H, W) bool mask -> (H, W, 3) uint8."""
    out = np.asarray(image, dtype=np.float64).copy()
    m = np.asarray(mask, dtype=bool)
    out[m] = out[m] * (1 - alpha) + np.asarray(color, np.float64) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


__all__ += ["highlight"]


def quality_table(rows: dict[str, dict[str, Any]], columns: dict[str, str], digits: int = 3) -> str:
    """A Markdown table: one row per label set, one column per metric.

    rows: {row name: {metric key: value}}; columns: {metric key: column title}, in order.
    Floats are shown with `digits` decimals, a missing or NaN value as "n/a".
    """

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "n/a"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = "| | " + " | ".join(columns.values()) + " |\n|---" + "|---" * len(columns) + "|\n"
    return head + "\n".join(
        f"| {name} | " + " | ".join(cell(m.get(k)) for k in columns) + " |" for name, m in rows.items()
    )


__all__ += ["quality_table"]


def ablation_chart(metrics: dict[str, Any], rows: Sequence[str] | None = None):
    """Bar chart of the ablation: val mIoU and non-salient object recall per model.

    metrics: `results/metrics.json` of a run (entries with `miou`, `nonsalient_recall`,
    `title`); rows: the entries to draw (default: the five rows of the ablation table).
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = list(rows or ("upper_bound", "be_round1", "pom_round1", "nsrm_round2",
                         "nsrm_round2_no_glore"))
    titles = [metrics[k].get("title", k) for k in rows]
    miou = [metrics[k]["miou"] for k in rows]
    ns = [metrics[k].get("nonsalient_recall") or 0.0 for k in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.4))
    b1 = ax.bar(x - 0.2, miou, 0.4, label="val mIoU", color="#4C72B0")
    b2 = ax.bar(x + 0.2, ns, 0.4, label="non-salient object recall", color="#DD8452")
    for bars in (b1, b2):
        for bar in bars:
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                    f"{bar.get_height():.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [t.replace(" on ", "\non ").replace(", ", ",\n") for t in titles], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("fraction")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


__all__ += ["ablation_chart"]
