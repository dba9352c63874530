"""Run folders that are safe to share and loud when damaged: the stage keys' fields come from
the RunConfig metadata, two processes on one stage compute it once, and an unreadable record or
model says which file it could not read before it is computed again."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nsrom_lib.config import NOT_RESULT_KEYS, RunConfig, make_config
from nsrom_lib.pipeline import (
    SEG_PREDICT_FIELDS,
    STAGE_FIELDS,
    UPPER_BOUND_FIELDS,
    WARMUP_STAGE,
    Run,
)
from nsrom_lib.pipeline.stages import segmentation as S

ROOT = Path(__file__).resolve().parent.parent

# The mapping as it was kept by hand before it was derived: the stage keys of existing run
# folders hash exactly these fields, so the derived mapping must not drift from it.
_DATA = ("data_root", "image_size", "n_train", "n_val", "num_classes", "seed", "train_split",
         "saliency_dir", "cls_list", "gt_dir")
_CLS = _DATA + ("backbone", "pretrained", "width", "output_stride", "jitter", "cls_epochs",
                "cls_batch_size", "cls_optimizer", "cls_lr", "cls_schedule", "cls_weight_decay",
                "oaa_snapshots", "oaa_from_epoch", "cls_warmup_epochs", "cpu_bf16")
_IAM = _CLS + ("iam_epochs", "iam_lr", "iam_batch_size")
_PSEUDO = _IAM + ("be_fg", "be_conflict", "be_bg", "be_att", "pom_threshold", "min_label_ratio")
_SEG = ("seg_backbone", "seg_pretrained", "seg_width", "seg_output_stride", "seg_epochs",
        "seg_batch_size", "seg_optimizer", "seg_lr", "seg_weight_decay", "seg_scale",
        "seg_test_flip", "seg_crf")
EXPECTED = {
    "data": _DATA, "classifier": _CLS, "iam": _IAM, "maps": _IAM, "pseudo": _PSEUDO,
    WARMUP_STAGE: tuple(f for f in _CLS if f not in ("cls_epochs", "oaa_snapshots",
                                                     "oaa_from_epoch")),
    "seg1": _PSEUDO + _SEG, "masked": _PSEUDO + _SEG + ("nsrm_kernel",),
    "seg2": _PSEUDO + _SEG + ("nsrm_kernel",),
}


def test_every_field_feeds_a_stage_or_says_where_and_how_fast():
    stages = {f.name: f.metadata.get("stage", "missing") for f in dataclasses.fields(RunConfig)}
    assert "missing" not in stages.values(), [k for k, v in stages.items() if v == "missing"]
    keyed = {f for fields in STAGE_FIELDS.values() for f in fields}
    unkeyed = {k for k, v in stages.items() if v is None}
    assert unkeyed == set(NOT_RESULT_KEYS) | {"profile"}  # the profile only names the values
    assert keyed | unkeyed == set(stages) and not keyed & unkeyed


def test_derived_stage_fields_equal_the_expected_mapping():
    assert {k: sorted(v) for k, v in STAGE_FIELDS.items()} == \
        {k: sorted(v) for k, v in EXPECTED.items()}
    assert all(len(set(v)) == len(v) for v in STAGE_FIELDS.values())
    assert sorted(UPPER_BOUND_FIELDS) == sorted(_DATA + _SEG + ("cpu_bf16",))
    assert sorted(SEG_PREDICT_FIELDS) == ["seg_crf", "seg_test_flip"]


def test_a_later_stage_setting_leaves_earlier_keys_alone(tmp_path):
    a = Run(tmp_path / "a", make_config("smoke"))
    b = Run(tmp_path / "b", make_config("smoke", be_fg=0.4))
    assert a.stage_key("maps") == b.stage_key("maps")
    assert a.stage_key("pseudo") != b.stage_key("pseudo")


_TWO_PROCESSES = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from nsrom_lib.pipeline import ensure_data, open_run
    from nsrom_lib.pipeline.stages import data as D

    run_dir, me, other, calls = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    real = D.generate_synthvoc

    def counted(*args, **kwargs):
        with open(calls, "a") as f:
            f.write("generated\\n")
        time.sleep(2.0)  # long enough that the other process arrives while this one computes
        return real(*args, **kwargs)

    D.generate_synthvoc = counted
    run = open_run(run_dir, "smoke")
    me.touch()
    while not other.exists():  # start the stage together
        time.sleep(0.02)
    root = ensure_data(run, progress=False)
    print(json.dumps(dict(root=str(root), finished=run.record("data")["finished"])))
""")


def test_two_processes_compute_a_stage_once(tmp_path):
    script = tmp_path / "ensure_data.py"
    script.write_text(_TWO_PROCESSES)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, NSROM_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(ready[i]),
                               str(ready[1 - i]), str(calls)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert calls.read_text().splitlines() == ["generated"]  # one process computed the stage
    assert results[0] == results[1]  # the other reused its record and dataset
    waited = "".join(err for _, err in outs)
    assert "being computed by another process" in waited, waited
    assert Run(tmp_path / "run", make_config("smoke")).lock_path("data").name == ".lock"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_an_unreadable_record_warns_and_is_recomputed(tmp_path, caplog, content):
    run = Run(tmp_path / "run", make_config("smoke"))
    path = run.stage_dir("data") / "record.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    calls = []
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.pipeline"):
        rec = run.ensure("data", lambda: calls.append(1) or {"n": 1})
    assert calls == [1] and rec["metrics"] == {"n": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(path) in warned[0] and "computed again" in warned[0]
    assert run.is_done("data")  # the record was replaced by a readable one


def test_an_unreadable_model_warns_and_is_trained_again(tmp_path, caplog):
    d = tmp_path / "seg1"
    d.mkdir()
    (d / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 1.0}]))
    (d / "model.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.pipeline"):
        assert S._trained_model(d, "k") is None
    assert any(str(d / "model.pt") in r.getMessage() and "training it again" in r.getMessage()
               for r in caplog.records)
    # a readable model with a damaged history: the history is named instead
    torch.save(dict(state_dict={}, train_key="k"), d / "model.pt")
    (d / "history.json").write_text("{")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nsrom_lib.pipeline"):
        assert S._trained_model(d, "k") is None
    assert any(str(d / "history.json") in r.getMessage() for r in caplog.records)
    (d / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 1.0}]))
    state, hist = S._trained_model(d, "k")
    assert state["train_key"] == "k" and hist[0]["epoch"] == 1
    assert S._trained_model(d, "other") is None  # other settings: retrain, no warning needed
