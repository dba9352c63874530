"""Executing the numbered notebooks with papermill (`nsrom run`, the tests)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from nsrom_lib.config import make_config
from nsrom_lib.data.io import atomic_write_json
from nsrom_lib.pipeline.run import Run, project_root
from nsrom_lib.progress import headless_env, progress_bar

__all__ = ["list_notebooks", "WIDGET_MIME", "execute_notebook", "widget_outputs", "run_notebooks"]


def list_notebooks(folder: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks (`NN_name.ipynb`) in order."""
    folder = Path(folder) if folder else project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]*_*.ipynb"))  # 02b_... sorts after 02_...


#: Output types that only live with a running kernel; frozen in a saved copy.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def execute_notebook(notebook: str | os.PathLike, output: str | os.PathLike,
                     parameters: dict[str, Any]) -> None:
    """Execute one notebook with papermill, as `nsrom run` and the tests do.

    The kernel runs headless (`nsrom_lib.progress.headless`): no tqdm widgets, and widgets
    show a static picture, so the executed copy holds nothing that needs a live kernel.
    """
    # lazy: papermill is slower to import than torch, and every notebook kernel imports this
    # package without executing notebooks itself
    import papermill as pm

    nb = Path(notebook)
    with headless_env():
        pm.execute_notebook(str(nb), str(output), parameters=parameters, kernel_name="python3",
                            cwd=str(nb.parent), progress_bar=False)


def widget_outputs(nb: dict[str, Any]) -> list[str]:
    """Outputs of an executed notebook (as JSON) that are frozen widgets: "cell N: what"."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = "".join(data.get("text/plain", ""))
            if WIDGET_MIME in data:
                found.append(f"cell {i}: widget view ({text[:40]!r})")
            elif re.match(r"^(VBox|HBox|IntSlider|FloatSlider|HTML|Image|Output)\(", text):
                found.append(f"cell {i}: widget repr ({text[:40]!r})")
    return found


def run_notebooks(
    run_dir: str | os.PathLike,
    profile: str,
    overrides: dict[str, Any] | None = None,
    notebooks: list[Path] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Execute the numbered notebooks in order with papermill into `<run_dir>/notebooks/`.

    Each notebook gets the parameters `profile`, `run_dir`, `seed`, `data_root`, `overrides`.
    Returns one dict per notebook (name, seconds, output). A failing notebook raises
    papermill's error after its partly executed copy has been written.
    """
    overrides = dict(overrides or {})
    cfg = make_config(profile, **overrides)  # validate before starting any kernel
    run_dir = Path(run_dir).resolve()
    Run(run_dir, cfg)
    notebooks = list_notebooks() if notebooks is None else notebooks
    if not notebooks:
        raise FileNotFoundError(f"no numbered notebooks found in {project_root() / 'notebooks'}")
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(profile=profile, run_dir=str(run_dir), seed=cfg.seed, data_root=cfg.data_root,
                  overrides={k: v for k, v in overrides.items() if k not in ("seed", "data_root")})
    done = []
    bar = progress_bar(notebooks, desc="notebooks", unit="nb", disable=not progress)
    for nb in bar:
        bar.set_postfix_str(nb.name)
        t0 = time.perf_counter()
        out = out_dir / nb.name
        execute_notebook(nb, out, params)
        done.append(dict(notebook=nb.name, seconds=round(time.perf_counter() - t0, 1),
                         output=str(out)))
    atomic_write_json(run_dir / "run_summary.json", dict(profile=profile, notebooks=done))
    return done
