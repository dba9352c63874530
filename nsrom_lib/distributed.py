"""Training on several processes: torchrun's environment, the process group, and the few
collective steps the training loops need (docs/design.md, "Several processes").

A run with `nproc` = N > 1 trains each network in N processes started by torchrun
(`launch`), one per GPU, or N on the CPU with the cores shared between them. Each process
holds the whole model; every global batch of the loop (the same `batch_size` images as a
one-process run, in the same order) is split between the processes (`shard_batches`), the
gradients are averaged by `DistributedDataParallel` (`wrap`), and BatchNorm computes its
statistics over the whole global batch (`synced_batchnorm`), so that a step of N processes
computes what the step of one process computes, up to the order of float additions.
Only rank 0 writes files (`check_may_write`, called by every atomic write).

A leaf of the library: stdlib and torch only.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["launched", "active", "rank", "world_size", "is_main", "local_world_size", "init",
           "finish", "barrier", "broadcast", "sum_", "shard_batches", "batches_per_epoch", "wrap",
           "synced_batchnorm", "check_may_write", "launch", "torchrun_command", "WorkerError"]

#: How long a process waits in a collective step for the others: rank 0 alone computes the
#: stages that train nothing (label folders, predictions), while the others wait.
TIMEOUT = datetime.timedelta(hours=12)


def launched() -> bool:
    """Whether this process was started by torchrun as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether this process trains with others: a process group of more than one is set up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: in the process group, else torchrun's RANK (before the group is
    joined), else 0."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    """The number of training processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes: always true in a one-process run."""
    return rank() == 0


def local_world_size() -> int:
    """The processes torchrun started on this machine (1 outside torchrun): they share its cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun's environment describes (once per process; gloo on the
    CPU, nccl on CUDA) and return this process's device: `cuda:<local rank>` on CUDA, else
    `device`. Outside torchrun, `device` unchanged."""
    if not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def finish() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no process leaves while another still talks to it
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    if active():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` (any picklable object), in every process."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_(t: Tensor) -> Tensor:
    """Sum `t` over the processes, in place (bool tensors as "any"); returns `t`. A CPU tensor
    travels through this process's GPU when the processes talk over nccl."""
    if not active():
        return t
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else t.device
    work = t.to(device, torch.uint8 if t.dtype == torch.bool else t.dtype)
    dist.all_reduce(work)
    t.copy_(work > 0 if t.dtype == torch.bool else work)
    return t


# ----------------------------------------------------------------------------- batches


def _global_batches(order: Tensor, batch_size: int, world: int) -> list[Tensor]:
    """`order` cut into batches of `batch_size`; a last batch too small to give every process
    an image is joined to the one before it."""
    batches = list(order.split(batch_size))
    if world > 1 and len(batches) > 1 and len(batches[-1]) < world:
        batches[-2:] = [torch.cat(batches[-2:])]
    if batches and len(batches[-1]) < world:
        raise ValueError(f"{len(order)} training images cannot be shared by {world} processes: "
                         f"use nproc <= {len(order)}")
    return batches


def batches_per_epoch(n_items: int, batch_size: int) -> int:
    """The loop's iterations per epoch for `n_items` (`shard_batches`)."""
    return len(_global_batches(torch.arange(n_items), batch_size, world_size()))


def shard_batches(order: Tensor, batch_size: int, world: int | None = None,
                  rank_: int | None = None) -> list[tuple[Tensor, float]]:
    """This process's part of every global batch of `order`: (indices, weight) pairs.

    The global batches are one process's batches (`order.split(batch_size)`); process r takes
    the items r, r + N, r + 2N, ... of each. weight = (images here) · N / (images in the
    global batch): the loss of a part times its weight, averaged over the N processes (as
    DistributedDataParallel averages gradients), is the loss averaged over the global batch.
    One process: the batches themselves, weight 1. world, rank_: this process's (default).
    """
    world = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    batches = _global_batches(order, batch_size, world)
    if world == 1:
        return [(b, 1.0) for b in batches]
    return [(b[r::world], len(b[r::world]) * world / len(b)) for b in batches]


# ----------------------------------------------------------------------------- the model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train, else `model` itself.
    Call its forward through the wrapper, so that backward averages the gradients."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


class _SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the global batch of every process.

    The sums over each process's part are added with an all-reduce that autograd follows
    (torch's functional collectives), so the gradient through the mean and the
    variance is the global batch's too. torch's own `nn.SyncBatchNorm` runs on GPUs only; this
    one runs wherever the process group does (gloo on the CPU, nccl on CUDA). Eval mode and
    the stored parameters and buffers are BatchNorm2d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed import _functional_collectives as funcol

        xf = x.float()  # (B, C, H, W); float32 also under bf16 autocast
        count = torch.tensor([xf.numel() / xf.shape[1]], device=xf.device)  # pixels here
        sums = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])  # (2C + 1,)
        sums = funcol.wait_tensor(funcol.all_reduce(sums, "sum", dist.group.WORLD))
        C = xf.shape[1]
        n = sums[-1]
        mean = sums[:C] / n
        var = (sums[C:2 * C] / n - mean * mean).clamp(min=0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)) * m)
        y = (xf - mean.view(1, C, 1, 1)) * torch.rsqrt(var.view(1, C, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """While several processes train: every BatchNorm2d of `model` normalises with the global
    batch's statistics (`_SyncedBatchNorm2d`, the same parameters and buffers); restored to
    plain BatchNorm2d afterwards. One process: nothing changes."""
    if not active():
        yield model
        return
    swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for m in swapped:
        m.__class__ = _SyncedBatchNorm2d
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d


# ----------------------------------------------------------------------------- files and launching


def check_may_write(path: os.PathLike | str) -> None:
    """Raise unless this process may write files: with several processes, rank 0 alone writes
    maps, labels, checkpoints and records (every atomic write of the library calls this)."""
    if not is_main():
        raise RuntimeError(f"process {rank()} of {world_size()} tried to write {path}: only rank "
                           "0 writes (a bug: guard the write with distributed.is_main())")


class WorkerError(RuntimeError):
    """A torchrun launch whose processes failed."""


def torchrun_command(nproc: int, module_args: Sequence[str], log_dir: str) -> list[str]:
    """The command that runs `python -m nsrom_lib <module_args>` in `nproc` processes on this
    machine (torchrun, standalone: it picks a free port itself; its own files in `log_dir`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", f"--log-dir={log_dir}", "-m", "nsrom_lib", *module_args]


def launch(nproc: int, module_args: Sequence[str], what: str) -> None:
    """Run `python -m nsrom_lib <module_args>` in `nproc` processes and wait for them; raise
    WorkerError naming `what` when they fail (their output is this process's output)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    with tempfile.TemporaryDirectory(prefix="nsrom-torchrun-") as logs:  # removed afterwards
        cmd = torchrun_command(nproc, module_args, logs)
        done = subprocess.run(cmd, env=env, check=False)
    if done.returncode != 0:
        raise WorkerError(f"{what}: the {nproc} training processes failed (exit status "
                          f"{done.returncode}; their error is printed above). Command: "
                          f"{' '.join(cmd)}")

