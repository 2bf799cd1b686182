"""The recipe: what a build reads, how it cleans, what gold it writes. Every field documents itself."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from tunelake.audit import AUDITS
from tunelake.ingest.adapters import ADAPTERS
from tunelake.rl.composite import Normalize
from tunelake.schema import Regime
from tunelake.shift import OverFilter
from tunelake.stage import Stage
from tunelake.stages import BUILTIN, ON_BY_DEFAULT, StageError, builtin_stages, section, user_stage

SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# A recipe is a few hundred values; this bounds what YAML aliases can make of it (see _expanded_size).
MAX_EXPANDED_SIZE = 1_000_000


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the field and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    name: str = Field(
        description="Unique name of the source, used in the ledger and as the folder of its table, bronze/<name>: "
        "a letter or digit, then letters, digits, '_', '.' or '-', with no '..', at most 128 characters."
    )
    path: str = Field(
        description="File path or glob, relative to the recipe file. jsonl(.gz/.zst), json, parquet, csv."
    )
    format: str = Field("auto", description=f"'auto' or one of: {', '.join(sorted(ADAPTERS))}.")
    regime: Regime | None = Field(
        None, description="sft | preference | rl | kto. Optional when the format implies it."
    )
    license: str | None = Field(
        description="License of the data (e.g. mit, cc-by-4.0). null only if every record has its own `license`."
    )
    origin: str = Field(description="human | synthetic | distilled | production | ...")
    meta: dict[str, Any] = Field(default_factory=dict, description="Copied into every record's meta.")

    @field_validator("name")
    @classmethod
    def _safe_folder_name(cls, value: str) -> str:
        # The name becomes a folder under bronze/: '.' or '..' would put the table at bronze/ or the lake root, and
        # names starting with '_' are the lake's own (_delta_log, _staging) and the manifest's (_gold).
        if not SOURCE_NAME.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a safe source name: expected a letter or digit first, then letters, digits, "
                "'_', '.' or '-', with no '..', at most 128 characters"
            )
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != "auto" and value not in ADAPTERS:
            raise ValueError(f"unknown format {value!r}; expected 'auto' or one of {sorted(ADAPTERS)}")
        return value

    @model_validator(mode="after")
    def _format_makes_regime(self) -> Source:
        if self.format != "auto" and self.regime is not None:
            adapter = ADAPTERS[self.format]
            if self.regime not in adapter.regimes:
                raise ValueError(
                    f"format {self.format!r} gives regime {' or '.join(adapter.regimes)}, not {self.regime.value!r}"
                )
        return self


class _SilverLimits(_Strict):
    max_chars: int = Field(
        1_000_000, gt=0, description="A record whose text content is longer than this is quarantined as too_long."
    )
    max_quarantine_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A source whose share of quarantined records (rows, and the further records rows give) is above "
        "this fails the build, naming the top reasons: a regression must not ship as quarantined data.",
    )
    over_filter: OverFilter = Field(
        default_factory=OverFilter,
        description="When a row-local stage's cut is reported as shifting length, turns, source, domain or language.",
    )


def _stage_section(path: str, cls: type[Stage]) -> tuple[type, Any]:
    on = path in ON_BY_DEFAULT
    return (
        cls.Config | None,
        Field(
            default_factory=cls.Config if on else lambda: None,
            description=f"The {cls.name} stage ({'on' if on else 'off'} by default; null turns it off). "
            f"{(cls.Config.__doc__ or '').strip()}",
        ),
    )


# The sections of stages grouped under one heading (`silver.quality.heuristics`: group `quality`).
_GROUPS = {
    "quality": "Quality gates, each a row-local stage with its scores kept in silver (off by default).",
}


def _sections(heading: str) -> dict[str, tuple[type, Any]]:
    """The fields of a recipe heading (`silver`, `gold`) for the built-in stages under it (stages.BUILTIN, named
    by their section's path): a section per stage, and one per group of stages (`silver.quality.*`)."""
    under = {path[len(heading) + 1 :]: (path, cls) for path, cls in BUILTIN.items() if path.startswith(f"{heading}.")}
    fields = {name: _stage_section(path, cls) for name, (path, cls) in under.items() if "." not in name}
    for group in sorted({name.split(".")[0] for name in under if "." in name}):
        members = {
            name.split(".", 1)[1]: _stage_section(path, cls)
            for name, (path, cls) in under.items()
            if name.startswith(f"{group}.")
        }
        model = create_model(group.title(), __base__=_Strict, **members)
        fields[group] = (model, Field(default_factory=model, description=_GROUPS[group]))
    return fields


# `silver:` holds the validation limits and the sections of the built-in stages under it; null turns one off.
Silver = create_model("Silver", __base__=_SilverLimits, **_sections("silver"))


class Split(_Strict):
    validation: float = Field(0.02, ge=0, le=1, description="Fraction of prompt groups in the validation split.")
    test: float = Field(0.02, ge=0, le=1, description="Fraction of prompt groups in the test split.")
    seed: int = Field(0, description="Changes which prompt groups land in which split.")

    @model_validator(mode="after")
    def _fractions_fit(self) -> Split:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must be below 1 (the rest is train)")
        return self


class Pack(_Strict):
    enabled: bool = Field(False, description="Pack SFT examples into rows of up to max_length tokens.")
    strategy: Literal["bfd"] = Field("bfd", description="Best-fit decreasing.")


class Tokenize(_Strict):
    tokenizer: Path = Field(description="Local folder with tokenizer.json and tokenizer_config.json.")
    chat_template: str = Field(
        "auto", description="'auto' (the tokenizer's own), a path to a .jinja file, or a built-in name."
    )
    max_length: int = Field(4096, gt=0, description="Tokens per example (and per packed row).")
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        "all_assistant", description="Which assistant turns carry loss; nothing else ever does."
    )
    train_on_eot: bool = Field(True, description="The end-of-turn marker after a trained turn carries loss.")
    overlong: Literal["drop", "truncate_left", "truncate_right"] = Field(
        "drop",
        description="An example over max_length is dropped, or cut from the left (keeping the last assistant "
        "turn whole) or from the right; a cut that leaves no trained token drops it.",
    )
    template_date: date = Field(
        date(2024, 7, 26),
        description="The date a template that prints today's date sees, so renders are reproducible.",
    )
    pack: Pack = Field(default_factory=Pack, description="Packing of SFT examples.")


class _GoldSettings(_Strict):
    split: Split = Field(default_factory=Split, description="Split by a hash of the prompt, never by row.")
    export: list[Literal["jsonl", "parquet"]] = Field(
        default_factory=lambda: ["jsonl", "parquet"], description="Trainer-ready exports written under <lake>/exports."
    )
    tokenize: Tokenize | None = Field(
        None, description="Tokenize gold with a chat template into gold/tokenized/<fingerprint>/<regime>/<split>."
    )


# `gold:` holds the splits, exports and tokenization, and the sections of the built-in stages under it.
Gold = create_model("Gold", __base__=_GoldSettings, **_sections("gold"))


class Engine(_Strict):
    workers: int = Field(0, ge=0, description="Processes for row-local stages; 0 means one per CPU core.")
    chunk_bytes: int = Field(8 << 20, gt=0, description="Raw bytes handed to a worker at a time (bounds memory).")

    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class RL(_Strict):
    normalize: dict[str, Normalize] = Field(
        default_factory=dict,
        description="Per reward dimension (a composite's part, or a verifier's name): `none` keeps its score in "
        "[0, 1]; `group` normalises it over a prompt's completions in one step before the weighted sum (GDPO). "
        "Reward functions read it from the lake's last build.",
    )


# `audits:` holds each audit's settings (when it warns); every audit runs on every build.
Audits = create_model(
    "Audits",
    __base__=_Strict,
    **{audit.name: (audit.Config, Field(default_factory=audit.Config, description=audit.about)) for audit in AUDITS},
)


class Recipe(_Strict):
    lake: Path = Field(description="Directory of the lake (Delta tables, manifests, exports), relative to the recipe.")
    sources: list[Source] = Field(min_length=1, max_length=255, description="The raw inputs.")
    silver: Silver = Field(default_factory=Silver, description="Validation limits.")
    gold: Gold = Field(default_factory=Gold, description="Splits and exports.")
    engine: Engine = Field(default_factory=Engine, description="How row-local stages run.")
    rl: RL = Field(default_factory=RL, description="How the RL bank's rewards are computed (rl/composite.py).")
    audits: Audits = Field(
        default_factory=Audits, description="When the audits in the build manifest's `audits` warn (see the README)."
    )
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Your own stages, run before the built-in ones in this order: each entry names a stage class "
        "by import path (`use: mypkg.MyFilter`) beside its config keys.",
    )

    @field_validator("stages")
    @classmethod
    def _stages_load(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, spec in enumerate(stages):
            try:
                user_stage(spec)
            except StageError as e:
                raise ValueError(f"stage {i}: {e}") from None
        return stages

    @model_validator(mode="after")
    def _stage_names_unique(self) -> Recipe:
        chain = self.stage_chain()
        names = [stage.name for stage in chain]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique (they name ledger entries); repeated: {', '.join(dupes)}")
        adders: dict[str, list[str]] = {}
        for stage in chain:
            for column in stage.adds:
                adders.setdefault(column.name, []).append(stage.name)
        for column, by in adders.items():
            if len(by) > 1:
                raise ValueError(
                    f"the column {column!r} is added by the stages {' and '.join(by)}; a column has one author: "
                    f"turn one off (a built-in one with `silver.<name>: null`)"
                )
        return self

    def stage_chain(self) -> list[Stage]:
        """The stages this recipe runs, in order: its own `stages:`, then the built-in ones `silver:` turns on."""
        return [user_stage(spec) for spec in self.stages] + builtin_stages(self)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[Source]) -> list[Source]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """The validated recipe with paths made absolute, and the sha256 of the recipe file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"{path}: cannot read recipe ({e.strerror})") from e
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to load") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    size = _expanded_size(data, path)
    if size > MAX_EXPANDED_SIZE:
        raise RecipeError(
            f"{path}: the recipe is {size:,} values and characters once its YAML aliases are expanded; "
            f"the limit is {MAX_EXPANDED_SIZE:,}"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid recipe"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        raise RecipeError("\n".join(lines)) from None
    base = path.resolve().parent
    recipe.lake = (base / recipe.lake).resolve()
    if recipe.gold.tokenize:
        recipe.gold.tokenize.tokenizer = (base / recipe.gold.tokenize.tokenizer).resolve()
    for source in recipe.sources:
        source.path = str(base / source.path)
    for name in BUILTIN:
        config = section(recipe, name)
        try:
            if config is not None:
                config.resolve(base)
                config.check_sources([source.name for source in recipe.sources])
        except ValueError as e:
            raise RecipeError(f"{path}: {name}: {e}") from None
    return recipe, hashlib.sha256(raw).hexdigest()


def _expanded_size(data: Any, path: Path) -> int:
    """The size of the loaded YAML with every alias expanded (1 per value, plus the length of each string), computed
    without expanding it: PyYAML gives every use of an alias the same object, so each container is sized once and
    remembered by its id, and a billion-leaf alias bomb takes a few hundred steps to measure."""
    sizes: dict[int, int] = {}
    open_containers: set[int] = set()

    def size(value: Any) -> int:
        if isinstance(value, str | bytes):
            return 1 + len(value)
        if not isinstance(value, dict | list | set):
            return 1
        if id(value) in sizes:
            return sizes[id(value)]
        if id(value) in open_containers:
            raise RecipeError(f"{path}: a YAML alias is used inside the value it names, which makes it endless")
        open_containers.add(id(value))
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(size(item) for item in items)
        open_containers.remove(id(value))
        return sizes[id(value)]

    return size(data)


EXAMPLE = """\
# A tunelake recipe. Paths are relative to this file. `tunelake build` validates every key.
lake: ./lake                       # Delta tables, manifests and exports go here

sources:
  - name: hh                       # unique; used in the ledger and in bronze/<name>
    path: data/hh/*.jsonl.gz       # a file or a glob: jsonl(.gz/.zst), json, parquet, csv
    format: auto                   # or: {formats}
    license: mit                   # required (null only if every record carries `license`)
    origin: human                  # human | synthetic | distilled | production | ...
    meta: {{collection: harmless-base}}  # optional, copied into every record's meta
  - name: gsm8k
    path: data/gsm8k/train.jsonl.gz
    format: gsm8k
    regime: rl                     # optional when the format implies it
    license: mit
    origin: human

silver:
  max_chars: 1000000               # longer records are quarantined as too_long
  near_dedup: {{threshold: 0.8}}     # drop near-duplicates (MinHash LSH, each pair verified); off unless given
  # verified_gold: {{twice: 0.05}}    # RL gold must pass its own verifier (code: in the sandbox), else quarantined
  # preference:                    # pairs from ratings and votes; ties never given a winner; see the README
  #   pairs_from_ratings: {{aggregate: mean, strategy: best_vs_random_lower, min_margin: 0, seed: 0}}
  #   ties: drop                    # or keep_soft (pair_label 0.5)
  #   min_agreement: 0.6            # pairs judged more than once: the majority's least share of the votes
  #   length_balance: off           # or downsample: chosen longer in half the pairs
  # diversity: {{by: response, threshold: 0.5, max_per_cluster: null}}  # template collapse, reported per source
  prompt_groups: {{}}                # near-identical prompts share a split; `tunelake freeze` pins eval sets
  # decontaminate: {{against: [{{name: gsm8k-test, path: evals/gsm8k_test.jsonl, field: question}}]}}
  # quality:                       # gates, off unless given; each keeps its scores in silver
  #   pii: {{action: redact}}         # secrets, e-mail, cards, IPs, phones -> <EMAIL> ...; ids computed again
  #   lang: {{allow: [en]}}           # drop records confidently in another language; flag mixed ones
  #   heuristics: {{}}                # too short/long, repetitive, non-printing, cut in a code block
  #   refusal: tag                  # tag refusals (or drop); report the benign-refusal rate per source/domain
  # over_filter: {{max_ks: 0.2, max_loss: 0.5}}  # warn when a stage's cut shifts length/turns or empties a source

gold:
  split: {{validation: 0.02, test: 0.02, seed: 0}}   # by prompt group, never by row
  export: [jsonl, parquet]
  # select: {{strategy: k_center, size: 10000, by: prompt, seed: 0}}  # keep the records that cover the corpus best
  # mix: {{by: source, ratios: {{hh: 0.6, gsm8k: 0.4}}, size: 10000, upsample: false, seed: 0, general: [hh]}}
  #                                # shares of a target size (or counts); seeded sampling; report in the manifest

engine:
  workers: 0                       # 0 = one process per CPU core

# rl:                              # rewards for the RL bank; a composite's dimensions are in verifier_config
#   normalize: {{format: group}}     # per dimension: none (score in [0, 1]) or group (over a prompt's completions)

# audits:                          # run on every build, in the manifest's `audits`; `tunelake audit preference`
#   preference: {{max_longer_skew: 0.1, max_position_skew: 0.1, min_pairs: 30}}   # warn beyond 50% +- these
"""


def example_recipe() -> str:
    return EXAMPLE.format(formats=", ".join(sorted(ADAPTERS)))
