"""The `cpu_bf16` setting: bfloat16 autocast in the training loops on the CPU, keyed; on in the
`default` profile where the CPU has bf16 instructions, off in the others."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from nsrom_lib import config
from nsrom_lib import train as T
from nsrom_lib.config import make_config, native_bf16
from nsrom_lib.models.classifier import Classifier
from nsrom_lib.pipeline import open_run
from nsrom_lib.pipeline import run as P
from nsrom_lib.pipeline.stages.common import training_context
from nsrom_lib.pipeline.stages.segmentation import segmentation_key

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _conv_dtypes(model: nn.Module) -> list[torch.dtype]:
    """Record the output dtype of every Conv2d of `model` in its next training-mode passes
    (not in the eval-mode dry run that sizes the CAM)."""
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, _i, out: seen.append(out.dtype) if m.training else None)
    return seen


def test_autocast_on_the_cpu_only_when_asked():
    x = torch.zeros(2, 3)
    with T.autocast(CPU):  # the segmentation loops' call: CUDA only
        assert nn.Linear(3, 2)(x).dtype == torch.float32
    with T.autocast(CPU, cuda=False, cpu=True):
        assert nn.Linear(3, 2)(x).dtype == torch.bfloat16


@pytest.mark.parametrize("bf16", [False, True])
def test_the_classifier_trains_in_bf16_only_with_the_setting(bf16):
    torch.manual_seed(0)
    n, size = 8, 32
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    labels = torch.zeros(n, 3)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    model = Classifier(3, width=8)
    convs = _conv_dtypes(model)
    res = T.train_classifier(model, images, labels, epochs=2, batch_size=4, seed=0,
                             accumulate_from=0, progress=False, cpu_bf16=bf16)
    assert set(convs) == {torch.bfloat16 if bf16 else torch.float32}
    # the weights, the loss and the accumulated maps stay float32 / uint8 and finite
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res["history"])
    maps = res["accumulator"].maps()
    assert maps.dtype == torch.uint8 and int(maps.max()) > 0


def test_segmentation_and_iam_pass_the_setting_to_the_loop(monkeypatch):
    seen = []
    real_fit = T.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cpu_bf16"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(T, "fit", spy)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    seg = nn.Conv2d(3, 3, 1)
    convs = _conv_dtypes(seg)
    T.train_segmentation(seg, images, torch.zeros(4, 32, 32, dtype=torch.uint8), epochs=1,
                         batch_size=2, progress=False, cpu_bf16=True)
    assert set(convs) == {torch.bfloat16}
    iam = Classifier(3, width=8, iam=True)
    h, w = T.cam_size(iam, (32, 32))
    T.train_iam(iam, images, torch.zeros(4, 3, h, w, dtype=torch.uint8), epochs=1, batch_size=2,
                progress=False, cpu_bf16=True)
    assert seen == [True, True]


def test_the_setting_keys_every_trained_stage_and_the_upper_bound(tmp_path):
    fp32 = open_run(tmp_path / "a", "smoke")
    bf16 = open_run(tmp_path / "b", "smoke", cpu_bf16=True)
    for stage in ("classifier", P.WARMUP_STAGE, "iam", "maps", "pseudo", "seg1", "seg2"):
        assert fp32.stage_key(stage) != bf16.stage_key(stage), stage
    assert segmentation_key(fp32, "upper_bound") != segmentation_key(bf16, "upper_bound")
    assert fp32.stage_key("data") == bf16.stage_key("data")
    # off (the default) it is left out of the keys, so run folders made before it stay valid
    older = [f for f in P.STAGE_FIELDS["seg1"] if f != "cpu_bf16"]
    assert fp32.stage_key("seg1") == fp32.stage_key("seg1", older)


def test_a_cpu_without_native_bf16_is_warned_about(tmp_path, monkeypatch, caplog):
    run = open_run(tmp_path / "run", "smoke", cpu_bf16=True, device="cpu")
    root = tmp_path / "no-data"  # training_context reads the split only after the check
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(T, "load_split", lambda *a, **k: {})
    with caplog.at_level(logging.WARNING):
        training_context(run, "classifier", root)
    assert "no native bfloat16" in caplog.text and "cpu_bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(T, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING):
        training_context(run, "classifier", root)
    assert "bfloat16" not in caplog.text


def test_native_reads_the_bf16_flags_of_the_cpu():
    assert native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512vl\n")
    assert native_bf16("flags\t: fpu amx_bf16 amx_tile\n")
    assert not native_bf16("flags\t\t: fpu sse2 avx512f avx512bw avx512vl\n")  # emulated only
    assert not native_bf16("model name\t: avx512_bf16 in a name, not a flag\n")
    assert not native_bf16("")  # no /proc/cpuinfo (not Linux)


def test_the_default_profile_trains_in_bf16_where_the_cpu_has_it(monkeypatch):
    for has in (True, False):
        monkeypatch.setattr(config, "native_bf16", lambda has=has: has)
        assert make_config("default").cpu_bf16 is has
        assert make_config("smoke", cpu_bf16="native").cpu_bf16 is has
        assert make_config("default", cpu_bf16="false").cpu_bf16 is False
        assert make_config("default", cpu_bf16="true").cpu_bf16 is True
    # the profiles of the tests, the notebooks' quick runs and the GPU keep float32
    for profile in ("smoke", "quick", "gpu"):
        assert make_config(profile).cpu_bf16 is False
    with pytest.raises(config.ConfigError, match="cpu_bf16"):
        make_config("default", cpu_bf16="maybe")
