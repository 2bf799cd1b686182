"""What every pair made from ratings, ranks or judgments carries: the pair's facts in meta["pair"], and ties.

A source's preference becomes `chosen`; where the source cannot tell the two sides apart the pair keeps the input
order (a as chosen) and says `tie: true`, so a later step can drop it or keep it soft, never pick a random winner.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelake.ingest.adapters.messages import chat_messages, message
from tunelake.schema import Reason, Rejected

# Two aggregates within this of each other are a tie (ratings are small decimals; this only absorbs float noise).
TIE_EPSILON = 1e-9

Aggregate = Literal["mean", "median", "min", "max"]


class RatingsPolicy(BaseModel):
    """How a response's several ratings (per aspect, per reviewer) combine into the one score its pairs compare.

    The seam to the recipe: `silver.preference.pairs_from_ratings.aggregate` sets it (see ratings_policy); the
    source plan carries it to the adapters that read ratings, and the ingest cache key holds it, so a new aggregate
    reads the files again."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    aggregate: Aggregate = Field(
        "mean", description="mean | median | min | max: how one response's ratings combine into its score."
    )


def ratings_policy(recipe: object) -> RatingsPolicy:
    """The recipe's ratings policy: the `aggregate` of silver.preference.pairs_from_ratings where the recipe has
    that section (the silver.preference step's), else the default (mean)."""
    section = getattr(getattr(recipe, "silver", None), "preference", None)
    pairs = getattr(section, "pairs_from_ratings", None)
    return RatingsPolicy() if pairs is None else RatingsPolicy(aggregate=pairs.aggregate)


def combine(scores: list[float], how: Aggregate) -> float:
    """One score from several (at least one)."""
    if how == "mean":
        return math.fsum(scores) / len(scores)
    if how == "min":
        return min(scores)
    if how == "max":
        return max(scores)
    ordered = sorted(scores)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rating_value(value: object) -> float | None:
    """A rating as a finite number: numbers, and numbers written as text ("4", " 3.5 "); None for anything else
    (null, "N/A", a boolean, NaN, a list): such a rating is not usable, which the caller names."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _normalised(side: list[dict]) -> list[tuple]:
    """A side's messages with case and runs of whitespace ignored: what 'the same response' means for ties."""
    return [(m["role"], " ".join((m["content"] or "").split()).casefold(), m["tool_calls"]) for m in side]


def same_response(a: list[dict], b: list[dict]) -> bool:
    return _normalised(a) == _normalised(b)


def prompt_messages(value: object, where: str) -> list[dict]:
    """A prompt given as text (one user turn) or as a list of messages."""
    if value is None:
        raise Rejected(Reason.missing_field, where, "expected the prompt: a string or a list of messages")
    return [message("user", value)] if isinstance(value, str) else chat_messages(value, where)


def response_messages(value: object, where: str) -> list[dict]:
    """A response given as text (one assistant turn) or as a list of messages."""
    if value is None:
        raise Rejected(Reason.missing_field, where, "expected a response: a string or a list of messages")
    return [message("assistant", value)] if isinstance(value, str) else chat_messages(value, where)


def pair_meta(
    kind: Literal["rated", "ranked", "judged"],
    tie: bool,
    *,
    margin: float | None = None,
    aggregate: Aggregate | None = None,
    ratings: dict | None = None,
    models: tuple[str | None, str | None] = (None, None),
    reviewers: list[str] | None = None,
    candidates: int | None = None,
    winner: Literal["a", "b", "tie"] | None = None,
    probability: float | None = None,
    chosen_position: Literal["a", "b"] | None = None,
    rubric_version: str | None = None,
    reason: str | None = None,
    generation: dict | None = None,
) -> dict:
    """meta["pair"]: every fact the contract names, null (or []) where the source does not say."""
    return {
        "kind": kind,
        "tie": tie,
        "margin": margin,
        "aggregate": aggregate,
        "ratings": ratings,
        "models": {"chosen": models[0], "rejected": models[1]},
        "reviewers": reviewers or [],
        "candidates": candidates,
        "winner": winner,
        "probability": probability,
        "chosen_position": chosen_position,
        "rubric_version": rubric_version,
        "reason": reason,
        "generation": generation,
    }
