"""A composite reward: several (verifier, gold, weight) dimensions for one prompt, summed after each dimension is
normalised as the recipe declares.

A record asks for one with `verifier: composite` and `verifier_config: {"parts": [...]}`; each part is a dimension:

    {"name": "format", "verifier": "regex", "answer": "^<think>", "config": {}, "weight": 0.2, "prove": false}

`name` defaults to the verifier's name, `answer` (the dimension's gold) to the record's answer, `weight` to 1.
`prove: false` leaves the dimension out of verified_gold's check of the reference solution, for dimensions a
reference solution is not written to meet (a reasoning format, a length). A record with a single verifier is a
composite of one dimension named after it.

Each dimension is scored as a verifier of its own (cached under its own name, version and gold), so a version bump
of one verifier rescores that dimension alone. The reward is sum(w_d * n_d(s_d)) / sum(w_d), where n_d is the
dimension's normalisation, declared in the recipe's `rl.normalize`:
- `none`: the score as it is, in [0, 1];
- `group`: (s - mean) / std over the completions of the prompt in one step (0 where they all agree). Normalising
  each dimension before the sum keeps a dimension whose scores vary little from being drowned by one that varies
  a lot (GDPO, arXiv 2601.05242); it needs the prompt's whole group of completions at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelake.rl.verifiers import VERIFIERS, ConfigError, config_of

COMPOSITE = "composite"
Normalize = Literal["none", "group"]
NORMALIZATIONS: tuple[str, ...] = Normalize.__args__


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, description="The dimension's name; defaults to its verifier's.")
    verifier: str = Field(description="A registered verifier.")
    answer: str | None = Field(None, description="The dimension's gold; defaults to the record's answer.")
    config: dict = Field(default_factory=dict, description="The verifier's config.")
    weight: float = Field(1.0, gt=0, description="The dimension's share of the reward.")
    prove: bool = Field(True, description="verified_gold checks the reference solution against this dimension.")


class CompositeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[Part] = Field(min_length=1, description="The reward's dimensions.")

    @model_validator(mode="after")
    def _parts_valid(self) -> CompositeConfig:
        names = [part.name or part.verifier for part in self.parts]
        if repeated := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"dimension names must be unique: {', '.join(repeated)} named twice")
        if not any(part.prove for part in self.parts):
            raise ValueError("every part has prove: false: at least one must be the verifier its gold is proved by")
        for part in self.parts:
            if part.verifier == COMPOSITE:
                raise ValueError("a composite's part cannot be a composite")
            config_of(part.verifier, part.config)  # ConfigError names the verifier and the field
        return self


@dataclass(frozen=True)
class Dimension:
    """One dimension of a record's reward, resolved against the record."""

    name: str
    verifier: str
    answer: str | None
    config: str  # the verifier's config as JSON text (what the reward cache keys on)
    weight: float
    prove: bool


@functools.lru_cache(maxsize=4096)  # a trainer asks again for the same records every step
def dimensions(verifier: str, answer: str | None, verifier_config: str | None) -> tuple[Dimension, ...]:
    """The dimensions of a record's reward; ConfigError for an unknown verifier or a config it does not accept."""
    if verifier != COMPOSITE:
        config_of(verifier, verifier_config)
        return (Dimension(verifier, verifier, answer, verifier_config or "{}", 1.0, True),)
    try:
        fields = orjson.loads(verifier_config or "{}")
        composite = CompositeConfig.model_validate(fields)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"composite: verifier_config is not JSON ({error})") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"composite: verifier_config {problems}") from None
    return tuple(
        Dimension(
            part.name or part.verifier,
            part.verifier,
            answer if part.answer is None else part.answer,
            orjson.dumps(part.config).decode(),
            part.weight,
            part.prove,
        )
        for part in composite.parts
    )


def version_of(verifier: str, verifier_config: str | None) -> str:
    """The version a record's reward is scored under: a verifier's, or each of a composite's verifiers' versions."""
    if verifier != COMPOSITE:
        return VERIFIERS[verifier].version
    return "+".join(
        f"{d.verifier}@{VERIFIERS[d.verifier].version}" for d in dimensions(verifier, None, verifier_config)
    )


def needs_group(dims: Sequence[Dimension], normalize: dict[str, str]) -> bool:
    """Whether some dimension is normalised over the prompt's group, so no completion is scored alone."""
    return any(normalize.get(d.name, "none") == "group" for d in dims)


def combine(scores: np.ndarray, dims: Sequence[Dimension], normalize: dict[str, str]) -> np.ndarray:
    """The rewards of one prompt's completions from their dimension scores (completions x dimensions)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(dims))
    weights = np.array([d.weight for d in dims])
    normalised = scores.copy()
    for j, dim in enumerate(dims):
        if normalize.get(dim.name, "none") == "group":
            column = scores[:, j]
            spread = column.std()
            normalised[:, j] = (column - column.mean()) / spread if spread > 0 else 0.0
    return normalised @ weights / weights.sum()
