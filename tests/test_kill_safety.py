"""A build killed with SIGKILL at any point leaves every table readable, and a re-run gives the same gold."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deltalake import DeltaTable

from tests.conftest import REPO, run_build, write_recipe
from tests.test_build import gold_digest
from tunelake.lake import Lake

GSM8K = REPO / "examples" / "data" / "gsm8k_train_300.jsonl.gz"
BUILD = "import sys; from tunelake.cli import app; sys.argv = ['tunelake', 'build', sys.argv[1]]; app()"


def _corpus(folder: Path, copies: int = 100) -> list[dict]:
    """~30k GSM8K-derived RL rows (real questions, numbered variants) so a build takes a few seconds."""
    with gzip.open(GSM8K) as f:
        rows = [json.loads(line) for line in f]
    path = folder / "gsm8k_x100.jsonl"
    with path.open("w") as f:
        for copy in range(copies):
            for row in rows:
                f.write(
                    json.dumps({"question": f"{row['question']} (variant {copy})", "answer": row["answer"]}) + "\n"
                )
    return [{"name": "gsm8k", "path": str(path), "license": "mit", "origin": "human"}]


def _start_build(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_when(proc: subprocess.Popen, reached, moment: str) -> None:
    """SIGKILL the build and its workers, with no chance to clean up, once the lake reaches a state on disk."""
    while proc.poll() is None and not reached():
        time.sleep(0.002)
    assert proc.poll() is None, f"the build ended before the {moment} moment was seen"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _all_versions_readable(lake: Lake) -> None:
    for table in lake.tables():
        for version in range(lake.version(table) + 1):
            lake.read(table, version=version)


def test_sigkill_at_any_point_leaves_tables_readable_and_rerun_converges(tmp_path):
    sources = _corpus(tmp_path)
    (tmp_path / "clean").mkdir()
    _, clean = run_build(write_recipe(tmp_path / "clean", sources, engine={"workers": 1}))
    expected = gold_digest(clean)

    folder = tmp_path / "killed"
    folder.mkdir()
    # The first build on one worker: the killed ones (on two) then differ from it, or each would find nothing to do.
    run_build(write_recipe(folder, sources, engine={"workers": 1}))
    recipe = write_recipe(folder, sources, engine={"workers": 2})
    killed = Lake(folder / "lake")
    lake_dir = folder / "lake"
    silver_v, quarantine_v = killed.version("silver/records"), killed.version("silver/quarantine")
    moments = {
        # Each moment is a state of the lake on disk, so the kills land mid-build however fast the machine is.
        "canonicalize": lambda: (lake_dir / "_staging").exists() and any((lake_dir / "_staging").iterdir()),
        "publish": lambda: len(list((lake_dir / "silver/records").glob("*.parquet"))) > 1 + silver_v,
        # The first of the build's commits (a file test, not a Delta read): every other table is still to commit.
        # (Bronze, append-only, gets no commit: it holds the file already.)
        "mid-commit": lambda: (lake_dir / f"silver/quarantine/_delta_log/{quarantine_v + 1:020d}.json").exists(),
    }
    for name, reached in moments.items():
        _kill_when(_start_build(recipe), reached, name)
        _all_versions_readable(killed)
        if name == "publish":  # nothing commits before the end: the parts written so far belong to no version
            assert killed.orphans("none")
        silver_v, quarantine_v = killed.version("silver/records"), killed.version("silver/quarantine")
    assert killed.orphans("none")  # the last killed build's uncommitted parts...
    run_build(recipe)
    assert gold_digest(killed) == expected
    assert not killed.orphans("none")  # ...are removed by the next build


def test_a_build_killed_between_two_table_commits_reads_as_the_build_before(tmp_path):
    """Readers see every table at the last complete build's version; the next build completes the killed one."""
    (tmp_path / "clean").mkdir()
    changed = _corpus(tmp_path / "clean", copies=101)
    _, clean = run_build(write_recipe(tmp_path / "clean", changed, engine={"workers": 2}))

    folder = tmp_path / "killed"
    folder.mkdir()
    recipe = write_recipe(folder, _corpus(folder), engine={"workers": 2})
    run_build(recipe)
    lake = Lake(folder / "lake")
    published = lake.published()
    before = {table: lake.read(table) for table in lake.tables()}
    exports = {p: p.read_bytes() for p in sorted((lake.root / "exports").rglob("*.*"))}

    _corpus(folder, copies=101)  # the next build has more rows: every table changes
    bronze = lake.root / "bronze/gsm8k/_delta_log"
    first_commit = bronze / f"{published['bronze/gsm8k'] + 1:020d}.json"
    _kill_when(_start_build(recipe), first_commit.exists, "first commit")

    assert DeltaTable(str(lake.path("bronze/gsm8k"))).version() == published["bronze/gsm8k"] + 1
    assert DeltaTable(str(lake.path("ledger"))).version() == published["ledger"]  # still to commit
    assert lake.published() == published
    for table, rows in before.items():
        assert lake.read(table).equals(rows), table
    assert {p: p.read_bytes() for p in sorted((lake.root / "exports").rglob("*.*"))} == exports

    run_build(recipe)
    assert gold_digest(lake) == gold_digest(clean)
    # Bronze is append-only: the first file's rows, then the changed file's, once (not the killed build's too).
    assert lake.read("bronze/gsm8k").num_rows == before["bronze/gsm8k"].num_rows + clean.read("bronze/gsm8k").num_rows
    assert all(lake.version(t) > v for t, v in published.items())
