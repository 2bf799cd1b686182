"""KTO binary feedback as its own projection: real LLaMA-Factory KTO rows (fixtures/real/kto_en_demo_sample.jsonl)
and TRL's unpaired format become `kto` records with the completion on the side its label names; gold/kto exports
TRL's unpaired format and tokenizes the completion as the prompt's continuation with the real Qwen2.5 template."""

from __future__ import annotations

import json

import orjson
import pytest
from tokenizers import Tokenizer

from tests.conftest import FIXTURES, TOKENIZERS, run_build, write_recipe
from tests.ingest.test_adapters import record, rejection
from tunelake.ingest.adapters import detect_format
from tunelake.schema import Reason
from tunelake.silver.canonicalize import adapted_batch, canonical_batch

REAL = FIXTURES / "real" / "kto_en_demo_sample.jsonl"
ROWS = [orjson.loads(line) for line in REAL.read_bytes().splitlines()]


def test_a_desirable_completion_is_chosen_and_an_undesirable_one_rejected():
    good, bad = record(ROWS[0], "messages_kto"), record(ROWS[1], "messages_kto")
    assert good["regime"] == bad["regime"] == "kto"
    assert good["chosen"][0]["content"] == ROWS[0]["messages"][1]["content"] and good["rejected"] is None
    assert bad["rejected"][0]["content"] == ROWS[1]["messages"][1]["content"] and bad["chosen"] is None
    assert good["prompt"][0]["content"] == ROWS[0]["messages"][0]["content"]


def test_trl_unpaired_rows_read_as_kto():
    row = {"prompt": "What is 2 + 2?", "completion": "5", "label": False}
    rec = record(row, "trl_kto")
    assert rec["rejected"][0] == {**rec["rejected"][0], "role": "assistant", "content": "5"} and rec["chosen"] is None


@pytest.mark.parametrize("label", ["true", 1, None])
def test_a_label_that_is_not_a_boolean_is_quarantined(label):
    error = rejection({"prompt": "Hi", "completion": "Hello", "label": label}, "trl_kto")
    assert (error.reason, error.field) == (Reason.wrong_type, "label")


def test_a_chat_that_does_not_end_with_its_completion_is_quarantined():
    row = {"messages": [{"role": "user", "content": "Hi"}], "label": True}
    assert rejection(row, "messages_kto").reason == Reason.last_turn_not_assistant


def test_a_kto_record_without_its_completion_is_quarantined():
    error = rejection({"prompt": "Hi", "completion": [], "label": True}, "trl_kto")
    assert error.reason == Reason.empty_response


def test_validation_refuses_a_kto_record_with_both_sides():
    record = {"regime": "kto", "source": "s", "origin": "human", "license": "mit"}
    turns = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "No"}],
    }
    _, _, problems = canonical_batch(adapted_batch([{**record, **turns}]), 10_000)
    assert (problems[0].reason, problems[0].field) == (Reason.wrong_type, "rejected")


def test_a_kto_build_exports_trl_unpaired_rows_and_tokenizes_the_completion(tmp_path):
    source = {"name": "kto", "path": str(REAL), "format": "auto", "license": "apache-2.0", "origin": "human"}
    tokenizer = TOKENIZERS / "qwen2.5-instruct"
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": ["jsonl"], "tokenize": {"tokenizer": str(tokenizer)}}
    manifest, lake = run_build(write_recipe(tmp_path, [source], gold=gold))
    exported = [json.loads(line) for line in (tmp_path / "lake/exports/kto/train.jsonl").read_text().splitlines()]
    assert [(r["completion"][0]["content"], r["label"]) for r in exported] == [
        (row["messages"][-1]["content"], row["label"]) for row in ROWS
    ]
    assert all(set(r) == {"id", "prompt", "completion", "label"} for r in exported)

    [table] = [t for t in lake.tables() if t.startswith("gold/tokenized/") and t.endswith("/kto/train")]
    tokenized = lake.read(table).to_pylist()
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    for row, example in zip(ROWS, tokenized, strict=True):
        assert example["label"] == row["label"]
        completion = tok.decode(example["completion_input_ids"], skip_special_tokens=False)
        assert completion.startswith(row["messages"][-1]["content"]) and completion.rstrip().endswith("<|im_end|>")
        prompt = tok.decode(example["prompt_input_ids"], skip_special_tokens=False)
        assert row["messages"][0]["content"] in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_a_kto_chat_whose_label_is_not_a_boolean_is_never_read_as_sft():
    rows = [{**row, "label": int(row["label"])} for row in ROWS]  # 1 / 0: detected as KTO, then quarantined
    assert detect_format(rows).name == "messages_kto"
    error = rejection(rows[1], "messages_kto")
    assert (error.reason, error.field) == (Reason.wrong_type, "label")
