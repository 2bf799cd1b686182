"""The lake on disk: Delta tables written as streamed Parquet parts and one commit each, and build manifests."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

BRONZE = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),  # 1-based record number in the file (the line number for JSONL)
        ("raw_hash", pa.string()),
        ("raw", pa.large_binary()),  # verbatim bytes of the row (JSON text of it for parquet/csv/json arrays)
    ]
)

QUARANTINE = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),  # null for a problem with the whole file (empty, truncated, unreadable)
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.large_binary()),
    ]
)

LEDGER = pa.schema(
    [
        ("id", pa.string()),  # canonical record id; null when the row never became a record
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("stage", pa.string()),
        ("action", pa.string()),  # keep | drop | quarantine | modify
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
    ]
)


class LakeBusy(RuntimeError):
    """Another build holds the lake."""


class Lake:
    """A directory of Delta tables named like `silver/records`, plus `manifests/` and `exports/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the lake for one build; a second build on the same lake fails at once instead of interleaving."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LakeBusy(f"another tunelake build is running on {self.root}") from None
            yield

    def path(self, table: str) -> Path:
        return self.root / table

    def tables(self) -> list[str]:
        """Names of every Delta table in the lake, sorted."""
        found = [p.parent.relative_to(self.root).as_posix() for p in self.root.glob("**/_delta_log")]
        return sorted(t for t in found if not t.startswith("_staging"))

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(str(self.path(table)))

    def version(self, table: str) -> int | None:
        return DeltaTable(str(self.path(table))).version() if self.exists(table) else None

    def files(self, table: str, version: int | None = None) -> list[str]:
        """The Parquet files of one version, in write order (part names sort in the order they were written)."""
        if not self.exists(table):
            raise FileNotFoundError(f"no table {table!r} in lake {self.root}")
        return sorted(DeltaTable(str(self.path(table)), version=version).file_uris())

    def schema(self, table: str) -> pa.Schema:
        return pa.schema(DeltaTable(str(self.path(table))).schema())

    # Reads go through pyarrow.parquet on the version's file list: deltalake's to_pyarrow_table was seen
    # to abort the interpreter at exit, and the file list keeps write order.
    def batches(
        self, table: str, columns: list[str] | None = None, version: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        for f in self.files(table, version):
            yield from pq.ParquetFile(f).iter_batches(columns=columns, batch_size=8192)

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
                con.execute(f"create view {alias} as select * from read_parquet({files!r})")
            else:
                con.register(alias, self.schema(table).empty_table())
        return con.execute(sql, params or {}).fetchall()

    def writer(self, table: str, schema: pa.Schema, run_id: str) -> TableWriter:
        return TableWriter(self, table, schema, run_id)

    def staging(self, run_id: str) -> Path:
        path = self.root / "_staging" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clear_staging(self) -> None:
        shutil.rmtree(self.root / "_staging", ignore_errors=True)

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


class TableWriter:
    """Streams batches into Parquet parts inside a Delta table's folder, then publishes them in one commit.

    Until `commit`, the parts are invisible to every reader (the Delta log does not name them), so a build
    killed mid-write leaves each table at its previous version; `vacuum` removes the orphaned parts.
    """

    ROWS_PER_PART = 1_000_000

    def __init__(self, lake: Lake, table: str, schema: pa.Schema, run_id: str):
        self.lake, self.table, self.schema, self.run_id = lake, table, schema, run_id
        self.folder = lake.path(table)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prefix = f"part-{run_id}-{uuid.uuid4().hex[:8]}"
        self._parts: list[tuple[str, int]] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_part = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            name = f"{self._prefix}-{len(self._parts):05d}.parquet"
            self._writer = pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")
            self._parts.append((name, 0))
        self._writer.write(batch)
        self._rows_in_part += batch.num_rows
        self.rows += batch.num_rows
        if self._rows_in_part >= self.ROWS_PER_PART:
            self._close_part()

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            name, _ = self._parts[-1]
            self._parts[-1] = (name, self._rows_in_part)
            self._writer, self._rows_in_part = None, 0

    def commit(self) -> int:
        """Publish every part as the table's new version (replacing the old content); returns that version."""
        self._close_part()
        actions = []
        for name, rows in self._parts:
            st = (self.folder / name).stat()
            stats = json.dumps({"numRecords": rows})
            actions.append(AddAction(name, st.st_size, {}, int(st.st_mtime * 1000), True, stats))
        props = CommitProperties(custom_metadata={"tunelake_run_id": self.run_id})
        uri = str(self.folder)
        if DeltaTable.is_deltatable(uri):
            DeltaTable(uri).create_write_transaction(
                actions, mode="overwrite", schema=self.schema, commit_properties=props
            )
        else:
            create_table_with_add_actions(
                uri, Schema.from_arrow(self.schema), actions, mode="error", commit_properties=props
            )
        return DeltaTable(uri).version()
