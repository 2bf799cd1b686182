"""`train_on` (all_assistant | last_assistant) and `train_on_eot` on real conversations."""

from __future__ import annotations

import pytest

from tests.gold.tokenize.support import (
    LLAMA,
    MISTRAL,
    PHI3,
    QWEN,
    assistant,
    load,
    real_sft,
    sft,
    tool_call,
    trained_runs,
    user,
)
from tunelake.gold.tokenize.masks import IGNORE

EOT = {QWEN: "<|im_end|>", LLAMA: "<|eot_id|>", MISTRAL: "</s>", PHI3: "<|end|>"}


@pytest.mark.parametrize("tokenizer", list(EOT))
def test_last_assistant_trains_only_the_last_turn(tokenizer):
    messages = real_sft("fastchat-6-turns")["messages"]
    ids, labels = sft(tokenizer, messages, train_on="last_assistant")
    assert trained_runs(tokenizer, ids, labels) == [messages[-1]["content"] + EOT[tokenizer]]
    all_ids, all_labels = sft(tokenizer, messages)
    assert (ids == all_ids).all() and (all_labels != IGNORE).sum() > (labels != IGNORE).sum()


@pytest.mark.parametrize("tokenizer", list(EOT))
def test_train_on_eot_false_leaves_the_end_of_turn_marker_untrained(tokenizer):
    messages = real_sft("fastchat-4-turns")["messages"]
    ids, labels = sft(tokenizer, messages, train_on_eot=False)
    assert trained_runs(tokenizer, ids, labels) == [m["content"] for m in messages if m["role"] == "assistant"]
    _, tok = load(tokenizer)
    assert tok.tokenizer.token_to_id(EOT[tokenizer]) not in labels


def test_train_on_eot_false_still_trains_a_tool_call_the_template_renders_after_the_content():
    messages = [
        user("What's the weather in Paris?"),
        assistant("Let me check.", tool_calls=tool_call("get_weather", city="Paris")),
        {"role": "tool", "content": '{"temp": 21}'},
        assistant("It is 21 degrees."),
    ]
    ids, labels = sft(QWEN, messages, train_on_eot=False)
    assert trained_runs(QWEN, ids, labels) == [
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "It is 21 degrees.",
    ]
