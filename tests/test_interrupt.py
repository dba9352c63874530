"""Interrupted runs: a process killed with SIGKILL during classifier training, label
generation or segmentation training, then the same command again, finishes the run without
redoing completed stages or epochs and gives the same results as an uninterrupted run (smoke
profile, CPU, subprocesses; the kill comes from `nsrom_lib.faults`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nsrom_lib.data.io import read_label_png
from nsrom_lib.faults import ENV

# Runs one stage of a smoke run in a fresh interpreter: argv = run_dir, stage, overrides JSON.
SCRIPT = """
import json, sys
from nsrom_lib import pipeline as P
run = P.open_run(sys.argv[1], "smoke", **json.loads(sys.argv[3]))
stage = sys.argv[2]
if stage == "classifier":
    P.ensure_classifier(run, progress=False)
elif stage == "pseudo":
    P.ensure_pseudo(run, progress=False)
else:
    P.ensure_segmentation(run, stage, progress=False)
"""


def _stage(run_dir: Path, stage: str, crash: str | None = None, **overrides) -> int:
    env = dict(os.environ)
    env.pop(ENV, None)
    if crash:
        env[ENV] = crash
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir), stage, json.dumps(overrides)],
                       env=env, capture_output=True, text=True, timeout=300)
    if p.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(p.stderr[-3000:])
    return p.returncode


def _record(run_dir: Path, stage: str) -> dict | None:
    p = run_dir / stage / "record.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _same_metrics(a: dict, b: dict) -> None:
    skip = {"train_seconds", "img_per_s", "resumed_from_epoch", "predict_seconds", "label_seconds",
            "write_seconds", "images_per_s", "torch_threads", "threads"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A smoke run whose classifier, pseudo labels and round-1 model ran without interruption."""
    d = tmp_path_factory.mktemp("whole") / "run"
    for stage in ("classifier", "pseudo", "pom_round1"):
        assert _stage(d, stage, cls_epochs=4, seg_epochs=3) == 0
    return d


def test_classifier_killed_mid_training_resumes(uninterrupted, tmp_path):
    d = tmp_path / "run"
    assert _stage(d, "classifier", crash="classifier-epoch:2", cls_epochs=4, seg_epochs=3) == -signal.SIGKILL
    assert _record(d, "classifier") is None  # no record for an unfinished stage
    assert (d / "classifier" / "checkpoint.pt").is_file()
    assert _record(d, "data") is not None
    data_rec = _record(d, "data")
    assert _stage(d, "classifier", cls_epochs=4, seg_epochs=3) == 0
    rec = _record(d, "classifier")
    assert rec["metrics"]["resumed_from_epoch"] == 2  # epochs 1-2 were not trained again
    assert _record(d, "data") == data_rec  # the finished stage was not redone
    assert not (d / "classifier" / "checkpoint.pt").exists()
    _same_metrics(rec["metrics"], _record(uninterrupted, "classifier")["metrics"])


def test_label_generation_killed_midway_gives_identical_labels(uninterrupted, tmp_path):
    d = tmp_path / "run"
    assert _stage(d, "classifier", cls_epochs=4, seg_epochs=3) == 0
    maps_rec_before = None
    assert _stage(d, "pseudo", crash="label:7", cls_epochs=4, seg_epochs=3) == -signal.SIGKILL
    assert _record(d, "pseudo") is None
    maps_rec_before = _record(d, "maps")
    assert maps_rec_before is not None
    assert _stage(d, "pseudo", cls_epochs=4, seg_epochs=3) == 0
    assert _record(d, "maps") == maps_rec_before  # maps were not recomputed
    for kind in ("initial", "pseudo"):
        files = sorted((uninterrupted / "pseudo" / kind).glob("*.png"))
        assert files and sorted(p.name for p in (d / "pseudo" / kind).glob("*.png")) == [p.name for p in files]
        for p in files:
            np.testing.assert_array_equal(read_label_png(d / "pseudo" / kind / p.name), read_label_png(p))
        assert not list((d / "pseudo" / kind).glob(".staging-*"))  # no leftovers of the killed run
    _same_metrics(_record(d, "pseudo")["metrics"], _record(uninterrupted, "pseudo")["metrics"])


def test_segmentation_killed_mid_training_resumes(uninterrupted, tmp_path):
    d = tmp_path / "run"
    assert _stage(d, "pseudo", cls_epochs=4, seg_epochs=3) == 0
    upstream = {s: _record(d, s) for s in ("classifier", "iam", "maps", "pseudo")}
    assert _stage(d, "pom_round1", crash="pom_round1-epoch:2", cls_epochs=4, seg_epochs=3) == -signal.SIGKILL
    assert _record(d, "seg1") is None and (d / "seg1" / "checkpoint.pt").is_file()
    assert _stage(d, "pom_round1", cls_epochs=4, seg_epochs=3) == 0
    rec = _record(d, "seg1")
    assert rec["metrics"]["resumed_from_epoch"] == 2
    assert {s: _record(d, s) for s in upstream} == upstream
    _same_metrics(rec["metrics"], _record(uninterrupted, "seg1")["metrics"])
    for p in sorted((uninterrupted / "seg1" / "val_pred").glob("*.png")):
        np.testing.assert_array_equal(read_label_png(d / "seg1" / "val_pred" / p.name), read_label_png(p))
