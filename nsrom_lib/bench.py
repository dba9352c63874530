"""Benchmark of the label stages: batched torch functions vs the per-image numpy references.

`python -m nsrom_lib bench labels`. Both versions run on the same inputs in
one process and their outputs are compared for exact equality before any number is printed:

- pseudo: BE + POM + 1% rule (docs/method.md §3, §4): `pseudo_labels` vs `pseudo_label_ref`,
  on batches of consecutive images, and again on batches of images that list the same number
  of classes (the order `labels pseudo` batches them in; the work is the same);
- masked: NSRM (§6): `non_salient_region_masking` vs `non_salient_region_masking_ref`.

Inputs: the training split of a profile's SynthVOC (the `default` profile: 2000 images of
96 x 96 px, 6 classes). Its maps are either a run's (`--run-dir`: `<run>/maps/oacam` and
`<run>/maps/cam`, written by the maps stage) or, without a run, derived from the ground truth
deterministically by `gt_derived_maps`: for each listed class c, the GT mask of c blurred with a
Gaussian (OA-CAM: sigma = 6% of the image side, spread like an integral attention map; CAM:
sigma = 3%, squared, peaked like a classifier's discriminative part), max-normalised to 0..255.
The NSRM prediction stands in as the GT mask (void -> background). The GT-derived maps cover
every object, salient or not, so every rule of BE and POM fires on them.

Timing: the reference loops over images in Python with numpy (one thread); the batched path
runs `batch_size` images per call with torch (`threads` threads, default 1). The repeats
alternate between the versions (reference, batched, ...) so that a change of the machine's
load hits both, and keep the best wall time of each; the process CPU time of the same runs
is reported too (`cpu_ratio`): on a shared machine it moves less than the wall time. Numbers
depend on the machine's load: say so next to them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "gt_derived_maps",
    "load_bench_inputs",
    "bench_labels",
    "format_bench",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BATCH_SIZES",
]

#: Images per batched call, per stage. Measured on the 2-core build machine at 96 x 96 px,
#: 1 thread (`nsrom bench labels --batch-size B`): pseudo labels: at 64 the fixed cost of a
#: call (about 0.9 ms) dominates, 256 and 512 best (within noise), 1000 and 2000 slower
#: (cache); NSRM: 64 best (11x), 256 slower (8x).
DEFAULT_BATCH_SIZES = {"pseudo": 256, "masked": 64}
DEFAULT_BATCH_SIZE = DEFAULT_BATCH_SIZES["pseudo"]


def gt_derived_maps(
    mask: np.ndarray, present: np.ndarray, oa_sigma: float = 0.06, cam_sigma: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stand-in OA-CAMs and CAMs from ground-truth masks (for tests and benchmarks).

    mask: (N, H, W) uint8 GT (0 bg, c + 1 class c, 255 void); present: (N, C) bool.
    oa_sigma, cam_sigma: Gaussian sigmas as a share of the image side.
    Returns oa_cam, cam: (N, C, H, W) uint8, zero for absent classes; for a listed class, the
    blurred GT mask of the class (the CAM squared) max-normalised to 0..255.
    """
    from scipy.ndimage import gaussian_filter

    N, H, W = mask.shape
    C = present.shape[1]
    oa_cam = np.zeros((N, C, H, W), np.uint8)  # (N, C, H, W)
    cam = np.zeros((N, C, H, W), np.uint8)  # (N, C, H, W)
    side = max(H, W)
    for c in range(C):
        rows = np.nonzero(present[:, c])[0]
        if rows.size == 0:
            continue
        obj = (mask[rows] == c + 1).astype(np.float32)  # (n, H, W)
        for out, sigma, power in ((oa_cam, oa_sigma, 1), (cam, cam_sigma, 2)):
            blur = gaussian_filter(obj, sigma=(0, sigma * side, sigma * side)) ** power  # (n, H, W)
            peak = blur.reshape(len(rows), -1).max(axis=1)[:, None, None]  # (n, 1, 1)
            out[rows, c] = np.round(255 * blur / np.maximum(peak, 1e-12)).astype(np.uint8)
    return oa_cam, cam


def dataset_root(profile: str) -> Path:
    """The profile's SynthVOC folder (as the data stage names it), generated if absent."""
    from nsrom_lib.config import make_config
    from nsrom_lib.data.synthvoc import generate_synthvoc
    from nsrom_lib.pipeline import default_data_dir, synthvoc_config_for

    cfg = make_config(profile)
    scfg = synthvoc_config_for(cfg)
    root = default_data_dir() / f"synthvoc-{cfg.profile}-s{cfg.seed}-{scfg.hash()[:8]}"
    generate_synthvoc(root, scfg, progress=False)  # reused when complete
    return root


_dataset_root = dataset_root  # the former private name


def load_bench_inputs(
    run_dir: str | os.PathLike | None = None, profile: str = "default", limit: int | None = None
) -> dict[str, Any]:
    """The benchmark's inputs: a profile's training split with GT-derived maps, or a run's maps.

    Returns sal (N, H, W), oa_cam and cam (N, C, H, W), pred and mask (N, H, W) uint8, present
    (N, C) bool, classes (list per image), source (a sentence) and num_classes.
    """
    from nsrom_lib.data.stats import load_split_arrays
    from nsrom_lib.data.voc import read_class_names

    if run_dir is not None:
        from nsrom_lib.data.maps_io import iter_batches, load_label_inputs
        from nsrom_lib.pipeline import ensure_data, open_run

        cfg_path = Path(run_dir) / "config.json"
        if not cfg_path.is_file():
            from nsrom_lib.data.io import DataError

            raise DataError(f"{cfg_path} not found: --run-dir must be a run folder (runs/<name>).")
        values = json.loads(cfg_path.read_text())
        values.pop("extra", None)
        run = open_run(run_dir, values.pop("profile"), **values)
        root = ensure_data(run, progress=False)
    else:
        root = dataset_root(profile)
    arrays = load_split_arrays(root, "train", limit=limit)
    C = len(read_class_names(root))
    N = len(arrays["names"])
    present = np.zeros((N, C), bool)
    for i, cl in enumerate(arrays["classes"]):
        present[i, cl] = True
    mask = arrays["mask"]
    if run_dir is not None:
        from nsrom_lib.data.voc import cls_list_path

        inputs = load_label_inputs(
            cls_list_path(root, "train"),
            root / "Saliency",
            oacam_dir=Path(run_dir) / "maps" / "oacam",
            cam_dir=Path(run_dir) / "maps" / "cam",
            num_classes=C,
        )
        by_name = {e.name: e for e in inputs.entries}
        inputs.entries = [by_name[n] for n in arrays["names"]]
        if len(inputs.sizes) != 1:
            raise ValueError("the run's maps have several sizes; the benchmark needs one size")
        pos = {n: i for i, n in enumerate(arrays["names"])}
        oa_cam = np.zeros((N, C, *mask.shape[1:]), np.uint8)  # (N, C, H, W)
        cam = np.zeros_like(oa_cam)  # (N, C, H, W)
        for batch in iter_batches(inputs, batch_size=256):
            idx = [pos[n] for n in batch.names]
            oa_cam[idx], cam[idx] = batch.oa_cam, batch.cam
        source = f"run {run_dir}: maps/oacam and maps/cam of {N} training images"
    else:
        oa_cam, cam = gt_derived_maps(mask, present)
        source = (
            f"SynthVOC '{profile}' training split ({N} images), maps derived from GT "
            "(bench.gt_derived_maps)"
        )
    pred = np.where(mask == 255, 0, mask).astype(np.uint8)  # stand-in round-1 prediction
    return dict(
        sal=arrays["saliency"],
        oa_cam=oa_cam,
        cam=cam,
        present=present,
        mask=mask,
        pred=pred,
        classes=arrays["classes"],
        names=arrays["names"],
        num_classes=C,
        source=source,
    )


def _best_times(fns: dict[str, Any], repeats: int) -> dict[str, tuple[float, float, Any]]:
    """{name: (best wall s, best process CPU s, output)} of each fn, the repeats alternating
    between them (a, b, c, a, b, c, ...)."""
    best: dict[str, list] = {k: [float("inf"), float("inf"), None] for k in fns}
    for _ in range(max(repeats, 1)):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            t1, c1 = time.perf_counter(), time.process_time()
            b = best[k]
            b[0], b[1], b[2] = min(b[0], t1 - t0), min(b[1], c1 - c0), out
    return {k: (v[0], v[1], v[2]) for k, v in best.items()}


def _row(stage: str, n: int, ref: tuple, got: tuple, expected: np.ndarray) -> dict[str, Any]:
    return dict(
        stage=stage,
        images=n,
        ref_img_s=n / ref[0],
        batched_img_s=n / got[0],
        ratio=ref[0] / got[0],
        cpu_ratio=ref[1] / max(got[1], 1e-9),
        identical=bool(np.array_equal(got[2].cpu().numpy(), expected)),
    )


def _chunked(fn, out, tensors, bs: int, threads: int | None, sync) -> Any:
    """fn over batches of `bs` images of the (N, ...) tensors, written into out (N, H, W)."""
    import torch

    from nsrom_lib.labels import torch_threads

    N = out.shape[0]
    with torch_threads(threads), torch.inference_mode():
        for i in range(0, N, bs):
            out[i : i + bs] = fn(*(a[i : i + bs] for a in tensors))
    sync()
    return out


def _pseudo_rows(x, t, lists, ref_out, outs, bs, timed) -> tuple[list[dict], np.ndarray]:
    """The pseudo-label rows: reference vs batched, in list order and by class count."""
    import torch

    from nsrom_lib import labels as L

    N, C = x["present"].shape

    def pseudo_ref() -> np.ndarray:
        for i, cl in enumerate(lists):
            ref_out[i] = L.pseudo_label_ref(x["sal"][i], x["oa_cam"][i, cl], x["cam"][i, cl], cl, C)
        return ref_out.copy()

    keys = ("sal", "oa_cam", "cam", "present")
    # the same, with the images sorted by their number of classes (the order the label
    # commands batch them in)
    order = np.argsort(-x["present"].sum(axis=1), kind="stable")
    back = torch.from_numpy(np.argsort(order)).to(t["sal"].device)
    order = torch.from_numpy(order).to(t["sal"].device)
    s = {k: t[k].index_select(0, order) for k in keys}

    def pseudo_sorted() -> torch.Tensor:
        out = timed(L.pseudo_labels, outs[1], [s[k] for k in keys], bs)
        return torch.index_select(out, 0, back, out=outs[2])  # back to list order

    def pseudo_fast() -> torch.Tensor:
        from nsrom_lib.labels import _fast

        with _fast.scratch_memory():
            return timed(_fast.pseudo_labels, outs[1], [t[k] for k in keys], bs)

    fns = dict(
        ref=pseudo_ref,
        bat=lambda: timed(L.pseudo_labels, outs[0], [t[k] for k in keys], bs),
        sorted=pseudo_sorted,
    )
    if x["fast"]:
        fns["fast"] = pseudo_fast
    for k in fns:  # warm-up (allocator, CUDA context)
        if k != "ref":
            fns[k]()
    res = _best_times(fns, x["repeats"])
    ref = res["ref"][2]
    rows = [
        _row("pseudo (BE+POM+1%)", N, res["ref"], res["bat"], ref),
        _row("  same, by class count", N, res["ref"], res["sorted"], ref),
    ]
    if x["fast"]:
        rows.append(_row("  same, labels._fast", N, res["ref"], res["fast"], ref))
    return rows, ref


def _masked_row(x, t, lists, ref_out, outs, bs, timed, pseudo_np: np.ndarray) -> dict:
    """The NSRM row: reference vs batched, on the pseudo labels just computed."""
    import torch

    from nsrom_lib import labels as L

    t = dict(t, pseudo=torch.from_numpy(pseudo_np).to(t["sal"].device))

    def masked_ref() -> np.ndarray:
        for i, cl in enumerate(lists):
            ref_out[i] = L.non_salient_region_masking_ref(
                x["pred"][i], pseudo_np[i], x["sal"][i], cl
            )
        return ref_out.copy()

    args = [t[k] for k in ("pred", "pseudo", "sal", "present")]
    fns = dict(ref=masked_ref, bat=lambda: timed(L.non_salient_region_masking, outs[0], args, bs))
    fns["bat"]()
    res = _best_times(fns, x["repeats"])
    return _row("masked (NSRM)", len(lists), res["ref"], res["bat"], res["ref"][2])


def bench_labels(
    run_dir: str | os.PathLike | None = None,
    profile: str = "default",
    device: str = "auto",
    batch_size: int | None = None,
    limit: int | None = None,
    repeats: int = 3,
    threads: int | None = 1,
    inputs: dict[str, Any] | None = None,
    fast: bool = False,
) -> dict[str, Any]:
    """Time batched vs per-image label functions on the same inputs; outputs asserted identical.

    batch_size: images per batched call (None: DEFAULT_BATCH_SIZES, per stage).
    fast: add a row for the opt-in fast path of the pseudo labels (labels._fast).
    threads: torch CPU threads for the batched path (None or 0: torch's setting); the numpy
    reference runs on one. Returns {rows: [{stage, images, ref_img_s, batched_img_s, ratio,
    cpu_ratio, identical}], device, batch_size (the pseudo stage's), batch_sizes, threads,
    source, size, machine, load_average}. ratio: of the best wall times; cpu_ratio: of the
    best process CPU times.
    """
    import torch

    from nsrom_lib.device import cpu_model, host, resolve_device

    dev = resolve_device(device)
    sizes = {k: batch_size or v for k, v in DEFAULT_BATCH_SIZES.items()}
    x = dict(inputs if inputs is not None else load_bench_inputs(run_dir, profile, limit))
    x["repeats"], x["fast"] = repeats, fast
    N, C = x["present"].shape
    H, W = x["sal"].shape[1:]
    lists = [np.nonzero(p)[0].tolist() for p in x["present"]]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn, out, tensors, bs):
        return _chunked(fn, out, tensors, bs, threads, sync)

    # Both versions write their labels into an (N, H, W) array allocated once, so that the
    # timings measure the labels, not the first touch of fresh result memory (page faults:
    # about 10 ms for 2000 x 96 x 96 on the build machine, for either version)
    ref_out = np.empty((N, H, W), np.uint8)
    outs = [torch.empty((N, H, W), dtype=torch.uint8, device=dev) for _ in range(3)]
    t = {
        k: torch.from_numpy(np.ascontiguousarray(x[k])).to(dev)
        for k in ("sal", "oa_cam", "cam", "present", "pred")
    }
    common = (x, t, lists, ref_out, outs)
    rows, pseudo_np = _pseudo_rows(*common, sizes["pseudo"], timed)
    rows.append(_masked_row(*common, sizes["masked"], timed, pseudo_np))
    return dict(
        rows=rows,
        device=str(dev),
        batch_size=sizes["pseudo"],
        batch_sizes=sizes,
        threads=threads or torch.get_num_threads(),
        source=x["source"],
        size=f"{H}x{W}",
        num_classes=C,
        machine=host(),
        cpu=cpu_model(),
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )


def _batch_text(result: dict[str, Any]) -> str:
    sizes = result.get("batch_sizes") or {"pseudo": result["batch_size"]}
    if len(set(sizes.values())) == 1:
        return str(next(iter(sizes.values())))
    return ", ".join(f"{v} ({k})" for k, v in sizes.items())


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark result as a text table."""
    lines = [
        f"inputs: {result['source']}; {result['size']} px, {result['num_classes']} classes",
        f"batched: device {result['device']}, batch {_batch_text(result)}, "
        f"{result['threads']} torch thread(s); reference: numpy, one image at a time",
        f"machine: {result['machine']}, CPU {result.get('cpu', '?')}"
        + (f", load average {result['load_average']:.2f} (shared machines give noisy timings)"
           if result.get("load_average") is not None else ""),
        "",
        f"{'stage':<24} {'images':>7} {'reference img/s':>16} {'batched img/s':>14} "
        f"{'ratio':>7} {'cpu ratio':>9}  identical",
    ]
    for r in result["rows"]:
        cpu = f"{r['cpu_ratio']:>8.2f}x" if "cpu_ratio" in r else f"{'':>9}"
        lines.append(
            f"{r['stage']:<24} {r['images']:>7} {r['ref_img_s']:>16.0f} "
            f"{r['batched_img_s']:>14.0f} {r['ratio']:>6.2f}x {cpu}  "
            f"{'yes' if r['identical'] else 'NO'}"
        )
    return "\n".join(lines)
