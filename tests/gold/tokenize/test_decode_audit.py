"""Audit (b), decoding each span's trained tokens back to its text, applies only to tokenizers that round-trip."""

from __future__ import annotations

import pytest

from tests.gold.tokenize.support import LLAMA, MISTRAL, PHI3, QWEN, real_sft, sft, text_tokenizer, trained_runs


@pytest.mark.parametrize(("tokenizer", "round_trips"), [(LLAMA, True), (QWEN, True), (MISTRAL, False), (PHI3, True)])
def test_round_trips(tokenizer, round_trips):
    # Phi-3's folder is a GGUF conversion: it decodes plain text back exactly (its "▁" after special tokens is a
    # separate token, outside any trained span).
    assert text_tokenizer(tokenizer).round_trips is round_trips


def test_mistral_sentencepiece_decode_adds_a_leading_space_so_the_decode_audit_cannot_apply():
    tok = text_tokenizer(MISTRAL)
    ((ids, _),) = tok.encode(["Hello world."])
    assert tok.decode(ids) == " Hello world."


def test_mistral_records_are_still_masked_by_the_offset_audit():
    messages = real_sft("fastchat-4-turns")["messages"]
    ids, labels = sft(MISTRAL, messages)
    assert trained_runs(MISTRAL, ids, labels) == [m["content"] + "</s>" for m in messages if m["role"] == "assistant"]
