"""Where a run computes: the torch device, and the machine a record names.

A leaf of the library (stdlib and torch only). docs/design.md, "Runs, profiles and
devices".
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["resolve_device", "cpu_model", "host", "machine_info", "describe_machine", "MACHINE_FIELDS"]


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


def host() -> str:
    """The host's name, architecture and core count, e.g. `"box (x86_64, 2 cores)"`."""
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)"


#: What a weakly supervised result depends on besides its settings (`machine_info` minus the
#: host's name): two records that differ here may hold different numbers for the same seed.
MACHINE_FIELDS = ("cpu", "torch", "torch_cuda", "threads", "gpu")


def machine_info() -> dict[str, Any]:
    """Where a stage ran, as a stage record stores it: host, CPU model, torch build, threads.

    Returns {machine: `host()`, cpu: `cpu_model()`, torch: `torch.__version__`, torch_cuda: the
    CUDA version torch was built with (None for a CPU-only build), threads: torch's CPU threads,
    gpu: the CUDA device's name (None without one)}. Weakly supervised results differ between
    CPUs and builds (the order of float operations), so every stage record and report names them.
    Never part of a stage key: a key hashes the configuration only.
    """
    return dict(machine=host(), cpu=cpu_model(), torch=torch.__version__,
                torch_cuda=torch.version.cuda, threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a reader: `machine_info()` or a stage record; a field it lacks shows as `?`."""
    def get(k: str) -> Any:
        return info.get(k, "?")

    build = f"torch {get('torch')}"
    if info.get("torch_cuda"):
        build += f" (CUDA {info['torch_cuda']})"
    text = f"{get('machine')}, CPU {get('cpu')}, {build} with {get('threads')} threads"
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")
