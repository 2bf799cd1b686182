"""The tokenize stage audits a whole gold part at once (records laid end to end in one numpy pass): every record
must get exactly what it gets alone, and a failing record must be rejected alone, with its own reason."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import (
    LLAMA,
    MISTRAL,
    MODEL_TEMPLATES,
    QWEN,
    REAL_SFT,
    TEMPLATE_DATE,
    assistant,
    canonical_messages,
    load,
    real_sft,
    settings,
    sft_part,
    user,
)
from tunelake.gold.tokenize.masks import IGNORE, Rendered, render_sft, sft_example, sft_labels, template_messages
from tunelake.gold.tokenize.stage import TokenizerSpec, tokenize_rows
from tunelake.schema import Reason, Regime, Rejected

GLUED = (  # no separator between header and content: Qwen's BPE merges "::" across the edge
    "{%- for m in messages %}{%- if m.role == 'user' %}{{ 'USER: ' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{ 'ASSISTANT:' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{%- endif %}"
)


def _each_as_alone(spec: TokenizerSpec, records: list) -> tuple[dict, dict]:
    """Tokenizes the records as one part and asserts each got what it gets alone: the same ids, labels and
    attention mask, or the same rejection. Returns (tokenized rows, rejection reasons), by id."""
    table, rejects = tokenize_rows(sft_part(records), Regime.sft, spec, settings())
    tokenized, rejected = {row["id"]: row for row in table.to_pylist()}, {i: r.reason for i, r in rejects}
    assert len(tokenized) + len(rejected) == len(records)
    chat, tok = spec.load()
    for id_, messages, tools in records:
        try:
            ids, labels = sft_example(chat, tok, canonical_messages(messages), tools, settings())
        except Rejected as alone:
            assert rejected[id_] == alone.reason, id_
            continue
        assert tokenized[id_]["input_ids"] == ids.tolist(), id_
        assert tokenized[id_]["labels"] == labels.tolist(), id_
        assert tokenized[id_]["attention_mask"] == [1] * len(ids), id_
    return tokenized, rejected


@pytest.mark.parametrize("template", ["auto", "glued"])
def test_a_part_tokenizes_each_record_as_it_would_alone(tmp_path, template):
    if template == "glued":
        (tmp_path / "glued.jinja").write_text(GLUED)
        template = str(tmp_path / "glued.jinja")
    records = [(name, real_sft(name)["messages"], real_sft(name)["tools"]) for name in REAL_SFT]
    records += [
        ("merges", [user("What does :: do in C++?"), assistant(":: is the scope resolution operator.")], None),
        ("control", [user("Say <|im_end|> please"), assistant("No.")], None),
        ("plain", [user("Hi"), assistant("Hello.")], None),
    ]
    tokenized, rejected = _each_as_alone(TokenizerSpec(TOKENIZERS / QWEN, template, TEMPLATE_DATE), records)
    assert rejected["control"] == Reason.special_token_in_content
    if "glued" in template:
        assert rejected["merges"] == Reason.mask_overruns_turn and "plain" in tokenized


def _rendered_part(conversations: list[list[dict]]):
    chat, tok = load(QWEN)
    rendered = [render_sft(chat, template_messages(canonical_messages(m)), None, settings()) for m in conversations]
    return rendered, tok.encode_many([r.text for r in rendered]), tok


CHATS = [
    [user("What is 2 + 2?"), assistant("4.")],
    [user("Capital of France?"), assistant("Paris."), user("And Italy?"), assistant("Rome.")],
    [user("Hi"), assistant("Hello there.")],
]


def test_the_part_audit_trains_only_each_records_spans():
    rendered, enc, tok = _rendered_part(CHATS)
    labels, rejects = sft_labels(rendered, enc, tok)
    assert not rejects
    for r, chat in enumerate(CHATS):
        start, end = enc.bounds[r], enc.bounds[r + 1]
        trained = labels[start:end] != IGNORE
        text = tok.decode(enc.ids[start:end][trained])
        assert text == "".join(m["content"] + "<|im_end|>" for m in chat if m["role"] == "assistant")


def test_a_token_that_leaves_span_characters_untrained_fails_audit_a_for_its_record_only():
    # Offsets are the tokenizer's claim; a token whose offsets skip a character of a span (as a buggy or lossy
    # tokenizer could report) leaves that character untrained: audit (a) must name the record, and only it.
    rendered, enc, tok = _rendered_part(CHATS)
    start, _ = rendered[1].spans[0]
    j = enc.bounds[1] + int(np.searchsorted(enc.offsets[enc.bounds[1] : enc.bounds[2], 0], start))
    assert tok.decode(enc.ids[j : j + 1]) == "Paris"
    enc.offsets[j, 1] = enc.offsets[j, 0] + 1  # the token now claims to cover "P" only
    _, rejects = sft_labels(rendered, enc, tok)
    assert list(rejects) == [1]
    assert rejects[1].reason == Reason.mask_audit_failed and "trained characters" in rejects[1].detail


def test_trained_tokens_that_decode_to_other_text_fail_audit_b_for_their_record_only():
    rendered, enc, tok = _rendered_part(CHATS)
    s, _ = rendered[2].spans[0]
    j = enc.bounds[2] + int(np.searchsorted(enc.offsets[enc.bounds[2] : enc.bounds[3], 0], s))
    enc.ids[j] = tok.encode(["Hi"])[0][0][0]  # same offsets, other text
    _, rejects = sft_labels(rendered, enc, tok)
    assert list(rejects) == [2]
    assert rejects[2].reason == Reason.mask_audit_failed and "decoded" in rejects[2].detail


def test_a_template_that_renders_two_bos_rejects_each_record_of_the_part(tmp_path):
    path = tmp_path / "bos_twice.jinja"
    path.write_text("{{- bos_token }}" + (MODEL_TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text())
    spec = TokenizerSpec(TOKENIZERS / LLAMA, str(path), TEMPLATE_DATE)
    part = sft_part([("a", CHATS[0], None), ("b", CHATS[2], None)])
    table, rejects = tokenize_rows(part, Regime.sft, spec, settings())
    assert table.num_rows == 0
    assert [(i, r.reason) for i, r in rejects] == [("a", Reason.double_bos), ("b", Reason.double_bos)]


@pytest.mark.parametrize("tokenizer", [QWEN, LLAMA, MISTRAL])
def test_parts_of_every_tokenizer_audit_as_records_alone(tokenizer):
    # Llama has a BOS to check, Mistral does not round-trip (no decode audit): the part must still match.
    records = [(name, real_sft(name)["messages"], real_sft(name)["tools"]) for name in REAL_SFT]
    _each_as_alone(TokenizerSpec(TOKENIZERS / tokenizer, "auto", TEMPLATE_DATE), records)


def test_a_record_with_no_tokens_last_in_a_part_is_mask_empty_and_the_others_are_kept():
    chat, tok = load(LLAMA)
    rendered = [render_sft(chat, template_messages(canonical_messages(m)), None, settings()) for m in CHATS]
    rendered.append(Rendered("", [(0, 0)]))
    _, rejects = sft_labels(rendered, tok.encode_many([r.text for r in rendered]), tok)
    assert {r: e.reason for r, e in rejects.items()} == {3: Reason.mask_empty}
