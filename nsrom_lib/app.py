"""`make explore`: the threshold explorer as a web app, served by Voila on 127.0.0.1.

`python -m nsrom_lib.app [--run D] [--n N] [--port P]` picks a finished run (D, else
`runs/default`, else the newest finished run under the runs folder, else it builds the `quick`
run first and says so), then serves `notebooks/explore.ipynb` with Voila and prints the URL.
The notebook calls `explorer()`, the same `widgets.ThresholdExplorer` as notebooks 03, 04
and 06, on the first N training images of that run (with the NSRM kernel when the run has its
round-1 predictions).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from nsrom_lib.pipeline import (
    default_runs_dir,
    ensure_data,
    load_explorer_inputs,
    load_predictions,
    nsrm_kernel_for,
    project_root,
    pseudo_thresholds,
    reopen_run,
)
from nsrom_lib.widgets import ThresholdExplorer

__all__ = ["RUN_ENV", "N_ENV", "NOTEBOOK", "reopen_run", "is_finished", "choose_run",
           "explorer", "free_port", "voila_command", "main"]

#: The environment variables that tell the app's notebook its run folder and subset size.
RUN_ENV, N_ENV = "NSROM_EXPLORE_RUN", "NSROM_EXPLORE_N"
#: The notebook Voila renders.
NOTEBOOK = project_root() / "notebooks" / "explore.ipynb"


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when the folder holds a run whose `pseudo` stage (the explorer's inputs) is done."""
    path = Path(run_dir)
    return (path / "config.json").is_file() and (path / "pseudo" / "record.json").is_file()


def choose_run(run_dir: str | os.PathLike | None = None, build: bool = True) -> Path:
    """The run to explore: `run_dir`, else runs/default, else the newest finished run; with none,
    build the `quick` run (build=True, saying so) or raise FileNotFoundError."""
    if run_dir is not None:
        if not is_finished(run_dir):
            raise FileNotFoundError(f"{run_dir} is not a finished run (no pseudo labels yet): "
                                    f"python -m nsrom_lib run --profile P --run-dir {run_dir} first")
        return Path(run_dir)
    runs = default_runs_dir()
    if is_finished(runs / "default"):
        return runs / "default"
    done = sorted((p for p in runs.glob("*") if is_finished(p)),
                  key=lambda p: (p / "pseudo" / "record.json").stat().st_mtime)
    if done:
        return done[-1]
    if not build:
        raise FileNotFoundError(f"no finished run under {runs}: make run (or make explore) first")
    quick = runs / "quick"
    print(f"No finished run under {runs}: building the quick run first "
          f"(make run PROFILE=quick -> {quick}: all its notebooks, training the networks "
          f"on this machine; docs/benchmarks.md gives measured times).", flush=True)
    subprocess.run([sys.executable, "-m", "nsrom_lib", "run", "--profile", "quick",
                    "--run-dir", str(quick)], check=True)
    return quick


def explorer(run_dir: str | os.PathLike | None = None, n: int = 100, show: int = 4,
             **kwargs: Any) -> ThresholdExplorer:
    """The explorer of a finished run (`choose_run(run_dir, build=False)`) on its first `n`
    training images, at the run's thresholds; the kernel slider when round 1 is done."""
    from nsrom_lib.data.voc import read_class_names

    run = reopen_run(choose_run(run_dir, build=False))
    x = load_explorer_inputs(run, limit=n)
    th = {k: v for k, v in pseudo_thresholds(run.cfg).items() if k != "ratio"}
    if (run.dir / "seg1" / "record.json").is_file() and (run.dir / "seg1" / "train_pred").is_dir():
        x["pred"] = load_predictions(run, "pom_round1", "train", x["names"])
        th["kernel"] = min(nsrm_kernel_for(run.cfg), 61)
    classes = read_class_names(ensure_data(run))
    return ThresholdExplorer(x, show=show, classes=classes, **th, **kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voila_command(port: int, notebook: str | os.PathLike = NOTEBOOK) -> list[str]:
    """The Voila server of the app, on 127.0.0.1:port, with this Python's kernel."""
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--show_tracebacks=True"]


def voila_env(run_dir: str | os.PathLike, n: int) -> dict[str, str]:
    """The server's environment: the run and subset for the notebook; live widgets (not
    headless) whatever the caller's environment says."""
    from nsrom_lib.progress import HEADLESS_ENV

    env = {k: v for k, v in os.environ.items() if k != HEADLESS_ENV}
    env[RUN_ENV], env[N_ENV] = str(Path(run_dir).resolve()), str(n)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nsrom_lib.app", description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="run folder (default: runs/default, else the "
                   "newest finished run, else the quick run is built first)")
    p.add_argument("--n", type=int, default=100, help="training images the table is measured on")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    args = p.parse_args(argv)
    try:
        run_dir = choose_run(args.run)
    except FileNotFoundError as e:
        print(f"nsrom explore: {e}", file=sys.stderr)
        return 2
    port = args.port or free_port()
    print(f"Threshold explorer of {run_dir} ({args.n} images): http://127.0.0.1:{port}/ "
          "(Ctrl-C stops it)", flush=True)
    proc = subprocess.Popen(voila_command(port), env=voila_env(run_dir, args.n))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=10)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
