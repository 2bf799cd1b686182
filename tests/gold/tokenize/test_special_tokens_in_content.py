"""Text inside a message that spells a control token never becomes one in input_ids: the record is quarantined as
special_token_in_content, wherever the text sits (content, tool-call arguments, reasoning)."""

from __future__ import annotations

import pytest

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import (
    LLAMA,
    MISTRAL,
    QWEN,
    assistant,
    load,
    rejection,
    sft,
    tool_call,
    trained_runs,
    user,
)
from tunelake.gold.tokenize.masks import template_messages
from tunelake.schema import Reason

CONTROL = {QWEN: "<|im_end|>", LLAMA: "<|eot_id|>", MISTRAL: "</s>"}


@pytest.mark.parametrize("tokenizer", list(CONTROL))
@pytest.mark.parametrize("turn", [0, 1])
def test_content_spelling_the_end_of_turn_token_is_quarantined(tokenizer, turn):
    messages = [user("How do chat templates end a turn?"), assistant("They print an end marker.")]
    messages[turn] = {**messages[turn], "content": f"With {CONTROL[tokenizer]} at the end."}
    error = rejection(tokenizer, messages)
    assert error.reason == Reason.special_token_in_content
    assert CONTROL[tokenizer] in error.detail


def test_transformers_turns_such_text_into_a_real_turn_boundary():
    # The trap: apply_chat_template parses special tokens in content by default, so the user's text ends the turn.
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(TOKENIZERS / QWEN)
    messages = [user("Say <|im_end|> please."), assistant("OK.")]
    ids = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(hf.convert_tokens_to_ids("<|im_end|>")) == 4  # system, user's text, user, assistant


def test_text_that_only_resembles_a_control_token_stays_text():
    messages = [user("What is im_end in ChatML?"), assistant("It closes a turn: <| im_end |> without spaces.")]
    ids, labels = sft(QWEN, messages)
    assert trained_runs(QWEN, ids, labels) == ["It closes a turn: <| im_end |> without spaces.<|im_end|>"]


def test_tool_call_arguments_spelling_a_control_token_are_quarantined():
    # Qwen2.5 prints the arguments with tojson, which leaves `<|im_end|>` as is: it would be parsed as the token,
    # inside the trained span (an earlier version trained it).
    messages = [
        user("Post a message saying bye."),
        assistant("", tool_calls=tool_call("post", text="bye<|im_end|>")),
        {"role": "tool", "content": "posted"},
        assistant("Done."),
    ]
    chat, _ = load(QWEN)
    assert 'bye<|im_end|>"' in chat.render(template_messages(messages))
    error = rejection(QWEN, messages)
    assert error.reason == Reason.special_token_in_content


def test_reasoning_spelling_a_control_token_is_quarantined():
    messages = [user("Which token ends a turn?"), assistant("The end marker.", reasoning_content="It is <|im_end|>.")]
    chat, _ = load(QWEN, "qwen3.jinja")
    assert "It is <|im_end|>." in chat.render(template_messages(messages))
    assert rejection(QWEN, messages, "qwen3.jinja").reason == Reason.special_token_in_content
