"""An ordered, bounded map over a thread pool: the pipeline of the label folders.

PNG decoding and encoding (zlib) and the torch / numpy label arithmetic release the GIL, so
Python threads run them on several cores at once. `OrderedMap` applies a function to a
sequence of items in `workers` threads, hands the results back in the items' order, and keeps
at most `ahead` items in flight (bounded memory); it starts on the first items as soon as it is
created, so work is under way while the caller is still busy with something else. Chained
(`OrderedMap(compute, OrderedMap(read, items))`), the stages overlap: the next batch is read
while this one is computed and the last one is encoded.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["OrderedMap", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers(limit: int = 8) -> int:
    """The CPU cores this process may use (its affinity mask), at most `limit`."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(limit, n))


class OrderedMap(Generic[T, R]):
    """Iterate over fn(item) for the items, in order, computed by `workers` threads.

    workers <= 1: computed lazily in the caller's thread, one at a time (no thread at all).
    ahead: items submitted but not yet handed back (default 2 * workers). An exception of fn
    is raised when its item's turn comes; the items after it are cancelled. Use it as a context
    manager (or call `close`) so that no thread keeps working after the caller stops early.
    """

    def __init__(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        workers: int = 1,
        ahead: int | None = None,
        name: str = "nsrom",
    ) -> None:
        self._fn = fn
        self._items: Iterator[T] = iter(items)
        self._pending: deque[Future[R]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        if workers > 1:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
            self._ahead = max(1, ahead if ahead is not None else 2 * workers)
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
        """Cancel the items not started yet and wait for the running ones (idempotent)."""
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        close = getattr(self._items, "close", None)
        if close is not None:  # a chained OrderedMap or a generator: stop it as well
            close()

    def __enter__(self) -> OrderedMap[T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
