"""Figures shared by the notebooks: one class palette, label overlays with their legend, image
grids, and the pipeline figure that opens every notebook.

Every notebook draws through these helpers, so a class has the same colour everywhere. The
display palette (`PALETTE`) is not the VOC palette that label PNG files carry: its class colours
are chosen to stay legible over SynthVOC's textures and unlike its saturated class markers;
0 = background is black (left clear in overlays) and 255 = ignore is white.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PALETTE", "IGNORE", "colorize", "overlay", "image_grid", "label_legend", "outline",
           "heatmap", "receptive_field", "pipeline_figure", "PIPELINE_STEPS"]

#: Label id of "ignore" (void) in every label map.
IGNORE = 255

# Class colours 1..: the colour-blind-safe Okabe-Ito set, then tab20's darker tones (VOC has 20).
_CLASS_COLOURS = [
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (213, 94, 0), (86, 180, 233),
    (240, 228, 66), (127, 60, 141), (140, 86, 75), (23, 190, 207), (188, 189, 34), (31, 119, 180),
    (148, 103, 189), (44, 160, 44), (214, 39, 40), (127, 127, 127), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (158, 218, 229),
]


def _display_palette() -> np.ndarray:
    pal = np.zeros((256, 3), np.uint8)  # 0 = background: black
    for i, rgb in enumerate(_CLASS_COLOURS, start=1):
        pal[i] = rgb
    pal[len(_CLASS_COLOURS) + 1:IGNORE] = 96  # ids no dataset uses: dark gray
    pal[IGNORE] = (255, 255, 255)
    return pal


#: (256, 3) uint8: the display colour of every label id (0 black, classes 1.., 255 white).
PALETTE = _display_palette()


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


def label_legend(fig: Any, classes: Sequence[str], ignore: bool = True, background: bool = True,
                 ncol: int | None = None):
    """Add the label colours under a figure: one patch per class name (label id = position + 1),
    background (0, left clear in overlays) and ignore (255, white). Returns the legend."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PALETTE[i + 1] / 255, edgecolor="0.3", label=f"{i + 1} {name}")
               for i, name in enumerate(classes)]
    if background:
        handles.insert(0, Patch(facecolor="black", edgecolor="0.3", label="0 background"))
    if ignore:
        handles.append(Patch(facecolor="white", edgecolor="0.3", label=f"{IGNORE} ignore"))
    fits = max(2, int(fig.get_figwidth() / 1.25))  # entries side by side that fit the figure
    return fig.legend(handles=handles, loc="lower center", ncol=ncol or min(len(handles), fits),
                      fontsize=7, frameon=False, handlelength=1.2, columnspacing=1.0)


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[Sequence[str]] | None = None,
               row_labels: Sequence[str] | None = None, size: float = 1.8, cmap: str = "gray",
               classes: Sequence[str] | None = None, **imshow: Any):
    """Show a grid of images (RGB, or 2-D maps drawn with `cmap`); returns the figure.

    classes: the dataset's class names; when given (any grid with label overlays), the label
    colours are explained in a legend under the grid (`label_legend`).
    """
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
    if classes is not None:
        legend = label_legend(fig, classes)
        rows_of_legend = -(-len(legend.legend_handles) // legend._ncols)
        fig.subplots_adjust(bottom=min(0.5, 0.28 * rows_of_legend / nr + 0.02))
    return fig


# ----------------------------------------------------------------------------- attention maps


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


# ----------------------------------------------------------------------------- pseudo labels


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
    `title`); rows: the entries to draw (default: the rows of the ablation table that the
    metrics hold; round 1 on CAM labels sits next to round 1 on OA-CAM labels, the OAA step).
    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = list(rows or [k for k in ("upper_bound", "be_round1", "pom_round1_cam", "pom_round1",
                                     "nsrm_round2", "nsrm_round2_no_glore") if k in metrics])
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


def gap_chart(metrics: dict[str, Any], rows: Sequence[str] | None = None):
    """Stacked bars: each weakly supervised model's gap to the upper bound (val mIoU), split
    into the part the non-salient objects explain and the rest.

    metrics: `results/metrics.json` of a run, with `gap` ({"<row>.<measure>": value}: `gap`,
    `gap_from_nonsalient` = gap - gap_nonsalient_void, `gap_nonsalient_void`) and the rows'
    `title`; rows: the models to draw (default: every weakly supervised model of the table and
    round 1 with GloRe off). A part that cannot be measured (no instance data) is drawn as 0
    and the bar labelled with the whole gap only. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    rows = list(rows or ("be_round1", "pom_round1", "nsrm_round2", "pom_round1_no_glore",
                         "nsrm_round2_no_glore"))
    gap = metrics.get("gap") or {}
    total = [gap.get(f"{k}.gap") or 0.0 for k in rows]
    ns = [gap.get(f"{k}.gap_from_nonsalient") for k in rows]
    rest = [gap.get(f"{k}.gap_nonsalient_void") for k in rows]
    known = [a is not None and b is not None for a, b in zip(ns, rest, strict=True)]
    ns = [a if ok else 0.0 for a, ok in zip(ns, known, strict=True)]
    rest = [b if ok else t for b, t, ok in zip(rest, total, known, strict=True)]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.4))
    ax.bar(x, ns, 0.55, label="explained by non-salient objects", color="#DD8452")
    ax.bar(x, rest, 0.55, bottom=ns, label="the rest (gap with non-salient pixels void)",
           color="#4C72B0")
    for i, t in enumerate(total):
        words = f"{t:.3f}"
        if known[i] and t > 0:
            words += f"\n({ns[i] / t:.0%} non-salient)"
        ax.text(x[i], max(t, ns[i] + rest[i], 0) + 0.005, words, ha="center", va="bottom",
                fontsize=8)
    titles = [metrics.get(k, {}).get("title", k) for k in rows]
    ax.set_xticks(x, [t.replace(" on ", "\non ").replace(", ", ",\n") for t in titles], fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylim(min(0.0, *ns, *rest) * 1.2, max(max(total), 0.05) * 1.35)
    ax.set_ylabel("upper-bound mIoU - model mIoU")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def seeds_chart(summary: dict[str, Any], measure: str = "miou"):
    """The summary over seeds (`nsrom_lib.compare.summarise_seeds`) in two panels.

    Left: per row (val rows, then label rows) the mean of `measure` over the seeds as a bar,
    the sample sd as an error bar, and every seed as a dot. Right: per step the mean paired
    difference with its sd and the seeds' differences as dots, around a zero line. Returns the
    matplotlib figure.
    """
    import matplotlib.pyplot as plt

    def draw(ax, items, colors, zero=False):
        x = np.arange(len(items))
        means = [np.nan if st["mean"] is None else st["mean"] for _, st in items]
        sds = [0.0 if st["sd"] is None else st["sd"] for _, st in items]
        ax.bar(x, means, 0.6, yerr=sds, capsize=3, color=colors, alpha=0.75,
               error_kw=dict(elinewidth=1, ecolor="#333333"))
        for i, (_, st) in enumerate(items):
            vals = [v for v in st["values"] if v is not None]
            # the seeds beside the error bar, spread a little so that equal values stay apart
            dx = np.linspace(0.1, 0.24, len(vals)) if len(vals) > 1 else np.full(len(vals), 0.16)
            ax.scatter(i + dx, vals, s=14, color="black", zorder=3)
        ax.set_xticks(x, [t for t, _ in items], fontsize=7, rotation=30, ha="right")
        if zero:
            ax.axhline(0, color="#555555", linewidth=0.8)
        ax.spines[["top", "right"]].set_visible(False)

    rows = [(row["title"], row[measure], row["split"]) for row in summary["rows"].values()
            if measure in row]
    steps = [(st.get("step", name), st) for name, st in summary["steps"].items()]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(4 + 0.7 * len(rows) + 0.9 * len(steps), 3.8),
                                   gridspec_kw=dict(width_ratios=[max(len(rows), 1),
                                                                  max(len(steps), 1)]))
    draw(ax1, [(t, st) for t, st, _ in rows],
         ["#4C72B0" if split == "val" else "#8C8C8C" for _, _, split in rows])
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel(f"{'mIoU' if measure == 'miou' else measure}: val (blue), labels (grey)",
                   fontsize=8)
    ax1.set_title(f"rows over {summary['n']} seed(s): mean, sd, seeds", fontsize=9)
    draw(ax2, steps, ["#55A868"] * len(steps), zero=True)
    ax2.set_ylabel("paired difference of val mIoU", fontsize=8)
    ax2.set_title("steps", fontsize=9)
    fig.tight_layout()
    return fig


__all__ += ["gap_chart", "seeds_chart"]


# ----------------------------------------------------------------------------- the pipeline figure

#: The boxes of the pipeline figure: (notebook, title, what it makes). Saliency enters at BE and NSRM.
PIPELINE_STEPS: list[tuple[str, str, str]] = [
    ("00", "data", "images, image labels,\nsaliency"),
    ("01", "GloRe unit", "in the classifier"),
    ("02", "CAM + OAA", "-> OA-CAM"),
    ("03", "BE", "OA-CAM + saliency\n-> initial labels"),
    ("04", "POM", "CAM thresholds\n-> pseudo labels"),
    ("05", "round 1", "segmentation\non pseudo labels"),
    ("06", "NSRM", "round 1 + saliency\n-> masked labels"),
    ("07", "round 2", "segmentation\non masked labels"),
    ("08", "results", "ablation, gap\nto full supervision"),
]


def pipeline_figure(here: str | None = None, width: float = 11.0):
    """Our drawing of the method (the paper's Fig. 2 in boxes), one box per notebook.

    here: the notebook number to highlight ("you are here"), e.g. "03"; "02b" highlights 02;
    None highlights nothing (the README's copy). Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    known = {nb for nb, _, _ in PIPELINE_STEPS}
    key = None if here is None else str(here)[:2]
    if key is not None and key not in known:
        raise ValueError(f"pipeline_figure(here={here!r}): not a notebook number; one of {sorted(known)}")
    n = len(PIPELINE_STEPS)
    fig, ax = plt.subplots(figsize=(width, 1.9))
    ax.set_xlim(0, n)
    ax.set_ylim(-0.8, 1.32)
    ax.axis("off")
    for k, (nb, title, what) in enumerate(PIPELINE_STEPS):
        on = nb == key
        ax.add_patch(FancyBboxPatch((k + 0.06, 0.0), 0.88, 1.0, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor="#E69F00" if on else "#EEF2F7",
                                    edgecolor="#7A4F00" if on else "#8A99AD", linewidth=2.2 if on else 1.0))
        ax.text(k + 0.5, 0.80, nb, ha="center", va="center", fontsize=8, color="#333333")
        ax.text(k + 0.5, 0.56, title, ha="center", va="center", fontsize=9.5, weight="bold")
        ax.text(k + 0.5, 0.24, what, ha="center", va="center", fontsize=6.8, linespacing=1.1)
        if k:
            ax.add_patch(FancyArrowPatch((k - 0.07, 0.5), (k + 0.07, 0.5), arrowstyle="-|>",
                                         mutation_scale=9, color="#555555"))
        if on:
            ax.text(k + 0.5, 1.06, "you are here", ha="center", va="bottom", fontsize=7.5,
                    color="#7A4F00", weight="bold")
    # the saliency map feeds BE (03) and NSRM (06); round 1's predictions feed NSRM
    for k in (3, 6):
        ax.add_patch(FancyArrowPatch((0.5, -0.02), (k + 0.5, -0.02), connectionstyle="arc3,rad=0.12",
                                     arrowstyle="-|>", mutation_scale=8, color="#0072B2", linewidth=0.9))
    ax.text(0.5, -0.72, "saliency map (from the data) -> BE and NSRM", fontsize=7, color="#0072B2")
    fig.tight_layout(pad=0.2)
    return fig


# ----------------------------------------------------------------------------- two predictions compared

#: Colours of `difference_map` (RGB): what changed between prediction A and prediction B.
DIFFERENCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "gained": (0, 200, 80),  # green: B right where A was wrong
    "lost": (230, 30, 30),  # red: B wrong where A was right
    "void": (150, 150, 150),  # gray: void in the ground truth, not scored
}


def difference_masks(pred_a: np.ndarray, pred_b: np.ndarray, gt: np.ndarray,
                     ignore: int = IGNORE) -> dict[str, np.ndarray]:
    """Which pixels prediction B gets right that A got wrong, and the reverse.

    pred_a, pred_b, gt: label ids of the same shape, (H, W) or (N, H, W). Returns boolean
    masks of that shape: "gained" (B right, A wrong), "lost" (A right, B wrong) and "void"
    (gt == ignore, where neither is scored). Every other pixel is right or wrong in both.
    """
    a, b, g = (np.asarray(x) for x in (pred_a, pred_b, gt))
    if not a.shape == b.shape == g.shape:
        raise ValueError(f"shapes differ: pred_a {a.shape}, pred_b {b.shape}, gt {g.shape}")
    void = g == ignore
    right_a, right_b = (a == g) & ~void, (b == g) & ~void
    return {"gained": right_b & ~right_a, "lost": right_a & ~right_b, "void": void}


def difference_counts(pred_a: np.ndarray, pred_b: np.ndarray, gt: np.ndarray,
                      ignore: int = IGNORE) -> dict[str, int]:
    """Pixel counts of `difference_masks` (any shape, e.g. a whole split as (N, H, W)), plus
    "scored" (pixels whose ground truth is not `ignore`): {gained, lost, void, scored}."""
    m = difference_masks(pred_a, pred_b, gt, ignore)
    out = {k: int(v.sum()) for k, v in m.items()}
    out["scored"] = int(m["void"].size - out["void"])
    return out


def difference_map(pred_a: np.ndarray, pred_b: np.ndarray, gt: np.ndarray, ignore: int = IGNORE,
                   image: np.ndarray | None = None, dim: float = 0.35) -> np.ndarray:
    """Picture of what changed from prediction A to prediction B, judged by the ground truth.

    pred_a, pred_b, gt: (H, W) label ids. Returns (H, W, 3) uint8: green where B is right and A
    was wrong, red where A was right and B is wrong, gray where the ground truth is void
    (`ignore`), and black everywhere else (both right or both wrong) -- or, with `image`
    ((H, W, 3) uint8), that image in gray, darkened to `dim` of its brightness, so the changes
    stand out on the scene (in gray, no colour of the image is taken for a change).
    `difference_legend` explains the colours above a figure.
    """
    a = np.asarray(pred_a)
    if a.ndim != 2:
        raise ValueError(f"difference_map draws one image: (H, W) labels, got {a.shape}")
    m = difference_masks(a, pred_b, gt, ignore)
    H, W = a.shape
    if image is None:
        out = np.zeros((H, W, 3), np.uint8)
    else:
        img = np.asarray(image)
        if img.shape != (H, W, 3):
            raise ValueError(f"image must be (H, W, 3) = {(H, W, 3)}, got {img.shape}")
        gray = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H, W) luminance
        out = np.repeat(np.clip(gray * dim, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    for key in ("void", "gained", "lost"):
        out[m[key]] = DIFFERENCE_COLOURS[key]
    return out


def difference_legend(fig: Any, a: str = "round 1", b: str = "round 2", image: bool = False,
                      **kwargs: Any):
    """Add the colours of `difference_map` above a figure (A and B named as in its titles);
    image: the maps were drawn over the darkened image. Keyword arguments go to `fig.legend`
    (e.g. title=..., which then stands in for a suptitle; loc and bbox_to_anchor to move it).
    Returns the legend."""
    from matplotlib.patches import Patch

    c = {k: np.asarray(v) / 255 for k, v in DIFFERENCE_COLOURS.items()}
    handles = [Patch(facecolor=c["gained"], edgecolor="0.3", label=f"{b} right, {a} wrong"),
               Patch(facecolor=c["lost"], edgecolor="0.3", label=f"{a} right, {b} wrong"),
               Patch(facecolor=c["void"], edgecolor="0.3", label="void in the ground truth"),
               Patch(facecolor="0.25" if image else "black", edgecolor="0.3",
                     label="no change (both right or both wrong)")]
    kwargs = dict(dict(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=7,
                       title_fontsize=9, frameon=False, handlelength=1.2), **kwargs)
    return fig.legend(handles=handles, **kwargs)


__all__ += ["DIFFERENCE_COLOURS", "difference_masks", "difference_counts", "difference_map",
            "difference_legend"]


# ----------------------------------------------------------------------------- OAA measures


def plot_coverage_precision(
    curves: dict[str, dict[str, list[float]]],
    at: float = 0.3,
    marks: dict[str, dict[str, float]] | None = None,
    title: str | None = None,
):
    """The coverage-precision figure: one curve per kind of map, the point at threshold `at`
    drawn as a big open mark, and single points (e.g. reference maps) as black marks.

    curves: {legend label: `coverage_precision_curve`}; marks: {legend label: a dict with
    `coverage` and `precision`}. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from nsrom_lib.metrics import curve_point

    fig, ax = plt.subplots(figsize=(5.4, 3.9))
    for (label, curve), style in zip(curves.items(), ("o-", "s-", "^-", "v-", "d-"), strict=False):
        line, = ax.plot(curve["coverage"], curve["precision"], style, ms=4, label=label)
        if at in curve["threshold"]:
            p = curve_point(curve, at)
            ax.plot(p["coverage"], p["precision"], style[0], ms=11, mfc="none", color=line.get_color())
    for (label, p), mark in zip((marks or {}).items(), ("D", "*", "P", "X"), strict=False):
        ax.plot(p["coverage"], p["precision"], mark, ms=10, color="k", label=label)
    first = next(iter(curves.values()))["threshold"] if curves else []
    sweep = f"thresholds {first[0]:g} (left) to {first[-1]:g} (right); " if first else ""
    ax.set(xlabel="coverage of objects", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1),
           title=title or f"{sweep}big open marks: threshold {at:g}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_oaa_epochs(epochs: Sequence[dict[str, Any]], final_cam: dict[str, float] | None = None):
    """Coverage and precision after every fused epoch: that epoch's own maps and the maps
    accumulated so far (`oaa_epoch_summary`'s rows), with the final eval-mode CAM as a dashed
    line (final_cam: a `map_quality` dict, or None). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 2.9))
    for ax, key in zip(axes, ("coverage", "precision"), strict=True):
        ax.plot(ep, [r["own"][key] for r in epochs], "o-", label="that epoch's own map")
        ax.plot(ep, [r["accumulated"][key] for r in epochs], "s-", label="accumulated so far")
        if final_cam:
            ax.axhline(final_cam[key], color="gray", ls="--", label="final CAM (eval mode)")
        ax.set(xlabel="epoch (as the training log counts)", ylabel=key, ylim=(0, 1), title=key)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"OAA on {epochs[0]['images']} training images, epoch by epoch", fontsize=10)
    fig.tight_layout()
    return fig


__all__ += ["plot_coverage_precision", "plot_oaa_epochs"]


def _main(argv: Sequence[str] | None = None) -> int:
    """`python -m nsrom_lib.viz pipeline OUT.png`: write the README's pipeline figure."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nsrom_lib.viz")
    parser.add_argument("figure", choices=["pipeline"])
    parser.add_argument("out", help="PNG file to write")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    fig = pipeline_figure()
    fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
