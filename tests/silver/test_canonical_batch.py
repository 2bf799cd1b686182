"""Normalisation, validation and identity run vectorised over a chunk's records (canonical_batch): each record
must come out exactly as it would alone, ids must follow content and nothing else, and each rule must be Python's.

Real rows: tests/fixtures/real (see SOURCES.md there), adapted by tunelake's own adapters as a build does.
"""

from __future__ import annotations

import contextlib
import sys

import orjson
import pytest

from tests.conftest import FIXTURES
from tunelake.ingest.adapters.arrow import WHITESPACE
from tunelake.ingest.adapters.messages import message
from tunelake.schema import Reason, Rejected
from tunelake.silver.canonicalize import FilePlan, SourcePlan, adapt, adapted_batch, canonical_batch

REAL = {
    "alpaca_sample.jsonl": "alpaca",
    "hh_rlhf_harmless_sample.jsonl": "hh_rlhf",
    "gsm8k_test_sample.jsonl": "gsm8k",
    "glaive_toolcall_sample.jsonl": "sharegpt",
    "fastchat_sharegpt_sample.jsonl": "sharegpt",
    "reason_tool_use_sample.jsonl": "openai",
    "humaneval_sample.jsonl": "humaneval",
    "math500_sample.jsonl": "math",
    "dpo_en_demo_sample.jsonl": "sharegpt_preference",
}
MAX_CHARS = 1_000_000


def _plan(fmt: str) -> FilePlan:
    return FilePlan(SourcePlan(0, "src", None, "mit", "human", {}, MAX_CHARS), 0, fmt)


def _adapted() -> list[dict]:
    out = []
    for name, fmt in REAL.items():
        for line in (FIXTURES / "real" / name).read_bytes().splitlines():
            with contextlib.suppress(Rejected):
                out += adapt(orjson.loads(line), _plan(fmt))
    return out


def _sft(*turns: tuple[str, str | None], **fields) -> dict:
    msgs = [message(role, content) for role, content in turns]
    return {"regime": "sft", "source": "s", "origin": "human", "license": "mit", "messages": msgs, **fields}


def _alone(record: dict) -> tuple[dict | None, str | None, Rejected | None]:
    batch, changes, problems = canonical_batch(adapted_batch([record]), MAX_CHARS)
    return batch.to_pylist()[0], changes[0], problems.get(0)


def test_every_record_of_a_batch_is_what_it_is_alone():
    records = _adapted()
    records += [
        _sft(("user", "  Hi\u3000"), ("assistant", "Hello\x1c")),  # whitespace only Python's strip() knows
        _sft(("Human", "Cafe\u0301?"), ("GPT", "Oui.")),  # NFC and role aliases
        _sft(("user", "Hi"), ("wizard", "Hello")),  # unknown role
        _sft(("user", "Hi"), ("assistant", " ")),  # empty after stripping
        _sft(
            ("assistant", "Hi"),
        ),  # bad order
        _sft(
            ("user", "Hi"),
        ),  # no assistant
    ]
    batch, changes, problems = canonical_batch(adapted_batch(records), MAX_CHARS)
    rows = batch.to_pylist()
    assert len(rows) == len(records) > 50
    for i, record in enumerate(records):
        row, change, problem = _alone(record)
        assert changes[i] == change, i
        if problem is not None:
            assert (problems[i].reason, problems[i].field, problems[i].detail) == (
                problem.reason,
                problem.field,
                problem.detail,
            ), i
        else:
            assert i not in problems and rows[i] == row, i
    assert {p.reason for p in problems.values()} >= {
        Reason.unknown_role,
        Reason.empty_turn,
        Reason.bad_role_order,
        Reason.no_assistant_turn,
    }


def test_strip_removes_exactly_what_python_strip_removes():
    assert set(WHITESPACE) == {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    row, change, _ = _alone(_sft(("user", "\u3000\x1c Hi \x85"), ("assistant", "\u200bzero width stays\u200b")))
    assert [m["content"] for m in row["messages"]] == ["Hi", "\u200bzero width stays\u200b"]
    assert change == "strip"


def test_nfc_and_role_aliases_are_recorded_as_changes():
    row, change, _ = _alone(_sft((" Human", "Cafe\u0301"), ("GPT", "Oui")))
    assert [(m["role"], m["content"]) for m in row["messages"]] == [("user", "Caf\u00e9"), ("assistant", "Oui")]
    assert change == "nfc,role"


def test_a_code_answer_keeps_its_indentation_and_other_answers_are_stripped():
    prompt = [message("user", "def f():")]
    rl = {"regime": "rl", "source": "s", "origin": "human", "license": "mit", "prompt": prompt}
    code, _, _ = _alone({**rl, "answer": "    return 1\n", "verifier": "python_tests"})
    number, _, _ = _alone({**rl, "answer": " 42\n", "verifier": "numeric"})
    assert (code["answer"], number["answer"]) == ("    return 1\n", "42")


def _id(record: dict) -> str:
    return _alone(record)[0]["id"]


def test_ids_follow_content_and_nothing_else():
    base = _sft(("user", "ab"), ("assistant", "c"))
    assert _id(base) == _id({**base, "source": "other", "license": "apache-2.0", "meta": '{"x": 1}'})
    assert _id(base) == _id(_sft(("user", " ab "), ("assistant", "c")))  # normalised content
    # Content that concatenates to the same text must not collide.
    assert _id(base) != _id(_sft(("user", "a"), ("assistant", "bc")))
    assert _id(base) != _id(_sft(("user", "ab"), ("assistant", "c"), ("user", "d"), ("assistant", "e")))
    named = _sft(("user", "ab"), ("assistant", "c"))
    named["messages"][1]["name"] = "c"
    assert _id(base) != _id(named)
    assert _id(base) != _id({**base, "tools": "[]"})
    assert _id(base) != _id({**base, "regime": "preference"})


def test_prompt_ids_group_records_that_open_the_same_way_in_every_regime():
    system, user = message("system", "Be brief."), message("user", "What is 2+2?")
    sft = _sft(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"))
    longer = _sft(("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "Sure?"))
    longer["messages"].append(message("assistant", "Yes."))
    common = {"source": "s", "origin": "human", "license": "mit"}
    pref = {**common, "regime": "preference", "prompt": [system, user]}
    pref |= {"chosen": [message("assistant", "4")], "rejected": [message("assistant", "5")]}
    rl = {**common, "regime": "rl", "prompt": [system, user], "answer": "4", "verifier": "numeric"}
    ids = {_alone(r)[0]["prompt_id"] for r in (sft, longer, pref, rl)}
    assert len(ids) == 1
    no_system = _sft(("user", "What is 2+2?"), ("assistant", "4"))
    assert _alone(no_system)[0]["prompt_id"] not in ids


@pytest.mark.parametrize("size", [10, 11])
def test_too_long_counts_characters_of_every_text_field(size):
    record = _sft(("user", "abc"), ("assistant", "de"), tools="[1,2]")  # 3 + 2 + 5 = 10 characters
    record["messages"][1]["reasoning_content"] = "\u00e9"  # one character, two bytes
    _, _, problems = canonical_batch(adapted_batch([record]), size)
    expected = {0} if size < 11 else set()
    assert set(problems) == expected
    if problems:
        assert problems[0].reason == Reason.too_long and problems[0].detail.startswith("11 characters")
