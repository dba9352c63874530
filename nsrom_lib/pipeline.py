"""Runs and stages: the run folder, completion records, the `data` stage, notebook execution.

See docs/design.md, "Runs, profiles and devices". A run is a folder `runs/<name>/` holding `config.json`,
one sub-folder per stage (`data`, `classifier`, `iam`, `maps`, `pseudo`, `seg1`, `masked`,
`seg2`, `results`) with its artefacts and a `record.json` written only after the artefacts are
complete, and the executed notebooks in `notebooks/`. A stage whose record carries the same key
(a hash of the configuration it depends on) is not recomputed, so every notebook can run alone
and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nsrom_lib.config import (
    NOT_RESULT_KEYS,
    ConfigError,
    RunConfig,
    config_hash,
    make_config,
    parse_overrides,
)
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
    "WARMUP_STAGE",
    "ensure_warmup",
    "warm_start",
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
    "load_map_dicts",
    "load_explorer_inputs",
    "variant_stage",
    "SEG_MODELS",
    "nsrm_kernel_for",
    "build_segmenter",
    "ensure_segmentation",
    "load_segmenter",
    "load_predictions",
    "ensure_masked",
    "load_masked",
    "RESULT_ROWS",
    "LABEL_ROWS",
    "TARGETS",
    "results_checks",
    "ensure_results",
    "load_results",
    "results_table",
    "stage_status",
    "execute_notebook",
    "widget_outputs",
    "label_table",
    "stage_times",
    "write_report",
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
    "cls_warmup_epochs",
)
#: Settings added after run folders existed: at these (default) values they are left out of
#: the stage keys, so the records of older runs stay valid instead of retraining everything.
_KEYED_ONLY_IF_SET: dict[str, Any] = {"cls_warmup_epochs": 0}
#: Sub-stage of `classifier`: the warm-up backbone (`ensure_warmup`).
WARMUP_STAGE = "classifier/warmup"
_IAM_FIELDS = _CLASSIFIER_FIELDS + ("iam_epochs", "iam_lr", "iam_batch_size")
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "data": _DATA_FIELDS,
    "classifier": _CLASSIFIER_FIELDS,
    "iam": _IAM_FIELDS,
    "maps": _IAM_FIELDS,
    "pseudo": _IAM_FIELDS + (
        "be_fg", "be_conflict", "be_bg", "be_att", "pom_threshold", "min_label_ratio",
    ),
    # the classifier's recipe without the OAA settings and cls_epochs, which it does not use
    WARMUP_STAGE: tuple(f for f in _CLASSIFIER_FIELDS
                        if f not in ("cls_epochs", "oaa_snapshots", "oaa_from_epoch")),
}
_SEG_FIELDS = (
    "seg_backbone", "seg_pretrained", "seg_width", "seg_output_stride", "seg_epochs",
    "seg_batch_size", "seg_optimizer", "seg_lr", "seg_weight_decay", "seg_scale", "seg_test_flip",
    "seg_crf",
)
# Settings that change a segmentation model's predictions but not its training: changing them
# re-predicts with the stored model (unless the model's own labels came from predictions).
_SEG_PREDICT_FIELDS = ("seg_test_flip", "seg_crf")
STAGE_FIELDS["seg1"] = STAGE_FIELDS["pseudo"] + _SEG_FIELDS
STAGE_FIELDS["masked"] = STAGE_FIELDS["seg1"] + ("nsrm_kernel",)
STAGE_FIELDS["seg2"] = STAGE_FIELDS["masked"]
#: The fully supervised upper bound depends on the data and the segmentation settings only.
UPPER_BOUND_FIELDS = _DATA_FIELDS + _SEG_FIELDS


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


def cpu_model() -> str:
    """The processor's model name (`lscpu`'s "Model name"), or what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a result depends on besides its settings: CPU model, torch build, CPU threads.

    Weakly supervised results differ between CPUs and builds (float order), so every stage
    record and report names them.
    """
    import torch

    return dict(cpu=cpu_model(), torch=torch.__version__, threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


class Run:
    """A run folder: configuration, per-stage folders and completion records."""

    def __init__(self, run_dir: str | os.PathLike, cfg: RunConfig):
        self.dir = Path(run_dir).resolve()
        self.cfg = cfg
        self._warn_if_reconfigured()
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

    def _warn_if_reconfigured(self) -> dict[str, tuple[Any, Any]]:
        """Warn when the folder was last opened with other settings; return {key: (old, new)}.

        Opening a finished run with a changed setting recomputes the stages that depend on it
        and replaces their results in place (e.g. a notebook run on `runs/default` with an
        override), so say which settings changed before anything is overwritten.
        """
        try:
            old = json.loads((self.dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        if not isinstance(old, dict):
            return {}
        new = json.loads(json.dumps(self.cfg.to_dict()))  # as config.json stores it
        changed = {k: (old[k], v) for k, v in new.items()
                   if k in old and k not in NOT_RESULT_KEYS and old[k] != v}
        if changed:
            what = ", ".join(f"{k}={a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            log.warning("run folder %s was last opened with other settings (%s): the stages that "
                        "depend on them will be recomputed and their results in this folder "
                        "replaced; open another run folder (--run-dir / run_dir=) to keep both.",
                        self.dir, what)
        return changed

    def stage_dir(self, stage: str) -> Path:
        """The folder of `stage`, or of a variant `stage/sub` (e.g. `classifier/no_glore`)."""
        if stage.split("/", 1)[0] not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        d = self.dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_key(self, stage: str, fields: Iterable[str] | None = None, **extra: Any) -> str:
        """The key a stage's record must carry: a hash of the configuration (and `extra`).

        fields: the configuration keys the stage depends on (None: those `STAGE_FIELDS` gives
        the stage, else its top-level stage, e.g. `classifier` for `classifier/no_glore`; all but
        device and extra for a stage not listed there), so that changing a downstream setting
        does not invalidate an upstream stage.
        """
        values = self.cfg.to_dict()
        values.pop("device", None)  # where it ran does not change what it computes
        values.pop("extra", None)
        if fields is None:
            fields = STAGE_FIELDS.get(stage, STAGE_FIELDS.get(stage.split("/", 1)[0]))
        if fields is not None:
            values = {k: values[k] for k in fields}
        for k, default in _KEYED_ONLY_IF_SET.items():
            if values.get(k, default) == default:
                values.pop(k, None)
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
            **machine_info(),
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


def open_run(run_dir: str | os.PathLike | None = None, profile: str = "quick", *,
             overrides: Any = None, **settings: Any) -> Run:
    """Open (or create) a run folder for `profile` with config `settings`: what each notebook
    calls first.

    run_dir None -> `<runs dir>/<profile>`. Settings equal to None are ignored, so notebook
    parameters such as `data_root=None` keep the profile's value. overrides: the notebooks'
    free-form parameter, anything `config.parse_overrides` takes (a dict, a JSON object or
    "key=value,..." string, a list of "key=value"); a key given both ways with two different
    values raises ConfigError.
    """
    settings = {k: v for k, v in settings.items() if v is not None}
    for k, v in parse_overrides(overrides).items():
        if k in settings and settings[k] != v and str(settings[k]) != str(v):
            raise ConfigError(
                f"{k!r} is given twice: {k}={settings[k]!r} as a parameter and {k}={v!r} in "
                f"overrides; set it in one place (e.g. papermill -p {k} ...)."
            )
        settings[k] = v
    cfg = make_config(profile, **settings)
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
        return {"data_root": str(root), "generate_seconds": meta.get("seconds", 0.0)}

    if run.is_done("data") and not synthvoc_is_complete(root, scfg):  # data folder deleted
        (run.dir / "data" / "record.json").unlink()
    run.ensure("data", compute, data_root=str(root))
    return root


# ----------------------------------------------------------------------------- stages `classifier`, `iam`, `maps`
# docs/method.md §1–§2; the training itself is `nsrom_lib.train`.


def variant_stage(stage: str, glore: bool = True) -> str:
    """The folder of `stage` in the main pipeline (`stage`) or in the GloRe-off ablation
    (`stage/no_glore`), e.g. `classifier/no_glore`, `pseudo/no_glore`, `seg2/no_glore`."""
    return stage if glore else f"{stage}/no_glore"


def _classifier_stage(glore: bool) -> str:
    return variant_stage("classifier", glore)


def build_classifier(cfg: RunConfig, glore: bool = True, iam: bool = False):
    """The classifier (or, with `iam`, the integral attention model) of a run configuration."""
    from nsrom_lib.models.classifier import Classifier

    return Classifier(cfg.num_classes, backbone=cfg.backbone, glore=glore, iam=iam,
                      width=cfg.width, pretrained=cfg.pretrained and not iam,
                      output_stride=cfg.output_stride, channels_last=cfg.channels_last)


def _training_context(run: Run, stage: str, root: Path) -> tuple[Path, Any, dict[str, Any]]:
    """What every training or prediction stage starts with: its folder, the device, torch's
    threads set from the configuration, and the training split in memory
    (`train.load_split_tensors`). Returns (stage folder, torch.device, split dict)."""
    from nsrom_lib import train as T

    cfg = run.cfg
    d = run.stage_dir(stage)
    device = resolve_device(cfg.device)
    T.configure_threads(cfg.num_threads)
    return d, device, T.load_split_tensors(root, "train", cfg.num_classes, cfg.image_size)


def _save_torch(path: Path, obj: Any) -> None:
    import torch

    from nsrom_lib.data.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _history_metrics(hist: list[dict[str, Any]], resumed_from: int = 0) -> dict[str, Any]:
    """The training summary kept in a stage record: final loss, mean img/s, seconds (of every
    epoch, also those before an interruption), and the epoch a resumed training restarted after."""
    return dict(final_loss=round(hist[-1]["loss"], 5),
                img_per_s=round(sum(h["img_per_s"] for h in hist) / len(hist), 1),
                train_seconds=round(sum(h["seconds"] for h in hist), 1),
                resumed_from_epoch=resumed_from)


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
    from nsrom_lib.data.voc import gt_mask_dir, read_instances

    mask_dir = gt_mask_dir(root)
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


def ensure_warmup(run: Run, progress: bool = True) -> dict[str, Any] | None:
    """Sub-stage `classifier/warmup`: the backbone that initialises the classifier and the IAM.

    With `cls_warmup_epochs` = E > 0, a plain classifier (backbone, extra convs, CAM head; no
    GloRe, no OAA) is trained for E epochs on the same image-level labels, and its backbone
    weights are kept in `classifier/warmup/backbone.pt`. It stands in for the reference's
    ImageNet initialisation: the classifier that OAA watches then starts from features that
    already respond to the objects, so its second-epoch CAMs are not the noise of a network
    trained from scratch. Uses no labels beyond the image-level ones. Returns the stage record
    (train / val mAP of the warm-up classifier, history metrics), or None when E = 0.
    """
    cfg = run.cfg
    if cfg.cls_warmup_epochs == 0:
        return None
    root = ensure_data(run, progress=progress)

    def compute() -> dict[str, Any]:
        import torch

        from nsrom_lib import train as T
        from nsrom_lib.metrics import classification_map

        d, device, data = _training_context(run, WARMUP_STAGE, root)
        T.seed_everything(cfg.seed + 2)
        model = build_classifier(cfg, glore=False)
        res = T.train_classifier(
            model, data["images"], data["labels"], epochs=cfg.cls_warmup_epochs,
            batch_size=cfg.cls_batch_size, lr=cfg.cls_lr, optimizer=cfg.cls_optimizer,
            weight_decay=cfg.cls_weight_decay, schedule=cfg.cls_schedule, jitter=cfg.jitter,
            seed=cfg.seed + 2, device=device, accumulate=False, checkpoint=d / "checkpoint.pt",
            tag=run.stage_key(WARMUP_STAGE), progress=progress)
        _save_torch(d / "backbone.pt", dict(features=model.features.state_dict()))
        logits, _ = T.predict_cams(model, data["images"], device=device)
        val = T.load_split_tensors(root, "val", cfg.num_classes, cfg.image_size)
        val_logits, _ = T.predict_cams(model, val["images"], device=device)
        atomic_write_json(d / "history.json", res["history"])
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return dict(epochs=cfg.cls_warmup_epochs,
                    train_map=round(classification_map(logits, data["labels"]), 4),
                    val_map=round(classification_map(val_logits, val["labels"]), 4),
                    **_history_metrics(res["history"], res["resumed_from"]),
                    torch_threads=torch.get_num_threads())

    return run.ensure(WARMUP_STAGE, compute)


def warm_start(run: Run, model: Any, progress: bool = True) -> Any:
    """Load the warm-up backbone (`ensure_warmup`) into `model.features`; a no-op with
    `cls_warmup_epochs` = 0. model: a `Classifier` (or IAM) of the run's configuration."""
    if ensure_warmup(run, progress=progress) is None:
        return model
    state = _load_torch(run.dir / WARMUP_STAGE / "backbone.pt", "classifier")
    model.features.load_state_dict(state["features"])
    return model


def ensure_classifier(run: Run, glore: bool = True, progress: bool = True) -> dict[str, Any]:
    """Stage `classifier`: train the classifier with OAA (docs/method.md §1–§2); return the record.

    glore=False trains the ablation without the GloRe unit in `classifier/no_glore/` (its own
    record). Artefacts: `model.pt` (weights and constructor arguments), `accumulated.pt` (the
    accumulated maps at feature resolution, uint8, with `exists` and the image names),
    `snapshots.pt` (a few images' accumulated maps after every epoch), `history.json`.
    Metrics: train loss, train/val mAP (eval mode), img/s, OAA counts, and the coverage /
    precision of the CAMs and of the accumulated maps on the train split (with GT masks), and
    `oaa_epochs`: for every fused epoch, the same measures of that epoch's own maps and of the
    accumulated maps after it, on the first `OAA_PROBE_IMAGES` training images.
    An interrupted training resumes from `checkpoint.pt` (removed once the stage is complete).
    """
    root = ensure_data(run, progress=progress)
    stage = _classifier_stage(glore)
    cfg = run.cfg

    def compute() -> dict[str, Any]:
        import torch

        from nsrom_lib import train as T
        from nsrom_lib.metrics import classification_map

        d, device, data = _training_context(run, stage, root)
        threads = torch.get_num_threads()
        T.seed_everything(cfg.seed)
        model = warm_start(run, build_classifier(cfg, glore=glore), progress)
        snaps = snapshot_indices(data["label_ids"], cfg.oaa_snapshots)
        res = T.train_classifier(
            model, data["images"], data["labels"], epochs=cfg.cls_epochs,
            batch_size=cfg.cls_batch_size, lr=cfg.cls_lr, optimizer=cfg.cls_optimizer,
            weight_decay=cfg.cls_weight_decay, schedule=cfg.cls_schedule, jitter=cfg.jitter,
            seed=cfg.seed, device=device, snapshot_indices=snaps, accumulate_from=cfg.oaa_from_epoch,
            probe_indices=range(min(len(data["names"]), OAA_PROBE_IMAGES)),
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
            **_history_metrics(hist, res["resumed_from"]),
            threads=threads, device=str(device), oaa=acc.stats(),
            cam=_map_quality(cam_maps, gt), accumulated=_map_quality(acc_maps, gt),
            oaa_epochs=_oaa_epoch_quality(res["probe"], data, gt, hist),
            torch_threads=torch.get_num_threads(),
        )

    if not run.is_done(stage):  # before, not inside: its time is its own, and training it must
        ensure_warmup(run, progress)  # not move the RNG that compute() seeds
    return run.ensure(stage, compute, glore=glore)


#: Training images (the first ones) whose per-epoch maps the classifier stage measures.
OAA_PROBE_IMAGES = 256


def _oaa_epoch_quality(probe: dict[str, Any], data: dict[str, Any], gt: dict[str, Any] | None,
                       history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """What every fused epoch adds to OAA, measured on the probe images (notebook 02).

    probe: `train_classifier`'s probe dict (maps and accumulated: (F, p, C, h, w) uint8);
    data: the training split (label_ids, sizes); gt: `load_ground_truth` of the whole split, or
    None. Returns one row per fused epoch: epoch (1-based, as the history), loss, `own` (that
    epoch's maps) and `accumulated` (the maps after it), each a `map_quality` dict; None
    without GT masks.
    """
    from nsrom_lib import train as T

    if gt is None:
        return None
    idx = probe["indices"].tolist()
    sub = {k: (None if v is None else [v[i] for i in idx]) for k, v in gt.items()}
    ids = [data["label_ids"][i] for i in idx]
    sizes = [data["sizes"][i] for i in idx]
    loss = {h["epoch"]: round(h["loss"], 5) for h in history}
    rows = []
    for f, e in enumerate(probe["epochs"].tolist()):
        own = T.maps_to_uint8(probe["maps"][f], ids, sizes, normalized=True)
        accumulated = T.maps_to_uint8(probe["accumulated"][f], ids, sizes, normalized=True)
        rows.append(dict(epoch=e + 1, loss=loss.get(e + 1), images=len(idx),
                         own=_map_quality(own, sub), accumulated=_map_quality(accumulated, sub)))
    return rows


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


def ensure_iam(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `iam`: train the integral attention model on the accumulated maps (§2).

    Artefacts: `iam/model.pt`, `iam/history.json`. Metrics: final loss, seconds, img/s.
    glore=False: the ablation's IAM (no GloRe unit) on the GloRe-off classifier's accumulated
    maps, in `iam/no_glore/`.
    """
    ensure_classifier(run, glore=glore, progress=progress)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    stage = variant_stage("iam", glore)

    def compute() -> dict[str, Any]:
        from nsrom_lib import train as T

        d, device, data = _training_context(run, stage, root)
        cls_dir = run.dir / _classifier_stage(glore)
        acc = _load_torch(cls_dir / "accumulated.pt", "classifier")
        if list(acc["names"]) != data["names"]:
            raise RuntimeError(f"{cls_dir} was trained on other images: "
                               "delete its record.json to retrain it")
        T.seed_everything(cfg.seed + 1)
        model = warm_start(run, build_classifier(cfg, glore=glore, iam=True), progress)
        res = T.train_iam(
            model, data["images"], acc["maps"], epochs=cfg.iam_epochs,
            batch_size=cfg.iam_batch_size, lr=cfg.iam_lr, optimizer=cfg.cls_optimizer,
            weight_decay=cfg.cls_weight_decay, schedule=cfg.cls_schedule, jitter=cfg.jitter,
            seed=cfg.seed + 1, device=device, checkpoint=d / "checkpoint.pt",
            tag=run.stage_key(stage), progress=progress)
        _save_torch(d / "model.pt", dict(state_dict=model.state_dict(), glore=glore, iam=True))
        atomic_write_json(d / "history.json", res["history"])
        hist = res["history"]
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return _history_metrics(hist, res["resumed_from"])

    if not run.is_done(stage):
        ensure_warmup(run, progress)  # as in ensure_classifier: outside compute()
    return run.ensure(stage, compute, glore=glore)


def load_iam(run: Run, glore: bool = True):
    """The trained integral attention model of a run (eval mode, CPU); trains it if needed."""
    ensure_iam(run, glore=glore)
    state = _load_torch(run.dir / variant_stage("iam", glore) / "model.pt", "iam")
    model = build_classifier(run.cfg, glore=glore, iam=True)
    model.load_state_dict(state["state_dict"])
    return model.eval()


MAP_KINDS = ("cam", "accumulated", "oacam")


def ensure_maps(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `maps`: the 8-bit, image-size maps of every training image and listed class.

    `maps/cam/{name}_{cls}.png` (final GloRe classifier, eval mode), `maps/oacam/...` (the
    integral attention model: the OA-CAMs) and `maps/accumulated/...` (the OAA maps, resized),
    cls the 0-based class id. Metrics: per kind, coverage / precision against GT (train split).
    glore=False: the same from the GloRe-off classifier and IAM, in `maps/no_glore/{kind}/`.
    """
    ensure_iam(run, progress=progress, glore=glore)
    root = ensure_data(run, progress=progress)
    stage = variant_stage("maps", glore)

    def compute() -> dict[str, Any]:
        from nsrom_lib import train as T

        d, device, data = _training_context(run, stage, root)
        ids, sizes = data["label_ids"], data["sizes"]
        _, cams = T.predict_cams(load_classifier(run, glore), data["images"], device=device)
        _, oa = T.predict_cams(load_iam(run, glore), data["images"], device=device)
        acc = load_accumulated(run, glore)["maps"]
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

    return run.ensure(stage, compute, glore=glore)


def map_path(run: Run, kind: str, name: str, cls: int, glore: bool = True) -> Path:
    """Where the `maps` stage writes the map of (image `name`, 0-based class `cls`)."""
    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    return run.dir / variant_stage("maps", glore) / kind / f"{name}_{cls}.png"


# ----------------------------------------------------------------------------- stage `pseudo`
# docs/method.md §3–§4; the label math is `nsrom_lib.labels`, the folders `nsrom_lib.data.maps_io`
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
    """Ignore share, images left all-ignore and, with GT, the label quality of docs/method.md §8."""
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


def ensure_pseudo(run: Run, progress: bool = True, batch_size: int = 64,
                  glore: bool = True) -> dict[str, Any]:
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
    glore=False: the same from the GloRe-off maps, in `pseudo/no_glore/{initial,pseudo}/`.
    """
    ensure_maps(run, progress=progress, glore=glore)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    stage = variant_stage("pseudo", glore)
    maps_dir = run.dir / variant_stage("maps", glore)
    th = pseudo_thresholds(cfg)
    _check_thresholds(th)

    def compute() -> dict[str, Any]:
        import torch

        from nsrom_lib import labels as L
        from nsrom_lib.data.maps_io import iter_batches, load_label_inputs, write_labels
        from nsrom_lib.data.voc import VOCSegDataset, write_cls_list
        from nsrom_lib.progress import progress_bar as tqdm

        d = run.stage_dir(stage)
        ds = VOCSegDataset(root, "train", num_classes=cfg.num_classes, with_mask=False)
        names = list(ds.names)
        list_path = d / "train_cls.txt"  # the images and classes the maps stage exported
        write_cls_list(list_path, ds.cls_list())
        inputs = load_label_inputs(
            list_path, ds.saliency_dir, oacam_dir=maps_dir / "oacam",
            cam_dir=maps_dir / "cam", num_classes=cfg.num_classes, strict=True,
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

    return run.ensure(stage, compute, thresholds=th, glore=glore)


def load_labels(run: Run, kind: str = "pseudo", names: list[str] | None = None,
                glore: bool = True, progress: bool = True):
    """The `pseudo` stage's labels (computing them if needed), in training-split order.

    kind: "initial" (BE) or "pseudo" (BE + POM); names: a subset (default: the whole split);
    glore=False: the GloRe-off ablation's labels; progress: bars of upstream stages still to run.
    Returns (N, H, W) uint8 when all images have one size, else a list of (H, W) uint8.
    """
    import numpy as np

    from nsrom_lib.data.io import read_label_png
    from nsrom_lib.data.voc import read_split

    if kind not in PSEUDO_KINDS:
        raise ValueError(f"kind must be one of {PSEUDO_KINDS}, got {kind!r}")
    ensure_pseudo(run, glore=glore, progress=progress)
    if names is None:
        names = read_split(ensure_data(run, progress=progress), "train")
    folder = run.dir / variant_stage("pseudo", glore) / kind
    labels = [read_label_png(folder / f"{n}.png", f"{kind} label")
              for n in names]
    if labels and len({lab.shape for lab in labels}) == 1:
        return np.stack(labels)
    return labels


def load_map_dicts(run: Run, kind: str, names: list[str],
                   classes: list[list[int]]) -> list[dict[int, Any]]:
    """The `maps` stage's maps of `names`, one {class id: (H, W) uint8} per image, images of any
    size (the input of `metrics.map_quality`); classes: the listed class ids of each image."""
    from nsrom_lib.data.io import read_gray_png

    ensure_maps(run)
    per_image = []
    for n, cl in zip(names, classes, strict=True):
        maps = {c: read_gray_png(map_path(run, kind, n, c), f"{kind} map") for c in cl}
        shapes = {m.shape for m in maps.values()}
        if len(shapes) > 1:
            raise ValueError(f"the {kind} maps of {n} differ in size: {sorted(shapes)}")
        per_image.append(maps)
    return per_image


def load_maps(run: Run, kind: str, names: list[str], classes: list[list[int]]):
    """The `maps` stage's maps of `names` as one (N, C, H, W) uint8 array (zeros for unlisted
    classes); classes: the listed class ids of each image. All images must have one size."""
    import numpy as np

    per_image = load_map_dicts(run, kind, names, classes)
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


# ----------------------------------------------------------------------------- stages `seg1`, `masked`, `seg2`
# docs/method.md §5–§7; the training loop is `nsrom_lib.train`, the masking `nsrom_lib.labels`
# through the CLI's code (`maps_io.make_labels`).

#: Every segmentation model a run trains: key (as in `results/metrics.json`) -> its stage folder,
#: the labels it learns from and the classifier variant those labels come from.
SEG_MODELS: dict[str, dict[str, Any]] = {
    "upper_bound": dict(stage="seg1/gt", labels="gt", glore=True,
                        title="fully supervised (GT masks)"),
    "be_round1": dict(stage="seg1/be", labels="initial", glore=True,
                      title="round 1 on BE labels"),
    "pom_round1": dict(stage="seg1", labels="pseudo", glore=True,
                       title="round 1 on BE + POM labels"),
    "nsrm_round2": dict(stage="seg2", labels="masked", glore=True,
                        title="round 2 on NSRM labels"),
    "pom_round1_no_glore": dict(stage="seg1/no_glore", labels="pseudo", glore=False,
                                title="round 1, GloRe off"),
    "nsrm_round2_no_glore": dict(stage="seg2/no_glore", labels="masked", glore=False,
                                 title="round 2, GloRe off"),
}


def nsrm_kernel_for(cfg: RunConfig) -> int:
    """The NSRM dilation kernel of a run: `nsrm_kernel`, or 0 -> the reference's 30 px scaled.

    The reference dilates with k = 30 on PASCAL VOC images, whose long side is (at most) 500 px;
    scaled to the run's image side S that is k = max(1, round(30 * S / 500)): 6 px at 96 px,
    8 px at 128 px, 19 px at 321 px. The `voc` profile sets 30 explicitly.
    """
    if cfg.nsrm_kernel > 0:
        return int(cfg.nsrm_kernel)
    return max(1, round(30 * cfg.image_size / 500))


def build_segmenter(cfg: RunConfig):
    """The segmentation network of a run configuration (DeepLab-v2 style, §5)."""
    from nsrom_lib.models.segmentation import DeepLabV2

    return DeepLabV2(cfg.num_classes, backbone=cfg.seg_backbone, width=cfg.seg_width,
                     image_size=cfg.image_size, pretrained=cfg.seg_pretrained,
                     output_stride=cfg.seg_output_stride, channels_last=cfg.channels_last)


def _seg_key(run: Run, which: str) -> str:
    spec = SEG_MODELS[which]
    fields = UPPER_BOUND_FIELDS if spec["labels"] == "gt" else None
    return run.stage_key(spec["stage"], fields)


def _seg_train_key(run: Run, which: str) -> str:
    """The key of a segmentation model's *training*: its stage key without the prediction-only
    settings (`_SEG_PREDICT_FIELDS`), except for round 2, whose labels are made from round 1's
    predictions and so change with them."""
    spec = SEG_MODELS[which]
    if spec["labels"] == "masked":
        return _seg_key(run, which)
    fields = UPPER_BOUND_FIELDS if spec["labels"] == "gt" else STAGE_FIELDS["seg1"]
    return run.stage_key(spec["stage"], [f for f in fields if f not in _SEG_PREDICT_FIELDS],
                         part="training")


def _seg_crf(cfg: RunConfig):
    """The CRF settings of a run's predictions (None without `seg_crf`); fails at once, before
    any training, when the CRF package is missing."""
    if not cfg.seg_crf:
        return None
    from nsrom_lib.crf import _densecrf, crf_params_for

    _densecrf()
    return crf_params_for(cfg.image_size)


def _resize_labels(labels: list[Any], size: tuple[int, int]):
    """(H, W) uint8 label maps -> one (N, S, S) uint8 tensor at `size` (nearest neighbour)."""
    import torch
    import torch.nn.functional as F

    out = []
    for lab in labels:
        t = torch.from_numpy(lab)
        if tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].to(torch.uint8)
        out.append(t)
    return torch.stack(out)


def _to_sizes(preds, sizes: list[tuple[int, int]]) -> list[Any]:
    """(N, h, w) uint8 predictions -> list of (H_i, W_i) numpy arrays at each image's size."""
    import torch.nn.functional as F

    out = []
    for p, hw in zip(preds, sizes, strict=True):
        if tuple(p.shape) != tuple(hw):
            p = F.interpolate(p[None, None].float(), size=hw, mode="nearest")[0, 0].byte()
        out.append(p.numpy())
    return out


def _training_labels(run: Run, which: str, names: list[str], root: Path,
                     progress: bool = True) -> list[Any]:
    """The labels model `which` learns from, for the training images `names`."""
    from nsrom_lib.data.io import read_label_png

    spec = SEG_MODELS[which]
    if spec["labels"] == "gt":
        gt = load_ground_truth(root, "train", names)
        if gt is None:
            raise DataError(f"the fully supervised upper bound needs GT masks of the training "
                            f"images in {root}/SegmentationClass(Aug); without them skip it")
        return gt["masks"]
    if spec["labels"] in PSEUDO_KINDS:
        return list(load_labels(run, spec["labels"], names, glore=spec["glore"], progress=progress))
    ensure_masked(run, glore=spec["glore"], progress=progress)
    folder = run.dir / variant_stage("masked", spec["glore"]) / "labels"
    return [read_label_png(folder / f"{n}.png", "masked label") for n in names]


def _prediction_metrics(preds: list[Any], gt: dict[str, Any] | None, num_labels: int) -> dict[str, Any]:
    """mIoU, per-class IoU and (SynthVOC) non-salient / salient object recall of predictions."""
    import numpy as np

    from nsrom_lib.metrics import confusion_matrix, instance_recall, iou_from_confusion

    if gt is None:
        return {}
    conf = np.zeros((num_labels, num_labels), np.int64)
    for p, g in zip(preds, gt["masks"], strict=True):
        conf += confusion_matrix(p, g, num_labels)
    m, iou = iou_from_confusion(conf)
    out: dict[str, Any] = dict(miou=round(m, 4),
                               iou=[None if np.isnan(v) else round(float(v), 4) for v in iou])
    if gt["instances"] is not None:
        for salient, key in ((False, "nonsalient_recall"), (True, "salient_recall")):
            r = instance_recall(preds, gt["instances"], gt["objects"], salient=salient)
            out[key] = round(r, 4)
    return out


def ensure_segmentation(run: Run, which: str = "pom_round1", progress: bool = True) -> dict[str, Any]:
    """Train one segmentation model of the run (docs/method.md §5, §7) and evaluate it; the record.

    which: a key of `SEG_MODELS` — "pom_round1" is the stage `seg1` (round 1 on the BE + POM
    pseudo labels), "nsrm_round2" the stage `seg2` (round 2 on the masked labels); the others are
    the baselines and the GloRe-off ablation in sub-folders (`seg1/gt`, `seg1/be`,
    `seg1/no_glore`, `seg2/no_glore`). All share the network, budget and seed, so they differ
    only in their labels. Artefacts in the stage folder: `model.pt`, `history.json`,
    `val_pred/{name}.png` (VOC palette) and, for round-1 models that feed NSRM,
    `train_pred/{name}.png`. Metrics: val mIoU, per-class IoU, non-salient / salient object
    recall, training summary; for `train_pred`, the quality of those predictions as labels.
    """
    if which not in SEG_MODELS:
        raise ValueError(f"unknown segmentation model {which!r}; choose one of {list(SEG_MODELS)}")
    spec = SEG_MODELS[which]
    stage = spec["stage"]
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    key = _seg_key(run, which)
    feeds_nsrm = which in ("pom_round1", "pom_round1_no_glore")
    if run.is_done(stage, key):
        return run.record(stage) or {}
    # upstream stages first (each returns at once when done), so this stage's time is its own
    from nsrom_lib.data.voc import read_split

    crf = _seg_crf(cfg)  # before any training: a missing CRF package fails now
    names = read_split(root, "train")
    labels = _training_labels(run, which, names, root, progress=progress)
    train_key = _seg_train_key(run, which)

    def compute() -> dict[str, Any]:
        import numpy as np

        from nsrom_lib import train as T
        from nsrom_lib.data.maps_io import write_labels

        d, device, data = _training_context(run, stage, root)
        if data["names"] != names:
            raise RuntimeError(f"the training split of {root} changed while the run was going")
        T.seed_everything(cfg.seed + 2)  # before the model is built: its initialisation
        model = build_segmenter(cfg)
        old = _trained_model(d, train_key)
        if old is not None:  # only prediction settings changed: predict with the stored model
            model.load_state_dict(old["state_dict"])
            hist = json.loads((d / "history.json").read_text())
            res = dict(history=hist, resumed_from=len(hist))
            log.info("%s: the model in %s was trained with the same settings; predicting only",
                     which, d)
        else:
            y = _resize_labels(labels, tuple(data["images"].shape[-2:]))  # (N, S, S) uint8
            res = T.train_segmentation(
                model, data["images"], y, epochs=cfg.seg_epochs, batch_size=cfg.seg_batch_size,
                lr=cfg.seg_lr, optimizer=cfg.seg_optimizer, weight_decay=cfg.seg_weight_decay,
                scale=(1 - cfg.seg_scale, 1 + cfg.seg_scale), jitter=cfg.jitter, seed=cfg.seed + 2,
                device=device, checkpoint=d / "checkpoint.pt", tag=key, progress=progress,
                desc=which)
            _save_torch(d / "model.pt", dict(state_dict=model.state_dict(), which=which,
                                              train_key=train_key))
            atomic_write_json(d / "history.json", res["history"])
        t0 = time.perf_counter()
        val = T.load_split_tensors(root, "val", cfg.num_classes, cfg.image_size)
        val_pred = _to_sizes(T.predict_segmentation(model, val["images"], device=device,
                                                    flip=cfg.seg_test_flip, crf=crf), val["sizes"])
        write_labels(d / "val_pred", zip(val["names"], val_pred, strict=True))
        metrics: dict[str, Any] = dict(
            which=which, trained_on=spec["labels"], glore=spec["glore"],
            **_prediction_metrics(val_pred, load_ground_truth(root, "val", val["names"]),
                                  cfg.num_classes + 1),
            **_history_metrics(res["history"], res["resumed_from"]),
            label_coverage=round(float(np.mean([(lab != 255).mean() for lab in labels])), 4),
        )
        if feeds_nsrm:
            train_pred = _to_sizes(T.predict_segmentation(model, data["images"], device=device,
                                                          flip=cfg.seg_test_flip, crf=crf),
                                   data["sizes"])
            write_labels(d / "train_pred", zip(names, train_pred, strict=True))
            gt = load_ground_truth(root, "train", names)
            metrics["train_pred"] = _label_metrics(train_pred, gt, cfg.num_classes + 1)
        metrics["predict_seconds"] = round(time.perf_counter() - t0, 2)
        metrics["device"] = str(device)
        metrics["crf"] = dataclasses.asdict(crf) if crf is not None else None
        metrics["model_reused"] = old is not None
        (d / "checkpoint.pt").unlink(missing_ok=True)
        return metrics

    return run.ensure(stage, compute, key=key, which=which)


def _trained_model(stage_dir: Path, train_key: str) -> dict[str, Any] | None:
    """The stored model of a segmentation stage if it was trained under `train_key` (and its
    history is there), else None."""
    path = stage_dir / "model.pt"
    if not path.is_file() or not (stage_dir / "history.json").is_file():
        return None
    try:
        state = _load_torch(path, str(stage_dir))
    except Exception:  # unreadable: train again
        return None
    return state if isinstance(state, dict) and state.get("train_key") == train_key else None


def load_segmenter(run: Run, which: str = "pom_round1"):
    """A trained segmentation model of the run (eval mode, CPU); trains it first if needed."""
    ensure_segmentation(run, which)
    state = _load_torch(run.dir / SEG_MODELS[which]["stage"] / "model.pt", SEG_MODELS[which]["stage"])
    model = build_segmenter(run.cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_predictions(run: Run, which: str, split: str = "val", names: list[str] | None = None):
    """Stored predictions of a segmentation model: `val_pred` or (round-1 models) `train_pred`.

    Returns (N, H, W) uint8 for same-size images, else a list of (H, W) uint8.
    """
    import numpy as np

    from nsrom_lib.data.io import read_label_png
    from nsrom_lib.data.voc import read_split

    ensure_segmentation(run, which)
    folder = run.dir / SEG_MODELS[which]["stage"] / f"{split}_pred"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: only the round-1 models "
                                "(pom_round1, pom_round1_no_glore) keep train predictions")
    names = read_split(ensure_data(run), split) if names is None else names
    preds = [read_label_png(folder / f"{n}.png", f"{which} prediction") for n in names]
    return np.stack(preds) if preds and len({p.shape for p in preds}) == 1 else preds


def ensure_masked(run: Run, progress: bool = True, glore: bool = True) -> dict[str, Any]:
    """Stage `masked`: non-salient region masking (docs/method.md §6) of the round-1 predictions.

    Reads `seg1/train_pred` (round-1 predictions on the training images), `pseudo/pseudo` (POM
    labels) and the saliency maps with the CLI's code (`maps_io.load_label_inputs` and
    `make_labels`, i.e. `python -m nsrom_lib labels masked`), kernel `nsrm_kernel_for(cfg)`, and
    writes `masked/labels/{name}.png`. glore=False: the ablation's, in `masked/no_glore/labels/`.
    Metrics: label quality of the masked labels and, for comparison, of the round-1 predictions
    and the POM labels (precision, coverage, mIoU, non-salient recall), the share of pixels that
    masking turned to ignore, the kernel, images/s.
    """
    which = "pom_round1" if glore else "pom_round1_no_glore"
    stage = variant_stage("masked", glore)
    root = ensure_data(run, progress=progress)
    cfg = run.cfg
    kernel = nsrm_kernel_for(cfg)
    if run.is_done(stage):
        return run.record(stage) or {}
    ensure_segmentation(run, which, progress=progress)
    ensure_pseudo(run, progress=progress, glore=glore)

    def compute() -> dict[str, Any]:
        from nsrom_lib.data.io import read_label_png
        from nsrom_lib.data.maps_io import load_label_inputs, make_labels
        from nsrom_lib.data.voc import VOCSegDataset, write_cls_list

        d = run.stage_dir(stage)
        ds = VOCSegDataset(root, "train", num_classes=cfg.num_classes, with_mask=False)
        names = list(ds.names)
        list_path = d / "train_cls.txt"
        write_cls_list(list_path, ds.cls_list())
        pred_dir = run.dir / SEG_MODELS[which]["stage"] / "train_pred"
        pseudo_dir = run.dir / variant_stage("pseudo", glore) / "pseudo"
        inputs = load_label_inputs(list_path, ds.saliency_dir, pred_dir=pred_dir,
                                   pseudo_dir=pseudo_dir, num_classes=cfg.num_classes,
                                   strict=True, progress=progress)
        summary = make_labels(inputs, d / "labels", device=cfg.device, progress=progress,
                              kernel=kernel, ratio=cfg.min_label_ratio)
        masked = [read_label_png(d / "labels" / f"{n}.png", "masked label") for n in names]
        preds = [read_label_png(pred_dir / f"{n}.png", "round-1 prediction") for n in names]
        pseudo = [read_label_png(pseudo_dir / f"{n}.png", "pseudo label") for n in names]
        gt = load_ground_truth(root, "train", names)
        n_cls = cfg.num_classes + 1
        complex_images = sum(len(c) >= 2 for c in ds.cls_list().values())
        pixels = sum(m.size for m in masked)
        turned = sum(int(((p != 255) & (m == 255)).sum()) for p, m in zip(preds, masked, strict=True))
        expanded = sum(int(((p == 0) & (m != 0) & (m != 255)).sum())
                       for p, m in zip(preds, masked, strict=True))
        return dict(
            kernel=kernel, images=len(names), complex_images=complex_images,
            masked=_label_metrics(masked, gt, n_cls),
            round1_pred=_label_metrics(preds, gt, n_cls),
            pseudo=_label_metrics(pseudo, gt, n_cls),
            masked_to_ignore_share=round(turned / max(pixels, 1), 4),
            expanded_share=round(expanded / max(pixels, 1), 4),
            images_per_s=round(summary["images_per_s"], 1), device=summary["device"],
        )

    return run.ensure(stage, compute, kernel=kernel, glore=glore)


def load_masked(run: Run, names: list[str] | None = None, glore: bool = True,
                progress: bool = True):
    """The `masked` stage's labels in training-split order ((N, H, W) uint8 or a list)."""
    import numpy as np

    from nsrom_lib.data.io import read_label_png
    from nsrom_lib.data.voc import read_split

    ensure_masked(run, glore=glore, progress=progress)
    names = read_split(ensure_data(run, progress=progress), "train") if names is None else names
    folder = run.dir / variant_stage("masked", glore) / "labels"
    labels = [read_label_png(folder / f"{n}.png", "masked label") for n in names]
    return np.stack(labels) if labels and len({x.shape for x in labels}) == 1 else labels


# ----------------------------------------------------------------------------- stage `results`

#: The rows of the ablation table, in order (keys of `results/metrics.json`).
RESULT_ROWS = ("upper_bound", "be_round1", "pom_round1", "nsrm_round2", "nsrm_round2_no_glore")
#: The label sets measured on the training images: key -> (stage, record field, folder).
LABEL_ROWS = {
    "be_labels": ("pseudo", "initial", "pseudo/initial"),
    "pom_labels": ("pseudo", "pseudo", "pseudo/pseudo"),
    "masked_labels": ("masked", "masked", "masked/labels"),
}
#: The targets the results are checked against, computed from metrics.json.
TARGETS = {
    "round2_ratio": "round-2 mIoU >= 0.85 x the fully supervised upper bound",
    "monotone": "val mIoU rises: BE round 1 < BE+POM round 1 < NSRM round 2",
    "glore_not_worse": "GloRe on is not worse than GloRe off (final mIoU)",
    "nonsalient_2x": "non-salient recall of the final model >= 2 x that of the BE labels",
}


def results_checks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of `TARGETS` evaluated on a `metrics.json` dict: {name: {ok, value, text}}."""
    r = {k: metrics[k] for k in RESULT_ROWS}
    be_ns = metrics["be_labels"].get("nonsalient_recall")
    final_ns = r["nsrm_round2"].get("nonsalient_recall")
    mi = [r[k]["miou"] for k in ("be_round1", "pom_round1", "nsrm_round2")]
    out = {
        "round2_ratio": dict(value=r["nsrm_round2"]["ratio_to_upper_bound"], target=0.85,
                             ok=r["nsrm_round2"]["ratio_to_upper_bound"] >= 0.85),
        "monotone": dict(value=mi, ok=mi[0] < mi[1] < mi[2]),
        "glore_not_worse": dict(value=[r["nsrm_round2"]["miou"], r["nsrm_round2_no_glore"]["miou"]],
                                ok=r["nsrm_round2"]["miou"] >= r["nsrm_round2_no_glore"]["miou"]),
    }
    if be_ns is not None and final_ns is not None:
        out["nonsalient_2x"] = dict(value=[final_ns, be_ns], ok=final_ns >= 2 * be_ns)
    for k, v in out.items():
        v["text"] = TARGETS[k]
    return out


def ensure_results(run: Run, progress: bool = True) -> dict[str, Any]:
    """Stage `results`: every model and label set of the ablation, `results/metrics.json`,
    `results/ablation.png` and the run's `report.md` (docs/method.md §8).

    Trains what is missing (upper bound, BE round 1, round 1, NSRM, round 2, and the GloRe-off
    pipeline: classifier, IAM, maps, pseudo labels, both rounds). metrics.json holds one entry per
    `RESULT_ROWS` key (`miou`, `ratio_to_upper_bound`, `nonsalient_recall`, `salient_recall`,
    `iou`, `stage`) and per `LABEL_ROWS` key (`precision`, `coverage`, `miou`,
    `nonsalient_recall`, `stage`), all rates as fractions in 0..1, plus the checks of `TARGETS`.
    """
    _require_val_masks(ensure_data(run, progress=progress))
    for which in SEG_MODELS:
        ensure_segmentation(run, which, progress=progress)
    for glore in (True, False):
        ensure_masked(run, progress=progress, glore=glore)

    def compute() -> dict[str, Any]:
        return _collect_results(run)

    rec = run.ensure("results", compute)
    write_report(run)
    return rec


def _require_val_masks(root: Path) -> None:
    """The results need GT masks of every val image (mIoU, the upper bound): fail before any
    training with the folder and the first missing file, not with a KeyError at the end. The
    folder is the one `load_ground_truth` reads (`gt_mask_dir`)."""
    from nsrom_lib.data.voc import gt_mask_dir, read_split

    names = read_split(root, "val")
    d = gt_mask_dir(root)
    missing = [n for n in names if not (d / f"{n}.png").is_file()]
    if missing:
        raise DataError(
            f"the results stage measures val mIoU against ground truth, but {len(missing)} of "
            f"the {len(names)} val images of {root} have no mask in {d} (first: "
            f"{missing[0]}.png). Put the palette PNG masks there (VOC: SegmentationClass/ or "
            "SegmentationClassAug/), or list only images with masks in "
            f"{root / 'ImageSets' / 'Segmentation' / 'val.txt'}."
        )


def _collect_results(run: Run) -> dict[str, Any]:
    d = run.stage_dir("results")
    out: dict[str, Any] = dict(profile=run.cfg.profile, run_dir=str(run.dir))
    recs = {w: run.record(SEG_MODELS[w]["stage"]) or {} for w in SEG_MODELS}
    no_miou = [SEG_MODELS[w]["stage"] for w, r in recs.items() if "miou" not in r.get("metrics", {})]
    if no_miou:
        raise DataError(f"stages {no_miou} of {run.dir} have no val mIoU (were they trained "
                        "without val ground truth?); delete them and run the results stage again.")
    upper = recs["upper_bound"]["metrics"]["miou"]
    for which in list(RESULT_ROWS) + ["pom_round1_no_glore"]:
        m = recs[which]["metrics"]
        out[which] = dict(
            miou=m["miou"], ratio_to_upper_bound=round(m["miou"] / upper, 4) if upper else None,
            nonsalient_recall=m.get("nonsalient_recall"), salient_recall=m.get("salient_recall"),
            iou=m.get("iou"), stage=SEG_MODELS[which]["stage"], title=SEG_MODELS[which]["title"],
            train_seconds=m.get("train_seconds"),
        )
    for key, (stage, field_, folder) in LABEL_ROWS.items():
        m = (run.record(stage) or {}).get("metrics", {}).get(field_, {})
        out[key] = {k: m.get(k) for k in ("precision", "coverage", "miou", "nonsalient_recall",
                                          "ignore_share")}
        out[key]["stage"] = folder
    out["checks"] = results_checks(out)
    atomic_write_json(d / "metrics.json", out)
    _ablation_figure(out, d / "ablation.png")
    return {k: out[k] for k in RESULT_ROWS + tuple(LABEL_ROWS) + ("checks",)}


def load_results(run: Run) -> dict[str, Any]:
    """`results/metrics.json` of a run (computing the results stage if needed)."""
    ensure_results(run)
    return json.loads((run.dir / "results" / "metrics.json").read_text())


def _ablation_figure(metrics: dict[str, Any], path: Path) -> None:
    # No matplotlib.use(...): inside a notebook kernel that would switch inline figures off.
    from nsrom_lib.viz import ablation_chart

    fig = ablation_chart(metrics)
    from nsrom_lib.data.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def results_table(metrics: dict[str, Any]) -> str:
    """The ablation table of a `metrics.json` dict as Markdown."""
    from nsrom_lib.viz import quality_table

    rows = {metrics[k]["title"] + f" (`{metrics[k]['stage']}`)": metrics[k] for k in RESULT_ROWS}
    return quality_table(rows, dict(miou="val mIoU", ratio_to_upper_bound="ratio to upper bound",
                                    nonsalient_recall="non-salient recall",
                                    salient_recall="salient recall"))


def label_table(metrics: dict[str, Any]) -> str:
    """The label-quality table (training images) of a `metrics.json` dict as Markdown."""
    from nsrom_lib.viz import quality_table

    names = dict(be_labels="BE labels", pom_labels="BE + POM labels", masked_labels="NSRM labels")
    rows = {f"{names[k]} (`{metrics[k]['stage']}`)": metrics[k] for k in LABEL_ROWS}
    return quality_table(rows, dict(precision="precision", coverage="coverage", miou="mIoU",
                                    nonsalient_recall="non-salient recall"))


def stage_times(run: Run | str | os.PathLike) -> dict[str, float]:
    """Wall time of every stage (and variant) with a record in the run (a `Run` or its folder):
    {stage folder: seconds}, in pipeline order."""
    run_dir = run.dir if isinstance(run, Run) else Path(run)
    out: dict[str, float] = {}
    for rec_path in sorted(run_dir.glob("**/record.json")):
        rel = rec_path.parent.relative_to(run_dir).as_posix()
        if rel.split("/", 1)[0] not in STAGES:
            continue
        try:
            out[rel] = float(json.loads(rec_path.read_text()).get("seconds", 0.0))
        except (json.JSONDecodeError, OSError, ValueError):
            continue
    order = {s: i for i, s in enumerate(STAGES)}
    return dict(sorted(out.items(), key=lambda kv: (order[kv[0].split("/")[0]], kv[0])))


def write_report(run: Run, notebooks: list[dict[str, Any]] | None = None) -> Path:
    """Write `<run>/report.md`: profile, machine, the ablation table, the checks, label quality,
    per-class IoU, the figure and the wall time per stage (and per notebook when given)."""
    metrics = json.loads((run.dir / "results" / "metrics.json").read_text())
    rec = run.record("results") or {}
    cfg = run.cfg
    lines = [
        f"# NSROM on {'SynthVOC' if cfg.data_root is None else cfg.data_root}: profile `{cfg.profile}`",
        "",
        f"Machine: {rec.get('machine', platform.node())}, CPU {rec.get('cpu') or cpu_model()}, "
        f"torch {rec.get('torch', '?')} with {rec.get('threads', '?')} threads; device "
        f"`{resolve_device(cfg.device)}`; results finished {rec.get('finished', '?')}. Run folder "
        f"`{run.dir}`; configuration in `config.json`. Every number below is read from the run's "
        "stage records and `results/metrics.json`. Another CPU or torch build gives other weakly "
        "supervised numbers for the same seed (the upper bound barely moves).",
        "",
        "## Ablation (validation split)",
        "",
        results_table(metrics),
        "",
        "![ablation](results/ablation.png)",
        "",
        "## Targets",
        "",
    ]
    for v in metrics["checks"].values():
        val = v["value"]
        shown = ", ".join(f"{x:.3f}" for x in val) if isinstance(val, list) else f"{val:.3f}"
        lines.append(f"- {'met' if v['ok'] else '**missed**'}: {v['text']} ({shown})")
    lines += ["", "## Label quality (training images, against GT)", "", label_table(metrics), ""]
    names = _class_names(run)
    head = ["background", *names]
    lines += ["## Per-class IoU (validation)", "",
              "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in RESULT_ROWS:
        iou = metrics[k].get("iou") or []
        lines.append(f"| {k} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in iou) + " |")
    lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    for stage, sec in stage_times(run).items():
        lines.append(f"| `{stage}` | {sec:.1f} |")
    if notebooks:
        lines += ["", "| notebook | seconds |", "|---|---|"]
        lines += [f"| {n['notebook']} | {n['seconds']:.1f} |" for n in notebooks]
        lines.append(f"| total | {sum(n['seconds'] for n in notebooks):.1f} |")
    path = run.dir / "report.md"
    from nsrom_lib.data.io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _class_names(run: Run) -> list[str]:
    """The class names of the run's dataset (`classes.txt`), or c0, c1, ... without one."""
    from nsrom_lib.data.voc import read_class_names

    try:
        names = read_class_names(ensure_data(run, progress=False))
    except (DataError, OSError):
        names = None
    return list(names) if names else [f"c{i}" for i in range(run.cfg.num_classes)]


# ----------------------------------------------------------------------------- what a notebook will train


def _stage_work(cfg: RunConfig, stage: str) -> str:
    """What computing `stage` means, in words a reader can weigh (epochs x images)."""
    top = stage.split("/", 1)[0]
    n = f"{cfg.n_train:,} images" if cfg.n_train else "the training split"
    return {
        "data": "generates the images" if cfg.data_root is None else "checks the dataset",
        "classifier": f"trains {cfg.cls_epochs} epochs on {n}",
        "iam": f"trains {cfg.iam_epochs} epochs on {n}",
        "maps": f"exports the maps of {n}",
        "pseudo": f"labels {n}",
        "seg1": f"trains {cfg.seg_epochs} epochs on {n}",
        "masked": f"predicts and masks {n}",
        "seg2": f"trains {cfg.seg_epochs} epochs on {n}",
        "results": "measures the models",
    }.get(top, "computes")


def stage_status(run: Run, stages: Iterable[str]) -> str:
    """A Markdown table: for each stage, done (and how long it took) or what computing it means.

    What a notebook shows before it trains: the reader knows what is coming and why a cell
    takes minutes. Segmentation stages are named as in `SEG_MODELS` (e.g. `seg1/be`).
    """
    by_stage = {spec["stage"]: which for which, spec in SEG_MODELS.items()}
    lines = ["| stage | in this run folder |", "|---|---|"]
    for stage in stages:
        key = _seg_key(run, by_stage[stage]) if stage in by_stage else run.stage_key(stage)
        rec = run.record(stage)
        if rec is not None and rec.get("key") == key:
            lines.append(f"| `{stage}` | done, {rec.get('seconds', 0):.0f} s ({rec.get('finished', '')}) |")
        else:
            lines.append(f"| `{stage}` | **to compute now**: {_stage_work(run.cfg, stage)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- notebooks


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in order."""
    folder = Path(folder) if folder else project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]*_*.ipynb"))  # 02b_... sorts after 02_...


#: Output types that only live with a running kernel; frozen in a saved copy.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def execute_notebook(notebook: str | os.PathLike, output: str | os.PathLike,
                     parameters: dict[str, Any]) -> None:
    """Execute one notebook with papermill, as `nsrom run` and the tests do.

    The kernel runs headless (`nsrom_lib.progress.headless`): no tqdm widgets, and widgets
    show a static picture, so the executed copy holds nothing that needs a live kernel.
    """
    import papermill as pm

    from nsrom_lib.progress import headless_env

    nb = Path(notebook)
    with headless_env():
        pm.execute_notebook(str(nb), str(output), parameters=parameters, kernel_name="python3",
                            cwd=str(nb.parent), progress_bar=False)


def widget_outputs(nb: dict[str, Any]) -> list[str]:
    """Outputs of an executed notebook (as JSON) that are frozen widgets: "cell N: what"."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = "".join(data.get("text/plain", ""))
            if WIDGET_MIME in data:
                found.append(f"cell {i}: widget view ({text[:40]!r})")
            elif re.match(r"^(VBox|HBox|IntSlider|FloatSlider|HTML|Image|Output)\(", text):
                found.append(f"cell {i}: widget repr ({text[:40]!r})")
    return found


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
    from nsrom_lib.progress import progress_bar as tqdm

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
        execute_notebook(nb, out, params)
        done.append(dict(notebook=nb.name, seconds=round(time.perf_counter() - t0, 1),
                         output=str(out)))
    atomic_write_json(run_dir / "run_summary.json", dict(profile=profile, notebooks=done))
    return done
