"""Pseudo / masked labels of official-format folders: read, compute, write (the `labels` CLI).

`make_labels` joins the data layer (`nsrom_lib.data.maps_io`: validated inputs, batches of one
image size, an all-or-nothing writer) and the label math (`nsrom_lib.labels.pseudo_labels`,
`non_salient_region_masking`; docs/method.md §3, §4, §6), and runs them over `workers`:

- on a CPU, worker processes (`worker_pool`): each takes one planned batch, decodes its PNGs,
  computes its labels and encodes them, and this process writes the files in order. Much of
  decoding and of the label arithmetic holds the GIL, so threads would take turns on it;
  processes use every core. torch runs single-threaded in each worker (`threads`).
- on a GPU, threads decode the next batches while the device computes this one, and other
  threads encode the finished labels.

The labels are the same whatever the number of workers or the batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from nsrom_lib.data.label_defaults import MASKED_DEFAULTS, PSEUDO_DEFAULTS
from nsrom_lib.data.maps_io import (
    ImageEntry,
    LabelBatch,
    LabelInputs,
    encode_label,
    plan_batches,
    read_batch,
    write_encoded,
    write_labels,
)
from nsrom_lib.parallel import OrderedMap, default_workers, fork_is_safe, process_pool

__all__ = [
    "BATCH_PIXELS",
    "make_labels",
    "label_params",
    "compute_batch",
    "label_batch_files",
    "read_ahead",
    "warm_up",
    "worker_pool",
]

#: Pixels a batch holds at most, per mode (None: only --batch-size counts).
BATCH_PIXELS: dict[str, int | None] = {"pseudo": None, "masked": None}


def label_params(mode: str, thresholds: dict[str, float]) -> dict[str, float]:
    """The defaults of `mode` ("pseudo" / "masked") updated by `thresholds`, checked."""
    defaults = PSEUDO_DEFAULTS if mode == "pseudo" else MASKED_DEFAULTS
    unknown = set(thresholds) - set(defaults)
    if unknown:
        raise ValueError(
            f"unknown threshold(s) {sorted(unknown)} for {mode} labels; known: {sorted(defaults)}"
        )
    params = {**defaults, **thresholds}
    if mode == "masked" and (int(params["kernel"]) != params["kernel"] or params["kernel"] < 1):
        raise ValueError(f"kernel must be a positive integer, got {params['kernel']}")
    return params


def compute_batch(batch: LabelBatch, mode: str, params: dict[str, float], device) -> np.ndarray:
    """(B, H, W) uint8 labels of one batch: BE + POM + 1% rule, or NSRM (+ 1% rule)."""
    import torch

    from nsrom_lib.labels import _fast, non_salient_region_masking, pseudo_labels

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(device)

    # On a CPU the fast path (labels/_fast.py: the same labels, bit for bit, tested) is several
    # times faster at VOC's image size; on a GPU the readable version runs without host copies.
    pseudo = _fast.pseudo_labels if torch.device(device).type == "cpu" else pseudo_labels
    with torch.inference_mode():
        if mode == "pseudo":
            out = pseudo(t(batch.sal), t(batch.oa_cam), t(batch.cam), t(batch.present),
                                **params)  # fmt: skip
        else:
            out = non_salient_region_masking(
                t(batch.pred), t(batch.pseudo), t(batch.sal), t(batch.present),
                kernel=int(params["kernel"]), ratio=params["ratio"],
            )  # fmt: skip
    return out.cpu().numpy()


def _label_stream(
    inputs: LabelInputs,
    batches: Iterator[LabelBatch],
    params: dict[str, float],
    device: Any,
    on_batch: Callable[[int], None] | None,
    workers: int = 1,
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, label) pairs in batch order; the batches computed by `workers` threads."""

    def work(batch: LabelBatch) -> tuple[list[str], np.ndarray]:
        return batch.names, compute_batch(batch, inputs.mode, params, device)

    with OrderedMap(work, batches, workers, name="nsrom-label") as done:
        for names, out in done:
            yield from zip(names, out, strict=True)
            if on_batch is not None:
                on_batch(len(names))


def _start_label_worker(threads: int | None) -> None:
    """A worker process of `worker_pool`: load torch and the label math once, set its threads."""
    import torch

    import nsrom_lib.labels._fast  # noqa: F401

    if threads:
        torch.set_num_threads(int(threads))


def worker_pool(workers: int | None = None, threads: int | None = 1) -> Executor | None:
    """Label worker processes for `make_labels(pool=...)`, started now, or None.

    Each worker loads torch and the label math as it starts (a second or more), so start the
    pool before checking the inputs and the two overlap. None when this process cannot fork
    them cleanly (torch already loaded, as in a notebook or the tests, or another thread
    running; not Linux): `make_labels` then uses threads, which need no start-up. workers:
    default the CPU cores, at most 8; threads: torch CPU threads of each worker (1 is fastest:
    the workers use the cores). Use it as a context manager; leaving it stops the workers.
    """
    if not fork_is_safe():
        return None
    workers = default_workers() if workers is None else max(1, int(workers))
    return process_pool(workers, _start_label_worker, (threads,))


def _device_type(device: str) -> str:
    """Where `device` computes, as a worker resolves it ("cpu", "cuda", ...)."""
    from nsrom_lib.device import resolve_device

    return resolve_device(device).type


def label_batch_files(
    job: tuple[LabelInputs, list[ImageEntry], dict[str, float]],
) -> list[tuple[str, bytes, int, int]]:
    """One planned batch read, labelled on the CPU and encoded: what a worker process does.

    job: (inputs, the batch's entries, thresholds); returns `encode_label` tuples in order.
    """
    inputs, chunk, params = job
    batch = read_batch(inputs, chunk)
    labels = compute_batch(batch, inputs.mode, params, "cpu")
    return [encode_label(item) for item in zip(batch.names, labels, strict=True)]


def _files_from_workers(
    pool: Executor,
    inputs: LabelInputs,
    plan: list[list[ImageEntry]],
    params: dict[str, float],
    workers: int,
    on_batch: Callable[[int], None] | None,
) -> Iterator[tuple[str, bytes, int, int]]:
    """The encoded labels of every planned batch, in order, computed by the pool's workers."""
    shared = dataclasses.replace(inputs, entries=[], missing_maps=[])  # what a job must carry
    jobs = ((shared, chunk, params) for chunk in plan)
    with OrderedMap(label_batch_files, jobs, workers, executor=pool) as done:
        for files in done:
            yield from files
            if on_batch is not None:
                on_batch(len(files))


def read_ahead(
    inputs: LabelInputs, batch_size: int = 32, workers: int = 1, max_pixels: int | None = None
) -> OrderedMap:
    """The batches of `inputs` (`plan_batches`), decoded by `workers` threads from now on, up
    to 4 * workers batches ahead of the consumer (`close` it if it is not consumed)."""
    plan = plan_batches(inputs, batch_size, max_pixels)
    return OrderedMap(lambda chunk: read_batch(inputs, chunk), plan, workers, ahead=4 * workers,
                      name="nsrom-read")  # fmt: skip


def warm_up() -> threading.Thread:
    """Start importing torch and the label math in a background thread, and return it.

    Importing torch takes a second or more of one core; the `labels` commands check their
    inputs and decode the first batches meanwhile (they need no torch). A failed import is
    left for the real import to report.
    """

    def load() -> None:
        # The import holds the GIL nearly all the time; a short switch interval lets the
        # decoding threads (which need it only between files) take turns with it.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, 0.0005))
        try:
            with contextlib.suppress(Exception):
                import nsrom_lib.device  # noqa: F401  (imports torch)
                import nsrom_lib.labels._fast  # noqa: F401
        finally:
            sys.setswitchinterval(interval)

    t = threading.Thread(target=load, name="nsrom-import", daemon=True)
    t.start()
    return t


def _bar(progress: bool, total: int, mode: str):
    """A progress bar over the images, or a context holding None (no tqdm import) if off."""
    if not progress:
        return contextlib.nullcontext(None)
    from nsrom_lib.progress import progress_bar as tqdm

    return tqdm(total=total, desc=f"{mode} labels", unit="img")


def make_labels(
    inputs: LabelInputs,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    device: str = "auto",
    threads: int | None = 1,
    workers: int | None = None,
    max_pixels: int | None = -1,
    progress: bool = True,
    pool: Executor | None = None,
    **thresholds: float,
) -> dict[str, Any]:
    """Compute the pseudo (BE + POM + 1% rule) or masked (NSRM) labels of `inputs` and write them.

    thresholds: for "pseudo" fg, conflict, bg, att, pom, ratio; for "masked" kernel, ratio
    (defaults: PSEUDO_DEFAULTS / MASKED_DEFAULTS, the reference's). Nothing is written unless
    every label is computed. threads: torch CPU threads of each batch's computation (None:
    torch's setting; 1 is fastest, the workers use the cores, see labels.torch_threads).
    workers: batches in work at once (default: the CPU cores, at most 8; 1: everything in this
    thread). pool: a `worker_pool` (of `workers` processes) that computes the batches when the
    device is a CPU; without one, or on a GPU, threads decode and encode and batches are
    computed here (on CUDA one at a time). max_pixels: pixels a batch holds at most besides
    `batch_size` images (-1: BATCH_PIXELS of the mode; None: no limit). Returns a summary:
    images, ignore_share, seconds, images_per_s, missing_maps, sizes, device, workers,
    processes.
    """
    params = label_params(inputs.mode, thresholds)
    workers = default_workers() if workers is None else max(1, int(workers))
    t0 = time.perf_counter()
    if max_pixels == -1:
        max_pixels = BATCH_PIXELS[inputs.mode]
    bar = _bar(progress, len(inputs.entries), inputs.mode)
    on_cpu = pool is not None and pool.submit(_device_type, device).result() == "cpu"
    if pool is not None and not on_cpu:
        pool.shutdown()  # a GPU computes here: the workers are not needed
    if on_cpu:
        plan = plan_batches(inputs, batch_size, max_pixels)
        with bar as b:
            files = _files_from_workers(pool, inputs, plan, params, workers,
                                        None if b is None else b.update)  # fmt: skip
            stats = write_encoded(out_dir, files)
        dev, processes = "cpu", True
    else:
        stats, dev = _write_here(inputs, out_dir, params, device, threads, workers, batch_size,
                                 max_pixels, bar)  # fmt: skip
        processes = False
    seconds = time.perf_counter() - t0
    return dict(
        mode=inputs.mode,
        images=stats["images"],
        ignore_share=stats["ignore"] / max(stats["pixels"], 1),
        seconds=seconds,
        images_per_s=stats["images"] / seconds if seconds > 0 else float("inf"),
        missing_maps=len(inputs.missing_maps),
        sizes={f"{h}x{w}": n for (h, w), n in inputs.sizes.items()},
        device=str(dev),
        workers=workers,
        processes=processes,
        params=params,
        out_dir=str(Path(out_dir)),
    )


def _write_here(inputs, out_dir, params, device, threads, workers, batch_size, max_pixels, bar):
    """make_labels in this process: threads read and encode, batches computed here.
    Returns (write counts, torch device)."""
    batches = read_ahead(inputs, batch_size, workers, max_pixels)  # starts before torch loads
    try:
        from nsrom_lib.device import resolve_device
        from nsrom_lib.labels import torch_threads

        dev = resolve_device(device)
        compute_workers = workers if dev.type == "cpu" else 1
        with torch_threads(threads), bar as b:
            update = None if b is None else b.update
            stream = _label_stream(inputs, batches, params, dev, update, compute_workers)
            return write_labels(out_dir, stream, workers=workers), dev
    finally:
        batches.close()
