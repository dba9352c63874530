"""Stage `data`: the dataset root of a run, SynthVOC generated when no `data_root` is set.

A dataset whose pieces are not all where the VOC layout puts them (PASCAL VOC as downloaded:
SBD's `train_aug` split, saliency maps and the class list elsewhere) is read through a view:
a folder of links in the run (`data/view/`, `nsrom_lib.data.view`). The dataset's own folders
are never written to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsrom_lib.config import RunConfig
from nsrom_lib.data.io import DataError
from nsrom_lib.data.synthvoc import generate_synthvoc, synthvoc_is_complete
from nsrom_lib.data.view import DataSources, build_view, check_sources, resolve_sources
from nsrom_lib.pipeline.run import Run, default_data_dir, synthvoc_config_for

__all__ = ["ensure_data", "data_sources"]


def data_sources(cfg: RunConfig, root: str | Path) -> DataSources:
    """Where each piece of the dataset at `root` is, from a run configuration's settings."""
    return resolve_sources(root, cfg.train_split, cfg.saliency_dir, cfg.cls_list, cfg.gt_dir)


def ensure_data(run: Run, progress: bool = True) -> Path:
    """Stage `data`: the folder every later stage reads the run's dataset from.

    With `data_root` set, the folder must exist and hold every piece (`check_sources`: one
    error lists each missing one); otherwise SynthVOC is written to
    `<data dir>/synthvoc-<profile>-s<seed>-<hash>` (reused when already complete). Returns that
    root, or the run's view of it (`data/view/`) when a setting moved a piece elsewhere.
    """
    cfg = run.cfg
    if cfg.data_root is not None:
        root = Path(cfg.data_root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(
                f"data_root {root} does not exist. Point --set data_root=... at a VOC-layout "
                "folder (see data/README.md)."
            )
        src = data_sources(cfg, root)
        counts = check_sources(src, cfg.num_classes)
        run.ensure("data", lambda: {"data_root": str(root), "images": counts,
                                    "sources": src.to_dict()}, data_root=str(root))
        return root if src.is_plain() else build_view(src, run.stage_dir("data") / "view")
    scfg = synthvoc_config_for(cfg)
    root = default_data_dir() / f"synthvoc-{cfg.profile}-s{cfg.seed}-{scfg.hash()[:8]}"

    def compute() -> dict[str, Any]:
        meta = generate_synthvoc(root, scfg, progress=progress)
        return {"data_root": str(root), "generate_seconds": meta.get("seconds", 0.0)}

    if run.is_done("data") and not synthvoc_is_complete(root, scfg):  # data folder deleted
        (run.dir / "data" / "record.json").unlink()
    run.ensure("data", compute, data_root=str(root))
    src = data_sources(cfg, root)
    if src.is_plain():
        return root
    check_sources(src, cfg.num_classes)
    return build_view(src, run.stage_dir("data") / "view")
