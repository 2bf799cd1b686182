"""End-to-end builds over the bundled example (real samples of HH-RLHF, Alpaca, Glaive, GSM8K, MATH, ...)."""

from __future__ import annotations

import hashlib

import tunelake.build as build_module
import tunelake.tasks as tasks_module
from tests.conftest import EXAMPLES, run_build, write_recipe
from tunelake.address import ordinal
from tunelake.engine.parts import Part
from tunelake.schema import Regime
from tunelake.tables import SPLITS
from tunelake.tables import gold as gold_table
from tunelake.tasks import Staged


def gold_digest(lake) -> str:
    """A hash of the content of every gold table (ids, order, every column), not of the files' bytes."""
    h = hashlib.sha256()
    for regime in Regime:
        for split in SPLITS:
            table = lake.read(gold_table(regime, split))
            h.update(f"{regime}/{split}:{table.num_rows}".encode())
            for batch in table.to_batches():  # row by row: how the rows fall into files must not matter
                for row in batch.to_pylist():
                    h.update(repr(row).encode())
    return h.hexdigest()


def test_counts_reconcile_per_source(tmp_path, example_sources):
    manifest, lake = run_build(write_recipe(tmp_path, example_sources))
    for source, c in manifest["counts"].items():
        assert c["bronze"] == c["silver"] + c["quarantined"] + c["dropped"], source
        assert lake.query("select count(*) from b", b=f"bronze/{source}")[0][0] == c["bronze"]
    silver = lake.query("select count(*), count(distinct id) from s", s="silver/records")[0]
    assert silver[0] == silver[1] == sum(c["silver"] for c in manifest["counts"].values())
    gold_rows = sum(manifest["gold"].values())
    assert gold_rows == silver[0]


def test_same_inputs_give_identical_gold_in_two_lakes(tmp_path, example_sources):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, lake_a = run_build(write_recipe(tmp_path / "a", example_sources))
    _, lake_b = run_build(write_recipe(tmp_path / "b", example_sources, engine={"workers": 2}))
    assert gold_digest(lake_a) == gold_digest(lake_b)


def test_global_steps_run_alone_give_the_same_lake(tmp_path, example_sources, monkeypatch):
    """A large global step runs in a process of its own (build.ALONE_ROWS); where it runs changes no output."""
    lakes = []
    for name, alone_rows in (("pool", 10**9), ("alone", 0)):
        monkeypatch.setattr(build_module, "ALONE_ROWS", alone_rows)
        (tmp_path / name).mkdir()
        silver = {"near_dedup": {}, "prompt_groups": {}}
        lakes.append(run_build(write_recipe(tmp_path / name, example_sources, silver=silver, engine={"workers": 2})))
    (_, pool), (_, alone) = lakes
    assert gold_digest(pool) == gold_digest(alone)
    assert pool.read("silver/records").equals(alone.read("silver/records"))


def test_global_steps_columns_made_a_few_rows_at_a_time_give_the_same_lake(tmp_path, example_sources, monkeypatch):
    """A global step's staged columns are made COLUMN_ROWS rows at a time; the slices change no output."""
    lakes = []
    for name, rows in (("whole", 10**9), ("slices", 7)):
        monkeypatch.setattr(tasks_module, "COLUMN_ROWS", rows)
        (tmp_path / name).mkdir()
        silver = {"near_dedup": {}, "prompt_groups": {}, "diversity": {}}
        lakes.append(run_build(write_recipe(tmp_path / name, example_sources, silver=silver, engine={"workers": 1})))
    (_, whole), (_, slices) = lakes
    assert gold_digest(whole) == gold_digest(slices)
    assert whole.read("silver/records").equals(slices.read("silver/records"))


def test_publishing_in_small_windows_writes_the_same_lake(tmp_path, example_sources, monkeypatch):
    """Publish takes windows of staged parts; where the windows fall changes the files, never the content."""
    engine = {"workers": 1, "chunk_bytes": 20_000}
    # The first source again: every row of the copy duplicates an earlier one, so windows open on duplicates.
    sources = [*example_sources, {**example_sources[0], "name": "again"}]
    lakes = {}
    # One window; windows closed on rows; windows closed on staged bytes.
    for name, rows, chunks in (("one", 10**9, 10**9), ("rows", 40, 10**9), ("bytes", 10**9, 1)):
        monkeypatch.setattr(build_module, "PUBLISH_ROWS", rows)
        monkeypatch.setattr(build_module, "PUBLISH_CHUNKS", chunks)
        (tmp_path / name).mkdir()
        lakes[name] = run_build(write_recipe(tmp_path / name, sources, engine=engine))
    manifest, one = lakes.pop("one")
    again = manifest["counts"]["again"]
    assert again["silver"] == 0 and again["dropped"] > 0
    columns = ["id", "source", "file", "row", "stage", "action", "reason", "detail"]
    for name, (_, other) in lakes.items():
        assert len(one.files("silver/records")) == 1 < len(other.files("silver/records")), name
        assert gold_digest(one) == gold_digest(other), name
        assert one.read("silver/records").equals(other.read("silver/records")), name
        assert one.read("ledger", columns).equals(other.read("ledger", columns)), name
        for export in sorted((one.root / "exports").rglob("*.*")):
            twin = other.root / "exports" / export.relative_to(one.root / "exports")
            assert export.read_bytes() == twin.read_bytes(), (name, export)


def test_publish_windows_close_on_rows_or_on_staged_bytes():
    rows, sizes = [10, 10, 30, 5, 5], [100, 100, 100, 900, 200]
    staged = [Staged(Part("c", f"{i}", n), Part("k", f"{i}", n), 0, 0) for i, n in enumerate(rows)]
    windows = build_module.group_parts(staged, sizes, max_rows=25, max_bytes=1000)
    # 10 + 10 rows; 30 rows, over the row limit, alone; 900 + 200 bytes would pass the byte limit.
    assert [[s.part.rows for s in w] for w in windows] == [[10, 10], [30], [5], [5]]


def test_publish_windows_close_where_a_source_too_large_for_one_window_starts_or_ends():
    """So adding a source (or a file to one) moves no window of a large source; small sources share windows."""
    rows, sources = [3, 3, 2, 1, 1, 4, 4], [0, 0, 1, 2, 3, 4, 4]  # sources 0 and 4 hold more than 5 rows
    first = [ordinal(source, 0, row) for row, source in enumerate(sources)]
    staged = [
        Staged(Part("c", f"{i}", n), Part("k", f"{i}", n), o, o)
        for i, (n, o) in enumerate(zip(rows, first, strict=True))
    ]
    windows = build_module.group_parts(staged, [1] * len(staged), max_rows=5, max_bytes=100)
    assert [[s.part.rows for s in w] for w in windows] == [[3], [3], [2, 1, 1], [4], [4]]


def test_detected_format_that_cannot_give_the_recipe_regime_quarantines_the_file(tmp_path):
    from tests.conftest import EXAMPLES

    source = {
        "name": "g",
        "path": str(EXAMPLES / "data" / "gsm8k_train_300.jsonl.gz"),
        "regime": "preference",
        "license": "mit",
        "origin": "human",
    }
    manifest, lake = run_build(write_recipe(tmp_path, [source], silver={"max_quarantine_rate": 1}))
    assert manifest["counts"]["g"]["quarantined"] == 300
    reasons = lake.query("select distinct reason, detail from q", q="silver/quarantine")
    assert len(reasons) == 1 and reasons[0][0] == "unknown_format"
    assert "detected format gsm8k gives rl, sft, not preference" in reasons[0][1]


def test_a_lake_path_with_quotes_and_spaces_builds(tmp_path, example_sources):
    folder = tmp_path / "o'brien's lake"
    folder.mkdir()
    manifest, lake = run_build(write_recipe(folder, example_sources[:1]))
    assert (
        manifest["counts"]["hh_harmless"]["silver"] == lake.query("select count(*) from s", s="silver/records")[0][0]
    )
    assert (lake.root / "exports" / "preference" / "train.parquet").exists()


def test_a_recipe_without_exports_builds_gold_and_writes_no_exports(tmp_path, example_sources):
    manifest, lake = run_build(write_recipe(tmp_path, example_sources[:1], gold={"export": []}))
    assert lake.read("gold/preference/train").num_rows == manifest["gold"]["gold/preference/train"] > 0
    assert not (lake.root / "exports").exists() and not (lake.root / "_staging").exists()


def test_a_build_that_cannot_write_removes_its_files_and_names_the_table(tmp_path, example_sources, monkeypatch):
    """A full disk halfway through publish: the error names the table and file, the lake still reads as the
    build before, and none of the failed build's parts or staging is left on the disk."""
    import errno

    import pytest

    from tunelake.engine import parts
    from tunelake.engine.parts import PartWriteError

    _, lake = run_build(write_recipe(tmp_path, example_sources, engine={"workers": 2}))
    # Another split: every window is published again (none comes from the publish cache).
    recipe = write_recipe(tmp_path, example_sources, engine={"workers": 1}, gold={"split": {"seed": 1}})
    before = gold_digest(lake)
    files = sorted(p for p in lake.root.rglob("*") if p.is_file() and "manifests" not in p.parts)
    write_table, calls = parts.pq.write_table, []

    def fills_up(data, where, **kwargs):
        calls.append(where)
        if "gold/sft/train" in str(where):  # publish has written silver and ledger parts by now
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(data, where, **kwargs)

    monkeypatch.setattr(parts.pq, "write_table", fills_up)
    with pytest.raises(PartWriteError, match="cannot write a part of table gold/sft/train to .*: No space left"):
        run_build(recipe)
    assert any("silver/records" in str(c) for c in calls) and any("ledger" in str(c) for c in calls)
    assert not (lake.root / "_staging").exists()
    assert sorted(p for p in lake.root.rglob("*") if p.is_file() and "manifests" not in p.parts) == files
    assert gold_digest(lake) == before


def test_a_build_that_keeps_no_record_after_one_that_exported_removes_the_exports(tmp_path):
    """Every record dropped (here: each is contaminated by itself as an eval set): the build publishes empty gold
    and no exports, instead of failing to move the old exports aside."""
    gsm8k = EXAMPLES / "data" / "gsm8k_train_300.jsonl.gz"
    source = {"name": "gsm8k", "path": str(gsm8k), "license": "mit", "origin": "human"}
    gold = {"export": ["jsonl"]}
    _, lake = run_build(write_recipe(tmp_path, [source], gold=gold))
    assert (lake.root / "exports" / "rl" / "train.jsonl").exists()
    itself = {"against": [{"name": "itself", "path": str(gsm8k), "field": "question"}]}
    manifest, lake = run_build(write_recipe(tmp_path, [source], gold=gold, silver={"decontaminate": itself}))
    assert manifest["counts"]["gsm8k"]["silver"] == 0 and manifest["counts"]["gsm8k"]["dropped"] == 300
    assert not (lake.root / "exports").exists()
    assert lake.read("gold/rl/train").num_rows == 0
