"""silver.preference through real builds: votes merged with their agreement, ties never given a winner, the
strategies over rated pairs, the per-prompt cap and length balance. Pairs come in as TRL preference rows whose
extra `pair` field is their meta.pair (as the rating and judgment adapters write it); the real HH-RLHF rows show
that plain pairs pass untouched."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest

from tests.conftest import FIXTURES, TOKENIZERS, run_build, write_recipe
from tunelake.recipe import load_recipe
from tunelake.schema import Reason
from tunelake.silver.preference import PreferenceConfig

HH = FIXTURES / "real" / "hh_rlhf_harmless_sample.jsonl"


def judged(prompt: str, a: str, b: str, winner: str, reviewer: str) -> dict:
    """One reviewer's verdict on (a, b), oriented as the judgment adapters orient it."""
    chosen, rejected = (b, a) if winner == "b" else (a, b)
    position = "b" if winner == "b" else "a"
    pair = {"kind": "judged", "tie": winner == "tie", "winner": winner, "reviewers": [reviewer]}
    pair["chosen_position"] = position
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "pair": pair}


def rated(prompt: str, scores: dict[str, float]) -> list[dict]:
    """Every pair of a prompt's rated responses, the higher-rated chosen (input order on a tie)."""
    rows = []
    for (x, sx), (y, sy) in itertools.combinations(scores.items(), 2):
        if sy > sx:
            (x, sx), (y, sy) = (y, sy), (x, sx)
        pair = {"kind": "rated", "tie": sx == sy, "margin": sx - sy, "reviewers": ["ann"], "aggregate": "mean"}
        rows.append(
            {"prompt": prompt, "chosen": x, "rejected": y, "score_chosen": sx, "score_rejected": sy, "pair": pair}
        )
    return rows


def build(tmp_path: Path, rows: list[dict], **preference) -> tuple[dict, dict, dict]:
    """Build `rows`; the manifest, silver's records by chosen text, and the step's ledger drops by chosen text."""
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "pairs", "path": str(path), "format": "trl_preference", "license": "mit", "origin": "human"}
    manifest, lake = run_build(write_recipe(tmp_path, [source], silver={"preference": preference}))
    records = lake.read("silver/records").to_pylist()
    ledger = lake.read("ledger").to_pylist()
    assert len(ledger) and all(
        r["reason"] is None or r["stage"] != "preference" or _known(r["reason"]) for r in ledger
    )
    drops = [r for r in ledger if r["stage"] == "preference"]
    return manifest, records, drops


def _known(reason: str) -> bool:
    return reason.split(":")[0] in {r.value for r in Reason}


def test_a_split_three_reviewer_vote_keeps_the_majority_with_its_agreement_and_every_vote(tmp_path):
    prompt = "Name a primary colour."
    rows = [
        judged(prompt, "Red.", "Purple is one.", "a", "r1"),
        judged(prompt, "Purple is one.", "Red.", "b", "r2"),  # the same verdict, shown in the other order
        judged(prompt, "Red.", "Purple is one.", "b", "r3"),
    ]
    manifest, records, drops = build(tmp_path, rows)
    [kept] = records
    assert kept["chosen"][0]["content"] == "Red."
    assert abs(kept["pair_agreement"] - 2 / 3) < 1e-9 and kept["pair_votes"] == 3 and kept["pair_label"] == 1.0
    votes = json.loads(kept["pair_reviews"])
    # Each vote keeps the position it preferred as it was shown: r2 saw the pair the other way round.
    assert votes == [
        {"reviewer": "r1", "vote": "chosen", "picked": "a"},
        {"reviewer": "r2", "vote": "chosen", "picked": "b"},
        {"reviewer": "r3", "vote": "rejected", "picked": "b"},
    ]
    assert sorted(d["reason"] for d in drops) == [f"judgment_merged:{kept['id']}"] * 2
    report = manifest["reports"]["preference"]
    assert (report["pairs"], report["distinct_pairs"], report["judged_more_than_once"]) == (3, 1, 1)

    # Two of three is under 0.7: the pair goes, whole, with every vote.
    _, records, drops = build(tmp_path / "strict", rows, min_agreement=0.7)
    [pair] = [d for d in drops if d["reason"] == "low_agreement"]
    assert records == [] and "2 of 3 votes agree" in pair["detail"]
    assert sorted(d["reason"] for d in drops if d is not pair) == [f"judgment_merged:{pair['id']}"] * 2


def test_an_even_vote_or_a_tie_verdict_is_a_tie_never_a_random_winner(tmp_path):
    prompt = "Is a tomato a fruit?"
    rows = [
        judged(prompt, "Yes, botanically.", "No.", "a", "r1"),
        judged(prompt, "Yes, botanically.", "No.", "b", "r2"),
        judged("What is 2 + 2?", "4", "Four", "tie", "r1"),
    ]
    _, records, drops = build(tmp_path, rows, min_agreement=0.0)
    assert records == []
    assert Counter(d["reason"].split(":")[0] for d in drops) == {"tie": 2, "judgment_merged": 1}
    assert any("1 and 1 votes" in d["detail"] for d in drops)

    _, records, drops = build(tmp_path / "soft", rows, min_agreement=0.0, ties="keep_soft")
    assert sorted(r["pair_label"] for r in records) == [0.5, 0.5]
    assert [d["reason"].split(":")[0] for d in drops] == ["judgment_merged"]


def test_all_ratings_tied_gives_no_pair(tmp_path):
    rows = rated("Say hello.", {"Hello!": 4, "Hi there.": 4, "Greetings.": 4})
    _, records, drops = build(tmp_path, rows)
    assert records == [] and Counter(d["reason"] for d in drops) == {"tie": 3}


def test_strategies_pick_the_best_response_against_the_worst_or_a_seeded_lower_one(tmp_path):
    scores = {"Paris.": 5, "Paris, France.": 4.5, "Lyon.": 2, "London.": 1, "Rome.": 1.5}
    rows = rated("What is the capital of France?", scores)

    _, records, drops = build(tmp_path / "worst", rows, pairs_from_ratings={"strategy": "best_vs_worst"})
    [kept] = records
    assert (kept["chosen"][0]["content"], kept["rejected"][0]["content"]) == ("Paris.", "London.")
    assert Counter(d["reason"] for d in drops) == {"pair_not_selected": 9}

    lowers = set()
    for seed in range(8):
        _, records, _ = build(tmp_path / f"seed{seed}", rows, pairs_from_ratings={"seed": seed})
        [kept] = records
        assert kept["chosen"][0]["content"] == "Paris."
        lowers.add(kept["rejected"][0]["content"])
    assert len(lowers) > 1 and "Paris." not in lowers  # the seed decides, among the responses the best beats

    _, records, drops = build(tmp_path / "all", rows, pairs_from_ratings={"strategy": "all_pairs", "min_margin": 1.0})
    margins = sorted(r["score_chosen"] - r["score_rejected"] for r in records)
    assert margins and min(margins) >= 1.0 and len(records) == 7
    assert Counter(d["reason"] for d in drops) == {"low_margin": 3}
    assert all("below min_margin 1.0" in d["detail"] for d in drops)


def test_length_balance_leaves_chosen_longer_in_half_the_pairs(tmp_path):
    rows = [
        {"prompt": f"Question {i}?", "chosen": "a longer answer " * (2 + i % 3), "rejected": "short"}
        for i in range(30)
    ] + [{"prompt": f"Other {i}?", "chosen": "brief", "rejected": "much longer reply " * 3} for i in range(10)]
    _, records, drops = build(tmp_path, rows, length_balance="downsample")
    longer = Counter(len(r["chosen"][0]["content"]) > len(r["rejected"][0]["content"]) for r in records)
    assert longer == {True: 10, False: 10}
    assert Counter(d["reason"] for d in drops) == {"length_balance": 20}


def test_plain_real_pairs_pass_with_one_vote_each(tmp_path):
    source = {"name": "hh", "path": str(HH), "format": "hh_rlhf", "license": "mit", "origin": "human"}
    _, lake = run_build(write_recipe(tmp_path, [source], silver={"preference": {}}))
    records = lake.read("silver/records")
    assert records.num_rows and lake.query("select count(*) from l where stage = 'preference'", l="ledger") == [(0,)]
    assert pc.all(pc.equal(records["pair_votes"], 1)).as_py() and pc.all(pc.equal(records["pair_label"], 1.0)).as_py()
    assert records["pair_agreement"].null_count == records.num_rows
    one_vote = [{"reviewer": None, "vote": "chosen", "picked": None}]
    assert all(orjson.loads(v) == one_vote for v in records["pair_reviews"].to_pylist())


def test_a_bare_yaml_off_turns_length_balance_off(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"lake: lake\nsources: [{{name: hh, path: {HH}, format: hh_rlhf, license: mit, origin: human}}]\n"
        "silver:\n  preference:\n    length_balance: off\n"
    )
    loaded, _ = load_recipe(recipe)
    assert loaded.silver.preference.length_balance == "off"


def test_a_build_with_no_preference_record_publishes_the_pair_columns_empty(tmp_path):
    alpaca = FIXTURES / "real" / "alpaca_sample.jsonl"
    source = {"name": "alpaca", "path": str(alpaca), "format": "alpaca", "license": "cc-by-nc-4.0", "origin": "human"}
    manifest, lake = run_build(write_recipe(tmp_path, [source], silver={"preference": {}}))
    records = lake.read("silver/records", ["regime", "pair_label", "pair_reviews"])
    assert records.num_rows and set(records["regime"].to_pylist()) == {"sft"}
    assert records["pair_label"].null_count == records["pair_reviews"].null_count == records.num_rows
    assert "preference" not in manifest.get("reports", {})


def test_a_soft_tie_reaches_gold_and_the_export_with_its_label_and_a_warning(tmp_path):
    rows = [judged("What is 2 + 2?", "4", "Four", "tie", "r1"), *rated("Pick one.", {"Yes.": 5, "No.": 1})]
    tokenize = {"tokenizer": str(TOKENIZERS / "qwen2.5-instruct")}
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": ["jsonl"], "tokenize": tokenize}
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "pairs", "path": str(path), "format": "trl_preference", "license": "mit", "origin": "human"}
    silver = {"preference": {"ties": "keep_soft"}}
    manifest, lake = run_build(write_recipe(tmp_path, [source], silver=silver, gold=gold))
    in_gold = lake.read("gold/preference/train", ["pair_label", "pair_votes", "pair_strategy"]).to_pylist()
    assert sorted(in_gold, key=lambda r: r["pair_label"]) == [
        {"pair_label": 0.5, "pair_votes": 1, "pair_strategy": None},
        {"pair_label": 1.0, "pair_votes": 1, "pair_strategy": "best_vs_random_lower"},
    ]
    exported = [
        json.loads(line) for line in (tmp_path / "lake/exports/preference/train.jsonl").read_text().splitlines()
    ]
    assert sorted(r["pair_label"] for r in exported) == [0.5, 1.0]
    assert "trains each as a win" in manifest["reports"]["preference"]["warnings"][0]
    # Tokenized pairs hold no label: the soft tie is left out of them, loudly.
    fp = manifest["tokenized"]["fingerprint"]
    assert lake.read(f"gold/tokenized/{fp}/preference/train").num_rows == 1
    quarantined = lake.query("select reason, field from q", q=f"gold/tokenized/{fp}/quarantine")
    assert quarantined == [("tie", "pair_label")]


def test_the_per_prompt_cap_is_refused_here_and_pointed_to_prompt_groups():
    with pytest.raises(ValueError, match="move it there"):
        PreferenceConfig.model_validate({"max_pairs_per_prompt": 4})


def test_pairs_are_keyed_by_their_whole_prompt_and_sides_by_case_and_spacing_only(tmp_path):
    # Three questions that open alike (one conversation's branches): each its own pair, never votes on one.
    opening = [{"role": "user", "content": "Describe the Earth."}, {"role": "assistant", "content": "A planet."}]
    rows = [
        {**judged("", "Yes.", "No.", "b", f"r{i}"), "prompt": [*opening, {"role": "user", "content": question}]}
        for i, question in enumerate(["Is it flat?", "Is it round?", "Is it wet?"])
    ]
    # Sides that differ by a sign only are two responses, not a tie.
    rows.append(judged("Solve x + 3 = 0.", "x = -3", "x = 3", "a", "r9"))
    _, records, drops = build(tmp_path, rows)
    assert drops == [] and len(records) == 4 and all(r["pair_votes"] == 1 for r in records)


def test_equal_scores_are_a_tie_and_a_soft_tie_is_no_choice_of_a_strategy(tmp_path):
    plain = {"prompt": "Pick.", "chosen": "A.", "rejected": "B.", "score_chosen": 8, "score_rejected": 8}
    rows = [plain, *rated("Rain?", {"Yes.": 3, "No.": 3, "Maybe.": 3}), *rated("Snow?", {"Cold.": 5, "Hot.": 1})]
    _, records, drops = build(tmp_path, rows, ties="keep_soft", pairs_from_ratings={"strategy": "best_vs_worst"})
    assert sorted((r["chosen"][0]["content"], r["pair_label"]) for r in records) == [("A.", 0.5), ("Cold.", 1.0)]
    assert Counter(d["reason"] for d in drops) == {"pair_not_selected": 3}
    assert all("a tie has none" in d["detail"] for d in drops)


def test_a_split_vote_dropped_for_agreement_is_not_counted_as_a_tie_and_merged_votes_name_the_row(tmp_path):
    prompt = "Tea or coffee?"
    rows = [judged(prompt, "Tea.", "Coffee.", "a", "r1"), judged(prompt, "Tea.", "Coffee.", "b", "r2")]
    rows += [judged("Up or down?", "Up.", "Down.", "a", f"s{i}") for i in range(2)]  # equal votes, equal ids
    manifest, records, drops = build(tmp_path, rows, ties="keep_soft")
    report = manifest["reports"]["preference"]
    assert report["ties"] == 0 and "warnings" not in report
    merged = [d for d in drops if d["reason"].startswith("judgment_merged")]
    assert len(merged) == 2 and all(d["detail"].endswith(("pairs.jsonl:1", "pairs.jsonl:3")) for d in merged)
    assert [r["chosen"][0]["content"] for r in records] == ["Up."]
