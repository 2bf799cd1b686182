"""Rated completions (UltraFeedback and the like): one prompt, N responses each with ratings -> every pair.

A row gives C(N, 2) records, each oriented by the responses' aggregate scores (the recipe's aggregate, see
pairs.RatingsPolicy); which of them to train on is the silver.preference step's choice, not the adapter's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.messages import list_field
from tunelake.ingest.adapters.pairs import (
    TIE_EPSILON,
    RatingsPolicy,
    combine,
    pair_meta,
    prompt_messages,
    rating_value,
    response_messages,
    same_response,
)
from tunelake.schema import Reason, Regime, Rejected

# Where a completion's ratings may be, most detailed first: UltraFeedback rows hold `annotations` (per aspect) and
# the scores made of them; a plain `ratings` object ({aspect: score}, or {reviewer: {aspect: score}}) wins.
_RATING_KEYS = ("ratings", "annotations", "fine-grained_score", "overall_score")


@dataclass(frozen=True)
class RatedResponse:
    """One response of a prompt with its ratings: what the wide form reads from a completion and the long form
    (rated_rows.py) gathers from the rows of one response."""

    side: list[dict]
    model: str | None
    given: object  # the ratings as the source gave them
    score: float | None  # their aggregate; None when none is usable
    field: str  # where the ratings were read from
    reviewers: tuple[str, ...] = ()  # who rated it, where the source says


def _leaves(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def aggregate_of(given: object, policy: RatingsPolicy) -> float | None:
    """The aggregate of every usable rating in `given` (a number, or nested objects and lists of them); None when
    there is none."""
    scores = [s for s in map(rating_value, _leaves(given)) if s is not None]
    return combine(scores, policy.aggregate) if scores else None


def _response(completion: object, where: str, policy: RatingsPolicy) -> RatedResponse:
    if not isinstance(completion, dict):
        raise Rejected(Reason.wrong_type, where, f"expected a completion object, got {type(completion).__name__}")
    model = completion.get("model")
    if model is not None and not isinstance(model, str):
        raise Rejected(Reason.wrong_type, f"{where}.model", f"expected a string, got {type(model).__name__}")
    side = response_messages(completion.get("response"), f"{where}.response")
    key = next((k for k in _RATING_KEYS if completion.get(k) is not None), "ratings")
    given = completion.get(key)
    if key == "annotations" and isinstance(given, dict):  # {aspect: {Rating, Rationale, ...}}: the ratings only
        given = {aspect: v.get("Rating") if isinstance(v, dict) else v for aspect, v in given.items()}
    return RatedResponse(side, model, given, aggregate_of(given, policy), f"{where}.{key}")


def _pair(prompt: list[dict], a: RatedResponse, b: RatedResponse, rated: int, policy: RatingsPolicy) -> dict:
    tie = abs(a.score - b.score) <= TIE_EPSILON or same_response(a.side, b.side)
    chosen, rejected = (b, a) if b.score - a.score > TIE_EPSILON else (a, b)
    meta = pair_meta(
        "rated",
        tie,
        margin=abs(chosen.score - rejected.score),  # chosen is the higher, but within TIE_EPSILON
        aggregate=policy.aggregate,
        ratings={"chosen": chosen.given, "rejected": rejected.given},
        models=(chosen.model, rejected.model),
        reviewers=sorted(set(a.reviewers) | set(b.reviewers)),
        candidates=rated,
    )
    return {
        # Copies: one response is in several pairs, and canonicalize takes each message's extras out of it.
        "prompt": [dict(m) for m in prompt],
        "chosen": [dict(m) for m in chosen.side],
        "rejected": [dict(m) for m in rejected.side],
        "score_chosen": chosen.score,
        "score_rejected": rejected.score,
        "meta": {"pair": meta},
    }


def rated_completions(row: dict, regime: Regime, policy: RatingsPolicy) -> list[dict | Rejected]:
    key = "instruction" if "instruction" in row else "prompt"
    prompt = prompt_messages(row.get(key), key)
    completions = list_field(row, "completions")
    responses = [_response(c, f"completions[{i}]", policy) for i, c in enumerate(completions)]
    return every_pair(prompt, responses, policy, "completions")


def every_pair(
    prompt: list[dict], responses: list[RatedResponse], policy: RatingsPolicy, where: str
) -> list[dict | Rejected]:
    """Every pair of a prompt's responses, in input order, each oriented by the aggregates (a Rejected for a pair
    with an unrated side); raises Rejected (no_pair) when fewer than two responses are rated."""
    rated = sum(r.score is not None for r in responses)
    if rated < 2:
        unrated = ", ".join(r.field for r in responses if r.score is None) or "none"
        raise Rejected(
            Reason.no_pair,
            where,
            f"{rated} of {len(responses)} responses have a usable rating (a number, or one written as text); a pair "
            f"needs two. Without one: {unrated}",
        )
    out: list[dict | Rejected] = []
    for a, b in itertools.combinations(responses, 2):
        missing = a if a.score is None else b if b.score is None else None
        if missing is None:
            out.append(_pair(prompt, a, b, rated, policy))
        else:
            given = repr(missing.given)
            out.append(
                Rejected(
                    Reason.missing_rating,
                    missing.field,
                    f"no usable rating (a number, or one written as text) in {given[:200]}; the response's other "
                    "pairs are quarantined too",
                )
            )
    return out


ADAPTERS = [
    Adapter(
        "rated_completions",
        (Regime.preference,),
        frozenset({"completions"}),
        rated_completions,
        frozenset({"instruction", "prompt", "completions"}),
        matches=lambda r: isinstance(r["completions"], list) and ("instruction" in r or "prompt" in r),
        ratings=True,
    ),
]
