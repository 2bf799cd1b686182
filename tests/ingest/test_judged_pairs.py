"""Pairwise judgments -> one pair per row, oriented by the verdict: the real alpaca_eval annotations (two judge
configs of the same pairs, tests/fixtures/real/alpaca_eval_*_sample.jsonl) and the generic judgment form."""

from __future__ import annotations

import pytest

from tests.ingest.pairs_support import made, real_rows, text
from tunelake.schema import NoRecord, Reason, Rejected

COT = real_rows("alpaca_eval_cot_sample.jsonl")
WEIGHTED = real_rows("alpaca_eval_weighted_sample.jsonl")


def _pair(row: dict, fmt: str) -> dict:
    (record,) = made(row, fmt)
    return record


IDENTICAL = (4, 8, 9)  # the fixture's three 1.5 verdicts: both outputs are the same text ("Test", ...)


def test_alpaca_eval_cot_judge_orientation_and_its_three_ties():
    # preference 1.0 x4, 1.5 (identical outputs "Test"), 2.0 x3, 1.5 x2 (identical too).
    for i in IDENTICAL:  # the same text twice: a tie whatever the verdict, and no pair in it
        with pytest.raises(NoRecord) as identical:
            _pair(COT[i], "alpaca_eval")
        assert identical.value.reason == Reason.tie
    pairs = [_pair(r, "alpaca_eval")["meta"]["pair"] for i, r in enumerate(COT) if i not in IDENTICAL]
    assert [p["chosen_position"] for p in pairs] == ["a", "a", "a", "a", "b", "b", "b"]
    assert [p["winner"] for p in pairs] == ["a"] * 4 + ["b"] * 3 and not any(p["tie"] for p in pairs)
    won_b = pairs[4]
    assert won_b["models"] == {"chosen": "alpaca-7b", "rejected": "gpt4_1106_preview"}
    assert won_b["reviewers"] == ["alpaca_eval_cot_gpt4_turbo_fn"] and won_b["probability"] == 1.0
    assert won_b["reason"] == COT[5]["raw_completion"]["concise_explanation"]


def test_alpaca_eval_b_win_puts_output_2_as_chosen():
    row = COT[5]
    record = _pair(row, "alpaca_eval")
    assert text(record["chosen"]) == row["output_2"] and text(record["rejected"]) == row["output_1"]
    assert text(record["prompt"]) == row["instruction"] and "score_chosen" not in record


def test_alpaca_eval_weighted_judge_gives_probabilities_of_the_chosen():
    kept = [i for i in range(len(WEIGHTED)) if i not in IDENTICAL]
    pairs = {i: _pair(WEIGHTED[i], "alpaca_eval")["meta"]["pair"] for i in kept}
    # Shared row 196: preference 1.637 -> output_2 wins with P = 0.637; row 215: 1.3416 -> output_1, P = 0.658.
    assert pairs[3]["chosen_position"] == "b"
    assert pairs[3]["probability"] == pytest.approx(WEIGHTED[3]["preference"] - 1)
    assert pairs[5]["chosen_position"] == "a"
    assert pairs[5]["probability"] == pytest.approx(2 - WEIGHTED[5]["preference"])
    assert all(p["probability"] >= 0.5 and not p["tie"] for p in pairs.values())
    # The two judges judge the same pairs and disagree on two of them (rows 196 and 215).
    cot = {i: _pair(COT[i], "alpaca_eval")["meta"]["pair"]["chosen_position"] for i in kept}
    assert [i for i in kept if cot[i] != pairs[i]["chosen_position"]] == [3, 5]


def test_alpaca_eval_integer_preference_is_a_verdict_without_probability():
    row = COT[0] | {"preference": 2}
    pair = _pair(row, "alpaca_eval")["meta"]["pair"]
    assert pair["chosen_position"] == "b" and pair["winner"] == "b" and pair["probability"] is None


@pytest.mark.parametrize("preference", [None, 0, 3, 2.5, 0.9, "1", True, float("nan"), [1]])
def test_alpaca_eval_invalid_verdict_is_quarantined(preference):
    with pytest.raises(Rejected) as info:
        made(COT[0] | {"preference": preference}, "alpaca_eval")
    assert (info.value.reason, info.value.field) == (Reason.invalid_verdict, "preference")


def _judgment(**fields: object) -> dict:
    return {"prompt": "Capital of France?", "response_a": "Paris.", "response_b": "Lyon."} | fields


@pytest.mark.parametrize(
    ("verdict", "position", "tie", "probability"),
    [
        ({"winner": "a"}, "a", False, None),
        ({"winner": "b"}, "b", False, None),
        ({"winner": "tie"}, "a", True, None),
        ({"probability": 0.8}, "b", False, 0.8),
        ({"probability": 0.25}, "a", False, 0.75),
        ({"probability": 0.5}, "a", True, 0.5),
        ({"winner": "b", "probability": 0.9}, "b", False, 0.9),
    ],
)
def test_generic_judgment_orientation(verdict, position, tie, probability):
    pair = _pair(_judgment(**verdict, reviewer="r1", rubric_version="v2", reason="why"), "judged_pair")
    facts = pair["meta"]["pair"]
    assert (facts["chosen_position"], facts["tie"]) == (position, tie)
    assert facts["probability"] == (None if probability is None else pytest.approx(probability))
    assert text(pair["chosen"]) == ("Lyon." if position == "b" else "Paris.")
    assert (facts["reviewers"], facts["rubric_version"], facts["reason"]) == (["r1"], "v2", "why")


def test_generic_judgment_models_follow_the_chosen_side():
    pair = _pair(_judgment(winner="b", model_a="ma", model_b="mb"), "judged_pair")["meta"]["pair"]
    assert pair["models"] == {"chosen": "mb", "rejected": "ma"}


def test_identical_responses_are_a_tie_whatever_the_verdict():
    with pytest.raises(NoRecord) as info:  # the same text but for case and spacing
        _pair(_judgment(response_b="  paris. ", winner="b"), "judged_pair")
    assert info.value.reason == Reason.tie and "verdict 'b'" in info.value.detail


@pytest.mark.parametrize(
    ("verdict", "field"),
    [
        ({}, "winner"),
        ({"winner": "c"}, "winner"),
        ({"winner": None, "probability": None}, "winner"),
        ({"probability": 1.5}, "probability"),
        ({"probability": "0.7"}, "probability"),
        ({"winner": "a", "probability": 0.9}, "probability"),
    ],
)
def test_generic_missing_or_invalid_verdict_is_quarantined(verdict, field):
    with pytest.raises(Rejected) as info:
        made(_judgment(**verdict), "judged_pair")
    assert (info.value.reason, info.value.field) == (Reason.invalid_verdict, field)
