"""Delta tables: one commit per write, time travel, parts that stay invisible until committed, and commits that
stay invisible until a manifest publishes them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tunelake.engine.parts import part_name, write_part
from tunelake.lake import Lake, LakeBusy, new_run_id

SCHEMA = pa.schema([("n", pa.int64())])


def _write(lake: Lake, values: list[int], run_id: str, commit: bool = True) -> int | None:
    part = write_part(lake.root, "t", part_name(run_id, 1, 0), pa.table({"n": values}, schema=SCHEMA))
    return _publish(lake, run_id, lake.commit("t", SCHEMA, [part], run_id)) if commit else None


def _publish(lake: Lake, run_id: str, version: int) -> int:
    """What a build does after its commits: a manifest naming the table's version."""
    lake.write_manifest({"run_id": run_id, "tables": {"t": version}})
    return version


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
    assert _publish(lake, "r2", lake.commit("t", SCHEMA, [], "r2")) == 1
    assert lake.read("t").num_rows == 0


def test_a_second_build_on_a_held_lake_fails_at_once(tmp_path):
    lake = Lake(tmp_path)
    with lake.lock(), pytest.raises(LakeBusy, match="another tunelake build"), Lake(tmp_path).lock():
        pass


def test_parts_read_back_in_write_order_across_steps(tmp_path):
    lake = Lake(tmp_path)
    parts = [
        write_part(tmp_path, "t", part_name("r1", step, seq), pa.table({"n": [10 * step + seq]}, schema=SCHEMA))
        for step, seq in [(3, 0), (1, 11), (1, 2), (0, 0)]
    ]
    _publish(lake, "r1", lake.commit("t", SCHEMA, parts, "r1"))
    assert lake.read("t")["n"].to_pylist() == [0, 12, 21, 30]


def test_a_commit_no_manifest_publishes_is_invisible_to_readers(tmp_path):
    lake = Lake(tmp_path)
    _write(lake, [1], "r1")
    part = write_part(lake.root, "t", part_name("r2", 1, 0), pa.table({"n": [2]}, schema=SCHEMA))
    assert lake.commit("t", SCHEMA, [part], "r2") == 1  # a build killed after this commit, before its manifest
    assert lake.version("t") == 0 and lake.read("t")["n"].to_pylist() == [1]
    assert lake.query("select n from t", t="t") == [(1,)]
    other = write_part(lake.root, "u", part_name("r2", 1, 0), pa.table({"n": [3]}, schema=SCHEMA))
    lake.commit("u", SCHEMA, [other], "r2")  # a table only the killed build wrote
    assert lake.tables() == ["t"] and lake.stored_tables() == ["t", "u"]


def test_run_ids_sort_in_the_order_they_were_made():
    """Manifests are read in run-id order and the newest is the published build. Ids used to have whole seconds
    and a random suffix, so two builds within a second could publish the older one (seen as a flaky test)."""
    ids = [new_run_id() for _ in range(2_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_of_two_builds_within_a_second_the_later_one_is_published(tmp_path):
    lake = Lake(tmp_path)
    first, second = new_run_id(), new_run_id()
    _write(lake, [1], first)
    _write(lake, [2], second)
    assert lake.read("t")["n"].to_pylist() == [2]
