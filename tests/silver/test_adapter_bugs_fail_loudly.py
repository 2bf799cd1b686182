"""A bug in an adapter is not a verdict on the data: it fails the chunk with its traceback instead of quarantining
every row as wrong_type (the lake would look merely picky). Rows come from tests/fixtures/real (see SOURCES.md)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from tests.ingest.test_adapters import chunk, plan, real_rows
from tunelake.ingest import adapters
from tunelake.ingest.readers import RawChunk
from tunelake.silver.canonicalize import canonicalize

ALPACA = real_rows("alpaca_sample.jsonl")


def _nested(depth: int) -> RawChunk:
    """An Alpaca row with an extra key holding lists nested `depth` deep (more than orjson or json.dumps writes)."""
    return RawChunk("rows.jsonl", 1, orjson.dumps(ALPACA[0])[:-1] + b',"tree":' + b"[" * depth + b"]" * depth + b"}\n")


def _broken(row: dict, regime) -> dict:
    return {"messages": [], "difficulty": 1 / 0}


@pytest.mark.parametrize("fmt", ["alpaca", "dolly"])  # with a columnar form (this chunk goes row by row) and without
def test_a_bug_inside_an_adapter_propagates_out_of_canonicalize(monkeypatch, fmt):
    monkeypatch.setitem(adapters.ADAPTERS, fmt, dataclasses.replace(adapters.ADAPTERS[fmt], convert=_broken))
    rows = [{**r, "response": r["output"], "system": "Be brief."} for r in ALPACA]
    with pytest.raises(ZeroDivisionError):
        canonicalize(chunk(rows), plan(fmt), "run-1")


def test_a_value_nested_deeper_than_orjson_writes_is_kept_in_meta():
    result = canonicalize(_nested(300), plan("alpaca"), "run-1")  # orjson reads 1024 levels but writes 254
    assert result.counts == {"bronze": 1, "siblings": 0, "quarantined": 0, "dropped": 0, "candidates": 1}
    assert result.candidates["meta"][0].as_py() == '{"tree":' + "[" * 300 + "]" * 300 + "}"


def test_a_value_nested_too_deep_to_write_back_is_quarantined_not_a_crash():
    result = canonicalize(_nested(1020), plan("alpaca"), "run-1")
    assert result.counts == {"bronze": 1, "siblings": 0, "quarantined": 1, "dropped": 0, "candidates": 0}
    assert result.quarantine.select(["reason", "field", "detail"]).to_pylist() == [
        {"reason": "invalid_json", "field": "meta", "detail": "nested too deep to write back as JSON"}
    ]
