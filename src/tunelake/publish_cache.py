"""The publish cache: what publish made of one window, kept for the next build.

An entry is keyed by everything that decides a window's outputs: the identity of each of its staged parts (its
file's ingest cache key, the chunk's place in the file, and its first ordinal, which places the file in the
recipe), the ordinals global steps removed from it, the annotations of its ordinals, and the publish settings
(silver's schema, the split, the last segment's stages, whether gold is staged for exports, the tunelake
version). A rebuild links an entry's silver, quarantine, ledger and gold parts (and gold's Arrow staging) into
this build under its part names instead of publishing the window again; their ledger rows keep the run_id of the
build that made them, as the ingest cache's do. Only parts the ingest pass staged have an identity: a window of a
restage pass's parts (a chain with a segment between two global steps) is published afresh every build.

Entries live in `_cache/publish` beside the ingest cache. They are written after a build has published, whole,
then renamed into place; those the last build did not use are removed after it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from tunelake import __version__, tables
from tunelake.cache import counts_facts, keep_only, linked, new_entry, reused_counts
from tunelake.engine.parts import part_name
from tunelake.recipe import Split
from tunelake.stage import RowLocalStage
from tunelake.tasks import PublishDone, PublishTask, run_publish

CACHE = "_cache/publish"
ENTRY = "entry.json"
VERSION = "1"  # bump when publish makes other outputs of the same window and settings


def publish_settings(
    silver: pa.Schema, gold: dict[str, pa.Schema], split: Split, stages: tuple[RowLocalStage, ...], stage_gold: bool
) -> bytes:
    """Everything besides a window's rows, decisions and annotations that decides what publish makes of it."""
    what = {
        "publish": VERSION,
        "tunelake": __version__,
        "silver": hashlib.sha256(silver.serialize()).hexdigest(),
        "gold": {str(regime): hashlib.sha256(schema.serialize()).hexdigest() for regime, schema in gold.items()},
        "split": split.model_dump(mode="json"),
        "stages": [s.describe() for s in stages],
        "stage_gold": stage_gold,
    }
    return orjson.dumps(what, option=orjson.OPT_SORT_KEYS)


def part_identity(ingest_key: str, chunk: int, first: int) -> str:
    """What decides a part the ingest pass staged: its file's ingest cache key, the chunk's place in the file and
    its first ordinal (which places the file in the recipe)."""
    return f"{ingest_key}:{chunk}:{first}"


def window_key(settings: bytes, parts: list[str | None], decided: np.ndarray) -> str | None:
    """What the parent knows of a window's key: the settings, its staged parts' identities and the ordinals
    removed from it (the worker adds its annotations); None where a part has no identity."""
    if None in parts:
        return None
    h = hashlib.sha256(settings)
    h.update(orjson.dumps(parts))
    h.update(decided.astype(np.int64).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CachedPublish:
    task: PublishTask
    key: str | None  # window_key; None: published afresh, not kept


def run_cached_publish(cached: CachedPublish) -> PublishDone:
    """A window's outputs linked from its cache entry where there is one, else published (and keyed, for the
    parent to keep once the build has published)."""
    task = cached.task
    notes = task.window.notes()
    if cached.key is None:
        return run_publish(task, notes)
    key = _with_notes(cached.key, notes)
    entry = task.root / CACHE / key
    done = _reuse(entry, task) if (entry / ENTRY).exists() else run_publish(task, notes)
    done.key = key
    return done


def _with_notes(key: str, notes: list[pa.Table]) -> str:
    """The window's key: the parent's part, and the annotations of its ordinals (as Arrow IPC, one chunk each)."""
    h = hashlib.sha256(key.encode())
    for table in notes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        h.update(sink.getvalue())
    return h.hexdigest()[:32]


def _reuse(entry: Path, task: PublishTask) -> PublishDone:
    """An entry's parts linked in under this build's part name (a staging part into this build's staging)."""
    data = orjson.loads((entry / ENTRY).read_bytes())
    name = part_name(task.run_id, task.step, task.seq)
    parts = [
        linked(entry / file, task.root, tables.staged(task.run_id, table) if staged else table, name, rows)
        for table, file, rows, staged in data["parts"]
    ]
    per_source = Counter({(s, a): n for s, a, n in data["per_source"]})
    done = PublishDone(parts, None, reused_counts(data["stage_counts"]), per_source, Counter(data["silver"]))
    done.reused = True
    return done


class PublishCache:
    def __init__(self, lake_root: Path):
        self.lake_root, self.root = lake_root, lake_root / CACHE

    def put(self, run_id: str, done: PublishDone) -> None:
        """Link a window's freshly published parts into a new entry."""
        staging = tables.staged(run_id, "")
        with new_entry(self.root, done.key) as tmp:
            parts = []
            for i, part in enumerate(done.parts):
                file = f"{i:02d}{Path(part.name).suffix}"
                os.link(self.lake_root / part.table / part.name, tmp / file)
                staged = part.table.startswith(staging)
                parts.append((part.table.removeprefix(staging) if staged else part.table, file, part.rows, staged))
            entry = {
                "parts": parts,
                "stage_counts": counts_facts(done.stage_counts),
                "per_source": [(s, a, n) for (s, a), n in done.per_source.items()],
                "silver": dict(done.silver),
            }
            (tmp / ENTRY).write_bytes(orjson.dumps(entry))

    def put_fresh(self, run_id: str, windows: list[PublishDone]) -> None:
        """Keep what publish made of each window this build published afresh, for the next build; drop the entries
        this build did not use."""
        for done in windows:
            if done.key is not None and not done.reused:
                self.put(run_id, done)
        keep_only(self.root, {done.key for done in windows if done.key is not None})
