"""`tunelake build` with gold.tokenize: tokenized tables per fingerprint, packing, quarantine, `tunelake show`."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, TOKENIZERS, run_build, write_recipe
from tunelake import tasks
from tunelake.cli import app
from tunelake.schema import Regime
from tunelake.tables import SPLITS
from tunelake.tables import gold as gold_table

QWEN = str(TOKENIZERS / "qwen2.5-instruct")
SOURCES = [
    {
        "name": "alpaca",
        "path": str(EXAMPLES / "data/alpaca_300.json.gz"),
        "license": "cc-by-nc-4.0",
        "origin": "distilled",
    },
    {
        "name": "glaive",
        "path": str(EXAMPLES / "data/glaive_toolcall_100.json.gz"),
        "license": "apache-2.0",
        "origin": "synthetic",
    },
    {
        "name": "hh",
        "path": str(EXAMPLES / "data/hh_rlhf_harmless_test_300.jsonl.gz"),
        "license": "mit",
        "origin": "human",
    },
    {"name": "gsm8k", "path": str(EXAMPLES / "data/gsm8k_train_300.jsonl.gz"), "license": "mit", "origin": "human"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenized")
    tokenize = {"tokenizer": QWEN, "max_length": 1024, "pack": {"enabled": True}}
    manifest, lake = run_build(write_recipe(folder, SOURCES, gold={"tokenize": tokenize}))
    return folder, manifest, lake


def test_every_gold_record_is_tokenized_or_quarantined_with_a_reason(built):
    _, manifest, lake = built
    fp = manifest["tokenized"]["fingerprint"]
    rejected = dict(lake.query('select "table", count(*) from q group by 1', q=f"gold/tokenized/{fp}/quarantine"))
    for regime in Regime:
        for split in SPLITS:
            table = f"gold/tokenized/{fp}/{regime.value}/{split}"
            gold_rows = lake.read(gold_table(regime, split)).num_rows
            tokenized = lake.read(table).num_rows
            assert tokenized + rejected.get(table, 0) == gold_rows, table
            assert manifest["tokenized"]["tables"].get(table, {}).get("examples", 0) == tokenized  # none: no entry


def test_sft_labels_train_exactly_the_assistant_turns(built):
    from tokenizers import Tokenizer

    _, manifest, lake = built
    fp = manifest["tokenized"]["fingerprint"]
    tok = Tokenizer.from_file(f"{QWEN}/tokenizer.json")
    tokenized = lake.read(f"gold/tokenized/{fp}/sft/train").to_pylist()
    gold = {r["id"]: r for r in lake.read("gold/sft/train").to_pylist()}
    for row in tokenized:
        trained = tok.decode(
            [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100],
            skip_special_tokens=False,
        )
        assistants = [m for m in gold[row["id"]]["messages"] if m["role"] == "assistant"]
        for msg in assistants:
            assert (msg["content"] or "") in trained
        assert trained.count("<|im_end|>") == len(assistants)
        assert "<|im_start|>" not in trained and "You are Qwen" not in trained


def test_packed_rows_hold_whole_examples_within_max_length(built):
    _, manifest, lake = built
    fp = manifest["tokenized"]["fingerprint"]
    packed = lake.read(f"gold/tokenized/{fp}/sft_packed/train")
    lengths = pc.list_value_length(packed["input_ids"]).to_pylist()
    assert max(lengths) <= 1024
    for row, n in zip(packed.to_pylist(), lengths, strict=True):
        assert sum(row["seq_lengths"]) == n
        starts = [sum(row["seq_lengths"][:k]) for k in range(len(row["seq_lengths"]))]
        assert all(row["position_ids"][s] == 0 and row["labels"][s] == -100 for s in starts)
    unpacked = lake.read(f"gold/tokenized/{fp}/sft/train")
    assert sorted(i for r in packed["ids"].to_pylist() for i in r) == sorted(unpacked["id"].to_pylist())
    report = manifest["tokenized"]["packing"][f"gold/tokenized/{fp}/sft_packed/train"]
    assert report["bins"] == packed.num_rows and report["bins"] <= report["lower_bound"] * 1.002 + 1


def test_tokenizing_row_group_by_row_group_gives_the_same_tables(tmp_path, monkeypatch):
    """Each tokenize task reads one row group of a gold part; how many there are changes no tokenized row."""
    tokenize = {"tokenizer": QWEN, "max_length": 1024, "pack": {"enabled": True}}
    recipe = {"gold": {"tokenize": tokenize}, "engine": {"workers": 1}}
    lakes = {}
    for name, rows in (("whole", tasks.GOLD_ROW_GROUP), ("small", 16)):
        monkeypatch.setattr(tasks, "GOLD_ROW_GROUP", rows)
        (tmp_path / name).mkdir()
        lakes[name] = run_build(write_recipe(tmp_path / name, SOURCES, **recipe))
    (manifest, whole), (_, small) = lakes["whole"], lakes["small"]
    fp = manifest["tokenized"]["fingerprint"]
    files = small.files(gold_table(Regime.sft, "train"))
    assert pq.ParquetFile(files[0]).metadata.num_row_groups > 1
    tables = [f"gold/tokenized/{fp}/{regime.value}/{split}" for regime in Regime for split in SPLITS]
    tables += [f"gold/tokenized/{fp}/sft_packed/{split}" for split in SPLITS] + [f"gold/tokenized/{fp}/quarantine"]
    for table in tables:
        assert whole.read(table).equals(small.read(table)), table
    columns = ["id", "source", "file", "row", "stage", "action", "reason", "detail"]
    assert whole.read("ledger", columns).equals(small.read("ledger", columns))


def test_fingerprint_changes_with_settings_so_two_setups_never_mix(tmp_path):
    fps = set()
    for name, max_length in (("a", 1024), ("b", 1024), ("c", 2048)):
        (tmp_path / name).mkdir()
        tokenize = {"tokenizer": QWEN, "max_length": max_length}
        manifest, _ = run_build(write_recipe(tmp_path / name, SOURCES[3:], gold={"tokenize": tokenize}))
        fps.add((max_length, manifest["tokenized"]["fingerprint"]))
    assert len(fps) == 2


def test_a_missing_tokenizer_fails_the_build_before_reading_data(tmp_path):
    recipe = write_recipe(tmp_path, SOURCES[3:], gold={"tokenize": {"tokenizer": str(tmp_path / "nope")}})
    result = CliRunner().invoke(app, ["build", str(recipe)])
    assert result.exit_code == 2 and "gold.tokenize" in result.output and "tokenizer_config.json" in result.output
    assert not (tmp_path / "lake" / "bronze").exists()


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("tokenizer.json", "{not a tokenizer", "not a tokenizer the tokenizers library can load"),
        ("tokenizer_config.json", "[1, 2]", "expected a JSON object, got list"),
        ("tokenizer_config.json", "{broken", "cannot read it as JSON"),
    ],
)
def test_a_broken_tokenizer_folder_is_a_recipe_error_naming_the_file(tmp_path, file, text, message):
    import shutil

    folder = tmp_path / "tok"
    shutil.copytree(TOKENIZERS / "qwen2.5-instruct", folder)
    (folder / file).write_text(text)
    recipe = write_recipe(tmp_path, SOURCES[3:], gold={"tokenize": {"tokenizer": str(folder)}})
    result = CliRunner().invoke(app, ["build", str(recipe)])
    assert result.exit_code == 2, result.output
    said = result.output.replace("\n", "")  # rich wraps long lines
    assert message in said and file in said


def test_show_prints_tokens_with_the_trained_ones_marked(built):
    folder, manifest, lake = built
    fp = manifest["tokenized"]["fingerprint"]
    table = f"gold/tokenized/{fp}/sft/train"
    row = lake.read(table).to_pylist()[0]
    result = CliRunner().invoke(app, ["show", "--lake", str(folder / "lake"), "--table", table, "--id", row["id"]])
    assert result.exit_code == 0, result.output
    trained = sum(label != -100 for label in row["labels"])
    assert f"{len(row['input_ids'])} tokens, {trained} trained" in result.output
    assert "<|im_start|>assistant" in result.output
