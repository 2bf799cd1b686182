"""A whole build of the preference-pair formats on their real fixtures: every pair and every rejected one accounted
for in the ledger (by its row's sub), `tunelake explain` naming where a pair came from, and the ratings policy in
the ingest cache key."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake import build, cache
from tunelake.cli import app
from tunelake.ingest.adapters.pairs import RatingsPolicy, ratings_policy

REAL = FIXTURES / "real"
FILES = {
    "ultrafeedback": "ultrafeedback_shape_sample.jsonl",
    "alpaca_eval_cot": "alpaca_eval_cot_sample.jsonl",
    "alpaca_eval_weighted": "alpaca_eval_weighted_sample.jsonl",
    "oasst2": "oasst2_ranked_sample.jsonl",
    "v1_dpo": "v1_dpo_demo_sample.jsonl",
}


def _recipe(tmp_path):
    sources = [
        {"name": name, "path": str(REAL / file), "license": "apache-2.0", "origin": "human"}
        for name, file in FILES.items()
    ]
    # OASST2 trees without two ranked replies give no pair (quarantined): most trees of the real file.
    return write_recipe(tmp_path, sources, engine={"workers": 1}, silver={"max_quarantine_rate": 1})


def test_build_reconciles_and_explain_names_the_pairs_row_and_sub(tmp_path):
    manifest, lake = run_build(_recipe(tmp_path))
    assert {i["source"]: i["format"] for i in manifest["inputs"]} == {
        "ultrafeedback": "rated_completions",
        "alpaca_eval_cot": "alpaca_eval",
        "alpaca_eval_weighted": "alpaca_eval",
        "oasst2": "oasst2_tree",
        "v1_dpo": "llamafactory_v1_dpo",
    }
    for name, c in manifest["counts"].items():
        assert c["bronze"] + c["siblings"] == c["silver"] + c["quarantined"] + c["dropped"], name
    uf = manifest["counts"]["ultrafeedback"]
    # 6 + 3 + 1 + 0 + 1 records of 5 rows (7 beyond their row's first); row 2: two missing_rating; row 4: no_pair.
    assert (uf["bronze"], uf["siblings"], uf["silver"], uf["quarantined"]) == (5, 7, 9, 3)
    reasons = Counter(lake.query("select source, reason from q", q="silver/quarantine"))
    assert reasons[("ultrafeedback", "missing_rating")] == 2 and reasons[("ultrafeedback", "no_pair")] == 1
    assert reasons[("oasst2", "deleted_message")] == 6 and ("oasst2", "no_ranked_replies") not in reasons
    # The three tied alpaca_eval judgments have the same text on both sides: no pair in them, dropped as ties.
    assert not any(reason == "chosen_equals_rejected" for _, reason in reasons)
    dropped = Counter(lake.query("select source, stage, reason from l where action = 'drop'", l="ledger"))
    for judge in ("alpaca_eval_cot", "alpaca_eval_weighted"):
        assert dropped[(judge, "canonicalize", "tie")] == 3
    # The weighted judge agrees with the cot judge on 5 of the 7 other pairs: the same records, dropped as
    # duplicates (merging votes is silver.preference's work).
    duplicates = Counter(s for (s, stage, _), n in dropped.items() for _ in range(n) if stage == "exact_dedup")
    assert duplicates == {"alpaca_eval_weighted": 5}
    # Two trees with no two ranked replies to one message hold no pair: dropped by canonicalize, not quarantined.
    assert dropped[("oasst2", "canonicalize", "no_ranked_replies")] == 2
    assert manifest["stages"]["canonicalize"]["dropped"] == {"no_ranked_replies": 2, "tie": 6}

    records = lake.read("silver/records", ["id", "source", "meta", "score_chosen"]).to_pylist()
    pair_of = {r["id"]: json.loads(r["meta"]).get("pair") for r in records}
    assert {p["kind"] for p in pair_of.values() if p} == {"rated", "ranked", "judged"}
    (last,) = lake.query(
        "select id from l where source = 'ultrafeedback' and row = 1 and sub = 5 "
        "and stage = 'canonicalize' and action = 'keep'",
        l="ledger",
    )
    assert pair_of[last[0]]["models"] == {"chosen": "falcon-40b-instruct", "rejected": "alpaca-7b"}
    explained = CliRunner().invoke(app, ["explain", "--lake", str(tmp_path / "lake"), last[0]])
    assert explained.exit_code == 0 and f"{REAL / FILES['ultrafeedback']} row 1 record 5" in explained.output
    row2 = CliRunner().invoke(app, ["explain", "--lake", str(tmp_path / "lake"), "ultrafeedback:2"])
    assert (
        "record 0" in row2.output and "missing_rating" in row2.output and "completions[1].annotations" in row2.output
    )


def test_ratings_policy_reads_the_preference_section_and_defaults_to_mean():
    assert ratings_policy(SimpleNamespace(silver=SimpleNamespace(preference=None))) == RatingsPolicy()
    section = SimpleNamespace(pairs_from_ratings=SimpleNamespace(aggregate="max"))
    assert ratings_policy(SimpleNamespace(silver=SimpleNamespace(preference=section))).aggregate == "max"


def test_a_new_aggregate_reads_the_rated_file_again(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    run_build(recipe)
    for module in (build, cache):  # as the recipe's silver.preference.pairs_from_ratings.aggregate: max would
        monkeypatch.setattr(module, "ratings_policy", lambda recipe: RatingsPolicy(aggregate="max"))
    changed, lake = run_build(recipe)
    assert "unchanged" not in changed and not any(i["reused"] for i in changed["inputs"])
    scores = lake.query(
        "select score_chosen, score_rejected, meta from s where source = 'ultrafeedback' order by score_chosen",
        s="silver/records",
    )
    assert {json.loads(m)["pair"]["aggregate"] for *_, m in scores} == {"max"}
    assert (5.0, 3.0) in [(c, r) for c, r, _ in scores]  # falcon over alpaca by max (3.0 over 1.75 by mean)
