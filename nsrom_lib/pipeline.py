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
from collections.abc import Callable
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
    "synthvoc_config_for",
    "list_notebooks",
    "run_notebooks",
]

STAGES = ["data", "classifier", "iam", "maps", "pseudo", "seg1", "masked", "seg2", "results"]


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
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
        d = self.dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_key(self, stage: str, **extra: Any) -> str:
        """The key a stage's record must carry: a hash of the configuration (and `extra`)."""
        values = self.cfg.to_dict()
        values.pop("device", None)  # where it ran does not change what it computes
        values.pop("extra", None)
        return config_hash({"stage": stage, **values, **extra})

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

    def ensure(self, stage: str, compute: Callable[[], dict[str, Any]], **info: Any) -> dict[str, Any]:
        """Run `compute()` (which returns metrics) unless the stage is already done; return the record."""
        key = self.stage_key(stage)
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
