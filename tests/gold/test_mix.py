"""The mix: gold holds each source in its quota, chosen by a seeded hash of the id (not by workers or input order),
every record left out is in the ledger with its reason, the report says what was achieved against the target,
and a short group's copies reach gold, its exports and one split."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.cli import app
from tunelake.recipe import RecipeError, load_recipe

REAL = FIXTURES / "real"
# 40 alpaca (SFT), 30 gsm8k train (RL) and 20 hh-rlhf (preference) records, all distinct.
SOURCES = [
    {"name": "alpaca", "path": str(REAL / "mix_alpaca_sample.jsonl"), "format": "alpaca"},
    {"name": "gsm8k", "path": str(REAL / "mix_gsm8k_sample.jsonl"), "format": "gsm8k"},
    {"name": "hh", "path": str(REAL / "hh_rlhf_harmless_sample.jsonl"), "format": "hh_rlhf"},
    {"name": "reasoning", "path": str(REAL / "reason_tool_use_sample.jsonl")},
]
# What silver holds of them: 6 of the hh rows are quarantined (an empty response, sides that differ early).
AVAILABLE = {"alpaca": 40, "gsm8k": 30, "hh": 14, "reasoning": 3}


def _sources() -> list[dict]:
    return [{**s, "license": "mit", "origin": "human"} for s in SOURCES]


def _build(tmp_path, mix: dict, workers: int = 1, export: list[str] | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    gold = {"mix": mix, "export": export or [], "split": {"validation": 0.2, "test": 0.2}}
    return run_build(write_recipe(tmp_path, _sources(), gold=gold, engine={"workers": workers}))


def _gold_ids(lake) -> Counter:
    ids = Counter()
    for table in lake.tables():
        if table.startswith("gold/") and not table.startswith("gold/tokenized"):
            ids.update(lake.read(table, ["id"])["id"].to_pylist())
    return ids


SHARES = {"alpaca": 0.5, "gsm8k": 0.2, "hh": 0.25, "reasoning": 0.05}


def test_each_group_holds_its_quota_and_every_left_out_record_is_in_the_ledger(tmp_path):
    manifest, lake = _build(tmp_path, {"ratios": SHARES, "size": 40})
    report = manifest["reports"]["mix"]
    quotas = {"alpaca": 20, "gsm8k": 8, "hh": 10, "reasoning": 2}
    assert {g: r["target"] for g, r in report["groups"].items()} == quotas
    assert {g: r["achieved"] for g, r in report["groups"].items()} == quotas
    assert {g: r["available"] for g, r in report["groups"].items()} == AVAILABLE
    assert report["groups"]["gsm8k"]["achieved_share"] == 0.2 and report["achieved_records"] == 40
    assert dict(lake.query("select source, count(*) from r group by source", r="silver/records")) == quotas
    assert sum(_gold_ids(lake).values()) == 40

    dropped = lake.query("select source, reason, detail from l where stage = 'mix' and action = 'drop'", l="ledger")
    assert Counter(source for source, _, _ in dropped) == {g: AVAILABLE[g] - quotas[g] for g in quotas}
    assert all(reason == f"mix_sampled_out:{source}" for source, reason, _ in dropped)
    assert next(detail for source, _, detail in dropped if source == "hh") == (
        "beyond the quota of 10 records of hh (14 available); kept are the first by a hash of the id with seed 0"
    )
    assert manifest["counts"]["hh"]["dropped"] == 4
    assert report["warnings"] == []


def test_the_choice_is_the_same_with_two_workers_and_changes_with_the_seed(tmp_path):
    _, one = _build(tmp_path / "one", {"ratios": SHARES, "size": 40}, workers=1)
    _, two = _build(tmp_path / "two", {"ratios": SHARES, "size": 40}, workers=2)
    _, other = _build(tmp_path / "seed", {"ratios": SHARES, "size": 40, "seed": 1}, workers=1)
    assert _gold_ids(one) == _gold_ids(two)
    assert _gold_ids(one) != _gold_ids(other)
    assert sum(_gold_ids(other).values()) == 40


def test_without_a_size_the_mix_is_the_largest_the_shares_allow(tmp_path):
    # hh's 14 records at 0.25 bound the size to 56: alpaca 28, gsm8k 11.2, hh 14, reasoning 2.8, and the record
    # the floors leave goes to the largest remainder (reasoning's).
    manifest, _ = _build(tmp_path, {"ratios": SHARES})
    groups = manifest["reports"]["mix"]["groups"]
    quotas = {"alpaca": 28, "gsm8k": 11, "hh": 14, "reasoning": 3}
    assert {g: r["target"] for g, r in groups.items()} == {g: r["achieved"] for g, r in groups.items()} == quotas
    assert manifest["reports"]["mix"]["warnings"] == []


def test_counts_groups_unnamed_short_and_absent(tmp_path):
    # "nowhere" is a source of the recipe whose only row is quarantined: its group is absent from the data.
    (tmp_path / "nowhere.jsonl").write_text('{"instruction": "cut off\n')
    nowhere = {"name": "nowhere", "path": str(tmp_path / "nowhere.jsonl"), "format": "alpaca"}
    sources = [*_sources(), {**nowhere, "license": "mit", "origin": "human"}]
    gold = {"mix": {"ratios": {"alpaca": 10, "hh": 5, "reasoning": 5, "nowhere": 4}}, "export": []}
    manifest, lake = run_build(write_recipe(tmp_path, sources, gold=gold, silver={"max_quarantine_rate": 1}))
    assert manifest["counts"]["nowhere"]["quarantined"] == 1
    report = manifest["reports"]["mix"]
    assert report["unlisted"] == {"gsm8k": 30}
    achieved = {g: r["achieved"] for g, r in report["groups"].items()}
    assert achieved == {"alpaca": 10, "hh": 5, "reasoning": 3, "nowhere": 0}
    assert report["groups"]["nowhere"] == {
        "available": 0,
        "target_share": 0.166667,
        "target": 4,
        "achieved": 0,
        "achieved_share": 0.0,
        "sampled_out": 0,
        "copies": 0,
    }
    assert report["warnings"] == [
        "group 'reasoning' (source) has 3 records, short of its quota of 5 (`upsample: true` repeats them)",
        "group 'nowhere' (source) is absent from the data: 0 of its 4 records",
    ]
    unlisted = set(lake.query("select reason, detail from l where stage = 'mix' and source = 'gsm8k'", l="ledger"))
    detail = "gold.mix.ratios names no share for the source gsm8k (it names alpaca, hh, nowhere, reasoning)"
    assert unlisted == {("mix_unlisted:gsm8k", detail)}


def test_general_purpose_data_under_its_floor_is_warned(tmp_path):
    mix = {"ratios": {"alpaca": 0.1, "gsm8k": 0.6, "hh": 0.3}, "size": 40, "general": ["alpaca"]}
    manifest, _ = _build(tmp_path, mix)
    report = manifest["reports"]["mix"]
    assert report["general_share"] == 0.1
    assert report["warnings"] == ["general-purpose data (alpaca) is 10.0% of the mix, under the floor of 20%"]
    printed = CliRunner().invoke(app, ["build", str(tmp_path / "recipe.yaml")])
    assert "mix: general-purpose data (alpaca) is 10.0% of the mix, under the floor of 20%" in printed.output
    at_floor, _ = _build(tmp_path / "floor", {**mix, "ratios": {"alpaca": 0.2, "gsm8k": 0.5, "hh": 0.3}})
    assert at_floor["reports"]["mix"]["warnings"] == []


def test_groups_by_a_category_in_the_meta(tmp_path):
    sources = _sources()
    for source in sources:
        source["meta"] = {"category": "math" if source["name"] == "gsm8k" else "general"}
    sources[-1]["meta"] = {}  # the reasoning rows have no category
    gold = {"mix": {"by": "category", "ratios": {"math": 10, "general": 10, "(unset)": 1}}, "export": []}
    manifest, _ = run_build(write_recipe(tmp_path, sources, gold=gold, engine={"workers": 1}))
    groups = manifest["reports"]["mix"]["groups"]
    assert {g: r["available"] for g, r in groups.items()} == {"math": 30, "general": 54, "(unset)": 3}
    assert {g: r["achieved"] for g, r in groups.items()} == {"math": 10, "general": 10, "(unset)": 1}


def test_turn_depth_and_reasoning_share_of_the_mix(tmp_path):
    manifest, _ = _build(tmp_path, {"ratios": {"reasoning": 0.5, "gsm8k": 0.5}, "size": 6})
    report = manifest["reports"]["mix"]
    # The three reason_tool_use rows answer with a reasoning trace; gsm8k prompts (RL) have no response.
    assert report["reasoning_records"] == 3 and report["reasoning_share"] == 0.5
    assert sum(report["turns"].values()) == 6 and report["turns"]["1"] >= 3


def test_upsampled_copies_reach_gold_and_its_exports_in_one_split(tmp_path):
    mix = {"ratios": {"reasoning": 0.5, "alpaca": 0.5}, "size": 14, "upsample": True}
    manifest, lake = _build(tmp_path, mix, export=["jsonl"])
    group = manifest["reports"]["mix"]["groups"]["reasoning"]
    assert (group["available"], group["target"], group["achieved"], group["copies"]) == (3, 7, 7, 4)
    assert lake.read("silver/records").num_rows == 3 + 7  # one silver row per record
    copies = {r["id"]: r["mix_copies"] for r in lake.read("silver/records", ["id", "mix_copies"]).to_pylist()}
    reasoning = {i for i, n in _gold_ids(lake).items() if n > 1}
    assert sorted(copies[i] for i in reasoning) == [2, 2, 3]  # 7 = 3 x 2 + 1 more for the first by the hash
    assert sorted(_gold_ids(lake)[i] for i in reasoning) == [2, 2, 3]
    for i in reasoning:
        where = [t for t in lake.tables() if t.startswith("gold/") and i in lake.read(t, ["id"])["id"].to_pylist()]
        assert len(where) == 1  # every copy in the record's one split
    exported = Counter()
    for split in ("train", "validation", "test"):
        path = lake.root / "exports" / "sft" / f"{split}.jsonl"
        if path.exists():
            exported.update(json.dumps(json.loads(line)["messages"]) for line in path.open())
    assert sorted(exported.values())[-3:] == [2, 2, 3]


@pytest.mark.parametrize(
    "ratios,expected",
    [
        ({"alpaca": 0.5, "hh": 0.4}, "the shares in ratios sum to 0.9; they must sum to 1"),
        ({"alpaca": 0.5, "hh": 10}, "ratios mix shares (numbers with a decimal point) and counts (integers)"),
        (  # a typo would match no record, silently
            {"alpacca": 0.5, "hh": 0.5},
            "ratios name sources the recipe does not have: alpacca (its sources: alpaca, gsm8k, hh, reasoning)",
        ),
    ],
)
def test_ratios_that_make_no_mix_are_a_recipe_error(tmp_path, ratios, expected):
    path = write_recipe(tmp_path, _sources(), gold={"mix": {"ratios": ratios}})
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert "gold.mix" in str(error.value) and expected in str(error.value)


def test_ratios_by_domain_may_name_what_only_the_data_holds(tmp_path):
    gold = {"mix": {"by": "domain", "ratios": {"math": 1.0}}}
    recipe, _ = load_recipe(write_recipe(tmp_path, _sources(), gold=gold))
    assert recipe.gold.mix.ratios == {"math": 1.0}


def test_new_ratios_rerun_the_mix_not_the_ingest_pass(tmp_path):
    """The staged columns depend on `by` and `seed` only: a rebuild with other shares and size reuses every file's
    ingest outputs, and gives what a clean build with those shares gives."""
    _build(tmp_path / "lake", {"ratios": SHARES, "size": 40})
    other = {"ratios": {"alpaca": 0.25, "gsm8k": 0.5, "hh": 0.2, "reasoning": 0.05}, "size": 20}
    again, lake = _build(tmp_path / "lake", other)
    assert all(i["reused"] for i in again["inputs"])
    _, clean = _build(tmp_path / "clean", other)
    assert _gold_ids(lake) == _gold_ids(clean) and sum(_gold_ids(lake).values()) == 20
    # Another seed stages other columns: the ingest pass runs again.
    seeded, _ = _build(tmp_path / "lake", {**other, "seed": 1})
    assert not any(i["reused"] for i in seeded["inputs"])
