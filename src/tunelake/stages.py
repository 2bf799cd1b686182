"""Which stages a build runs, in which order: the built-in ones (one line each below) and the recipe's own.

A built-in stage is configured by its recipe section, which its name in BUILTIN is the path of (`silver.near_dedup`;
`silver.quality.heuristics`, under its group's heading; `gold.<name>` for a step that shapes gold); `null` turns
it off. A user's
stage is a class named in the recipe's `stages:` list by its import path, with its config beside it:

    stages:
      - use: mypkg.filters.MinTurns
        min_turns: 2

User stages run first, in the order listed, then the built-in stages in the order of BUILTIN.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from tunelake.gold.mix import Mix
from tunelake.gold.select import Select
from tunelake.silver.decontaminate import Decontaminate
from tunelake.silver.dedup import ExactDedup
from tunelake.silver.diversity import Diversity
from tunelake.silver.heuristics import Heuristics
from tunelake.silver.lang import Lang
from tunelake.silver.near_dedup import NearDedup
from tunelake.silver.pii import Pii
from tunelake.silver.preference import Preference
from tunelake.silver.prompt_groups import PromptGroups
from tunelake.silver.refusal import Refusal
from tunelake.silver.verified_gold import VerifiedGold
from tunelake.stage import GlobalStage, MissingDependency, RowLocalStage, Stage

# section path -> class, in the order they run. A new built-in stage is one module and one line here.
BUILTIN: dict[str, type[Stage]] = {
    "silver.decontaminate": Decontaminate,
    "silver.verified_gold": VerifiedGold,  # RL gold that fails its own verifier never reaches the prompt bank
    # Before the gates, which judge a pair's chosen side only and so would drop one reviewer's vote and not the
    # other's; before exact_dedup, as two reviewers' equal verdicts are equal records and each is a vote.
    "silver.preference": Preference,
    "silver.quality.pii": Pii,  # before the gates and dedup: they see redacted text, and the ids it gives
    "silver.quality.lang": Lang,
    "silver.quality.heuristics": Heuristics,
    "silver.quality.refusal": Refusal,
    "silver.exact_dedup": ExactDedup,
    "silver.near_dedup": NearDedup,
    # After near_dedup, so clusters measure the templating left once near-duplicates are gone; before prompt
    # groups, so groups (and their pair cap) are made of what the cluster cap kept.
    "silver.diversity": Diversity,
    "silver.prompt_groups": PromptGroups,
    "gold.select": Select,  # it chooses among the records every silver step kept
    "gold.mix": Mix,  # last: it shapes what gold holds of the records every other stage kept
}
# Built-in stages a recipe runs unless its section is null.
ON_BY_DEFAULT = frozenset({"silver.exact_dedup"})


class StageError(ValueError):
    """A recipe's stage that cannot be used: the message says which and why."""


def user_stage(spec: dict[str, Any]) -> Stage:
    """The stage a `stages:` entry names, with its config validated; raises StageError."""
    spec = dict(spec)
    path = spec.pop("use", None)
    if not isinstance(path, str) or "." not in path:
        raise StageError(f"`use` must name a stage class by its import path (e.g. mypkg.MyFilter), got {path!r}")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise StageError(f"cannot import {path}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, RowLocalStage | GlobalStage)):
        raise StageError(f"{path} is not a tunelake RowLocalStage or GlobalStage subclass")
    return _instance(cls, spec, path)


def builtin_stages(recipe: object) -> list[Stage]:
    """The built-in stages the recipe's sections turn on (a section per stage, null when off), in BUILTIN order."""
    stages = []
    for path, cls in BUILTIN.items():
        config = section(recipe, path)
        if config is not None:
            _check_dependencies(cls, path)
            stages.append(cls(config))
    return stages


def section(recipe: object, path: str) -> object:
    """A built-in stage's section of the recipe (None when the stage is off), by its dotted path."""
    for part in path.split("."):
        recipe = getattr(recipe, part)
    return recipe


def _instance(cls: type[Stage], config: dict, where: str) -> Stage:
    if not getattr(cls, "name", None):
        raise StageError(f"{where}: the stage class sets no `name`")
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise StageError(f"{where}: the stage class does not implement {missing}")
    _check_dependencies(cls, where)
    try:
        return cls(cls.Config.model_validate(config))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: "
            + ("unknown key" if err["type"] == "extra_forbidden" else err["msg"])
            for err in e.errors()
        )
        raise StageError(f"{where}: {problems}") from None


def _check_dependencies(cls: type[Stage], where: str) -> None:
    try:
        cls.check_dependencies()
    except MissingDependency as e:
        raise StageError(f"{where}: {e}") from None
