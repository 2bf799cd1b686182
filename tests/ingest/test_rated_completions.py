"""UltraFeedback-style rated completions -> every pair of a row's rated responses, oriented by the aggregate.

The fixture (tests/fixtures/real/ultrafeedback_shape_sample.jsonl) is hand-written in UltraFeedback's real shape
(shared/data has no UltraFeedback); the edge cases are tiny rows named for the edge they cover.
"""

from __future__ import annotations

import pytest

from tests.ingest.pairs_support import made, real_rows, text
from tunelake.ingest.adapters.pairs import RatingsPolicy, combine
from tunelake.schema import Reason, Rejected

ROWS = real_rows("ultrafeedback_shape_sample.jsonl")


def _row(*ratings: object) -> dict:
    return {
        "prompt": "Name a prime.",
        "completions": [{"response": f"answer {i}", "model": f"m{i}", "ratings": r} for i, r in enumerate(ratings)],
    }


def test_every_pair_of_four_rated_responses_is_made_higher_mean_chosen():
    pairs = made(ROWS[0], "rated_completions")
    assert len(pairs) == 6  # C(4, 2)
    # Means of the annotations' Ratings: gpt-4 5.0, llama 4.5, alpaca 1.75, falcon 3.0 ("N/A" honesty skipped).
    got = [(p["meta"]["pair"]["models"]["chosen"], p["meta"]["pair"]["models"]["rejected"]) for p in pairs]
    assert got == [
        ("gpt-4", "llama-2-7b-chat"),
        ("gpt-4", "alpaca-7b"),
        ("gpt-4", "falcon-40b-instruct"),
        ("llama-2-7b-chat", "alpaca-7b"),
        ("llama-2-7b-chat", "falcon-40b-instruct"),
        ("falcon-40b-instruct", "alpaca-7b"),  # input order was alpaca first: oriented by the aggregate
    ]
    last = pairs[5]
    assert (last["score_chosen"], last["score_rejected"]) == (3.0, 1.75)
    assert text(last["chosen"]) == "Jupiter." and text(last["prompt"]).startswith("Name the largest planet")
    pair = last["meta"]["pair"]
    assert pair["kind"] == "rated" and pair["tie"] is False and pair["margin"] == 1.25
    assert pair["aggregate"] == "mean" and pair["candidates"] == 4
    assert pair["ratings"]["chosen"] == {
        "helpfulness": "2",
        "honesty": "N/A",
        "instruction_following": "2",
        "truthfulness": "5",
    }
    assert pair["winner"] is None and pair["chosen_position"] is None and pair["reviewers"] == []
    assert last["meta"]["source"] == "evol_instruct"  # the row's other fields stay in meta


def test_the_aggregate_changes_the_scores_and_so_the_orientation():
    # falcon: 2, 2, 5 (and N/A); alpaca: 1, 2, 3, 1. By min both are 1 or 2; by max falcon 5 > alpaca 3.
    by = {how: made(ROWS[0], "rated_completions", how)[5] for how in ("min", "max", "median")}
    assert (by["max"]["score_chosen"], by["max"]["score_rejected"]) == (5.0, 3.0)
    assert by["max"]["meta"]["pair"]["aggregate"] == "max"
    assert (by["min"]["score_chosen"], by["min"]["score_rejected"]) == (2.0, 1.0)
    assert (by["median"]["score_chosen"], by["median"]["score_rejected"]) == (2.0, 1.5)


def test_combine():
    assert combine([1.0, 2.0, 6.0], "mean") == 3.0 and combine([1.0, 2.0, 6.0, 7.0], "median") == 4.0
    assert combine([3.0], "median") == 3.0 and combine([1.0, 5.0], "min") == 1.0 and combine([1.0, 5.0], "max") == 5.0
    with pytest.raises(ValueError):
        RatingsPolicy(aggregate="mode")


def test_a_response_with_no_usable_rating_quarantines_its_pairs_and_the_others_go_on():
    # Row 2: starchat's annotations are all "N/A"; its two pairs are missing_rating, the third pair is made.
    out = made(ROWS[1], "rated_completions")
    assert [type(r) for r in out] == [Rejected, dict, Rejected]
    assert {(r.reason, r.field) for r in (out[0], out[2])} == {(Reason.missing_rating, "completions[1].annotations")}
    assert "'N/A'" in out[0].detail
    assert text(out[1]["chosen"]) == "Bonjour." and out[1]["meta"]["pair"]["candidates"] == 2


def test_all_ratings_tied_is_a_tie_in_input_order():
    (pair,) = made(ROWS[2], "rated_completions")
    assert pair["meta"]["pair"]["tie"] is True and pair["meta"]["pair"]["margin"] == 0.0
    assert text(pair["chosen"]) == "Hello!" and text(pair["rejected"]) == "Hi there!"


def test_equal_within_epsilon_is_a_tie_and_identical_text_is_a_tie():
    (close,) = made(_row({"a": 0.1 + 0.2}, {"a": 0.3}), "rated_completions")
    assert close["meta"]["pair"]["tie"] is True
    same = _row({"a": 1}, {"a": 5})
    same["completions"][1]["response"] = "  ANSWER 0 "
    (pair,) = made(same, "rated_completions")
    assert pair["meta"]["pair"]["tie"] is True and pair["score_chosen"] == 5.0  # still the higher side first


def test_a_row_with_one_rated_response_gives_no_pair():
    with pytest.raises(Rejected) as info:
        made(ROWS[3], "rated_completions")
    assert info.value.reason == Reason.no_pair and "1 of 1 responses" in info.value.detail
    with pytest.raises(Rejected) as info:
        made(_row({"a": 4}, {"a": "N/A"}, None), "rated_completions")
    assert info.value.reason == Reason.no_pair
    assert "completions[1].ratings, completions[2].ratings" in info.value.detail


def test_reviewer_nested_plain_ratings_and_a_prompt_field():
    (pair,) = made(ROWS[4], "rated_completions")
    assert (pair["score_chosen"], pair["score_rejected"]) == (4.75, 2.25)
    assert pair["meta"]["pair"]["ratings"]["chosen"] == {
        "alice": {"correctness": 5, "style": 4},
        "bob": {"correctness": 5, "style": 5},
    }


@pytest.mark.parametrize(
    "garbage",
    ["N/A", None, "", True, [], {}, {"a": None}, float("nan"), "inf", 10**400, [["x"]], {"a": {"Rating": "?"}}],
)
def test_garbage_ratings_are_missing_ratings_never_a_crash(garbage):
    out = made(_row({"a": 4}, {"a": 2}, garbage), "rated_completions")
    assert isinstance(out[0], dict) and out[0]["score_chosen"] == 4.0
    assert all(isinstance(r, Rejected) and r.reason == Reason.missing_rating for r in out[1:])


def test_ratings_written_as_text_are_read_as_numbers():
    (pair,) = made(_row({"a": " 2 "}, {"a": "4.5"}), "rated_completions")
    assert (pair["score_chosen"], pair["score_rejected"]) == (4.5, 2.0)
    assert pair["meta"]["pair"]["models"] == {"chosen": "m1", "rejected": "m0"}


@pytest.mark.parametrize(
    ("row", "reason", "field"),
    [
        ({"prompt": "x", "completions": "no"}, Reason.wrong_type, "completions"),
        ({"prompt": "x", "completions": [1, 2]}, Reason.wrong_type, "completions[0]"),
        ({"prompt": "x", "completions": [{"ratings": {"a": 1}}] * 2}, Reason.missing_field, "completions[0].response"),
        ({"completions": []}, Reason.missing_field, "prompt"),
        ({"prompt": 3, "completions": []}, Reason.wrong_type, "prompt"),
    ],
)
def test_bad_shapes_are_named(row, reason, field):
    with pytest.raises(Rejected) as info:
        made(row, "rated_completions")
    assert (info.value.reason, info.value.field) == (reason, field)
