"""The preference audit on small silver tables with silver.preference's annotations (pair_label, pair_agreement,
pair_votes, pair_reviews) and meta.pair, written as Parquet the way a build stages silver/records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import TOKENIZERS
from tunelake import tables
from tunelake.audit.preference import PreferenceAuditConfig, audit_preference
from tunelake.schema import LEDGER, RECORD

PAIR_FIELDS = [
    pa.field("pair_label", pa.float64()),
    pa.field("pair_agreement", pa.float64()),
    pa.field("pair_votes", pa.int32()),
    pa.field("pair_reviews", pa.string()),
]
ANNOTATED = pa.schema([*RECORD, *PAIR_FIELDS])
CONFIG = PreferenceAuditConfig(min_pairs=1)


def _side(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def record(
    id_: str,
    chosen: str = "a fine answer",
    rejected: str = "a poor one",
    *,
    prompt_id: str | None = None,
    source: str = "s",
    domain: str | None = None,
    pair: dict | None = None,
    votes: list[tuple[str | None, str]] | None = None,
    label: float = 1.0,
) -> dict:
    """A preference record; `votes` (reviewer, vote) become pair_reviews and its agreement, as the step writes."""
    votes = votes or [(None, "tie" if label == 0.5 else "chosen")]
    majority = max(sum(v == vote for _, v in votes) for vote in ("chosen", "rejected", "tie"))
    return {
        "id": id_,
        "regime": "preference",
        "source": source,
        "origin": "human",
        "license": "mit",
        "prompt_id": prompt_id or f"p-{id_}",
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": _side(chosen),
        "rejected": _side(rejected),
        "domain": domain,
        "meta": json.dumps({"pair": pair}) if pair else None,
        "pair_label": label,
        "pair_agreement": majority / len(votes) if len(votes) > 1 else None,
        "pair_votes": len(votes),
        "pair_reviews": json.dumps([{"reviewer": r, "vote": v, "picked": _picked(pair, v)} for r, v in votes]),
    }


def _picked(pair: dict | None, vote: str) -> str | None:
    """The position a vote preferred, as the step writes it: the kept chosen's, or the other for a vote against."""
    shown = (pair or {}).get("chosen_position")
    if shown is None:
        return None
    return {"chosen": shown, "rejected": "b" if shown == "a" else "a", "tie": "tie"}[vote]


def audit(tmp_path: Path, records: list[dict], config=CONFIG, ledger: list[dict] | None = None, tokenizer=None):
    files = {tables.RECORDS: tmp_path / "records.parquet", tables.LEDGER_NAME: tmp_path / "ledger.parquet"}
    pq.write_table(pa.Table.from_pylist(records, schema=ANNOTATED), files[tables.RECORDS])
    if ledger is not None:
        pq.write_table(pa.Table.from_pylist(ledger, schema=LEDGER), files[tables.LEDGER_NAME])
    return audit_preference(lambda t: [str(files[t])] if files[t].exists() else [], config, tokenizer)


def test_a_judge_that_prefers_position_a_is_warned(tmp_path):
    records = []
    for i in range(40):
        # judge-a always picks the first-shown response; fair picks it half the time.
        records.append(
            record(f"a{i:02d}", pair={"kind": "judged", "chosen_position": "a"}, votes=[("judge-a", "chosen")])
        )
        position = "a" if i % 2 else "b"
        records.append(
            record(f"f{i:02d}", pair={"kind": "judged", "chosen_position": position}, votes=[("fair", "chosen")])
        )
    # A merged pair whose chosen was shown second: judge-a's vote against it is a vote for position a.
    votes = [("fair", "chosen"), ("other", "chosen"), ("judge-a", "rejected")]
    records.append(record("m", pair={"kind": "judged", "chosen_position": "b"}, votes=votes))
    report = audit(tmp_path, records, PreferenceAuditConfig())  # min_pairs 30: "other" (1 verdict) is not judged
    assert report["position"]["judge-a"] == {"picked_a": 41, "picked_b": 0, "ties": 0, "share_a": 1.0}
    assert report["position"]["fair"]["share_a"] == pytest.approx(20 / 41, abs=1e-4)
    warned = [w for w in report["warnings"] if w.startswith("reviewer")]
    assert len(warned) == 1 and "'judge-a'" in warned[0] and "100% of 41 verdicts" in warned[0]


def test_a_split_three_reviewer_vote_gives_the_hand_computed_alpha(tmp_path):
    split = [("r1", "chosen"), ("r2", "chosen"), ("r3", "rejected")]
    unanimous = [("r1", "chosen"), ("r2", "chosen"), ("r3", "chosen")]
    report = audit(
        tmp_path,
        [
            record("u1", domain="math", votes=split),
            record("u2", domain="math", votes=unanimous),
            record("u3", domain="chat", votes=unanimous),
            record("u4", domain="chat", votes=unanimous),
            record("single", source="web"),  # one vote: no unit; its category is its source
        ],
    )
    math = report["agreement"]["by_category"]["math"]
    # Coincidences (chosen, rejected): u1 adds o_cc 1, o_cr = o_rc 1; u2 adds o_cc 3; n = 6. Agreement 4/6. With
    # the sides exchangeable, n_chosen = n_rejected = 3: alpha = 1 - (n - 1) * 2 / (36 - 18) = 4/9. (Coded as
    # chosen/rejected it would be 1 - 5 * 2 / (36 - 26) = 0, the majority being chosen by construction.)
    assert math["units"] == 2 and math["votes"] == 6
    assert math["percent_agreement"] == pytest.approx(4 / 6, abs=1e-4)
    assert math["alpha"] == pytest.approx(4 / 9, abs=1e-4)
    assert math["mean_pair_agreement"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    assert report["agreement"]["by_category"]["chat"]["alpha"] == 1.0
    assert report["agreement"]["by_category"]["web"] == {
        "pairs": 1,
        "pairs_with_agreement": 0,
        "mean_pair_agreement": None,
        "units": 0,
        "votes": 0,
        "percent_agreement": None,
        "alpha": None,
    }
    assert report["agreement"]["lowest"] == ["math", "chat"]
    # Pooled: o_cc 10, o_cr = o_rc 1 over n = 12, exchanged n_c = 6, 6: alpha = 1 - 11 * 2 / (144 - 72).
    assert report["agreement"]["alpha"] == pytest.approx(1 - 11 * 2 / 72, abs=1e-4)
    assert report["agreement"]["units"] == 4 and report["notes"] == []


def test_chosen_always_longer_warns_and_follows_the_margin(tmp_path):
    records = [
        record(f"r{i:02d}", " ".join(["word"] * (5 + i)), "short", source="big", pair={"kind": "rated", "margin": i})
        for i in range(40)
    ]
    records += [record(f"b{i:02d}", "one two", "three four", source="small") for i in range(40)]
    report = audit(tmp_path, records)
    big = report["length"]["by_source"]["big"]
    assert big["chosen_longer_share"] == 1.0 and big["margin_correlation"] == pytest.approx(1.0)
    assert report["length"]["by_source"]["small"]["same_length"] == 40
    assert report["length"]["overall"]["chosen_longer_share"] == 1.0  # equal lengths are not counted either way
    warnings = report["warnings"]
    assert any(w.startswith("all pairs: the chosen side is longer in 100% of 80 pairs (words") for w in warnings)
    assert any(w.startswith("source 'big'") for w in warnings)
    assert report["margin"]["p50"] == pytest.approx(19.5) and report["margin"]["without_margin"] == 40


def test_lengths_in_tokens_with_a_tokenizer_folder(tmp_path):
    records = [record("x", "Hello, world! Tokenizers split this.", "Hi")]
    report = audit(tmp_path, records, tokenizer=TOKENIZERS / "qwen2.5-instruct")
    from tokenizers import Tokenizer

    qwen = Tokenizer.from_file(str(TOKENIZERS / "qwen2.5-instruct" / "tokenizer.json"))
    expected = len(qwen.encode("Hello, world! Tokenizers split this.", add_special_tokens=False).ids)
    assert report["length_unit"] == "tokens" and report["length"]["overall"]["mean_chosen"] == expected


def test_ties_kept_soft_and_dropped_make_the_tie_rate(tmp_path):
    records = [record("t1", label=0.5), record("t2", pair={"tie": True}), record("n1"), record("n2")]
    ledger = [
        {"id": f"d{i}", "source": "s", "stage": "preference", "action": "drop", "reason": "tie"} for i in range(2)
    ]
    ledger.append({"id": "x", "source": "s", "stage": "preference", "action": "drop", "reason": "low_margin"})
    report = audit(tmp_path, records, ledger=ledger)
    assert report["ties"] == {"kept_soft": 2, "dropped": 2, "rate": round(4 / 6, 4)}
    assert report["length"]["overall"]["pairs"] == 2  # ties have no preferred side: not in the length figures


def test_weak_pairs_are_counted_with_examples(tmp_path):
    loop = " ".join(["you are a jerk"] * 10)
    records = [
        record("empty", "ok", "  \n "),
        record("same", "Yes,  it IS.", "yes, it is."),
        record("loop", "a real answer", loop),
        *(record(f"m{i:03d}", pair={"margin": 1.0}) for i in range(200)),
        record("huge", pair={"margin": 50.0}),
    ]
    weak = audit(tmp_path, records)["weak"]
    assert weak["empty_side"] == {"count": 1, "examples": ["empty"]}
    assert weak["identical_sides"] == {"count": 1, "examples": ["same"]}
    assert weak["looping_side"] == {"count": 1, "examples": ["loop"]}
    assert weak["extreme_margin"]["count"] == 1 and weak["extreme_margin"]["examples"] == ["huge"]
    assert weak["pairs"] == 4


def test_pairs_per_prompt(tmp_path):
    records = [record(f"a{i}", prompt_id="a") for i in range(3)] + [record("b", prompt_id="b")]
    report = audit(tmp_path, records)
    assert report["pairs_per_prompt"] == {"prompts": 2, "mean": 2.0, "max": 3, "histogram": {"1": 1, "3": 1}}


def test_no_preference_record_gives_no_audit(tmp_path):
    sft = {**record("x"), "regime": "sft", "chosen": None, "rejected": None, "prompt": None}
    assert audit(tmp_path, [sft]) is None
