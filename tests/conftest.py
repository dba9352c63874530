"""Shared fixtures: generated datasets and runs go to temporary folders, never into the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
    """Point the data and runs folders at session temp folders (kernels inherit the env)."""
    base = tmp_path_factory.mktemp("nsrom")
    old = {k: os.environ.get(k) for k in ("NSROM_DATA_DIR", "NSROM_RUNS_DIR")}
    os.environ["NSROM_DATA_DIR"] = str(base / "data")
    os.environ["NSROM_RUNS_DIR"] = str(base / "runs")
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def quick_synthvoc(tmp_path_factory) -> Path:
    """SynthVOC on the `quick` profile (400 train / 100 val, 96 px), generated once per session."""
    from nsrom_lib.config import make_config
    from nsrom_lib.data.synthvoc import generate_synthvoc
    from nsrom_lib.pipeline import synthvoc_config_for

    root = tmp_path_factory.mktemp("synthvoc_quick")
    generate_synthvoc(root, synthvoc_config_for(make_config("quick")), progress=False)
    return root


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A smoke run folder with its stages through `pseudo` done (the explorer's inputs), built
    once per session."""
    from nsrom_lib.pipeline import ensure_pseudo, open_run

    run = open_run(tmp_path_factory.mktemp("smoke_run") / "run", "smoke")
    ensure_pseudo(run, progress=False)
    return run.dir


@pytest.fixture
def one_thread():
    """Bitwise reproducibility on the CPU needs a fixed thread count: one torch thread for the
    test, the old count restored afterwards (`pytestmark = pytest.mark.usefixtures(...)`)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
