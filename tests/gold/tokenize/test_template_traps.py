"""The known traps of real chat templates (DESIGN.md, "Gold and training-ready output"), one test each.

Real templates and vocabularies from tests/fixtures/tokenizers (and TRL's Qwen3 template from
tests/fixtures/chat_templates); hand-written conversations named for the trap they spring.
"""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pytest

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import (
    LLAMA,
    MISTRAL,
    MODEL_TEMPLATES,
    PHI3,
    QWEN,
    assistant,
    load,
    real_sft,
    rejection,
    settings,
    sft,
    system,
    text_tokenizer,
    token_texts,
    tool_call,
    trained_runs,
    user,
)
from tunelake.gold.tokenize.masks import IGNORE, render_sft, sft_example, template_messages
from tunelake.gold.tokenize.template import load_template
from tunelake.schema import Reason, Rejected

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
CHAT = [
    user("What is the capital of France?"),
    assistant("Paris."),
    user("And of Italy?"),
    assistant("Rome."),
]


# --- templates without generation tags -----------------------------------------------------------------------------


@pytest.mark.parametrize(("tokenizer", "eot"), [(QWEN, "<|im_end|>"), (LLAMA, "<|eot_id|>")])
def test_own_template_without_generation_tags_trains_exactly_each_assistant_content_and_its_end_of_turn(
    tokenizer, eot
):
    chat, _ = load(tokenizer)
    assert not re.search(r"\{%-?\s*generation\s*-?%\}", chat.text)
    record = real_sft("fastchat-6-turns")
    ids, labels = sft(tokenizer, record["messages"])
    contents = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    assert trained_runs(tokenizer, ids, labels) == [c + eot for c in contents]


# --- injected system prompt and date -------------------------------------------------------------------------------


def test_qwen25_injects_a_default_system_prompt_that_is_rendered_but_never_trained():
    chat, _ = load(QWEN)
    assert QWEN_DEFAULT_SYSTEM in chat.render(template_messages(CHAT))
    ids, labels = sft(QWEN, CHAT)
    assert trained_runs(QWEN, ids, labels) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert not any("Qwen" in run for run in trained_runs(QWEN, ids, labels))


def test_llama31_renders_the_same_dated_system_header_on_any_day():
    # Llama-3.1's template prints "Today Date: 26 Jul 2024" unless given date_string: the same whatever the date.
    early, _ = load(LLAMA, today=date(2024, 7, 26))
    late, _ = load(LLAMA, today=date(2031, 1, 2))
    text = early.render(template_messages(CHAT))
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" in text
    assert late.render(template_messages(CHAT)) == text
    ids, labels = sft(LLAMA, CHAT)
    assert trained_runs(LLAMA, ids, labels) == ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]


def test_llama32_prints_the_recipe_template_date_not_today():
    # Llama-3.2's template calls strftime_now(); transformers' own prints the real date, so a render (and the ids)
    # would change with the day the build runs. tunelake's prints the recipe's template_date.
    path = str(MODEL_TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja")
    for day, printed in [(date(2024, 7, 26), "26 Jul 2024"), (date(2025, 1, 2), "02 Jan 2025")]:
        chat, tok = load(LLAMA, path, today=day)
        assert f"Today Date: {printed}\n" in chat.render(template_messages(CHAT))
        ids, labels = sft_example(chat, tok, CHAT, None, settings())
        assert trained_runs(LLAMA, ids, labels) == ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]


# --- BOS, end-of-turn, eos and pad ---------------------------------------------------------------------------------


def test_llama31_template_renders_bos_and_tunelake_never_adds_a_second_one():
    chat, tok = load(LLAMA)
    text = chat.render(template_messages(CHAT))
    assert text.startswith("<|begin_of_text|>")
    # The trap: tokenizing the render the default way adds the tokenizer's own BOS in front of the template's.
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(TOKENIZERS / LLAMA)
    assert hf(text)["input_ids"][:2] == [tok.bos_id, tok.bos_id]
    ids, _ = sft(LLAMA, CHAT)
    assert ids[0] == tok.bos_id and ids[1] != tok.bos_id


def test_template_that_renders_bos_twice_is_quarantined_as_double_bos(tmp_path):
    path = tmp_path / "bos_twice.jinja"
    path.write_text("{{- bos_token }}" + (MODEL_TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text())
    chat = load_template(TOKENIZERS / LLAMA, str(path), date(2024, 7, 26))
    with pytest.raises(Rejected) as info:
        sft_example(chat, text_tokenizer(LLAMA), CHAT, None, settings())
    assert info.value.reason == Reason.double_bos


def test_llama3_trains_eot_id_which_is_its_end_of_turn_and_never_end_of_text():
    chat, tok = load(LLAMA)
    assert chat.end_of_turn == "<|eot_id|>"
    eot_id, end_of_text = tok.tokenizer.token_to_id("<|eot_id|>"), tok.tokenizer.token_to_id("<|end_of_text|>")
    ids, labels = sft(LLAMA, CHAT)
    trained = labels != IGNORE
    assert end_of_text not in ids
    # Every trained turn ends on <|eot_id|>, and it carries its own id as label.
    ends = np.flatnonzero(trained & ~np.append(trained[1:], False))
    assert list(ids[ends]) == list(labels[ends]) == [eot_id, eot_id]
    # The system and user turns' <|eot_id|> are not trained.
    assert (ids == eot_id).sum() == 5 and (labels == eot_id).sum() == 2


def test_phi3_pad_equals_eos_yet_its_end_of_turn_token_carries_loss():
    chat, tok = load(PHI3)
    assert chat.special_tokens["pad_token"] == chat.special_tokens["eos_token"] == "<|endoftext|>"
    assert chat.end_of_turn == "<|end|>"  # neither eos nor pad: a collator masking pad ids cannot hit it
    ids, labels = sft(PHI3, CHAT)
    end = tok.tokenizer.token_to_id("<|end|>")
    assert trained_runs(PHI3, ids, labels) == ["Paris.<|end|>", "Rome.<|end|>"]
    assert list(labels[(ids == end) & (labels != IGNORE)]) == [end, end]


def test_mistral_eos_that_trainers_pad_with_still_carries_loss_at_each_turn_end():
    # Mistral v0.1 has no pad token; TRL then pads with eos (`</s>`), which is also the end of every assistant turn.
    # tunelake's labels come from character spans, not from token ids, so `</s>` stays trained.
    chat, tok = load(MISTRAL)
    assert "pad_token" not in chat.special_tokens and chat.end_of_turn == chat.special_tokens["eos_token"] == "</s>"
    eos = tok.tokenizer.token_to_id("</s>")
    ids, labels = sft(MISTRAL, CHAT)
    assert list(labels[ids == eos]) == [eos, eos]


# --- roles a template refuses or drops ------------------------------------------------------------------------------


def test_mistral_raises_on_a_system_role_and_the_record_is_quarantined_as_template_error():
    error = rejection(MISTRAL, [system("Answer briefly."), *CHAT])
    assert error.reason == Reason.template_error
    assert "Conversation roles must alternate" in error.detail


def test_mistral_raises_on_a_tool_turn_that_breaks_strict_alternation():
    record = real_sft("glaive-tools-no-call")
    sft(MISTRAL, record["messages"], tools=record["tools"])  # user/assistant only: accepted
    error = rejection(MISTRAL, real_sft("glaive-one-call")["messages"], tools=real_sft("glaive-one-call")["tools"])
    assert error.reason == Reason.template_error


def test_phi3_silently_drops_the_system_message_and_the_record_is_quarantined():
    record = real_sft("reason-text")  # a real record that opens with a system message
    error = rejection(PHI3, record["messages"], tools=record["tools"])
    assert (error.reason, error.field) == (Reason.template_dropped_content, "messages[0].content")


def test_llama31_json_encodes_a_tool_result_string_so_its_content_is_not_in_the_render():
    # Llama-3.1 prints a tool message with `content | tojson` when it is iterable, and a string is: the raw content
    # does not appear (it is quoted and escaped), so the record is quarantined rather than located by guesswork.
    record = real_sft("glaive-one-call")
    chat, _ = load(LLAMA)
    assert '"{\\"age\\": 31}"' in chat.render(template_messages(record["messages"]))
    error = rejection(LLAMA, record["messages"], tools=record["tools"])
    assert (error.reason, error.field) == (Reason.template_dropped_content, "messages[2].content")


def test_llama31_refuses_two_tool_calls_in_one_turn_as_template_error():
    record = real_sft("reason-two-calls")
    error = rejection(LLAMA, record["messages"], tools=record["tools"])
    assert error.reason == Reason.template_error
    assert "single tool-calls" in error.detail


# --- templates that render earlier turns differently ---------------------------------------------------------------


QWEN3 = "qwen3.jinja"
REASONED = [
    user("What is 2 + 2?"),
    assistant("4", reasoning_content="Two plus two is four."),
    user("And 3 + 3?"),
    assistant("6", reasoning_content="Three plus three is six."),
]


def test_qwen3_drops_past_reasoning_so_training_every_turn_is_not_prefix_stable():
    # Alone, turn 1 renders with its <think> block; followed by later turns, without it. Training it with the
    # reasoning would teach a context the model never sees at inference.
    error = rejection(QWEN, REASONED, QWEN3)
    assert (error.reason, error.field) == (Reason.template_not_prefix_stable, "messages[1]")


def test_qwen3_training_only_the_last_turn_keeps_its_reasoning_and_is_accepted():
    ids, labels = sft(QWEN, REASONED, QWEN3, train_on="last_assistant")
    assert trained_runs(QWEN, ids, labels) == ["<think>\nThree plus three is six.\n</think>\n\n6<|im_end|>"]


DEEPSEEK = str(MODEL_TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")


@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant"])
def test_deepseek_r1_template_strips_the_reasoning_of_every_turn_so_content_with_think_is_dropped(train_on):
    # The real DeepSeek-R1-Distill template replaces each assistant content by what follows `</think>`, in every
    # turn, the last included: the reasoning never reaches the render, so no turn with it can be trained as given.
    messages = [
        user("What is 2 + 2?"),
        assistant("<think>\nTwo plus two is four.\n</think>\n\n4"),
        user("And 3 + 3?"),
        assistant("<think>\nThree plus three is six.\n</think>\n\n6"),
    ]
    chat, _ = load(QWEN, DEEPSEEK)
    assert "Two plus two" not in chat.render(template_messages(messages))
    error = rejection(QWEN, messages, DEEPSEEK, train_on=train_on)
    assert (error.reason, error.field) == (Reason.template_dropped_content, "messages[1].content")


def test_deepseek_r1_template_with_a_vocabulary_that_lacks_its_control_tokens_cannot_be_masked():
    # Its markers are added tokens of DeepSeek's own tokenizer only; in Qwen2.5's vocabulary they are plain text and
    # BPE merges the end of `<｜end▁of▁sentence｜>` with the start of the next `<｜User｜>`: no token boundary at
    # the end of the turn, so the record is rejected rather than trained on half a token.
    chat, _ = load(QWEN, DEEPSEEK)
    assert chat.assistant_header == "<｜Assistant｜><think>\n" and chat.end_of_turn == "<｜end▁of▁sentence｜>"
    error = rejection(QWEN, CHAT, DEEPSEEK)
    assert error.reason == Reason.mask_overruns_turn
    assert "'><'" in error.detail


# --- tokens that merge across the header/content edge --------------------------------------------------------------


GLUED = (
    "{%- for m in messages %}{%- if m.role == 'user' %}{{ 'USER: ' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{ 'ASSISTANT:' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{%- endif %}"
)


def test_header_glued_to_content_merges_a_token_across_the_edge_and_is_mask_overruns_turn(tmp_path):
    # No separator between "ASSISTANT:" and the content: Qwen's BPE makes one "::" token of the header's colon and
    # the content's first one; training it would train a header character, not training it loses a content one.
    path = tmp_path / "glued.jinja"
    path.write_text(GLUED)
    chat = load_template(TOKENIZERS / QWEN, str(path), date(2024, 7, 26))
    tok = text_tokenizer(QWEN)
    messages = [user("What does :: do in C++?"), assistant(":: is the scope resolution operator.")]
    rendered = render_sft(chat, template_messages(messages), None, settings())
    ((_, offsets),) = tok.encode([rendered.text])
    edge = rendered.spans[0][0]
    assert any(s < edge < e for s, e in offsets)
    with pytest.raises(Rejected) as info:
        sft_example(chat, tok, messages, None, settings())
    assert info.value.reason == Reason.mask_overruns_turn
    # The same template and an answer that starts on a token boundary is fine.
    ids, labels = sft_example(chat, tok, [user("Hi"), assistant("Hello.")], None, settings())
    assert trained_runs(QWEN, ids, labels) == ["Hello.<|im_end|>"]
    assert token_texts(QWEN, ids[labels != IGNORE])[0] == "Hello"


# --- tool calls in the real templates -------------------------------------------------------------------------------


def test_tool_call_turn_with_content_is_trained_through_the_rendered_call():
    messages = [
        user("What's the weather in Paris?"),
        assistant("Let me check.", tool_calls=tool_call("get_weather", city="Paris")),
        {"role": "tool", "content": '{"temp": 21}'},
        assistant("It is 21 degrees."),
    ]
    ids, labels = sft(QWEN, messages)
    assert trained_runs(QWEN, ids, labels) == [
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>",
    ]
