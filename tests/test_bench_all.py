"""`python -m nsrom_lib bench`: one command, every measure, as a table and as JSON (smoke)."""

from __future__ import annotations

import json

from nsrom_lib.bench_run import bench_all, format_bench_all, peak_memory_mib
from nsrom_lib.cli import main


def test_peak_memory_is_this_process():
    import numpy as np

    before = peak_memory_mib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    assert block.sum() > 0
    assert peak_memory_mib() >= before and peak_memory_mib() > 50


def test_bench_all_measures_everything_on_smoke(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "classifier").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "classifier" / "record.json").write_text(json.dumps({"seconds": 12.5}))
    r = bench_all(profile="smoke", device="cpu", limit=16, label_limit=16, run_dir=run_dir, repeats=1)
    t = r["training"]
    for k in ("classifier_train_img_s", "classifier_infer_img_s", "segmentation_train_img_s",
              "segmentation_infer_img_s"):
        assert t[k] > 0, k
    assert t["images"] == 16
    assert r["labels"]["rows"] and all(row["identical"] for row in r["labels"]["rows"])
    assert r["last_run"]["stage_seconds"] == {"classifier": 12.5}
    text = format_bench_all(r)
    assert "segmentation training" in text and "classifier training" in text
    assert "12.5 s" in text and "peak resident memory" in text


def test_bench_cli_json(capsys, tmp_path):
    assert main(["bench", "--profile", "smoke", "--limit", "8", "--label-limit", "8",
                 "--run-dir", str(tmp_path / "none"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["profile"] == "smoke" and r["last_run"] is None and r["peak_memory_mib"] > 0
    assert r["training"]["segmentation_train_img_s"] > 0


def test_bench_precision_times_each_loop_in_both_precisions(capsys):
    assert main(["bench", "precision", "--profile", "smoke", "--limit", "8", "--repeats", "1",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["networks"]) == {"classifier", "iam", "segmentation"}
    assert isinstance(r["native_bf16"], bool) and r["images"] == 8 and r["cpu"]
    for t in r["networks"].values():
        assert t["fp32_s"] > 0 and t["bf16_s"] > 0 and len(t["pair_ratios"]) == 1
        assert abs(t["ratio"] - t["fp32_s"] / t["bf16_s"]) <= 0.02 + 0.1 * t["ratio"]  # seconds are rounded to 1 ms
    assert main(["bench", "precision", "--profile", "smoke", "--limit", "4", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "fp32/bf16" in text and "segmentation" in text and "native bf16" in text
    assert main(["bench", "precision", "--repeats", "0"]) == 2
    assert "--repeats 0" in capsys.readouterr().err
