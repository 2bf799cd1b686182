"""OASST2 message trees (the official "trees" export: one tree per row) -> ranked pairs of sibling replies.

Sibling assistant replies ranked by OASST2's reviewers (rank 0 is best) give every pair of them; the prompt is the
conversation from the root to their parent. Each side's labels and review facts stay in meta.pair.ratings. A
message the source deleted or whose review failed is never trained on: every pair it is in (or under it, for a
turn of the prompt) is quarantined naming it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.messages import message
from tunelake.ingest.adapters.pairs import pair_meta, same_response
from tunelake.schema import NoRecord, Reason, Regime, Rejected

_ROLES = {"prompter": "user", "assistant": "assistant"}
# A reply's facts kept beside its rank: what reviewers said of it.
_REVIEW_FACTS = ("rank", "labels", "review_count", "review_result", "emojis", "synthetic")


def _message(node: dict, where: str) -> dict:
    role, text = node.get("role"), node.get("text")
    if role not in _ROLES:
        raise Rejected(Reason.unknown_role, f"{where}.role", f"expected prompter or assistant, got {role!r}")
    if not isinstance(text, str):
        raise Rejected(Reason.wrong_type, f"{where}.text", f"expected a string, got {type(text).__name__}")
    return message(_ROLES[role], text)


def _unusable(node: dict, where: str) -> Rejected | None:
    """Why a message cannot be in a pair, if it cannot: deleted, or its review failed."""
    if node.get("deleted") is True:
        return Rejected(Reason.deleted_message, where, f"message {node.get('message_id')} is deleted in the source")
    if node.get("review_result") is False:
        return Rejected(Reason.failed_review, where, f"message {node.get('message_id')} failed its review")
    return None


def _replies(node: dict, where: str) -> list[tuple[dict, str]]:
    replies = node.get("replies") or []
    if not isinstance(replies, list) or not all(isinstance(r, dict) for r in replies):
        raise Rejected(Reason.wrong_type, f"{where}.replies", "expected a list of message objects")
    return [(r, f"{where}.replies[{i}]") for i, r in enumerate(replies)]


def _rank(node: dict, where: str) -> int | None:
    rank = node.get("rank")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise Rejected(Reason.wrong_type, f"{where}.rank", f"expected an integer or null, got {rank!r}")
    return rank


def _groups(node: dict, where: str, path: list[dict], blocked: Rejected | None) -> Iterator[tuple]:
    """(prompt path, why the path cannot be used or None, the ranked assistant replies) under every message."""
    blocked = blocked or _unusable(node, where)
    path = [*path, _message(node, where)]
    replies = _replies(node, where)
    ranked = [(r, w, rank) for r, w in replies if r.get("role") == "assistant" and (rank := _rank(r, w)) is not None]
    if len(ranked) >= 2:
        yield path, blocked, ranked
    for reply, at in replies:
        yield from _groups(reply, at, path, blocked)


def _facts(node: dict) -> dict:
    return {key: node.get(key) for key in _REVIEW_FACTS} | {"message_id": node.get("message_id")}


def oasst2_tree(row: dict, regime: Regime) -> list[dict | Rejected]:
    root = row.get("prompt")
    if not isinstance(root, dict):
        raise Rejected(Reason.wrong_type, "prompt", "expected the tree's root message object")
    out: list[dict | Rejected] = []
    for path, blocked, ranked in _groups(root, "prompt", [], None):
        for (a, a_at, a_rank), (b, b_at, b_rank) in itertools.combinations(ranked, 2):
            why = blocked or _unusable(a, a_at) or _unusable(b, b_at)
            if why is not None:
                out.append(why)
                continue
            sides = [_message(a, a_at)], [_message(b, b_at)]
            tie = a_rank == b_rank or same_response(*sides)
            first, second = (sides[0], a_rank, a), (sides[1], b_rank, b)
            if b_rank < a_rank:
                first, second = second, first
            (chosen, c_rank, c_node), (rejected, r_rank, r_node) = first, second
            meta = pair_meta(
                "ranked",
                tie,
                margin=float(r_rank - c_rank),
                ratings={"chosen": _facts(c_node), "rejected": _facts(r_node)},
                models=(c_node.get("model_name"), r_node.get("model_name")),
                candidates=len(ranked),
            )
            out.append(
                {
                    "prompt": [dict(m) for m in path],
                    "chosen": chosen,
                    "rejected": rejected,
                    "score_chosen": float(-c_rank),
                    "score_rejected": float(-r_rank),
                    "meta": {"pair": meta},
                }
            )
    if not out:
        raise NoRecord(Reason.no_ranked_replies, "the tree has no two ranked assistant replies to the same message")
    return out


ADAPTERS = [
    Adapter(
        "oasst2_tree",
        (Regime.preference,),
        frozenset({"message_tree_id", "prompt"}),
        oasst2_tree,
        frozenset({"prompt"}),
        matches=lambda r: isinstance(r["prompt"], dict) and "replies" in r["prompt"],
    ),
]
