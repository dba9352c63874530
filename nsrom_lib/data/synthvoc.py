"""SynthVOC: a deterministic synthetic benchmark in the PASCAL VOC layout (docs/design.md, "Datasets").

Why it exists: nothing can be downloaded where this project is built and tested, and a reader
should not need 2 GB of VOC to learn the method. SynthVOC reproduces the conditions NSROM works
under, in seconds and from a seed:

* multi-label scenes: one large, **salient** object near the centre (sometimes two) and up to
  three smaller, lower-contrast, **non-salient** objects near the border, all disjoint;
* the class is carried by the **shape** and by a small, off-centre **discriminative part**
  (a coloured marker whose place on the object is fixed per class); body textures come from one
  pool shared by all classes and by the background clutter, so a CAM that only needs the part
  stays partial, and no colour identifies a class's body;
* a **saliency map that behaves like a salient-object detector**: soft, slightly misaligned
  borders on salient objects, occasional false alarms on clutter, weak or no response on
  non-salient objects, and exactly 0 away from objects (NSRM's object mask is `sal != 0`);
* textured, cluttered backgrounds whose brightness varies per image, so no colour threshold
  separates objects from background.

Every image is drawn from its own random stream (`SeedSequence(seed).spawn`), so one image does
not depend on how many others are generated, and the same seed gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from nsrom_lib.config import SYNTHVOC_MAX_CLASSES, config_hash
from nsrom_lib.data.io import (
    atomic_write_json,
    atomic_write_text,
    save_gray_png,
    save_label_png,
    save_rgb_png,
    write_error,
)

log = logging.getLogger(__name__)

__all__ = [
    "SynthVOCConfig",
    "CLASS_NAMES",
    "render_scene",
    "generate_synthvoc",
    "synthvoc_is_complete",
]

# One shape per class; the marker (discriminative part) sits at a fixed place of the shape.
CLASS_NAMES = ["disc", "square", "triangle", "cross", "ring", "star", "crescent", "diamond"]
assert len(CLASS_NAMES) == SYNTHVOC_MAX_CLASSES  # config.py checks num_classes against it
# Marker centre in the object's own coordinates (unit = object radius), per class.
_MARKER_AT = [(0.45, 0.30), (0.42, -0.42), (-0.22, 0.22), (0.68, 0.0),
              (0.0, -0.73), (0.12, 0.10), (-0.55, 0.35), (0.0, 0.55)]


@dataclass(frozen=True)
class SynthVOCConfig:
    """Generator settings. Sizes are fractions of the image side unless named `_px`."""

    image_size: int = 96
    n_train: int = 2000
    n_val: int = 500
    num_classes: int = 6
    seed: int = 0
    salient_width: tuple[float, float] = (0.40, 0.60)  # object diameter / image side
    # non-salient objects: smaller and lower-contrast than salient ones, yet findable by a
    # GT-trained segmenter (the aim: non-salient recall of the upper bound near 0.9;
    # version 1's (0.24, 0.34) wide, (0.10, 0.22) contrast, 0.75 marker gave 0.65)
    nonsalient_width: tuple[float, float] = (0.28, 0.38)
    p_second_salient: float = 0.12
    p_num_nonsalient: tuple[float, ...] = (0.30, 0.45, 0.25)  # P(0), P(1), P(2) non-salient
    marker_radius: float = 0.24  # marker radius / object radius
    salient_contrast: tuple[float, float] = (0.30, 0.55)  # luminance gap body vs background
    nonsalient_contrast: tuple[float, float] = (0.16, 0.32)
    nonsalient_marker_alpha: float = 1.0  # marker opacity on non-salient objects (1 on salient)
    sal_blur: float = 1.0  # saliency border softness (px at 96 px, scaled with the size)
    p_false_alarm: float = 0.2  # a clutter blob that the saliency map marks
    p_nonsalient_hint: float = 0.25  # a weak (< 128) saliency response on a non-salient object
    n_clutter: tuple[int, int] = (3, 7)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: SynthVOC seeds must be >= 0.")
        if self.num_classes < 1 or self.num_classes > len(CLASS_NAMES):
            raise ValueError(
                f"SynthVOC has {len(CLASS_NAMES)} shapes; num_classes={self.num_classes} "
                f"must be in 1..{len(CLASS_NAMES)}."
            )
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size}: SynthVOC needs at least 32 px.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return config_hash({"generator": GENERATOR_VERSION, **self.to_dict()})


# Bump whenever render_scene changes what it draws: cached datasets then regenerate.
GENERATOR_VERSION = 2  # 2: larger, higher-contrast non-salient objects, opaque markers


# ----------------------------------------------------------------------------- drawing helpers


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _colour_with_lum(rng: np.random.Generator, lum: float) -> np.ndarray:
    """A random colour (3,) in 0..1 whose luminance is close to `lum`."""
    c = rng.uniform(0, 1, 3)
    c = c - _luminance(c) + lum
    return np.clip(c, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) smooth noise in 0..1: a random grid of `cells` x `cells` upsampled bicubically."""
    grid = rng.uniform(0, 1, (cells + 3, cells + 3))
    out = ndimage.zoom(grid, (h / cells, w / cells), order=3, mode="nearest")
    oy = (out.shape[0] - h) // 2
    ox = (out.shape[1] - w) // 2
    out = out[oy : oy + h, ox : ox + w]
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo + 1e-8)


def _texture(rng: np.random.Generator, h: int, w: int, lum: float, spread: float) -> np.ndarray:
    """(h, w, 3) texture from the shared pool, mean luminance about `lum`.

    The pool (smooth blotches, stripes, checks, speckle) is used by every class body and by
    the clutter alike, so a texture never identifies a class.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    kind = rng.integers(4)
    if kind == 0:  # blotches
        t = _smooth_noise(rng, h, w, int(rng.integers(3, 7)))
    elif kind == 1:  # stripes
        th = rng.uniform(0, np.pi)
        period = rng.uniform(3.5, 8.0)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(th) + yy * np.sin(th)) * 2 * np.pi / period)
    elif kind == 2:  # checks
        p = int(rng.integers(2, 6))
        t = ((yy // p + xx // p) % 2).astype(np.float64)
    else:  # speckle
        t = rng.uniform(0, 1, (h, w))
    c1 = _colour_with_lum(rng, np.clip(lum - spread / 2, 0, 1))
    c2 = _colour_with_lum(rng, np.clip(lum + spread / 2, 0, 1))
    return c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]


def _local_coords(h, w, cy, cx, radius, theta):
    """Object coordinates (u, v) of every pixel: unit = radius, rotated by theta."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = (yy + 0.5 - cy), (xx + 0.5 - cx)
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / radius
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / radius
    return u, v


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean silhouette of class `cls` in object coordinates (inside the unit disc)."""
    r = np.hypot(u, v)
    a = np.arctan2(v, u)
    if cls == 0:  # disc
        return r <= 0.95
    if cls == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if cls == 2:  # triangle (circumradius 1, pointing up)
        m = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = np.pi / 2 + k * 2 * np.pi / 3
            m &= u * np.cos(phi) + v * np.sin(phi) <= 0.5
        return m
    if cls == 3:  # cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if cls == 4:  # ring
        return (r >= 0.5) & (r <= 0.95)
    if cls == 5:  # star
        return r <= 0.42 + 0.55 * ((1 + np.cos(5 * a)) / 2) ** 1.5
    if cls == 6:  # crescent
        return (r <= 0.95) & (np.hypot(u - 0.45, v) >= 0.7)
    if cls == 7:  # diamond
        return np.abs(u) / 0.7 + np.abs(v) <= 0.97
    raise ValueError(f"unknown SynthVOC class {cls}")


def _marker_colour(cls: int, num_classes: int) -> np.ndarray:
    """The class's marker colour: evenly spaced, fully saturated hues."""
    h = cls / max(num_classes, 1)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 1.0 - np.clip(np.minimum(k, 4 - k), 0, 1)


def _blob_mask(rng, h, w, cy, cx, radius):
    """An irregular clutter blob (never one of the class shapes)."""
    u, v = _local_coords(h, w, cy, cx, radius, rng.uniform(0, 2 * np.pi))
    r = np.hypot(u, v * rng.uniform(1.3, 2.5))
    a = np.arctan2(v, u)
    wob = sum(rng.uniform(0.08, 0.2) * np.sin(k * a + rng.uniform(0, 6.3)) for k in (2, 3, 7))
    return r <= 0.8 + wob


def _bar_mask(rng, h, w, cy, cx, length, thickness):
    u, v = _local_coords(h, w, cy, cx, 1.0, rng.uniform(0, np.pi))
    return (np.abs(u) <= length / 2) & (np.abs(v) <= thickness / 2)


# ----------------------------------------------------------------------------- one scene


def _background(cfg: SynthVOCConfig, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """A smooth colour field, then clutter from the shared texture pool.

    Returns the (S, S, 3) float image and the clutter masks (remembered for the saliency
    detector's false alarms).
    """
    S = cfg.image_size
    scale = S / 96.0
    # background: smooth colour field whose mean brightness varies per image
    bg_lum = rng.uniform(0.2, 0.8)
    img = _texture(rng, S, S, bg_lum, rng.uniform(0.15, 0.35))
    img = 0.6 * img + 0.4 * (_smooth_noise(rng, S, S, 3)[..., None] * 0.5 + bg_lum - 0.25)
    clutter = []
    for _ in range(int(rng.integers(cfg.n_clutter[0], cfg.n_clutter[1] + 1))):
        cy, cx = rng.uniform(0, S, 2)
        if rng.uniform() < 0.6:
            m = _blob_mask(rng, S, S, cy, cx, rng.uniform(0.06, 0.16) * S)
        else:
            m = _bar_mask(rng, S, S, cy, cx, rng.uniform(0.2, 0.6) * S, rng.uniform(2, 4) * scale)
        tex = _texture(rng, S, S, np.clip(bg_lum + rng.uniform(-0.3, 0.3), 0.05, 0.95), 0.3)
        img[m] = tex[m]
        clutter.append(m)
    return img, clutter


def _place(cfg: SynthVOCConfig, rng: np.random.Generator, salient: bool, first: bool,
           occupied: np.ndarray) -> dict[str, Any] | None:
    """Find a place for one object that keeps a margin to the others (40 tries), or None.

    The first salient object sits near the centre; a second one is smaller, wherever it fits;
    non-salient objects are peripheral.
    """
    S = cfg.image_size
    margin = max(2, int(round(3 * S / 96.0)))
    lo, hi = cfg.salient_width if salient else cfg.nonsalient_width
    if salient and not first:  # a second salient object: smaller, wherever it fits
        lo, hi = lo * 0.75, lo
    for _ in range(40):
        radius = rng.uniform(lo, hi) * S / 2
        if salient and not first:
            cy, cx = rng.uniform(radius, S - radius, 2)
        elif salient:
            cy, cx = S / 2 + rng.normal(0, 0.06 * S, 2)
        else:  # peripheral: away from the centre
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.28, 0.48) * S
            cy, cx = S / 2 + dist * np.sin(ang), S / 2 + dist * np.cos(ang)
        cy = float(np.clip(cy, radius, S - radius))
        cx = float(np.clip(cx, radius, S - radius))
        cls = int(rng.integers(cfg.num_classes))
        theta = rng.uniform(0, 2 * np.pi)
        u, v = _local_coords(S, S, cy, cx, radius, theta)
        m = _shape_mask(cls, u, v)
        if m.sum() < 0.15 * math.pi * radius**2:
            continue
        grown = ndimage.binary_dilation(m, iterations=margin)
        if (grown & occupied).any():
            continue
        return dict(cls=cls, m=m, u=u, v=v)
    return None


def _paint(cfg: SynthVOCConfig, rng: np.random.Generator, img: np.ndarray, obj: dict[str, Any],
           salient: bool) -> None:
    """Paint an object's textured body (contrast to its surroundings) and its class marker."""
    S = cfg.image_size
    cls, m, u, v = obj["cls"], obj["m"], obj["u"], obj["v"]
    local_lum = float(_luminance(img[m]).mean())
    lo, hi = cfg.salient_contrast if salient else cfg.nonsalient_contrast
    gap = rng.uniform(lo, hi)
    sign = 1.0 if local_lum < 0.5 else -1.0
    if not salient and rng.uniform() < 0.5:
        sign = -sign
    body_lum = float(np.clip(local_lum + sign * gap, 0.05, 0.95))
    body = _texture(rng, S, S, body_lum, rng.uniform(0.1, 0.3))
    img[m] = body[m]
    # the discriminative part: a coloured marker at the class's place on the shape
    mu, mv = _MARKER_AT[cls]
    marker = (np.hypot(u - mu, v - mv) <= cfg.marker_radius) & m
    colour = _marker_colour(cls, cfg.num_classes)
    alpha = 1.0 if salient else cfg.nonsalient_marker_alpha
    img[marker] = alpha * colour + (1 - alpha) * img[marker]


def _detector_response(cfg: SynthVOCConfig, rng: np.random.Generator, obj: dict[str, Any],
                       salient: bool) -> np.ndarray | None:
    """The saliency detector's response to one object (float, 0..1), or None for no response.

    Salient objects: slightly misaligned, with soft borders after the blur. Non-salient ones: with
    probability p_nonsalient_hint a weak, partial response (< 128 after scaling).
    """
    m, u, v = obj["m"], obj["u"], obj["v"]
    if salient:
        sm = m
        grow = int(rng.integers(-1, 2))
        if grow > 0:
            sm = ndimage.binary_dilation(sm, iterations=grow)
        elif grow < 0:
            sm = ndimage.binary_erosion(sm, iterations=-grow)
        sm = np.roll(sm, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
        return rng.uniform(0.9, 1.0) * sm.astype(np.float64)
    if rng.uniform() < cfg.p_nonsalient_hint:
        part = m & (np.hypot(u - rng.uniform(-0.5, 0.5), v - rng.uniform(-0.5, 0.5)) <= 0.6)
        return rng.uniform(0.15, 0.4) * part
    return None


def render_scene(cfg: SynthVOCConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one scene.

    Returns a dict with
      image: (S, S, 3) uint8 RGB; mask: (S, S) uint8 class map (0 bg, c+1 class c);
      instances: (S, S) uint8 instance map (0 bg, k = instance k);
      saliency: (S, S) uint8; objects: list of per-instance dicts (id, class, salient, area, bbox).
    """
    S = cfg.image_size
    img, clutter = _background(cfg, rng)
    mask = np.zeros((S, S), np.uint8)
    inst = np.zeros((S, S), np.uint8)
    occupied = np.zeros((S, S), bool)
    objects: list[dict[str, Any]] = []
    sal = np.zeros((S, S), np.float64)

    n_sal = 1 + int(rng.uniform() < cfg.p_second_salient)
    n_non = int(rng.choice(len(cfg.p_num_nonsalient), p=np.array(cfg.p_num_nonsalient)))
    for salient in [True] * n_sal + [False] * n_non:
        obj = _place(cfg, rng, salient, first=not objects, occupied=occupied)
        if obj is None:
            continue
        _paint(cfg, rng, img, obj, salient)
        m, k = obj["m"], len(objects) + 1
        mask[m] = obj["cls"] + 1
        inst[m] = k
        occupied |= m
        ys, xs = np.nonzero(m)
        objects.append(
            dict(id=k, cls=obj["cls"], salient=bool(salient), area=int(m.sum()),
                 bbox=[int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1])
        )
        response = _detector_response(cfg, rng, obj, salient)
        if response is not None:
            sal = np.maximum(sal, response)

    if clutter and rng.uniform() < cfg.p_false_alarm:  # a false alarm on a clutter item
        fa = clutter[int(rng.integers(len(clutter)))] & ~occupied
        sal = np.maximum(sal, rng.uniform(0.3, 0.8) * fa)

    sal = ndimage.gaussian_filter(sal, cfg.sal_blur * S / 96.0)
    sal8 = np.clip(np.round(sal * 255), 0, 255).astype(np.uint8)
    sal8[sal8 < 8] = 0  # exactly 0 away from objects: NSRM's object mask is sal != 0
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    for o in objects:
        o["class"] = o.pop("cls")
    return dict(image=image, mask=mask, instances=inst, saliency=sal8, objects=objects)


# ----------------------------------------------------------------------------- the dataset


def _names(split: str, n: int) -> list[str]:
    return [f"{split}_{i:05d}" for i in range(n)]


def _render_write(job: tuple[SynthVOCConfig, str, int, str]) -> tuple[str, list[dict[str, Any]]]:
    """Render image number `index` (its own seed stream) and write its four files."""
    cfg, root, index, name = job
    ss = np.random.SeedSequence([cfg.seed, index])
    scene = render_scene(cfg, np.random.default_rng(ss))
    root_p = Path(root)
    save_rgb_png(root_p / "JPEGImages" / f"{name}.png", scene["image"])
    save_label_png(root_p / "SegmentationClass" / f"{name}.png", scene["mask"])
    save_label_png(root_p / "SegmentationObject" / f"{name}.png", scene["instances"])
    save_gray_png(root_p / "Saliency" / f"{name}.png", scene["saliency"])
    return name, scene["objects"]


def synthvoc_is_complete(root: str | os.PathLike, cfg: SynthVOCConfig) -> bool:
    """True if `root` holds a finished SynthVOC written with exactly this configuration."""
    p = Path(root) / "synthvoc.json"
    if not p.is_file():
        return False
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("hash") == cfg.hash() and meta.get("complete") is True


def generate_synthvoc(
    root: str | os.PathLike,
    cfg: SynthVOCConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write SynthVOC into `root` (VOC layout, see data/README.md) and return its metadata
    (`synthvoc.json`, plus `seconds` when it was generated now).

    Skips the work if `root` already holds the same configuration (unless `force`).
    `synthvoc.json` is written last: a folder without it (an interrupted run) is regenerated.
    """
    root = Path(root)
    if not force and synthvoc_is_complete(root, cfg):
        return json.loads((root / "synthvoc.json").read_text())
    t0 = time.perf_counter()
    try:
        # the completion mark goes first: an interrupted rewrite is never taken as complete
        (root / "synthvoc.json").unlink(missing_ok=True)
        for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "Saliency",
                    "ImageSets/Segmentation"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(root, e, "the SynthVOC folder") from e
    splits = {"train": _names("train", cfg.n_train), "val": _names("val", cfg.n_val)}
    # image index -> its own random stream: train i uses i, val i uses n_train + i
    jobs = [(cfg, str(root), i, n) for i, n in enumerate(splits["train"] + splits["val"])]
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    from nsrom_lib.progress import progress_bar as tqdm

    bar = tqdm(total=len(jobs), desc="SynthVOC", unit="img", disable=not progress)
    instances: dict[str, list[dict[str, Any]]] = {}
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as ex:
            for name, objs in ex.map(_render_write, jobs, chunksize=32):
                instances[name] = objs
                bar.update()
    else:
        for job in jobs:
            name, objs = _render_write(job)
            instances[name] = objs
            bar.update()
    bar.close()
    from nsrom_lib.data.voc import cls_list_path, split_path, write_cls_list

    for split, names in splits.items():
        atomic_write_text(split_path(root, split), "\n".join(names) + "\n")
        write_cls_list(cls_list_path(root, split),
                       {n: [o["class"] for o in instances[n]] for n in names})
    atomic_write_text(root / "classes.txt", "\n".join(CLASS_NAMES[: cfg.num_classes]) + "\n")
    atomic_write_json(root / "instances.json", instances)
    meta = dict(
        name="SynthVOC",
        generator_version=GENERATOR_VERSION,
        config=cfg.to_dict(),
        hash=cfg.hash(),
        classes=CLASS_NAMES[: cfg.num_classes],
        complete=True,
    )
    # no timing in the folder: two builds of one configuration are identical, byte for byte
    atomic_write_json(root / "synthvoc.json", meta)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("SynthVOC: %d images in %.1f s -> %s", len(jobs), seconds, root)
    return dict(meta, seconds=seconds)
