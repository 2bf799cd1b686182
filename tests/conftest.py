"""Shared test helpers: recipes written into tmp dirs over the repo's fixtures and examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelake.build import build
from tunelake.lake import Lake
from tunelake.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIXTURES = REPO / "tests" / "fixtures"
# Real tokenizers with chat templates, copied from ../shared/data/tokenizers (see its SOURCE.md, copied too).
TOKENIZERS = FIXTURES / "tokenizers"


def write_recipe(folder: Path, sources: list[dict], **extra) -> Path:
    """A recipe file in `folder` whose lake is folder/lake; source paths may be absolute."""
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"lake": "lake", "sources": sources, **extra}, sort_keys=False))
    return path


def run_build(recipe_path: Path) -> tuple[dict, Lake]:
    recipe, sha = load_recipe(recipe_path)
    return build(recipe, sha), Lake(recipe.lake)


@pytest.fixture
def example_sources() -> list[dict]:
    recipe = yaml.safe_load((EXAMPLES / "recipe.yaml").read_text())
    for source in recipe["sources"]:
        source["path"] = str(EXAMPLES / source["path"])
    return recipe["sources"]
