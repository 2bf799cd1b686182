"""A source's name is the folder of its bronze table: only names that stay one safe folder under bronze/ load."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from tunelake.recipe import RecipeError, load_recipe


def _recipe_with_second_source_named(folder, name: str):
    sources = [{"name": n, "path": "data.jsonl", "license": "mit", "origin": "human"} for n in ("first", name)]
    return write_recipe(folder, sources)


@pytest.mark.parametrize(
    "name",
    [
        ".",  # bronze/. is the bronze folder itself: every other table would nest inside this one
        "..",  # bronze/.. is the lake root
        "_delta_log",  # the folder where Delta keeps a table's commits
        "_gold",  # the manifest's key for gold counts
        "_staging",  # the lake's scratch folder
        "a/b",
        "../escape",
        "a..b",
        "-leading-dash",
        "x" * 129,
    ],
)
def test_a_source_name_that_is_not_a_safe_folder_is_refused_at_load_naming_its_index_and_the_rule(tmp_path, name):
    path = _recipe_with_second_source_named(tmp_path, name)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert str(path) in message and "sources.1.name" in message and repr(name) in message
    assert "expected a letter or digit first" in message and "no '..'" in message


@pytest.mark.parametrize("name", ["hh", "hh_harmless", "gsm8k.v2-test", "A", "9", "x" * 128])
def test_a_source_name_of_letters_digits_and_separators_loads(tmp_path, name):
    recipe, _ = load_recipe(_recipe_with_second_source_named(tmp_path, name))
    assert recipe.sources[1].name == name
