"""The heuristic quality gate: each rule drops with its reason and score, only what a model learns to say is
judged, and a build over real rows drops the looping answer and the repetitive song, and keeps the rest."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.recipe import RecipeError, load_recipe
from tunelake.schema import RECORD
from tunelake.silver.heuristics import Heuristics, HeuristicsConfig

COLUMNS = ("regime", "messages", "prompt", "chosen", "rejected", "answer")
PROSE = " ".join(f"word{i}" for i in range(60))  # 60 distinct words, 409 characters: nothing repeats
LOOP = " ".join(f"Your teacher is a {w}." for w in ("jerk", "fool", "mess", "liar") * 8)  # 160 words


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def _sft(*answers: str) -> dict:
    turns = [t for answer in answers for t in (("user", "Tell me."), ("assistant", answer))]
    return {"regime": "sft", "messages": _turns(*turns)}


def _pair(chosen: str, rejected: str) -> dict:
    return {
        "regime": "preference",
        "prompt": _turns(("user", "Tell me.")),
        "chosen": _turns(("assistant", chosen)),
        "rejected": _turns(("assistant", rejected)),
    }


def _judge(rows: list[dict], **config) -> list[tuple[str | None, str | None, dict | None]]:
    table = pa.Table.from_pylist(rows, schema=pa.schema([RECORD.field(c) for c in COLUMNS]))
    out = Heuristics(HeuristicsConfig(**config)).process(table.to_batches()[0])
    return list(zip(out.drop.to_pylist(), out.detail.to_pylist(), out.rows["heuristics"].to_pylist(), strict=True))


def test_each_rule_drops_with_its_reason_and_score():
    lines = "\n".join([PROSE, "same line", "same line", "same line", "another line"])  # 2 of 5 lines repeat
    verdicts = _judge(
        [
            _sft(PROSE),
            _sft(PROSE, ""),  # the shortest response decides the length rule
            _sft(PROSE * 3),
            _sft(PROSE + "\x00" * 10),
            _sft(lines),
            _sft(LOOP),
            _sft(PROSE + "\n```python\nx = 1\n"),
        ],
        max_response_chars=1000,
    )
    assert [(reason, detail) for reason, detail, _ in verdicts] == [
        (None, None),
        ("low_quality:too_short", "shortest_response_chars 0 < 1"),
        ("low_quality:too_long", "longest_response_chars 1227 > 1000"),
        ("low_quality:non_printing", f"non_printing_frac {10 / 419:.4g} > 0.01"),
        ("low_quality:repetitive_lines", "dup_line_frac 0.4 > 0.3"),
        ("low_quality:repetitive_ngrams", "top_ngram_frac 0.6 > 0.2"),  # "your teacher is": 32 x 3 of 160 words
        ("low_quality:unclosed_fence", "unclosed_fence 1 (a ``` fence left open)"),
    ]
    scores = verdicts[4][2]
    assert scores["dup_line_frac"] == 0.4 and scores["shortest_response_chars"] == len(lines)
    assert not scores["unclosed_fence"] and scores["non_printing_frac"] == 0


def test_the_first_failing_rule_is_the_reason():
    [(reason, _, scores)] = _judge([_sft(LOOP + "\x00" * 20)])
    assert reason == "low_quality:non_printing" and scores["top_ngram_frac"] > 0.2


def test_only_what_a_model_learns_to_say_is_judged():
    verdicts = _judge(
        [
            {"regime": "rl", "prompt": _turns(("user", LOOP)), "answer": "4"},
            _pair(PROSE, LOOP),  # a poor rejected response is what the pair teaches against
            _pair(LOOP, PROSE),
            {"regime": "sft", "messages": _turns(("user", LOOP), ("assistant", PROSE))},
            _sft("Average response to question 1: yes. Average response to question 2: no."),  # short: no loop
        ]
    )
    assert [reason for reason, _, _ in verdicts] == [None, None, "low_quality:repetitive_ngrams", None, None]
    assert verdicts[0][2] is None  # nothing to judge: no scores


def test_a_turn_that_only_calls_a_tool_is_not_judged():
    call = {"role": "assistant", "content": "", "tool_calls": '[{"name": "get_weather", "arguments": "{}"}]'}
    row = {"regime": "sft", "messages": [{"role": "user", "content": "Weather?"}, call]}
    row["messages"] += _turns(("tool", '{"temp": 21}'), ("assistant", PROSE))
    ((drop, _, scores),) = _judge([row])
    assert drop is None and scores["shortest_response_chars"] == len(PROSE)
    call["tool_calls"] = None  # the same empty turn without a call is an empty response
    assert _judge([row])[0][0] == "low_quality:too_short"


def test_a_build_over_real_rows_drops_the_loop_and_the_repeating_song(tmp_path):
    sources = [
        {"name": "hh", "path": str(FIXTURES / "real" / "quality_hh_rlhf_sample.jsonl"), "format": "hh_rlhf"},
        {"name": "alpaca", "path": str(FIXTURES / "real" / "quality_alpaca_sample.jsonl"), "format": "alpaca"},
    ]
    for source in sources:
        source.update(license="mit", origin="human")
    recipe = write_recipe(tmp_path, sources, silver={"quality": {"heuristics": {}}})
    manifest, lake = run_build(recipe)
    dropped = lake.query(
        "select source, row, reason from l where stage = 'heuristics' order by source, row", l="ledger"
    )
    # hh row 4 (shared row 1844) loops "Your teacher is a ..."; alpaca row 4 (shared row 106) is a song whose
    # chorus repeats. Alpaca row 5 ends in U+200B, a format character, and is kept.
    assert dropped == [("alpaca", 4, "low_quality:repetitive_lines"), ("hh", 4, "low_quality:repetitive_ngrams")]
    scores = lake.read("silver/records", ["source", "heuristics"]).to_pylist()
    assert len(scores) == 7 and all(r["heuristics"]["shortest_response_chars"] > 0 for r in scores)
    assert manifest["stages"]["heuristics"]["dropped"] == {"low_quality": 2}
    for counts in manifest["counts"].values():
        assert counts["bronze"] == counts["silver"] + counts["quarantined"] + counts["dropped"]


def test_the_gate_is_off_by_default_and_its_section_is_checked(tmp_path):
    path = str(FIXTURES / "real" / "quality_alpaca_sample.jsonl")
    source = {"name": "a", "path": path, "license": "mit", "origin": "human"}
    recipe, _ = load_recipe(write_recipe(tmp_path, [source], gold={"export": []}))
    assert "heuristics" not in [stage.name for stage in recipe.stage_chain()]
    bad = write_recipe(tmp_path, [source], silver={"quality": {"heuristics": {"max_dup_lines": 0.5}}})
    with pytest.raises(RecipeError, match=r"silver\.quality\.heuristics\.max_dup_lines: unknown key"):
        load_recipe(bad)
