"""Stage `pseudo` (docs/method.md §3–§4): BE and POM pseudo labels from the run's maps.

The label math is `nsrom_lib.labels`, the folders `nsrom_lib.data.maps_io` (the same code as
`python -m nsrom_lib labels pseudo`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsrom_lib import labels as L
from nsrom_lib.config import RunConfig
from nsrom_lib.data.io import read_label_png
from nsrom_lib.data.maps_io import StagedFolder, encode_label, iter_batches, load_label_inputs
from nsrom_lib.data.stats import explorer_inputs, load_split_arrays
from nsrom_lib.data.voc import VOCSegDataset, read_split, write_cls_list
from nsrom_lib.device import resolve_device
from nsrom_lib.metrics import LabelTally
from nsrom_lib.pipeline.run import Run, variant_stage
from nsrom_lib.pipeline.stages.classifier import ensure_maps, load_maps
from nsrom_lib.pipeline.stages.common import GroundTruth, label_record, open_ground_truth
from nsrom_lib.pipeline.stages.data import ensure_data
from nsrom_lib.progress import progress_bar

__all__ = ["PSEUDO_KINDS", "PSEUDO_SOURCES", "pseudo_stage", "pseudo_thresholds",
           "ensure_pseudo", "load_labels", "load_explorer_inputs"]


#: The label folders of the `pseudo` stage: BE + 1% rule, and BE + POM + 1% rule.
PSEUDO_KINDS = ("initial", "pseudo")

#: The maps BE can read (folders of the `maps` stage): the OA-CAM (the method's, the `pseudo`
#: stage itself), the final CAM (no OAA) and the accumulated maps (OAA without the IAM).
PSEUDO_SOURCES = ("oacam", "cam", "accumulated")


def pseudo_stage(glore: bool = True, source: str = "oacam") -> str:
    """The folder of a pseudo label set: `pseudo` (GloRe on, BE on the OA-CAM),
    `pseudo/no_glore`, and for another BE source a sub-folder named after it, e.g. `pseudo/cam`,
    `pseudo/accumulated` (`pseudo/no_glore/cam` with GloRe off)."""
    if source not in PSEUDO_SOURCES:
        raise ValueError(f"source must be one of {PSEUDO_SOURCES}, got {source!r}")
    stage = variant_stage("pseudo", glore)
    return stage if source == "oacam" else f"{stage}/{source}"


def pseudo_thresholds(cfg: RunConfig) -> dict[str, float]:
    """The BE / POM thresholds of a configuration, named as `labels.pseudo_labels` takes them
    (the parameter objects of nsrom_lib.params; make_config has checked their ranges)."""
    return {**cfg.be_params().as_dict(), **cfg.pom_params().as_dict(),
            **cfg.rule_params().as_dict()}


def ensure_pseudo(run: Run, progress: bool = True, batch_size: int = 64,
                  glore: bool = True, source: str = "oacam") -> dict[str, Any]:
    """Stage `pseudo`: the initial (BE) and POM pseudo labels of every training image (§3–§4).

    Reads the run's `maps/oacam` and `maps/cam` folders with the CLI's code
    (`maps_io.load_label_inputs`, `iter_batches`), computes BE once per batch
    (`labels.background_extraction`), then `initial/{name}.png` = BE + 1% rule and
    `pseudo/{name}.png` = BE + POM + 1% rule (VOC-palette PNGs: 0 background, c + 1 class c,
    255 ignore), thresholds from the configuration (`be_fg`, `be_conflict`, `be_bg`, `be_att`,
    `pom_threshold`, `min_label_ratio`). Metrics per kind: ignore share, all-ignore images and,
    against the GT of the training split, precision, coverage, mIoU on labelled pixels and
    (SynthVOC) non-salient / salient object recall and the share of non-salient object pixels
    labelled background; plus the share of pixels POM turned from
    background to ignore, images/s and seconds. Labels are written and measured batch by
    batch (`_write_labels`); the record is written after every file.
    glore=False: the same from the GloRe-off maps, in `pseudo/no_glore/{initial,pseudo}/`.
    source: the maps BE reads (`PSEUDO_SOURCES`): "oacam" (the method), or "cam" / "accumulated"
    (what OAA, and the IAM on top of it, add), with the same thresholds, in `pseudo/cam/`,
    `pseudo/accumulated/` (`pseudo_stage`); POM reads the final CAM in all three. The
    OA-CAM set's key and record are those of the stage `pseudo` before the sources existed.
    """
    stage = pseudo_stage(glore, source)  # checks source first
    ensure_maps(run, progress=progress, glore=glore)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    maps_dir = run.dir / variant_stage("maps", glore)
    th = pseudo_thresholds(cfg)

    def compute() -> dict[str, Any]:
        d = run.stage_dir(stage)
        ds = VOCSegDataset(root, "train", num_classes=cfg.num_classes, with_mask=False)
        names = list(ds.names)
        list_path = d / "train_cls.txt"  # the images and classes the maps stage exported
        write_cls_list(list_path, ds.cls_list())
        inputs = load_label_inputs(
            list_path, ds.saliency_dir, oacam_dir=maps_dir / source,
            cam_dir=maps_dir / "cam", num_classes=cfg.num_classes, strict=True,
            progress=progress)
        device = resolve_device(cfg.device)
        gt = open_ground_truth(root, "train", names)
        t0 = time.perf_counter()
        measures = _write_labels(inputs, th, device, batch_size, d, gt, cfg.num_classes + 1,
                                 progress)
        seconds = time.perf_counter() - t0
        return dict(
            images=len(names),
            thresholds=th,
            **measures,
            label_seconds=round(seconds, 3),  # computing, measuring and writing, together
            images_per_s=round(len(names) / max(seconds, 1e-9), 1),
            device=str(device),
        )

    if source == "oacam":  # the record as before the sources existed
        return run.ensure(stage, compute, thresholds=th, glore=glore)
    return run.ensure(stage, compute, thresholds=th, glore=glore, source=source)


def _write_labels(inputs: Any, th: dict[str, float], device: torch.device, batch_size: int,
                  d: Path, gt: GroundTruth | None, num_labels: int,
                  progress: bool) -> dict[str, Any]:
    """BE once per batch, then the initial (BE + 1% rule) and POM (BE + POM + 1% rule) labels,
    written to `d/initial/` and `d/pseudo/` as each batch is done and measured image by image
    (`metrics.LabelTally`), so no label set of the split is held in memory. Both folders are
    replaced all or nothing (`StagedFolder`); PNGs of images no longer in the split are removed.
    Returns the measures of both kinds and the share of pixels POM turned from background to
    ignore."""
    tallies = {k: LabelTally(num_labels) for k in PSEUDO_KINDS}
    # the batches come grouped by image size: find each image's GT by its name
    index = {n: i for i, n in enumerate(gt.names)} if gt is not None else {}
    pixels = pom_ignored = 0
    bar = progress_bar(total=len(inputs.entries), desc="pseudo labels", unit="img",
                       disable=not progress)
    with (bar, L.torch_threads(1), torch.inference_mode(),  # 1 thread: see torch_threads
          StagedFolder(d / "initial") as initial, StagedFolder(d / "pseudo") as pseudo):
        folders = {"initial": initial, "pseudo": pseudo}
        for batch in iter_batches(inputs, batch_size):
            sal = torch.from_numpy(batch.sal).to(device)  # (B, H, W) uint8
            present = torch.from_numpy(batch.present).to(device)  # (B, C) bool
            oa_cam = torch.from_numpy(batch.oa_cam).to(device)  # (B, C, H, W) uint8
            cam = torch.from_numpy(batch.cam).to(device)  # (B, C, H, W) uint8
            be = L.background_extraction(sal, oa_cam, present, th["fg"], th["conflict"],
                                         th["bg"], th["att"])
            labs = {"initial": L.min_label_ratio_rule(be, th["ratio"]).cpu().numpy(),
                    "pseudo": L.min_label_ratio_rule(
                        L.potential_object_mining(be, cam, present, th["pom"]),
                        th["ratio"]).cpu().numpy()}
            pixels += labs["initial"].size
            pom_ignored += int(((labs["initial"] == 0) & (labs["pseudo"] == 255)).sum())
            for i, name in enumerate(batch.names):
                truth = gt.image(index[name]) if gt is not None else ()
                for kind, lab in labs.items():
                    folders[kind].write(*encode_label((name, lab[i])))
                    tallies[kind].add(lab[i], *truth)
            bar.update(len(batch.names))
    keep = {f"{e.name}.png" for e in inputs.entries}
    for kind in PSEUDO_KINDS:
        for p in (d / kind).glob("*.png"):  # labels of images no longer in the split
            if p.name not in keep:
                p.unlink()
    return dict(**{k: label_record(t, with_gt=gt is not None) for k, t in tallies.items()},
                pom_ignored_share=round(pom_ignored / max(pixels, 1), 4))


def load_labels(run: Run, kind: str = "pseudo", names: list[str] | None = None,
                glore: bool = True, progress: bool = True, source: str = "oacam"):
    """The `pseudo` stage's labels (computing them if needed), in training-split order.

    kind: "initial" (BE) or "pseudo" (BE + POM); names: a subset (default: the whole split);
    glore=False: the GloRe-off ablation's labels; progress: bars of upstream stages still to run;
    source: the maps BE read (`PSEUDO_SOURCES`, default the OA-CAM).
    Returns (N, H, W) uint8 when all images have one size, else a list of (H, W) uint8.
    """
    if kind not in PSEUDO_KINDS:
        raise ValueError(f"kind must be one of {PSEUDO_KINDS}, got {kind!r}")
    ensure_pseudo(run, glore=glore, progress=progress, source=source)
    if names is None:
        names = read_split(ensure_data(run, progress=progress), "train")
    folder = run.dir / pseudo_stage(glore, source) / kind
    labels = [read_label_png(folder / f"{n}.png", f"{kind} label")
              for n in names]
    if labels and len({lab.shape for lab in labels}) == 1:
        return np.stack(labels)
    return labels


def load_explorer_inputs(run: Run, limit: int | None = None) -> dict[str, Any]:
    """Inputs of `widgets.explore_labels` / `ThresholdExplorer` for the first `limit` training
    images of a run: images, saliency, GT (and instances), the run's OA-CAMs and CAMs."""
    ensure_maps(run)
    arrays = load_split_arrays(ensure_data(run), "train", limit=limit)
    oa_cam = load_maps(run, "oacam", arrays["names"], arrays["classes"])
    cam = load_maps(run, "cam", arrays["names"], arrays["classes"])
    return explorer_inputs(arrays, oa_cam, cam, run.cfg.num_classes)
