"""Runs and stages: the run folder, completion records, the `data` stage, notebook execution.

DESIGN.md "Runs, profiles and devices". A run is a folder `runs/<name>/` holding `config.json`,
one sub-folder per stage (`data`, `classifier`, `iam`, `maps`, `pseudo`, `seg1`, `masked`,
`seg2`, `results`) with its artefacts and a `record.json` written only after the artefacts are
complete, and the executed notebooks in `notebooks/`. A stage whose record carries the same key
(a hash of the configuration it depends on) is not recomputed, so every notebook can run alone
and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nsrom_lib.config import RunConfig, config_hash, make_config
from nsrom_lib.data.io import DataError, atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "STAGES",
    "Run",
    "open_run",
    "project_root",
    "default_data_dir",
    "default_runs_dir",
    "resolve_device",
    "ensure_data",
    "dataset_id",
    "STAGE_FIELDS",
    "build_classifier",
    "load_ground_truth",
    "snapshot_indices",
    "ensure_classifier",
    "ensure_iam",
    "ensure_maps",
    "load_classifier",
    "load_iam",
    "load_accumulated",
    "load_oaa_snapshots",
    "MAP_KINDS",
    "map_path",
    "PSEUDO_KINDS",
    "pseudo_thresholds",
    "ensure_pseudo",
    "load_labels",
    "load_maps",
    "load_explorer_inputs",
    "synthvoc_config_for",
    "list_notebooks",
    "run_notebooks",
]

STAGES = ["data", "classifier", "iam", "maps", "pseudo", "seg1", "masked", "seg2", "results"]

# The configuration keys each stage's result depends on (its record key hashes only these; a
# stage not listed depends on the whole configuration). Each includes its upstream's keys.
# Left out on purpose: device, num_threads and channels_last (where and how fast, not what).
_DATA_FIELDS = ("data_root", "image_size", "n_train", "n_val", "num_classes", "seed")
_CLASSIFIER_FIELDS = _DATA_FIELDS + (
    "backbone", "pretrained", "width", "output_stride", "jitter", "cls_epochs", "cls_batch_size",
    "cls_optimizer", "cls_lr", "cls_schedule", "cls_weight_decay", "oaa_snapshots", "oaa_from_epoch",
)
_IAM_FIELDS = _CLASSIFIER_FIELDS + ("iam_epochs", "iam_lr", "iam_batch_size")
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "data": _DATA_FIELDS,
    "classifier": _CLASSIFIER_FIELDS,
    "iam": _IAM_FIELDS,
    "maps": _IAM_FIELDS,
    "pseudo": _IAM_FIELDS + (
        "be_fg", "be_conflict", "be_bg", "be_att", "pom_threshold", "min_label_ratio",
    ),
}


def project_root() -> Path:
    """The repository root when nsrom_lib runs from a checkout, else the current folder."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def default_data_dir() -> Path:
    """Where generated datasets go: $NSROM_DATA_DIR, else `<repo>/data`."""
    return Path(os.environ.get("NSROM_DATA_DIR") or project_root() / "data")


def default_runs_dir() -> Path:
    """Where runs go: $NSROM_RUNS_DIR, else `<repo>/runs`."""
    return Path(os.environ.get("NSROM_RUNS_DIR") or project_root() / "runs")


def resolve_device(device: str = "auto"):
    """`"auto"` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but this machine has no CUDA device; "
            "use --set device=auto (or cpu)."
        )
    return torch.device(device)


class Run:
    """A run folder: configuration, per-stage folders and completion records."""

    def __init__(self, run_dir: str | os.PathLike, cfg: RunConfig):
        self.dir = Path(run_dir).resolve()
        self.cfg = cfg
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "config.json", cfg.to_dict())
        except OSError as e:
            raise OSError(
                f"cannot write the run folder {self.dir}: {e.strerror or e}. "
                "Choose a writable --run-dir."
            ) from e

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, profile={self.cfg.profile!r})"

    def stage_dir(self, stage: str) -> Path:
        """The folder of `stage`, or of a variant `stage/sub` (e.g. `classifier/no_glore`)."""
        if stage.split("/", 1)[0] not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        d = self.dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_key(self, stage: str, fields: Iterable[str] | None = None, **extra: Any) -> str:
        """The key a stage's record must carry: a hash of the configuration (and `extra`).

        fields: the configuration keys the stage depends on (None: those of `STAGE_FIELDS`, or
        all but device and extra for a stage not listed there), so that changing a downstream
        setting does not invalidate an upstream stage.
        """
        values = self.cfg.to_dict()
        values.pop("device", None)  # where it ran does not change what it computes
        values.pop("extra", None)
        if fields is None:
            fields = STAGE_FIELDS.get(stage.split("/", 1)[0])
        if fields is not None:
            values = {k: values[k] for k in fields}
        # every stage depends on the dataset's content, not only on its settings
        return config_hash({"stage": stage, "dataset": dataset_id(self.cfg), **values, **extra})

    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.dir / stage / "record.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, stage: str, key: str | None = None) -> bool:
        rec = self.record(stage)
        return rec is not None and rec.get("key") == (key or self.stage_key(stage))

    def complete(self, stage: str, metrics: dict[str, Any], seconds: float,
                 key: str | None = None, **info: Any) -> dict[str, Any]:
        """Write the stage's record; call only after every artefact of the stage is on disk."""
        rec = dict(
            stage=stage,
            key=key or self.stage_key(stage),
            metrics=metrics,
            seconds=round(seconds, 3),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
            machine=f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)",
            **info,
        )
        atomic_write_json(self.stage_dir(stage) / "record.json", rec)
        return rec

    def ensure(self, stage: str, compute: Callable[[], dict[str, Any]], key: str | None = None,
               **info: Any) -> dict[str, Any]:
        """Run `compute()` (which returns metrics) unless the stage is already done; return the record.

        key: the record's key (default `stage_key(stage)`, the whole configuration).
        """
        key = key or self.stage_key(stage)
        if self.is_done(stage, key):
            log.info("stage %s: done already (%s)", stage, self.dir / stage)
            return self.record(stage) or {}
        t0 = time.perf_counter()
        metrics = compute()
        return self.complete(stage, metrics, time.perf_counter() - t0, key=key, **info)


def open_run(run_dir: str | os.PathLike | None = None, profile: str = "quick", **overrides: Any) -> Run:
    """Open (or create) a run folder for `profile` with `overrides`: what each notebook calls first.

    run_dir None -> `<runs dir>/<profile>`. Overrides equal to None are ignored, so notebook
    parameters such as `data_root=None` keep the profile's value.
    """
    cfg = make_config(profile, **{k: v for k, v in overrides.items() if v is not None})
    return Run(run_dir or default_runs_dir() / profile, cfg)


# ----------------------------------------------------------------------------- stage `data`


def synthvoc_config_for(cfg: RunConfig):
    """The SynthVOC generator settings of a run configuration."""
    from nsrom_lib.data.synthvoc import SynthVOCConfig

    return SynthVOCConfig(image_size=cfg.image_size, n_train=cfg.n_train, n_val=cfg.n_val,
                          num_classes=cfg.num_classes, seed=cfg.seed)


def dataset_id(cfg: RunConfig) -> str:
    """What identifies a run's data: the resolved `data_root`, or the SynthVOC generator hash.

    The generator hash covers its settings and `GENERATOR_VERSION`, so a change to what SynthVOC
    draws invalidates every stage trained on the old images.
    """
    if cfg.data_root is not None:
        return str(Path(cfg.data_root).expanduser().resolve())
    return "synthvoc:" + synthvoc_config_for(cfg).hash()


def ensure_data(run: Run, progress: bool = True) -> Path:
    """Stage `data`: the dataset root of the run, generating SynthVOC if needed.

    With `data_root` set, the folder must exist and hold the VOC layout; otherwise SynthVOC is
    written to `<data dir>/synthvoc-<profile>-s<seed>-<hash>` (reused when already complete).
    """
    cfg = run.cfg
    if cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(
                f"data_root {root} does not exist. Point --set data_root=... at a VOC-layout "
                "folder (see data/README.md)."
            )
        run.ensure("data", lambda: {"data_root": str(root)}, data_root=str(root))
        return root
    from nsrom_lib.data.synthvoc import generate_synthvoc, synthvoc_is_complete

    scfg = synthvoc_config_for(cfg)
    root = default_data_dir() / f"synthvoc-{cfg.profile}-s{cfg.seed}-{scfg.hash()[:8]}"

    def compute() -> dict[str, Any]:
        meta = generate_synthvoc(root, scfg, progress=progress)
        return {"data_root": str(root), "generate_seconds": meta["seconds"]}

    if run.is_done("data") and not synthvoc_is_complete(root, scfg):  # data folder deleted
        (run.dir / "data" / "record.json").unlink()
    run.ensure("data", compute, data_root=str(root))
    return root


# ----------------------------------------------------------------------------- stages `classifier`, `iam`, `maps`
# ALGORITHM.md §1–§2; the training itself is `nsrom_lib.train`.


def _classifier_stage(glore: bool) -> str:
    return "classifier" if glore else "classifier/no_glore"


def build_classifier(cfg: RunConfig, glore: bool = True, iam: bool = False):
    """The classifier (or, with `iam`, the integral attention model) of a run configuration."""
    from nsrom_lib.models.classifier import Classifier

    return Classifier(cfg.num_classes, backbone=cfg.backbone, glore=glore, iam=iam,
                      width=cfg.width, pretrained=cfg.pretrained and not iam,
                      output_stride=cfg.output_stride, channels_last=cfg.channels_last)


def _save_torch(path: Path, obj: Any) -> None:
    import torch

    from nsrom_lib.data.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _history_metrics(hist: list[dict[str, Any]]) -> dict[str, Any]:
    """The training summary kept in a stage record: final loss, mean img/s, seconds."""
    return dict(final_loss=round(hist[-1]["loss"], 5),
                img_per_s=round(sum(h["img_per_s"] for h in hist) / len(hist), 1),
                train_seconds=round(sum(h["seconds"] for h in hist), 1))


def _load_torch(path: Path, stage: str) -> Any:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage `{stage}` first "
                                f"(e.g. ensure_{stage.split('/')[0]}(run)).")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_ground_truth(root: Path, split: str, names: list[str]) -> dict[str, Any] | None:
    """GT masks (and SynthVOC instances) of `names`, for the map measures; None without masks.

    Returns masks: list of (H, W) uint8; instances: list of (H, W) uint8 or None;
    objects: per image instance dicts or None.
    """
    from nsrom_lib.data.io import read_label_png
    from nsrom_lib.data.voc import read_instances

    mask_dir = root / "SegmentationClassAug"
    if not mask_dir.is_dir():
        mask_dir = root / "SegmentationClass"
    if not all((mask_dir / f"{n}.png").is_file() for n in names):
        return None
    masks = [read_label_png(mask_dir / f"{n}.png", "GT mask") for n in names]
    meta = read_instances(root)
    inst_dir = root / "SegmentationObject"
    if meta is None or not inst_dir.is_dir():
        return dict(masks=masks, instances=None, objects=None)
    instances = [read_label_png(inst_dir / f"{n}.png", "instance mask") for n in names]
    return dict(masks=masks, instances=instances, objects=[meta.get(n, []) for n in names])


def _map_quality(maps: list[dict[int, Any]], gt: dict[str, Any] | None) -> dict[str, float] | None:
    from nsrom_lib.metrics import map_quality

    if gt is None:
        return None
    q = map_quality(maps, gt["masks"], gt["instances"], gt["objects"])
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in q.items()}


def snapshot_indices(label_ids: list[list[int]], k: int) -> list[int]:
    """The images whose accumulated maps are kept after every epoch: the first k with 2+
    classes (then the others), so a figure shows several objects."""
    multi = [i for i, ids in enumerate(label_ids) if len(ids) >= 2]
    rest = [i for i, ids in enumerate(label_ids) if len(ids) < 2]
    return (multi + rest)[:k]


def ensure_classifier(run: Run, glore: bool = True, progress: bool = True) -> dict[str, Any]:
    """Stage `classifier`: train the classifier with OAA (ALGORITHM.md §1–§2); return the record.

    glore=False trains the ablation without the GloRe unit in `classifier/no_glore/` (its own
    record). Artefacts: `model.pt` (weights and constructor arguments), `accumulated.pt` (the
    accumulated maps at feature resolution, uint8, with `exists` and the image names),
    `snapshots.pt` (a few images' accumulated maps after every epoch), `history.json`.
    Metrics: train loss, train/val mAP (eval mode), img/s, OAA counts, and the coverage /
    precision of the CAMs and of the accumulated maps on the train split (with GT masks).
    An interrupted training resumes from `checkpoint.pt` (removed once the stage is complete).
    """
    root = ensure_data(run, progress=progress)
    stage = _classifier_stage(glore)
    cfg = run.cfg

    def compute() -> dict[str, Any]:
        import torch

        from nsrom_lib import train as T
        from nsrom_lib.metrics import classification_map

        d = run.stage_dir(stage)
        device = resolve_device(cfg.device)
        threads = T.configure_threads(cfg.num_threads)
        data = T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)
        T.seed_everything(cfg.seed)
        model = build_classifier(cfg, glore=glore)
        snaps = snapshot_indices(data["label_ids"], cfg.oaa_snapshots)
        res = T.train_classifier(
            model, data["images"], data["labels"], epochs=cfg.cls_epochs,
            batch_size=cfg.cls_batch_size, lr=cfg.cls_lr, optimizer=cfg.cls_optimizer,
            weight_decay=cfg.cls_weight_decay, schedule=cfg.cls_schedule, jitter=cfg.jitter,
            seed=cfg.seed, device=device, snapshot_indices=snaps, accumulate_from=cfg.oaa_from_epoch,
            checkpoint=d / "checkpoint.pt", tag=run.stage_key(stage), progress=progress)
        acc = res["accumulator"]
        _save_torch(d / "model.pt", dict(state_dict=model.state_dict(), glore=glore, iam=False))
        _save_torch(d / "accumulated.pt", dict(maps=acc.maps().cpu(), exists=acc.exists.cpu(),
                                               names=data["names"]))
        _save_torch(d / "snapshots.pt", dict(indices=res["snapshots"]["indices"],
                                             names=[data["names"][i] for i in snaps],
                                             maps=res["snapshots"]["maps"]))
        atomic_write_json(d / "history.json", res["history"])
        # Measures: eval-mode CAMs on train, logits on train and val.
        logits, cams = T.predict_cams(model, data["images"], device=device)
        val = T.load_split_tensors(root, "val", cfg.num_classes, cfg.image_size)
        val_logits, _ = T.predict_cams(model, val["images"], device=device)
        gt = load_ground_truth(root, "train", data["names"])
        cam_maps = T.maps_to_uint8(cams, data["label_ids"], data["sizes"])
        acc_maps = T.maps_to_uint8(acc.maps().cpu(), data["label_ids"], data["sizes"],
                                   normalized=True)
        hist = res["history"]
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return dict(
            glore=glore,
            train_map=round(classification_map(logits, data["labels"]), 4),
            val_map=round(classification_map(val_logits, val["labels"]), 4),
            **_history_metrics(hist),
            threads=threads, device=str(device), oaa=acc.stats(),
            cam=_map_quality(cam_maps, gt), accumulated=_map_quality(acc_maps, gt),
            torch_threads=torch.get_num_threads(),
        )

    return run.ensure(stage, compute, glore=glore)


def load_classifier(run: Run, glore: bool = True):
    """The trained classifier of a run (eval mode, CPU); trains it first if needed."""
    ensure_classifier(run, glore=glore)
    state = _load_torch(run.dir / _classifier_stage(glore) / "model.pt", "classifier")
    model = build_classifier(run.cfg, glore=glore)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_accumulated(run: Run, glore: bool = True) -> dict[str, Any]:
    """The accumulated maps of a run: maps (N, C, h, w) uint8, exists (N, C) bool, names."""
    ensure_classifier(run, glore=glore)
    return _load_torch(run.dir / _classifier_stage(glore) / "accumulated.pt", "classifier")


def load_oaa_snapshots(run: Run, glore: bool = True) -> dict[str, Any]:
    """Per-epoch accumulated maps of a few images: indices (k,), names, maps (E, k, C, h, w)."""
    ensure_classifier(run, glore=glore)
    return _load_torch(run.dir / _classifier_stage(glore) / "snapshots.pt", "classifier")


def ensure_iam(run: Run, progress: bool = True) -> dict[str, Any]:
    """Stage `iam`: train the integral attention model on the accumulated maps (§2).

    Artefacts: `iam/model.pt`, `iam/history.json`. Metrics: final loss, seconds, img/s.
    """
    ensure_classifier(run, glore=True, progress=progress)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg

    def compute() -> dict[str, Any]:
        from nsrom_lib import train as T

        d = run.stage_dir("iam")
        device = resolve_device(cfg.device)
        T.configure_threads(cfg.num_threads)
        data = T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)
        acc = _load_torch(run.dir / "classifier" / "accumulated.pt", "classifier")
        if list(acc["names"]) != data["names"]:
            raise RuntimeError(f"{run.dir / 'classifier'} was trained on other images: "
                               "delete its record.json to retrain it")
        T.seed_everything(cfg.seed + 1)
        model = build_classifier(cfg, glore=True, iam=True)
        res = T.train_iam(
            model, data["images"], acc["maps"], epochs=cfg.iam_epochs,
            batch_size=cfg.iam_batch_size, lr=cfg.iam_lr, optimizer=cfg.cls_optimizer,
            weight_decay=cfg.cls_weight_decay, schedule=cfg.cls_schedule, jitter=cfg.jitter,
            seed=cfg.seed + 1, device=device, checkpoint=d / "checkpoint.pt",
            tag=run.stage_key("iam"), progress=progress)
        _save_torch(d / "model.pt", dict(state_dict=model.state_dict(), glore=True, iam=True))
        atomic_write_json(d / "history.json", res["history"])
        hist = res["history"]
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return _history_metrics(hist)

    return run.ensure("iam", compute)


def load_iam(run: Run):
    """The trained integral attention model of a run (eval mode, CPU); trains it if needed."""
    ensure_iam(run)
    state = _load_torch(run.dir / "iam" / "model.pt", "iam")
    model = build_classifier(run.cfg, glore=True, iam=True)
    model.load_state_dict(state["state_dict"])
    return model.eval()


MAP_KINDS = ("cam", "accumulated", "oacam")


def ensure_maps(run: Run, progress: bool = True) -> dict[str, Any]:
    """Stage `maps`: the 8-bit, image-size maps of every training image and listed class.

    `maps/cam/{name}_{cls}.png` (final GloRe classifier, eval mode), `maps/oacam/...` (the
    integral attention model: the OA-CAMs) and `maps/accumulated/...` (the OAA maps, resized),
    cls the 0-based class id. Metrics: per kind, coverage / precision against GT (train split).
    """
    ensure_iam(run, progress=progress)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg

    def compute() -> dict[str, Any]:
        from nsrom_lib import train as T

        d = run.stage_dir("maps")
        device = resolve_device(cfg.device)
        T.configure_threads(cfg.num_threads)
        data = T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)
        ids, sizes = data["label_ids"], data["sizes"]
        _, cams = T.predict_cams(load_classifier(run), data["images"], device=device)
        _, oa = T.predict_cams(load_iam(run), data["images"], device=device)
        acc = load_accumulated(run)["maps"]
        maps = {"cam": T.maps_to_uint8(cams, ids, sizes),
                "accumulated": T.maps_to_uint8(acc, ids, sizes, normalized=True),
                "oacam": T.maps_to_uint8(oa, ids, sizes)}
        gt = load_ground_truth(root, "train", data["names"])
        metrics: dict[str, Any] = {}
        for kind in MAP_KINDS:
            metrics[f"{kind}_files"] = T.export_maps(d / kind, data["names"], maps[kind],
                                                     progress=progress)
            metrics[kind] = _map_quality(maps[kind], gt)
        return metrics

    return run.ensure("maps", compute)


def map_path(run: Run, kind: str, name: str, cls: int) -> Path:
    """Where the `maps` stage writes the map of (image `name`, 0-based class `cls`)."""
    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    return run.dir / "maps" / kind / f"{name}_{cls}.png"


# ----------------------------------------------------------------------------- stage `pseudo`
# ALGORITHM.md §3–§4; the label math is `nsrom_lib.labels`, the folders `nsrom_lib.data.maps_io`
# (the same code as `python -m nsrom_lib labels pseudo`).

#: The label folders of the `pseudo` stage: BE + 1% rule, and BE + POM + 1% rule.
PSEUDO_KINDS = ("initial", "pseudo")


def pseudo_thresholds(cfg: RunConfig) -> dict[str, float]:
    """The BE / POM thresholds of a configuration, named as `labels.pseudo_labels` takes them."""
    return dict(fg=cfg.be_fg, conflict=cfg.be_conflict, bg=cfg.be_bg, att=cfg.be_att,
                pom=cfg.pom_threshold, ratio=cfg.min_label_ratio)


def _check_thresholds(th: dict[str, float]) -> None:
    names = dict(fg="be_fg", conflict="be_conflict", bg="be_bg", att="be_att",
                 pom="pom_threshold", ratio="min_label_ratio")
    for k, v in th.items():
        hi = 256 if k == "bg" else 1
        if not 0 <= v <= hi:
            raise ValueError(f"{names[k]}={v} is outside 0..{hi}; "
                             f"set it with --set {names[k]}=... (reference: see RunConfig)")


def _label_metrics(labels: list[Any], gt: dict[str, Any] | None, num_labels: int) -> dict[str, Any]:
    """Ignore share, images left all-ignore and, with GT, the label quality of ALGORITHM.md §8."""
    import numpy as np

    from nsrom_lib.metrics import instance_background_share, instance_recall, label_quality

    pixels = sum(lab.size for lab in labels)
    m: dict[str, Any] = dict(
        ignore_share=sum(int((lab == 255).sum()) for lab in labels) / max(pixels, 1),
        empty_images=sum(bool(np.all(lab == 255)) for lab in labels),
    )
    if gt is not None:
        m.update(label_quality(labels, gt["masks"], num_labels))
        if gt["instances"] is not None:
            for salient, key in ((False, "nonsalient_recall"), (True, "salient_recall")):
                m[key] = instance_recall(labels, gt["instances"], gt["objects"], salient=salient)
            m["nonsalient_as_background"] = instance_background_share(
                labels, gt["instances"], gt["objects"], salient=False)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def ensure_pseudo(run: Run, progress: bool = True, batch_size: int = 64) -> dict[str, Any]:
    """Stage `pseudo`: the initial (BE) and POM pseudo labels of every training image (§3–§4).

    Reads the run's `maps/oacam` and `maps/cam` folders with the CLI's code
    (`maps_io.load_label_inputs`, `iter_batches`, `write_labels`), computes BE once per batch
    (`labels.background_extraction`), then `initial/{name}.png` = BE + 1% rule and
    `pseudo/{name}.png` = BE + POM + 1% rule (VOC-palette PNGs: 0 background, c + 1 class c,
    255 ignore), thresholds from the configuration (`be_fg`, `be_conflict`, `be_bg`, `be_att`,
    `pom_threshold`, `min_label_ratio`). Metrics per kind: ignore share, all-ignore images and,
    against the GT of the training split, precision, coverage, mIoU on labelled pixels and
    (SynthVOC) non-salient / salient object recall and the share of non-salient object pixels
    labelled background; plus the share of pixels POM turned from
    background to ignore, images/s and seconds. The record is written after every file.
    """
    ensure_maps(run, progress=progress)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    th = pseudo_thresholds(cfg)
    _check_thresholds(th)

    def compute() -> dict[str, Any]:
        import torch
        from tqdm.auto import tqdm

        from nsrom_lib import labels as L
        from nsrom_lib.data.maps_io import iter_batches, load_label_inputs, write_labels
        from nsrom_lib.data.voc import VOCSegDataset, write_cls_list

        d = run.stage_dir("pseudo")
        ds = VOCSegDataset(root, "train", num_classes=cfg.num_classes, with_mask=False)
        names = list(ds.names)
        list_path = d / "train_cls.txt"  # the images and classes the maps stage exported
        write_cls_list(list_path, ds.cls_list())
        inputs = load_label_inputs(
            list_path, ds.saliency_dir, oacam_dir=run.dir / "maps" / "oacam",
            cam_dir=run.dir / "maps" / "cam", num_classes=cfg.num_classes, strict=True,
            progress=progress)
        device = resolve_device(cfg.device)
        out: dict[str, dict[str, Any]] = {k: {} for k in PSEUDO_KINDS}
        t0 = time.perf_counter()
        bar = tqdm(total=len(names), desc="pseudo labels", unit="img", disable=not progress)
        with bar, L.torch_threads(1), torch.inference_mode():  # 1 thread: see torch_threads
            for batch in iter_batches(inputs, batch_size):
                sal = torch.from_numpy(batch.sal).to(device)  # (B, H, W) uint8
                present = torch.from_numpy(batch.present).to(device)  # (B, C) bool
                oa_cam = torch.from_numpy(batch.oa_cam).to(device)  # (B, C, H, W) uint8
                cam = torch.from_numpy(batch.cam).to(device)  # (B, C, H, W) uint8
                be = L.background_extraction(sal, oa_cam, present, th["fg"], th["conflict"],
                                             th["bg"], th["att"])
                labs = {"initial": L.min_label_ratio_rule(be, th["ratio"]),
                        "pseudo": L.min_label_ratio_rule(
                            L.potential_object_mining(be, cam, present, th["pom"]), th["ratio"])}
                for kind, lab in labs.items():
                    out[kind].update(zip(batch.names, lab.cpu().numpy(), strict=True))
                bar.update(len(batch.names))
        label_seconds = time.perf_counter() - t0
        for kind in PSEUDO_KINDS:
            write_labels(d / kind, ((n, out[kind][n]) for n in names))
            keep = {f"{n}.png" for n in names}
            for p in (d / kind).glob("*.png"):  # labels of images no longer in the split
                if p.name not in keep:
                    p.unlink()
        seconds = time.perf_counter() - t0
        gt = load_ground_truth(root, "train", names)
        labels = {k: [out[k][n] for n in names] for k in PSEUDO_KINDS}
        pixels = sum(lab.size for lab in labels["initial"])
        pom_ignored = sum(int(((a == 0) & (b == 255)).sum())
                          for a, b in zip(labels["initial"], labels["pseudo"], strict=True))
        return dict(
            images=len(names),
            thresholds=th,
            initial=_label_metrics(labels["initial"], gt, cfg.num_classes + 1),
            pseudo=_label_metrics(labels["pseudo"], gt, cfg.num_classes + 1),
            pom_ignored_share=round(pom_ignored / max(pixels, 1), 4),
            label_seconds=round(label_seconds, 3),
            write_seconds=round(seconds - label_seconds, 3),
            images_per_s=round(len(names) / max(seconds, 1e-9), 1),
            device=str(device),
        )

    return run.ensure("pseudo", compute, thresholds=th)


def load_labels(run: Run, kind: str = "pseudo", names: list[str] | None = None):
    """The `pseudo` stage's labels (computing them if needed), in training-split order.

    kind: "initial" (BE) or "pseudo" (BE + POM); names: a subset (default: the whole split).
    Returns (N, H, W) uint8 when all images have one size, else a list of (H, W) uint8.
    """
    import numpy as np

    from nsrom_lib.data.io import read_label_png
    from nsrom_lib.data.voc import read_split

    if kind not in PSEUDO_KINDS:
        raise ValueError(f"kind must be one of {PSEUDO_KINDS}, got {kind!r}")
    ensure_pseudo(run)
    if names is None:
        names = read_split(ensure_data(run), "train")
    labels = [read_label_png(run.dir / "pseudo" / kind / f"{n}.png", f"{kind} label")
              for n in names]
    if labels and len({lab.shape for lab in labels}) == 1:
        return np.stack(labels)
    return labels


def load_maps(run: Run, kind: str, names: list[str], classes: list[list[int]]):
    """The `maps` stage's maps of `names` as one (N, C, H, W) uint8 array (zeros for unlisted
    classes); classes: the listed class ids of each image. All images must have one size."""
    import numpy as np

    from nsrom_lib.data.io import read_gray_png

    ensure_maps(run)
    per_image = []
    for n, cl in zip(names, classes, strict=True):
        maps = {c: read_gray_png(map_path(run, kind, n, c), f"{kind} map") for c in cl}
        shapes = {m.shape for m in maps.values()}
        if len(shapes) > 1:
            raise ValueError(f"the {kind} maps of {n} differ in size: {sorted(shapes)}")
        per_image.append(maps)
    sizes = {m.shape for maps in per_image for m in maps.values()}
    if len(sizes) > 1:
        raise ValueError(f"load_maps needs images of one size; {kind} maps have {sorted(sizes)[:3]}")
    H, W = sizes.pop() if sizes else (0, 0)
    out = np.zeros((len(names), run.cfg.num_classes, H, W), np.uint8)  # (N, C, H, W)
    for i, maps in enumerate(per_image):
        for c, m in maps.items():
            out[i, c] = m
    return out


def load_explorer_inputs(run: Run, limit: int | None = None) -> dict[str, Any]:
    """Inputs of `widgets.explore_labels` / `ThresholdExplorer` for the first `limit` training
    images of a run: images, saliency, GT (and instances), the run's OA-CAMs and CAMs."""
    from nsrom_lib.data.stats import load_split_arrays
    from nsrom_lib.widgets import explorer_inputs

    ensure_maps(run)
    arrays = load_split_arrays(ensure_data(run), "train", limit=limit)
    oa_cam = load_maps(run, "oacam", arrays["names"], arrays["classes"])
    cam = load_maps(run, "cam", arrays["names"], arrays["classes"])
    return explorer_inputs(arrays, oa_cam, cam, run.cfg.num_classes)


# ----------------------------------------------------------------------------- notebooks


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in order."""
    folder = Path(folder) if folder else project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str,
    overrides: dict[str, Any] | None = None,
    notebooks: list[Path] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Execute the numbered notebooks in order with papermill into `<run_dir>/notebooks/`.

    Each notebook gets the parameters `profile`, `run_dir`, `seed`, `data_root`, `overrides`.
    Returns one dict per notebook (name, seconds, output). A failing notebook raises
    papermill's error after its partly executed copy has been written.
    """
    import papermill as pm
    from tqdm.auto import tqdm

    overrides = dict(overrides or {})
    cfg = make_config(profile, **overrides)  # validate before starting any kernel
    run_dir = Path(run_dir).resolve()
    Run(run_dir, cfg)
    notebooks = list_notebooks() if notebooks is None else notebooks
    if not notebooks:
        raise FileNotFoundError(f"no numbered notebooks found in {project_root() / 'notebooks'}")
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(profile=profile, run_dir=str(run_dir), seed=cfg.seed, data_root=cfg.data_root,
                  overrides={k: v for k, v in overrides.items() if k not in ("seed", "data_root")})
    done = []
    bar = tqdm(notebooks, desc="notebooks", unit="nb", disable=not progress)
    for nb in bar:
        bar.set_postfix_str(nb.name)
        t0 = time.perf_counter()
        out = out_dir / nb.name
        pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                            cwd=str(nb.parent), progress_bar=False)
        done.append(dict(notebook=nb.name, seconds=round(time.perf_counter() - t0, 1),
                         output=str(out)))
    atomic_write_json(run_dir / "run_summary.json", dict(profile=profile, notebooks=done))
    return done
