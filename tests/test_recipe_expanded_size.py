"""YAML aliases repeat what they name: a recipe is refused when its expansion would be large, without expanding it."""

from __future__ import annotations

import tracemalloc

import pytest

from tunelake.recipe import MAX_EXPANDED_SIZE, RecipeError, load_recipe

SOURCE = "lake: lake\nsources:\n  - {{name: a, path: data.jsonl, license: mit, origin: human, meta: {meta}}}\n"


def _billion_laughs() -> str:
    """The classic bomb: 9 levels of 10 aliases each, 10^9 "lol" leaves once expanded, in a mapping."""
    levels = ["a: &a [" + ", ".join(["lol"] * 10) + "]"]
    for name, previous in zip("bcdefghi", "abcdefgh", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    return "{" + ", ".join(levels) + "}"


def _refusal(tmp_path, meta: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(SOURCE.format(meta=meta))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert str(path) in str(error.value)
    return str(error.value)


def test_a_billion_laughs_alias_bomb_in_meta_is_refused_in_little_memory(tmp_path):
    tracemalloc.start()
    try:
        message = _refusal(tmp_path, _billion_laughs())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"the limit is {MAX_EXPANDED_SIZE:,}" in message and "YAML aliases" in message
    assert peak < 20 << 20  # the expansion is measured, never built (it would take tens of gigabytes)


def test_one_long_string_repeated_by_aliases_counts_once_per_use(tmp_path):
    long = "x" * 100_000
    message = _refusal(tmp_path, f"{{a: &s {long}, b: [{', '.join(['*s'] * 20)}]}}")
    assert f"the limit is {MAX_EXPANDED_SIZE:,}" in message


def test_an_alias_used_inside_the_value_it_names_is_refused_as_endless(tmp_path):
    assert "endless" in _refusal(tmp_path, "{loop: &x [1, *x]}")


def test_a_recipe_nested_deeper_than_yaml_can_load_is_refused_not_crashed(tmp_path):
    assert "nested too deeply" in _refusal(tmp_path, "[" * 2000 + "]" * 2000)


def test_aliases_that_expand_to_a_small_recipe_load(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(SOURCE.format(meta="{a: &tags [x, y], b: *tags, c: *tags}"))
    recipe, _ = load_recipe(path)
    assert recipe.sources[0].meta == {"a": ["x", "y"], "b": ["x", "y"], "c": ["x", "y"]}
