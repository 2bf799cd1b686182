"""The local engine: an ordered, bounded parallel map over a process pool.

Results come back in input order (so outputs are deterministic), and at most `2 * workers` tasks are in
flight, so memory holds a few chunks however large the input is.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items, in order; in this process when workers == 1, else on a pool of `workers` processes."""
    if workers <= 1:
        yield from map(fn, items)
        return
    # spawn, not fork: the parent holds Arrow and DuckDB thread pools, which a fork would copy mid-state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
