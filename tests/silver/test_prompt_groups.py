"""The prompt_groups stage through real builds (GSM8K train and HH-RLHF rows from examples/data): near-identical
prompts share a split, and a preference prompt group can be capped. Frozen sets are tested in
tests/gold/test_freeze_and_leakage.py."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from tests.conftest import run_build, write_recipe
from tests.silver.test_near_dedup import GSM8K, HH, _pair, _reformatted, _rows, _source, _write
from tunelake.silver.prompt_groups import _capped


def test_near_identical_prompts_share_a_split(tmp_path):
    """Forty prompts, each beside a reworded copy with another answer (not near-duplicate records): with half
    the data in test, ungrouped prompts would part in about half the pairs; grouped, none does."""
    real = _rows(GSM8K)[:40]
    rows = []
    for i, r in enumerate(real):
        rows.append({"instruction": r["question"], "output": r["answer"]})
        rows.append({"instruction": _reformatted(r["question"]), "output": f"Another answer, number {i}."})
    sources = [_source("alpaca", _write(tmp_path / "a.jsonl", rows), format="alpaca")]
    split = {"validation": 0.0, "test": 0.5, "seed": 3}
    _, lake = run_build(write_recipe(tmp_path, sources, gold={"split": split}, silver={"prompt_groups": {}}))
    placed = lake.query("select row, detail from l where stage = 'split'", l="ledger")
    by_row = dict(placed)
    assert len(by_row) == 80
    assert all(by_row[2 * i + 1] == by_row[2 * i + 2] for i in range(40))
    assert len(set(by_row.values())) == 2  # both splits are used


def test_a_preference_prompt_group_can_be_capped(tmp_path):
    real = _rows(HH)[:5]
    rows = []
    for r in real:
        base = _pair(r)
        for k in range(4):  # four different pairs for each prompt, the prompt reworded in two of them
            prompt = _reformatted(base["prompt"]) if k % 2 else base["prompt"]
            rows.append({"prompt": prompt, "chosen": f"{base['chosen']} ({k})", "rejected": f"answer {k}"})
    sources = [_source("pairs", _write(tmp_path / "p.jsonl", rows), format="trl_preference")]
    groups = {"max_pairs_per_prompt": 2}
    manifest, lake = run_build(write_recipe(tmp_path, sources, silver={"prompt_groups": groups}))
    assert manifest["stages"]["prompt_groups"]["dropped"] == {"prompt_cap": 10}
    fate = lake.query(
        "select row, id, stage from l where stage in ('split', 'prompt_groups') order by row", l="ledger"
    )
    for i in range(5):  # with no score and one source, the two smallest ids of each prompt's four are kept
        group = fate[4 * i : 4 * i + 4]
        assert [row for row, _, _ in group] == [4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4]
        assert {id_ for _, id_, stage in group if stage == "split"} == set(sorted(id_ for _, id_, _ in group)[:2])


def test_the_prompt_cap_breaks_ties_by_input_order():
    """Pairs alike in score, source and id (exact dedup off): the cap keeps the earliest input row, whatever
    DuckDB's threads do (many rows, so that its window sort runs in parallel)."""
    rows = 300_000
    con = duckdb.connect()
    staged = {"_ord": np.arange(rows), "id": ["a" * 32] * rows, "prompt_id": ["p" * 32] * rows}
    con.register("staged", pa.table({**staged, "preference": [True] * rows, "score": pa.nulls(rows, pa.float64())}))
    groups = pa.table({"_ord": pa.array([], pa.int64()), "group_id": pa.array([], pa.string())})
    for _ in range(8):
        capped = _capped(con, groups, 1)
        assert capped.num_rows == rows - 1 and capped["_ord"][0].as_py() == 1
        assert set(capped["kept_ord"].to_pylist()) == {0}
