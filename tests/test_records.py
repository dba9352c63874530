"""Stage records: what a result depends on besides its settings, and what a notebook will train."""

from __future__ import annotations

import torch

from nsrom_lib.pipeline import cpu_model, open_run, stage_status


def test_records_name_the_cpu_and_torch_build(tmp_path):
    run = open_run(tmp_path / "run", "smoke")
    rec = run.complete("classifier", {}, 1.0)
    assert rec["cpu"] == cpu_model() and rec["cpu"]
    assert rec["torch"] == torch.__version__ and rec["threads"] == torch.get_num_threads()
    assert run.record("classifier")["cpu"] == rec["cpu"]


def test_stage_status_says_what_will_be_trained(tmp_path):
    run = open_run(tmp_path / "run", "smoke")
    table = stage_status(run, ["classifier", "seg1/be"])
    assert "`classifier` | **to compute now**: trains 3 epochs on 48 images" in table
    run.complete("classifier", {}, 12.3)
    assert "`classifier` | done, 12 s" in stage_status(run, ["classifier"])
