"""Fault injection for the interruption tests: a real SIGKILL at a named point of a long loop.

Set ``NSROM_CRASH_AT=<point>:<n>`` in a process's environment and that process kills itself with
SIGKILL (no cleanup, no `finally`, no atexit — as `kill -9` or the OOM killer would) when
`crash_point(point, n)` is reached. Points: ``<desc>-epoch`` after the checkpoint of epoch n of a
training loop (desc "classifier", "iam", or a segmentation model such as "pom_round1"), and
``label`` after the n-th label file of `maps_io.write_labels`. Without the variable this is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "crash_point"]

ENV = "NSROM_CRASH_AT"


def crash_point(point: str, n: int) -> None:
    """SIGKILL this process if $NSROM_CRASH_AT equals f"{point}:{n}"."""
    if os.environ.get(ENV) == f"{point}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)
