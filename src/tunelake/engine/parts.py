"""Parts: the Parquet files a task writes into a table's folder, published later in one Delta commit.

A task writes its own outputs (so no data travels back to the parent process) and returns only Part records.
Part names sort in write order: `part-<run_id>-<step>-<seq>.parquet`, step being the stage's place in the
build and seq the chunk's place in the input, so a table's rows read back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Part:
    table: str  # lake table name, e.g. "silver/records"
    name: str  # file name inside the table's folder
    rows: int


def part_name(run_id: str, step: int, seq: int) -> str:
    return f"part-{run_id}-{step:02d}-{seq:07d}.parquet"


def write_part(
    root: Path, table: str, name: str, data: pa.Table | pa.RecordBatch, row_group_size: int | None = None
) -> Part | None:
    """Write data as one Parquet file in root/table (row groups of row_group_size rows, or pyarrow's default);
    None when there are no rows (no empty files)."""
    if data.num_rows == 0:
        return None
    folder = root / table
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    dictionary = [n for n in data.schema.names if n in _FEW_VALUES]
    pq.write_table(
        data,
        folder / name,
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
    folder = root / table
    folder.mkdir(parents=True, exist_ok=True)
    name = name.removesuffix(".parquet") + ".arrow"
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
        writer.write(data)
    return Part(table, name, data.num_rows)


def read_arrow(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()
