"""Exports load as they are in HF `datasets` and have the layouts TRL and verl read."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_build, write_recipe
from tunelake.engine.parts import write_arrow
from tunelake.gold import export
from tunelake.gold.project import gold_schema
from tunelake.schema import Regime


@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("export")
    example = request.getfixturevalue("example_sources_module")
    manifest, lake = run_build(write_recipe(folder, example))
    return manifest, lake, lake.root / "exports"


@pytest.fixture(scope="module")
def example_sources_module():
    import yaml

    from tests.conftest import EXAMPLES

    recipe = yaml.safe_load((EXAMPLES / "recipe.yaml").read_text())
    for source in recipe["sources"]:
        source["path"] = str(EXAMPLES / source["path"])
    return recipe["sources"]


@pytest.mark.parametrize("fmt,builder", [("jsonl", "json"), ("parquet", "parquet")])
@pytest.mark.parametrize("regime", ["sft", "preference", "rl"])
def test_every_export_loads_with_hf_datasets(built, regime, fmt, builder):
    manifest, _, exports = built
    path = exports / regime / f"train.{fmt}"
    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    assert len(ds) == manifest["gold"][f"gold/{regime}/train"]


def test_sft_export_is_trl_conversational_and_keeps_tool_calls(built):
    _, _, exports = built
    rows = [json.loads(line) for line in (exports / "sft" / "train.jsonl").open()]
    assert all(m["role"] in ("system", "user", "assistant", "tool") for r in rows for m in r["messages"])
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    calls = [m["tool_calls"] for r in rows for m in r["messages"] if m.get("tool_calls")]
    assert calls, "the Glaive tool-call sample must keep its calls in the export"
    # Tool calls are JSON objects in jsonl, in the OpenAI shape that chat templates read.
    assert calls[0][0]["type"] == "function" and isinstance(calls[0][0]["function"]["name"], str)
    with_tools = [r for r in rows if r.get("tools")]
    assert with_tools and isinstance(with_tools[0]["tools"], list)


def test_preference_export_has_message_lists_ending_in_user_then_assistant(built):
    _, _, exports = built
    ds = datasets.load_dataset("parquet", data_files=str(exports / "preference" / "train.parquet"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    for row in ds.select(range(50)):
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"]


def test_rl_export_has_verl_layout(built):
    _, _, exports = built
    ds = datasets.load_dataset("parquet", data_files=str(exports / "rl" / "train.parquet"), split="train")
    assert {"data_source", "prompt", "ability", "reward_model", "extra_info"} <= set(ds.column_names)
    gsm8k = [r for r in ds if r["data_source"] == "gsm8k"]
    first = gsm8k[0]
    # GSM8K train row 1 (Natalia's clips): gold answer 72, numeric verifier.
    assert first["prompt"][0]["content"].startswith("Natalia sold clips")
    assert first["reward_model"] == {"style": "rule", "ground_truth": "72"}
    assert first["ability"] == "math" and first["extra_info"]["verifier"] == "numeric"
    code = next(r for r in ds if r["data_source"] == "humaneval")
    config = json.loads(code["reward_model"]["ground_truth"])
    assert {"prompt", "test", "entry_point"} <= config.keys()
    assert [r["extra_info"]["index"] for r in ds] == list(range(len(ds)))


def test_a_message_field_is_kept_only_in_the_columns_that_use_it(tmp_path):
    """A chosen response with reasoning does not give the prompt and the rejected response a null reasoning key:
    templates that test `'reasoning_content' in message` would then take every turn for a reasoning turn."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "chosen": [{"role": "assistant", "content": str(2 * i), "reasoning_content": f"{i} doubled."}],
            "rejected": [{"role": "assistant", "content": str(2 * i + 1)}],
        }
        for i in range(40)
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = [{"name": "pairs", "path": str(source), "license": "mit", "origin": "synthetic"}]
    _, lake = run_build(write_recipe(tmp_path, recipe, gold={"split": {"validation": 0, "test": 0}}))
    exported = [json.loads(line) for line in (lake.root / "exports" / "preference" / "train.jsonl").open()]
    assert len(exported) == 40
    assert all(set(r["chosen"][0]) == {"role", "content", "reasoning_content"} for r in exported)
    assert all(set(m) == {"role", "content"} for r in exported for m in r["prompt"] + r["rejected"])
    table = pq.read_table(lake.root / "exports" / "preference" / "train.parquet")
    assert [f.name for f in table.schema.field("rejected").type.value_type] == ["role", "content"]
    assert "reasoning_content" in [f.name for f in table.schema.field("chosen").type.value_type]


def test_parquet_row_groups_hold_a_bounded_size_of_records(built, tmp_path, monkeypatch, example_sources_module):
    """A Parquet export's row group holds about ROW_GROUP_BYTES of rows, not a fixed count: 16k long-context
    records in one group overran the writer's memory. Smaller groups change no row."""
    monkeypatch.setattr(export, "ROW_GROUP_BYTES", 64 << 10)
    _, lake = run_build(write_recipe(tmp_path, example_sources_module, engine={"workers": 1}))
    _, _, exports = built
    for regime in ("sft", "preference", "rl"):
        small = pq.ParquetFile(lake.root / "exports" / regime / "train.parquet")
        assert small.metadata.num_row_groups > 1, regime
        assert small.read().equals(pq.read_table(exports / regime / "train.parquet")), regime


def test_parquet_row_groups_stay_small_when_long_records_follow_short_ones(tmp_path, monkeypatch):
    """Row groups are cut by the bytes of the rows in them, not by an average: 20 long records after 200 short
    ones (as a long-context source after a short one in a gold table) never share one oversized group."""
    monkeypatch.setattr(export, "ROW_GROUP_BYTES", 256 << 10)
    schema = gold_schema(Regime.sft)

    def record(i: int, answer: str) -> dict:
        messages = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer}]
        return {
            "id": f"{i:032x}",
            "source": "s",
            "origin": "h",
            "license": "mit",
            "prompt_id": "p",
            "messages": messages,
        }

    short = [record(i, "short answer") for i in range(200)]
    long = [record(200 + i, f"long answer {i} " * 3_000) for i in range(20)]  # 45 KB or more, all different
    tables = {"0": pa.Table.from_pylist(short, schema), "1": pa.Table.from_pylist(long, schema)}
    files = [str(tmp_path / "staged" / write_arrow(tmp_path, "staged", n, t).name) for n, t in tables.items()]
    for fmt in ("parquet", "jsonl"):
        export.run_export(export.ExportTask(files, schema, Regime.sft, "train", tmp_path / "out", fmt))
    parquet = pq.ParquetFile(tmp_path / "out" / "sft" / "train.parquet")
    sizes = [parquet.metadata.row_group(i).total_byte_size for i in range(parquet.metadata.num_row_groups)]
    assert max(sizes) <= 2 * (256 << 10) + 50_000, sizes
    rows = [json.loads(line) for line in (tmp_path / "out" / "sft" / "train.jsonl").open()]
    assert parquet.read().to_pylist() == rows
