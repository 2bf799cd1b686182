"""Opening an SQLite file that several processes share: WAL, a busy timeout and a recorded schema version.

The lake's RL caches (requests, rewards) are each one SQLite file under `<lake>/_rl/`, written by every process of
a run at once. Each records its layout in a `schema_version` table, so that a file of another version, or an
SQLite file that is something else, is refused with an error naming the path instead of being misread.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar, Self

BUSY_TIMEOUT_S = 60.0  # a writer holds the lock for one short transaction; waiting this long means something is stuck
CHECKPOINT_PAGES = 10_000  # of 4 KiB: the WAL grows to about 40 MiB before it is folded into the file
CACHE_KIB = 32 * 1024  # SQLite's page cache per handle: a bound, whatever the file's size


def open_versioned(
    path: Path, name: str, version: int, schema: str, error: type[Exception], *, threads: bool = False
) -> sqlite3.Connection:
    """A connection to the file at `path` holding schema `name` at `version`, created with `schema` if new.

    Raises `error` for a file that is not SQLite, an SQLite file without this schema, or another version of it.
    `threads`: the connection may be used from several threads (the caller serialises its use).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=not threads)
    try:
        _open(db, path, name, version, schema, error)
    except sqlite3.DatabaseError as e:
        db.close()
        raise error(f"{path} is not a readable {name} file: {e}") from e
    except error:
        db.close()
        raise
    return db


def _open(db: sqlite3.Connection, path: Path, name: str, version: int, schema: str, error: type[Exception]) -> None:
    tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "schema_version" not in tables:  # checked first: a foreign file is left as it was
        raise error(
            f"{path} is an SQLite file but not a {name} file (no schema_version table; "
            f"tables: {', '.join(sorted(tables))})"
        )
    # WAL: readers never block the writer nor it them. NORMAL: a commit is not synced, so a power cut may lose the
    # last entries, which are then made again; the file itself stays intact.
    _wal(db)
    db.execute("PRAGMA synchronous=NORMAL")
    # Keys are hashes, so a batch's inserts land on pages all over the tables: checkpointing every 40 MiB of WAL (not
    # SQLite's 4 MiB) and a 32 MiB page cache (not 2) doubled the reward cache's put_many at 100k keys
    # (bench/reward_cache.py).
    db.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    if not tables:
        # IMMEDIATE: processes opening a new file at once create it one after another; all but the first find it
        # made once they hold the lock.
        db.execute("BEGIN IMMEDIATE")
        made = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone()
        if not made:
            db.execute("CREATE TABLE schema_version (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            for statement in schema.split(";"):  # not executescript: it would commit first
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?, ?)", (name, version))
        db.execute("COMMIT")
    row = db.execute("SELECT version FROM schema_version WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise error(f"{path} is not a {name} file (no {name} schema version)")
    if row[0] != version:
        raise error(
            f"{path} is a {name} file of schema version {row[0]}; this tunelake reads version {version} "
            "(move the file aside to start a new one)"
        )


def _wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL, waiting while another process holds it (as when several create it at once)."""
    # SQLite answers a journal mode change on a locked file at once, without its busy handler; WAL is kept in the
    # file, so this waits only while a new file is being made.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SharedFile:
    """A process's handle on one of the lake's RL SQLite files (its threads share it, one statement or transaction
    at a time under `_lock`), with what it looked up and stored counted."""

    LAKE_PATH: ClassVar[str]  # the file's place in the lake
    NAME: ClassVar[str]  # the schema's name, recorded in the file
    VERSION: ClassVar[int]
    SCHEMA: ClassVar[str]
    Error: ClassVar[type[Exception]]

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.stored = 0  # entries this handle inserted
        self.raced = 0  # entries another writer had stored first (the first writer's are kept and given)
        self._lock = threading.Lock()
        self._db = open_versioned(self.path, self.NAME, self.VERSION, self.SCHEMA, self.Error, threads=True)

    @classmethod
    def of_lake(cls, lake_root: str | Path) -> Self:
        """The file of the lake at `lake_root`."""
        return cls(Path(lake_root) / cls.LAKE_PATH)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def figures(self) -> dict[str, int | float]:
        """This handle's counts: hits, misses, hit rate, entries stored and raced."""
        looked_up = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / looked_up if looked_up else 0.0,
            "stored": self.stored,
            "raced": self.raced,
        }
