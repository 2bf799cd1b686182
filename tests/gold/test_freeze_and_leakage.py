"""Frozen eval sets and the leakage check, on real GSM8K train rows (examples/data): a frozen prompt keeps its
split in later builds, and so do its near-duplicates; `tunelake leakage` finds what a build without prompt groups
lets leak, exactly and near."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, run_build, write_recipe
from tunelake.build import build
from tunelake.cli import app
from tunelake.gold.freeze import FreezeError, freeze
from tunelake.lake import Lake
from tunelake.recipe import load_recipe
from tunelake.stage import BuildRefused

GSM8K = EXAMPLES / "data" / "gsm8k_train_300.jsonl.gz"


def _rows() -> list[dict]:
    with gzip.open(GSM8K, "rt") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _recipe(folder: Path, sources: list[dict], seed: int, groups: dict | None = None, no_groups: bool = False) -> Path:
    """A recipe with prompt groups (the stage that keeps frozen sets), with `groups` as their config, or without."""
    split = {"validation": 0.1, "test": 0.2, "seed": seed}
    return write_recipe(
        folder, sources, gold={"split": split}, silver={"prompt_groups": None if no_groups else groups or {}}
    )


def _source(name: str, path: str) -> dict:
    return {"name": name, "path": path, "format": "gsm8k", "license": "mit", "origin": "human"}


def _prompts(lake, table: str) -> set[str]:
    return set(lake.read(table, ["prompt_id"])["prompt_id"].to_pylist())


def _leakage(lake) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["leakage", "--lake", str(lake.root)])
    return result.exit_code, result.output


def _reworded(row: dict) -> dict:
    """The question in other case and punctuation, with another answer: a near-identical prompt, not a duplicate
    record."""
    return {"question": row["question"].upper().replace(",", " ,") + " ", "answer": "It is #### 7"}


def test_a_frozen_set_keeps_its_prompts_and_their_near_duplicates_out_of_train(tmp_path):
    real = _rows()
    sources = [_source("gsm8k", _write(tmp_path / "gsm8k.jsonl", real))]
    _, lake = run_build(_recipe(tmp_path, sources, seed=0))
    frozen_rows = _rows_in(lake, "gsm8k", "gold/rl/test")
    assert freeze(lake, "gold/rl/test", "rl-eval-v1") == len(frozen_rows) > 30
    assert _leakage(lake)[0] == 0

    # A later build re-seeds the splits (most frozen prompts would fall elsewhere) and adds a reworded copy of every
    # prompt: the frozen ones and their copies all stay in test; the other copies go where their group goes.
    sources.append(_source("copies", _write(tmp_path / "copies.jsonl", [_reworded(r) for r in real])))
    manifest, lake = run_build(_recipe(tmp_path, sources, seed=1))
    assert _rows_in(lake, "gsm8k", "gold/rl/test") >= frozen_rows
    assert _rows_in(lake, "copies", "gold/rl/test") >= frozen_rows
    assert _rows_in(lake, "copies", "gold/rl/train") == _rows_in(lake, "gsm8k", "gold/rl/train") != set()
    assert manifest["read_tables"] == {"frozen": 0}
    code, output = _leakage(lake)
    assert code == 0, output


def _rows_in(lake, source: str, table: str) -> set[int]:
    """The input rows of a source that the last build placed in a gold table."""
    placed = lake.query(
        f"select row from l where stage = 'split' and source = '{source}' and detail = '{table}'", l="ledger"
    )
    return {row for (row,) in placed}


def test_without_prompt_groups_the_leakage_check_finds_what_leaks(tmp_path):
    real = _rows()
    sources = [_source("gsm8k", _write(tmp_path / "gsm8k.jsonl", real))]
    sources.append(_source("copies", _write(tmp_path / "copies.jsonl", [_reworded(r) for r in real])))
    _, lake = run_build(_recipe(tmp_path, sources, seed=1, no_groups=True))

    code, output = _leakage(lake)
    assert code == 1 and "gold/rl/train (train)" in output and "gold/rl/test (test)" in output
    leaks = CliRunner().invoke(app, ["leakage", "--lake", str(lake.root), "--show", "1000"]).output
    assert leaks.count("│ near") > 30 and "│ exact" not in leaks  # reworded copies split from their originals
    _, lake = run_build(_recipe(tmp_path, sources, seed=1))
    assert _leakage(lake)[0] == 0


def test_a_lake_with_frozen_sets_refuses_a_build_without_prompt_groups(tmp_path):
    sources = [_source("gsm8k", str(GSM8K))]
    _, lake = run_build(_recipe(tmp_path, sources, seed=0))
    freeze(lake, "gold/rl/test", "rl-eval-v1")
    recipe, sha = load_recipe(_recipe(tmp_path, sources, seed=1, no_groups=True))
    with pytest.raises(BuildRefused, match=r"frozen eval sets \(rl-eval-v1\).*silver.prompt_groups"):
        build(recipe, sha)


def test_a_build_that_would_move_a_frozen_prompt_between_two_frozen_splits_fails(tmp_path):
    """Prompts grouped at a strict threshold, frozen in two splits, then grouped at a looser one: near-identical
    prompts of two frozen splits would share a group, and the build refuses, naming both sets."""
    real = _rows()
    longer = [{**r, "question": r["question"] + " Show your work."} for r in real]  # Jaccard about 0.9
    sources = [
        _source("gsm8k", _write(tmp_path / "gsm8k.jsonl", real)),
        _source("longer", _write(tmp_path / "longer.jsonl", longer)),
    ]
    _, lake = run_build(_recipe(tmp_path, sources, seed=0, groups={"threshold": 0.98}))
    freeze(lake, "gold/rl/test", "rl-test-v1")
    freeze(lake, "gold/rl/validation", "rl-validation-v1")
    recipe, sha = load_recipe(_recipe(tmp_path, sources, seed=0))
    with pytest.raises(BuildRefused, match=r"rl-test-v1 \(test, .*rl-validation-v1 \(validation, "):
        build(recipe, sha)
    result = CliRunner().invoke(app, ["build", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1 and "would move" in result.output


def test_a_new_frozen_set_makes_an_unchanged_recipe_build_again(tmp_path):
    sources = [_source("gsm8k", str(GSM8K))]
    recipe = _recipe(tmp_path, sources, seed=0)
    first, lake = run_build(recipe)
    assert run_build(recipe)[0].get("unchanged")
    freeze(lake, "gold/rl/validation", "rl-validation-v1")
    again, _ = run_build(recipe)
    assert "unchanged" not in again and again["read_tables"] == {"frozen": 0}
    assert run_build(recipe)[0].get("unchanged")


@pytest.mark.parametrize(
    ("table", "name", "message"),
    [
        ("gold/rl/train", "x", "is a train split"),
        ("silver/records", "x", "is not a gold table"),
        ("gold/sft/test", "x", "no records to freeze"),
        ("gold/rl/test", "../x", "frozen set name"),
        ("gold/rl/test", "rl-eval-v1", "exists and is never replaced"),
    ],
)
def test_freeze_refuses_what_it_cannot_pin(tmp_path, table, name, message):
    _, lake = run_build(_recipe(tmp_path, [_source("gsm8k", str(GSM8K))], seed=0))
    freeze(lake, "gold/rl/test", "rl-eval-v1")
    with pytest.raises(FreezeError, match=message):
        freeze(lake, table, name)
    result = CliRunner().invoke(app, ["freeze", "--lake", str(lake.root), "--table", table, "--name", name])
    assert result.exit_code == 2 and message in result.output


def test_the_leakage_check_fails_on_a_folder_that_holds_no_build(tmp_path):
    """A mistyped lake path must not pass the check as "no leak"."""
    result = CliRunner().invoke(app, ["leakage", "--lake", str(tmp_path / "no-lake")])
    assert result.exit_code == 2 and "No build" in result.output


def test_freeze_and_leakage_name_a_folder_without_a_build_and_a_bad_threshold(tmp_path):
    with pytest.raises(FreezeError, match="no build in"):
        freeze(Lake(tmp_path / "nowhere"), "gold/rl/test", "x")
    assert not (tmp_path / "nowhere").exists()
    _, lake = run_build(_recipe(tmp_path, [_source("gsm8k", str(GSM8K))], seed=0))
    result = CliRunner().invoke(app, ["leakage", "--lake", str(lake.root), "--threshold", "1.5"])
    assert result.exit_code == 2 and "strictly between 0 and 1" in result.output
