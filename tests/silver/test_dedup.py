"""Exact dedup is corpus-wide and regime-aware; a preference pair is kept or dropped whole."""

from __future__ import annotations

import json

from tests.conftest import run_build, write_recipe


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _source(tmp_path, name, rows):
    return {"name": name, "path": _write(tmp_path / f"{name}.jsonl", rows), "license": "mit", "origin": "human"}


PAIR = {"prompt": "Is the sky blue?", "chosen": "Yes, on a clear day.", "rejected": "No."}


def test_pairs_sharing_prompt_and_chosen_but_not_rejected_are_both_kept(tmp_path):
    other = PAIR | {"rejected": "It is green."}
    manifest, lake = run_build(write_recipe(tmp_path, [_source(tmp_path, "p", [PAIR, other])]))
    assert manifest["counts"]["p"] == {
        "bronze": 2,
        "siblings": 0,
        "silver": 2,
        "quarantined": 0,
        "dropped": 0,
        "file_issues": 0,
    }


def test_duplicate_across_sources_is_dropped_with_the_kept_id_and_address(tmp_path):
    first, second = _source(tmp_path, "first", [PAIR]), _source(tmp_path, "second", [{"x": 1} | PAIR])
    manifest, lake = run_build(write_recipe(tmp_path, [first, second]))
    assert manifest["counts"]["second"]["dropped"] == 1
    (kept_id,) = lake.query("select id from s", s="silver/records")[0]
    drops = lake.query("select id, source, row, reason, detail from l where stage = 'exact_dedup'", l="ledger")
    # Extra raw fields go to meta, which is not content: both rows are the same pair, so they share an id.
    assert drops == [(kept_id, "second", 1, f"duplicate_of:{kept_id}", f"kept first:{first['path']}:1")]


def test_rl_prompts_are_deduplicated_on_the_prompt_alone(tmp_path):
    rows = [
        {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"},
        {"question": "What is 6 times 7?", "answer": "It is 42.\n#### 42.0"},
    ]
    manifest, lake = run_build(write_recipe(tmp_path, [_source(tmp_path, "g", rows)]))
    assert manifest["counts"]["g"]["dropped"] == 1
    assert lake.query("select answer from s", s="silver/records") == [("42",)]


def test_sft_duplicates_differing_only_in_whitespace_and_role_alias_are_one_record(tmp_path):
    a = {"conversations": [{"from": "human", "value": "Hi there "}, {"from": "gpt", "value": "Hello!"}]}
    b = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "  Hello!"}]}
    manifest, _ = run_build(write_recipe(tmp_path, [_source(tmp_path, "a", [a]), _source(tmp_path, "b", [b])]))
    assert manifest["counts"]["b"]["dropped"] == 1
