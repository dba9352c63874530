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

Figures depend on the machine and its load; the result names both.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["peak_memory_mib", "bench_training", "bench_all", "format_bench_all"]


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0), 1)


def bench_training(profile: str = "default", device: str = "auto", limit: int = 512,
                   epochs: int = 1, seed: int = 0) -> dict[str, Any]:
    """Training and inference throughput of a profile's networks on `limit` training images.

    Returns img/s for classifier training (OAA on), classifier inference (CAMs), segmentation
    training (GT masks as labels; the labels do not change the cost) and segmentation inference.
    """
    import torch

    from nsrom_lib import train as T
    from nsrom_lib.bench import dataset_root
    from nsrom_lib.config import make_config
    from nsrom_lib.data.stats import load_split_arrays
    from nsrom_lib.pipeline import build_classifier, build_segmenter, resolve_device

    cfg = make_config(profile)
    dev = resolve_device(device)
    threads = T.configure_threads(cfg.num_threads)
    root = dataset_root(profile)
    data = T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)
    n = min(limit, len(data["names"]))
    images, labels = data["images"][:n], data["labels"][:n]  # (n, 3, S, S) uint8, (n, C)
    masks = torch.from_numpy(load_split_arrays(root, "train", limit=n)["mask"])  # (n, S, S)

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
