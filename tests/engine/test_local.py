"""The local engine gives results in input order, in-process or on a pool."""

from __future__ import annotations

import os

import pytest

from tunelake.engine.local import LocalEngine


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_map_keeps_input_order(workers):
    with LocalEngine(workers) as engine:
        assert list(engine.map(_square, iter(range(50)))) == [x * x for x in range(50)]


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_a_worker_error_reaches_the_caller():
    with pytest.raises(ValueError, match="three"), LocalEngine(2) as engine:
        list(engine.map(_fail_on_three, iter(range(10))))


def _pid(_: object = None) -> int:
    return os.getpid()


def _live(pids: set[int]) -> set[int]:
    return {pid for pid in pids if os.path.exists(f"/proc/{pid}")}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc to see which processes live")
def test_a_call_alone_runs_with_the_pool_stopped_and_started_again_after():
    with LocalEngine(2) as engine:
        workers = set(engine.map(_pid, range(8)))
        assert engine.run(_pid) in workers  # a call that need not be alone runs on the pool
        alone = engine.run(_pid, alone=True)
        assert alone != os.getpid() and alone not in workers
        assert not _live(workers)  # stopped for the call: none of them idles beside it
        assert engine.run(_pid, alone=True) != alone  # each call a fresh process: none starts with another's heap
        again = set(engine.map(_pid, range(8)))
        assert again and not again & workers and alone not in again and not _live({alone})
        assert engine.run(_square, 7, alone=True) == 49


def test_one_worker_runs_calls_here():
    with LocalEngine(1) as engine:
        assert engine.run(_pid) == os.getpid()
