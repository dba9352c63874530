"""Training of the classifier (with OAA) and of the integral attention model; map export.

Paper §3.1 and docs/method.md §1–§2. Library code: plain arguments and tensors in, tensors
and dicts out; the run folder, the configuration and the stage records live in
`nsrom_lib.pipeline`.

- :func:`load_split`: a split whose images are read on demand (`data.split.SplitImages`); every
  loop here takes such a Dataset (read batch by batch through a torch DataLoader, `num_workers`
  processes ahead) or the same images as one uint8 tensor in memory (`load_split_tensors`), and
  computes the same batches from either.
- :func:`train_classifier`: multi-label soft margin loss (Eq. 4); online attention
  accumulation (OAA) from the CAMs of the *training* forward pass (train mode, weights before the
  optimizer step, as the reference does), with per-epoch snapshots of a few images'
  accumulated maps for figures.
- :func:`train_iam`: the integral attention model regressing the accumulated maps with
  :func:`nsrom_lib.cam.iam_loss`.
- :func:`predict_cams`, :func:`maps_to_uint8`, :func:`resize_uint8`, :func:`export_maps`:
  eval-mode CAMs and their 8-bit, image-size export (``{name}_{cls}.png``); `cams_of_batch`
  and `segment_batch` predict one batch, for stages that measure and write batch by batch.

Checkpoints: after every epoch the loop writes model, optimizer, accumulator, snapshots,
history, RNG states and the epoch count atomically; called again with the same checkpoint
path it resumes after the last completed epoch and ends with the same weights and maps as
an uninterrupted run (CPU; a GPU may differ in the last bits).

Augmentation: colour jitter only. No crop and no flip, so the accumulated maps stay aligned
with the image over epochs (the reference does the same).

Optimiser: the reference trains an ImageNet-initialised VGG-16 with SGD (lr 1e-3, 10x on the
new layers, x0.1 at epochs 5 and 10 of 15). A small network from scratch on SynthVOC
converges faster and more reliably with Adam (lr 1e-3, cosine decay per epoch), which is the
default of the CPU profiles; ``optimizer="sgd"`` gives the reference's recipe (Nesterov
momentum 0.9, the classifier's 1x / 2x / 10x / 20x parameter groups, step decay at 1/3 and 2/3
of the epochs) and is the `voc` profile's choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from nsrom_lib import distributed as dist
from nsrom_lib.cam import OAAccumulator, cam_to_uint8, iam_loss, oaa_attention
from nsrom_lib.crf import CRFParams, crf_labels
from nsrom_lib.data.io import save_gray_png
from nsrom_lib.loop import (  # re-exported: the public names of the loop
    autocast,
    cam_size,
    colour_jitter,
    configure_threads,
    cpu_has_bf16,
    fit,
    image_batches,
    item_count,
    item_shape,
    learning_rate,
    load_split,
    load_split_tensors,
    loader_workers,
    make_optimizer,
    normalize_images,
    pinned,
    poly_lr,
    seed_everything,
)
from nsrom_lib.params import RECIPE
from nsrom_lib.progress import progress_bar as tqdm

log = logging.getLogger(__name__)

__all__ = [
    "configure_threads",
    "cpu_has_bf16",
    "seed_everything",
    "load_split",
    "load_split_tensors",
    "loader_workers",
    "image_batches",
    "normalize_images",
    "cam_size",
    "learning_rate",
    "make_optimizer",
    "train_classifier",
    "train_iam",
    "poly_lr",
    "augment_segmentation",
    "segmentation_loss",
    "train_segmentation",
    "predict_segmentation",
    "segment_batch",
    "predict_cams",
    "cams_of_batch",
    "resize_uint8",
    "maps_to_uint8",
    "export_maps",
    "glore_parts",
]


def train_classifier(
    model: nn.Module,
    images: Tensor | Dataset,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int = RECIPE.batch_size,
    lr: float = RECIPE.lr,
    optimizer: str = RECIPE.optimizer,
    weight_decay: float = RECIPE.weight_decay,
    schedule: str = RECIPE.schedule,
    jitter: float = RECIPE.jitter,
    seed: int = 0,
    device: torch.device | str = "cpu",
    accumulate: bool = True,
    accumulate_from: int = 1,
    snapshot_indices: Sequence[int] = (),
    probe_indices: Sequence[int] = (),
    checkpoint: str | os.PathLike | None = None,
    tag: str = "",
    max_epochs: int | None = None,
    progress: bool = True,
    cpu_bf16: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train the classifier on image-level labels, accumulating attention online (OAA).

    model: a `Classifier` (returns ``(logits, cam)`` with ``return_cam=True``); images: (N, 3, H, W)
    uint8, or a Dataset of (3, H, W) uint8 items (`load_split`) read by `num_workers` DataLoader
    processes; labels: (N, C) float multi-hot; epochs: total epochs; accumulate: run OAA (§2);
    accumulate_from: first 0-based epoch whose CAMs are fused (the reference: 1, the second;
    later is a diagnostic for networks trained from scratch, not the paper's method);
    snapshot_indices: images whose accumulated maps are copied after every epoch (figures);
    probe_indices: images whose own fused maps of every epoch are kept (`_EpochProbe`);
    checkpoint: written every epoch, resumed from with the same `tag`; max_epochs: stop early;
    cpu_bf16: bfloat16 autocast on the CPU (`loop.fit`; the loss and OAA read float32). Returns model, accumulator (`OAAccumulator` or None), snapshots ``{"indices": (k,), "maps":
    (E, k, C, h, w) uint8}`` (E = epochs done), probe (see `_EpochProbe.result`), history
    (per-epoch loss, lr, seconds, img/s), epochs_done and completed.
    """
    device, (N, C), labels = torch.device(device), labels.shape, labels.float()
    model.to(device)
    h, w = cam_size(model, item_shape(images)[-2:])
    acc = OAAccumulator(N, C, (h, w), device=device) if accumulate else None
    snap_idx = torch.as_tensor(list(snapshot_indices), dtype=torch.long)
    snapshots: list[Tensor] = []
    probe = _EpochProbe(probe_indices, N, (C, h, w))
    merge = _ProcessMerge(acc, probe, N)

    def step(x: Tensor, idx: Tensor, epoch: int, net: nn.Module) -> Tensor:
        y = labels[idx].to(device)  # (B, C)
        logits, cam = net(x, return_cam=True)  # (B, C), (B, C, h, w)
        logits, cam = logits.float(), cam.float()  # bf16 under cpu_bf16
        # Eq. 4: multi-label soft margin loss (BCE with logits, averaged over classes).
        loss = F.multilabel_soft_margin_loss(logits, y)
        if acc is not None and epoch >= accumulate_from:
            # §2: fuse this forward pass's CAMs (train mode, before the optimizer step).
            acc.update(idx, cam, torch.sigmoid(logits), y, epoch, epochs)
            probe.see(idx, cam, epoch)
        merge.saw(idx)
        return loss

    def on_epoch_end(epoch: int) -> None:
        merge.epoch_end(epoch, epoch >= accumulate_from)  # several processes: every map
        if acc is not None and len(snap_idx):
            snapshots.append(acc.maps(snap_idx).cpu())  # (k, C, h, w)
        if acc is not None:
            probe.epoch_end(epoch, acc)

    def get_extra() -> dict[str, Any]:
        return dict(acc=acc.state_dict() if acc is not None else None, snapshots=list(snapshots),
                    probe=probe.state_dict())

    def set_extra(extra: dict[str, Any]) -> None:
        if acc is not None and extra.get("acc") is not None:
            acc.load_state_dict(extra["acc"])
        snapshots[:] = list(extra.get("snapshots", []))
        probe.load_state_dict(extra.get("probe", {}))
        merge.resumed()

    out = fit(model, images, step=step, epochs=epochs, batch_size=batch_size, lr=lr,
               optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, jitter=jitter,
               seed=seed, device=device, checkpoint=checkpoint, tag=f"classifier:{tag}",
               extra_state=(get_extra, set_extra), on_epoch_end=on_epoch_end,
               max_epochs=max_epochs, progress=progress, desc="classifier", cpu_bf16=cpu_bf16,
               num_workers=num_workers)
    maps = torch.stack(snapshots) if snapshots else torch.zeros(0, len(snap_idx), C, h, w, dtype=torch.uint8)
    out.update(model=model.eval(), accumulator=acc, snapshots={"indices": snap_idx, "maps": maps},
               probe=probe.result())
    return out


class _ProcessMerge:
    """With several training processes: the accumulated maps of all of them, after every epoch.

    Each process sees its share of every batch, so in one epoch it fuses the maps of the images
    it saw and no others; every image is seen by exactly one process. At the epoch's end each
    process keeps its own images' rows of the maps (zeros elsewhere) and the rows are summed
    over the processes: every process then holds the maps a one-process run holds, exactly
    (each row comes from one process; the others add zeros). The same for the `exists` flags,
    the probe images' maps of the epoch and the update counters. One process: nothing to do.
    """

    def __init__(self, acc: OAAccumulator | None, probe: _EpochProbe, n_images: int) -> None:
        self.acc, self.probe = acc, probe
        self.mine = torch.zeros(n_images, dtype=torch.bool)  # images this process saw this epoch
        self.counts = acc.counts.clone() if acc is not None else None  # after the last merge

    def saw(self, idx: Tensor) -> None:
        if dist.active():
            self.mine[idx.cpu()] = True

    def resumed(self) -> None:
        """The accumulator was loaded from a checkpoint: its counters are every process's."""
        if self.acc is not None:
            self.counts = self.acc.counts.clone()

    def epoch_end(self, epoch: int, fused: bool) -> None:
        if not dist.active() or self.acc is None:
            return
        acc, mine = self.acc, self.mine.to(self.acc.device)
        acc.accumulated[~mine] = 0
        acc.exists[~mine] = False
        dist.sum_(acc.accumulated)
        dist.sum_(acc.exists)
        new = dist.sum_(acc.counts - self.counts)  # the updates of this epoch, every process's
        acc.counts.copy_(self.counts + new)
        self.counts = acc.counts.clone()
        if fused and self.probe.indices.numel():
            shape = (self.probe.indices.numel(), *self.probe.map_shape)
            dist.sum_(self.probe.now.setdefault(epoch, torch.zeros(shape, dtype=torch.uint8)))
        self.mine.zero_()


class _EpochProbe:
    """The maps of a few probe images in every fused epoch, for the OAA analysis.

    For each fused epoch: the image's own map of that epoch (the max-normalised training-pass
    CAM that OAA fuses, kept whatever the gate said) and the accumulated map after the epoch.
    """

    def __init__(self, indices: Sequence[int], n_images: int, map_shape: tuple[int, int, int]):
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)  # (p,)
        if self.indices.unique().numel() != self.indices.numel():
            raise ValueError("probe_indices must be distinct")
        self.row = torch.full((n_images,), -1, dtype=torch.long)  # dataset index -> probe row
        self.row[self.indices] = torch.arange(self.indices.numel())
        self.map_shape = map_shape  # (C, h, w)
        self.kept: dict[str, list] = dict(epochs=[], maps=[], accumulated=[])
        self.now: dict[int, Tensor] = {}  # epoch -> (p, C, h, w) uint8, filled during the epoch

    def see(self, idx: Tensor, cam: Tensor, epoch: int) -> None:
        """Keep the maps OAA fuses in this batch for the probe images among idx."""
        if not self.indices.numel():
            return
        pos = self.row[idx]  # (B,)
        hit = pos >= 0
        if hit.any():
            own = self.now.setdefault(
                epoch, torch.zeros(self.indices.numel(), *self.map_shape, dtype=torch.uint8))
            own[pos[hit]] = oaa_attention(cam.detach()[hit.to(cam.device)]).cpu()

    def epoch_end(self, epoch: int, acc: OAAccumulator) -> None:
        if epoch in self.now:
            self.kept["epochs"].append(epoch)
            self.kept["maps"].append(self.now.pop(epoch))
            self.kept["accumulated"].append(acc.maps(self.indices).cpu())  # (p, C, h, w)

    def state_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.kept.items()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        for k, v in state.items():
            self.kept[k] = list(v)

    def result(self) -> dict[str, Tensor]:
        """indices (p,), epochs (F,) 0-based, maps and accumulated (F, p, C, h, w) uint8."""
        p = self.indices.numel()

        def stacked(key: str) -> Tensor:
            if self.kept[key]:
                return torch.stack(self.kept[key])
            return torch.zeros(0, p, *self.map_shape, dtype=torch.uint8)

        return dict(indices=self.indices, epochs=torch.as_tensor(self.kept["epochs"], dtype=torch.long),
                    maps=stacked("maps"), accumulated=stacked("accumulated"))


def train_iam(
    model: nn.Module,
    images: Tensor | Dataset,
    targets: Tensor,
    *,
    epochs: int,
    batch_size: int = RECIPE.batch_size,
    lr: float = RECIPE.lr,
    optimizer: str = RECIPE.optimizer,
    weight_decay: float = RECIPE.weight_decay,
    schedule: str = RECIPE.schedule,
    jitter: float = RECIPE.jitter,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    tag: str = "",
    max_epochs: int | None = None,
    progress: bool = True,
    cpu_bf16: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train the integral attention model to regress the accumulated maps (§2).

    model: a `Classifier(iam=True)`; images: (N, 3, H, W) uint8 or a Dataset of them (as
    `train_classifier`); targets: (N, C, h, w) uint8 0..255 (the accumulated maps; 0 for classes
    without a map) or float in [0, 1], at the model's CAM size. Returns model, history,
    epochs_done, completed (checkpoints, cpu_bf16 and num_workers as `train_classifier`).
    """
    device = torch.device(device)
    model.to(device)
    size = item_shape(images)[-2:]
    h, w = cam_size(model, size)
    if tuple(targets.shape[-2:]) != (h, w):
        raise ValueError(
            f"targets are {tuple(targets.shape[-2:])} but the model's maps are {(h, w)} for "
            f"{size} images: build the IAM with the classifier's backbone"
        )

    def step(x: Tensor, idx: Tensor, epoch: int, net: nn.Module) -> Tensor:
        _, cam = net(x, return_cam=True)  # (B, C, h, w)
        t = targets[idx]  # (B, C, h, w), as float in [0, 1]:
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        # §2: −t log σ(x) on t > 0, softplus(x) on t = 0, each averaged over its pixels.
        return iam_loss(cam.float(), t.to(device))

    out = fit(model, images, step=step, epochs=epochs, batch_size=batch_size, lr=lr,
               optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, jitter=jitter,
               seed=seed, device=device, checkpoint=checkpoint, tag=f"iam:{tag}",
               extra_state=None, on_epoch_end=None, max_epochs=max_epochs, progress=progress,
               desc="iam", cpu_bf16=cpu_bf16, num_workers=num_workers)
    out.update(model=model.eval())
    return out


# ----------------------------------------------------------------------------- segmentation (§5, §7)


def augment_segmentation(
    images: Tensor, labels: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.75, 1.25),
    flip: bool = True, jitter: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """DeepLab-style augmentation of a batch, image and label together, vectorised over the batch.

    images: (B, 3, H, W) uint8; labels: (B, H, W) uint8 (0..C, 255 ignore). One random scale per
    batch in `scale` (bilinear for images, nearest for labels), a random H x W crop per image
    (padding with the mean colour / 255 where the scaled batch is smaller), a random horizontal
    flip per image, and colour jitter. Returns x (B, 3, H, W) float32 normalised and
    y (B, H, W) int64. All randomness comes from `generator`.
    """
    B, _, H, W = images.shape
    x = normalize_images(colour_jitter(images, jitter, generator))  # (B, 3, H, W)
    y = labels.unsqueeze(1).float()  # (B, 1, H, W)
    lo, hi = scale
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    h2, w2 = max(1, round(H * s)), max(1, round(W * s))
    if (h2, w2) != (H, W):
        x = F.interpolate(x, size=(h2, w2), mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=(h2, w2), mode="nearest")
    ph, pw = max(H - h2, 0), max(W - w2, 0)
    if ph or pw:  # normalised 0 = the mean colour; labels padded with ignore
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x, y = F.pad(x, pad, value=0.0), F.pad(y, pad, value=255.0)
    oy = torch.randint(0, x.shape[-2] - H + 1, (B,), generator=generator).tolist()
    ox = torch.randint(0, x.shape[-1] - W + 1, (B,), generator=generator).tolist()
    offsets = list(enumerate(zip(oy, ox, strict=True)))
    x = torch.stack([x[i, :, a : a + H, b : b + W] for i, (a, b) in offsets])  # (B, 3, H, W)
    y = torch.stack([y[i, 0, a : a + H, b : b + W] for i, (a, b) in offsets])  # (B, H, W)
    if flip:
        f = torch.rand(B, generator=generator) < 0.5  # (B,)
        x = torch.where(f.view(B, 1, 1, 1), x.flip(-1), x)
        y = torch.where(f.view(B, 1, 1), y.flip(-1), y)
    return x, y.long()


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels (255 = ignore), averaged over them.

    logits: (B, L, H, W); target: (B, H, W) int64. A batch without any labelled pixel gives 0
    (with a gradient), not NaN.
    """
    valid = (target != 255).sum().clamp(min=1)
    return F.cross_entropy(logits, target, ignore_index=255, reduction="sum") / valid


class _Pairs(Dataset):
    """Item i: (images[i], labels[i]): an image and its label map read together, from two
    Datasets or tensors of the same length."""

    def __init__(self, images: Tensor | Dataset, labels: Tensor | Dataset) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


def _described(items: Tensor | Dataset) -> tuple[int, ...]:
    """(N, *item shape) of tensors or of a Dataset, for error messages."""
    return (item_count(items), *item_shape(items))


def train_segmentation(
    model: nn.Module,
    images: Tensor | Dataset,
    labels: Tensor | Dataset,
    *,
    epochs: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 1e-4,
    schedule: str = "poly",
    scale: tuple[float, float] = (0.75, 1.25),
    flip: bool = True,
    jitter: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    tag: str = "",
    max_epochs: int | None = None,
    progress: bool = True,
    desc: str = "segmentation",
    cpu_bf16: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Train a segmentation network on (pseudo) labels: docs/method.md §5 and §7.

    model: e.g. `DeepLabV2`, (B, 3, H, W) -> (B, C + 1, H, W) logits; images: (N, 3, H, W) uint8;
    labels: (N, H, W) uint8 (0 background, c + 1 class c, 255 ignore); either may be a Dataset
    of such items instead (`load_split`, `data.split.LabelFiles`), read with `num_workers`
    DataLoader processes. Cross-entropy with ignore index 255 (`segmentation_loss`), poly decay
    per iteration, random scale / crop / flip (`augment_segmentation`). Checkpoints, resume and
    cpu_bf16 as `train_classifier`; on CUDA the forward pass is always in bf16.
    Returns model (eval mode), history, epochs_done, completed.
    """
    device = torch.device(device)
    if item_count(labels) != item_count(images) or item_shape(labels)[-2:] != item_shape(images)[-2:]:
        raise ValueError(f"labels {_described(labels)} do not match images {_described(images)}: "
                         "one (H, W) label per image")
    model.to(device)
    in_memory = isinstance(images, Tensor) and isinstance(labels, Tensor)
    data = (images, labels) if in_memory else _Pairs(images, labels)

    def make_batch(items: tuple[Tensor, Tensor], g: torch.Generator) -> tuple[Tensor, Tensor]:
        x, y = augment_segmentation(*items, g, scale, flip, jitter)
        return pinned(x, device).to(device, non_blocking=True), pinned(y, device).to(device, non_blocking=True)

    def step(batch: tuple[Tensor, Tensor], idx: Tensor, epoch: int, net: nn.Module) -> Tensor:
        x, y = batch
        with autocast(device):  # mixed precision on CUDA: logits in bf16, the loss in float32
            logits = net(x)
        return segmentation_loss(logits.float(), y)

    out = fit(model, data, step=step, epochs=epochs, batch_size=batch_size, lr=lr,
               optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, jitter=jitter,
               seed=seed, device=device, checkpoint=checkpoint, tag=f"seg:{tag}",
               extra_state=None, on_epoch_end=None, max_epochs=max_epochs, progress=progress,
               desc=desc, make_batch=make_batch, cpu_bf16=cpu_bf16, num_workers=num_workers)
    out.update(model=model.eval())
    return out


@torch.no_grad()
def segment_batch(
    model: nn.Module, images: Tensor, device: torch.device | str = "cpu", flip: bool = False,
    scales: Sequence[float] = (1.0,), crf: CRFParams | None = None,
) -> Tensor:
    """Eval-mode label predictions of one batch (`predict_segmentation`, which prepares the
    model: eval mode, on `device`).

    images: (B, 3, H, W) uint8. Returns (B, H, W) uint8 (0 background, c + 1 class c), on the CPU.
    """
    device = torch.device(device)
    H, W = images.shape[-2:]
    x = normalize_images(images).to(device)  # (B, 3, H, W)
    prob = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear",
                                              align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            with autocast(device):
                out = model(xs.flip(-1) if flipped else xs).float()  # (B, L, h, w)
            if flipped:
                out = out.flip(-1)
            if out.shape[-2:] != (H, W):
                out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
            p = out.softmax(1)
            prob = p if prob is None else prob + p
    if crf is not None:
        n_versions = len(scales) * (2 if flip else 1)
        return crf_labels(images, prob / n_versions, crf)
    # argmax over channels is ~16x faster on a channels_last tensor than on an NCHW one here
    # (torch 2.14, CPU; measured 590 vs 9,700 img/s at 96 px, 7 labels); same result.
    prob = prob.contiguous(memory_format=torch.channels_last)
    return prob.argmax(1).to(torch.uint8).cpu()  # (B, H, W)


@torch.no_grad()
def predict_segmentation(
    model: nn.Module, images: Tensor | Dataset, batch_size: int = 64,
    device: torch.device | str = "cpu", flip: bool = False, scales: Sequence[float] = (1.0,),
    progress: bool = False, crf: CRFParams | None = None, num_workers: int = 0,
) -> Tensor:
    """Eval-mode label predictions, optionally averaged over flips and scales, optionally
    refined by the dense CRF.

    images: (N, 3, H, W) uint8, or a Dataset of (3, H, W) uint8 items read by `num_workers`
    DataLoader processes. With `flip` and `scales`, the softmax of every (scale, flip) version,
    resized back to H x W, is averaged before the argmax. crf: `crf.CRFParams` to refine each
    image's averaged softmax with the dense CRF (on the CPU) before the argmax, as the reference
    does. Returns (N, H, W) uint8 (0 background, c + 1 class c), on the CPU; a stage that
    measures or writes the predictions takes them batch by batch (`segment_batch`).
    """
    device = torch.device(device)
    model.to(device).eval()
    batches = image_batches(images, batch_size, num_workers=num_workers, device=device,
                            progress=progress, desc="predict")
    return torch.cat([segment_batch(model, x, device, flip, scales, crf) for _, x in batches])


# ----------------------------------------------------------------------------- inference and export


@torch.no_grad()
def cams_of_batch(model: nn.Module, images: Tensor, device: torch.device | str = "cpu"
                  ) -> tuple[Tensor, Tensor]:
    """Eval-mode logits and raw CAMs of one batch (`predict_cams`, which prepares the model:
    eval mode, on `device`).

    images: (B, 3, H, W) uint8. Returns logits (B, C) and cams (B, C, h, w), float32 on the CPU.
    """
    x = normalize_images(images).to(device)  # (B, 3, H, W)
    lo, cam = model(x, return_cam=True)  # (B, C), (B, C, h, w)
    return lo.float().cpu(), cam.float().cpu()


@torch.no_grad()
def predict_cams(
    model: nn.Module, images: Tensor | Dataset, batch_size: int = 64,
    device: torch.device | str = "cpu", progress: bool = False, num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Eval-mode logits and raw CAMs of every image.

    images: (N, 3, H, W) uint8, or a Dataset of (3, H, W) uint8 items read by `num_workers`
    DataLoader processes. Returns logits (N, C) float32 and cams (N, C, h, w) float32 (CPU); a
    stage that keeps only some of them takes them batch by batch (`cams_of_batch`).
    """
    device = torch.device(device)
    model.to(device).eval()
    logits, cams = [], []
    for _, x in image_batches(images, batch_size, num_workers=num_workers, device=device,
                              progress=progress, desc="maps"):
        lo, cam = cams_of_batch(model, x, device)
        logits.append(lo)
        cams.append(cam)
    return torch.cat(logits), torch.cat(cams)


def resize_uint8(maps: Tensor, size: tuple[int, int], mode: str = "bicubic") -> Tensor:
    """Resize 8-bit maps without re-normalising them (the accumulated maps are already 0..255).

    maps: (..., h, w) uint8; size: (H, W). Returns (..., H, W) uint8, rounded and saturated.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.clone()
    *lead, h, w = maps.shape
    flat = maps.reshape(1, -1, h, w).float()  # (1, L, h, w)
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(flat, size=tuple(size), mode=mode, **kwargs)  # (1, L, H, W)
    return up.round().clamp(0, 255).to(torch.uint8).reshape(*lead, *size)


def maps_to_uint8(
    maps: Tensor, label_ids: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]],
    normalized: bool = False, mode: str = "bicubic",
) -> list[dict[int, np.ndarray]]:
    """8-bit, image-size maps of the listed classes of every image.

    maps: (N, C, h, w): raw CAMs (float; exported with `cam_to_uint8`: clamp, max-normalise,
    quantise, bicubic resize), or with ``normalized=True`` uint8 maps that are only resized
    (the accumulated maps), with `mode` ("nearest" keeps each feature cell's value, e.g. to
    see exactly the IAM's targets). label_ids: listed classes per image; sizes: (H, W) per
    image. Returns per image {class id: (H, W) uint8}.
    """
    out: list[dict[int, np.ndarray]] = []
    for i, ids in enumerate(label_ids):
        ids = list(ids)
        if not ids:
            out.append({})
            continue
        sel = maps[i, ids]  # (k, h, w)
        if normalized:
            up = resize_uint8(sel, sizes[i], mode=mode)  # (k, H, W)
        else:
            up = cam_to_uint8(sel, size=sizes[i])  # (k, H, W)
        out.append({c: up[j].numpy() for j, c in enumerate(ids)})
    return out


def export_maps(
    folder: str | os.PathLike, names: Sequence[str], maps: Sequence[Mapping[int, np.ndarray]],
    progress: bool = False,
) -> int:
    """Write `maps` (from `maps_to_uint8`) as 8-bit gray PNGs `folder/{name}_{cls}.png`.

    cls is the 0-based class id, as the official code names its CAM files. Returns the count.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, per_class in tqdm(list(zip(names, maps, strict=True)), desc=f"png {folder.name}",
                                leave=False, disable=not progress):
        for c, m in per_class.items():
            save_gray_png(folder / f"{name}_{c}.png", m)
            n += 1
    return n


@torch.no_grad()
def glore_parts(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The GloRe unit's intermediate tensors for a trained classifier (notebook 01).

    images: (B, 3, H, W) uint8. Returns the unit's parts (``proj`` (B, N, h, w): each pixel's
    weight for each node; ``V``, ``Z`` (B, S, N); ...) plus ``features`` (B, D, h, w), its input.
    """
    if not hasattr(model, "glore") or not hasattr(model.glore, "conv_proj"):
        raise ValueError("the model has no GloRe unit (built with glore=False?)")
    model.eval()
    device = next(model.parameters()).device
    x = normalize_images(images).to(device)  # (B, 3, H, W)
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    f = model.extra_convs(model.features(x))  # (B, D, h, w)
    _, parts = model.glore(f, return_parts=True)
    return {"features": f.cpu(), **{k: v.cpu() for k, v in parts.items()}}
