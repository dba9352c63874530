"""The threshold explorer: sliders for BE, POM and NSRM that redraw labels and their quality live.

docs/method.md §3 (fg, conflict, bg, att), §4 (pom) and §6 (kernel), measured with §8 (label
quality: precision, coverage, mIoU on labelled pixels; non-salient object recall when the
instances are known). Notebooks 03, 04 and 06 show it on a subset of the training images.

The update logic is the plain function `explore_labels(inputs, **thresholds)`; the widget
class `ThresholdExplorer` only reads its sliders, calls it and draws the result, so tests and
scripts can drive either without a browser. `inputs` holds arrays, whatever made them:

    sal        (N, H, W) uint8      saliency
    oa_cam     (N, C, H, W) uint8   OA-CAMs (BE), raw 8-bit, any value for absent classes
    cam        (N, C, H, W) uint8   CAMs (POM)
    present    (N, C) bool          image-level labels
    gt         (N, H, W) uint8      optional: ground truth (quality metrics)
    pred       (N, H, W) uint8      optional: round-1 predictions (NSRM, the "masked" labels)
    instances  (N, H, W), objects   optional: instance maps and per-image instance lists
                                    (non-salient object recall, SynthVOC)
    image      (N, H, W, 3) uint8   optional: shown under the overlays (else the saliency)
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from nsrom_lib.data.stats import explorer_inputs  # re-exported: it lives with load_split_arrays
from nsrom_lib.params import BE, NSRM, POM, RULE, bounds

__all__ = [
    "THRESHOLDS",
    "explorer_inputs",
    "explore_labels",
    "render_overlays",
    "STAGE_TITLES",
    "PICKS",
    "pick_images",
    "ThresholdExplorer",
]


def _slider(params, name: str, step: float, hi: float | None = None) -> tuple[float, float, float, float]:
    """(reference value, min, max, step) of a setting, its default and range from nsrom_lib.params."""
    lo, top = bounds(params, name)
    return getattr(params, name), lo, top if hi is None else hi, step


#: Slider settings: name -> (reference value, min, max, step), from nsrom_lib.params. bg is in
#: saliency units (0..255); the kernel slider stops at 61 px (twice the reference's box).
THRESHOLDS: dict[str, tuple[float, float, float, float]] = {
    "fg": _slider(BE, "fg", 0.05),
    "conflict": _slider(BE, "conflict", 0.05),
    "bg": _slider(BE, "bg", 1),
    "att": _slider(BE, "att", 0.05),
    "pom": _slider(POM, "pom", 0.05),
    "kernel": _slider(NSRM, "kernel", 1, hi=61),
}


def _quality(labels: np.ndarray, x: Mapping[str, Any], num_labels: int) -> dict[str, float]:
    from nsrom_lib.metrics import instance_background_share, instance_recall, label_quality

    m: dict[str, float] = {"ignore_share": float((labels == 255).mean())}
    if x.get("gt") is not None:
        m.update(label_quality(labels, x["gt"], num_labels))
    if x.get("instances") is not None and x.get("objects") is not None:
        m["nonsalient_recall"] = instance_recall(
            labels, x["instances"], x["objects"], salient=False
        )
        m["nonsalient_as_background"] = instance_background_share(
            labels, x["instances"], x["objects"], salient=False
        )
    return m


def explore_labels(
    inputs: Mapping[str, Any],
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    pom: float = POM.pom,
    kernel: int = NSRM.kernel,
    ratio: float = RULE.ratio,
    device: str = "cpu",
    threads: int | None = 1,
    pom_on: bool = True,
) -> dict[str, Any]:
    """Labels and their quality for one setting of the thresholds (the explorer's update).

    inputs: see the module docstring. Returns {labels: {initial, pseudo[, masked]}: (N, H, W)
    uint8 numpy, metrics: {stage: {ignore_share[, precision, coverage, miou][, nonsalient_recall]}},
    seconds}. initial = BE + 1% rule, pseudo = BE + POM + 1% rule, masked = NSRM on pseudo.
    threads: torch CPU threads while computing (None: torch's setting; 1 is fastest on a busy
    machine, see labels.torch_threads). pom_on=False: no potential object mining (the `pseudo`
    labels are the BE labels, and NSRM starts from them).
    """
    import torch

    from nsrom_lib import labels as L

    t0 = time.perf_counter()

    def T(key: str) -> torch.Tensor:
        v = inputs[key]
        return (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).to(device)

    sal, present = T("sal"), T("present").bool()
    num_labels = present.shape[1] + 1
    with L.torch_threads(threads), torch.inference_mode():
        be = L.background_extraction(sal, T("oa_cam"), present, fg, conflict, bg, att)
        initial = L.min_label_ratio_rule(be, ratio)
        out = {
            "initial": initial,
            "pseudo": L.min_label_ratio_rule(
                L.potential_object_mining(be, T("cam"), present, pom), ratio
            ) if pom_on else initial,
        }
        if inputs.get("pred") is not None:
            out["masked"] = L.non_salient_region_masking(
                T("pred"), out["pseudo"], sal, present, int(kernel), ratio
            )
    labels = {k: v.cpu().numpy() for k, v in out.items()}
    metrics = {k: _quality(v, inputs, num_labels) for k, v in labels.items()}
    return dict(labels=labels, metrics=metrics, seconds=time.perf_counter() - t0)


#: Column titles of the explorer's picture, by label stage.
STAGE_TITLES = {"initial": "BE labels", "pseudo": "BE + POM labels", "masked": "NSRM labels"}


def _text_strip(width: int, texts: list[tuple[int, str]], height: int = 14,
                swatches: dict[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """A white (height, width, 3) strip with `text` drawn at each x (and a colour swatch before
    it where `swatches` has one): the explorer's titles and legend, drawn without matplotlib."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, text in texts:
        if swatches and x in swatches:
            draw.rectangle([x, 3, x + 8, height - 4], fill=swatches[x], outline=(80, 80, 80))
            x += 11
        draw.text((x, 1), text, fill=(0, 0, 0))
    return np.asarray(strip)


def _gray_tile(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def _map_tile(a: np.ndarray) -> np.ndarray:
    """An (H, W) uint8 map in the jet colour map (the figures' colours for CAMs)."""
    import matplotlib

    lut = (matplotlib.colormaps["jet"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    return lut[np.asarray(a, np.uint8)]


def render_overlays(
    inputs: Mapping[str, Any], labels: Mapping[str, np.ndarray], indices: list[int], scale: int = 2,
    classes: list[str] | None = None, maps: bool = False, cam_class: int | None = None,
    titles: Mapping[str, str] | None = None,
) -> np.ndarray:
    """One row per image: the image, then each label stage (and GT) overlaid; (h, w, 3) uint8.

    A title strip names the columns; with `classes` (class names) a legend strip under the grid
    gives the label colours (classes, ignore in white; background is left clear). maps=True adds
    the saliency and an OA-CAM after the image: of class `cam_class` (0-based), or with None of
    each image's first present class. titles: column titles by label stage (else STAGE_TITLES).
    """
    from nsrom_lib.viz import IGNORE, PALETTE, overlay

    rows = []
    for i in indices:
        base = (
            inputs["image"][i]
            if inputs.get("image") is not None
            else _gray_tile(inputs["sal"][i])
        )
        base = np.asarray(base, np.uint8)
        tiles = [base]
        if maps:
            c = cam_class
            if c is None:
                present = np.flatnonzero(np.asarray(inputs["present"][i]))
                c = int(present[0]) if len(present) else 0
            tiles += [_gray_tile(inputs["sal"][i]), _map_tile(inputs["oa_cam"][i][c])]
        tiles += [overlay(base, lab[i]) for lab in labels.values()]
        if inputs.get("gt") is not None:
            tiles.append(overlay(base, np.asarray(inputs["gt"][i])))
        gap = np.full((base.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1))
    gap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, gap)][:-1], axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    tile_w = (np.asarray(inputs["sal"][0]).shape[1] + 2) * scale
    titles = {**STAGE_TITLES, **(titles or {})}
    cam_name = ("first class" if cam_class is None else
                classes[cam_class] if classes and cam_class < len(classes) else f"class {cam_class + 1}")
    names = ["image"] + (["saliency", f"OA-CAM {cam_name}"] if maps else []) + [
        titles.get(k, k) for k in labels] + (
        ["ground truth"] if inputs.get("gt") is not None else [])
    parts = [_text_strip(grid.shape[1], [(j * tile_w + 2, t) for j, t in enumerate(names)]), grid]
    if classes:
        entries = [f"{i + 1} {c}" for i, c in enumerate(classes)] + [f"{IGNORE} ignore"]
        ids = list(range(1, len(classes) + 1)) + [IGNORE]
        xs = np.cumsum([0] + [11 + 6 * len(e) + 10 for e in entries[:-1]]) + 2
        swatches = {int(x): tuple(int(v) for v in PALETTE[i]) for x, i in zip(xs, ids, strict=True)}
        width = max(grid.shape[1], int(xs[-1]) + 11 + 6 * len(entries[-1]) + 4)
        legend = _text_strip(width, list(zip((int(x) for x in xs), entries, strict=True)),
                             swatches=swatches)
        parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                 for p in parts] + [legend]
    return np.concatenate(parts, axis=0)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


_COLUMNS = [
    ("precision", "precision"),
    ("coverage", "coverage"),
    ("miou", "mIoU"),
    ("ignore_share", "ignore"),
    ("nonsalient_recall", "non-salient recall"),
    ("nonsalient_as_background", "non-salient as background"),
]


def _table_html(result: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The quality table of `result`; with `defaults` (the result at the default settings) a
    grey row under each stage gives its values there."""
    used = [(k, t) for k, t in _COLUMNS if any(k in m for m in result["metrics"].values())]
    head = "".join(f"<th>{t}</th>" for _, t in used)

    def row(stage: str, m: dict[str, float], attrs: str) -> str:
        cells = "".join(f'<td data-col="{k}">{m[k]:.3f}</td>' if k in m else "<td></td>"
                        for k, _ in used)
        return f"<tr {attrs}><td>{stage}</td>{cells}</tr>"

    body = ""
    for stage, m in result["metrics"].items():
        body += row(stage, m, f'data-stage="{stage}"')
        if defaults and stage in defaults["metrics"]:
            body += row(f"{stage} at the defaults", defaults["metrics"][stage],
                        f'data-stage="{stage}-default" style="color:#888"')
    return (
        f"<table class=\"nsrom-quality\" style=\"border-spacing: 12px 1px\"><tr><th>labels</th>{head}</tr>{body}</table>"
        f"<small>updated in {result['seconds'] * 1000:.0f} ms</small>"
    )


#: The image picker's choices: label -> which images of the subset it shows.
PICKS = {
    "first images": "first",
    "complex images only (2+ classes)": "complex",
    "images with a non-salient object": "nonsalient",
}


def pick_images(inputs: Mapping[str, Any], pick: str, show: int) -> list[int]:
    """The first `show` indices of the subset that `pick` (a value of PICKS) selects: all images,
    those with two or more classes, or those with a non-salient object (needs instances)."""
    n = len(inputs["sal"])
    if pick == "first":
        keep = range(n)
    elif pick == "complex":
        keep = [i for i in range(n) if np.asarray(inputs["present"][i]).sum() >= 2]
    elif pick == "nonsalient":
        objects = inputs.get("objects") or [[] for _ in range(n)]
        keep = [i for i in range(n) if any(not o["salient"] for o in objects[i])]
    else:
        raise ValueError(f"pick must be one of {sorted(PICKS.values())}, got {pick!r}")
    return list(keep)[:show]


class ThresholdExplorer:
    """Sliders for fg, conflict, bg, att, pom (and the NSRM kernel when `pred` is given), POM
    on/off, an image picker and the class of the OA-CAM column.

    Every slider change calls `update()`: `explore_labels` on all the inputs (the subset),
    then the metrics table and the overlays of the first `show` picked images (the "shown"
    slider) are redrawn.
    The values it was opened with are the defaults: shown next to each slider, as grey rows of
    the table and restored by the "defaults" button. `result` holds the last output; `history`
    the settings it was computed for.
    """

    def __init__(
        self,
        inputs: Mapping[str, Any],
        show: int = 4,
        scale: int = 2,
        device: str = "cpu",
        classes: list[str] | None = None,
        maps: bool = True,
        **initial: float,
    ):
        import ipywidgets as W

        unknown = set(initial) - set(THRESHOLDS)
        if unknown:
            raise ValueError(f"unknown threshold(s) {sorted(unknown)}; known: {sorted(THRESHOLDS)}")
        self.inputs, self.device, self.scale, self.classes = inputs, device, scale, classes
        self.maps = maps
        names = [k for k in THRESHOLDS if k != "kernel" or inputs.get("pred") is not None]
        self.sliders: dict[str, Any] = {}
        self.defaults: dict[str, float] = {}
        rows = []
        for k in names:
            ref, lo, hi, step = THRESHOLDS[k]
            cls = W.IntSlider if k in ("bg", "kernel") else W.FloatSlider
            self.defaults[k] = initial.get(k, ref)
            self.sliders[k] = cls(
                value=self.defaults[k],
                min=lo,
                max=hi,
                step=step,
                description=k,
                continuous_update=False,
            )
            rows.append(W.HBox([self.sliders[k],
                                W.HTML(f"<small>default {self.defaults[k]:g}</small>")]))
        self.pom_on = W.Checkbox(value=True, description="POM on", indent=False)
        self.picker = W.Dropdown(options=list(PICKS.items()), value="first", description="images")
        self.shown = W.IntSlider(value=show, min=1, max=max(8, show), description="shown",
                                 continuous_update=False)
        C = np.asarray(inputs["present"]).shape[1]
        cam_names = [(classes[c] if classes and c < len(classes) else f"class {c + 1}", c)
                     for c in range(C)]
        self.cam_class = W.Dropdown(options=[("first class of the image", -1), *cam_names],
                                    value=-1, description="OA-CAM of")
        self.reset = W.Button(description="defaults", tooltip="back to the default values")
        self.reset.on_click(lambda _: self.set(**self.defaults, pom_on=True))
        self.table = W.HTML()
        self.image = W.Image(format="png")
        self.status = W.HTML()
        controls = W.HBox([W.VBox(rows[:3]), W.VBox(rows[3:])])
        self.widget = W.VBox(
            [
                controls,
                W.HBox([self.pom_on, self.picker, self.shown, self.cam_class, self.reset]),
                self.table,
                self.status,
                self.image,
            ]
        )
        self._held = False
        for w in [*self.sliders.values(), self.pom_on]:
            w.observe(self._on_change, names="value")
        for w in (self.picker, self.shown, self.cam_class):
            w.observe(self._on_view, names="value")
        self.history: list[dict[str, float]] = []
        self.result: dict[str, Any] = {}
        self.at_defaults = explore_labels(inputs, device=device, **self.defaults)
        self.update()

    @property
    def indices(self) -> list[int]:
        """The images shown: the first `shown` of the picked kind."""
        return pick_images(self.inputs, self.picker.value, self.shown.value)

    def thresholds(self) -> dict[str, float]:
        """The sliders' current values."""
        return {k: s.value for k, s in self.sliders.items()}

    def set(self, pom_on: bool | None = None, **values: float) -> dict[str, Any]:
        """Set several sliders (and POM on/off) with one update; returns the result."""
        self._held = True
        try:
            for k, v in values.items():
                self.sliders[k].value = v
            if pom_on is not None:
                self.pom_on.value = pom_on
        finally:
            self._held = False
        return self.update()

    def update(self) -> dict[str, Any]:
        """Recompute labels and metrics for the current sliders and redraw; returns the result."""
        th = self.thresholds()
        self.result = explore_labels(self.inputs, device=self.device, pom_on=self.pom_on.value,
                                     **th)
        self.history.append(th)
        self.table.value = _table_html(self.result, self.at_defaults)
        self.draw()
        return self.result

    def draw(self) -> None:
        """Redraw the picture of the picked images (no recomputation)."""
        idx = self.indices
        self.status.value = ("" if idx else
                             "<small>no image of this kind in the subset</small>")
        if idx:
            titles = None if self.pom_on.value else {"pseudo": "BE labels (POM off)"}
            cam = None if self.cam_class.value < 0 else self.cam_class.value
            grid = render_overlays(self.inputs, self.result["labels"], idx, self.scale,
                                   self.classes, maps=self.maps, cam_class=cam, titles=titles)
            self.image.value = _png(grid)

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._held:
            self.update()

    def _on_view(self, change: dict[str, Any]) -> None:
        self.draw()

    def _repr_mimebundle_(self, **kwargs: Any):
        """The live widget; when headless (papermill), a static picture of the same state:
        the settings, the quality table and the overlays, with nothing that needs a kernel."""
        from nsrom_lib.progress import headless

        if not headless():
            return self.widget._repr_mimebundle_(**kwargs)
        import base64

        settings = ", ".join(f"{k} = {v:g}" for k, v in self.thresholds().items())
        settings += "" if self.pom_on.value else ", POM off"
        html = f"<p><b>Explorer (static copy)</b>: {settings}</p>{self.table.value}"
        if self.image.value:
            html += f'<br><img src="data:image/png;base64,{base64.b64encode(self.image.value).decode()}">'
        return {"text/html": html, "text/plain": f"ThresholdExplorer({settings})"}
