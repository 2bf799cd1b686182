"""Columnar adapters (a whole chunk adapted with Arrow kernels) against their per-row adapters: a chunk must give
the same bronze, candidates, quarantine and ledger either way, row for row, on real rows and on rows made to hit
every edge the columnar form has to leave to the per-row one.

Real rows: examples/data (Alpaca, GSM8K train, HH-RLHF harmless test: see examples/data/SOURCES.md) and
tests/fixtures/real (see SOURCES.md there).
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import orjson
import pytest

from tests.conftest import EXAMPLES, FIXTURES
from tunelake.ingest import adapters
from tunelake.ingest.readers import RawChunk
from tunelake.schema import Regime
from tunelake.silver import canonicalize as stage
from tunelake.silver.canonicalize import FilePlan, SourcePlan, canonicalize


def _rows(path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if data.lstrip()[:1] == b"[":
        return orjson.loads(data)
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


HUMAN, BOT = "\n\nHuman: ", "\n\nAssistant: "
ALPACA = [
    *_rows(EXAMPLES / "data/alpaca_300.json.gz"),
    *_rows(FIXTURES / "real/alpaca_sample.jsonl"),
    {"instruction": "Add a comma.", "input": "", "output": "Done."},
    {"instruction": "Add a comma.", "input": " \u3000 ", "output": "Done."},  # blank: no context added
    {"instruction": "Add a comma.", "input": None, "output": "Done."},
    {"instruction": "Add a comma.", "output": "Done."},
    {"instruction": '  Cafe\u0301 \\ "quoted"\t', "input": "ctx\x1c", "output": "\u200bOui\r\n"},
    {"instruction": "bell \x07 inside", "input": "x", "output": "y"},  # a control character
    {"instruction": "", "input": "only context", "output": "y"},  # empty instruction: not a gold row
    {"instruction": "x", "input": "y", "output": "   "},  # empty output
    {"instruction": None, "input": "y", "output": "z"},  # a null required field
    {"instruction": "x", "output": "x"},  # an exact duplicate below
    {"instruction": "x", "output": "x"},
]
GSM8K = [
    *_rows(EXAMPLES / "data/gsm8k_train_300.jsonl.gz"),
    *_rows(FIXTURES / "real/gsm8k_test_sample.jsonl"),
    {"question": "How many?", "answer": "Two and two.\n#### 1,000"},
    {"question": "How many?", "answer": "x #### 3 #### 4\n"},  # the last mark counts
    {"question": "How many?", "answer": "no mark at all"},
    {"question": "How many?", "answer": "#### \u3000 "},  # nothing after the mark
    {"question": 'Quote "me" \\ back', "answer": 'Because\t"so"\n#### 5'},  # escapes in meta
    {"question": "Control", "answer": "bell \x07\n#### 5"},  # a control character in meta
    {"question": "   ", "answer": "#### 5"},  # an empty prompt
    {"question": "\u00e9t\u00e9?", "answer": "#### 6"},
    {"question": "How many?", "answer": "so\n#### 1,2,3.4.5"},  # not a number: no gold
    {"question": "How many?", "answer": "so\n#### 1,234.5"},
    {"question": "How many?", "answer": "so\n#### \u0661\u0662"},  # Arabic-Indic digits: not the verifier's
]
HH = [
    *_rows(EXAMPLES / "data/hh_rlhf_harmless_test_300.jsonl.gz"),
    *_rows(FIXTURES / "real/hh_rlhf_harmless_sample.jsonl"),
    {"chosen": f"{HUMAN}Hi{BOT}Hello", "rejected": f"{HUMAN}Hi{BOT}Go away"},
    {"chosen": "\n\nHuman:no space\n\nAssistant:ok", "rejected": "\n\nHuman:no space\n\nAssistant:no"},
    {"chosen": f"{HUMAN}Hi{BOT}A{BOT}B", "rejected": f"{HUMAN}Hi{BOT}A{BOT}C"},  # back-to-back assistant turns
    {"chosen": f"{HUMAN}Hi{BOT}Same", "rejected": f"{HUMAN}Hi{BOT}Same"},  # chosen equals rejected
    {"chosen": f"{HUMAN}Hi{BOT}Yes{HUMAN}More?{BOT}No", "rejected": f"{HUMAN}Hi{BOT}Nope"},  # lengths differ
    {"chosen": f"junk{HUMAN}Hi{BOT}Yes", "rejected": f"{HUMAN}Hi{BOT}No"},  # text before the first turn
    {"chosen": f"{HUMAN}Hi\x00there{BOT}Yes", "rejected": f"{HUMAN}Hi\x00there{BOT}No"},  # a NUL in the text
    {"chosen": f"{HUMAN}\x01Hi{BOT}\x02Yes", "rejected": f"{HUMAN}\x01Hi{BOT}No"},  # the columnar form's role codes
    {"chosen": f"{HUMAN}Caf\u00e9{BOT}Oui ", "rejected": f"{HUMAN}Cafe\u0301{BOT}Non"},  # NFC after splitting
    {"chosen": f"{HUMAN}Hi", "rejected": f"{HUMAN}Hi"},  # no response at all
    {"chosen": "\n\nHuman:  two spaces\n\nAssistant:", "rejected": "\n\nHuman:  two spaces\n\nAssistant: b"},
    {"chosen": "\n\n\n\nHuman: a\n\nAssistant: Human: b", "rejected": "\n\nHuman: a\n\nAssistant:\n\nHuman:"},
    {"chosen": "", "rejected": ""},
]
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
OPENAI = [  # real conversations (FastChat's, and KTO demo messages without their label) as OpenAI messages
    *(
        {"id": c["id"], "messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in c["conversations"]]}
        for c in _rows(EXAMPLES / "data/fastchat_dummy_conversation.json.gz")
    ),
    *(
        {"id": f"kto-{i}", "messages": r["messages"]}
        for i, r in enumerate(_rows(FIXTURES / "real/kto_en_demo_sample.jsonl"))
    ),
    {"id": "a", "messages": [{"role": "Human", "content": " Hi "}, {"role": "GPT", "content": "Hello\u3000"}]},
    {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    {"id": "c", "messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
    {"id": "d", "messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # content absent
    {"id": "e", "messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]},  # a missing role
    {"id": "f", "messages": []},
    {"id": "g", "messages": None},
    {"messages": [{"role": "user", "content": "no id"}, {"role": "assistant", "content": "ok"}]},  # id absent
]
SHAREGPT = [
    *_rows(EXAMPLES / "data/fastchat_dummy_conversation.json.gz"),
    {"id": "a", "conversations": [{"from": "HUMAN", "value": " Hi "}, {"from": "gpt", "value": "Hello"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"}]},
    {"id": "c", "conversations": [{"from": "human", "value": "x"}, {"from": "observation", "value": "{}"}]},
    {"id": "d", "conversations": [{"value": "no speaker"}, {"from": "gpt", "value": "x"}]},
    {"id": "e", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]},
    {"id": "f", "conversations": []},
]
CASES = [("alpaca", ALPACA), ("gsm8k", GSM8K), ("hh_rlhf", HH), ("openai", OPENAI), ("sharegpt", SHAREGPT)]


def _chunk(rows: list[dict], first_row: int = 1) -> RawChunk:
    return RawChunk("f.jsonl", first_row, b"".join(orjson.dumps(r) + b"\n" for r in rows))


def _plan(fmt: str, meta: dict | None = None) -> FilePlan:
    return FilePlan(SourcePlan(3, "src", None, "mit", "human", meta or {}, 1_000_000), 2, fmt)


def _both_ways(monkeypatch, chunk: RawChunk, plan: FilePlan):
    columnar = canonicalize(chunk, plan, "run")
    with monkeypatch.context() as m:
        adapter = adapters.ADAPTERS[plan.adapter]
        m.setitem(adapters.ADAPTERS, plan.adapter, dataclasses.replace(adapter, columnar=None))
        m.setitem(stage.ADAPTERS, plan.adapter, dataclasses.replace(adapter, columnar=None))
        by_row = canonicalize(chunk, plan, "run")
    return columnar, by_row


def _assert_same(columnar, by_row) -> None:
    for table in ("bronze", "candidates", "quarantine", "ledger"):
        assert getattr(columnar, table).to_pylist() == getattr(by_row, table).to_pylist(), table
    assert columnar.counts == by_row.counts


@pytest.mark.parametrize(("fmt", "rows"), CASES, ids=[c[0] for c in CASES])
def test_columnar_and_per_row_adapters_give_the_same_chunk(monkeypatch, fmt, rows):
    chunk, plan = _chunk(rows), _plan(fmt)
    whole = stage._columnar(chunk.data, plan, len(rows))
    assert whole is not None and whole[1].sum() > len(rows) * 0.8  # the columnar form did the work
    assert not whole[1].all()  # and left the odd rows to the per-row adapter
    columnar, by_row = _both_ways(monkeypatch, chunk, plan)
    _assert_same(columnar, by_row)
    assert columnar.counts["quarantined"] > 0 and columnar.counts["candidates"] > len(rows) * 0.8


@pytest.mark.parametrize("fmt", ["gsm8k", "alpaca"])  # meta from the adapter, and none but the source's
def test_source_meta_is_merged_as_the_per_row_adapter_merges_it(monkeypatch, fmt):
    rows = dict(CASES)[fmt]
    for meta in ({"collection": "main", "n": 1}, {"solution": "clash: the adapter's value wins", "z": [1]}):
        _assert_same(*_both_ways(monkeypatch, _chunk(rows), _plan(fmt, meta)))


def test_extra_keys_go_to_meta_as_the_per_row_adapter_puts_them(monkeypatch):
    rows = [
        {**r, "uid": f"u{i}", "rank": i, "ok": i % 2 == 0, "note": 'say "hi"\n'} for i, r in enumerate(ALPACA[:40])
    ]
    rows[5] = {**rows[5], "rank": None}  # null or absent? only the per-row adapter can tell: that row goes row by row
    del rows[6]["uid"]
    rows[7] = {"rank": 1, **rows[7]}  # keys in another order: meta keys are sorted either way
    chunk, plan = _chunk(rows), _plan("alpaca", {"collection": "demo", "rank": "overridden by the row"})
    handled = stage._columnar(chunk.data, plan, len(rows))[1]
    assert handled.sum() == 38 and not handled[5] and not handled[6]
    columnar, by_row = _both_ways(monkeypatch, chunk, plan)
    _assert_same(columnar, by_row)
    meta = orjson.loads(columnar.candidates["meta"][0].as_py())
    assert meta == {"collection": "demo", "note": 'say "hi"\n', "ok": True, "rank": 0, "uid": "u0"}


@pytest.mark.parametrize(
    "edit",
    [
        lambda rows: [*rows[:3], {**rows[3], "license": "apache-2.0"}, *rows[4:]],  # an extra key: meta
        lambda rows: [*rows[:3], {**rows[3], "instruction": 7}, *rows[4:]],  # a number where text belongs
        lambda rows: [*rows[:3], {**rows[3], "system": "Be brief."}, *rows[4:]],  # a key the per-row form maps
        lambda rows: [*rows[:3], {**rows[3], "score": 0.5}, *rows[4:]],  # a float: its JSON spelling is orjson's
        lambda rows: [*rows[:3], {**rows[3], "extra": {"a": 1}}, *rows[4:]],  # an object
    ],
    ids=["license", "wrong_type", "mapped_key", "float", "object"],
)
def test_a_chunk_the_columnar_form_cannot_read_goes_row_by_row(monkeypatch, edit):
    rows = edit(ALPACA[:20])
    chunk, plan = _chunk(rows), _plan("alpaca")
    assert stage._columnar(chunk.data, plan, len(rows)) is None
    _assert_same(*_both_ways(monkeypatch, chunk, plan))


def test_blank_lines_and_crlf_keep_their_row_numbers(monkeypatch):
    lines = [orjson.dumps(r) for r in ALPACA[:6]]
    data = b"\r\n".join(lines[:3]) + b"\r\n\r\n" + b"\n".join(lines[3:]) + b"\n"
    chunk = RawChunk("f.jsonl", 10, data)
    columnar, by_row = _both_ways(monkeypatch, chunk, _plan("alpaca"))
    _assert_same(columnar, by_row)
    assert columnar.bronze["row"].to_pylist() == [10, 11, 12, 14, 15, 16]
    crlf_only = RawChunk("f.jsonl", 1, b"\r\n".join(lines) + b"\r\n")
    assert stage._columnar(crlf_only.data, _plan("alpaca"), 6) is not None
    _assert_same(*_both_ways(monkeypatch, crlf_only, _plan("alpaca")))


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": "x", "name": "bot"},  # a message field the plain form does not read
        {"role": "assistant", "content": [{"type": "text", "text": "x"}]},  # typed parts
    ],
)
def test_openai_chunks_with_more_than_plain_messages_go_row_by_row(monkeypatch, message):
    rows = [*OPENAI[:5], {"messages": [{"role": "user", "content": "Hi"}, message]}]
    chunk, plan = _chunk(rows), _plan("openai")
    assert stage._columnar(chunk.data, plan, len(rows)) is None
    _assert_same(*_both_ways(monkeypatch, chunk, plan))


def test_sharegpt_with_a_system_or_tools_goes_row_by_row(monkeypatch):
    rows = _rows(EXAMPLES / "data/glaive_toolcall_100.json.gz")  # system prompts, tool schemas, function calls
    chunk, plan = _chunk(rows), _plan("sharegpt")
    assert stage._columnar(chunk.data, plan, len(rows)) is None
    _assert_same(*_both_ways(monkeypatch, chunk, plan))


@pytest.mark.parametrize(
    "data",
    [
        b'null\n{"instruction": "x", "output": "y"}\n',  # pyarrow 26 crashes the process on a leading null
        b'{"instruction": "caf\xe9", "output": "y"}\n{"instruction": "x", "output": "y"}\n',  # Latin-1, not UTF-8
        b'{"instruction": "x", "output": "y", "k": "\xc3"}\n',  # invalid UTF-8 in an extra key's value
        b'{"instruction": "x", "output": "y", "k\xff": "v"}\n',  # ... and in its name
    ],
    ids=["leading_null", "latin1_text", "latin1_meta_value", "latin1_meta_key"],
)
def test_rows_pyarrow_json_would_misread_go_row_by_row(monkeypatch, data):
    chunk, plan = RawChunk("f.jsonl", 1, data), _plan("alpaca")
    assert stage._columnar(chunk.data, plan, data.count(b"\n")) is None
    columnar, by_row = _both_ways(monkeypatch, chunk, plan)
    _assert_same(columnar, by_row)
    assert set(columnar.quarantine["reason"].to_pylist()) <= {"wrong_type", "invalid_utf8"}
    assert columnar.counts["quarantined"] >= 1


def test_gsm8k_final_answers_that_are_not_numbers_are_quarantined_either_way(monkeypatch):
    rows, plan = GSM8K[-3:], _plan("gsm8k")
    assert stage._columnar(_chunk(rows).data, plan, 3)[1].tolist() == [False, True, False]  # the others: row by row
    columnar, by_row = _both_ways(monkeypatch, _chunk(rows), plan)
    _assert_same(columnar, by_row)
    assert columnar.quarantine.select(["row", "reason"]).to_pylist() == [
        {"row": 1, "reason": "missing_answer"},
        {"row": 3, "reason": "missing_answer"},
    ]
    assert columnar.candidates["answer"].to_pylist() == ["1234.5"]


def test_gsm8k_as_sft_goes_row_by_row(monkeypatch):
    plan = FilePlan(SourcePlan(0, "src", Regime.sft, "mit", "human", {}, 1_000_000), 0, "gsm8k")
    assert stage._columnar(_chunk(GSM8K).data, plan, len(GSM8K)) is None


def test_integers_beyond_64_bits_reach_meta_exactly_either_way(monkeypatch):
    big, small = 123456789012345678901234567890, -(2**63) - 1
    rows = [{**r, "uid": big if i == 2 else i, "neg": small} for i, r in enumerate(ALPACA[:6])]
    rows[4]["note"] = "an order number 1234567890123456789012 in text"  # long digits inside a string
    chunk, plan = RawChunk("f.jsonl", 1, b"".join(json.dumps(r).encode() + b"\n" for r in rows)), _plan("alpaca")
    columnar, by_row = _both_ways(monkeypatch, chunk, plan)
    _assert_same(columnar, by_row)
    metas = [json.loads(m) for m in columnar.candidates["meta"].to_pylist()]  # the stdlib reads big integers exactly
    assert [m["uid"] for m in metas] == [0, 1, big, 3, 4, 5]
    assert {m["neg"] for m in metas} == {small}
    assert metas[4]["note"] == rows[4]["note"]


def test_a_row_with_many_keys_goes_row_by_row_without_a_column_per_key(monkeypatch):
    many = {f"k{i}": i for i in range(100_000)}
    widths, read = [], stage.pj.read_json  # the fields of every table pyarrow is asked to build

    def read_json(source, read_options, parse_options):
        widths.append(len(parse_options.explicit_schema))
        return read(source, read_options, parse_options)

    monkeypatch.setattr(stage.pj, "read_json", read_json)
    plan = _plan("alpaca")
    for at in (0, 3):  # the first row (whose keys would be the schema) and a later one
        rows = [*ALPACA[:at], {**ALPACA[at], **many}, *ALPACA[at + 1 : 11]]
        chunk = _chunk(rows)
        assert stage._columnar(chunk.data, plan, len(rows)) is None
        result = canonicalize(chunk, plan, "run")
        assert result.counts == {"bronze": 11, "siblings": 0, "quarantined": 0, "dropped": 0, "candidates": 11}
        assert orjson.loads(result.candidates["meta"][at].as_py()) == many
    assert widths and max(widths) == 3  # only ever the three fields Alpaca reads: never one column per key


def test_a_chunk_whose_rows_each_bring_new_keys_goes_row_by_row(monkeypatch):
    rows = [{**r, f"key_{i}": i} for i, r in enumerate(ALPACA[:200])]
    chunk, plan = _chunk(rows), _plan("alpaca")
    assert stage._columnar(chunk.data, plan, len(rows)) is None
    columnar, by_row = _both_ways(monkeypatch, chunk, plan)
    _assert_same(columnar, by_row)
    assert orjson.loads(columnar.candidates["meta"][7].as_py()) == {"key_7": 7}
