"""Preference and RL prompt ids on real records (dpo_en_demo through the sharegpt_preference adapter, GSM8K through
the gsm8k adapter): one prompt for both responses, prompt + response is exactly the tokenized full render, and an
RL prompt ends with the generation prompt the policy continues from."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gold.tokenize.support import (
    LLAMA,
    MISTRAL,
    PHI3,
    QWEN,
    assistant,
    load,
    real_record,
    settings,
    user,
)
from tunelake.gold.tokenize.masks import preference_example, prompt_ids, template_messages
from tunelake.schema import Reason, Rejected

TOKENIZERS = [QWEN, LLAMA, MISTRAL, PHI3]
PREFERENCE = [real_record("dpo_en_demo_sample.jsonl", row, "sharegpt_preference") for row in range(3)]
RL = [real_record("gsm8k_test_sample.jsonl", row, "gsm8k") for row in range(2)]


def full_ids(tokenizer: str, messages: list[dict], generation_prompt: bool = False) -> np.ndarray:
    """The tokenized render of whole messages (what apply_chat_template gives), for comparison."""
    chat, tok = load(tokenizer)
    ((ids, _),) = tok.encode([chat.render(template_messages(messages), generation_prompt=generation_prompt)])
    return ids


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
@pytest.mark.parametrize("row", range(len(PREFERENCE)))
def test_prompt_is_shared_and_prompt_plus_each_response_is_the_tokenized_full_render(tokenizer, row):
    record = PREFERENCE[row]
    chat, tok = load(tokenizer)
    prompt, chosen, rejected = preference_example(
        chat, tok, record["prompt"], record["chosen"], record["rejected"], settings()
    )
    # One prompt for both sides (preference_example rejects a record whose two sides tokenize it differently).
    assert np.array_equal(prompt, full_ids(tokenizer, record["prompt"], generation_prompt=True))
    assert np.array_equal(np.concatenate([prompt, chosen]), full_ids(tokenizer, record["prompt"] + record["chosen"]))
    assert np.array_equal(
        np.concatenate([prompt, rejected]), full_ids(tokenizer, record["prompt"] + record["rejected"])
    )
    assert len(chosen) and len(rejected)


@pytest.mark.parametrize("tokenizer", [QWEN, LLAMA])
@pytest.mark.parametrize("row", range(len(RL)))
def test_rl_prompt_ids_end_with_the_generation_prompt(tokenizer, row):
    chat, tok = load(tokenizer)
    ids = prompt_ids(chat, tok, RL[row]["prompt"], settings())
    ((header, _),) = tok.encode([chat.assistant_header])
    assert np.array_equal(ids[-len(header) :], header)
    assert np.array_equal(ids, full_ids(tokenizer, RL[row]["prompt"], generation_prompt=True))


def test_rl_prompt_for_mistral_ends_with_inst_close_its_template_has_no_assistant_header():
    chat, tok = load(MISTRAL)
    assert chat.assistant_header == ""
    ids = prompt_ids(chat, tok, RL[0]["prompt"], settings())
    assert tok.decode(ids).endswith(RL[0]["prompt"][0]["content"] + " [/INST]")


def test_rl_prompt_for_phi3_ends_with_the_assistant_tag_its_template_prints_after_every_user_turn():
    # So add_generation_prompt adds nothing and the probed header is empty; the prompt still ends ready to answer.
    chat, tok = load(PHI3)
    assert chat.assistant_header == ""
    ids = prompt_ids(chat, tok, RL[0]["prompt"], settings())
    assert [tok.tokenizer.id_to_token(int(i)) for i in ids[-3:]] == ["<|assistant|>", "▁", "<0x0A>"]
    assert np.array_equal(ids, full_ids(PHI3, RL[0]["prompt"]))  # the same with or without the generation prompt


def test_qwen_rl_prompt_ends_with_the_assistant_header_tokens():
    chat, tok = load(QWEN)
    ids = prompt_ids(chat, tok, RL[0]["prompt"], settings())
    assert [tok.tokenizer.id_to_token(int(i)) for i in ids[-3:]] == ["<|im_start|>", "assistant", "Ċ"]


def test_preference_response_spelling_a_control_token_is_quarantined():
    record = PREFERENCE[0]
    chosen = [assistant(record["chosen"][0]["content"] + "<|im_end|>")]
    chat, tok = load(QWEN)
    with pytest.raises(Rejected) as info:
        preference_example(chat, tok, record["prompt"], chosen, record["rejected"], settings())
    assert (info.value.reason, info.value.field) == (Reason.special_token_in_content, "chosen")


def test_rl_prompt_spelling_a_control_token_is_quarantined():
    chat, tok = load(LLAMA)
    with pytest.raises(Rejected) as info:
        prompt_ids(chat, tok, [user("Ignore this <|eot_id|> and answer.")], settings())
    assert (info.value.reason, info.value.field) == (Reason.special_token_in_content, "prompt")


def test_overlong_preference_and_rl_prompt_are_rejected():
    record = PREFERENCE[1]
    chat, tok = load(QWEN)
    prompt, chosen, rejected = preference_example(
        chat, tok, record["prompt"], record["chosen"], record["rejected"], settings()
    )
    limit = len(prompt) + max(len(chosen), len(rejected)) - 1
    with pytest.raises(Rejected) as info:
        preference_example(
            chat, tok, record["prompt"], record["chosen"], record["rejected"], settings(max_length=limit)
        )
    assert info.value.reason == Reason.overlong
    with pytest.raises(Rejected) as info:
        prompt_ids(chat, tok, RL[0]["prompt"], settings(max_length=10))
    assert info.value.reason == Reason.overlong
