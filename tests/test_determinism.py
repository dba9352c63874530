"""Determinism: the same seed gives identical pseudo labels, identical predictions and
identical metrics on the CPU, in two independent runs of the smoke profile; another seed differs.
(Byte-identical SynthVOC for the same seed: tests/test_synthvoc.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from nsrom_lib.data.io import read_label_png
from nsrom_lib.pipeline import ensure_masked, open_run

VOLATILE = {"seconds", "train_seconds", "img_per_s", "predict_seconds", "label_seconds",
            "write_seconds", "images_per_s", "generate_seconds"}


def _stable(metrics: dict) -> dict:
    return {k: (_stable(v) if isinstance(v, dict) else v) for k, v in metrics.items()
            if k not in VOLATILE}


def _labels(run, folder: str) -> dict[str, np.ndarray]:
    return {p.name: read_label_png(p) for p in sorted((run.dir / folder).glob("*.png"))}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("det")
    runs = [open_run(base / f"run{i}", "smoke") for i in range(2)]
    for run in runs:
        ensure_masked(run, progress=False)
    return runs


@pytest.mark.parametrize("folder", ["pseudo/initial", "pseudo/pseudo", "seg1/train_pred",
                                    "seg1/val_pred", "masked/labels"])
def test_same_seed_same_labels(two_runs, folder):
    a, b = (_labels(r, folder) for r in two_runs)
    assert a and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{folder}/{name}")


@pytest.mark.parametrize("stage", ["classifier", "iam", "maps", "pseudo", "seg1", "masked"])
def test_same_seed_same_metrics(two_runs, stage):
    a, b = (r.record(stage) for r in two_runs)
    assert a["key"] == b["key"]
    assert _stable(a["metrics"]) == _stable(b["metrics"])


def test_other_seed_differs(two_runs, tmp_path):
    other = open_run(tmp_path / "run", "smoke", seed=1)
    ensure_masked(other, progress=False)
    a, b = two_runs[0].record("seg1")["metrics"], other.record("seg1")["metrics"]
    assert _stable(a) != _stable(b)
