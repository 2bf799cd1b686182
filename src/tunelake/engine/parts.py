"""Parts: the Parquet files a task writes into a table's folder, published later in one Delta commit.

A task writes its own outputs (so no data travels back to the parent process) and returns only Part records.
Part names sort in write order: `part-<run_id>-<step>-<seq>.parquet`, step being the stage's place in the
build and seq the chunk's place in the input, so a table's rows read back in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Part:
    table: str  # lake table name, e.g. "silver/records"
    name: str  # file name inside the table's folder
    rows: int


class PartWriteError(OSError):
    """A part could not be written (a full disk, no permission, ...): says which table and file, and keeps the
    cause's errno. (An OSError, built with OSError's own arguments, so it pickles back from a worker process.)"""


@contextmanager
def _writing(table: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        message = f"cannot write a part of table {table} to {path}: {e.strerror or e}"
        raise (PartWriteError(e.errno, message) if e.errno else PartWriteError(message)) from e


def part_name(run_id: str, step: int, seq: int) -> str:
    return f"part-{run_id}-{step:02d}-{seq:07d}.parquet"


def write_part(
    root: Path, table: str, name: str, data: pa.Table | pa.RecordBatch, row_group_size: int | None = None
) -> Part | None:
    """Write data as one Parquet file in root/table (row groups of row_group_size rows, or pyarrow's default);
    None when there are no rows (no empty files)."""
    if data.num_rows == 0:
        return None
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    dictionary = [n for n in data.schema.names if n in _FEW_VALUES]
    path = root / table / name
    with _writing(table, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            data,
            path,
            row_group_size=row_group_size,
            compression="zstd",
            use_dictionary=dictionary,
            data_page_version="2.0",
        )
    return Part(table, name, data.num_rows)


# Columns with few distinct values, the only ones worth dictionary-encoding: trying it on message text costs a
# quarter of a write and saves nothing.
_FEW_VALUES = {"regime", "source", "origin", "license", "verifier", "domain", "lang", "file", "stage", "action"}


def write_arrow(root: Path, table: str, name: str, data: pa.Table | pa.RecordBatch) -> Part | None:
    """Write data as one Arrow IPC file (uncompressed): for staging that is read back once, by memory map, in the
    same build. Writing it costs next to nothing; Parquet's encoding and compression cost microseconds a row."""
    if data.num_rows == 0:
        return None
    name = name.removesuffix(".parquet") + ".arrow"
    path = root / table / name
    with _writing(table, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
            writer.write(data)
    return Part(table, name, data.num_rows)


def read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()
