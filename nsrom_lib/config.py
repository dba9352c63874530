"""Run configuration: one dataclass, a few named profiles, `--set key=value` overrides.

docs/design.md, "Runs, profiles and devices": a profile fixes the sizes of every stage; the run
folder keeps the resolved configuration as `config.json`. This module imports no torch,
so the CLI can parse and validate arguments quickly.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nsrom_lib.params import (
    BE,
    POM,
    RECIPE,
    RULE,
    BEParams,
    POMParams,
    RuleParams,
    TrainRecipe,
    bounds,
    describe,
    span,
)

__all__ = ["RunConfig", "PROFILES", "ConfigError", "make_config", "parse_set", "parse_overrides",
           "config_hash", "SYNTHVOC_MAX_CLASSES", "NOT_RESULT_KEYS", "NATIVE", "native_bf16"]

#: SynthVOC draws one shape per class (data/synthvoc.py CLASS_NAMES): at most this many classes.
SYNTHVOC_MAX_CLASSES = 8

#: Settings that say where and how fast a run computes, not what it computes: their fields carry
#: no stage (`_setting(..., None)`), so the stage keys leave them out and other values of them
#: retrain nothing.
NOT_RESULT_KEYS = frozenset({"device", "nproc", "num_threads", "num_workers", "channels_last",
                             "extra"})


#: The value of `cpu_bf16` (in a profile or `--set cpu_bf16=native`) that `make_config` turns
#: into True on a CPU with bfloat16 instructions and into False elsewhere (`native_bf16`).
NATIVE = "native"


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this machine's x86 CPU has bfloat16 instructions (the AVX512-BF16 or AMX-BF16
    flag of /proc/cpuinfo, or of the text `cpuinfo`), read without importing torch. False where
    /proc/cpuinfo cannot be read (not Linux) and on other architectures, whose bf16 speed has
    not been measured here."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    return re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", cpuinfo, re.MULTILINE) is not None


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


class ConfigError(ValueError):
    """A bad profile name, `--set` key or value: the message names it and the fix."""


def _setting(default: Any, stage: str | None, **meta: Any) -> Any:
    """A `RunConfig` field with the stage it feeds, in its metadata.

    stage: the first stage whose result depends on the field; its record key hashes it, and so
    do the keys of every later stage (`pipeline.run.STAGE_FIELDS` is derived from this). None:
    the field names the run or says where and how fast it computes (`NOT_RESULT_KEYS`), not
    what. meta: `warmup=False` leaves a classifier field out of the warm-up sub-stage's key;
    `predict_only=True` marks a segmentation field that changes predictions, not training;
    `keyed_unless=v` leaves the field out of every key while it has the value v (settings
    added after run folders existed, so that older records stay valid); `upper_bound=True`
    keys the fully supervised upper bound too (a setting of every training loop).
    """
    return field(default=default, metadata={"stage": stage, **meta})


@dataclass
class RunConfig:
    """Everything a run depends on. Profiles are instances; `--set` edits fields.

    Each field's metadata names the stage it feeds (`_setting`).
    """

    profile: str = _setting("quick", None)
    seed: int = _setting(0, "data")
    device: str = _setting("auto", None)  # "auto" -> CUDA when present, else CPU; or "cpu", "cuda", "cuda:1"
    # training processes of each network (torchrun, DistributedDataParallel): one per GPU, or
    # several sharing the CPU cores; the labels, maps and predictions are computed by one
    nproc: int = _setting(1, None, keyed_unless=1)
    # --- data (stage `data`) ---
    data_root: str | None = _setting(None, "data")  # None -> generate SynthVOC under the data folder
    image_size: int = _setting(96, "data")  # SynthVOC side length (px)
    n_train: int = _setting(400, "data")
    n_val: int = _setting(100, "data")
    num_classes: int = _setting(6, "data")  # foreground classes (20 for PASCAL VOC)
    # where the pieces of a dataset are when they are not where the VOC layout puts them
    # (data/README.md, "PASCAL VOC as downloaded"); the run never writes into data_root
    train_split: str = _setting("train", "data", keyed_unless="train")  # ImageSets/Segmentation/<name>.txt, or a list file's path
    saliency_dir: str | None = _setting(None, "data", keyed_unless=None)  # None -> <root>/Saliency
    cls_list: str | None = _setting(None, "data", keyed_unless=None)  # None -> ImageSets/Segmentation/<split>_cls.txt, else from the masks
    gt_dir: str | None = _setting(None, "data", keyed_unless=None)  # None -> <root>/SegmentationClassAug, else SegmentationClass
    # --- classifier with GloRe + OAA (stage `classifier`), integral attention (stage `iam`) ---
    backbone: str = _setting("small", "classifier")  # "small" (from scratch) or "vgg16" (output stride 8)
    pretrained: bool = _setting(False, "classifier")  # vgg16 only: ImageNet weights from the torch hub cache
    width: int = _setting(64, "classifier")  # small backbone: channels D of the features, extra convs and GloRe
    output_stride: int = _setting(4, "classifier")  # small backbone: 4 or 8 (vgg16: 8)
    channels_last: bool = _setting(True, None)  # channels_last weights/activations: much faster on CPU here
    num_threads: int = _setting(0, None)  # torch threads; 0 -> every core this process may use
    # DataLoader processes that read (decode, resize) the images and labels ahead of the loops;
    # -1 -> automatic (loop.loader_workers): none on the CPU, up to 8 on a GPU
    num_workers: int = _setting(-1, None)
    # bfloat16 autocast in every training loop on the CPU (classifier, IAM, segmentation): faster
    # on CPUs with native bf16 (AVX512-BF16 / AMX), but it changes the numbers, so it is keyed.
    # "native" (profile `default`) -> True on such a CPU, else False (`native_bf16`)
    cpu_bf16: bool = _setting(False, "classifier", keyed_unless=False, upper_bound=True)
    jitter: float = _setting(RECIPE.jitter, "classifier")  # colour jitter strength (brightness, contrast, saturation); no crop/flip
    cls_epochs: int = _setting(12, "classifier", warmup=False)  # OAA needs >= 2 (it starts in the second epoch)
    cls_batch_size: int = _setting(RECIPE.batch_size, "classifier")
    cls_optimizer: str = _setting(RECIPE.optimizer, "classifier")  # "adam" (from scratch) or "sgd" (the reference's recipe)
    cls_lr: float = _setting(RECIPE.lr, "classifier")
    cls_schedule: str = _setting(RECIPE.schedule, "classifier")  # "cosine", "step" (x0.1 at 1/3, 2/3) or "constant"
    cls_weight_decay: float = _setting(RECIPE.weight_decay, "classifier")
    oaa_snapshots: int = _setting(6, "classifier", warmup=False)  # images whose accumulated maps are kept after every epoch (figures)
    oaa_from_epoch: int = _setting(1, "classifier", warmup=False)  # 0-based epoch where OAA starts: 1 = the reference (second epoch)
    # epochs of a warm-up classifier (no GloRe, no OAA) on the same image-level labels
    # whose backbone initialises the classifier and the IAM: a stand-in for the reference's
    # ImageNet-initialised VGG-16, whose first-epoch CAMs already lie on objects (0: from scratch)
    cls_warmup_epochs: int = _setting(0, "classifier", keyed_unless=0)
    iam_epochs: int = _setting(6, "iam")
    iam_lr: float = _setting(1e-3, "iam")
    iam_batch_size: int = _setting(32, "iam")
    # --- pseudo labels (stage `pseudo`): BE (docs/method.md §3), POM (§4), the 1% rule ---
    be_fg: float = _setting(BE.fg, "pseudo", param=(BEParams, "fg"))  # scores below this become 0 (background channel included)
    be_conflict: float = _setting(BE.conflict, "pseudo", param=(BEParams, "conflict"))  # two or more channels above this -> ignore
    be_bg: int = _setting(BE.bg, "pseudo", param=(BEParams, "bg"))  # saliency (0..255) at or above this: a background pixel becomes ignore
    be_att: float = _setting(BE.att, "pseudo", param=(BEParams, "att"))  # some OA-CAM strictly above this: a background pixel becomes ignore
    pom_threshold: float = _setting(POM.pom, "pseudo", param=(POMParams, "pom"))  # POM's TQ branch: the CAM values above this
    min_label_ratio: float = _setting(RULE.ratio, "pseudo", param=(RuleParams, "ratio"))  # fewer class pixels than this share: the whole label ignored
    # --- segmentation rounds (stages `seg1`, `seg2` and the baselines; docs/method.md §5, §7) ---
    seg_backbone: str = _setting("small", "seg1")  # "small" (from scratch) or "resnet50" / "resnet101" (output stride 8)
    seg_pretrained: bool = _setting(False, "seg1")  # resnet only: ImageNet weights from the torch hub cache
    seg_width: int = _setting(64, "seg1")  # small backbone: channels of the features
    seg_output_stride: int = _setting(8, "seg1")  # small backbone: 8 (DeepLab-v2) or 4
    seg_epochs: int = _setting(20, "seg1")
    seg_batch_size: int = _setting(32, "seg1")
    seg_optimizer: str = _setting("adam", "seg1")  # "adam" (from scratch) or "sgd" (the reference's, with pretrained)
    seg_lr: float = _setting(1e-3, "seg1")  # poly decay (power 0.9) per iteration
    seg_weight_decay: float = _setting(1e-4, "seg1")
    seg_scale: float = _setting(0.25, "seg1")  # random rescaling by a factor in [1 - s, 1 + s], then crop / pad
    seg_test_flip: bool = _setting(True, "seg1", predict_only=True)  # average the prediction over the image and its mirror
    seg_crf: bool = _setting(False, "seg1", predict_only=True)  # refine predictions with the dense CRF (the reference's; crf.py)
    # --- non-salient region masking (stage `masked`; docs/method.md §6) ---
    nsrm_kernel: int = _setting(0, "masked")  # dilation box side in px; 0 -> the reference's 30 px scaled (nsrm_kernel_for)
    extra: dict[str, Any] = field(default_factory=dict, metadata={"stage": None})  # free-form notes kept in config.json

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- the parameter objects of the label steps (nsrom_lib.params), from this run's values ---
    def be_params(self) -> BEParams:
        return BEParams(fg=self.be_fg, conflict=self.be_conflict, bg=self.be_bg, att=self.be_att)

    def pom_params(self) -> POMParams:
        return POMParams(pom=self.pom_threshold)

    def rule_params(self) -> RuleParams:
        return RuleParams(ratio=self.min_label_ratio)

    def recipe(self, network: str) -> TrainRecipe:
        """The training recipe of `network`: "classifier" (also its warm-up), "iam" (the
        classifier's optimiser and schedule, its own rate and batch) or "segmentation" (poly decay)."""
        if network == "segmentation":
            return TrainRecipe(optimizer=self.seg_optimizer, lr=self.seg_lr, schedule="poly",
                               weight_decay=self.seg_weight_decay, jitter=self.jitter,
                               batch_size=self.seg_batch_size)
        if network not in ("classifier", "iam"):
            raise ValueError(f"no recipe for {network!r}: use classifier, iam or segmentation")
        iam = network == "iam"
        return TrainRecipe(optimizer=self.cls_optimizer, lr=self.iam_lr if iam else self.cls_lr,
                           schedule=self.cls_schedule, weight_decay=self.cls_weight_decay,
                           jitter=self.jitter,
                           batch_size=self.iam_batch_size if iam else self.cls_batch_size)


PROFILES: dict[str, dict[str, Any]] = {
    # tests: seconds per stage
    "smoke": dict(image_size=64, n_train=48, n_val=16, width=16, cls_epochs=3, iam_epochs=2,
                  cls_batch_size=16, iam_batch_size=16, oaa_snapshots=3, seg_width=16,
                  seg_epochs=2, seg_batch_size=16, num_workers=0),
    # the notebooks' defaults: the whole sequence in a few minutes on a 2-core CPU
    "quick": dict(image_size=96, n_train=400, n_val=100, cls_epochs=30, iam_epochs=15,
                  seg_epochs=30),
    # `make run`: clear effects, still CPU-friendly
    # bf16 training where the CPU has it: `make results` a quarter less time; it moves the rows
    # with GloRe (docs/results.md, "float32 and bfloat16, paired on three seeds")
    "default": dict(image_size=96, n_train=2000, n_val=500, cls_epochs=12, iam_epochs=15,
                    cpu_bf16=NATIVE),
    # larger images and networks, for a lent GPU
    "gpu": dict(image_size=128, n_train=6000, n_val=1000, width=128,
                cls_epochs=20, iam_epochs=10, seg_width=128, seg_epochs=30),
    # real PASCAL VOC 2012 on disk (set data_root): the reference's VGG-16 recipe
    "voc": dict(num_classes=20, image_size=321, n_train=0, n_val=0, train_split="train_aug",
                backbone="vgg16",
                pretrained=True, output_stride=8, cls_optimizer="sgd", cls_lr=1e-3,
                cls_schedule="step", cls_weight_decay=5e-4, cls_epochs=15, cls_batch_size=5,
                iam_epochs=15, iam_batch_size=5, iam_lr=1e-3, jitter=0.3,
                seg_backbone="resnet101", seg_pretrained=True, seg_optimizer="sgd", seg_lr=2.5e-4,
                seg_weight_decay=5e-4, seg_batch_size=10, seg_epochs=20, seg_scale=0.25,
                seg_crf=True, nsrm_kernel=30),
}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Turn a `--set` string (or a Python value) into the field's type, or raise ConfigError."""
    t = str(typ)
    if not isinstance(value, str):
        return value
    try:
        if "dict" in t:
            out = json.loads(value)
            if not isinstance(out, dict):
                raise ValueError("not a JSON object")
            return out
        if value.lower() in ("none", "null") and "None" in t:
            return None
        if t.startswith("int") or t == "<class 'int'>":
            return int(value)
        if t.startswith("float") or t == "<class 'float'>":
            return float(value)
        if t.startswith("bool") or t == "<class 'bool'>":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean")
        return value
    except ValueError as e:
        raise ConfigError(
            f"--set {key}={value!r}: expected {t} ({e}); write e.g. --set {key}={_example(key)}."
        ) from e


def _example(key: str) -> str:
    """The default of config field `key`, written as `--set` takes it (for error messages)."""
    value = getattr(RunConfig(), key)
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _check_type(key: str, value: Any, typ: Any) -> None:
    t = str(typ)
    ok = True
    if value is None:
        ok = "None" in t
    elif t.startswith("int") or t == "<class 'int'>":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t.startswith("float") or t == "<class 'float'>":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t.startswith("bool") or t == "<class 'bool'>":
        ok = isinstance(value, bool)
    elif t.startswith("str"):
        ok = isinstance(value, str)
    elif t.startswith("dict"):
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(
            f"config key {key!r} expects {t}, got {value!r} ({type(value).__name__}); "
            f"pass a {t} value, e.g. {key}={getattr(RunConfig(), key)!r} "
            f"(or --set {key}={_example(key)})."
        )


def make_config(profile: str = "quick", **overrides: Any) -> RunConfig:
    """Build the configuration of `profile` with `overrides` applied (values or strings).

    Unknown profiles or keys and values of the wrong type raise ConfigError naming them.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    values: dict[str, Any] = dict(PROFILES[profile])
    for key, value in overrides.items():
        if key not in fields or key == "profile":
            known = sorted(k for k in fields if k != "profile")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; known keys: {', '.join(known)}.")
        native = (key, value) == ("cpu_bf16", NATIVE)
        values[key] = value if native else _coerce(key, value, fields[key].type)
    if values.get("cpu_bf16") == NATIVE:
        values["cpu_bf16"] = native_bf16()
    for key, value in values.items():
        _check_type(key, value, fields[key].type)
    cfg = RunConfig(profile=profile, **values)
    if cfg.image_size < 32:
        raise ConfigError(f"image_size={cfg.image_size} is too small; use at least 32 (--set image_size=...).")
    if cfg.num_classes < 1 or cfg.num_classes > 254:
        raise ConfigError(f"num_classes={cfg.num_classes} must be in 1..254.")
    if cfg.data_root is None and cfg.profile != "voc" and (cfg.n_train < 1 or cfg.n_val < 1):
        raise ConfigError("n_train and n_val must be at least 1 for a generated dataset.")
    if cfg.backbone not in ("small", "vgg16"):
        raise ConfigError(f"backbone={cfg.backbone!r}: use 'small' or 'vgg16'.")
    if cfg.cls_optimizer not in ("adam", "sgd"):
        raise ConfigError(f"cls_optimizer={cfg.cls_optimizer!r}: use 'adam' or 'sgd'.")
    if cfg.cls_schedule not in ("cosine", "step", "constant"):
        raise ConfigError(f"cls_schedule={cfg.cls_schedule!r}: use 'cosine', 'step' or 'constant'.")
    if cfg.cls_epochs < 2:
        raise ConfigError(f"cls_epochs={cfg.cls_epochs}: OAA starts in the second epoch; use >= 2 (--set cls_epochs=...).")
    if cfg.output_stride not in (4, 8):
        raise ConfigError(f"output_stride={cfg.output_stride}: use 4 or 8.")
    if cfg.seg_backbone not in ("small", "resnet50", "resnet101"):
        raise ConfigError(f"seg_backbone={cfg.seg_backbone!r}: use 'small', 'resnet50' or 'resnet101'.")
    if cfg.seg_optimizer not in ("adam", "sgd"):
        raise ConfigError(f"seg_optimizer={cfg.seg_optimizer!r}: use 'adam' or 'sgd'.")
    if cfg.seg_output_stride not in (4, 8) or (cfg.seg_backbone != "small" and cfg.seg_output_stride != 8):
        raise ConfigError(f"seg_output_stride={cfg.seg_output_stride}: use 8 (or 4 with the small backbone).")
    if cfg.seg_epochs < 1 or cfg.seg_batch_size < 1:
        raise ConfigError("seg_epochs and seg_batch_size must be at least 1.")
    if not 0 <= cfg.seg_scale < 1:
        raise ConfigError(f"seg_scale={cfg.seg_scale}: use a value in [0, 1), e.g. 0.25 for 0.75..1.25.")
    if cfg.nsrm_kernel < 0:
        raise ConfigError(f"nsrm_kernel={cfg.nsrm_kernel}: use 0 (scaled from the reference) or a size >= 1.")
    if cfg.profile == "voc" and cfg.data_root is None:
        raise ConfigError("profile 'voc' needs the dataset: --set data_root=/path/to/VOC2012.")
    _check_ranges(cfg)
    return cfg


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_ranges(cfg: RunConfig) -> None:
    """Values of the right type but out of range: a ConfigError naming the key and the fix."""

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ConfigError(
                f"{key}={getattr(cfg, key)!r}: {rule}; set it with --set {key}=... "
                f"(default {_example(key)})."
            )

    for f in dataclasses.fields(RunConfig):
        v = getattr(cfg, f.name)
        if isinstance(v, float):
            need(math.isfinite(v), f.name, "must be a finite number (not NaN or infinity)")
    need(cfg.seed >= 0, "seed", "seeds must be >= 0")
    need(_DEVICE.fullmatch(cfg.device) is not None, "device", "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    need(cfg.data_root is None or cfg.data_root.strip() != "", "data_root",
         "give the dataset folder, or none for SynthVOC")
    for key in ("saliency_dir", "cls_list", "gt_dir"):
        need(getattr(cfg, key) is None or getattr(cfg, key).strip() != "", key,
             "give a path, or none for the place the VOC layout names")
    need(cfg.train_split.strip() != "", "train_split",
         "give a split name of ImageSets/Segmentation (e.g. train_aug) or a list file's path")
    need(cfg.n_train >= 0 and cfg.n_val >= 0, "n_train" if cfg.n_train < 0 else "n_val", "use >= 0")
    if cfg.data_root is None and cfg.profile != "voc":
        need(cfg.num_classes <= SYNTHVOC_MAX_CLASSES, "num_classes",
             f"SynthVOC draws {SYNTHVOC_MAX_CLASSES} shapes, use 1..{SYNTHVOC_MAX_CLASSES} "
             "(or set data_root to a dataset with more classes)")
    for key in ("width", "seg_width", "cls_batch_size", "iam_batch_size", "iam_epochs"):
        need(getattr(cfg, key) >= 1, key, "use >= 1")
    for key in ("cls_lr", "iam_lr", "seg_lr"):
        need(getattr(cfg, key) > 0, key, "learning rates must be > 0")
    for key in ("cls_weight_decay", "seg_weight_decay", "jitter"):
        need(getattr(cfg, key) >= 0, key, "use >= 0")
    need(cfg.num_threads >= 0, "num_threads", "use 0 (every core) or a thread count >= 1")
    need(cfg.nproc >= 1, "nproc", "use 1 (one training process) or a process count >= 2")
    need(cfg.num_workers >= -1, "num_workers",
         "use -1 (automatic), 0 (read in the training process) or a process count >= 1")
    need(cfg.oaa_snapshots >= 0, "oaa_snapshots", "use >= 0")
    need(cfg.cls_warmup_epochs >= 0, "cls_warmup_epochs", "use 0 (from scratch) or an epoch count >= 1")
    need(0 <= cfg.oaa_from_epoch < cfg.cls_epochs, "oaa_from_epoch",
         f"OAA must start within the classifier's cls_epochs={cfg.cls_epochs}: "
         f"use 0..{cfg.cls_epochs - 1}")
    for f in dataclasses.fields(RunConfig):  # the label settings: ranges from nsrom_lib.params
        if "param" in f.metadata:
            lo, hi = bounds(*f.metadata["param"])
            value = getattr(cfg, f.name)
            need((lo is None or value >= lo) and (hi is None or value <= hi), f.name,
                 f"use a value in {span(*f.metadata['param'])} "
                 f"({describe(*f.metadata['param'])})")
    need(not cfg.pretrained or cfg.backbone == "vgg16", "pretrained",
         "ImageNet weights exist for backbone='vgg16' only; use pretrained=false with 'small'")
    need(cfg.backbone != "vgg16" or cfg.output_stride == 8, "output_stride",
         "backbone='vgg16' has output stride 8")
    need(not cfg.seg_pretrained or cfg.seg_backbone != "small", "seg_pretrained",
         "the small segmenter trains from scratch; use seg_backbone=resnet50/resnet101 or "
         "seg_pretrained=false")


def parse_set(items: list[str] | None) -> dict[str, str]:
    """Parse `--set key=value` strings into a dict (values stay strings until make_config)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set seed=1.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


_OVERRIDES_EXAMPLE = ("""overrides={"n_train": 800, "seed": 1}, or with papermill """
                      """-p overrides 'n_train=800,seed=1' or -y 'overrides: {n_train: 800}'""")
# a comma that starts the next `key=` (not one inside a value such as extra={"a":1,"b":2})
_NEXT_PAIR = re.compile(r",(?=\s*[A-Za-z_]\w*\s*=)")


def parse_overrides(value: Any) -> dict[str, Any]:
    """The notebooks' `overrides` parameter as a dict of config overrides for `make_config`.

    Accepts a dict (returned as is), None or "" (no overrides), a JSON object string
    ('{"n_train": 800}'), a `key=value[,key=value]` string ("n_train=800,seed=1", what
    papermill's `-p overrides n_train=800` passes) or a list of such strings (as `--set`
    takes them). key=value values stay strings; `make_config` types and checks them, and
    unknown keys. Anything else (a number, a JSON list, a string with no `=`) raises
    ConfigError naming the value and showing a correct example.
    """
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
            if text[0] in "{[":
                raise ConfigError(
                    f"overrides={value!r} is not valid JSON; write e.g. {_OVERRIDES_EXAMPLE}."
                ) from None
        else:
            if isinstance(parsed, dict):
                return parsed
            raise ConfigError(
                f"overrides={value!r} is a JSON {type(parsed).__name__}, not an object of "
                f"config keys; write e.g. {_OVERRIDES_EXAMPLE}."
            )
        items: list[Any] = [text]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(
            f"overrides={value!r} ({type(value).__name__}): expected a dict, a JSON object "
            f"string or key=value strings; write e.g. {_OVERRIDES_EXAMPLE}."
        )
    pairs = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(
                f"overrides={value!r}: item {item!r} is not a key=value string; "
                f"write e.g. {_OVERRIDES_EXAMPLE}."
            )
        for pair in _NEXT_PAIR.split(item):
            if "=" not in pair or not pair.split("=", 1)[0].strip():
                raise ConfigError(
                    f"overrides={value!r}: {pair.strip()!r} is not key=value; "
                    f"write e.g. {_OVERRIDES_EXAMPLE}."
                )
            pairs.append(pair)
    return parse_set(pairs)


def config_hash(values: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able dict (stage records compare it to skip work)."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
