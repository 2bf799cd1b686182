"""The ingest cache: what the row-local ingest pass made of one input file, kept for the next build.

An entry is keyed by everything that decides that output: the file's sha256 and path, its source's settings,
the validation limits, the chunk size, the stages fused into the pass (names, versions, configs), the global
steps whose columns it stages, and the tunelake version. A rebuild reuses an entry instead of reading and
canonicalizing the file again: its ledger and quarantine parts are linked back into their tables, its staged
candidates re-staged with the file's current place in the recipe (the ordinals). Entries live in `_cache/` in
the lake, which no cleanup of a build touches; those the last build did not use are removed after it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import __version__
from tunelake.address import ROW_BITS, SUB_BITS, ordinal
from tunelake.engine.parts import Part, read_arrow, write_arrow, write_part
from tunelake.runner import StageCount
from tunelake.silver.canonicalize import STAGE_VERSION
from tunelake.tasks import CanonicalizeDone, Staged

CACHE = "_cache/ingest"
_WITHIN_FILE = (1 << (ROW_BITS + SUB_BITS)) - 1  # the row and sub bits of an ordinal


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def entry_key(sha256: str, path: str, settings: dict) -> str:
    """The key of a file's entry; settings holds everything else that decides the pass's output."""
    what = {"sha256": sha256, "path": path, "tunelake": __version__, "ingest": STAGE_VERSION, **settings}
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class CachedChunk:
    """One chunk's outputs: its parts by table (bronze excepted: bronze keeps the file already), and its counts."""

    parts: list[tuple[str, str, int]]  # (table, file name in the entry, rows)
    candidates: tuple[str, int, int, int] | None  # (file name, rows, first, last ordinal within the file)
    columns: str | None  # the staged columns' file name
    counts: dict[str, int]
    stage_counts: list[dict]
    per_source: list[tuple[str, str, int]]


@dataclass
class Entry:
    report: dict  # the file's FileReport fields, and its format
    chunks: list[CachedChunk]


class IngestCache:
    def __init__(self, lake_root: Path):
        self.root = lake_root / CACHE

    def has(self, key: str) -> bool:
        return (self.root / key / "entry.json").exists()

    def get(self, key: str) -> Entry | None:
        path = self.root / key / "entry.json"
        if not path.exists():
            return None
        data = orjson.loads(path.read_bytes())
        return Entry(data["report"], [CachedChunk(**c) for c in data["chunks"]])

    def put(self, key: str, report: dict, chunks: list[CanonicalizeDone], root: Path) -> None:
        """Link a freshly read file's parts into a new entry (written whole, then renamed into place)."""
        folder = self.root / key
        tmp = self.root / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cached = []
        for seq, done in enumerate(chunks):
            names = []
            for part in done.cached_parts():
                name = f"{seq:07d}-{part.table.replace('/', '_')}.parquet"
                os.link(root / part.table / part.name, tmp / name)
                names.append((part.table, name, part.rows))
            facts = chunk_facts(done)
            candidates = columns = None
            if done.staged is not None:
                candidates = (f"{seq:07d}-candidates.arrow", done.staged.part.rows, facts["first"], facts["last"])
                os.link(root / done.staged.part.table / done.staged.part.name, tmp / candidates[0])
                if done.staged.columns is not None:
                    columns = f"{seq:07d}-columns.parquet"
                    os.link(root / done.staged.columns.table / done.staged.columns.name, tmp / columns)
            cached.append(
                CachedChunk(names, candidates, columns, facts["counts"], facts["stage_counts"], facts["per_source"])
            )
        entry = {"report": report, "chunks": [asdict(c) for c in cached]}
        (tmp / "entry.json").write_bytes(orjson.dumps(entry))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    def keep_only(self, keys: set[str]) -> None:
        """Remove the entries the last build did not use."""
        if self.root.exists():
            for folder in self.root.iterdir():
                if folder.name not in keys:
                    shutil.rmtree(folder, ignore_errors=True)


def within_file(ords: int) -> int:
    return ords & _WITHIN_FILE


@dataclass(frozen=True)
class ReuseTask:
    root: Path
    entry: Path  # the entry's folder
    chunk: CachedChunk
    source: str
    source_index: int
    file_index: int
    path: str
    candidates_table: str
    columns_table: str | None
    name: str  # the part name this build gives the chunk's parts


def run_reuse(task: ReuseTask) -> CanonicalizeDone:
    """A cached chunk back into this build: its ledger and quarantine parts linked in under this build's part
    name, its candidates and staged columns with ordinals for the file's place in this recipe."""
    parts = []
    for table, name, rows in task.chunk.parts:
        folder = task.root / table
        folder.mkdir(parents=True, exist_ok=True)
        os.link(task.entry / name, folder / task.name)
        parts.append(Part(table, task.name, rows))
    base = ordinal(task.source_index, task.file_index)
    staged = None
    if task.chunk.candidates is not None:
        name, _rows, first, last = task.chunk.candidates
        candidates = write_arrow(
            task.root, task.candidates_table, task.name, _placed(read_arrow(task.entry / name), base)
        )
        columns = None
        if task.chunk.columns is not None and task.columns_table is not None:
            data = _placed(pq.read_table(task.entry / task.chunk.columns), base)
            columns = write_part(task.root, task.columns_table, task.name, data)
        staged = Staged(candidates, columns, base | first, base | last)
    per_source = Counter({(s, a): n for s, a, n in task.chunk.per_source})
    done = CanonicalizeDone(parts, staged, stage_counts(task.chunk), per_source)
    done.source, done.file, done.counts, done.fresh = task.source, task.path, task.chunk.counts, False
    return done


def chunk_facts(done: CanonicalizeDone) -> dict:
    """What an entry records of a freshly read chunk besides its files."""
    staged = done.staged
    return {
        "counts": done.counts,
        "stage_counts": [
            {**vars(c), "dropped": dict(c.dropped), "quarantined": dict(c.quarantined)} for c in done.stage_counts
        ],
        "per_source": [(s, a, n) for (s, a), n in done.per_source.items()],
        "first": within_file(staged.first) if staged else 0,
        "last": within_file(staged.last) if staged else 0,
    }


def _placed(table: pa.Table, base: int) -> pa.Table:
    """The rows with their `_ord` moved to the file's current source and file index."""
    ords = pc.bit_wise_or(pc.bit_wise_and(table["_ord"], _WITHIN_FILE), base)
    return table.set_column(table.schema.get_field_index("_ord"), table.schema.field("_ord"), ords)


def stage_counts(chunk: CachedChunk) -> list[StageCount]:
    counts = []
    for c in chunk.stage_counts:
        count = StageCount(**{k: v for k, v in c.items() if k not in ("dropped", "quarantined")})
        count.dropped, count.quarantined = Counter(c["dropped"]), Counter(c["quarantined"])
        count.seconds = 0.0  # reused: no time spent in the stage this build
        counts.append(count)
    return counts
