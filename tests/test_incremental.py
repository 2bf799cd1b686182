"""Incremental builds: a rebuild reads only new or changed files (the rest comes from the ingest cache), bronze
only grows, and the lake it publishes is the one a clean build of the same inputs publishes."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from tests.conftest import EXAMPLES, run_build, write_recipe
from tests.test_build import gold_digest
from tunelake.lake import Lake

LEDGER = ["id", "source", "file", "row", "sub", "stage", "action", "reason", "detail"]  # all but run_id


def _inputs(folder: Path) -> list[dict]:
    """Real samples (Alpaca in two files, GSM8K, HH-RLHF) in a folder the test may change."""
    data = folder / "data"
    (data / "alpaca").mkdir(parents=True)
    alpaca = json.loads(gzip.decompress((EXAMPLES / "data" / "alpaca_300.json.gz").read_bytes()))
    (data / "alpaca" / "a.json").write_text(json.dumps(alpaca[:150]))
    shutil.copy(EXAMPLES / "data" / "gsm8k_train_300.jsonl.gz", data / "gsm8k.jsonl.gz")
    shutil.copy(EXAMPLES / "data" / "hh_rlhf_harmless_test_300.jsonl.gz", data / "hh.jsonl.gz")
    (folder / "alpaca_rest.json").write_text(json.dumps(alpaca[150:]))
    return [
        {"name": "alpaca", "path": str(data / "alpaca" / "*.json"), "license": "cc-by-nc-4.0", "origin": "distilled"},
        {"name": "gsm8k", "path": str(data / "gsm8k.jsonl.gz"), "license": "mit", "origin": "human"},
        {"name": "hh", "path": str(data / "hh.jsonl.gz"), "license": "mit", "origin": "human"},
    ]


def _stages(min_chars: int) -> list[dict]:
    return [{"use": "tests.stage_examples.QuarantineShortAnswers", "min_chars": min_chars}]


def _assert_same_lake(built: Lake, clean: Lake) -> None:
    assert gold_digest(built) == gold_digest(clean)
    for table in ("silver/records", "silver/quarantine"):
        assert built.read(table).equals(clean.read(table)), table
    assert built.read("ledger", LEDGER).equals(clean.read("ledger", LEDGER))
    for export in sorted((clean.root / "exports").rglob("*.*")):
        assert (
            export.read_bytes() == (built.root / "exports" / export.relative_to(clean.root / "exports")).read_bytes()
        )


def _clean_build(folder: Path, sources: list[dict], min_chars: int) -> Lake:
    folder.mkdir()
    return run_build(write_recipe(folder, sources, stages=_stages(min_chars), engine={"workers": 2}))[1]


def test_a_rebuild_reads_only_new_and_changed_files_and_equals_a_clean_build(tmp_path):
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    recipe = write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine={"workers": 2})
    first, lake = run_build(recipe)
    assert not any(i["reused"] for i in first["inputs"])
    bronze_before = {s["name"]: lake.read(f"bronze/{s['name']}").num_rows for s in sources}

    # Nothing changed: nothing is done, and the lake stands.
    again, _ = run_build(recipe)
    assert again["unchanged"] and again["run_id"] == first["run_id"] and len(lake.manifests()) == 1
    # A setting that changes no record (the workers): every file comes from the cache, the lake is the same.
    recipe = write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine={"workers": 1})
    again, _ = run_build(recipe)
    assert all(i["reused"] for i in again["inputs"]) and "unchanged" not in again
    _assert_same_lake(lake, _clean_build(tmp_path / "clean0", sources, 2))

    # One file added, one changed (GSM8K loses its last 50 rows): only those two are read.
    shutil.copy(tmp_path / "alpaca_rest.json", tmp_path / "data" / "alpaca" / "b.json")
    gsm8k = Path(sources[1]["path"])
    rows = gzip.decompress(gsm8k.read_bytes()).splitlines(keepends=True)
    gsm8k.write_bytes(gzip.compress(b"".join(rows[:250])))
    changed, _ = run_build(recipe)
    reused = {Path(i["path"]).name: i["reused"] for i in changed["inputs"]}
    assert reused == {"a.json": True, "b.json": False, "gsm8k.jsonl.gz": False, "hh.jsonl.gz": True}
    _assert_same_lake(lake, _clean_build(tmp_path / "clean1", sources, 2))
    assert changed["counts"]["alpaca"]["bronze"] == 300 and changed["counts"]["gsm8k"]["bronze"] == 250
    # Bronze only grows: the new file and the changed one's new content are added, nothing is copied twice.
    assert lake.read("bronze/alpaca").num_rows == bronze_before["alpaca"] + 150
    assert lake.read("bronze/gsm8k").num_rows == bronze_before["gsm8k"] + 250
    assert lake.read("bronze/hh").num_rows == bronze_before["hh"]

    # A stage's config changed: its work is redone for every file, and bronze gets nothing new.
    recipe = write_recipe(tmp_path / "lake", sources, stages=_stages(1), engine={"workers": 2})
    restaged, _ = run_build(recipe)
    assert not any(i["reused"] for i in restaged["inputs"])
    _assert_same_lake(lake, _clean_build(tmp_path / "clean2", sources, 1))
    assert lake.read("bronze/hh").num_rows == bronze_before["hh"]
    assert changed["stages"]["quarantine_short_answers"]["quarantined"]["short_answer"] > 0
    assert restaged["stages"]["quarantine_short_answers"]["quarantined"] == {}  # no answer is shorter than 1

    # Entries of files or settings no longer in use are removed.
    assert len(list((lake.root / "_cache" / "ingest").iterdir())) == 4


def test_a_file_that_moved_in_the_recipe_is_reused_at_its_new_place(tmp_path):
    """A new file that sorts first shifts every later file's ordinals: their cached candidates are staged again
    at the new place (not linked as they are), and the lake equals a clean build."""
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    recipe = write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine={"workers": 2})
    _, lake = run_build(recipe)
    shutil.copy(tmp_path / "alpaca_rest.json", tmp_path / "data" / "alpaca" / "0.json")
    moved, _ = run_build(recipe)
    assert {Path(i["path"]).name: i["reused"] for i in moved["inputs"]}["a.json"]
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2))


def test_a_rebuild_hashes_only_the_inputs_that_changed(tmp_path, monkeypatch):
    """Input sha256s are remembered by each file's stat: a fresh lake hashes nothing before reading (the reader
    hashes as it reads), a rebuild hashes only what changed, and a file rewritten with its old size and mtime
    put back is still seen as changed (its ctime moved)."""
    import os

    from tunelake import build

    hashed = []
    real = build.FileHashes.sha256.__globals__["file_sha256"]
    monkeypatch.setitem(build.FileHashes.sha256.__globals__, "file_sha256", lambda p: hashed.append(p) or real(p))
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    first, lake = run_build(write_recipe(tmp_path / "lake", sources, engine={"workers": 1}))
    assert hashed == [] and all(len(i["sha256"]) == 64 for i in first["inputs"])
    again, _ = run_build(write_recipe(tmp_path / "lake", sources, engine={"workers": 2}))
    assert hashed == [] and all(i["reused"] for i in again["inputs"])

    gsm8k = Path(sources[1]["path"])
    before = gsm8k.stat()
    rows = gzip.decompress(gsm8k.read_bytes()).splitlines(keepends=True)
    body = gzip.compress(b"".join(rows[:-1]), mtime=0)
    gsm8k.write_bytes(body + b"\0" * (before.st_size - len(body)))  # gzip ignores the trailing zeros
    os.utime(gsm8k, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed, _ = run_build(write_recipe(tmp_path / "lake", sources, engine={"workers": 1}))
    assert hashed == [str(gsm8k)] and changed["counts"]["gsm8k"]["bronze"] == len(rows) - 1
