"""Incremental builds: a rebuild reads only new or changed files (the rest comes from the ingest cache) and
publishes again only the windows where something that decides them changed (the rest comes from the publish
cache), bronze only grows, and the lake it publishes is the one a clean build of the same inputs publishes."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import tunelake.build as build_module
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
    # Stage reports too: a reused file's tallies come from its cache entry.
    assert built.manifests()[-1]["reports"] == clean.manifests()[-1]["reports"]
    for export in sorted((clean.root / "exports").rglob("*.*")):
        assert (
            export.read_bytes() == (built.root / "exports" / export.relative_to(clean.root / "exports")).read_bytes()
        )


def _clean_build(folder: Path, sources: list[dict], min_chars: int, **extra) -> Lake:
    folder.mkdir()
    settings = {"stages": _stages(min_chars), "engine": {"workers": 2}, **extra}
    return run_build(write_recipe(folder, sources, **settings))[1]


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


# Small chunks, so a source's candidates are staged in several parts and published in several windows.
SMALL_CHUNKS = {"workers": 2, "chunk_bytes": 20_000}


def _windows(manifest: dict) -> tuple[int, int]:
    """(windows, of which reused from the publish cache) of a build's publish pass."""
    publish = manifest["passes"]["publish"]
    return publish["windows"], publish["reused_windows"]


def test_a_rebuild_after_adding_a_source_links_every_earlier_window_and_equals_a_clean_build(tmp_path):
    """Publish links each unchanged window's outputs from the publish cache. An entry a killed build left half
    written (a `.tmp` folder, never renamed into place) is not read: its window is published again."""
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    first, lake = run_build(write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine=SMALL_CHUNKS))
    windows, reused = _windows(first)
    assert windows > len(sources) and reused == 0
    entries = lake.root / "_cache" / "publish"
    assert len(list(entries.iterdir())) == windows
    half = next(entries.iterdir())
    (half / "entry.json").unlink()
    half.rename(entries / f".{half.name}.tmp")

    sources.append({**sources[0], "name": "alpaca_rest", "path": str(tmp_path / "alpaca_rest.json")})
    grown, _ = run_build(write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine=SMALL_CHUNKS))
    assert _windows(grown)[0] > windows and _windows(grown)[1] == windows - 1
    # A reused window's ledger rows keep the run_id of the build that published it.
    splits = lake.query("select distinct run_id from l where stage = 'split'", l="ledger")
    assert sorted(r[0] for r in splits) == [first["run_id"], grown["run_id"]]
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2, engine=SMALL_CHUNKS))
    # An entry per window of the last build: the half-written one made again, its leftover removed.
    assert len(list(entries.iterdir())) == _windows(grown)[0] and (half / "entry.json").exists()


def test_a_changed_dedup_decision_publishes_only_its_window_again(tmp_path, monkeypatch):
    """A new file in an earlier source holds an exact duplicate of a record of a later one: exact dedup now keeps
    the new record and drops the old one, and only the window holding the old one is published again."""
    monkeypatch.setattr(build_module, "PUBLISH_ROWS", 1)  # a window per staged part
    alpaca = json.loads(gzip.decompress((EXAMPLES / "data" / "alpaca_300.json.gz").read_bytes()))
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "a.json").write_text(json.dumps(alpaca[:100]))
    (tmp_path / "late.json").write_text(json.dumps(alpaca[100:]))
    common = {"license": "cc-by-nc-4.0", "origin": "distilled"}
    sources = [
        {"name": "early", "path": str(tmp_path / "early" / "*.json"), **common},
        {"name": "late", "path": str(tmp_path / "late.json"), **common},
    ]
    (tmp_path / "lake").mkdir()
    recipe = write_recipe(tmp_path / "lake", sources, engine=SMALL_CHUNKS)
    first, lake = run_build(recipe)
    windows, _ = _windows(first)
    assert windows > 3

    (tmp_path / "early" / "b.json").write_text(json.dumps([alpaca[150]]))  # the 51st record of `late`
    changed, _ = run_build(recipe)
    assert changed["counts"]["late"]["dropped"] == first["counts"]["late"]["dropped"] + 1
    # b.json's window is new; of the earlier ones, all but the one that lost the record are reused.
    assert _windows(changed) == (windows + 1, windows - 1)
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2, stages=[], engine=SMALL_CHUNKS))


def test_a_window_whose_annotations_changed_is_published_again(tmp_path):
    """A global step that annotates every record anew when a source is added (and decides nothing else about
    the earlier ones): none of their windows is reused, and the lake equals a clean build."""
    stages = [{"use": "tests.stage_examples.GroupsByCount"}]
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    run_build(write_recipe(tmp_path / "lake", sources, stages=stages, engine=SMALL_CHUNKS))
    sources.append({**sources[0], "name": "alpaca_rest", "path": str(tmp_path / "alpaca_rest.json")})
    grown, lake = run_build(write_recipe(tmp_path / "lake", sources, stages=stages, engine=SMALL_CHUNKS))
    assert _windows(grown)[1] == 0
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2, stages=stages, engine=SMALL_CHUNKS))


def test_a_new_split_reuses_no_published_window(tmp_path):
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    run_build(write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine=SMALL_CHUNKS))
    split = {"split": {"validation": 0.1, "test": 0.1, "seed": 1}}
    resplit, lake = run_build(
        write_recipe(tmp_path / "lake", sources, stages=_stages(2), engine=SMALL_CHUNKS, gold=split)
    )
    assert all(i["reused"] for i in resplit["inputs"]) and _windows(resplit)[1] == 0
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2, engine=SMALL_CHUNKS, gold=split))


def test_a_chain_with_a_restage_pass_publishes_every_window_afresh(tmp_path):
    """A row-local stage between two global steps runs in a restage pass, whose staged parts have no identity for
    the publish cache: such a build publishes every window and keeps no entry."""
    restaged = [{"use": "tests.stage_examples.OneGroupPerSource"}, *_stages(2)]  # then exact_dedup
    sources = _inputs(tmp_path)
    (tmp_path / "lake").mkdir()
    run_build(write_recipe(tmp_path / "lake", sources, stages=restaged, engine=SMALL_CHUNKS))
    sources.append({**sources[0], "name": "alpaca_rest", "path": str(tmp_path / "alpaca_rest.json")})
    grown, lake = run_build(write_recipe(tmp_path / "lake", sources, stages=restaged, engine=SMALL_CHUNKS))
    assert "pass 1" in grown["passes"] and _windows(grown)[1] == 0
    assert list((lake.root / "_cache").glob("publish/*")) == []
    _assert_same_lake(lake, _clean_build(tmp_path / "clean", sources, 2, stages=restaged, engine=SMALL_CHUNKS))
