"""Helpers for the tests of the adapters that make pairs: a row through adapt(), its records and rejections."""

from __future__ import annotations

import orjson

from tests.conftest import FIXTURES
from tunelake.ingest.adapters.pairs import RatingsPolicy
from tunelake.schema import Rejected
from tunelake.silver.canonicalize import FilePlan, SourcePlan, adapt


def real_rows(name: str) -> list[dict]:
    """The rows of a fixture file; row n of SOURCES.md is real_rows(...)[n - 1]."""
    return [orjson.loads(line) for line in (FIXTURES / "real" / name).read_bytes().splitlines() if line.strip()]


def made(row: dict, fmt: str, aggregate: str = "mean") -> list[dict | Rejected]:
    """What the adapter makes of one row (records with meta parsed, and Rejected for the records it cannot make)."""
    source = SourcePlan(0, "src", None, "mit", "human", {}, 1_000_000, RatingsPolicy(aggregate=aggregate))
    out = adapt(row, FilePlan(source, 0, fmt))
    return [r if isinstance(r, Rejected) else r | {"meta": orjson.loads(r["meta"])} for r in out]


def text(side: list[dict]) -> str:
    return "".join(m["content"] for m in side)
