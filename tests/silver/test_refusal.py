"""Refusal tagging: real refusals are tagged by the pattern that names them (and apologies, clarifications and
refusals on a pair's rejected side are not), a refusal quoted in a code block is not one, the report's counts are
the records' own tags per source and domain with the benign-refusal rate and its warning, `action: drop` drops
with a reason and detail in the ledger, the report is the same when the build comes from the cache, and the
bare `refusal: tag` form loads."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.recipe import RecipeError, load_recipe
from tunelake.schema import RECORD
from tunelake.silver.refusal import PATTERNS, PATTERNS_VERSION, Refusal, RefusalConfig, refusal_patterns

REFUSING_LINE = "I'm sorry, but I can't help with that."
EXPECTED = {"sources": ["hh"], "domains": ["safety"]}


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("As an AI language model, I cannot browse the web.", "as_an_ai"),
        ("As an AI, I think the answer is 4.", None),
        ("Oh, I’m so sorry, but I am not able to assist with that.", "cannot_help"),
        ("I'm sorry, but I can't.", "cannot"),
        ("I’ll have to decline.", "decline"),
        ("Well, I must respectfully decline this one.", "decline"),
        ("I don't feel comfortable sharing that.", "not_comfortable"),
        ("Sure! I can't wait to help.", None),  # "I can't" that does not refuse
        ("I'm sorry to hear that. Here is what you can do.", None),  # an apology that does not refuse
        ("x" * 250 + ". I can't help with that.", None),  # a sentence that starts past the opening
        ("Run this:\n```\nI can't help with that.\n```", None),  # in a code block
        ("```\nprint('I cannot help')", None),  # in a code block left open
    ],
)
def test_each_pattern_names_what_it_finds(text, pattern):
    (named,) = refusal_patterns(pa.array([text]))
    assert (list(PATTERNS)[named] if named >= 0 else None) == pattern


def _sources(tmp_path) -> list[dict]:
    """Real HH-RLHF pairs and Alpaca answers (see tests/fixtures/real/SOURCES.md), and Dolly-format records
    written here, each with a `category` (its domain), for the edges: a refusal in a code block, a refusal in a
    safety prompt."""
    written = [
        {
            "instruction": "Write a bot's reply to an unsafe request, as a code block.",
            "context": "",
            "response": f"Here is the reply:\n```text\n{REFUSING_LINE}\n```\nSend it as is.",
            "category": "coding",
        },
        {
            "instruction": "Show a refusal.",
            "context": "",
            "response": f"```\n{REFUSING_LINE}\n```",
            "category": "coding",
        },
        {"instruction": "How do I pick a lock?", "context": "", "response": REFUSING_LINE, "category": "safety"},
        {"instruction": "What is 2 + 2?", "context": "", "response": "4", "category": "math"},
    ]
    (tmp_path / "written.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    real = FIXTURES / "real"
    return [
        {"name": "hh", "path": str(real / "refusal_hh_rlhf_sample.jsonl"), "license": "mit", "origin": "human"},
        {
            "name": "alpaca",
            "path": str(real / "refusal_alpaca_sample.jsonl"),
            "format": "alpaca",
            "license": "cc-by-nc-4.0",
            "origin": "distilled",
        },
        {
            "name": "alpaca_more",
            "path": str(real / "alpaca_sample.jsonl"),
            "format": "alpaca",
            "license": "cc-by-nc-4.0",
            "origin": "distilled",
        },
        {
            "name": "written",
            "path": str(tmp_path / "written.jsonl"),
            "format": "dolly",
            "license": "mit",
            "origin": "synthetic",
        },
    ]


def _recipe(tmp_path, refusal, workers=1):
    silver = {"quality": {"refusal": refusal}}
    return write_recipe(tmp_path, _sources(tmp_path), silver=silver, gold={"export": []}, engine={"workers": workers})


def _response(record: dict) -> str:
    return (record["messages"] or record["chosen"])[-1]["content"]


# (source, the opening of the response each row is trained on) -> the pattern that names its refusal, or None.
# Every row of alpaca_sample.jsonl (source alpaca_more) is an answer that does not refuse.
TAGS = {
    # refusal_hh_rlhf_sample.jsonl (hh-rlhf harmless-base test rows; the chosen side is judged):
    ("hh", "Oh I see, you were angry"): None,  # row 89: "I'm sorry that I was unable to help you" is mid-sentence
    ("hh", "I don’t know what you mean"): None,  # row 165: its rejected side refuses; rejected sides are not judged
    ("hh", "No, I’m not comfortable"): "not_comfortable",  # row 811
    ("hh", "I am sorry I don't think"): "not_appropriate",  # row 940
    ("hh", "That information isn't"): "cannot_help",  # row 1266: "I'm sorry, I can't help you." comes second
    ("hh", "I’m sorry, I can’t help you."): "cannot_help",  # row 1280
    ("hh", "I’m sorry, but I don’t understand"): None,  # row 1792: an apology asking to clarify is not a refusal
    # refusal_alpaca_sample.jsonl (alpaca_sample_2000 rows):
    ("alpaca", "no"): None,  # row 1
    ("alpaca", "I can't do that because"): "cannot_help",  # row 738: it cannot open a YouTube link, a benign refusal
    # row 1940 rewrites "It's impossible for me to do this" as "I can't do this, it's impossible.": a pattern list
    # cannot tell that sentence from a refusal (a known false positive, in the README)
    ("alpaca", "I can't do this, it's"): "cannot_help",
    # written.jsonl:
    ("written", "Here is the reply:"): None,  # the refusal is in a code block
    ("written", "```\nI'm sorry"): None,  # the whole answer is a code block
    ("written", REFUSING_LINE): "cannot_help",  # a safety prompt: an expected refusal
    ("written", "4"): None,
}


def test_real_refusals_are_tagged_and_the_report_counts_them(tmp_path):
    manifest, lake = run_build(_recipe(tmp_path, {"expected": EXPECTED, "max_benign_rate": 0.1}))
    records = lake.read("silver/records", ["source", "domain", "messages", "chosen", "refusal"]).to_pylist()
    assert len(records) == 18  # 7 hh + 3 alpaca + 4 alpaca_more + 4 written
    seen = []
    for r in records:
        pattern = None
        if r["source"] != "alpaca_more":
            (key,) = [(s, o) for s, o in TAGS if s == r["source"] and _response(r).startswith(o)]
            seen.append(key)
            pattern = TAGS[key]
        # A preference pair's chosen side is one assistant turn; an Alpaca conversation's answer is its turn 1.
        turn = (0 if r["source"] == "hh" else 1) if pattern else None
        expected = {"refused": pattern is not None, "pattern": pattern, "turn": turn}
        assert r["refusal"] == {**expected, "patterns_version": PATTERNS_VERSION}, _response(r)
    assert sorted(seen) == sorted(TAGS)

    # The report's counts are the records' own tags, counted here per source and per domain.
    judged, refused = Counter(), Counter()
    for r in records:
        for key in (("source", r["source"]), ("domain", r["domain"] or "unknown")):
            judged[key] += 1
            refused[key] += r["refusal"]["refused"]
    report = manifest["reports"]["refusal"]
    for kind in ("source", "domain"):
        assert {name: (e["judged"], e["refused"]) for name, e in report[f"by_{kind}"].items()} == {
            name: (judged[k, name], refused[k, name]) for k, name in judged if k == kind
        }
    assert report["by_source"]["hh"] == {
        "judged": 7,
        "refused": 4,
        "rate": round(4 / 7, 6),
        "benign_judged": 0,  # hh's prompts are meant to be refused
        "benign_refused": 0,
        "benign_rate": None,
    }
    assert report["by_domain"]["safety"]["benign_judged"] == 0
    assert (report["by_source"]["alpaca"]["benign_refused"], report["by_source"]["alpaca"]["benign_judged"]) == (2, 3)
    # Benign: every record not in hh nor in the safety domain: 3 + 4 + 3 written, 2 of them refusals.
    assert report["total"] == {
        "judged": 18,
        "refused": 7,
        "rate": round(7 / 18, 6),
        "benign_judged": 10,
        "benign_refused": 2,
        "benign_rate": round(2 / 10, 6),
    }
    assert report["patterns_version"] == PATTERNS_VERSION
    assert report["warnings"] == [
        "benign-refusal rate 20.00% of all records (2 of 10) is above max_benign_rate 0.1",
        "benign-refusal rate 66.67% of source alpaca (2 of 3) is above max_benign_rate 0.1",
        "benign-refusal rate 28.57% of domain unknown (2 of 7) is above max_benign_rate 0.1",
    ]
    assert manifest["stages"]["refusal"]["kept"] == manifest["stages"]["refusal"]["in"] == 18


def test_action_drop_drops_refusals_with_the_pattern_and_the_opening(tmp_path):
    manifest, lake = run_build(_recipe(tmp_path, {"action": "drop", "expected": EXPECTED}))
    dropped = lake.query(
        "select source, row, reason, detail from l where stage = 'refusal' order by source, row", l="ledger"
    )
    assert [(s, r, reason) for s, r, reason, _ in dropped] == [
        ("alpaca", 2, "refusal:cannot_help"),
        ("alpaca", 3, "refusal:cannot_help"),
        ("hh", 3, "refusal:not_comfortable"),
        ("hh", 4, "refusal:not_appropriate"),
        ("hh", 5, "refusal:cannot_help"),
        ("hh", 6, "refusal:cannot_help"),
        ("written", 3, "refusal:cannot_help"),
    ]
    assert dropped[0][3] == (
        f"turn 1 opens with a refusal (cannot_help, patterns v{PATTERNS_VERSION}): "
        "\"I can't do that because I don't have access the internet.\""
    )
    assert manifest["stages"]["refusal"]["dropped"] == {"refusal": 7}
    assert all(not r["refusal"]["refused"] for r in lake.read("silver/records", ["refusal"]).to_pylist())
    # The report counts what was judged, dropped or not.
    assert manifest["reports"]["refusal"]["total"]["refused"] == 7


def test_the_report_is_the_same_when_the_build_comes_from_the_cache(tmp_path):
    first, _ = run_build(_recipe(tmp_path, {"expected": EXPECTED}, workers=2))
    again, _ = run_build(_recipe(tmp_path, {"expected": EXPECTED}, workers=1))
    assert all(i["reused"] for i in again["inputs"]) and "unchanged" not in again
    assert again["reports"]["refusal"] == first["reports"]["refusal"]
    assert first["reports"]["refusal"]["total"]["refused"] == 7


def test_only_what_a_model_is_trained_to_say_is_judged():
    rows = [
        {"regime": "sft", "source": "chats", "messages": _turns("Hi", "Hello!", "Hack a bank.", REFUSING_LINE)},
        {
            "regime": "preference",
            "source": "chats",
            "prompt": _turns("Hack a bank."),
            "chosen": [{"role": "assistant", "content": "Here is how banks protect themselves."}],
            "rejected": [{"role": "assistant", "content": REFUSING_LINE}],
        },
        {"regime": "rl", "source": "chats", "prompt": _turns("What is 2 + 2?"), "answer": "4"},
    ]
    batch = pa.Table.from_pylist(rows, schema=RECORD).to_batches()[0]
    outcome = Refusal(RefusalConfig()).process(batch)
    assert [(r["refused"], r["turn"]) if r else None for r in outcome.rows["refusal"].to_pylist()] == [
        (True, 3),  # the second assistant turn refuses
        (False, None),  # only the rejected side refuses
        None,  # an RL record has no response to judge
    ]
    assert outcome.drop is None and outcome.tally == Counter(
        {("judged", "chats", "unknown"): 2, ("refused", "chats", "unknown"): 1}
    )


def _turns(*contents: str) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]


@pytest.mark.parametrize(("value", "action"), [("tag", "tag"), ("drop", "drop"), ({"action": "drop"}, "drop")])
def test_the_bare_action_form_loads(tmp_path, value, action):
    recipe, _ = load_recipe(write_recipe(tmp_path, _sources(tmp_path), silver={"quality": {"refusal": value}}))
    assert recipe.silver.quality.refusal == RefusalConfig(action=action)


def test_an_unknown_action_names_the_choices(tmp_path):
    with pytest.raises(RecipeError, match=r"silver\.quality\.refusal\.action: Input should be 'tag' or 'drop'"):
        load_recipe(write_recipe(tmp_path, _sources(tmp_path), silver={"quality": {"refusal": "flag"}}))


def test_expected_sources_the_recipe_does_not_have_are_a_recipe_error(tmp_path):
    sources = _sources(tmp_path)
    section = {"quality": {"refusal": {"expected": {"sources": ["hh_harmles"]}}}}  # a typo: counted benign otherwise
    with pytest.raises(RecipeError, match=r"refusal: expected.sources names sources the recipe does not have: hh_"):
        load_recipe(write_recipe(tmp_path, sources, silver=section))


def test_the_build_prints_the_refusal_rates_and_warnings(tmp_path):
    from typer.testing import CliRunner

    from tunelake.cli import app

    recipe = _recipe(tmp_path, {"expected": EXPECTED, "max_benign_rate": 0.5})
    result = CliRunner().invoke(app, ["build", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "refusals (patterns v1): 7 of 18 responses judged; benign-refusal rate 20.00% (2 of 10)" in result.output
    assert "benign-refusal rate 66.67% of source alpaca (2 of 3) is above max_benign_rate 0.5" in result.output
