"""Progress bars and widgets that suit whoever is watching.

A reader in JupyterLab or Voila gets live tqdm bars and live sliders. A notebook executed by
papermill (`nsrom run`, the tests) has no reader: a widget saved into the executed copy is a
frozen repr ("SynthVOC: 0%", "VBox(children=...)") that never moves again. `headless()` is
true when the process, or the kernel it started, runs for a file rather than for a person;
`execute_notebook` in `nsrom_lib.pipeline` sets it for the kernels it starts.

    NSROM_HEADLESS=1   no progress bars; widgets show a static picture instead (`headless()`)
    (unset)            tqdm.auto: a widget bar in a notebook, a text bar in a terminal
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["HEADLESS_ENV", "headless", "headless_env", "progress_bar"]

#: The environment variable that marks a run without a reader.
HEADLESS_ENV = "NSROM_HEADLESS"


def headless() -> bool:
    """True when nobody watches this process: progress bars are off, widgets are drawn static."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


@contextlib.contextmanager
def headless_env() -> Iterator[None]:
    """Set `NSROM_HEADLESS=1` while the block runs (kernels started inside inherit it)."""
    old = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = old


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any):
    """`tqdm.auto.tqdm(iterable, **kwargs)`, disabled when `headless()`."""
    from tqdm.auto import tqdm

    if headless():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
