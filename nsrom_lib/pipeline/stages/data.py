"""Stage `data`: the dataset root of a run, SynthVOC generated when no `data_root` is set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsrom_lib.data.io import DataError
from nsrom_lib.data.synthvoc import generate_synthvoc, synthvoc_is_complete
from nsrom_lib.pipeline.run import Run, default_data_dir, synthvoc_config_for

__all__ = ["ensure_data"]


def ensure_data(run: Run, progress: bool = True) -> Path:
    """Stage `data`: the dataset root of the run, generating SynthVOC if needed.

    With `data_root` set, the folder must exist and hold the VOC layout; otherwise SynthVOC is
    written to `<data dir>/synthvoc-<profile>-s<seed>-<hash>` (reused when already complete).
    """
    cfg = run.cfg
    if cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(
                f"data_root {root} does not exist. Point --set data_root=... at a VOC-layout "
                "folder (see data/README.md)."
            )
        run.ensure("data", lambda: {"data_root": str(root)}, data_root=str(root))
        return root
    scfg = synthvoc_config_for(cfg)
    root = default_data_dir() / f"synthvoc-{cfg.profile}-s{cfg.seed}-{scfg.hash()[:8]}"

    def compute() -> dict[str, Any]:
        meta = generate_synthvoc(root, scfg, progress=progress)
        return {"data_root": str(root), "generate_seconds": meta.get("seconds", 0.0)}

    if run.is_done("data") and not synthvoc_is_complete(root, scfg):  # data folder deleted
        (run.dir / "data" / "record.json").unlink()
    run.ensure("data", compute, data_root=str(root))
    return root
