"""The local engine gives results in input order, in-process or on a pool."""

from __future__ import annotations

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
