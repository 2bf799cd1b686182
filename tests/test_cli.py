"""The `tunelake` command as a user meets it: init, build, status, explain, quarantine, and recipe errors."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tunelake.cli import app
from tunelake.recipe import Recipe

runner = CliRunner()


def test_init_writes_a_recipe_that_validates(tmp_path):
    path = tmp_path / "my-recipe.yaml"
    result = runner.invoke(app, ["init", str(path)])
    assert result.exit_code == 0
    Recipe.model_validate(yaml.safe_load(path.read_text()))
    assert runner.invoke(app, ["init", str(path)]).exit_code == 1  # never overwrites


def test_unknown_key_and_bad_value_are_named(tmp_path):
    source = {"name": "s", "path": "x.jsonl", "licence": "mit", "origin": "human", "format": "sharegtp"}
    result = runner.invoke(app, ["build", str(write_recipe(tmp_path, [source]))])
    assert result.exit_code == 2
    assert "sources.0.licence: unknown key" in result.output
    assert "sources.0.format" in result.output and "sharegtp" in result.output
    assert "sources.0.license: Field required" in result.output


def test_a_source_meta_key_that_is_not_text_is_named(tmp_path):
    # YAML reads `1: x` as an integer key; meta is a JSON object, whose keys are text.
    source = {"name": "s", "path": "x.jsonl", "license": "mit", "origin": "human", "meta": {1: "x"}}
    result = runner.invoke(app, ["build", str(write_recipe(tmp_path, [source]))])
    assert result.exit_code == 2 and "sources.0.meta.1" in result.output


def test_a_glob_matching_nothing_is_a_clear_error(tmp_path):
    source = {"name": "s", "path": "nothing/*.jsonl", "license": "mit", "origin": "human"}
    result = runner.invoke(app, ["build", str(write_recipe(tmp_path, [source]))])
    assert result.exit_code == 2 and "no file matches" in result.output


def test_build_status_explain_quarantine(tmp_path):
    rows = [
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        {"instruction": "Say hi", "input": "", "output": "Hi!"},
        {"instruction": "Say nothing", "input": "", "output": ""},
    ]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = write_recipe(tmp_path, [{"name": "a", "path": str(data), "license": "mit", "origin": "human"}])
    result = runner.invoke(app, ["build", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "│ a " in result.output and "│      3 │      1 │           1 │       1 │" in result.output

    lake = str(tmp_path / "lake")
    status = runner.invoke(app, ["status", "--lake", lake])
    assert "silver/records" in status.output and "bronze=3  silver=1  quarantined=1  dropped=1" in status.output

    dup = runner.invoke(app, ["explain", "--lake", lake, "a:2"])
    assert "dedup" in dup.output and "duplicate_of:" in dup.output and f"kept a:{data}:1" in dup.output

    empty = runner.invoke(app, ["explain", "--lake", lake, "a:3"])
    assert "quarantine" in empty.output and "empty_turn" in empty.output

    grouped = runner.invoke(app, ["quarantine", "--lake", lake])
    assert "empty_turn  1" in grouped.output and "a:a.jsonl:3" in grouped.output
