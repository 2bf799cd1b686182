"""Splits are by prompt group: a prompt never sits in two splits, and new data never moves old records."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.conftest import run_build, write_recipe
from tunelake.gold.split import assign_splits, split_of
from tunelake.recipe import Split
from tunelake.tables import SPLITS


def _sft(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_records_sharing_a_prompt_land_in_one_split(tmp_path):
    rows = [_sft(f"question {i % 50}", f"answer variant {i}") for i in range(400)]
    source = {"name": "s", "path": _write(tmp_path / "s.jsonl", rows), "license": "mit", "origin": "human"}
    _, lake = run_build(write_recipe(tmp_path, [source], gold={"split": {"validation": 0.2, "test": 0.2}}))
    per_prompt = lake.query(
        "select prompt_id, count(distinct split) from ("
        " select prompt_id, 'train' split from tr union all select prompt_id, 'validation' from va"
        " union all select prompt_id, 'test' from te) group by prompt_id",
        tr="gold/sft/train",
        va="gold/sft/validation",
        te="gold/sft/test",
    )
    assert len(per_prompt) == 50
    assert all(n == 1 for _, n in per_prompt)
    assert sum(lake.query("select count(*) from t", t=f"gold/sft/{s}")[0][0] for s in SPLITS) == 400


def test_adding_data_never_moves_an_existing_record(tmp_path):
    old = [_sft(f"old question {i}", "a") for i in range(300)]
    new = [_sft(f"new question {i}", "b") for i in range(300)]
    splits = {}
    for name, rows in (("before", old), ("after", new + old)):
        (tmp_path / name).mkdir()
        source = {"name": "s", "path": _write(tmp_path / name / "s.jsonl", rows), "license": "mit", "origin": "human"}
        _, lake = run_build(write_recipe(tmp_path / name, [source], gold={"split": {"validation": 0.1, "test": 0.1}}))
        splits[name] = {id_: s for s in SPLITS for (id_,) in lake.query("select id from t", t=f"gold/sft/{s}")}
    assert splits["before"].items() <= splits["after"].items()


def test_split_fractions_follow_the_recipe_and_the_seed_changes_them():
    ids = pa.array([f"{i:032x}" for i in range(20000)])  # even ids that differ in their last digits only
    names = assign_splits(ids, Split(validation=0.1, test=0.05, seed=0)).to_pylist()
    assert abs(names.count("validation") / 20000 - 0.1) < 0.01
    assert abs(names.count("test") / 20000 - 0.05) < 0.01
    reseeded = assign_splits(ids, Split(validation=0.1, test=0.05, seed=1)).to_pylist()
    assert names != reseeded
    # A record's split is its own: the same alone, in any batch, at any offset.
    assert [split_of(p, Split(validation=0.1, test=0.05, seed=0)) for p in ids[:50].to_pylist()] == names[:50]
    assert assign_splits(ids.slice(777, 100), Split(validation=0.1, test=0.05, seed=0)).to_pylist() == names[777:877]


def test_a_prompt_id_that_is_not_a_digest_is_an_error_not_a_split():
    with pytest.raises(ValueError, match="hex digests"):
        assign_splits(pa.array(["not-a-digest"]), Split())


def test_conversations_opening_the_same_way_share_a_split_across_regimes(tmp_path):
    # An SFT conversation [Q, A, Q2, B] and a preference pair on the prompt [Q, A, Q2] share their prompt group.
    sft, pref = [], []
    for i in range(40):
        q = f"opening question {i}"
        sft.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "and then?"},
                    {"role": "assistant", "content": "B"},
                ]
            }
        )
        prompt = [
            {"role": "user", "content": q},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "and then?"},
        ]
        pref.append({"prompt": prompt, "chosen": "good", "rejected": "bad"})
    sources = [
        {"name": "s", "path": _write(tmp_path / "s.jsonl", sft), "license": "mit", "origin": "human"},
        {"name": "p", "path": _write(tmp_path / "p.jsonl", pref), "license": "mit", "origin": "human"},
    ]
    _, lake = run_build(write_recipe(tmp_path, sources, gold={"split": {"validation": 0.3, "test": 0.3}}))
    where = {}
    for regime in ("sft", "preference"):
        for split in SPLITS:
            for (pid,) in lake.query("select prompt_id from t", t=f"gold/{regime}/{split}"):
                where.setdefault(pid, set()).add(split)
    assert len(where) == 40 and all(len(splits) == 1 for splits in where.values())
