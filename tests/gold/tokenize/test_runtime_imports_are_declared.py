"""`pip install tunelake` installs every module a build imports: tunelake's own imports are declared in pyproject.toml,
and a build runs with nothing but the declared dependencies and what they require. jinja2 once came only with an
optional extra of transformers, and every recipe with gold.tokenize failed after a plain install ("apply_chat_template
requires jinja2")."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import tunelake
from tests.conftest import EXAMPLES, REPO, TOKENIZERS
from tunelake.stages import BUILTIN

SRC = Path(tunelake.__file__).parents[1]
SOURCES = [  # one source per regime, so that every tokenize path runs
    ("alpaca", "alpaca_300.json.gz", "cc-by-nc-4.0"),
    ("hh", "hh_rlhf_harmless_test_300.jsonl.gz", "mit"),
    ("gsm8k", "gsm8k_train_300.jsonl.gz", "mit"),
]


def _declared(extras: bool = False) -> set[str]:
    """The distributions pyproject.toml declares as dependencies (or, with extras, in its optional extras)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [r for rs in project["optional-dependencies"].values() for r in rs] if extras else []
    return {canonicalize_name(Requirement(r).name) for r in requirements or project["dependencies"]}


def _installed_with(names: set[str]) -> set[str]:
    """The distributions installing `names` brings: them and, transitively, what they require (no extras)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # not installed here: nothing of it can have been imported either
        for spec in map(Requirement, requires):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(spec.name))
    return seen


@cache
def _providers() -> dict[str, set[str]]:
    """Top-level module -> the installed distributions that provide it."""
    return {module: {canonicalize_name(d) for d in dists} for module, dists in packages_distributions().items()}


def _undeclared(modules: set[str]) -> dict[str, set[str]]:
    """The third-party top-level modules (and the distributions that provide them) no declared dependency provides."""
    third_party = {m for m in modules if m not in sys.stdlib_module_names and m in _providers()}
    return {m: _providers()[m] for m in sorted(third_party) if not _providers()[m] & _declared()}


def _imported_by_tunelake() -> set[str]:
    """The top-level modules tunelake's own code imports, at module level or inside functions."""
    found = set()
    for path in (SRC / "tunelake").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - {"tunelake"}


def _site_packages_of(names: set[str], folder: Path) -> Path:
    """A folder that holds, as links into this environment, only the files of the distributions `names` (what a
    fresh environment would have after installing them)."""
    for name in names:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            if not (folder / top).exists():
                (folder / top).symlink_to(dist.locate_file(top))
    return folder


def _build_with_only(site_packages: Path, folder: Path) -> subprocess.CompletedProcess:
    """`tunelake build` of a recipe that tokenizes all three regimes (and exports them), run with no site-packages
    but `site_packages` (-S: the workers it spawns inherit the flag and PYTHONPATH)."""
    sources = [
        {"name": name, "path": str(EXAMPLES / "data" / file), "license": license, "origin": "human"}
        for name, file, license in SOURCES
    ]
    recipe = {
        "lake": "lake",
        "sources": sources,
        "gold": {"tokenize": {"tokenizer": str(TOKENIZERS / "qwen2.5-instruct"), "max_length": 1024}},
        "engine": {"workers": 1},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{site_packages}"}
    command = [sys.executable, "-S", "-c", "from tunelake.cli import app; app()", "build", str(folder / "recipe.yaml")]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)


def test_every_module_tunelake_imports_itself_is_a_declared_dependency():
    # A module a built-in stage `requires` is imported only when that stage runs (a recipe turning it on without the
    # package fails to load, naming the install command): an extra declares it.
    optional = {module for stage in BUILTIN.values() for module in stage.requires}
    assert _undeclared(_imported_by_tunelake() - optional) == {}
    assert {m for m in optional if not _providers().get(m, set()) & _declared(extras=True)} == set()


def test_a_tokenizing_build_runs_with_only_what_the_declared_dependencies_install(tmp_path):
    (tmp_path / "site-packages").mkdir()
    site_packages = _site_packages_of(_installed_with(_declared()), tmp_path / "site-packages")
    done = _build_with_only(site_packages, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "lake" / "gold" / "tokenized").is_dir()
