"""GPU readiness checked on the CPU: no hard-coded CUDA in the library, the device
comes from the configuration, and the CUDA-only paths (pinned memory, bf16 autocast) are no-ops
on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import nsrom_lib
from nsrom_lib import train as T

SOURCES = sorted(Path(nsrom_lib.__file__).parent.rglob("*.py"))


def test_no_hard_coded_cuda_calls():
    offenders = []
    for path in SOURCES:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\.cuda\(|device\s*=\s*['\"]cuda|torch\.device\(['\"]cuda['\"]\)", code):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    # the one place that may name CUDA as a device: resolve_device's "auto" rule
    allowed = [o for o in offenders if o.startswith("device.py") and "is_available()" in o]
    assert offenders == allowed, offenders


def test_training_and_inference_take_a_device():
    import inspect

    for fn in (T.train_classifier, T.train_iam, T.train_segmentation, T.predict_cams,
               T.predict_segmentation):
        assert "device" in inspect.signature(fn).parameters, fn.__name__


def test_cuda_only_paths_are_no_ops_on_cpu():
    cpu = torch.device("cpu")
    t = torch.zeros(2, 3)
    assert T.pinned(t, cpu) is t
    with T.autocast(cpu):
        y = torch.nn.Linear(3, 2)(t)
    assert y.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_explicit_cuda_without_cuda_is_a_clear_error():
    from nsrom_lib.pipeline import resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device.*device=auto"):
        resolve_device("cuda")
