"""Delta tables: one commit per write, time travel, and parts that stay invisible until committed."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tunelake.lake import Lake, LakeBusy

SCHEMA = pa.schema([("n", pa.int64())])


def _write(lake: Lake, values: list[int], run_id: str, commit: bool = True) -> int | None:
    writer = lake.writer("t", SCHEMA, run_id)
    writer.write(pa.table({"n": values}, schema=SCHEMA))
    return writer.commit() if commit else None


def test_each_commit_is_a_new_version_and_old_versions_stay_readable(tmp_path):
    lake = Lake(tmp_path)
    assert _write(lake, [1, 2], "r1") == 0
    assert _write(lake, [3], "r2") == 1
    assert lake.read("t")["n"].to_pylist() == [3]
    assert lake.read("t", version=0)["n"].to_pylist() == [1, 2]


def test_uncommitted_parts_are_invisible(tmp_path):
    lake = Lake(tmp_path)
    _write(lake, [1], "r1")
    _write(lake, [99], "r2", commit=False)  # a build killed before its commit
    assert lake.read("t")["n"].to_pylist() == [1]
    assert lake.version("t") == 0


def test_an_empty_write_commits_an_empty_version(tmp_path):
    lake = Lake(tmp_path)
    _write(lake, [1], "r1")
    assert lake.writer("t", SCHEMA, "r2").commit() == 1
    assert lake.read("t").num_rows == 0


def test_a_second_build_on_a_held_lake_fails_at_once(tmp_path):
    lake = Lake(tmp_path)
    with lake.lock(), pytest.raises(LakeBusy, match="another tunelake build"), Lake(tmp_path).lock():
        pass
