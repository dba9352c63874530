"""Class activation maps, online attention accumulation (OAA) and the integral attention loss.

Paper §3.1 and docs/method.md §2 (OAA itself is Jiang et al., "Integral Object Mining via Online
Attention Accumulation", ICCV 2019). Pure tensor code: no file I/O, everything stays on the
device of the tensors given.

- :func:`normalize_cam`: clamp at 0, divide by the per-map max (+1e-8) -> [0, 1].
- :func:`cam_to_uint8`: the 8-bit export of CAMs and OA-CAMs (clamp, max-normalise, quantise,
  resize), in the reference's order.
- :class:`OAAccumulator`: the accumulated attention maps of every (image, class), updated during
  classifier training by max-fusion with the 0.1 probability gate and the last-epoch write.
- :func:`iam_loss`: the integral attention model's loss on soft pixel targets t in [0, 1].
- :func:`object_cell_maps`: reference maps at feature resolution from the ground truth (the cells
  that touch an object of the class), exported like a CAM (notebook 02's resolution yardstick).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize_cam", "oaa_attention", "cam_to_uint8", "OAAccumulator", "iam_loss",
           "object_cell_maps", "PROB_GATE"]

# §2: a class whose sigmoid probability is below this does not update its accumulated map.
PROB_GATE = 0.1


def normalize_cam(cam: Tensor) -> Tensor:
    """Clamp negatives to 0 and divide each map by its max + 1e-8 (§2).

    cam: (..., h, w) float. Returns the same shape, float, in [0, 1]; an all-zero map stays 0.
    """
    cam = cam.clamp(min=0)
    # §2: a / (max(a) + 1e-8), per map.
    return cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-8)


def oaa_attention(cams: Tensor, quantize: bool = True) -> Tensor:
    """The map OAA fuses (§2): clamp, divide by the max + 1e-8, scale to 0..255.

    cams: (..., h, w) float. Returns the same shape: uint8 rounded half-to-even as the
    reference's PNG round trip (``cv2.imwrite``), or float32 without `quantize`.
    """
    att = normalize_cam(cams.float()) * 255
    return att.round().clamp(0, 255).to(torch.uint8) if quantize else att


def cam_to_uint8(cam: Tensor, size: tuple[int, int] | None = None, mode: str = "bicubic") -> Tensor:
    """Export maps as 8-bit gray maps of the image size, in the reference's order (§2).

    cam: (..., h, w) float, raw class maps; size: (H, W) of the image, or None to keep (h, w);
    mode: "bicubic" (the reference), "bilinear" or "nearest". Returns (..., H, W) uint8 0..255.

    Order, as the reference's ``test.py`` / ``test_iam.py``: (1) clamp at 0, (2) divide by the
    map's max + 1e-8, (3) multiply by 255 and *truncate* to uint8 (``np.array(a * 255,
    dtype=np.uint8)``), (4) resize the 8-bit map (``cv2.resize(..., INTER_CUBIC)``), rounding to
    the nearest integer and saturating to 0..255. Step 4 uses torch's bicubic kernel (a = −0.75,
    half-pixel centres, replicated border — the same as OpenCV's) in float; OpenCV's 11-bit
    fixed-point arithmetic can differ by one gray level on some pixels.
    """
    if mode not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"mode must be 'bicubic', 'bilinear' or 'nearest', got {mode!r}")
    if not torch.isfinite(cam).all():
        raise ValueError("the class maps contain NaN or infinite values: the network that made "
                         "them diverged; lower its learning rate (--set cls_lr=...) and retrain")
    # Steps 1-3: clamp, max-normalise, quantise by truncation.
    q = (normalize_cam(cam.float()) * 255).to(torch.uint8)  # (..., h, w)
    if size is None or tuple(size) == tuple(q.shape[-2:]):
        return q
    *lead, h, w = q.shape
    flat = q.reshape(1, -1, h, w).float()  # (1, L, h, w)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(flat, size=tuple(size), mode=mode, **kwargs)  # (1, L, H, W)
    # Step 4: round and saturate, like OpenCV's saturate_cast<uchar>.
    up = up.round().clamp(0, 255).to(torch.uint8)
    return up.reshape(*lead, *size)  # (..., H, W)


class OAAccumulator:
    """Accumulated attention maps of every (image, class), kept on a device (docs/method.md §2).

    ``accumulated``: (num_images, C, h, w) uint8 0..255 (default, like the reference's PNGs) or
    float32; ``exists``: (num_images, C) bool, whether a map has been written. Epochs are 0-based:
    epoch 0 (the first) never updates, epoch ``num_epochs - 1`` is the last. Memory: PASCAL VOC
    train_aug (10582 images, C = 20, 32 x 32) takes about 217 MB as uint8.
    """

    def __init__(
        self,
        num_images: int,
        num_classes: int,
        size: tuple[int, int],
        device: torch.device | str | None = None,
        quantize: bool = True,
    ) -> None:
        """num_images: images indexed 0..num_images-1; num_classes: C; size: (h, w) of the CAMs
        (feature resolution); device: where the maps live; quantize: store uint8 rounded to the
        nearest integer as the reference's PNG round trip does (else float32, unrounded).
        """
        h, w = size
        dtype = torch.uint8 if quantize else torch.float32
        self.quantize = quantize
        self.accumulated = torch.zeros(num_images, num_classes, h, w, dtype=dtype, device=device)
        self.exists = torch.zeros(num_images, num_classes, dtype=torch.bool, device=device)
        # Counters over all updates: maps written for the first time, max-fused, gated out.
        self.counts = torch.zeros(3, dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        """Where the maps live."""
        return self.accumulated.device

    @torch.no_grad()
    def update(
        self,
        indices: Tensor,
        cams: Tensor,
        probs: Tensor,
        labels: Tensor,
        epoch: int,
        num_epochs: int,
    ) -> None:
        """Fuse one batch of CAMs into the accumulated maps, exactly as §2 / the reference.

        indices: (B,) long, the images' dataset indices (distinct); cams: (B, C, h, w) float, the
        classifier's raw CAMs of this training step (the reference uses those of the training
        forward pass itself: train mode, weights before the optimizer step); probs: (B, C) float,
        sigmoid of the logits; labels: (B, C), image-level labels (> 0 = listed); epoch: 0-based
        current epoch; num_epochs: total number of epochs.

        For each listed (image, class), from epoch 1 on: a = clamp(cam, 0) / (max + 1e-8) · 255;
        if the map does not exist yet and this is the last epoch, write a (whatever the
        probability); else skip if prob < 0.1; else write a if the map does not exist, or store
        max(stored, a). With ``quantize`` the stored values are uint8 rounded half-to-even: the
        reference writes the float map with ``cv2.imwrite`` (saturate_cast, round to nearest) and
        reads it back as uint8, and round(max(s, a)) = max(s, round(a)) for an integer s.
        """
        if epoch < 1:  # §2: from the second epoch on.
            return
        B, C, h, w = cams.shape
        if tuple(self.accumulated.shape[1:]) != (C, h, w):
            raise ValueError(
                f"cams of shape (B, C, h, w) = {tuple(cams.shape)} do not match the accumulator's "
                f"(C, h, w) = {tuple(self.accumulated.shape[1:])}; create it with size=({h}, {w})"
            )
        if indices.numel() != B or probs.shape != (B, C) or labels.shape != (B, C):
            raise ValueError(
                f"indices {tuple(indices.shape)}, probs {tuple(probs.shape)} and labels "
                f"{tuple(labels.shape)} must be ({B},) and ({B}, {C}) for cams {tuple(cams.shape)}"
            )
        idx = indices.to(self.device, torch.long)
        if idx.unique().numel() != B:
            raise ValueError("indices must be distinct within one update")
        cams = cams.detach().to(self.device, torch.float32)
        # §2: clamp negatives, divide by the max + 1e-8, scale to 0..255 (float32, as the ref.).
        att = oaa_attention(cams, quantize=self.quantize)  # (B, C, h, w)
        listed = labels.to(self.device) > 0  # (B, C)
        passed = probs.detach().to(self.device) >= PROB_GATE  # (B, C)
        exists = self.exists[idx]  # (B, C)
        last = epoch == num_epochs - 1
        # §2: a new map is written if the gate passes, or in the last epoch whatever the gate.
        write = listed & ~exists & (passed | last)  # (B, C)
        # §2: an existing map is max-fused with the new one if the gate passes.
        fuse = listed & exists & passed  # (B, C)
        stored = self.accumulated[idx]  # (B, C, h, w)
        new = torch.where(write[..., None, None], att, stored)
        new = torch.where(fuse[..., None, None], torch.maximum(stored, att), new)
        self.accumulated[idx] = new
        self.exists[idx] = exists | write
        self.counts += torch.stack([write.sum(), fuse.sum(), (listed & ~write & ~fuse).sum()])

    def maps(self, indices: Tensor | None = None) -> Tensor:
        """The accumulated maps: (n, C, h, w), uint8 0..255 (or float32 0..255 without quantize).

        indices: (n,) long, or None for all images. Maps that do not exist are all 0.
        """
        return (
            self.accumulated.clone()
            if indices is None
            else self.accumulated[indices.to(self.device)]
        )

    def targets(self, indices: Tensor | None = None) -> Tensor:
        """Soft targets for the integral attention model: maps / 255, (n, C, h, w) float32 in
        [0, 1]; 0 for classes without a map (as the reference's IAM loader)."""
        return self.maps(indices).float() / 255.0

    def stats(self) -> dict[str, int]:
        """Counts over all updates so far: ``written`` (first writes), ``fused`` (max-fusions),
        ``skipped`` (listed maps left unchanged by the probability gate)."""
        written, fused, skipped = (int(v) for v in self.counts.tolist())
        return {"written": written, "fused": fused, "skipped": skipped}

    def state_dict(self) -> dict[str, Tensor | bool]:
        """A checkpointable copy (tensors on the CPU)."""
        return {
            "maps": self.accumulated.cpu().clone(),
            "exists": self.exists.cpu().clone(),
            "counts": self.counts.cpu().clone(),
            "quantize": self.quantize,
        }

    def load_state_dict(self, state: dict[str, Tensor | bool]) -> None:
        """Restore from :meth:`state_dict`; shapes and storage type must match this accumulator."""
        maps, exists = state.get("maps"), state.get("exists")
        if not isinstance(maps, Tensor) or not isinstance(exists, Tensor):
            raise ValueError(
                "state must hold 'maps' and 'exists' tensors, from OAAccumulator.state_dict()"
            )
        if maps.shape != self.accumulated.shape or maps.dtype != self.accumulated.dtype:
            raise ValueError(
                f"checkpoint maps {tuple(maps.shape)} {maps.dtype} do not match this "
                f"accumulator's {tuple(self.accumulated.shape)} {self.accumulated.dtype}; "
                "create it with the same num_images, num_classes, size and quantize"
            )
        if exists.shape != self.exists.shape:
            raise ValueError(
                f"checkpoint exists {tuple(exists.shape)} does not match {tuple(self.exists.shape)}"
            )
        self.accumulated.copy_(maps)
        self.exists.copy_(exists)
        counts = state.get("counts")
        if isinstance(counts, Tensor):
            self.counts.copy_(counts)


def iam_loss(logits_map: Tensor, target: Tensor) -> Tensor:
    """The integral attention model's loss on soft pixel targets (§2), computed stably.

    logits_map: (B, C, h, w) float, the IAM's raw maps x; target: (B, C, h, w) float, t in [0, 1].
    Returns a scalar:

        L = mean over pixels with t > 0 of [−t · log σ(x)] + mean over pixels with t = 0 of
            [softplus(x)]   (softplus(x) = −log(1 − σ(x))),

    means taken over the whole batch (all images and classes together), as the reference's
    ``ExLoss``. When one of the two sets is empty its term is 0 (the reference skips it);
    pixels with t < 0 count in neither. The reference computes the negative term as
    −log(exp(−max(x, 0)) + 1e-8) + log(1 + exp(−|x|)), which saturates near 18.4 for x > 18;
    here it is the exact softplus.
    """
    if logits_map.shape != target.shape:
        raise ValueError(
            f"logits_map {tuple(logits_map.shape)} and target {tuple(target.shape)} must match"
        )
    target = target.to(logits_map.dtype)
    pos = (target > 0).to(logits_map.dtype)
    neg = (target == 0).to(logits_map.dtype)
    # §2: −t · log σ(x) on t > 0, with log σ computed stably (logsigmoid).
    pos_sum = (-target * F.logsigmoid(logits_map) * pos).sum()
    # §2: softplus(x) = −log(1 − σ(x)) on t = 0.
    neg_sum = (F.softplus(logits_map) * neg).sum()
    # Means over each set; an empty set gives 0 / 1 = 0.
    return pos_sum / pos.sum().clamp(min=1) + neg_sum / neg.sum().clamp(min=1)


def object_cell_maps(mask: np.ndarray | Tensor, classes: Sequence[int], feature_size: tuple[int, int],
                     dilate: int = 0, graded: bool = False, mode: str = "bicubic") -> dict[int, np.ndarray]:
    """Reference class maps at feature resolution built from the ground truth, exported like CAMs.

    mask: (H, W) GT label map (0 background, c + 1 class c, 255 void), numpy or torch;
    classes: the 0-based class ids to map (e.g. the image's listed classes); feature_size: (h, w)
    of the network's CAMs for this image (`train.cam_size`; e.g. (24, 24) for 96 px at stride 4);
    dilate: widen each map by this many feature cells (a map that spills over the object's
    border); graded: each cell holds the share of its pixels on the object instead of 1;
    mode: the resize of `cam_to_uint8` ("bicubic" like the CAM and OA-CAM export, or "nearest" to
    keep the cells' borders).

    The cells are those of adaptive pooling of the (H, W) mask to (h, w) (side H / h, also when
    the image was resized for the network). Flat maps (the default) are 1 on every cell that holds
    at least one pixel of the class: the most precise map of that resolution that is saturated
    (the same value) over whole objects, which is what a loss that lights up a whole support
    tends to; `dilate` max-pools them over (2 * dilate + 1)^2 cells. Graded maps put the 0.3
    contour of the bicubic resize near the object's border and do better. Every map is then
    clamped, max-normalised, quantised and resized back to (H, W) by `cam_to_uint8` (notebook 02).
    Returns {class id: (H, W) uint8}; a class absent from `mask` gives an all-0 map.
    """
    h, w = (int(v) for v in feature_size)
    if h < 1 or w < 1 or dilate < 0:
        raise ValueError(f"feature_size must be >= 1 and dilate >= 0, got {feature_size}, {dilate}")
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(m.shape)}")
    classes = [int(c) for c in classes]
    if not classes:
        return {}
    ids = torch.tensor(classes, dtype=torch.long)
    onehot = (m.long()[None] == ids[:, None, None] + 1).float()  # (k, H, W)
    pool = F.adaptive_avg_pool2d if graded else F.adaptive_max_pool2d
    cells = pool(onehot[None], (h, w))  # (1, k, h, w): share of the cell on the object, or any
    if dilate:
        cells = F.max_pool2d(cells, 2 * dilate + 1, 1, dilate)  # (1, k, h, w)
    up = cam_to_uint8(cells[0], size=tuple(m.shape), mode=mode)  # (k, H, W)
    return {c: up[j].numpy() for j, c in enumerate(classes)}


#: The reference maps of `reference_maps`: key -> (legend label, `object_cell_maps` arguments).
REFERENCE_MAPS: dict[str, tuple[str, dict[str, int | bool]]] = {
    "graded": ("graded: share of each cell", {"graded": True}),
    "cells+0": ("flat: objects' cells", {}),
    "cells+1": ("flat: one cell wider", {"dilate": 1}),
}


def reference_maps(masks: Sequence[np.ndarray | Tensor], label_ids: Sequence[Sequence[int]],
                   feature_size: tuple[int, int]) -> dict[str, list[dict[int, np.ndarray]]]:
    """The reference maps of `REFERENCE_MAPS` for every image, built from the ground truth.

    masks: (H, W) GT label maps; label_ids: each image's listed class ids; feature_size: (h, w)
    of the networks' CAMs (`train.cam_size`). Returns {key: per image {class id: (H, W) uint8}},
    exported like a CAM (`object_cell_maps`): what maps that know the objects, at the networks'
    resolution, reach under the same measure (notebook 02b's yardstick).
    """
    return {key: [object_cell_maps(m, ids, feature_size, **kw) for m, ids in zip(masks, label_ids, strict=True)]
            for key, (_, kw) in REFERENCE_MAPS.items()}


def snapshot_epochs(first: int, last: int, k: int = 4) -> list[int]:
    """k epochs evenly spread from `first` to `last`, both included, without repeats (fewer when
    there are fewer epochs): e.g. the columns of a figure of OAA's accumulated maps. Epochs are
    counted as the training log counts them (1-based); first <= last."""
    if first > last or k < 1:
        raise ValueError(f"need first <= last and k >= 1, got first={first}, last={last}, k={k}")
    return sorted({int(round(float(e))) for e in np.linspace(first, last, k)})


__all__ += ["REFERENCE_MAPS", "reference_maps", "snapshot_epochs"]
