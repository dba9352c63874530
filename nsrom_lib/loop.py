"""The training loop that every network of the pipeline shares, and what it stands on.

Threads and seeds (`configure_threads`, `seed_everything`), reading a split batch by batch
(`load_split`, `image_batches`, `loader_workers`), input normalisation and colour jitter,
learning-rate schedules and optimisers (`learning_rate`, `poly_lr`, `make_optimizer`),
checkpoints, and `fit`: shuffle, build the batch, step, optimise, checkpoint every epoch,
resume. `nsrom_lib.train` builds the classifier, IAM and segmentation training on it
(docs/method.md §1, §2, §5).

What the loops read is either tensors in memory (N along the first dimension; a batch is
`tensor[idx]`) or a `Dataset` (`data.split.SplitImages`, `data.split.LabelFiles`), whose items
a torch `DataLoader` reads batch by batch, so that a stage's memory does not grow with its
split. Both give the same batches: the loop draws the order, and the DataLoader only reads the
items of the index batches it is handed.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from nsrom_lib import distributed as dist
from nsrom_lib.data.io import atomic_path
from nsrom_lib.data.split import load_split, load_split_tensors
from nsrom_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ColorJitter
from nsrom_lib.faults import crash_point
from nsrom_lib.progress import progress_bar as tqdm

__all__ = ["configure_threads", "seed_everything", "load_split", "load_split_tensors",
           "loader_workers", "read_batches", "image_batches", "item_count", "item_shape",
           "normalize_images", "cam_size", "learning_rate", "make_optimizer", "poly_lr", "fit",
           "colour_jitter", "pinned", "autocast", "cpu_has_bf16"]

log = logging.getLogger("nsrom_lib.train")


# ----------------------------------------------------------------------------- setup


def _available_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(num_threads: int = 0) -> int:
    """Set torch's intra-op threads: `num_threads`, or (0) every core this process may use;
    and flush denormal floats to zero on the CPU.

    Returns the number of threads set. On a 2-core machine 2 threads are fastest. Several
    training processes on one machine (torchrun) share its cores: each takes its share.
    Denormals: training these small networks from scratch produced denormal activations or
    gradients that made CPU training 5-20x slower (16-30 img/s instead of 340 at 96 px);
    flushing them changes nothing measurable in the results.
    """
    n = num_threads if num_threads > 0 else _available_cores() // dist.local_world_size()
    torch.set_num_threads(max(1, n))
    # After set_num_threads: the flag is per thread, and the thread pool may have been rebuilt.
    torch.set_flush_denormal(True)
    return torch.get_num_threads()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a CPU generator seeded with `seed` for the loops."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- reading batches

#: What the loops read: tensors in memory (one, or a tuple of them, N along the first
#: dimension) or a Dataset of N items.
Items = Tensor | tuple[Tensor, ...] | Dataset


def loader_workers(num_workers: int, device: torch.device) -> int:
    """The DataLoader worker processes of a run's `num_workers` setting: the setting itself,
    or for -1 (automatic) none on the CPU, where the training threads already use every core,
    and on a GPU one per core up to 8, leaving one core to the training process."""
    if num_workers >= 0:
        return num_workers
    cores = _available_cores() // dist.local_world_size()  # each training process's share
    return 0 if device.type == "cpu" else max(0, min(8, cores - 1))


def item_count(data: Items) -> int:
    """N: the number of items (images) of tensors in memory or of a Dataset."""
    return len(data[0]) if isinstance(data, tuple) else len(data)


def item_shape(data: Tensor | Dataset) -> tuple[int, ...]:
    """The shape of one item (e.g. (3, S, S) of an image); a Dataset reads its first item."""
    return tuple(data.shape[1:]) if isinstance(data, Tensor) else tuple(data[0].shape)


def read_batches(data: Items, batches: Sequence[Tensor], num_workers: int = 0,
                 device: torch.device | str = "cpu") -> Iterator[Any]:
    """The items of each index batch of `batches` (in that order), collated.

    Tensors in memory are indexed (`tensor[idx]`, or a tuple of them); a Dataset is read by a
    torch DataLoader handed exactly these batches (`batch_sampler`), with `num_workers`
    processes decoding ahead and, on CUDA, page-locked batches. The DataLoader draws the seed
    of its workers from a generator of its own, so it moves no random number generator that
    the training draws from.
    """
    if isinstance(data, Tensor):
        return (data[idx] for idx in batches)
    if isinstance(data, tuple):
        return (tuple(t[idx] for t in data) for idx in batches)
    loader = DataLoader(data, batch_sampler=[idx.tolist() for idx in batches],
                        num_workers=num_workers, pin_memory=torch.device(device).type == "cuda",
                        generator=torch.Generator())
    return iter(loader)


def image_batches(images: Tensor | Dataset, batch_size: int, *, num_workers: int = 0,
                  device: torch.device | str = "cpu", progress: bool = False,
                  desc: str = "images") -> Iterable[tuple[Tensor, Tensor]]:
    """The images in split order, batch by batch, for prediction: (idx (B,), images (B, 3, H, W)
    uint8) pairs. images: (N, 3, H, W) uint8 in memory or a Dataset of (3, H, W) uint8 items."""
    batches = torch.arange(item_count(images)).split(batch_size)
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress)
    return zip(bar, read_batches(images, batches, num_workers, device), strict=True)


def normalize_images(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) 0..255 or float 0..1 -> float32 standardised with ImageNet mean/std."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pinned(t: Tensor, device: torch.device) -> Tensor:
    """`t` in page-locked memory when it will be copied to a CUDA device (then `.to(device,
    non_blocking=True)` overlaps the copy with compute); unchanged for a CPU run."""
    return t.pin_memory() if device.type == "cuda" and not t.is_pinned() else t


def autocast(device: torch.device, cuda: bool = True, cpu: bool = False):
    """bfloat16 autocast (no gradient scaling needed) on a CUDA device when `cuda`, on the CPU
    when `cpu` (the `cpu_bf16` setting); otherwise a no-op context."""
    import contextlib

    if cuda and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN sees it).
    Without it, bf16 autocast on the CPU is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def colour_jitter(images: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Colour jitter of a uint8 batch (B, 3, H, W), one draw per image; returns float 0..1."""
    x = images.float() / 255.0
    if strength <= 0:
        return x
    cj = ColorJitter(strength, strength, strength, generator=generator)
    return torch.stack([cj({"image": img})["image"] for img in x])  # (B, 3, H, W)


@torch.no_grad()
def cam_size(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the model's CAM for images of `image_size`, from one eval-mode dry run."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    _, cam = model(torch.zeros(1, 3, *image_size, device=device), return_cam=True)
    model.train(was_training)
    return tuple(cam.shape[-2:])


# ----------------------------------------------------------------------------- optimisation


def poly_lr(base_lr: float, iteration: int, iterations: int, power: float = 0.9) -> float:
    """DeepLab's "poly" decay: base_lr · (1 − iteration / iterations) ** power (0-based)."""
    return base_lr * max(0.0, 1.0 - iteration / max(iterations, 1)) ** power


def learning_rate(base_lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """The learning rate of 0-based `epoch`: "cosine" (half a cosine from base_lr towards 0),
    "step" (x0.1 at 1/3 and 2/3 of the epochs, as the reference's 5 and 10 of 15), "constant",
    or "poly" (the value at the epoch's first iteration; `_fit` applies it per iteration).
    """
    if schedule == "poly":
        return poly_lr(base_lr, epoch, max(epochs, 1))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "step":
        milestones = [round(epochs / 3), round(2 * epochs / 3)]
        return base_lr * 0.1 ** sum(epoch >= m for m in milestones)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"schedule must be 'cosine', 'step', 'constant' or 'poly', got {schedule!r}")


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """"adam" (one group) or "sgd" (the reference's: Nesterov momentum 0.9, the model's
    `param_groups` with 1x / 2x / 10x / 20x learning rates when it has them)."""
    if name == "adam":
        groups = [{"name": "all", "params": list(model.parameters()), "lr": lr, "mult": 1.0}]
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        if hasattr(model, "param_groups"):
            groups = model.param_groups(lr)
            for g in groups:
                g["mult"] = g["lr"] / lr
        else:
            groups = [{"name": "all", "params": list(model.parameters()), "lr": lr, "mult": 1.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("mult", 1.0)


# ----------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` to `path` atomically (a crash leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, tag: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it exists and was written for `tag`, else None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("tag") != tag:
        log.warning("checkpoint %s belongs to another configuration: starting afresh", path)
        return None
    return state


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    data: Items,
    *,
    step: Callable[[Any, Tensor, int, nn.Module], Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    weight_decay: float,
    schedule: str,
    jitter: float,
    seed: int,
    device: torch.device,
    checkpoint: str | os.PathLike | None,
    tag: str,
    extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]] | None,
    on_epoch_end: Callable[[int], None] | None,
    max_epochs: int | None,
    progress: bool,
    desc: str,
    make_batch: Callable[[Any, torch.Generator], Any] | None = None,
    cpu_bf16: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """The shared training loop: shuffle, build the batch, `step(batch, idx, epoch, net) ->
    loss`, optimise, checkpoint per epoch, resume. Returns history, epochs_done and completed.

    data: the N training items, in memory or a Dataset (`Items`): by default images, (N, 3, H, W)
    uint8 or a Dataset of (3, H, W) uint8 items. Every epoch draws one order of them
    (`torch.randperm` from the loop's generator) and reads its batches in that order
    (`read_batches`; num_workers: DataLoader processes reading a Dataset ahead).
    make_batch(items, generator): the batch `step` receives, from the collated items of the
    batch (default: the images, colour-jittered and normalised, on the device); it must draw
    its randomness from `generator`, which the checkpoints save. schedule "poly" sets
    lr = base·(1 − it / iterations)^0.9 at every iteration (DeepLab's decay); the others change
    it once per epoch. cpu_bf16: on the CPU, `step` runs under bfloat16 autocast (`autocast`):
    convolutions and matrix products in bf16, the weights, gradients and optimiser state in
    float32; `step` computes its loss in float32.

    net: what `step` calls to run the model: `model` itself, or with several training processes
    (`nsrom_lib.distributed`) `model` in DistributedDataParallel. Then each process takes its
    share of every batch (`distributed.shard_batches`; the loop still draws one order of the N
    items for all), BatchNorm uses the statistics of the whole batch, the gradients are
    averaged, the augmentation of a process draws from a generator of its own (seeded by seed,
    epoch and rank, so a resumed run draws the same), and only rank 0 writes checkpoints.
    """
    N = item_count(data)
    model.to(device).train()
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    history, start = _resume(ckpt, tag, model, opt, gen, extra_state, desc)
    stop = epochs if max_epochs is None else min(epochs, max_epochs)
    n_batches = dist.batches_per_epoch(N, batch_size)
    if make_batch is None:
        def make_batch(images: Tensor, g: torch.Generator) -> Tensor:
            x = normalize_images(colour_jitter(images, jitter, g))  # (B, 3, H, W)
            return pinned(x, device).to(device, non_blocking=True)
    bar = tqdm(total=max(stop - start, 0) * n_batches, desc=desc, unit="batch",
               disable=not progress or not dist.is_main())
    net = dist.wrap(model, device)  # after resuming: DDP starts every process from rank 0's weights
    with dist.synced_batchnorm(model):
        for epoch in range(start, stop):
            t0 = time.perf_counter()
            if schedule == "poly":  # recorded: the rate at the epoch's first iteration
                lr_e = poly_lr(lr, epoch * n_batches, epochs * n_batches)
            else:
                lr_e = learning_rate(lr, epoch, epochs, schedule)
            _set_lr(opt, lr_e)
            order = torch.randperm(N, generator=gen)  # (N,)
            plan = dist.shard_batches(order, batch_size)  # this process's (indices, weight)
            aug = gen if dist.world_size() == 1 else _process_generator(seed, epoch)
            bar.set_description(f"{desc} epoch {epoch + 1}/{epochs}")
            total, seen = 0.0, 0
            items_of = read_batches(data, [idx for idx, _ in plan], num_workers, device)
            for it, ((idx, weight), items) in enumerate(zip(plan, items_of, strict=True)):
                if schedule == "poly":
                    _set_lr(opt, poly_lr(lr, epoch * n_batches + it, epochs * n_batches))
                batch = make_batch(items, aug)
                with autocast(device, cuda=False, cpu=cpu_bf16):
                    loss = step(batch, idx, epoch, net)
                opt.zero_grad(set_to_none=True)
                (loss if weight == 1.0 else loss * weight).backward()
                opt.step()
                total += loss.detach().item() * len(idx)
                seen += len(idx)
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{total / seen:.4f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            total, seen = _summed(total, seen)
            history.append(_epoch_record(desc, epoch, epochs, lr, lr_e, total, seen, t0))
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if ckpt is not None and dist.is_main():
                _save_checkpoint(ckpt, dict(
                    tag=tag, epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict(),
                    generator=gen.get_state(), torch_rng=torch.get_rng_state(), history=history,
                    extra=extra_state[0]() if extra_state is not None else {},
                ))
            dist.barrier()  # every process past an epoch only once its checkpoint is on disk
            crash_point(f"{desc}-epoch", epoch + 1)  # tests: a SIGKILL after this checkpoint
    bar.close()
    done = len(history)
    return dict(history=history, epochs_done=done, completed=done >= epochs, resumed_from=start)


def _process_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation generator of this process in `epoch` when several processes train:
    seeded by (seed, epoch, rank), so that the processes draw differently and a resumed run
    draws what the uninterrupted one drew."""
    state = np.random.SeedSequence([seed, epoch, dist.rank()]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _summed(total: float, seen: int) -> tuple[float, int]:
    """An epoch's loss sum and image count over every training process."""
    if dist.world_size() == 1:
        return total, seen
    t = dist.sum_(torch.tensor([total, seen], dtype=torch.float64))
    return float(t[0]), int(t[1])


def _resume(ckpt: Path | None, tag: str, model: nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator, extra_state, desc: str) -> tuple[list[dict[str, float]], int]:
    """Load the checkpoint of `tag` into model, optimiser and generators when there is one.

    Returns the history so far and the number of epochs done (0 and [] without a checkpoint).
    """
    state = _load_checkpoint(ckpt, tag) if ckpt is not None else None
    if state is None:
        return [], 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if extra_state is not None:
        extra_state[1](state["extra"])
    log.info("%s: resumed from %s after epoch %d", desc, ckpt, int(state["epoch"]))
    return list(state["history"]), int(state["epoch"])


def _epoch_record(desc: str, epoch: int, epochs: int, lr: float, lr_e: float, total: float,
                  seen: int, t0: float) -> dict[str, float]:
    """One epoch's line of the history; a non-finite loss stops the training with the fix."""
    seconds = time.perf_counter() - t0
    if not math.isfinite(total):
        raise FloatingPointError(
            f"{desc}: the training loss became {total / max(seen, 1)} in epoch {epoch + 1} "
            f"(learning rate {lr}): the network diverged; lower the learning rate "
            "(--set cls_lr=... / iam_lr=... / seg_lr=...) and run again"
        )
    record = dict(epoch=epoch + 1, loss=total / max(seen, 1), lr=lr_e,
                  seconds=round(seconds, 3), img_per_s=round(seen / max(seconds, 1e-9), 1))
    log.info("%s epoch %d/%d: loss %.4f, %.0f img/s", desc, epoch + 1, epochs,
             record["loss"], record["img_per_s"])
    return record
