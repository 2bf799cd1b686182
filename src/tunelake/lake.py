"""The lake on disk: Delta tables written as streamed Parquet parts and one commit each, and build manifests."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

from tunelake import tables
from tunelake.engine.parts import Part, part_name, write_part

_last_stamp = 0  # microseconds since the epoch of the last id this process made


def new_run_id() -> str:
    """The id of a build or any other write to the lake: its time to the microsecond, then a random suffix.

    Ids sort in the order they were made (manifests are read in that order, and the newest one is the published
    build): two builds within one second once sorted by their random suffixes. Within a process they are strictly
    increasing even when the clock reads the same microsecond twice.
    """
    global _last_stamp
    _last_stamp = max(_last_stamp + 1, time.time_ns() // 1000)
    stamp = datetime.fromtimestamp(_last_stamp // 1_000_000, UTC)
    return f"{stamp:%Y%m%dT%H%M%S}{_last_stamp % 1_000_000:06d}Z-{uuid.uuid4().hex[:6]}"


class LakeBusy(RuntimeError):
    """Another build holds the lake."""


class Lake:
    """A directory of Delta tables named like `silver/records`, plus `manifests/` and `exports/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the lake for one build; a second build on the same lake fails at once instead of interleaving.

        With wait, block until the holder is done instead (a long-running writer, such as an RL run appending
        rollouts, pauses while a build runs rather than failing mid-run)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LakeBusy(f"another tunelake build is running on {self.root}") from None
            yield

    def path(self, table: str) -> Path:
        return self.root / table

    def tables(self) -> list[str]:
        """Every table a complete build published, sorted (a table only a killed build wrote is not one)."""
        return sorted(self.published())

    def stored_tables(self) -> list[str]:
        """Every Delta table on disk, published or not (what cleanup looks at)."""
        found = [p.parent.relative_to(self.root).as_posix() for p in self.root.glob("**/_delta_log")]
        return sorted(t for t in found if not t.startswith(tables.STAGING))

    def published(self) -> dict[str, int]:
        """Each table's version as of the newest complete build that wrote it.

        A build's manifest, written after all its commits, is what publishes them: a build killed between two
        table commits leaves the lake reading as the build before it, never silver at a new version beside a
        ledger at the old one.
        """
        versions: dict[str, int] = {}
        for manifest in self.manifests():
            versions.update(manifest["tables"])
        # Committed whole outside any build (`tunelake freeze`, the RL data plane): the newest commit is published.
        # Read from the log's file names, as every read of the lake asks this.
        for table in tables.OUTSIDE_BUILDS:
            commits = [int(p.stem) for p in (self.path(table) / "_delta_log").glob("*.json")]
            if commits:
                versions[table] = max(commits)
        return versions

    def exists(self, table: str) -> bool:
        return table in self.published()

    def version(self, table: str) -> int | None:
        return self.published().get(table)

    def files(self, table: str, version: int | None = None) -> list[str]:
        """The Parquet files of one version (by default the published one), in write order (part names sort in
        the order they were written)."""
        published = self.published()
        if table not in published:
            raise FileNotFoundError(f"no table {table!r} in lake {self.root}")
        version = published[table] if version is None else version
        # file_uris are URIs: a space in the lake's path comes back as %20.
        return sorted(unquote(u) for u in DeltaTable(str(self.path(table)), version=version).file_uris())

    def schema(self, table: str) -> pa.Schema:
        return pa.schema(DeltaTable(str(self.path(table)), version=self.version(table)).schema())

    # Reads go through pyarrow.parquet on the version's file list: deltalake's to_pyarrow_table was seen
    # to abort the interpreter at exit, and the file list keeps write order.
    def read(self, table: str, columns: list[str] | None = None, version: int | None = None) -> pa.Table:
        files = self.files(table, version)
        if not files:
            schema = self.schema(table)
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)

    def query(self, sql: str, params: dict | None = None, **tables: str) -> list[tuple]:
        """Rows of a DuckDB query where each keyword names a lake table: query("select * from l", l="ledger")."""
        con = duckdb.connect()
        for alias, table in tables.items():
            files = self.files(table)
            if files:
                con.read_parquet(files).create_view(alias)
            else:
                con.register(alias, self.schema(table).empty_table())
        return con.execute(sql, params or {}).fetchall()

    def commit(self, table: str, schema: pa.Schema, parts: list[Part], run_id: str, append: bool = False) -> int:
        """Publish the parts as the table's new version in one commit, replacing its content (or, appended, adding
        to it); returns the version.

        Until then the parts are invisible to every reader (the Delta log does not name them), so a build killed
        mid-write leaves each table at its previous version; `vacuum` removes such orphaned parts.
        """
        folder = self.path(table)
        folder.mkdir(parents=True, exist_ok=True)
        actions = []
        for part in sorted(parts, key=lambda p: p.name):
            st = (folder / part.name).stat()
            stats = json.dumps({"numRecords": part.rows})
            actions.append(AddAction(part.name, st.st_size, {}, int(st.st_mtime * 1000), True, stats))
        props = CommitProperties(custom_metadata={"tunelake_run_id": run_id})
        uri = str(folder)
        if DeltaTable.is_deltatable(uri):
            mode = "append" if append else "overwrite"
            DeltaTable(uri).create_write_transaction(actions, mode=mode, schema=schema, commit_properties=props)
        else:
            create_table_with_add_actions(
                uri, Schema.from_arrow(schema), actions, mode="error", commit_properties=props
            )
        return DeltaTable(uri).version()

    def append(self, table: str, schema: pa.Schema, rows: pa.Table) -> int | None:
        """Add rows to a table written outside builds (tables.OUTSIDE_BUILDS) in one commit, published at once; the
        table's new version (None without rows). Waits for a running build rather than failing mid-run."""
        if not rows.num_rows:
            return None
        commit_id = new_run_id()  # names the part: parts sort in the order they were appended
        with self.lock(wait=True):
            part = write_part(self.root, table, part_name(commit_id, 0, 0), rows)
            return self.commit(table, schema, [part], commit_id, append=True)

    def replace_exports(self, new: Path) -> None:
        """Swap in a build's exports: the old ones stay whole until the new ones are complete."""
        current, old = self.root / "exports", self.root / tables.STAGING / "exports.old"
        if current.exists():
            old.parent.mkdir(parents=True, exist_ok=True)  # a build with no gold stages nothing there
            os.replace(current, old)
        if new.exists():
            os.replace(new, current)
        shutil.rmtree(old, ignore_errors=True)

    def finish_publishing(self) -> None:
        """Undo what a killed build left half done (under the lock): tables it committed are restored to their
        published version (so an append-only table never builds on rows no build published), and the newest
        complete build's exports are put in place if it was killed before it could."""
        for table, version in self.published().items():
            if self.exists(table) and DeltaTable(str(self.path(table))).version() > version:
                DeltaTable(str(self.path(table))).restore(version)
        manifests = self.manifests()
        if manifests:
            staged = self.root / tables.staged(manifests[-1]["run_id"], "exports")
            if staged.exists():
                self.replace_exports(staged)

    def orphans(self, run_id: str) -> list[Path]:
        """Parquet parts that no version of their table references (written by builds killed before their commit),
        other than the running build's own."""
        found = []
        for table in self.stored_tables():
            folder = self.path(table)
            referenced = set()
            for commit in (folder / "_delta_log").glob("*.json"):
                for line in commit.read_text().splitlines():
                    if action := json.loads(line).get("add"):
                        referenced.add(unquote(action["path"]))
            found += [p for p in folder.glob("part-*.parquet") if p.name not in referenced and run_id not in p.name]
        return found

    def remove_orphans(self, run_id: str) -> int:
        """Delete the orphaned parts; only under the build lock (a running build's parts are orphans until it
        commits). Returns how many."""
        parts = self.orphans(run_id)
        for part in parts:
            part.unlink()
        return len(parts)

    def clear_staging(self) -> None:
        shutil.rmtree(self.root / tables.STAGING, ignore_errors=True)

    def write_manifest(self, manifest: dict) -> Path:
        folder = self.root / "manifests"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{manifest['run_id']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)  # a reader never sees half a manifest
        return path

    def manifests(self) -> list[dict]:
        """Every build manifest, oldest first."""
        folder = self.root / "manifests"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []
