"""Joint transforms on `VOCSegDataset` sample dicts: image, saliency and mask move together.

A sample is a dict with
  image:    (3, H, W) float32 (0..1 before `Normalize`),
  saliency: (H, W) uint8 0..255 (optional),
  mask:     (H, W) int64, 255 = void (optional),
and any other keys (name, label, index), which pass through untouched. Each transform
returns a new dict. Geometry moves every map together: image and saliency are
interpolated bilinearly, the mask by nearest neighbour, so label ids are never blended.

Random transforms draw from `generator` (a `torch.Generator`) when given, else from
torch's global RNG, so seeded runs are deterministic. With DataLoader workers prefer the
global RNG: each worker gets its own seed from the DataLoader, whereas one generator
object is copied into every worker and would repeat the same draws there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Resize",
    "RandomHorizontalFlip",
    "RandomScaleCrop",
    "ColorJitter",
    "Normalize",
]

Sample = dict[str, Any]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (h, w) pair as (h, w), validated positive."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    """One draw from U(lo, hi) on the given generator (or torch's global RNG)."""
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One draw from {0, ..., high - 1}."""
    return int(torch.randint(high, (), generator=generator).item())


def _resize_sample(sample: Sample, hw: tuple[int, int], antialias: bool) -> Sample:
    """Resize every map of `sample` to hw = (h, w): image/saliency bilinear, mask nearest."""
    out = dict(sample)
    img = sample["image"]
    if tuple(img.shape[-2:]) == hw:
        return out
    # (3, H, W) -> (1, 3, h, w) -> (3, h, w)
    out["image"] = F.interpolate(
        img[None].float(), size=hw, mode="bilinear", align_corners=False, antialias=antialias
    )[0].to(img.dtype)
    if "saliency" in sample:
        sal = sample["saliency"]
        # (H, W) uint8 -> (1, 1, h, w) float -> (h, w) uint8, rounded
        s = F.interpolate(
            sal[None, None].float(),
            size=hw,
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        )[0, 0]
        out["saliency"] = s.round_().clamp_(0, 255).to(sal.dtype)
    if "mask" in sample:
        mask = sample["mask"]
        # (H, W) int64 -> (1, 1, h, w) float (ids <= 255 are exact) -> (h, w) int64
        m = F.interpolate(mask[None, None].float(), size=hw, mode="nearest-exact")[0, 0]
        out["mask"] = m.to(mask.dtype)
    return out


class Compose:
    """Apply transforms in order: `Compose([Resize(96), Normalize()])(sample)`."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Resize to a fixed size: image (3, H, W) and saliency (H, W) bilinear, mask (H, W) nearest.

    size: int (square) or (h, w). antialias: low-pass the image and saliency when shrinking.
    Output maps are (3, h, w), (h, w), (h, w) with the input dtypes.
    """

    def __init__(self, size: int | Sequence[int], antialias: bool = True) -> None:
        self.size = _pair(size)
        self.antialias = antialias

    def __call__(self, sample: Sample) -> Sample:
        return _resize_sample(sample, self.size, self.antialias)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomHorizontalFlip:
    """With probability p, flip image (3, H, W), saliency (H, W) and mask (H, W) left-right."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        if torch.rand((), generator=self.generator).item() < self.p:
            for key in ("image", "saliency", "mask"):
                if key in out:
                    out[key] = out[key].flip(-1)  # W is the last dim
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScaleCrop:
    """Rescale by a random factor, pad to at least the crop, then crop at a random place.

    crop_size: int or (h, w). scale_range: (lo, hi) for the factor s ~ U(lo, hi); the maps
    become round(s * H) x round(s * W). Padding (bottom/right) uses 0 for the image and
    saliency and `ignore_index` for the mask, so padded pixels are ignored by the loss
    (apply before `Normalize` for a black border). Output: image (3, h, w), saliency (h, w),
    mask (h, w).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: tuple[float, float] = (0.7, 1.3),
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
        antialias: bool = True,
    ) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range!r}")
        self.crop_size = _pair(crop_size)
        self.scale_range = (float(lo), float(hi))
        self.ignore_index = ignore_index
        self.generator = generator
        self.antialias = antialias

    def __call__(self, sample: Sample) -> Sample:
        _, H, W = sample["image"].shape
        ch, cw = self.crop_size
        s = _uniform(*self.scale_range, self.generator)
        hw = (max(1, round(s * H)), max(1, round(s * W)))
        out = _resize_sample(sample, hw, self.antialias)

        # Pad bottom/right up to the crop size: F.pad takes (left, right, top, bottom).
        ph, pw = max(ch - hw[0], 0), max(cw - hw[1], 0)
        if ph or pw:
            pad = (0, pw, 0, ph)
            out["image"] = F.pad(out["image"], pad, value=0.0)  # (3, H', W')
            if "saliency" in out:
                out["saliency"] = F.pad(out["saliency"], pad, value=0)  # (H', W')
            if "mask" in out:
                out["mask"] = F.pad(out["mask"], pad, value=self.ignore_index)  # (H', W')

        Hp, Wp = out["image"].shape[-2:]
        y0 = _randint(Hp - ch + 1, self.generator)
        x0 = _randint(Wp - cw + 1, self.generator)
        for key in ("image", "saliency", "mask"):
            if key in out:
                out[key] = out[key][..., y0 : y0 + ch, x0 : x0 + cw]
        return out

    def __repr__(self) -> str:
        return f"RandomScaleCrop({self.crop_size}, scale_range={self.scale_range})"


class ColorJitter:
    """Randomly change brightness, contrast and saturation of the image only.

    Each factor f ~ U(max(0, 1 - x), 1 + x) for x = brightness, contrast, saturation
    (0 = off), applied in that order to image (3, H, W) float in 0..1; result clamped to 0..1.
    Saliency and mask are left alone.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, v in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.generator = generator

    def _factor(self, x: float) -> float:
        return _uniform(max(0.0, 1.0 - x), 1.0 + x, self.generator)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        img = sample["image"]  # (3, H, W)
        # ITU-R 601 luma, as in PIL / torchvision: (1, H, W)
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype).view(3, 1, 1)
        if self.brightness > 0:
            img = img * self._factor(self.brightness)
        if self.contrast > 0:
            f = self._factor(self.contrast)
            mean = (img * weights).sum(0).mean()  # scalar mean gray level
            img = f * img + (1 - f) * mean
        if self.saturation > 0:
            f = self._factor(self.saturation)
            gray = (img * weights).sum(0, keepdim=True)  # (1, H, W)
            img = f * img + (1 - f) * gray
        out["image"] = img.clamp(0.0, 1.0)
        return out

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class Normalize:
    """Standardise the image per channel: (image - mean) / std; image (3, H, W) only."""

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each, std > 0; got {mean!r}, {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        img = sample["image"]
        mean = torch.tensor(self.mean, dtype=img.dtype).view(3, 1, 1)  # (3, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype).view(3, 1, 1)  # (3, 1, 1)
        out["image"] = (img - mean) / std
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"
