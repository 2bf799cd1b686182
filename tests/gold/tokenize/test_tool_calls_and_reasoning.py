"""Tool calls and reasoning_content pass through to the template; what it renders of them for a trained turn is
trained, and a template that drops a turn's tool calls quarantines the record (it would train an empty turn)."""

from __future__ import annotations

import orjson

from tests.gold.tokenize.support import (
    PHI3,
    QWEN,
    assistant,
    load,
    real_sft,
    rejection,
    sft,
    tool_call,
    trained_runs,
    user,
)
from tunelake.gold.tokenize.masks import template_messages
from tunelake.schema import Reason


def test_template_messages_hand_tool_calls_as_objects_and_reasoning_as_is():
    record = real_sft("reason-one-call")
    message = template_messages(record["messages"])[2]
    assert message["tool_calls"] == orjson.loads(record["messages"][2]["tool_calls"])
    assert message["reasoning_content"] == record["messages"][2]["reasoning_content"]
    assert "name" not in message and "tool_call_id" not in message  # None fields are left out, not printed


def test_qwen25_renders_a_real_tool_call_and_its_json_is_inside_the_trained_span():
    record = real_sft("glaive-one-call")  # user, assistant tool call, tool result, assistant
    ids, labels = sft(QWEN, record["messages"], tools=record["tools"])
    assert trained_runs(QWEN, ids, labels) == [
        '<tool_call>\n{"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}\n</tool_call><|im_end|>',
        record["messages"][3]["content"] + "<|im_end|>",
    ]


def test_qwen25_trains_both_calls_of_a_real_turn_with_two_tool_calls():
    record = real_sft("reason-two-calls")
    ids, labels = sft(QWEN, record["messages"], tools=record["tools"])
    (run,) = trained_runs(QWEN, ids, labels)
    assert run.count("<tool_call>") == 2 and run.endswith("</tool_call><|im_end|>")
    assert '"uuid": "1234567890"' in run and '"uuid": "0987654321"' in run


def test_qwen3_renders_reasoning_content_before_the_call_and_it_is_trained():
    record = real_sft("reason-one-call")
    ids, labels = sft(QWEN, record["messages"], "qwen3.jinja", record["tools"])
    (run,) = trained_runs(QWEN, ids, labels)
    reasoning = record["messages"][2]["reasoning_content"]
    assert run.startswith("<think>\n" + reasoning + "\n</think>\n\n<tool_call>\n")
    assert run.endswith("</tool_call><|im_end|>")


def test_a_template_with_no_place_for_the_reasoning_of_a_trained_turn_quarantines_the_record():
    # Qwen2.5's template ignores reasoning_content: training the answer alone would silently drop the reasoning.
    record = real_sft("reason-text")
    chat, _ = load(QWEN)
    reasoning = record["messages"][2]["reasoning_content"]
    assert reasoning not in chat.render(template_messages(record["messages"]), orjson.loads(record["tools"]))
    error = rejection(QWEN, record["messages"], tools=record["tools"])
    assert (error.reason, error.field) == (Reason.template_dropped_content, "messages[2].reasoning_content")


def test_template_that_does_not_render_tool_calls_quarantines_the_record():
    # Phi-3's template prints only an assistant message's content.
    messages = [
        user("What's the weather in Paris?"),
        assistant("Let me check.", tool_calls=tool_call("get_weather", city="Paris")),
        user("Well?"),
        assistant("It is 21 degrees."),
    ]
    error = rejection(PHI3, messages)
    assert (error.reason, error.field) == (Reason.template_dropped_content, "messages[1].tool_calls")
    assert "get_weather" in error.detail
