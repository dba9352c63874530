"""`python -m nsrom_lib bench`: one command that measures the whole pipeline's speed.

In one process, on the machine it runs on:

- label throughput, batched torch vs the per-image numpy references (`nsrom_lib.bench`);
- classifier training (with GloRe and online attention accumulation) and segmentation training,
  images/s, from scratch on the first `limit` training images of the profile's SynthVOC, after
  one untimed warm-up epoch on one batch;
- inference: the classifier's CAMs and the segmenter's predictions (with the profile's
  test-time flip), images/s;
- the process's peak resident memory;
- the wall time per stage of the last run of the profile (`runs/<profile>`), when there is one.

`bench precision` (`bench_precision`) times each training loop in float32 and with the
`cpu_bf16` setting, alternating, and gives their ratio.

Figures depend on the machine and its load; the result names both.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["peak_memory_mib", "bench_training", "bench_precision", "format_bench_precision",
           "bench_all", "format_bench_all"]


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def _training_inputs(profile: str, limit: int):
    """What the training benchmarks train on: the profile's config, torch's thread count (set
    from it), and the first `limit` training images of its SynthVOC with their image-level
    labels and GT masks: (cfg, threads, images (n, 3, S, S) uint8, labels (n, C), masks
    (n, S, S) uint8)."""
    import torch

    from nsrom_lib import train as T
    from nsrom_lib.bench import dataset_root
    from nsrom_lib.config import make_config
    from nsrom_lib.data.stats import load_split_arrays

    cfg = make_config(profile)
    threads = T.configure_threads(cfg.num_threads)
    root = dataset_root(profile)
    data = T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)
    n = min(limit, len(data["names"]))
    masks = torch.from_numpy(load_split_arrays(root, "train", limit=n)["mask"])
    return cfg, threads, data["images"][:n], data["labels"][:n], masks


def bench_training(profile: str = "default", device: str = "auto", limit: int = 512,
                   epochs: int = 1, seed: int = 0) -> dict[str, Any]:
    """Training and inference throughput of a profile's networks on `limit` training images.

    Returns img/s for classifier training (OAA on), classifier inference (CAMs), segmentation
    training (GT masks as labels; the labels do not change the cost) and segmentation inference.
    """
    import torch

    from nsrom_lib import train as T
    from nsrom_lib.pipeline import build_classifier, build_segmenter, resolve_device

    cfg, threads, images, labels, masks = _training_inputs(profile, limit)
    n = images.shape[0]
    dev = resolve_device(device)

    def timed(fn) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    out: dict[str, Any] = dict(profile=profile, device=str(dev), threads=threads, images=n,
                               image_size=cfg.image_size, epochs=epochs)
    T.seed_everything(seed)
    cls = build_classifier(cfg)
    kw = dict(batch_size=cfg.cls_batch_size, lr=cfg.cls_lr, seed=seed, device=dev,
              accumulate_from=0, progress=False)
    b = cfg.cls_batch_size
    T.train_classifier(cls, images[:b], labels[:b], epochs=1, **kw)  # warm-up
    s = timed(lambda: T.train_classifier(cls, images, labels, epochs=epochs, **kw))
    out["classifier_train_img_s"] = round(n * epochs / s, 1)
    s = timed(lambda: T.predict_cams(cls, images, device=dev))
    out["classifier_infer_img_s"] = round(n / s, 1)

    T.seed_everything(seed)
    seg = build_segmenter(cfg)
    kw = dict(batch_size=cfg.seg_batch_size, lr=cfg.seg_lr, seed=seed, device=dev, progress=False)
    b = cfg.seg_batch_size
    T.train_segmentation(seg, images[:b], masks[:b], epochs=1, **kw)  # warm-up
    s = timed(lambda: T.train_segmentation(seg, images, masks, epochs=epochs, **kw))
    out["segmentation_train_img_s"] = round(n * epochs / s, 1)
    s = timed(lambda: T.predict_segmentation(seg, images, device=dev, flip=cfg.seg_test_flip))
    out["segmentation_infer_img_s"] = round(n / s, 1)
    out["segmentation_test_flip"] = cfg.seg_test_flip
    return out


def bench_precision(profile: str = "default", limit: int = 256, repeats: int = 3,
                    seed: int = 0) -> dict[str, Any]:
    """One epoch of each training loop on `limit` training images, in float32 and with the
    `cpu_bf16` setting (bfloat16 autocast), alternating fp32, bf16, fp32, bf16, ... `repeats`
    times in this process so that a drift of the machine's speed hits both alike.

    The networks: the classifier with GloRe and accumulation, the integral attention model and
    the segmentation network, each of the profile's sizes, trained from the same initial
    weights in every repeat; CPU only. Returns per network the median seconds per epoch of each
    precision and their ratio fp32 / bf16 (above 1: bf16 is faster), and whether this CPU
    computes bf16 natively (`train.cpu_has_bf16`).
    """
    import copy
    import statistics

    import torch

    from nsrom_lib import train as T
    from nsrom_lib.pipeline import build_classifier, build_segmenter

    cfg, threads, images, labels, masks = _training_inputs(profile, limit)
    n = images.shape[0]
    dev = torch.device("cpu")
    T.seed_everything(seed)
    nets = {"classifier": build_classifier(cfg), "iam": build_classifier(cfg, iam=True),
            "segmentation": build_segmenter(cfg)}
    h, w = T.cam_size(nets["iam"], tuple(images.shape[-2:]))
    targets = torch.randint(0, 256, (n, cfg.num_classes, h, w), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(seed))

    def epoch(name: str, bf16: bool) -> float:
        model = copy.deepcopy(nets[name])
        kw = dict(epochs=1, seed=seed, device=dev, progress=False, cpu_bf16=bf16)
        t0 = time.perf_counter()
        if name == "classifier":
            T.train_classifier(model, images, labels, batch_size=cfg.cls_batch_size,
                               lr=cfg.cls_lr, accumulate_from=0, **kw)
        elif name == "iam":
            T.train_iam(model, images, targets, batch_size=cfg.iam_batch_size, lr=cfg.iam_lr, **kw)
        else:
            T.train_segmentation(model, images, masks, batch_size=cfg.seg_batch_size,
                                 lr=cfg.seg_lr, **kw)
        return time.perf_counter() - t0

    from nsrom_lib.device import cpu_model

    out: dict[str, Any] = dict(profile=profile, cpu=cpu_model(), threads=threads, images=n,
                               image_size=cfg.image_size, repeats=repeats,
                               native_bf16=T.cpu_has_bf16(), networks={})
    for name in nets:
        epoch(name, False), epoch(name, True)  # warm-up: first calls allocate and pick kernels
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(repeats):
            times["fp32"].append(epoch(name, False))
            times["bf16"].append(epoch(name, True))
        med = {k: statistics.median(v) for k, v in times.items()}
        out["networks"][name] = dict(
            fp32_s=round(med["fp32"], 3), bf16_s=round(med["bf16"], 3),
            ratio=round(med["fp32"] / med["bf16"], 2),
            pair_ratios=[round(a / b, 2) for a, b in zip(times["fp32"], times["bf16"], strict=True)])
    return out


def format_bench_precision(r: dict[str, Any]) -> str:
    """A plain-text table of `bench_precision`'s result."""
    lines = [f"nsrom bench precision, profile {r['profile']}, CPU {r['cpu']}, "
             f"{r['threads']} torch threads, native bf16: {'yes' if r['native_bf16'] else 'no'}",
             f"one training epoch on {r['images']} images of {r['image_size']} px, median of "
             f"{r['repeats']} alternating repeats",
             "",
             f"{'network':<14} {'fp32 s':>8} {'bf16 s':>8} {'fp32/bf16':>10}  per pair"]
    for name, t in r["networks"].items():
        lines.append(f"{name:<14} {t['fp32_s']:>8.2f} {t['bf16_s']:>8.2f} {t['ratio']:>10.2f}  "
                     + " ".join(f"{x:.2f}" for x in t["pair_ratios"]))
    return "\n".join(lines)


def bench_all(profile: str = "default", device: str = "auto", limit: int = 512,
              label_limit: int | None = None, run_dir: str | os.PathLike | None = None,
              repeats: int = 3) -> dict[str, Any]:
    """Every measure of the module docstring in one dict (see `format_bench_all`)."""
    from nsrom_lib.bench import bench_labels
    from nsrom_lib.device import cpu_model, host
    from nsrom_lib.pipeline import default_runs_dir, stage_times

    t0 = time.perf_counter()
    result: dict[str, Any] = dict(
        machine=host(), cpu=cpu_model(),
        python=platform.python_version(), load_average=list(os.getloadavg()),
    )
    result["labels"] = bench_labels(profile=profile, device=device, limit=label_limit,
                                    repeats=repeats, threads=1)
    result["training"] = bench_training(profile=profile, device=device, limit=limit)
    run_path = Path(run_dir) if run_dir is not None else default_runs_dir() / profile
    if (run_path / "config.json").is_file():
        result["last_run"] = dict(run_dir=str(run_path),
                                  stage_seconds=stage_times(run_path))
    else:
        result["last_run"] = None
    result["peak_memory_mib"] = peak_memory_mib()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["profile"] = profile
    return result


def format_bench_all(r: dict[str, Any]) -> str:
    """A plain-text table of `bench_all`'s result."""
    from nsrom_lib.bench import format_bench

    t = r["training"]
    lines = [
        f"nsrom bench, profile {r['profile']}, {r['machine']}, CPU {r.get('cpu', '?')}, device {t['device']}, "
        f"{t['threads']} torch threads, load average {r['load_average'][0]:.2f}",
        "",
        format_bench(r["labels"]),
        "",
        f"{'throughput (' + str(t['images']) + ' images of ' + str(t['image_size']) + ' px)':<44} img/s",
        f"  {'classifier training (GloRe, OAA)':<42} {t['classifier_train_img_s']:>8.1f}",
        f"  {'classifier inference (CAMs)':<42} {t['classifier_infer_img_s']:>8.1f}",
        f"  {'segmentation training':<42} {t['segmentation_train_img_s']:>8.1f}",
        f"  {'segmentation inference' + (' (+ flip)' if t['segmentation_test_flip'] else ''):<42} "
        f"{t['segmentation_infer_img_s']:>8.1f}",
        "",
        f"peak resident memory of this process: {r['peak_memory_mib']:.0f} MiB",
    ]
    if r.get("last_run"):
        lines += ["", f"wall time per stage of the last run ({r['last_run']['run_dir']}):"]
        for stage, sec in r["last_run"]["stage_seconds"].items():
            lines.append(f"  {stage:<42} {sec:>8.1f} s")
        lines.append(f"  {'total':<42} {sum(r['last_run']['stage_seconds'].values()):>8.1f} s")
    else:
        lines += ["", "no run of this profile yet: `make run` first for the per-stage times"]
    lines.append(f"\n(bench itself took {r['seconds']:.0f} s)")
    return "\n".join(lines)
