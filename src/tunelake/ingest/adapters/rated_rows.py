"""Rated responses in the long form (HelpSteer2-, Argilla-style exports): one row per rated response, or per
(response, reviewer) or (response, aspect), the rows of one prompt next to each other in the file -> every pair.

The rows of one prompt (same `prompt_id`, else same `prompt`) are one group (Adapter.group_by): each distinct
response's ratings, all its rows' reviewers and aspects, aggregate as in the wide form (rated.py), and the group
gives the same pairs the wide form gives for one row holding those responses.
"""

from __future__ import annotations

from collections import defaultdict

import orjson

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.pairs import RatingsPolicy, prompt_messages, response_messages
from tunelake.ingest.adapters.rated import RatedResponse, aggregate_of, every_pair
from tunelake.schema import Reason, Regime, Rejected

_REVIEWER_KEYS = ("reviewer", "annotator")
_NO_REVIEWER = "(none)"  # the key of a row without a reviewer in a group whose other rows name theirs


def _text(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise Rejected(Reason.wrong_type, where, f"expected a string, got {type(value).__name__}")
    return value


def _gathered(values: list[object]) -> object:
    """Several rows' ratings of one response (and reviewer) as one value: the one value, objects with distinct keys
    merged ({aspect: score} rows -> one {aspect: score}), else the list of them."""
    if len(values) == 1:
        return values[0]
    if all(isinstance(v, dict) for v in values) and sum(map(len, values)) == len({k for v in values for k in v}):
        return {k: x for v in values for k, x in v.items()}
    return values


def _response(rows: list[tuple[int, dict]], policy: RatingsPolicy) -> RatedResponse:
    number, first = rows[0]
    key = "ratings" if first.get("ratings") is not None else "score"
    by_reviewer: dict[str | None, list[object]] = defaultdict(list)
    for n, row in rows:
        reviewer = next((_text(row, k, f"rows[{n}].{k}") for k in _REVIEWER_KEYS if row.get(k) is not None), None)
        by_reviewer[reviewer].append(row["ratings"] if row.get("ratings") is not None else row.get("score"))
    reviewers = tuple(r for r in by_reviewer if r is not None)
    if reviewers:
        given = {_NO_REVIEWER if r is None else r: _gathered(v) for r, v in by_reviewer.items()}
    else:
        given = _gathered(by_reviewer[None])
    side = response_messages(first["response"], f"rows[{number}].response")
    model = _text(first, "model", f"rows[{number}].model")
    return RatedResponse(side, model, given, aggregate_of(given, policy), f"rows[{number}].{key}", reviewers)


def rated_rows(rows: list[tuple[int, dict]], regime: Regime, policy: RatingsPolicy) -> list[dict | Rejected]:
    """A group's (row number, row) pairs -> every pair of its responses (see rated.every_pair)."""
    number, first = rows[0]
    prompt = prompt_messages(first.get("prompt"), f"rows[{number}].prompt")
    responses: dict[tuple[bytes, object], list[tuple[int, dict]]] = defaultdict(list)  # in order of appearance
    for n, row in rows:
        response_messages(row.get("response"), f"rows[{n}].response")  # each row's response and model are checked
        model = _text(row, "model", f"rows[{n}].model")
        responses[orjson.dumps(row["response"], option=orjson.OPT_SORT_KEYS), model].append((n, row))
    return every_pair(prompt, [_response(r, policy) for r in responses.values()], policy, "rows")


ADAPTERS = [
    Adapter(
        "rated_rows",
        (Regime.preference,),
        frozenset({"prompt", "response"}),
        rated_rows,
        frozenset({"prompt", "response", "model", "score", "ratings", *_REVIEWER_KEYS}),
        matches=lambda r: "score" in r or "ratings" in r,
        ratings=True,
        group_by=("prompt_id", "prompt"),
    ),
]
