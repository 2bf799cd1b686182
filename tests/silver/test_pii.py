"""PII: each type is found and redacted (and only real ones: a Luhn-valid decimal fraction, a hex digest or a
version number's digits are not a card, a secret or an address of anyone), a redacted record is identified anew
so copies that differ only in an address are duplicates, and every redaction is in the ledger."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.silver.pii import PATTERNS, TYPES, redact

SCREEN = "|".join(f"(?:{PATTERNS[t]})" for t in TYPES)


@pytest.mark.parametrize(
    ("text", "redacted", "found"),
    [
        (
            "Mail john.doe+x@example.co.uk or call (555) 123-4567.",
            "Mail <EMAIL> or call <PHONE>.",
            {"email": 1, "phone": 1},
        ),
        ("Call +44 20 7946 0958 or 555.123.4567", "Call <PHONE> or <PHONE>", {"phone": 2}),
        ("Server 192.168.1.10; not 999.1.1.1", "Server <IP>; not 999.1.1.1", {"ip": 1}),
        (
            "Card 4111 1111 1111 1111, not 4111 1111 1111 1112",
            "Card <CREDIT_CARD>, not 4111 1111 1111 1112",
            {"credit_card": 1},
        ),
        ("p = 0.9381531715393066", "p = 0.9381531715393066", {}),  # Luhn-valid digits of a fraction
        ("AKIAIOSFODNN7EXAMPLE / ghp_" + "a1B2" * 9, "<SECRET> / <SECRET>", {"secret": 2}),
        ("-----BEGIN RSA PRIVATE KEY-----", "<SECRET>", {"secret": 1}),
        ("token Zx9Qw2Er7Ty4Ui1Op8As5Df3Gh6Jk0LmNbVcXz", "token <SECRET>", {"secret": 1}),
        ("sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", None, {}),  # hex: <= 4 bits/char
        ("/usr/local/lib/python3.11/site-packages/transformers/models", None, {}),
        ("The answer is 1234567890 on 2023-10-01", None, {}),  # no separators: a number, not a phone
    ],
)
def test_each_type_is_found_and_only_real_ones(text, redacted, found):
    out, counts = redact(text, list(TYPES))
    assert out == (text if redacted is None else redacted) and dict(counts) == found
    # The vectorised screen flags every text the redactor changes.
    if found:
        assert pc.match_substring_regex(pa.array([text]), SCREEN)[0].as_py()


def _sources(tmp_path) -> list[dict]:
    """Real Alpaca rows (one with an e-mail address in its input and output, one with a Luhn-valid fraction),
    plus two SFT rows that differ only in the e-mail address they hold, and one whose answer is only an address."""
    convo = [
        {"messages": [{"role": "user", "content": f"Write to {who}@example.com"}, {"role": "assistant", "content": a}]}
        for who, a in (("ann", "Sure, I will."), ("bob", "Sure, I will."), ("eve", "eve@example.com"))
    ]
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convo))
    alpaca = str(FIXTURES / "real" / "pii_alpaca_sample.jsonl")
    return [
        {"name": "alpaca", "path": alpaca, "format": "alpaca", "license": "cc-by-nc-4.0", "origin": "distilled"},
        {"name": "chats", "path": str(tmp_path / "chats.jsonl"), "license": "mit", "origin": "human"},
    ]


def test_a_build_redacts_identifies_anew_and_ledgers_every_redaction(tmp_path):
    recipe = write_recipe(tmp_path, _sources(tmp_path), silver={"quality": {"pii": {}}}, gold={"export": []})
    manifest, lake = run_build(recipe)
    modified = lake.query(
        "select source, row, detail from l where stage = 'pii' and action = 'modify' order by source, row", l="ledger"
    )
    assert [(s, r) for s, r, _ in modified] == [("alpaca", 2), ("chats", 1), ("chats", 2), ("chats", 3)]
    assert modified[0][2].startswith("redacted email 2; id was ")  # alpaca row 561: input and output
    # The two chats that differed only in the address are one record now: the second is an exact duplicate.
    dropped = lake.query("select source, row, reason from l where stage = 'exact_dedup'", l="ledger")
    assert [(s, r) for s, r, _ in dropped] == [("chats", 2)]
    records = lake.read("silver/records", ["source", "messages", "pii"]).to_pylist()
    text = json.dumps([r["messages"] for r in records])
    assert "@example.com" not in text and "<EMAIL>" in text
    assert "0.9381531715393066" in text  # alpaca row 1955's fraction is not a card number
    only = [r for r in records if r["messages"][-1]["content"] == "<EMAIL>"]
    assert len(only) == 1 and only[0]["pii"]["email"] == 2  # an answer of only an address stays a record
    # The originals stay in bronze.
    assert b"ann@example.com" in lake.read("bronze/chats")["raw"][0].as_py()
    assert manifest["stages"]["pii"]["kept"] == manifest["stages"]["pii"]["in"] == 6


def test_action_drop_drops_the_record_naming_the_type(tmp_path):
    recipe = write_recipe(
        tmp_path, _sources(tmp_path), silver={"quality": {"pii": {"action": "drop", "types": ["email"]}}}
    )
    manifest, lake = run_build(recipe)
    dropped = lake.query("select source, row, reason, detail from l where stage = 'pii' order by 1, 2", l="ledger")
    assert [(s, r, reason) for s, r, reason, _ in dropped] == [
        ("alpaca", 2, "pii:email"),
        ("chats", 1, "pii:email"),
        ("chats", 2, "pii:email"),
        ("chats", 3, "pii:email"),
    ]
    assert manifest["stages"]["pii"]["dropped"] == {"pii": 4}


def test_a_dropped_record_is_named_by_the_first_type_it_holds():
    from tunelake.schema import RECORD
    from tunelake.silver.pii import Pii, PiiConfig

    turns = [
        {"role": "user", "content": "Call 555-123-4567 or 555-987-6543"},
        {"role": "assistant", "content": "a@b.io"},
    ]
    batch = pa.Table.from_pylist([{"regime": "sft", "messages": turns}], schema=RECORD).to_batches()[0]
    outcome = Pii(PiiConfig(action="drop")).process(batch)
    assert outcome.drop.to_pylist() == ["pii:email"] and outcome.detail.to_pylist() == ["email 1, phone 2"]
