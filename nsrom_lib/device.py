"""Where a run computes: the torch device, and the machine a record names.

The leaf of the pipeline package (stdlib and torch only). docs/design.md, "Runs, profiles and
devices".
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["resolve_device", "cpu_model", "machine_info"]


def resolve_device(device: str = "auto"):
    """`"auto"` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r} was requested but this machine has no CUDA device; "
            "use --set device=auto (or cpu)."
        )
    return torch.device(device)


def cpu_model() -> str:
    """The processor's model name (`lscpu`'s "Model name"), or what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a result depends on besides its settings: CPU model, torch version and build
    (`torch_cuda`: the CUDA version torch was built with, None for a CPU build), CPU threads.

    Weakly supervised results differ between CPUs and builds (float order), so every stage
    record and report names them.
    """
    return dict(cpu=cpu_model(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
