"""The stage seam: a user's stages named in the recipe run through the same runner, ledger and counts as the
built-in ones (stages used here are in tests/stage_examples.py and examples/stages/)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.conftest import REPO, run_build, write_recipe
from tunelake.build import QuarantineRateExceeded
from tunelake.lake import Lake
from tunelake.recipe import RecipeError, load_recipe
from tunelake.tables import gold_tables

EXAMPLE_STAGES = "tests.stage_examples"


def _reconciled_chain(manifest: dict) -> list[str]:
    """The stages in run order; asserts each one's rows are kept, dropped or quarantined, and that each stage
    takes exactly the rows the one before kept."""
    kept = None
    for name, c in manifest["stages"].items():
        assert c["in"] == c["kept"] + sum(c["dropped"].values()) + sum(c["quarantined"].values()), name
        assert kept is None or c["in"] == kept, name
        kept = c["kept"]
    for source, c in manifest["counts"].items():
        assert c["bronze"] == c["silver"] + c["quarantined"] + c["dropped"], source
    return list(manifest["stages"])


def test_a_user_stage_drops_records_with_its_reason_in_the_ledger(tmp_path, example_sources):
    """The README's example stage: SFT records with a refusal in an assistant turn are dropped, each with a
    ledger entry, and the manifest counts them under the stage's name."""
    (tmp_path / "plain").mkdir()
    _, plain = run_build(write_recipe(tmp_path / "plain", example_sources))
    phrase = "I'm sorry, but"
    refusing = {
        record["id"]
        for record in plain.read("silver/records", ["id", "messages"]).to_pylist()
        if any(m["role"] == "assistant" and phrase in (m["content"] or "") for m in record["messages"] or [])
    }
    assert len(refusing) >= 5  # Glaive's tool-less refusals ("I'm sorry, but I don't have the capability...")

    stages = [{"use": "examples.stages.refusals.DropRefusals"}]
    manifest, lake = run_build(write_recipe(tmp_path, example_sources, stages=stages, engine={"workers": 2}))
    assert _reconciled_chain(manifest) == ["canonicalize", "drop_refusals", "exact_dedup"]
    drops = lake.query("select id, reason, detail from l where stage = 'drop_refusals'", l="ledger")
    # Refusals that are also exact duplicates are counted once, at the first stage that removed them.
    assert {i for i, _, _ in drops} == refusing
    assert {(r, d) for _, r, d in drops} == {("refusal", f"an assistant turn says {phrase!r}")}
    assert manifest["stages"]["drop_refusals"]["dropped"] == {"refusal": len(drops)}
    assert not refusing & set(lake.read("silver/records", ["id"])["id"].to_pylist())
    assert manifest["chain"][0] == {"name": "drop_refusals", "version": "1", "config": {"phrase": phrase}}


def test_the_readme_shows_the_example_stage_the_tests_run():
    readme = (REPO / "README.md").read_text()
    code = (REPO / "examples" / "stages" / "refusals.py").read_text()
    body = code[code.index("import numpy") :]
    assert f"```python\n{body}```" in readme


@pytest.mark.parametrize("workers", [1, 2])
def test_row_local_stages_add_columns_rewrite_fields_and_quarantine(tmp_path, example_sources, workers):
    stages = [
        {"use": f"{EXAMPLE_STAGES}.CountChars"},
        {"use": f"{EXAMPLE_STAGES}.QuarantineShortAnswers", "min_chars": 2},
    ]
    manifest, lake = run_build(write_recipe(tmp_path, example_sources, stages=stages, engine={"workers": workers}))
    chain = ["canonicalize", "count_chars", "quarantine_short_answers", "exact_dedup"]
    assert _reconciled_chain(manifest) == chain

    silver = lake.read("silver/records").to_pylist()
    assert all(r["answer_chars"] == (len(r["answer"]) if r["answer"] is not None else None) for r in silver)
    assert {r["domain"] for r in silver if r["regime"] == "rl"} == {"math"}

    rl = manifest["stages"]["count_chars"]["modified"]
    assert (
        rl == lake.query("select count(*) from l where stage = 'count_chars' and action = 'modify'", l="ledger")[0][0]
    )
    assert rl >= len([r for r in silver if r["regime"] == "rl"])

    quarantined = lake.query(
        "select source, row, field, raw from q where stage = 'quarantine_short_answers'", q="silver/quarantine"
    )
    # GSM8K answers of one digit ("#### 5") are shorter than 2 characters.
    assert quarantined and {(s, f) for s, _, f, _ in quarantined} <= {("gsm8k", "answer"), ("math500", "answer")}
    for source, _row, _, raw in quarantined:
        assert raw and json.loads(raw)  # the row's raw bytes, from bronze
        assert manifest["counts"][source]["quarantined"] >= 1
    ledger = lake.query(
        "select count(*) from l where stage = 'quarantine_short_answers' and action = 'quarantine'", l="ledger"
    )
    # A quarantined record keeps its id in the quarantine and the ledger: `tunelake explain <id>` finds it.
    ids = lake.query(
        "select count(distinct q.id) from q join l using (id, source, file, row, sub) "
        "where q.stage = 'quarantine_short_answers' and l.action = 'quarantine'",
        q="silver/quarantine",
        l="ledger",
    )
    assert (
        ids[0][0]
        == ledger[0][0]
        == len(quarantined)
        == manifest["stages"]["quarantine_short_answers"]["quarantined"]["short_answer"]
    )
    # The stage's own report, made from its ledger rows and its tally over every chunk, is in the manifest;
    # stages without one add nothing.
    # Every record with an answer reached the stage, and ended in silver, its quarantine or exact_dedup's drops.
    answers = Counter(r["source"] for r in silver if r["answer"] is not None)
    answers.update(s for s, *_ in quarantined)
    answers.update(
        s
        for (s,) in lake.query(
            "select l.source from l join s using (id) where l.stage = 'exact_dedup' and s.answer is not null",
            l="ledger",
            s="silver/records",
        )
    )
    quarantined_by_source = Counter(s for s, *_ in quarantined)
    assert manifest["reports"] == {
        "quarantine_short_answers": {
            source: {"quarantined": quarantined_by_source[source], "answers": n} for source, n in answers.items()
        }
    }


def test_row_local_stages_in_a_chain_with_no_global_step_run_once(tmp_path, example_sources):
    """With exact_dedup off, the only segment runs in the ingest pass; publish must not run its stages again (it
    used to, and failed on the column they add, written twice)."""
    stages = [{"use": f"{EXAMPLE_STAGES}.CountChars"}]
    manifest, lake = run_build(write_recipe(tmp_path, example_sources, stages=stages, silver={"exact_dedup": None}))
    assert _reconciled_chain(manifest) == ["canonicalize", "count_chars"]
    silver = lake.read("silver/records")
    assert silver.schema.names.count("answer_chars") == 1
    assert manifest["stages"]["count_chars"]["in"] == silver.num_rows  # it dropped nothing, each record seen once


def test_a_global_stage_annotates_groups_that_the_splits_follow(tmp_path, example_sources):
    """A `group_id` annotation decides the split: every record of a source shares its source's group. A later
    row-local stage runs in a pass of its own, between the two global steps."""
    stages = [
        {"use": f"{EXAMPLE_STAGES}.OneGroupPerSource"},
        {"use": f"{EXAMPLE_STAGES}.QuarantineShortAnswers", "min_chars": 2},
    ]
    manifest, lake = run_build(write_recipe(tmp_path, example_sources, stages=stages, engine={"workers": 2}))
    chain = _reconciled_chain(manifest)
    assert chain == ["canonicalize", "one_group_per_source", "quarantine_short_answers", "exact_dedup"]
    split_of_source: dict[str, set[str]] = {}
    for _regime, split, table in gold_tables():
        for (source,) in lake.query("select source from t", t=table):
            split_of_source.setdefault(source, set()).add(split)
    assert len(split_of_source) == len(example_sources)
    assert all(len(splits) == 1 for splits in split_of_source.values()), split_of_source
    assert lake.read("silver/records", ["group_id"])["group_id"].null_count == 0

    decided = lake.query(
        "select source, action, reason, detail from l where stage = 'one_group_per_source' order by source, row",
        l="ledger",
    )
    per_source = {s["name"]: [] for s in example_sources}
    for source, *entry in decided:
        per_source[source].append(tuple(entry))
    assert all(
        v == [("drop", "second_of_source", "number 2"), ("quarantine", "third_of_source", "number 3")]
        for v in per_source.values()
    )
    counts = manifest["stages"]["one_group_per_source"]
    assert counts["dropped"] == {"second_of_source": 7} and counts["quarantined"] == {"third_of_source": 7}
    assert (
        lake.query(
            "select count(*) from q where stage = 'one_group_per_source' and raw is null", q="silver/quarantine"
        )[0][0]
        == 7
    )


def test_a_stage_that_loses_rows_fails_the_build_and_publishes_nothing(tmp_path, example_sources):
    recipe = write_recipe(tmp_path, example_sources[:1], stages=[{"use": f"{EXAMPLE_STAGES}.LosesARow"}])
    with pytest.raises(RuntimeError, match="stage 'loses_a_row' returned"):
        run_build(recipe)
    assert Lake(tmp_path / "lake").tables() == []


def test_exact_dedup_can_be_turned_off(tmp_path, example_sources):
    glaive = [s for s in example_sources if s["name"] == "glaive_toolcall"]
    manifest, _ = run_build(write_recipe(tmp_path, glaive, silver={"exact_dedup": None}))
    assert manifest["counts"]["glaive_toolcall"]["dropped"] == 0
    assert list(manifest["stages"]) == ["canonicalize"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"use": f"{EXAMPLE_STAGES}.NeedsAMissingPackage"}], "pip install tunelake-no-such-package"),
        ([{"use": f"{EXAMPLE_STAGES}.NoSuchStage"}], "cannot import tests.stage_examples.NoSuchStage"),
        ([{"use": "json.JSONDecoder"}], "is not a tunelake RowLocalStage or GlobalStage"),
        ([{"use": f"{EXAMPLE_STAGES}.QuarantineShortAnswers"}], "min_chars: Field required"),
        ([{"use": f"{EXAMPLE_STAGES}.QuarantineShortAnswers", "min_chars": 1, "max": 2}], "max: unknown key"),
        ([{"use": f"{EXAMPLE_STAGES}.LosesARow"}] * 2, "stage names must be unique"),
        ([{"min_chars": 1}], "`use` must name a stage class"),
        ([{"use": f"{EXAMPLE_STAGES}.ForgetsToProcess"}], "does not implement process"),
    ],
)
def test_a_stage_that_cannot_be_used_is_a_recipe_error(tmp_path, stages, message):
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "Hi!"}\n')
    source = {"name": "a", "path": str(data), "license": "mit", "origin": "human"}
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(tmp_path, [source], stages=stages))
    assert message in str(e.value)


def test_two_stages_adding_one_column_is_a_recipe_error(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "Hi!"}\n')
    source = {"name": "a", "path": str(data), "license": "mit", "origin": "human"}
    stages = [{"use": f"{EXAMPLE_STAGES}.OneGroupPerSource"}]
    with pytest.raises(RecipeError, match="'group_id' is added by the stages one_group_per_source and prompt_groups"):
        load_recipe(write_recipe(tmp_path, [source], stages=stages, silver={"prompt_groups": {}}))


def test_a_source_mostly_quarantined_fails_the_build_naming_its_top_reasons(tmp_path):
    data = tmp_path / "a.jsonl"
    rows = ['{"instruction": "Say hi", "output": "Hi!"}', "{not json", "[1]", '{"instruction": "x", "output": ""}']
    data.write_text("\n".join(rows) + "\n")
    source = {"name": "a", "path": str(data), "license": "mit", "origin": "human"}
    with pytest.raises(QuarantineRateExceeded, match=r"source 'a': 3 of 4 records quarantined \(75%") as e:
        run_build(write_recipe(tmp_path, [source]))
    for reason in ("invalid_json (1)", "wrong_type (1)", "empty_turn (1)"):
        assert reason in str(e.value)
    assert Lake(tmp_path / "lake").tables() == []
    manifest, _ = run_build(write_recipe(tmp_path, [source], silver={"max_quarantine_rate": 0.75}))
    assert manifest["counts"]["a"]["quarantined"] == 3


def test_the_build_table_lists_each_stage(tmp_path, example_sources):
    from typer.testing import CliRunner

    from tunelake.cli import app

    recipe = write_recipe(tmp_path, example_sources, stages=[{"use": "examples.stages.refusals.DropRefusals"}])
    result = CliRunner().invoke(app, ["build", str(recipe)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "drop_refusals" in line or "exact_dedup" in line]
    assert len(lines) == 2 and "refusal" in lines[0] and "duplicate_of" in lines[1]


def test_stage_sections_document_themselves():
    from tunelake.recipe import Silver

    assert "exact_dedup" in Silver.model_fields
    assert "on by default" in Silver.model_fields["exact_dedup"].description
