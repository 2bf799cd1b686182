"""Shared helpers for tests/gold/tokenize: real tokenizers, templates and records, each loaded once per process.

Tokenizers and their own templates: tests/fixtures/tokenizers (copies of ../shared/data/tokenizers, see SOURCE.md
there). TRL's generation-tagged templates: tests/fixtures/chat_templates (see SOURCES.md there). Real conversations:
tests/fixtures/real, turned into canonical records by tunelake's own adapters (as a build does).
"""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

from tests.conftest import FIXTURES, TOKENIZERS
from tunelake.gold.tokenize.masks import IGNORE, MaskSettings, sft_example
from tunelake.gold.tokenize.template import ChatTemplate, TextTokenizer, load_template
from tunelake.schema import RECORD, Regime, Rejected
from tunelake.silver.canonicalize import FilePlan, SourcePlan, canonical_record

QWEN, LLAMA, MISTRAL, PHI3 = (
    "qwen2.5-instruct",
    "llama-3.1-instruct",
    "mistral-7b-instruct-v0.1",
    "phi-3-mini-instruct-gguf",
)
TRL_TEMPLATES = FIXTURES / "chat_templates"
MODEL_TEMPLATES = TOKENIZERS / "chat_templates"  # real templates of other models, rendered with a real vocabulary
TEMPLATE_DATE = date(2024, 7, 26)  # the recipe's default template_date


def settings(**overrides) -> MaskSettings:
    """The recipe defaults (all assistant turns, end-of-turn trained, drop what is too long), with overrides."""
    return MaskSettings(
        **{"max_length": 4096, "train_on": "all_assistant", "train_on_eot": True, "overlong": "drop"} | overrides
    )


@cache
def text_tokenizer(tokenizer: str) -> TextTokenizer:
    return TextTokenizer.load(TOKENIZERS / tokenizer)


@cache
def load(tokenizer: str, template: str = "auto", today: date = TEMPLATE_DATE) -> tuple[ChatTemplate, TextTokenizer]:
    """A tokenizer folder's template ('auto', a file in tests/fixtures/chat_templates, or a path) and tokenizer."""
    if template != "auto" and not Path(template).is_absolute():
        template = str(TRL_TEMPLATES / template)
    return load_template(TOKENIZERS / tokenizer, template, today), text_tokenizer(tokenizer)


def sft(tokenizer: str, messages: list[dict], template: str = "auto", tools: str | None = None, **overrides):
    """(input_ids, labels) from tunelake for canonical messages (None fields allowed, tool_calls as JSON)."""
    chat, tok = load(tokenizer, template)
    return sft_example(chat, tok, messages, tools, settings(**overrides))


def rejection(tokenizer: str, messages: list[dict], template: str = "auto", tools: str | None = None, **overrides):
    with pytest.raises(Rejected) as info:
        sft(tokenizer, messages, template, tools, **overrides)
    return info.value


def trained_runs(tokenizer: str, ids: np.ndarray, labels: np.ndarray) -> list[str]:
    """The decoded text of each maximal run of trained tokens, in order."""
    tok = text_tokenizer(tokenizer)
    trained = labels != IGNORE
    edges = np.flatnonzero(np.diff(np.concatenate([[0], trained.astype(np.int8), [0]])))
    return [tok.decode(ids[s:e]) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def token_texts(tokenizer: str, ids) -> list[str]:
    return [text_tokenizer(tokenizer).tokenizer.id_to_token(int(i)) for i in ids]


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str, **extra) -> dict:
    return {"role": "assistant", "content": content, **extra}


def system(content: str) -> dict:
    return {"role": "system", "content": content}


def tool_call(name: str, **arguments) -> str:
    """A canonical tool_calls value: a JSON list of calls, as the adapters store it."""
    return orjson.dumps([{"type": "function", "function": {"name": name, "arguments": arguments}}]).decode()


def real_record(fixture: str, row: int, fmt: str, regime: Regime | None = None) -> dict:
    """The canonical record tunelake makes of row `row` (0-based) of tests/fixtures/real/<fixture>."""
    lines = [line for line in (FIXTURES / "real" / fixture).read_bytes().splitlines() if line.strip()]
    source = SourcePlan(0, fixture, regime, "apache-2.0", "human", {}, 1_000_000)
    return canonical_record(orjson.loads(lines[row]), FilePlan(source, 0, fmt))[0]


# Real multi-turn SFT conversations (tests/fixtures/real/SOURCES.md says what each row is): plain chat, tool calls
# with tool results, and reasoning with tool calls. Key: a name for test ids.
REAL_SFT = {
    "fastchat-4-turns": ("fastchat_sharegpt_sample.jsonl", 0, "sharegpt"),
    "fastchat-2-turns": ("fastchat_sharegpt_sample.jsonl", 1, "sharegpt"),
    "fastchat-6-turns": ("fastchat_sharegpt_sample.jsonl", 2, "sharegpt"),
    "glaive-one-call": ("glaive_toolcall_sample.jsonl", 0, "sharegpt"),
    "glaive-two-calls": ("glaive_toolcall_sample.jsonl", 1, "sharegpt"),
    "glaive-tools-no-call": ("glaive_toolcall_sample.jsonl", 2, "sharegpt"),
    "glaive-10-turns": ("glaive_toolcall_sample.jsonl", 3, "sharegpt"),
    "reason-one-call": ("reason_tool_use_sample.jsonl", 0, "openai"),
    "reason-two-calls": ("reason_tool_use_sample.jsonl", 1, "openai"),
    "reason-text": ("reason_tool_use_sample.jsonl", 2, "openai"),
}


@cache
def real_sft(name: str) -> dict:
    return real_record(*REAL_SFT[name])


def canonical_messages(messages: list[dict]) -> list[dict]:
    """Messages with every field of the canonical schema (None where a message has none)."""
    keys = RECORD.field("messages").type.value_type.names
    return [{k: m.get(k) for k in keys} for m in messages]


def sft_part(records: list[tuple[str, list[dict], str | None]]) -> pa.Table:
    """A gold SFT part, as tokenize_rows reads it, of (id, messages, tools) records."""
    schema = pa.schema([RECORD.field("id"), RECORD.field("messages"), RECORD.field("tools")])
    rows = [{"id": id_, "messages": canonical_messages(m), "tools": tools} for id_, m, tools in records]
    return pa.Table.from_pylist(rows, schema=schema)


def has_tool_calls(record: dict) -> bool:
    return any(m["tool_calls"] for m in record["messages"])


def has_reasoning(record: dict) -> bool:
    return any(m["reasoning_content"] for m in record["messages"])


def qwen_extra_newlines(ids: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Positions a generation-tagged Qwen template trains and tunelake does not, after checking that each one is a
    "\n" that ends the assistant header (`<|im_start|>assistant\n`) or follows a trained `<|im_end|>`."""
    vocab = text_tokenizer(QWEN).tokenizer
    newline, im_start, im_end, role = (
        vocab.token_to_id(t) for t in ("\u010a", "<|im_start|>", "<|im_end|>", "assistant")
    )
    assert not (ours & ~theirs).any(), "tunelake trains a token the generation tags leave out"
    extra = np.flatnonzero(theirs & ~ours)
    for p in extra:
        after_header = p >= 2 and (ids[p - 2], ids[p - 1]) == (im_start, role)
        after_eot = ids[p - 1] == im_end and ours[p - 1]
        assert ids[p] == newline and (after_header or after_eot), f"unexplained difference at token {p}"
    return extra
