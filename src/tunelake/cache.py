"""The ingest cache: what the row-local ingest pass made of one input file, kept for the next build.

An entry is keyed by everything that decides that output: the file's sha256 and path, its source's settings,
the validation limits, the chunk size, the stages fused into the pass (names, versions, configs), the global
steps whose columns it stages, and the tunelake version. A rebuild reuses an entry instead of reading and
canonicalizing the file again: its ledger and quarantine parts are linked back into their tables, and so are its
staged candidates, unless the file moved in the recipe (then they are staged again with its new ordinals). Entries
live in `_cache/` in the lake, which no cleanup of a build touches; those the last build did not use are removed
after it.

Each input file's sha256 is remembered beside them by the file's stat (device, inode, size, mtime and ctime, as
git's index does; any write to a file changes its ctime), so a rebuild does not read unchanged inputs to hash them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import __version__
from tunelake.address import ROW_BITS, SUB_BITS, ordinal
from tunelake.engine.parts import Part, read_arrow, write_arrow, write_part
from tunelake.ingest.adapters.pairs import ratings_policy
from tunelake.ingest.readers import file_sha256
from tunelake.recipe import Recipe
from tunelake.runner import Segment, StageCount
from tunelake.silver.canonicalize import STAGE_VERSION
from tunelake.tasks import CanonicalizeDone, Staged

CACHE = "_cache/ingest"
ENTRY_FORMAT = 3  # what an entry records (chunk_facts); bump when it changes, so older entries are not read
_TALLIES = ("tally", "profile")  # StageCount's Counters keyed by tuples (2: tally; 3: profile)
HASHES = "_cache/hashes.json"
_WITHIN_FILE = (1 << (ROW_BITS + SUB_BITS)) - 1  # the row and sub bits of an ordinal


def entry_key(sha256: str, path: str, settings: dict) -> str:
    """The key of a file's entry; settings holds everything else that decides the pass's output."""
    what = {"sha256": sha256, "path": path, "tunelake": __version__, "ingest": STAGE_VERSION, **settings}
    what["format"] = ENTRY_FORMAT
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def ingest_settings(recipe: Recipe, segment: Segment) -> dict[str, dict]:
    """Per source, everything but a file's contents and path that decides what the ingest pass makes of it."""
    common = {
        "max_chars": recipe.silver.max_chars,
        "ratings": ratings_policy(recipe).model_dump(),  # how rated completions become pairs (pairs.RatingsPolicy)
        "chunk_bytes": recipe.engine.chunk_bytes,
        "stages": [s.describe() for s in segment.rows],
        "columns_for": [step.columns_key() for step in segment.steps],
    }
    return {s.name: {**common, "source": s.model_dump(mode="json", exclude={"path"})} for s in recipe.sources}


class FileHashes:
    """Input files' sha256 by their stat, as of the last build that saw them."""

    def __init__(self, lake_root: Path):
        self.path = lake_root / HASHES
        self.known = orjson.loads(self.path.read_bytes()) if self.path.exists() else {}
        self.stats: dict[str, list[int]] = {}  # this build's inputs, stat'ed before anything reads them

    def sha256(self, path: str, hash_now: bool) -> str | None:
        """The file's sha256: remembered if the file has not changed since, else hashed now (or None where
        hash_now is false: the reader hashes what it reads anyway)."""
        st = os.stat(path)
        self.stats[path] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        known = self.known.get(path)
        if known is not None and known[:-1] == self.stats[path]:
            return known[-1]
        return file_sha256(path) if hash_now else None

    def save(self, shas: dict[str, str]) -> None:
        """Remember this build's inputs (with their stat from before they were read: a file written during the
        build does not match it next time, and is hashed again)."""
        known = {path: [*self.stats[path], sha] for path, sha in shas.items() if sha}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(orjson.dumps(known))
        os.replace(tmp, self.path)


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
        self.lake_root, self.root = lake_root, lake_root / CACHE

    def has(self, key: str) -> bool:
        return (self.root / key / "entry.json").exists()

    def get(self, key: str) -> Entry | None:
        path = self.root / key / "entry.json"
        if not path.exists():
            return None
        data = orjson.loads(path.read_bytes())
        return Entry(data["report"], [CachedChunk(**c) for c in data["chunks"]])

    def put(self, key: str, report: dict, chunks: list[CanonicalizeDone]) -> None:
        """Link a freshly read file's parts into a new entry (written whole, then renamed into place)."""
        root = self.lake_root
        with new_entry(self.root, key) as tmp:
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
                counts, per_source = facts["counts"], facts["per_source"]
                cached.append(CachedChunk(names, candidates, columns, counts, facts["stage_counts"], per_source))
            entry = {"report": report, "chunks": [asdict(c) for c in cached]}
            (tmp / "entry.json").write_bytes(orjson.dumps(entry))

    def put_fresh(self, keys: dict[str, str], fresh: dict[str, list[CanonicalizeDone]], reports: dict) -> None:
        """Keep what the ingest pass made of each file read this build (reports: path -> its FileReport fields
        and format), for the next build; drop the entries this build did not use."""
        for path, chunks in fresh.items():
            self.put(keys[path], reports[path], chunks)
        keep_only(self.root, set(keys.values()))


@contextmanager
def new_entry(root: Path, key: str) -> Iterator[Path]:
    """A folder to fill with a cache entry's files, renamed to root/key once complete: a build killed meanwhile
    leaves a `.<key>.tmp` folder, which no build reads and the next cleanup removes."""
    tmp = root / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    folder = root / key
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def keep_only(root: Path, keys: set[str]) -> None:
    """Remove the entries in a cache's folder that the last build did not use (and any half-written one)."""
    if root.exists():
        for folder in root.iterdir():
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
    name, its candidates and staged columns too where the file has the same place in this recipe (else they are
    rewritten with the ordinals of its new place)."""
    parts = [linked(task.entry / name, task.root, table, task.name, rows) for table, name, rows in task.chunk.parts]
    base = ordinal(task.source_index, task.file_index)
    staged = None
    if task.chunk.candidates is not None:
        name, _rows, first, last = task.chunk.candidates
        cached = read_arrow(task.entry / name)
        # Staged with the file at this place in the recipe (the usual case): linked in, not written again.
        here = cached.num_rows == 0 or cached["_ord"][0].as_py() & ~_WITHIN_FILE == base
        if here:
            candidates = linked(task.entry / name, task.root, task.candidates_table, task.name, cached.num_rows)
        else:
            candidates = write_arrow(task.root, task.candidates_table, task.name, _placed(cached, base))
        columns = None
        if task.chunk.columns is not None and task.columns_table is not None:
            source, table = task.entry / task.chunk.columns, task.columns_table
            if here:
                columns = linked(source, task.root, table, task.name, cached.num_rows)
            else:
                columns = write_part(task.root, table, task.name, _placed(pq.read_table(source), base))
        staged = Staged(candidates, columns, base | first, base | last)
    per_source = Counter({(s, a): n for s, a, n in task.chunk.per_source})
    done = CanonicalizeDone(parts, staged, reused_counts(task.chunk.stage_counts), per_source)
    done.source, done.file, done.counts, done.fresh = task.source, task.path, task.chunk.counts, False
    return done


def linked(source: Path, root: Path, table: str, name: str, rows: int) -> Part:
    """A cached file as a part of a table, under this build's part name (a hard link: nothing is copied)."""
    folder = root / table
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(name).with_suffix(source.suffix).name
    os.link(source, path)
    return Part(table, path.name, rows)


def chunk_facts(done: CanonicalizeDone) -> dict:
    """What an entry records of a freshly read chunk besides its files."""
    staged = done.staged
    return {
        "counts": done.counts,
        "stage_counts": counts_facts(done.stage_counts),
        "per_source": [(s, a, n) for (s, a), n in done.per_source.items()],
        "first": within_file(staged.first) if staged else 0,
        "last": within_file(staged.last) if staged else 0,
    }


def _placed(table: pa.Table, base: int) -> pa.Table:
    """The rows with their `_ord` moved to the file's current source and file index."""
    ords = pc.bit_wise_or(pc.bit_wise_and(table["_ord"], _WITHIN_FILE), base)
    return table.set_column(table.schema.get_field_index("_ord"), table.schema.field("_ord"), ords)


def counts_facts(counts: list[StageCount]) -> list[dict]:
    """Stage counts as an entry records them (tallies' keys as lists: JSON has no tuples)."""
    return [
        {
            **vars(c),
            "dropped": dict(c.dropped),
            "quarantined": dict(c.quarantined),
            **{name: list(getattr(c, name).items()) for name in _TALLIES},
        }
        for c in counts
    ]


def reused_counts(facts: list[dict]) -> list[StageCount]:
    """An entry's stage counts back, as counts of this build (which spent no time in the stages)."""
    counts = []
    for c in facts:
        count = StageCount(**{k: v for k, v in c.items() if k not in ("dropped", "quarantined", *_TALLIES)})
        count.dropped, count.quarantined = Counter(c["dropped"]), Counter(c["quarantined"])
        for name in _TALLIES:
            setattr(count, name, Counter({tuple(key): n for key, n in c[name]}))
        count.seconds = 0.0  # reused: no time spent in the stage this build
        counts.append(count)
    return counts
