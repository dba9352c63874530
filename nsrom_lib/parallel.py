"""An ordered, bounded map over a thread pool: the pipeline of the label folders.

PNG decoding and encoding (zlib) and the torch / numpy label arithmetic release the GIL, so
Python threads run them on several cores at once. `OrderedMap` applies a function to a
sequence of items in `workers` threads, hands the results back in the items' order, and keeps
at most `ahead` items in flight (bounded memory); it starts on the first items as soon as it is
created, so work is under way while the caller is still busy with something else. Chained
(`OrderedMap(compute, OrderedMap(read, items))`), the stages overlap: the next batch is read
while this one is computed and the last one is encoded.

Work that holds the GIL (numpy indexing, Python loops) does not overlap in threads; for it,
`process_pool` starts worker processes and `OrderedMap(..., executor=pool)` runs the function
in them, with the same order and bound.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["OrderedMap", "default_workers", "fork_is_safe", "process_pool"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers(limit: int = 8) -> int:
    """The CPU cores this process may use (its affinity mask), at most `limit`."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """Exit this worker once its parent is gone (killed by SIGKILL, say): the pool's pipes
    would keep a waiting worker alive, and holding its memory, for ever."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it (it cancels the work and
    # shuts the pool down), so the workers ignore it instead of printing tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True,
                     name="nsrom-parent-watch").start()  # fmt: skip
    if initializer is not None:
        initializer(*initargs)


def _ready() -> None:
    """A task that does nothing: submitting it starts the workers."""


def fork_is_safe() -> bool:
    """Whether this process can fork workers cheaply and safely: on Linux, with no other thread
    running and torch not loaded (a fork copies locks held by other threads, and torch's thread
    pools, in whatever state they are)."""
    return (sys.platform.startswith("linux") and threading.active_count() == 1
            and "torch" not in sys.modules)  # fmt: skip


class _ProcessPool(ProcessPoolExecutor):
    """A ProcessPoolExecutor whose `with` block, left by an exception (Ctrl-C, an error),
    stops the workers at once instead of waiting for the tasks they run: nobody wants those
    results any more."""

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            workers = list((self._processes or {}).values())  # shutdown forgets them
            manager = self._executor_manager_thread  # and its thread
            self.shutdown(wait=False, cancel_futures=True)
            for p in workers:
                p.terminate()
            if manager is not None:
                # Wait for the pool's thread to see the workers gone and close its pipes.
                # An interpreter that exits while it is still closing them races with it,
                # and may print "OSError: Bad file descriptor" at exit.
                manager.join(timeout=10)
        return super().__exit__(exc_type, exc, tb)


def process_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> ProcessPoolExecutor:
    """`workers` processes, started now, each running `initializer(*initargs)` first.

    Forked when `fork_is_safe()` (fast: the workers share the modules already imported),
    spawned otherwise (a fresh interpreter each; the function and items must then be importable
    and picklable). Use it as a context manager: leaving it waits for the running tasks and
    stops the workers; leaving it by an exception stops them at once.
    """
    ctx = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
    pool = _ProcessPool(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(initializer, initargs))  # fmt: skip
    pool.submit(_ready)  # starts (forks) every worker now, before this process starts threads
    return pool


class OrderedMap(Generic[T, R]):
    """Iterate over fn(item) for the items, in order, computed by `workers` threads.

    workers <= 1: computed lazily in the caller's thread, one at a time (no thread at all).
    ahead: items submitted but not yet handed back (default 2 * workers). An exception of fn
    is raised when its item's turn comes; the items after it are cancelled. Use it as a context
    manager (or call `close`) so that no thread keeps working after the caller stops early.
    executor: run fn there instead (e.g. a `process_pool`; fn and the items must then pickle),
    `ahead` items at a time (default 2 * workers); `close` cancels the items not started and
    leaves the executor, and the items running in it, to its owner.
    """

    def __init__(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        workers: int = 1,
        ahead: int | None = None,
        name: str = "nsrom",
        executor: Executor | None = None,
    ) -> None:
        self._fn = fn
        self._items: Iterator[T] = iter(items)
        self._pending: deque[Future[R]] = deque()
        self._pool: Executor | None = executor
        self._owned = executor is None
        if executor is None and workers > 1:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        if self._pool is not None:
            self._ahead = max(1, ahead if ahead is not None else 2 * max(workers, 1))
            self._fill()

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self._ahead:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._fn, item))

    def __iter__(self) -> OrderedMap[T, R]:
        return self

    def __next__(self) -> R:
        if self._pool is None:
            return self._fn(next(self._items))
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        try:
            result = future.result()
        except BaseException:
            self.close()
            raise
        self._fill()
        return result

    def close(self) -> None:
        """Cancel the items not started yet and wait for the running ones, unless they run in
        another's executor (idempotent)."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None and self._owned:
            self._pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(self._items, "close", None)
        if close is not None:  # a chained OrderedMap or a generator: stop it as well
            close()

    def __enter__(self) -> OrderedMap[T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
