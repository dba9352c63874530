"""`nsrom bench cost`: counted FLOPs, the stage table and the GPU estimate (smoke sizes)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from nsrom_lib import bench_cost as C
from nsrom_lib.cli import main
from nsrom_lib.pipeline import SEG_MODELS, STAGES


@pytest.fixture(scope="module")
def smoke():
    return C.cost_config("smoke")


def test_conv_flops_are_two_per_multiply_add():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 5, 3, padding=1, bias=False))
    x = torch.zeros(2, 3, 8, 8)
    analytic = 2 * 2 * (3 * 4 * 3 * 3 * 8 * 8 + 4 * 5 * 3 * 3 * 8 * 8)
    assert C.count_flops(lambda: net(x)) == analytic
    # backward: the weight gradient of both convs, the input gradient of the second only
    # (x needs none): 2 more convs' worth, less the first conv's input gradient
    first = 2 * 2 * 3 * 4 * 9 * 64
    assert C.count_flops(lambda: net(x).sum().backward()) == 3 * analytic - first


def test_network_counts_match_the_conv_layers_and_the_cpu(smoke):
    """The classifier without GloRe is convolutions only: its forward count is the sum of
    2 * Cin * Cout * k * k * H * W over its Conv2d layers (read with hooks); the meta device
    counts what the CPU counts."""
    meta = C.network_flops(smoke, names=("classifier_no_glore",))["classifier_no_glore"]
    model = C._build(smoke, "classifier_no_glore")
    total = []

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total.append(2 * m.in_channels // m.groups * m.out_channels * k * out.shape[-2:].numel())

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    model(torch.zeros(1, 3, smoke.image_size, smoke.image_size))
    assert meta["forward"] == sum(total)
    cpu = C.network_flops(smoke, names=("classifier_no_glore",), device="cpu")
    assert cpu["classifier_no_glore"] == meta


def test_forward_backward_is_about_three_forwards_and_the_flip_doubles(smoke):
    flops = C.network_flops(smoke)
    assert set(flops) == set(C.NETWORKS)
    for name, f in flops.items():
        assert 2.5 < f["train"] / f["forward"] <= 3.0, name
        assert f["train_batch"] == smoke.recipe(C._recipe(name)).batch_size
    seg = flops["segmentation"]
    assert smoke.seg_test_flip and seg["predict_versions"] == 2
    assert seg["predict"] == 2 * seg["forward"]
    assert flops["classifier"]["predict"] == flops["classifier"]["forward"]
    plain = dataclasses.replace(smoke, seg_test_flip=False)
    assert C.network_flops(plain, names=("segmentation",))["segmentation"]["predict"] == seg["forward"]


FAKE = {n: dict(forward=1e9, train=3e9, predict=1e9, predict_versions=1) for n in C.NETWORKS}


def test_every_stage_and_segmentation_model_is_counted(smoke):
    stages = {row[0] for row in C.STAGE_PASSES}
    assert {s for s in STAGES if s != "data"} <= stages
    for spec in SEG_MODELS.values():
        rows = [r[2:] for r in C.STAGE_PASSES if r[0] == spec["stage"]]
        assert ("train", "seg_epochs", "train") in rows and ("val", "once", "predict") in rows
    feeds_nsrm = {r[0] for r in C.STAGE_PASSES if r[1] == "segmentation" and r[2:] == ("train", "once", "predict")}
    assert feeds_nsrm == {"seg1", "seg1/no_glore"}
    names = [r["stage"] for r in C.stage_costs(smoke, FAKE)]
    assert "classifier/warmup" not in names  # cls_warmup_epochs = 0: it does not run
    warm = dataclasses.replace(smoke, cls_warmup_epochs=2)
    row = {r["stage"]: r for r in C.stage_costs(warm, FAKE)}["classifier/warmup"]
    assert row["train_passes"] == 2 * smoke.n_train
    assert row["forward_passes"] == smoke.n_train + smoke.n_val


def test_stage_table_scales_with_images_and_epochs(smoke):
    base = {r["stage"]: r for r in C.stage_costs(smoke, FAKE, n_train=100, n_val=10)}
    double = {r["stage"]: r for r in C.stage_costs(smoke, FAKE, n_train=200, n_val=20)}
    for stage, r in base.items():
        assert double[stage]["flop"] == pytest.approx(2 * r["flop"]), stage
        assert double[stage]["images"] == 2 * r["images"]
    c = base["classifier"]
    assert c["train_passes"] == 100 * smoke.cls_epochs and c["forward_passes"] == 110
    assert c["flop"] == pytest.approx(100 * smoke.cls_epochs * 3e9 + 110 * 1e9)
    longer = dataclasses.replace(smoke, cls_epochs=2 * smoke.cls_epochs)
    more = {r["stage"]: r for r in C.stage_costs(longer, FAKE, n_train=100, n_val=10)}
    assert more["classifier"]["train_passes"] == 2 * c["train_passes"]
    assert more["seg1"]["flop"] == base["seg1"]["flop"]
    assert base["pseudo"]["flop"] == 0 and base["results"]["images"] == 10


def test_estimate_divides_by_the_peak_and_by_four_gpus(smoke):
    rows = C.stage_costs(smoke, FAKE, n_train=100, n_val=10)
    h200 = {r["stage"]: r for r in C.estimate(rows, C.GPUS["h200"])}
    a100 = {r["stage"]: r for r in C.estimate(rows, C.GPUS["a100"])}
    seg = h200["seg1/gt"]  # bf16
    assert seg["minutes_1"] == pytest.approx(
        seg["flop"] / (C.GPUS["h200"].bf16 * 1e12 * C.ASSUMED_UTILISATION) / 60)
    assert seg["minutes_n"] == pytest.approx(seg["minutes_1"] / (4 * C.SCALING_EFFICIENCY))
    for stage, r in h200.items():
        if r["flop"]:
            assert r["minutes_n"] < r["minutes_1"] < a100[stage]["minutes_1"], stage
    no_tf32 = {r["stage"]: r for r in C.estimate(rows, C.GPUS["h200"], tf32=False)}
    assert no_tf32["classifier"]["minutes_1"] > h200["classifier"]["minutes_1"]
    assert no_tf32["seg1"]["minutes_1"] == h200["seg1"]["minutes_1"]


def test_cpu_calibration_measures_flop_per_second(smoke):
    r = C.calibrate_cpu(smoke, names=("classifier", "segmentation"), image_size=32, steps=1)
    assert r["matmul_flop_per_s"] > 0 and r["threads"] >= 1
    for n in r["networks"].values():
        assert n["flop_per_step"] > 0 and n["seconds_per_step"] > 0
        assert n["flop_per_s"] == pytest.approx(n["flop_per_step"] / n["seconds_per_step"])


def test_bench_cost_cli(capsys):
    assert main(["bench", "cost", "--profile", "smoke", "--cpu-steps", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["profile"] == "smoke" and r["cpu"] is None and r["gpu"] == "h200"
    assert r["total"]["flop"] == pytest.approx(sum(s["flop"] for s in r["stages"]))
    assert r["total"]["minutes_n"] < r["total"]["minutes_1"]
    assert main(["bench", "cost", "--profile", "smoke", "--gpu", "a100", "--cpu-steps", "0"]) == 0
    text = capsys.readouterr().out
    assert "NVIDIA A100" in text and "seg2/no_glore" in text and "not measurements" in text
    assert main(["bench", "cost", "--cpu-steps", "-1"]) == 2
    assert "--cpu-steps -1" in capsys.readouterr().err
