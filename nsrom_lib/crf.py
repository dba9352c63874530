"""Dense CRF post-processing of segmentation predictions (docs/method.md §5, the reference's).

The reference (DeepLab-v2 in PyTorch) refines every prediction with a fully connected CRF
(Krähenbühl and Koltun, 2011): a Potts model whose pairwise term has a Gaussian smoothness
kernel (pixels close together) and a bilateral appearance kernel (pixels close together *and*
of similar colour), solved by 10 mean-field iterations starting from the network's softmax.
Its settings on PASCAL VOC: 10 iterations, smoothness weight 3 and std 1 px, appearance weight
4, spatial std 67 px and colour std 3.

Here the inference runs in `pydensecrf2` (the permutohedral-lattice implementation; an exact
torch version would need an N x N kernel per image), imported only when a CRF is asked for.

**Size rule.** 67 px is a distance on VOC images, whose long side is at most 500 px; a run on
S-px images scales it to 67 · S / 500 (12.9 px at 96 px), as the NSRM kernel is scaled
(`pipeline.nsrm_kernel_for`). The smoothness std stays 1 px (it is a pixel neighbourhood) and
the colour std stays 3 (colours are 0..255 at every size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["CRFParams", "REFERENCE_CRF", "crf_params_for", "CRFUnavailable", "dense_crf",
           "crf_labels", "require_densecrf"]

#: Long side of the PASCAL VOC images the reference's settings were chosen for.
_VOC_SIDE = 500


class CRFUnavailable(ImportError):
    """The CRF package is not installed: the message says how to install it or turn it off."""


@dataclass(frozen=True)
class CRFParams:
    """Settings of the dense CRF (names as in the reference's configuration)."""

    iterations: int = 10
    pos_w: float = 3.0  # smoothness kernel weight
    pos_xy_std: float = 1.0  # its spatial std (px)
    bi_w: float = 4.0  # appearance kernel weight
    bi_xy_std: float = 67.0  # its spatial std (px)
    bi_rgb_std: float = 3.0  # its colour std (0..255 units)

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"CRF iterations={self.iterations} must be >= 0")
        for k in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            if not getattr(self, k) > 0:
                raise ValueError(f"CRF {k}={getattr(self, k)} must be > 0")


#: The reference's settings on PASCAL VOC.
REFERENCE_CRF = CRFParams()


def crf_params_for(image_side: int) -> CRFParams:
    """The reference's settings with the appearance kernel's spatial std scaled to S-px images:
    67 · S / 500 (the module's size rule); S >= 500 keeps 67, the `voc` profile's 321 px
    gives 43."""
    if image_side < 1:
        raise ValueError(f"image_side={image_side} must be >= 1")
    scale = min(1.0, image_side / _VOC_SIDE)
    return dataclasses.replace(REFERENCE_CRF, bi_xy_std=REFERENCE_CRF.bi_xy_std * scale)


def require_densecrf():
    """The `pydensecrf.densecrf` module, or CRFUnavailable saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise CRFUnavailable(
            "the dense CRF needs the package pydensecrf2: `pip install pydensecrf2==1.1` (it builds "
            "from source in about 30 s and needs a C++ compiler; `make setup` installs it), or run "
            "without the CRF (--set seg_crf=false)"
        ) from e
    return dcrf


_densecrf = require_densecrf  # the former private name


def dense_crf(image: np.ndarray, prob: np.ndarray, params: CRFParams = REFERENCE_CRF) -> np.ndarray:
    """Mean-field inference of the dense CRF on one image.

    image: (H, W, 3) uint8 RGB; prob: (C, H, W) float class probabilities (each pixel's sum 1,
    e.g. a softmax). Returns the posterior marginals, (C, H, W) float32; with 0 iterations the
    normalised input itself.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if prob.ndim != 3 or prob.shape[1:] != image.shape[:2]:
        raise ValueError(f"prob must be (C, H, W) with (H, W) = {image.shape[:2]}, got {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("the class probabilities contain NaN or infinite values")
    dcrf = require_densecrf()
    C, H, W = prob.shape
    d = dcrf.DenseCRF2D(W, H, C)
    # unary energy: -log p, clipped so that a zero probability is a large but finite cost
    unary = -np.log(np.clip(prob.astype(np.float32), 1e-8, 1.0)).reshape(C, H * W)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    d.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                           rgbim=np.ascontiguousarray(image), compat=params.bi_w)
    q = np.asarray(d.inference(params.iterations), dtype=np.float32)  # (C, H * W)
    return q.reshape(C, H, W)


def crf_labels(images: Tensor, probs: Tensor, params: CRFParams = REFERENCE_CRF) -> Tensor:
    """CRF-refined labels of a batch: the argmax of `dense_crf` per image (on the CPU).

    images: (B, 3, H, W) uint8; probs: (B, C, H, W) float probabilities. Returns (B, H, W) uint8.
    """
    if images.shape[0] != probs.shape[0] or images.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and probs {tuple(probs.shape)} differ in "
                         "batch size or image size")
    imgs = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()  # (B, H, W, 3)
    p = probs.detach().float().cpu().numpy()  # (B, C, H, W)
    out = [dense_crf(imgs[i], p[i], params).argmax(0).astype(np.uint8) for i in range(len(imgs))]
    return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, *images.shape[-2:], dtype=torch.uint8)
