"""What a build asks of an engine. Stages and the build above it assume nothing else: not one machine, not one
memory. The local engine (engine/local.py) is the default; a distributed one implements the same two calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn over items, results in input order, with a bounded number in flight."""
        ...

    def run(self, fn: Callable[..., R], *args: object, alone: bool = False) -> R:
        """One call, where the data is (a global step): its working memory never joins the caller's; `alone`: with
        nothing else of the build's beside it (a large step, whose peak must not meet idle workers')."""
        ...
