"""The language gate: real OASST2 messages get their labelled language, a record confidently outside the allow-list
is dropped with its language and confidence, conversations whose turns disagree are flagged (or dropped), code and
short turns are left unjudged, and a recipe that turns the gate on without its package says how to install it."""

from __future__ import annotations

import importlib.util
import json

import pyarrow as pa
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.recipe import RecipeError, load_recipe
from tunelake.schema import RECORD
from tunelake.silver.lang import Lang, LangConfig

SAMPLE = FIXTURES / "real" / "quality_oasst2_lang_sample.jsonl"
EN = "Could you tell me how the water cycle works and why it matters for farming?"
FR = "Pouvez-vous m'expliquer comment fonctionne le cycle de l'eau et pourquoi il compte?"
DE = "Kannst du mir erklären, wie der Wasserkreislauf funktioniert und warum er wichtig ist?"


def _trees() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def _judge(conversations: list[list[tuple[str, str]]], **config) -> list[tuple[dict | None, str | None, str | None]]:
    rows = [{"regime": "sft", "messages": [{"role": r, "content": c} for r, c in turns]} for turns in conversations]
    out = Lang(LangConfig(**config)).process(pa.Table.from_pylist(rows, schema=RECORD).to_batches()[0])
    return list(zip(out.rows["language"].to_pylist(), out.drop.to_pylist(), out.detail.to_pylist(), strict=True))


def test_real_messages_get_their_labelled_language():
    labelled = []
    for tree in _trees():
        stack = [tree["prompt"]]
        while stack:
            message = stack.pop()
            labelled.append((message["lang"].split("-")[0], message["text"]))  # pt-BR -> pt, uk-UA -> uk
            stack.extend(message.get("replies") or [])
    verdicts = _judge([[("user", text)] for _, text in labelled])
    judged = [(label, v, text) for (label, text), (v, _, _) in zip(labelled, verdicts, strict=True) if v]
    # 51 messages in 16 languages; 2 are too short to judge ("No", and a 12-letter Korean question).
    assert len(labelled) == 51 and len(judged) == 49
    # 47 of 49 right, and all 44 judged confidently (on the whole OASST2 file, 98.3% of those so judged). The two
    # misses are unsure: a Catalan essay request taken for Spanish (0.49; its words "text", "200", "contra", "la
    # tauromaquia" are Spanish too), and a Korean request followed by Python code not in a ``` fence, so the code is
    # judged too, as English (0.45).
    misses = [(label, v["code"], text[:9]) for label, v, text in judged if label != v["code"]]
    assert misses == [("ca", "es", "Escriu un"), ("ko", "en", "다음의 DRQN코")]
    assert all(label == v["code"] for label, v, _ in judged if v["confidence"] >= 0.7)
    assert sum(v["confidence"] >= 0.7 for _, v, _ in judged) == 44
    # The quantized model gives the Japanese messages a probability a little over 1 (up to 1.00004): capped.
    assert max(v["confidence"] for _, v, _ in judged) == 1.0


def _sources(tmp_path) -> list[dict]:
    """The OASST2 sample's prompts as an RL prompt bank (most trees have no reply; an RL prompt is judged)."""
    path = tmp_path / "oasst2.jsonl"
    rows = [{"question": t["prompt"]["text"], "answer": "#### 0"} for t in _trees()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [{"name": "oasst2", "path": str(path), "format": "gsm8k", "license": "apache-2.0", "origin": "human"}]


def test_a_build_drops_records_outside_the_allow_list_naming_language_and_confidence(tmp_path):
    recipe = write_recipe(tmp_path, _sources(tmp_path), silver={"quality": {"lang": {"allow": ["en", "es"]}}})
    manifest, lake = run_build(recipe)
    dropped = lake.query("select row, reason, detail from l where stage = 'lang' order by row", l="ledger")
    reasons = [reason for _, reason, _ in dropped]
    assert len(dropped) == 21 and "language:en" not in reasons and "language:es" not in reasons
    assert {"language:zh", "language:ca", "language:ja", "language:uk", "language:eo"} <= set(reasons)
    assert dropped[0] == (5, "language:pt", "pt with confidence 0.998 >= 0.7; allowed: en, es")
    kept = lake.read("silver/records", ["language"]).to_pylist()
    # Kept: 4 English and Spanish prompts; 5 judged but unsure: a Catalan prompt taken for Spanish at 0.49, a
    # Chinese poem to comment on (0.44; the poem is classical Chinese), an Italian question that is mostly a URL
    # (0.57), the Korean request judged English (0.45; unfenced code), a 31-letter Dutch question (0.33); and a
    # Korean question too short to judge (no language: null).
    assert len(kept) == 10 and sum(r["language"] is None for r in kept) == 1
    assert sum(r["language"] is not None and r["language"]["confidence"] < 0.7 for r in kept) == 5
    assert manifest["stages"]["lang"]["dropped"] == {"language": 21}
    for counts in manifest["counts"].values():
        assert counts["bronze"] == counts["silver"] + counts["quarantined"] + counts["dropped"]


def test_allow_null_tags_every_record_and_drops_none(tmp_path):
    recipe = write_recipe(tmp_path, _sources(tmp_path), silver={"quality": {"lang": {"allow": None}}})
    manifest, lake = run_build(recipe)
    assert manifest["stages"]["lang"]["dropped"] == {}
    codes = {r["language"]["code"] for r in lake.read("silver/records", ["language"]).to_pylist() if r["language"]}
    # The 16 labelled languages but Korean (one prompt too short to judge, the other judged English).
    assert codes == {"ar", "ca", "de", "en", "eo", "es", "fr", "hu", "it", "ja", "nl", "pt", "ru", "uk", "zh"}


def test_user_turns_in_two_languages_make_a_mixed_conversation():
    conversation = [("user", EN), ("assistant", EN), ("user", FR), ("assistant", EN)]
    [(tagged, reason, _)] = _judge([conversation], allow=["en"])
    assert tagged["mixed"] and tagged["codes"] == ["en", "fr"] and tagged["code"] == "en" and reason is None
    # English holds 3 of the 4 turns' letters: the record is English, at about that share.
    assert 0.7 < tagged["confidence"] < 0.8
    [(_, reason, detail)] = _judge([conversation], allow=["en"], mixed="drop")
    assert (reason, detail) == ("language:mixed", "turns confidently in en, fr")
    # Half French, half German: confidently neither, so kept under any allow-list unless mixed is drop.
    [(tagged, reason, _)] = _judge([[("user", FR), ("assistant", DE)]], allow=["en"])
    assert tagged["mixed"] and tagged["confidence"] < 0.7 and reason is None


def test_a_turn_in_two_languages_is_one_turn_of_its_larger_part():
    # Mixing is found between turns: one turn gets one language, that of most of its text; never `mixed`.
    [(tagged, reason, _)] = _judge([[("user", "I love this city. " + FR)]], allow=["fr"])
    assert (tagged["code"], tagged["mixed"], reason) == ("fr", False, None)


def test_code_and_short_turns_are_not_judged():
    code = "```python\nfor item in collection:\n    print(item)\n```"
    verdicts = _judge(
        [
            [("user", "Thanks!"), ("assistant", code)],  # nothing left to judge: no language, no drop
            [("user", FR + "\n" + code), ("assistant", "`print(item)`")],  # judged on the French only
            [("system", FR), ("user", EN)],  # system turns are not judged
        ],
        allow=["en"],
    )
    assert verdicts[0] == (None, None, None)
    assert verdicts[1][0]["code"] == "fr" and verdicts[1][1] == "language:fr"
    assert verdicts[2][0]["codes"] == ["en"] and verdicts[2][1] is None


def test_per_record_judges_the_joined_turns_and_never_finds_mixed():
    [(tagged, _, _)] = _judge([[("user", EN), ("assistant", EN), ("user", FR), ("assistant", EN)]], per="record")
    assert tagged["code"] == "en" and not tagged["mixed"]


def test_a_recipe_needs_the_package_and_known_codes(tmp_path, monkeypatch):
    sources = _sources(tmp_path)
    with pytest.raises(RecipeError, match=r"allow.*unknown language codes \['english'\]"):
        load_recipe(write_recipe(tmp_path, sources, silver={"quality": {"lang": {"allow": ["english"]}}}))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fasttext" else find_spec(name))
    with pytest.raises(RecipeError, match=r"silver\.quality\.lang: .*pip install 'tunelake\[lang\]'"):
        load_recipe(write_recipe(tmp_path, sources, silver={"quality": {"lang": {"allow": ["en"]}}}))
