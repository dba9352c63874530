"""The run folder: configuration, stage keys, completion records (docs/design.md, "Runs, profiles
and devices").

A run is a folder `runs/<name>/` holding `config.json`, one sub-folder per stage (`data`,
`classifier`, `iam`, `maps`, `pseudo`, `seg1`, `masked`, `seg2`, `results`) with its artefacts and
a `record.json` written only after the artefacts are complete, and the executed notebooks in
`notebooks/`. A stage whose record carries the same key (a hash of the configuration it depends
on) is not recomputed, so every notebook can run alone and an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from nsrom_lib import distributed as dist
from nsrom_lib.config import (
    NOT_RESULT_KEYS,
    ConfigError,
    RunConfig,
    config_hash,
    make_config,
    parse_overrides,
)
from nsrom_lib.data.io import atomic_write_json
from nsrom_lib.data.synthvoc import SynthVOCConfig
from nsrom_lib.device import machine_info

log = logging.getLogger(__name__)

__all__ = [
    "STAGES", "LOCK_NAME", "STAGE_FIELDS", "STAGE_VERSIONS", "WARMUP_STAGE", "UPPER_BOUND_FIELDS", "SEG_PREDICT_FIELDS", "Run",
    "open_run",
    "project_root", "default_data_dir", "default_runs_dir", "synthvoc_config_for", "dataset_id",
    "variant_stage", "reopen_run",
]


#: The lock file's name in a stage folder (`Run.lock_path`).
LOCK_NAME = ".lock"

STAGES = ["data", "classifier", "iam", "maps", "pseudo", "seg1", "masked", "seg2", "results"]


#: Sub-stage of `classifier`: the warm-up backbone (`ensure_warmup`).
WARMUP_STAGE = "classifier/warmup"

#: The stages whose keys hash only the fields they depend on, upstream first; `results` (and
#: any stage not listed) depends on the whole configuration but device and extra.
_KEYED_STAGES = ("data", "classifier", "iam", "maps", "pseudo", "seg1", "masked", "seg2")
_FIELDS = dataclasses.fields(RunConfig)


def _fields_up_to(stage: str) -> tuple[str, ...]:
    """The fields of `stage` and of every stage upstream of it (RunConfig metadata)."""
    upstream = _KEYED_STAGES[:_KEYED_STAGES.index(stage) + 1]
    return tuple(f.name for f in _FIELDS if f.metadata.get("stage") in upstream)


#: The configuration keys each stage's result depends on: its record key hashes only these,
#: so changing a downstream setting leaves an upstream stage valid. Derived from the `stage`
#: each RunConfig field names (`config._setting`); each includes its upstream's keys; fields
#: without a stage (where and how fast, `NOT_RESULT_KEYS`, and the profile's name) are in none.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {s: _fields_up_to(s) for s in _KEYED_STAGES}
# the classifier's recipe without the settings it does not use (cls_epochs and the OAA ones)
STAGE_FIELDS[WARMUP_STAGE] = tuple(f.name for f in _FIELDS if f.name in STAGE_FIELDS["classifier"]
                                   and f.metadata.get("warmup", True))
#: Settings added after run folders existed: at these (default) values they are left out of
#: the stage keys, so the records of older runs stay valid instead of retraining everything.
_KEYED_ONLY_IF_SET: dict[str, Any] = {f.name: f.metadata["keyed_unless"] for f in _FIELDS
                                      if "keyed_unless" in f.metadata}
#: Stages whose output grew after run folders existed: their version is part of their key, so an
#: older record is recomputed (its upstream stages reused, only what it lacks computed). The
#: results stage measures the OAA ablation (round 1 and labels from the CAM) since version 2.
STAGE_VERSIONS: dict[str, int] = {"results": 2}
#: Settings that change a segmentation model's predictions but not its training: changing them
#: re-predicts with the stored model (unless the model's own labels came from predictions).
SEG_PREDICT_FIELDS = tuple(f.name for f in _FIELDS if f.metadata.get("predict_only"))
#: The fully supervised upper bound depends on the data and the segmentation settings only, and
#: on the settings of every training loop (`upper_bound=True`: cpu_bf16).
UPPER_BOUND_FIELDS = tuple(f.name for f in _FIELDS if f.metadata.get("stage") in ("data", "seg1")
                           or f.metadata.get("upper_bound"))


def project_root() -> Path:
    """The repository root when nsrom_lib runs from a checkout, else the current folder."""
    here = Path(__file__).resolve().parents[2]  # nsrom_lib/pipeline/run.py -> the checkout
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return Path.cwd()


def default_data_dir() -> Path:
    """Where generated datasets go: $NSROM_DATA_DIR, else `<repo>/data`."""
    return Path(os.environ.get("NSROM_DATA_DIR") or project_root() / "data")


def default_runs_dir() -> Path:
    """Where runs go: $NSROM_RUNS_DIR, else `<repo>/runs`."""
    return Path(os.environ.get("NSROM_RUNS_DIR") or project_root() / "runs")


class Run:
    """A run folder: configuration, per-stage folders and completion records."""

    def __init__(self, run_dir: str | os.PathLike, cfg: RunConfig):
        self.dir = Path(run_dir).resolve()
        self.cfg = cfg
        self._unreadable: set[Path] = set()  # records already warned about (`record`)
        if dist.is_main():
            self._warn_if_reconfigured()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if dist.is_main():  # with several training processes, rank 0 writes
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
        if stage in STAGE_VERSIONS:
            extra = {"stage_version": STAGE_VERSIONS[stage], **extra}
        # every stage depends on the dataset's content, not only on its settings
        return config_hash({"stage": stage, "dataset": dataset_id(self.cfg), **values, **extra})

    def record(self, stage: str) -> dict[str, Any] | None:
        """The stage's completion record, or None when it has none.

        A record that exists but cannot be read (not JSON, not an object) counts as none, so the
        stage is computed again, and a warning names the file (once per file and Run).
        """
        p = self.dir / stage / "record.json"
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text())
            if not isinstance(rec, dict):
                raise ValueError(f"a JSON {type(rec).__name__}, not an object")
        except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
            if p not in self._unreadable:
                self._unreadable.add(p)
                log.warning("stage record %s cannot be read (%s): the stage %s will be computed "
                            "again and the record replaced", p, e, stage)
            return None
        return rec

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
            **machine_info(),  # machine, cpu, torch, torch_cuda, threads, gpu: never in the key
            **info,
        )
        atomic_write_json(self.stage_dir(stage) / "record.json", rec)
        return rec

    def ensure(self, stage: str, compute: Callable[[], dict[str, Any]], key: str | None = None,
               collective: bool = False, **info: Any) -> dict[str, Any]:
        """Run `compute()` (which returns metrics) unless the stage is already done; return the record.

        key: the record's key (default `stage_key(stage)`, the whole configuration). While it
        computes, the process holds the stage's lock file (`lock_path`): a second process
        ensuring the same stage of the same folder waits for it, then reuses its record instead
        of computing the stage twice.

        Several training processes (`nsrom_lib.distributed`): rank 0 decides whether the stage is
        done, for all of them. A `collective` stage (one that trains a network) is computed by
        every process, each returning what rank 0 returns; any other by rank 0 while the others
        wait. Rank 0 alone holds the lock and writes the record.
        """
        key = key or self.stage_key(stage)
        if dist.active():
            return self._ensure_together(stage, compute, key, collective, info)
        if self.is_done(stage, key):
            log.info("stage %s: done already (%s)", stage, self.dir / stage)
            return self.record(stage) or {}
        with self._stage_lock(stage):
            if self.is_done(stage, key):  # finished by the process this one waited for
                log.info("stage %s: finished by another process meanwhile (%s)", stage,
                         self.dir / stage)
                return self.record(stage) or {}
            t0 = time.perf_counter()
            metrics = compute()
            return self.complete(stage, metrics, time.perf_counter() - t0, key=key, **info)

    def _ensure_together(self, stage: str, compute: Callable[[], dict[str, Any]], key: str,
                         collective: bool, info: dict[str, Any]) -> dict[str, Any]:
        """`ensure` with several processes (see there)."""
        if dist.broadcast(self.is_done(stage, key) if dist.is_main() else None):
            return self.record(stage) or {}
        if dist.is_main():
            with self._stage_lock(stage):
                t0 = time.perf_counter()
                metrics = compute()
                self.complete(stage, metrics, time.perf_counter() - t0, key=key,
                              processes=dist.world_size(), **info)
        elif collective:
            compute()
        dist.barrier()  # the record is on disk
        return self.record(stage) or {}

    def lock_path(self, stage: str) -> Path:
        """The lock file a process holds while it computes `stage` (`ensure`)."""
        return self.stage_dir(stage) / LOCK_NAME

    @contextlib.contextmanager
    def _stage_lock(self, stage: str) -> Iterator[None]:
        """Hold the stage's lock, saying so when another process holds it first. The operating
        system releases it when a process dies, so an interrupted run leaves no stale lock."""
        # one instance per path in this process: a nested ensure of the same stage re-enters it
        lock = FileLock(self.lock_path(stage), is_singleton=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("stage %s of %s is being computed by another process (lock %s): "
                        "waiting for it to finish", stage, self.dir, lock.lock_file)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()


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


def reopen_run(run_dir: str | os.PathLike) -> Run:
    """An existing run folder with the configuration stored in its `config.json` (the same
    settings, so nothing is recomputed)."""
    path = Path(run_dir)
    try:
        stored = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"{path} is not a run folder (no readable config.json): "
                                "make run makes one") from e
    names = {f.name for f in _FIELDS}
    return Run(path, RunConfig(**{k: v for k, v in stored.items() if k in names}))


def synthvoc_config_for(cfg: RunConfig):
    """The SynthVOC generator settings of a run configuration."""
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


def variant_stage(stage: str, glore: bool = True) -> str:
    """The folder of `stage` in the main pipeline (`stage`) or in the GloRe-off ablation
    (`stage/no_glore`), e.g. `classifier/no_glore`, `pseudo/no_glore`, `seg2/no_glore`."""
    return stage if glore else f"{stage}/no_glore"
