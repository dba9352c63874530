"""`nsrom bench cost`: what a profile's stages cost in FLOPs, and how long they would take on a
GPU, on paper.

- `network_flops` counts the FLOPs per image of every network a run trains, with
  `torch.utils.flop_counter.FlopCounterMode`, on one batch built as the stages build it (the
  stages' constructors, batch sizes, augmentation and losses): the forward pass, forward +
  backward, and the prediction pass (eval mode, with the test-time flip where the run uses it).
  The counter counts convolutions and matrix products, 2 FLOPs per multiply-add; element-wise
  operations, normalisation, pooling, resizing, the losses and the optimiser step are not
  counted. By default it runs on the `meta` device: shapes only, no arithmetic, so even the
  `voc` networks are counted in seconds, with the counts a real run gives.
- `STAGE_PASSES` says which stage runs which network over which images how many times (read
  from `pipeline/stages/`); `stage_costs` turns it into images, passes and FLOPs per stage.
- `estimate` gives minutes per stage on one GPU, FLOPs / (peak x `ASSUMED_UTILISATION`), and on
  4 GPUs, one GPU's time / (4 x `SCALING_EFFICIENCY`).
- `calibrate_cpu` measures the FLOP/s that a few real training steps of each network reach on
  this machine's CPU, beside a plain float32 matrix product, and `crf_seconds` the dense CRF's
  time per image, which runs on the CPU whatever the device.

No GPU has run any stage of this project: the GPU minutes are estimates, not measurements.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nsrom_lib import train as T
from nsrom_lib.cam import iam_loss
from nsrom_lib.config import RunConfig, make_config
from nsrom_lib.device import cpu_model
from nsrom_lib.pipeline import build_classifier, build_segmenter

__all__ = ["GPU", "GPUS", "PRECISION", "ASSUMED_UTILISATION", "SCALING_EFFICIENCY",
           "VOC_TRAIN_AUG", "VOC_VAL", "NETWORKS", "STAGE_PASSES", "cost_config", "split_sizes",
           "count_flops", "network_flops", "stage_costs", "estimate", "calibrate_cpu",
           "crf_seconds", "PREDICT_BATCH", "bench_cost", "format_bench_cost"]


@dataclass(frozen=True)
class GPU:
    """A GPU's peak dense throughput in TFLOP/s, per kind of arithmetic."""

    name: str
    bf16: float  # bfloat16 on the tensor cores
    tf32: float  # TF32 on the tensor cores: float32 convolutions through cuDNN
    fp32: float  # float32 without the tensor cores


#: Peak dense TFLOP/s from the vendors' data sheets. NVIDIA prints the tensor-core figures with
#: structured sparsity (marked *); the dense figure is half of that.
GPUS = {
    # NVIDIA H200 Tensor Core GPU data sheet, H200 SXM column: FP32 67 TFLOPS,
    # TF32 Tensor Core 989 TFLOPS*, BFLOAT16 Tensor Core 1,979 TFLOPS*
    "h200": GPU("NVIDIA H200 SXM", bf16=989.5, tf32=494.5, fp32=67.0),
    # NVIDIA A100 Tensor Core GPU data sheet, A100 80GB SXM column: FP32 19.5 TFLOPS,
    # TF32 Tensor Core 156 | 312* TFLOPS, BFLOAT16 Tensor Core 312 | 624* TFLOPS
    "a100": GPU("NVIDIA A100 SXM", bf16=312.0, tf32=156.0, fp32=19.5),
}

#: The arithmetic each network runs in on CUDA, as the code stands: the segmentation network
#: trains and predicts under bfloat16 autocast (`train.train_segmentation`,
#: `train.predict_segmentation`); the classifier and the IAM train and predict in float32 (the
#: training loop's autocast is for the CPU only, `cpu_bf16`), and cuDNN runs float32
#: convolutions on the TF32 tensor cores by default (`torch.backends.cudnn.allow_tf32`).
PRECISION = {"classifier": "tf32", "classifier_no_glore": "tf32", "iam": "tf32",
             "iam_no_glore": "tf32", "segmentation": "bf16"}

#: Assumption, not a measurement: the share of its peak a GPU reaches on these convolutional
#: networks, training and predicting alike. A round figure of our own for large convolutions in
#: mixed precision; no GPU has run a stage of this project, so none could be measured.
ASSUMED_UTILISATION = 0.35

#: Assumption: the throughput of 4 GPUs over 4 x one GPU's, data-parallel within one machine.
#: The pipeline trains on one device; this is what data-parallel training would give.
SCALING_EFFICIENCY = 0.9

#: PASCAL VOC 2012 with the SBD masks (train_aug) and its val split: the `voc` profile's images.
VOC_TRAIN_AUG, VOC_VAL = 10_582, 1_449

#: The trained networks of a run, as `network_flops` names them.
NETWORKS = ("classifier", "classifier_no_glore", "iam", "iam_no_glore", "segmentation")

#: Which stage runs which network over which split, how many times (pipeline/stages/*.py), for a
#: run through `results`. times: a RunConfig field (epochs), "once", or "once with warm-up" (1
#: when cls_warmup_epochs > 0, else 0). pass: "train" = forward + backward per image and epoch;
#: "predict" = the prediction pass (for the segmentation network: plain and flipped when
#: seg_test_flip, then the dense CRF on the CPU when seg_crf); "labels" = label math on stored
#: maps or predictions, no network.
STAGE_PASSES: tuple[tuple[str, str | None, str, str, str], ...] = (
    # stage               network                split    times                pass
    ("classifier/warmup", "classifier_no_glore", "train", "cls_warmup_epochs", "train"),
    ("classifier/warmup", "classifier_no_glore", "train", "once with warm-up", "predict"),
    ("classifier/warmup", "classifier_no_glore", "val", "once with warm-up", "predict"),
    ("classifier", "classifier", "train", "cls_epochs", "train"),  # OAA reads these forwards
    ("classifier", "classifier", "train", "once", "predict"),  # CAMs: train mAP, map quality
    ("classifier", "classifier", "val", "once", "predict"),  # val mAP
    ("classifier/no_glore", "classifier_no_glore", "train", "cls_epochs", "train"),
    ("classifier/no_glore", "classifier_no_glore", "train", "once", "predict"),
    ("classifier/no_glore", "classifier_no_glore", "val", "once", "predict"),
    ("iam", "iam", "train", "iam_epochs", "train"),
    ("iam/no_glore", "iam_no_glore", "train", "iam_epochs", "train"),
    ("maps", "classifier", "train", "once", "predict"),  # the CAMs
    ("maps", "iam", "train", "once", "predict"),  # the OA-CAMs
    ("maps/no_glore", "classifier_no_glore", "train", "once", "predict"),
    ("maps/no_glore", "iam_no_glore", "train", "once", "predict"),
    ("pseudo", None, "train", "once", "labels"),
    ("pseudo/cam", None, "train", "once", "labels"),
    ("pseudo/accumulated", None, "train", "once", "labels"),
    ("pseudo/no_glore", None, "train", "once", "labels"),
    ("seg1/gt", "segmentation", "train", "seg_epochs", "train"),  # the upper bound
    ("seg1/gt", "segmentation", "val", "once", "predict"),
    ("seg1/be", "segmentation", "train", "seg_epochs", "train"),
    ("seg1/be", "segmentation", "val", "once", "predict"),
    ("seg1", "segmentation", "train", "seg_epochs", "train"),
    ("seg1", "segmentation", "val", "once", "predict"),
    ("seg1", "segmentation", "train", "once", "predict"),  # train_pred: NSRM's input
    ("seg1/cam", "segmentation", "train", "seg_epochs", "train"),
    ("seg1/cam", "segmentation", "val", "once", "predict"),
    ("seg1/no_glore", "segmentation", "train", "seg_epochs", "train"),
    ("seg1/no_glore", "segmentation", "val", "once", "predict"),
    ("seg1/no_glore", "segmentation", "train", "once", "predict"),  # train_pred
    ("masked", None, "train", "once", "labels"),
    ("masked/no_glore", None, "train", "once", "labels"),
    ("seg2", "segmentation", "train", "seg_epochs", "train"),
    ("seg2", "segmentation", "val", "once", "predict"),
    ("seg2/no_glore", "segmentation", "train", "seg_epochs", "train"),
    ("seg2/no_glore", "segmentation", "val", "once", "predict"),
    ("results", None, "val", "once", "labels"),  # measures the stored val predictions
)


# ----------------------------------------------------------------------------- FLOPs per image


def cost_config(profile: str = "voc") -> RunConfig:
    """The configuration of `profile` for counting: no ImageNet weights (the counts do not depend
    on the weights) and, for the `voc` profile, a dataset folder that is never read."""
    extra = {"data_root": "VOC2012 (not read)"} if profile == "voc" else {}
    return make_config(profile, pretrained=False, seg_pretrained=False, **extra)


def split_sizes(cfg: RunConfig) -> dict[str, int]:
    """Training and val images of a run: the profile's n_train / n_val, or (0: the dataset's own
    splits) PASCAL VOC's train_aug and val."""
    return {"train": cfg.n_train or VOC_TRAIN_AUG, "val": cfg.n_val or VOC_VAL}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the convolutions and matrix products that `fn()` runs (FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _build(cfg: RunConfig, name: str) -> torch.nn.Module:
    """Network `name` of `NETWORKS`, built by the stages' own constructors."""
    if name == "segmentation":
        return build_segmenter(cfg)
    return build_classifier(cfg, glore=not name.endswith("no_glore"), iam=name.startswith("iam"))


def _recipe(name: str) -> str:
    """The `RunConfig.recipe` a network trains with: classifier, iam or segmentation."""
    return {"classifier": "classifier", "iam": "iam"}.get(name.split("_")[0], "segmentation")


#: Images per prediction batch: the defaults of the prediction functions the stages call.
PREDICT_BATCH = {
    "cams": inspect.signature(T.predict_cams).parameters["batch_size"].default,
    "segmentation": inspect.signature(T.predict_segmentation).parameters["batch_size"].default,
}


def _random_images(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) uint8 images, as `load_split_tensors` holds a split."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _train_batch(cfg: RunConfig, name: str, g: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One training batch of network `name` as its stage builds it: (x, segmentation labels or
    None), on the CPU. The classifier and the IAM: colour jitter and normalisation (`loop.fit`);
    the segmentation network: `augment_segmentation` with the run's scale, flip and jitter."""
    rec = cfg.recipe(_recipe(name))
    images = _random_images(rec.batch_size, cfg.image_size, g)
    if name != "segmentation":
        return T.normalize_images(T.colour_jitter(images, rec.jitter, g)), None
    labels = torch.randint(0, cfg.num_classes + 1, images[:, 0].shape, dtype=torch.uint8,
                           generator=g)  # (B, S, S)
    scale = (1 - cfg.seg_scale, 1 + cfg.seg_scale)
    return T.augment_segmentation(images, labels, g, scale, flip=True, jitter=rec.jitter)


def _loss(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None
          ) -> torch.Tensor:
    """The training loss of network `name` on batch x (the losses of `nsrom_lib.train`); the
    classifier's and the IAM's targets are zeros of the right shape (targets do not change
    the cost)."""
    if name == "segmentation":
        return T.segmentation_loss(model(x).float(), y)
    logits, cam = model(x, return_cam=True)
    if name.startswith("iam"):  # regresses the accumulated maps
        return iam_loss(cam.float(), torch.zeros(cam.shape, device=cam.device))
    return F.multilabel_soft_margin_loss(logits.float(), torch.zeros(logits.shape, device=x.device))


def _predict(cfg: RunConfig, name: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    """The forward passes of one prediction batch: `predict_cams`, or `predict_segmentation`
    with the image and, under seg_test_flip, its mirror."""
    with torch.no_grad():
        if name != "segmentation":
            model(x, return_cam=True)
            return
        for flipped in ((False, True) if cfg.seg_test_flip else (False,)):
            model(x.flip(-1) if flipped else x)


def network_flops(cfg: RunConfig, names: tuple[str, ...] = NETWORKS, device: str = "meta",
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """FLOPs per image of each network in `names`, counted on one batch as the stages build it.

    device: "meta" (shapes only, fast) or "cpu" (the arithmetic too; the same counts).
    Returns {name: {forward, train (forward + backward), predict (the prediction pass: both
    forwards under the test flip), train_batch, predict_batch, predict_versions}}, FLOPs per
    image. The training counts are in train mode on the training batch; the prediction count in
    eval mode on a batch of the prediction functions' size.
    """
    g = torch.Generator().manual_seed(seed)
    return {name: _network_flops(cfg, name, device, g) for name in names}


def _network_flops(cfg: RunConfig, name: str, device: str, g: torch.Generator) -> dict[str, Any]:
    """`network_flops` of one network."""
    with torch.device(device):
        model = _build(cfg, name)
    x, y = _train_batch(cfg, name, g)
    x, y = x.to(device), (None if y is None else y.to(device))
    b = x.shape[0]
    model.train()
    forward = count_flops(lambda: _loss(name, model, x, y))
    train = count_flops(lambda: _loss(name, model, x, y).backward())
    pb = PREDICT_BATCH["segmentation" if name == "segmentation" else "cams"]
    xp = T.normalize_images(_random_images(pb, cfg.image_size, g)).to(device)
    model.eval()
    predict = count_flops(lambda: _predict(cfg, name, model, xp))
    versions = 2 if name == "segmentation" and cfg.seg_test_flip else 1
    return dict(forward=forward / b, train=train / b, predict=predict / pb, train_batch=b,
                predict_batch=pb, predict_versions=versions)


# ----------------------------------------------------------------------------- the stages


def _times(cfg: RunConfig, times: str) -> int:
    """How many passes over its split a `STAGE_PASSES` row makes."""
    if times == "once":
        return 1
    if times == "once with warm-up":
        return int(cfg.cls_warmup_epochs > 0)
    return int(getattr(cfg, times))


def stage_costs(cfg: RunConfig, flops: dict[str, dict[str, Any]], n_train: int | None = None,
                n_val: int | None = None) -> list[dict[str, Any]]:
    """Images, passes and FLOPs per stage of a run through `results` (`STAGE_PASSES`).

    flops: `network_flops`; n_train / n_val: split sizes (default `split_sizes`). Returns one
    dict per stage that runs, in pipeline order: stage, images (of the splits it reads),
    train_passes (images x epochs, forward + backward), forward_passes (prediction forwards,
    flips counted), crf_images (images through the dense CRF), flop, and seconds_at (FLOPs per
    kind of arithmetic, `PRECISION`; `estimate` divides them by a GPU's peak).
    """
    sizes = split_sizes(cfg)
    sizes = {"train": n_train or sizes["train"], "val": n_val or sizes["val"]}
    rows: dict[str, dict[str, Any]] = {}
    for stage, net, split, times, kind in STAGE_PASSES:
        if stage == "classifier/warmup" and cfg.cls_warmup_epochs == 0:
            continue  # no warm-up: the stage does not run
        row = rows.setdefault(stage, dict(stage=stage, splits=set(), train_passes=0,
                                          forward_passes=0, crf_images=0, flop=0.0,
                                          flop_by_precision={}))
        row["splits"].add(split)
        if net is None:
            continue
        n = sizes[split] * _times(cfg, times)
        if kind == "train":
            row["train_passes"] += n
            flop = n * flops[net]["train"]
        else:
            row["forward_passes"] += n * flops[net]["predict_versions"]
            row["crf_images"] += n if net == "segmentation" and cfg.seg_crf else 0
            flop = n * flops[net]["predict"]
        row["flop"] += flop
        by = row["flop_by_precision"]
        by[PRECISION[net]] = by.get(PRECISION[net], 0.0) + flop
    out = []
    for row in rows.values():
        splits = row.pop("splits")
        out.append(dict(row, images=sum(sizes[s] for s in sorted(splits))))
    return out


def estimate(rows: list[dict[str, Any]], gpu: GPU, utilisation: float = ASSUMED_UTILISATION,
             scaling: float = SCALING_EFFICIENCY, gpus: int = 4, tf32: bool = True
             ) -> list[dict[str, Any]]:
    """`stage_costs` rows with minutes_1 (one GPU: FLOPs / (peak x utilisation), per kind of
    arithmetic) and minutes_n (`gpus` GPUs: minutes_1 / (gpus x scaling)). tf32=False prices
    the float32 networks at the plain float32 peak (cuDNN's TF32 turned off)."""
    peak = {"bf16": gpu.bf16, "tf32": gpu.tf32 if tf32 else gpu.fp32, "fp32": gpu.fp32}
    out = []
    for row in rows:
        seconds = sum(f / (peak[p] * 1e12 * utilisation) for p, f in row["flop_by_precision"].items())
        out.append(dict(row, minutes_1=seconds / 60, minutes_n=seconds / 60 / (gpus * scaling)))
    return out


# ----------------------------------------------------------------------------- this machine's CPU


def _matmul_flop_per_s(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 n x n matrix product on this CPU (the best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def calibrate_cpu(cfg: RunConfig, names: tuple[str, ...] = NETWORKS, image_size: int = 64,
                  batch_size: int = 2, steps: int = 3, seed: int = 0) -> dict[str, Any]:
    """Achieved FLOP/s of a few real training steps of each network on this CPU, small size.

    Each network of `cfg` is built at `image_size` px and trained one untimed step, then
    `steps` timed steps of `batch_size` images (forward, loss, backward, the run's optimiser),
    the networks taking turns step by step so that other work on the machine hits them alike;
    the fastest step of each is kept. Batches are built beforehand: only the step is timed.
    FLOPs per step come from `network_flops` at the same size. Returns cpu, threads, load
    average, image_size, batch_size, steps, matmul_flop_per_s (a float32 1024 x 1024 product:
    the CPU's practical ceiling) and, per network, flop_per_step, seconds_per_step, flop_per_s
    and of_matmul (flop_per_s over the matmul's).
    """
    small = dataclasses.replace(cfg, image_size=image_size, cls_batch_size=batch_size,
                                iam_batch_size=batch_size, seg_batch_size=batch_size)
    threads = T.configure_threads(cfg.num_threads)
    counts = network_flops(small, names)
    g = torch.Generator().manual_seed(seed)
    trainers = {name: _trainer(small, name, g) for name in names}
    for step in trainers.values():
        step()  # untimed: the first call allocates and picks kernels
    best = dict.fromkeys(names, float("inf"))
    for _ in range(steps):
        for name, step in trainers.items():
            best[name] = min(best[name], step())
    matmul = _matmul_flop_per_s()
    out: dict[str, Any] = dict(cpu=cpu_model(), threads=threads, load_average=os.getloadavg()[0],
                               image_size=image_size, batch_size=batch_size, steps=steps,
                               matmul_flop_per_s=matmul, networks={})
    for name in names:
        per_step = counts[name]["train"] * batch_size
        out["networks"][name] = dict(flop_per_step=per_step, seconds_per_step=best[name],
                                     flop_per_s=per_step / best[name],
                                     of_matmul=per_step / best[name] / matmul)
    return out


def _trainer(cfg: RunConfig, name: str, g: torch.Generator):
    """A function that makes one training step of network `name` on the CPU, on a batch built
    as its stage builds it (beforehand), and returns the step's seconds."""
    model = _build(cfg, name).train()
    rec = cfg.recipe(_recipe(name))
    opt = T.make_optimizer(model, rec.optimizer, rec.lr, rec.weight_decay)
    x, y = _train_batch(cfg, name, g)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _loss(name, model, x, y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def crf_seconds(cfg: RunConfig, images: int = 2, seed: int = 0) -> float | None:
    """Seconds per image of the dense CRF (`crf.crf_labels`, the CPU) at the run's image size
    and label count, on blocky synthetic images (16 px squares of one colour; noise would be
    slower, real photographs lie in between); None without seg_crf or the CRF package."""
    from nsrom_lib.crf import CRFUnavailable, crf_labels, crf_params_for, require_densecrf

    if not cfg.seg_crf:
        return None
    try:
        require_densecrf()
    except CRFUnavailable:
        return None
    g = torch.Generator().manual_seed(seed)
    S, L = cfg.image_size, cfg.num_classes + 1
    blocks = _random_images(images, -(-S // 16), g).float()
    pictures = F.interpolate(blocks, scale_factor=16, mode="nearest")[..., :S, :S].to(torch.uint8)
    logits = 3 * torch.randn(images, L, -(-S // 8), -(-S // 8), generator=g)
    probs = F.interpolate(logits, size=(S, S), mode="bilinear", align_corners=False).softmax(1)
    t0 = time.perf_counter()
    crf_labels(pictures, probs, crf_params_for(S))
    return (time.perf_counter() - t0) / images


# ----------------------------------------------------------------------------- the command


def bench_cost(profile: str = "voc", gpu: str = "h200", cpu_steps: int = 3) -> dict[str, Any]:
    """Everything `nsrom bench cost` prints: the FLOPs per image of each network, the stage
    table with GPU minutes on 1 and 4 GPUs, the assumptions, and (cpu_steps > 0) this CPU's
    measured FLOP/s and the dense CRF's seconds per image."""
    if gpu not in GPUS:
        raise ValueError(f"--gpu {gpu!r}: choose one of {', '.join(GPUS)}")
    cfg = cost_config(profile)
    flops = network_flops(cfg)
    rows = estimate(stage_costs(cfg, flops), GPUS[gpu])
    total = {k: sum(r[k] for r in rows) for k in ("train_passes", "forward_passes", "crf_images",
                                                   "flop", "minutes_1", "minutes_n")}
    fp32 = estimate(stage_costs(cfg, flops), GPUS[gpu], tf32=False)
    crf = crf_seconds(cfg) if cpu_steps > 0 else None
    return dict(
        profile=profile, image_size=cfg.image_size, splits=split_sizes(cfg), gpu=gpu,
        gpu_name=GPUS[gpu].name, peak_tflops=dataclasses.asdict(GPUS[gpu]),
        utilisation=ASSUMED_UTILISATION, scaling=SCALING_EFFICIENCY, gpus=4,
        networks=flops, stages=rows, total=total,
        minutes_1_without_tf32=sum(r["minutes_1"] for r in fp32),
        cpu=calibrate_cpu(cfg, steps=cpu_steps) if cpu_steps > 0 else None,
        crf_seconds_per_image=crf,
        crf_hours_one_core=None if crf is None else crf * total["crf_images"] / 3600,
    )


def format_bench_cost(r: dict[str, Any]) -> str:
    """A plain-text report of `bench_cost`'s result."""
    p = r["peak_tflops"]
    lines = [
        f"nsrom bench cost, profile {r['profile']}: {r['splits']['train']:,} training and "
        f"{r['splits']['val']:,} val images of {r['image_size']} px, on paper",
        f"{r['gpu_name']}: peak dense {p['bf16']:g} TFLOP/s bf16, {p['tf32']:g} TF32, "
        f"{p['fp32']:g} fp32 (data sheet); assumed utilisation {r['utilisation']:.2f}, "
        f"{r['gpus']} GPUs at scaling efficiency {r['scaling']:.2f}",
        "",
        f"{'network':<20} {'GFLOP/img fwd':>14} {'fwd+bwd':>9} {'predict':>9}  on CUDA",
    ]
    for name, f in r["networks"].items():
        flip = " (+ flip)" if f["predict_versions"] == 2 else ""
        lines.append(f"{name:<20} {f['forward'] / 1e9:>14.1f} {f['train'] / 1e9:>9.1f} "
                     f"{f['predict'] / 1e9:>9.1f}  {PRECISION[name]}{flip}")
    lines += ["", f"{'stage':<20} {'images':>7} {'img x fwd+bwd':>14} {'img x fwd':>10} {'TFLOP':>9} "
              f"{'min 1 GPU':>10} {'min ' + str(r['gpus']) + ' GPUs':>11}"]
    for s in [*r["stages"], dict(r["total"], stage="total", images=None)]:
        images = "" if s["images"] is None else f"{s['images']:,}"
        lines.append(f"{s['stage']:<20} {images:>7} {s['train_passes']:>14,} "
                     f"{s['forward_passes']:>10,} {s['flop'] / 1e12:>9,.0f} "
                     f"{s['minutes_1']:>10.1f} {s['minutes_n']:>11.1f}")
    hours = r["total"]["minutes_1"] / 60
    lines += ["", f"1 GPU: {hours:.1f} h of network arithmetic ({r['minutes_1_without_tf32'] / 60:.1f} h "
              "if the float32 networks ran without TF32)"]
    if r["crf_seconds_per_image"] is not None:
        lines.append(f"dense CRF on the CPU: {r['total']['crf_images']:,} images x "
                     f"{r['crf_seconds_per_image']:.2f} s (measured here) = "
                     f"{r['crf_hours_one_core']:.1f} h on one core")
    if r["cpu"] is not None:
        lines += ["", _format_cpu(r["cpu"])]
    lines.append("GPU minutes are estimates from counted FLOPs, not measurements.")
    return "\n".join(lines)


def _format_cpu(c: dict[str, Any]) -> str:
    """The calibration part of the report."""
    lines = [f"this CPU ({c['cpu']}, {c['threads']} torch threads, load average "
             f"{c['load_average']:.2f}): float32 1024^2 matmul {c['matmul_flop_per_s'] / 1e9:.0f} "
             f"GFLOP/s; training steps of {c['batch_size']} images of {c['image_size']} px, "
             f"best of {c['steps']}:",
             f"{'network':<20} {'GFLOP/step':>11} {'s/step':>8} {'GFLOP/s':>8} {'of matmul':>10}"]
    for name, n in c["networks"].items():
        lines.append(f"{name:<20} {n['flop_per_step'] / 1e9:>11.1f} {n['seconds_per_step']:>8.2f} "
                     f"{n['flop_per_s'] / 1e9:>8.1f} {n['of_matmul']:>10.2f}")
    return "\n".join(lines)
