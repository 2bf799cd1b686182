"""Pairwise judgments: a prompt, two responses and a judge's verdict -> one pair, oriented by the verdict.

Two spellings: a generic one (`prompt, response_a, response_b, winner | probability, reviewer, ...`) and the
real alpaca_eval annotation files (`instruction, output_1, output_2, preference, annotator, ...`). Several judges
of one pair are several rows; merging them is the silver.preference step's work.
"""

from __future__ import annotations

import math

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.messages import optional_text
from tunelake.ingest.adapters.pairs import pair_meta, prompt_messages, response_messages, same_response
from tunelake.schema import NoRecord, Reason, Regime, Rejected

_WINNERS = ("a", "b", "tie")


def _judged_pair(
    row: dict,
    prompt: list[dict],
    sides: tuple[list[dict], list[dict]],
    winner: str,
    p_b: float | None,
    models: tuple[str | None, str | None],
    **facts: object,
) -> dict:
    """The pair oriented by the verdict: `winner` by position, p_b = P(b is better) where the judge gave one. Two
    responses that are the same text (but for case and spacing) are a tie whatever the verdict, and hold nothing to
    learn: no record, dropped as `tie` (validation would take identical sides for a broken pair)."""
    if same_response(*sides):
        raise NoRecord(Reason.tie, f"the two responses are the same text (verdict {winner!r}): a tie")
    tie = winner == "tie"
    b_wins = winner == "b" and not tie
    chosen, rejected = (sides[1], sides[0]) if b_wins else sides
    probability = None if p_b is None else (p_b if b_wins else 1.0 - p_b)
    generation = row.get("generation")
    meta = pair_meta(
        "judged",
        tie,
        models=(models[1], models[0]) if b_wins else models,
        winner=winner,
        probability=probability,
        chosen_position="b" if b_wins else "a",
        generation=generation if isinstance(generation, dict) else None,
        **facts,
    )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "meta": {"pair": meta}}


def _probability(value: object, field: str, low: float, high: float) -> float:
    """A verdict given as a number in [low, high] (not a boolean, not NaN); else an invalid_verdict."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejected(Reason.invalid_verdict, field, f"expected a number in [{low:g}, {high:g}], got {value!r}")
    if not low <= value <= high:
        raise Rejected(Reason.invalid_verdict, field, f"expected a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _winner_of(p_b: float) -> str:
    return "b" if p_b > 0.5 else "a" if p_b < 0.5 else "tie"


def judged_pair(row: dict, regime: Regime) -> dict:
    prompt = prompt_messages(row.get("prompt"), "prompt")
    sides = tuple(response_messages(row.get(key), key) for key in ("response_a", "response_b"))
    winner, p_b = row.get("winner"), None
    if row.get("probability") is not None:
        p_b = _probability(row["probability"], "probability", 0.0, 1.0)
    if winner is None:
        if p_b is None:
            raise Rejected(Reason.invalid_verdict, "winner", "expected `winner` (a, b or tie) or `probability`")
        winner = _winner_of(p_b)
    elif winner not in _WINNERS:
        raise Rejected(Reason.invalid_verdict, "winner", f"expected a, b or tie, got {winner!r}")
    elif p_b is not None and _winner_of(p_b) != winner:
        raise Rejected(Reason.invalid_verdict, "probability", f"P(b better) = {p_b:g} contradicts winner {winner!r}")
    reviewer = optional_text(row, "reviewer")
    return _judged_pair(
        row,
        prompt,
        sides,
        winner,
        p_b,
        (optional_text(row, "model_a"), optional_text(row, "model_b")),
        reviewers=[reviewer] if reviewer else [],
        rubric_version=optional_text(row, "rubric_version"),
        reason=optional_text(row, "reason"),
    )


def alpaca_eval(row: dict, regime: Regime) -> dict:
    """alpaca_eval's `preference`: 1 or 2 (an integer: which output won), or a float p in [1, 2] with
    p - 1 = P(output_2 is better); 1.5 is a tie (alpaca_eval gives it where the two outputs are the same)."""
    prompt = prompt_messages(row.get("instruction"), "instruction")
    sides = response_messages(row.get("output_1"), "output_1"), response_messages(row.get("output_2"), "output_2")
    preference = row.get("preference")
    if isinstance(preference, int) and not isinstance(preference, bool):
        if preference not in (1, 2):
            raise Rejected(Reason.invalid_verdict, "preference", f"expected 1 or 2, got {preference}")
        winner, p_b = "ab"[preference - 1], None
    else:
        p_b = _probability(preference, "preference", 1.0, 2.0) - 1.0
        winner = _winner_of(p_b)
    annotator = optional_text(row, "annotator")
    raw = row.get("raw_completion")
    reason = raw.get("concise_explanation") if isinstance(raw, dict) else None
    return _judged_pair(
        row,
        prompt,
        sides,
        winner,
        p_b,
        (optional_text(row, "generator_1"), optional_text(row, "generator_2")),
        reviewers=[annotator] if annotator else [],
        reason=reason if isinstance(reason, str) else None,
    )


ADAPTERS = [
    Adapter(
        "judged_pair",
        (Regime.preference,),
        frozenset({"prompt", "response_a", "response_b"}),
        judged_pair,
        frozenset(
            {
                "prompt",
                "response_a",
                "response_b",
                "winner",
                "probability",
                "reviewer",
                "rubric_version",
                "reason",
                "model_a",
                "model_b",
                "generation",
            }
        ),
    ),
    Adapter(
        "alpaca_eval",
        (Regime.preference,),
        frozenset({"instruction", "output_1", "output_2", "preference"}),
        alpaca_eval,
        # raw_completion stays in meta: the judge's whole answer (for the weighted judges, its logprobs).
        frozenset({"instruction", "output_1", "output_2", "preference", "generator_1", "generator_2", "annotator"}),
    ),
]
