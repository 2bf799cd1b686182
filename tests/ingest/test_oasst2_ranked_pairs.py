"""OASST2 trees (tests/fixtures/real/oasst2_ranked_sample.jsonl, 15 real trees) -> pairs of ranked sibling
assistant replies, the conversation from the root as their prompt; deleted or failed messages never in a pair."""

from __future__ import annotations

import pytest

from tests.ingest.pairs_support import made, real_rows, text
from tunelake.schema import NoRecord, Reason, Rejected

TREES = real_rows("oasst2_ranked_sample.jsonl")


def test_three_ranked_siblings_give_three_pairs_lower_rank_chosen():
    pairs = made(TREES[2], "oasst2_tree")  # shared row 55: one prompt, replies ranked 0, 1, 2
    replies = TREES[2]["prompt"]["replies"]
    by_rank = {r["rank"]: r["text"] for r in replies}
    assert [(p["score_chosen"], p["score_rejected"]) for p in pairs] == [(0.0, -1.0), (0.0, -2.0), (-1.0, -2.0)]
    assert [(text(p["chosen"]), text(p["rejected"])) for p in pairs] == [
        (by_rank[0], by_rank[1]),
        (by_rank[0], by_rank[2]),
        (by_rank[1], by_rank[2]),
    ]
    pair = pairs[1]["meta"]["pair"]
    assert pair["kind"] == "ranked" and pair["tie"] is False and pair["margin"] == 2.0 and pair["candidates"] == 3
    assert pair["ratings"]["chosen"]["rank"] == 0 and pair["ratings"]["chosen"]["labels"]["quality"]["count"] == 3
    assert pair["ratings"]["rejected"]["message_id"] == next(r["message_id"] for r in replies if r["rank"] == 2)
    assert pairs[0]["prompt"][0]["role"] == "user" and text(pairs[0]["prompt"]) == TREES[2]["prompt"]["text"]
    assert pairs[0]["meta"]["message_tree_id"] == TREES[2]["message_tree_id"]  # the tree's fields stay in meta


def test_a_deeper_group_has_the_path_from_the_root_as_its_prompt():
    pairs = [p for p in made(TREES[3], "oasst2_tree") if not isinstance(p, Rejected)]  # shared row 79
    deep = pairs[1]
    assert [m["role"] for m in deep["prompt"]] == ["user", "assistant", "user"]
    root = TREES[3]["prompt"]
    assert [m["content"] for m in deep["prompt"]] == [
        root["text"],
        root["replies"][1]["text"],
        root["replies"][1]["replies"][0]["text"],
    ]


def test_deleted_messages_quarantine_their_pairs_and_those_under_them():
    out = made(TREES[6], "oasst2_tree")  # shared row 120: ranked replies deleted, and a group under a deleted one
    rejected = [(r.reason, r.field) for r in out if isinstance(r, Rejected)]
    assert rejected == [
        (Reason.deleted_message, "prompt.replies[2]"),
        (Reason.deleted_message, "prompt.replies[2]"),
        (Reason.deleted_message, "prompt.replies[0].replies[0].replies[0]"),
        (Reason.deleted_message, "prompt.replies[2]"),  # the group under prompt.replies[2]: its prompt is deleted
    ]
    assert len(out) == 5 and isinstance(out[0], dict)


def test_a_failed_review_is_its_own_reason():
    tree = TREES[2] | {"prompt": dict(TREES[2]["prompt"])}
    tree["prompt"]["replies"] = [dict(r) for r in tree["prompt"]["replies"]]
    tree["prompt"]["replies"][0]["review_result"] = False
    out = made(tree, "oasst2_tree")
    assert [r.reason for r in out if isinstance(r, Rejected)] == [Reason.failed_review] * 2


def test_equal_ranks_are_a_tie():
    tree = TREES[2] | {"prompt": dict(TREES[2]["prompt"])}
    tree["prompt"]["replies"] = [dict(r, rank=1) for r in tree["prompt"]["replies"]]
    pairs = made(tree, "oasst2_tree")
    assert all(p["meta"]["pair"]["tie"] and p["meta"]["pair"]["margin"] == 0.0 for p in pairs)
    assert text(pairs[0]["chosen"]) == tree["prompt"]["replies"][0]["text"]  # input order


def test_a_tree_without_ranked_siblings_gives_no_record_and_is_not_quarantined():
    with pytest.raises(NoRecord) as info:
        made(TREES[0], "oasst2_tree")
    assert info.value.reason == Reason.no_ranked_replies


def test_seven_ranked_siblings_give_twenty_one_pairs():
    assert len(made(TREES[12], "oasst2_tree")) == 6 + 21  # shared row 360: groups of 4 and 7 ranked replies


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"role": "bot"}, Reason.unknown_role, "prompt.role"),
        ({"text": None}, Reason.wrong_type, "prompt.text"),
        ({"replies": "x"}, Reason.wrong_type, "prompt.replies"),
    ],
)
def test_bad_shapes_are_named(change, reason, field):
    with pytest.raises(Rejected) as info:
        made(TREES[2] | {"prompt": TREES[2]["prompt"] | change}, "oasst2_tree")
    assert (info.value.reason, info.value.field) == (reason, field)


def test_a_rank_that_is_not_an_integer_is_named():
    tree = TREES[2] | {"prompt": dict(TREES[2]["prompt"])}
    tree["prompt"]["replies"] = [dict(r) for r in tree["prompt"]["replies"]]
    tree["prompt"]["replies"][1]["rank"] = "1"
    with pytest.raises(Rejected) as info:
        made(tree, "oasst2_tree")
    assert (info.value.reason, info.value.field) == (Reason.wrong_type, "prompt.replies[1].rank")
