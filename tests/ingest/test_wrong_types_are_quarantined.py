"""A value of the wrong type is quarantined as wrong_type naming its field, never dropped, never replaced, never
turned into other text: what reaches silver is what the row said. Real rows (tests/fixtures/real, see SOURCES.md
there) with one field changed, through canonical_record so that normalisation and validation run too.
"""

from __future__ import annotations

import json

import orjson
import pytest

from tests.ingest.test_adapters import plan, real_rows, record
from tunelake.schema import Reason, Rejected
from tunelake.silver.canonicalize import canonical_record


def rejection(row: dict, fmt: str) -> Rejected:
    with pytest.raises(Rejected) as info:
        canonical_record(row, plan(fmt))
    return info.value


ALPACA = real_rows("alpaca_sample.jsonl")[2]
SHAREGPT = real_rows("fastchat_sharegpt_sample.jsonl")[1]
SHAREGPT_PREFERENCE = real_rows("dpo_en_demo_sample.jsonl")[0]
SYSTEM_FORMATS = [("alpaca", ALPACA), ("sharegpt", SHAREGPT), ("sharegpt_preference", SHAREGPT_PREFERENCE)]


@pytest.mark.parametrize(("fmt", "row"), SYSTEM_FORMATS, ids=[f for f, _ in SYSTEM_FORMATS])
@pytest.mark.parametrize("system", [7, ["Be brief."], {"text": "Be brief."}, True])
def test_a_system_prompt_that_is_not_text_is_quarantined_not_dropped(fmt, row, system):
    error = rejection({**row, "system": system}, fmt)
    assert (error.reason, error.field) == (Reason.wrong_type, "system")
    assert error.detail == f"expected a string, got {type(system).__name__}"


@pytest.mark.parametrize(("fmt", "row"), SYSTEM_FORMATS, ids=[f for f, _ in SYSTEM_FORMATS])
@pytest.mark.parametrize("system", [None, ""])
def test_a_null_or_empty_system_prompt_means_none(fmt, row, system):
    rec = record({**row, "system": system}, fmt)
    assert (rec["messages"] or rec["prompt"])[0]["role"] == "user"
    assert "system" not in orjson.loads(rec["meta"] or "{}")


@pytest.mark.parametrize("field", ["license", "lang", "created_at"])
@pytest.mark.parametrize("value", [5, ["mit"], {"spdx": "mit"}, False])
def test_a_record_field_of_the_wrong_type_is_quarantined_not_replaced_by_the_source_value(field, value):
    error = rejection({**ALPACA, field: value}, "alpaca")
    assert (error.reason, error.field) == (Reason.wrong_type, field)


def test_a_null_record_license_falls_back_to_the_source_license():
    assert record({**ALPACA, "license": None}, "alpaca", license="apache-2.0")["license"] == "apache-2.0"


@pytest.mark.parametrize(
    ("value", "reason"),
    [([["list"]], Reason.wrong_type), ([7], Reason.wrong_type), ([{"text": "x"}], Reason.wrong_type)],
    ids=["list_of_strings", "number", "object"],
)
def test_a_sharegpt_value_that_is_not_text_is_quarantined_not_read_as_parts(value, reason):
    turns = [dict(t) for t in SHAREGPT["conversations"]]
    turns[1]["value"] = value[0]
    error = rejection({**SHAREGPT, "conversations": turns}, "sharegpt")
    assert (error.reason, error.field) == (reason, "conversations[1].value")


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_a_sharegpt_preference_response_value_that_is_not_text_is_quarantined(side):
    row = {**SHAREGPT_PREFERENCE, side: {"from": "gpt", "value": ["42"]}}
    error = rejection(row, "sharegpt_preference")
    assert (error.reason, error.field) == (Reason.wrong_type, f"{side}.value")


# --- Tool-call arguments: OpenAI's JSON text of an object, or the object itself (Glaive, LLaMA-Factory) ----------


def _openai_call(arguments: object) -> dict:
    call = {"type": "function", "function": {"name": "get_price", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": "What does Apple cost?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": '{"price": 150.75}'},
            {"role": "assistant", "content": "150.75 dollars."},
        ]
    }


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ("{not json", Reason.invalid_json),
        ("12", Reason.wrong_type),  # JSON text, but of a number
        ('["Apple"]', Reason.wrong_type),
        (12, Reason.wrong_type),
        (["Apple"], Reason.wrong_type),
        (True, Reason.wrong_type),
    ],
)
def test_tool_call_arguments_that_are_not_an_object_are_quarantined(arguments, reason):
    error = rejection(_openai_call(arguments), "openai")
    assert (error.reason, error.field) == (reason, "messages[1].tool_calls[0].function.arguments")


@pytest.mark.parametrize("arguments", ['{"company": "Apple"}', {"company": "Apple"}])
def test_tool_call_arguments_as_json_text_or_as_an_object_are_kept_as_given(arguments):
    calls = orjson.loads(record(_openai_call(arguments), "openai")["messages"][1]["tool_calls"])
    assert calls[0]["function"]["arguments"] == arguments


def test_a_glaive_function_call_with_arguments_that_are_not_an_object_is_quarantined():
    row = real_rows("glaive_toolcall_sample.jsonl")[0]
    row["conversations"][1]["value"] = '{"name": "calculate_age", "arguments": "1990-05-15"}'
    error = rejection(row, "sharegpt")
    assert (error.reason, error.field) == (Reason.invalid_json, "conversations[1].value[0].arguments")
    row["conversations"][1]["value"] = '{"name": "calculate_age", "arguments": "\\"1990-05-15\\""}'
    error = rejection(row, "sharegpt")
    assert (error.reason, error.field) == (Reason.wrong_type, "conversations[1].value[0].arguments")
    assert error.detail == "expected an object or JSON text of one, got JSON text of str"


# --- RL gold answers ------------------------------------------------------------------------------------------------

QUESTION = real_rows("gsm8k_test_sample.jsonl")[0]["question"]


@pytest.mark.parametrize("answer", [[18], {"value": 18}, True, False])
def test_an_rl_answer_that_is_a_list_an_object_or_a_boolean_is_quarantined(answer):
    error = rejection({"prompt": QUESTION, "answer": answer, "verifier": "numeric"}, "rl")
    assert (error.reason, error.field) == (Reason.wrong_type, "answer")
    assert error.detail == f"expected a string or a number, got {type(answer).__name__}"


# --- Shapes no check foresaw before: each is quarantined naming its field (none reaches silver changed) -----------


@pytest.mark.parametrize(
    ("fmt", "row", "field"),
    [
        ("alpaca", {**ALPACA, "history": 5}, "history"),
        ("alpaca", {**ALPACA, "history": "earlier turns"}, "history"),
        ("alpaca", {**ALPACA, "input": 0}, "input"),  # was read as no input
        ("alpaca", {**ALPACA, "input": []}, "input"),
        ("mbpp", {**real_rows("mbpp_sanitized_sample.jsonl")[1], "test_imports": "import math"}, "test_imports"),
        ("mbpp", {**real_rows("mbpp_sanitized_sample.jsonl")[1], "test_imports": [1]}, "test_imports"),
        ("mbpp", {**real_rows("mbpp_sample.jsonl")[2], "test_setup_code": 5}, "test_setup_code"),
    ],
)
def test_an_odd_shape_is_quarantined_as_wrong_type_naming_its_field(fmt, row, field):
    error = rejection(row, fmt)
    assert (error.reason, error.field) == (Reason.wrong_type, field)


@pytest.mark.parametrize("level", ["Level ²", 10**30, 7])
def test_a_math_level_outside_one_to_five_gives_no_difficulty_and_stays_in_meta(level):
    row = {**real_rows("math_test_sample.jsonl")[0], "level": level}
    rec = record(row, "math")
    assert rec["difficulty"] is None and json.loads(rec["meta"])["level"] == level  # json: exact integers
