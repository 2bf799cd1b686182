"""The local engine: one process pool for a whole build, and an ordered, bounded map over it.

Results come back in input order (so outputs are deterministic), and at most `2 * workers` tasks are in
flight, so memory holds a few chunks however large the input is.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")
R = TypeVar("R")

try:  # glibc's: returns the free memory inside its heap to the OS; other C libraries have none
    _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
except (AttributeError, OSError, TypeError):
    _MALLOC_TRIM = None


class LocalEngine:
    """Runs tasks in this process (workers == 1) or on a pool of `workers` processes (engine.protocol.Engine)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _spawned(self.workers)
        return self._pool

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn over items, results in input order."""
        give_back_memory()  # what this process freed in the phase before
        if self.workers <= 1:
            yield from map(fn, items)
            return
        pool = self._start()
        pending: deque[Future[R]] = deque()
        task = partial(_run_and_release, fn)
        for item in items:
            pending.append(pool.submit(task, item))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def run(self, fn: Callable[..., R], *args: object, alone: bool = False) -> R:
        """fn(*args) on the pool when there is one, else here. `alone`: in a fresh process of its own, the pool's
        workers stopped first (the next map starts them again): idle through the call, each would hold its heap and
        libraries (~200 MiB at 1M records) beside the call's peak. A fresh process costs ~1 s to start (and the pool
        as much again after), but starts with no earlier call's heap (one that ran a global step held ~45 MiB more
        after it)."""
        if self.workers <= 1:
            return fn(*args)
        if not alone:
            (result,) = self.map(partial(_call, fn), [args])
            return result
        give_back_memory()
        self._stop()
        with _spawned(1) as process:
            return process.submit(fn, *args).result()


def _call(fn: Callable[..., R], args: tuple) -> R:
    return fn(*args)


def _spawned(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent holds Arrow and DuckDB thread pools, which a fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread_per_worker)


def _one_thread_per_worker() -> None:
    """The pool already has a process per core: libraries' own thread pools (the Rust tokenizer's, Arrow's)
    would only oversubscribe the cores."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    pa.set_cpu_count(1)


def _run_and_release(fn: Callable[[T], R], item: T) -> R:
    """Run a task in a worker, handing freed memory back to the OS before (what the last task's result took on its
    way out) and after: workers live for the whole build, and one that kept every task's peak would make memory
    grow with the number of workers' tasks."""
    give_back_memory()
    try:
        return fn(item)
    finally:
        give_back_memory()


def give_back_memory() -> None:
    """Hand what this process freed back to the OS: Arrow's pool keeps freed buffers for reuse, and glibc's heap
    keeps freed blocks under its mmap threshold, which rises (up to 32 MiB) each time a large NumPy array is freed,
    so a process would go on holding its past peaks (~100 MiB each at 1M records)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
