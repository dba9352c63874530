"""Stage records: what a result depends on besides its settings, and what a notebook will train."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

from nsrom_lib.device import MACHINE_FIELDS, describe_machine, host, machine_info
from nsrom_lib.pipeline import cpu_model, open_run, stage_machines, stage_status


def test_records_name_the_cpu_and_torch_build(tmp_path):
    run = open_run(tmp_path / "run", "smoke")
    rec = run.complete("classifier", {}, 1.0)
    assert rec["cpu"] == cpu_model() and rec["cpu"]
    assert rec["torch"] == torch.__version__ and rec["threads"] == torch.get_num_threads()
    assert rec["torch_cuda"] == torch.version.cuda  # None for a CPU-only build
    assert rec["machine"] == host() and platform.node() in rec["machine"]  # as before: a string
    assert set(MACHINE_FIELDS) <= rec.keys()
    assert {k: run.record("classifier")[k] for k in MACHINE_FIELDS} == {k: rec[k] for k in MACHINE_FIELDS}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/cpuinfo is Linux's")
def test_cpu_model_is_the_processors_name_on_linux():
    model = cpu_model()
    assert model.strip() == model and model
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.lower().startswith("model name")]
    if names:  # x86 and most others; some ARM kernels give no model name (platform's fallback)
        assert model == names[0]


def test_the_machine_never_enters_a_stage_key(tmp_path, monkeypatch):
    """Keys hash the configuration: a record written on another CPU or torch build still counts."""
    run = open_run(tmp_path / "run", "smoke")
    keys = {s: run.stage_key(s) for s in ("data", "classifier", "seg1", "results")}
    run.complete("classifier", {}, 1.0)
    other = dict(machine_info(), machine="elsewhere (x86_64, 64 cores)", cpu="Another CPU",
                 torch="0.0.0+other", torch_cuda="99.9", threads=64, gpu="A GPU")
    monkeypatch.setattr("nsrom_lib.pipeline.run.machine_info", lambda: other)
    monkeypatch.setattr("nsrom_lib.device.machine_info", lambda: other)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    again = open_run(tmp_path / "run", "smoke")
    assert {s: again.stage_key(s) for s in keys} == keys
    assert again.is_done("classifier")
    assert again.complete("seg1", {}, 1.0)["cpu"] == "Another CPU"


def test_report_lists_the_machines_of_a_mixed_run(tmp_path, monkeypatch):
    run = open_run(tmp_path / "run", "smoke")
    run.complete("classifier", {}, 1.0)
    run.complete("seg1", {}, 1.0)
    here = describe_machine(machine_info())
    assert stage_machines(run) == {here: ["classifier", "seg1"]}
    # a stage resumed on another CPU: the run now mixes two machines, each named with its stages
    other = dict(machine_info(), cpu="Another CPU", torch_cuda="12.1", gpu="A GPU")
    monkeypatch.setattr("nsrom_lib.pipeline.run.machine_info", lambda: other)
    run.complete("seg2", {}, 1.0)
    machines = stage_machines(run.dir)
    assert machines[here] == ["classifier", "seg1"]
    (text,) = set(machines) - {here}
    assert machines[text] == ["seg2"]
    assert "CPU Another CPU" in text and "(CUDA 12.1)" in text and "GPU A GPU" in text


def test_describe_machine_shows_what_an_old_record_lacks():
    text = describe_machine({"machine": "box (x86_64, 2 cores)", "seconds": 3.0})
    assert text == "box (x86_64, 2 cores), CPU ?, torch ? with ? threads"
    assert f"CPU {cpu_model()}" in describe_machine(machine_info())


def test_stage_status_says_what_will_be_trained(tmp_path):
    run = open_run(tmp_path / "run", "smoke")
    table = stage_status(run, ["classifier", "seg1/be"])
    assert "`classifier` | **to compute now**: trains 3 epochs on 48 images" in table
    run.complete("classifier", {}, 12.3)
    assert "`classifier` | done, 12 s" in stage_status(run, ["classifier"])
