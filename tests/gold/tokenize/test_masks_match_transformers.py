"""tunelake's labels against transformers' `return_assistant_tokens_mask`, on real conversations.

transformers can mark assistant tokens only where a template wraps the assistant output in `{% generation %}`; it
then masks every token that overlaps a wrapped span. TRL's training templates (tests/fixtures/chat_templates) add
those tags to the Qwen2.5, Llama 3 and Qwen3 templates. tunelake loads the same template (Jinja renders the tags as
nothing, so the render is byte-identical), and derives its labels from the render as it always does; the input_ids
must be identical and the trained positions must agree, or differ only where a test below says why:

- Llama 3: identical.
- Qwen2.5 / Qwen3: the tags also cover two "\\n" tokens per assistant turn that tunelake leaves untrained: the one
  ending the header `<|im_start|>assistant\\n` (the generation prompt supplies it at inference, the model never
  generates it) and the one after `<|im_end|>` (generation stops at `<|im_end|>`, the eos). Training either is
  harmless but teaches nothing; not training them is what the mask audit checks (content + end-of-turn marker).
- Qwen3's training template prints an empty `<think>\\n\\n</think>\\n\\n` in a turn without reasoning; the tags train
  it, tunelake does not (it is not the turn's content, reasoning or tool call).
- Templates that do not render a message's tool calls: transformers trains the empty turn that remains; tunelake
  quarantines the record as template_dropped_content.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import (
    LLAMA,
    QWEN,
    REAL_SFT,
    TRL_TEMPLATES,
    has_reasoning,
    has_tool_calls,
    load,
    qwen_extra_newlines,
    real_sft,
    rejection,
    sft,
    trained_runs,
)
from tunelake.gold.tokenize.masks import IGNORE, template_messages, template_tools
from tunelake.schema import Reason

transformers = pytest.importorskip("transformers")

# Plain chat: no tool calls, and no reasoning (which Qwen2.5's and Llama-3's templates have no place for: such a
# record is quarantined, see test_tool_calls_and_reasoning.py).
PLAIN = [name for name in REAL_SFT if not has_tool_calls(real_sft(name)) and not has_reasoning(real_sft(name))]
REASONING = [name for name in REAL_SFT if any(m["reasoning_content"] for m in real_sft(name)["messages"])]


@pytest.fixture(scope="module")
def hf():
    return {name: transformers.AutoTokenizer.from_pretrained(TOKENIZERS / name) for name in (QWEN, LLAMA)}


def transformers_mask(hf, tokenizer: str, template: str, record: dict) -> tuple[np.ndarray, np.ndarray]:
    out = hf[tokenizer].apply_chat_template(
        template_messages(record["messages"]),
        tools=template_tools(record["tools"]),
        chat_template=(TRL_TEMPLATES / template).read_text(),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return np.asarray(out["input_ids"]), np.asarray(out["assistant_masks"], dtype=bool)


def tunelake_mask(tokenizer: str, template: str, record: dict) -> tuple[np.ndarray, np.ndarray]:
    ids, labels = sft(tokenizer, record["messages"], template, record["tools"])
    trained = labels != IGNORE
    assert np.array_equal(labels[trained], ids[trained])
    return ids, trained


def both_masks(hf, tokenizer: str, template: str, record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, tunelake's trained positions, transformers'), after checking both tokenize alike."""
    ids, ours = tunelake_mask(tokenizer, template, record)
    hf_ids, theirs = transformers_mask(hf, tokenizer, template, record)
    assert np.array_equal(ids, hf_ids)
    return ids, ours, theirs


@pytest.mark.parametrize("template", ["qwen2_5_training.jinja", "llama3_training.jinja", "qwen3_training.jinja"])
def test_training_templates_have_generation_tags_and_render_in_tunelake_as_in_transformers(hf, template):
    tokenizer = LLAMA if template.startswith("llama") else QWEN
    chat, _ = load(tokenizer, template)
    assert "{%- generation %}" in chat.text
    messages = template_messages(real_sft("fastchat-4-turns")["messages"])
    assert chat.render(messages) == hf[tokenizer].apply_chat_template(
        messages, chat_template=chat.text, tokenize=False
    )


@pytest.mark.parametrize("name", [n for n in REAL_SFT if not has_reasoning(real_sft(n))])
def test_qwen25_labels_are_the_assistant_mask_but_for_the_newlines_after_header_and_im_end(hf, name):
    record = real_sft(name)
    ids, ours, theirs = both_masks(hf, QWEN, "qwen2_5_training.jinja", record)
    extra = qwen_extra_newlines(ids, ours, theirs)
    turns = sum(m["role"] == "assistant" for m in record["messages"])
    assert len(extra) == 2 * turns  # one "\n" ending each assistant header, one after each turn's <|im_end|>


@pytest.mark.parametrize("name", PLAIN)
def test_llama3_labels_equal_the_assistant_mask(hf, name):
    record = real_sft(name)
    ids, ours, theirs = both_masks(hf, LLAMA, "llama3_training.jinja", record)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["glaive-one-call", "reason-one-call"])
def test_llama3_training_template_drops_tool_calls_so_tunelake_quarantines_what_transformers_trains_empty(hf, name):
    # llama3_training.jinja renders only `content | trim` for an assistant message: a tool-call-only turn becomes an
    # empty turn. transformers trains it (the model would learn to answer a tool request with nothing).
    record = real_sft(name)
    ids, theirs = transformers_mask(hf, LLAMA, "llama3_training.jinja", record)
    call = next(i for i, m in enumerate(record["messages"]) if m["tool_calls"])  # the first assistant turn
    assert trained_runs(LLAMA, ids, np.where(theirs, ids, IGNORE))[0] == "<|eot_id|>"
    error = rejection(LLAMA, record["messages"], "llama3_training.jinja", record["tools"])
    assert (error.reason, error.field) == (Reason.template_dropped_content, f"messages[{call}].tool_calls")


@pytest.mark.parametrize("name", REASONING)
def test_qwen3_reasoning_is_trained_as_transformers_trains_it(hf, name):
    record = real_sft(name)
    ids, ours, theirs = both_masks(hf, QWEN, "qwen3_training.jinja", record)
    extra = qwen_extra_newlines(ids, ours, theirs)
    assert len(extra) == 1  # the "\n" after the last <|im_end|>; the header's "\n" is outside the tags here
    reasoning = next(m["reasoning_content"] for m in record["messages"] if m["reasoning_content"])
    (run,) = trained_runs(QWEN, ids, np.where(ours, ids, IGNORE))
    assert run.startswith("<think>\n" + reasoning + "\n</think>\n\n")


def test_qwen3_training_empty_think_block_of_a_turn_without_reasoning_is_trained_by_transformers_only(hf):
    record = real_sft("fastchat-2-turns")
    ids, ours, theirs = both_masks(hf, QWEN, "qwen3_training.jinja", record)
    only_theirs = trained_runs(QWEN, ids, np.where(theirs & ~ours, ids, IGNORE))
    assert only_theirs == ["<think>\n\n</think>\n\n", "\n"]


MODEL_TEMPLATE_FILES = sorted(p.name for p in (TOKENIZERS / "chat_templates").glob("*.jinja"))


@pytest.mark.parametrize("template", ["auto", *MODEL_TEMPLATE_FILES])
def test_render_is_apply_chat_template_byte_for_byte(hf, template):
    # tunelake calls transformers' compiled template directly (not its render wrapper); every real record, with
    # its tools and reasoning, must render exactly as apply_chat_template renders it, or masks would be computed on
    # text the model never sees. A template that raises on a record (a system role it refuses) must raise in both.
    path = template if template == "auto" else str(TOKENIZERS / "chat_templates" / template)
    chat, _ = load(QWEN, path)
    for name in REAL_SFT:
        record = real_sft(name)
        messages, tools = template_messages(record["messages"]), template_tools(record["tools"])
        try:
            expected = hf[QWEN].apply_chat_template(
                messages, tools=tools, chat_template=chat.text, tokenize=False, date_string="26 Jul 2024"
            )
        except Exception as e:  # noqa: BLE001 - compared below: tunelake must raise too
            with pytest.raises(type(e)):
                chat.render(messages, tools)
            continue
        if "strftime_now" in chat.text:  # transformers prints the real date; tunelake the recipe's template_date
            expected = expected.replace(date.today().strftime("%d %b %Y"), "26 Jul 2024")
        assert chat.render(messages, tools) == expected, name
