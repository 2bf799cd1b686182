"""Exports that trainers load as they are, laid out by DuckDB from the gold rows publish staged as Arrow.

- SFT: `messages` in TRL's conversational format (+ `tools` when any record has them).
- Preference: `prompt`, `chosen`, `rejected` as message lists (TRL's explicit-prompt conversational format).
- RL: verl's layout: `data_source`, `prompt` (messages), `ability`, `reward_model {style, ground_truth}`,
  `extra_info`.
Message fields that no message of a column uses are left out, so trainers see plain {role, content} turns.
Tool calls are JSON objects in jsonl and JSON text in parquet.

The input is the gold table's staged Arrow IPC parts, memory-mapped one at a time and streamed to DuckDB:
decoding the gold Parquet parts back was a third of the exports' time. DuckDB writes JSONL itself; Parquet it
hands to pyarrow as Arrow batches (see ROW_GROUP_BYTES).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake.engine.parts import read_arrow
from tunelake.gold.project import gold_schema
from tunelake.schema import MESSAGE_FIELDS, Regime

# Parquet row groups of about this many bytes, and at most MAX_ROW_GROUP rows: a writer holds a whole row group
# before writing it. DuckDB's own writer cannot go below 2,048 rows a group, which for long-context records
# overran its memory, so DuckDB hands the rows over as Arrow batches, small enough for the table's longest row,
# and pyarrow writes them in groups of this size.
ROW_GROUP_BYTES = 32 << 20
MAX_ROW_GROUP = 16_384
MESSAGE_COLUMNS = {
    Regime.sft: ("messages",),
    Regime.preference: ("prompt", "chosen", "rejected"),
    Regime.rl: ("prompt",),
    Regime.kto: ("prompt", "chosen", "rejected"),
}
OPTIONAL_FIELDS = tuple(f for f in MESSAGE_FIELDS if f not in ("role", "content"))


def _parts(files: list[str]) -> Iterator[pa.Table]:
    """Each staged part in order, memory-mapped; a part's pages are let go before the next is mapped."""
    for file in files:
        yield read_arrow(Path(file))


def _text_bytes(column: pa.Array) -> np.ndarray:
    """Per row, the bytes of the strings it holds, however deep in lists and structs (numbers count nothing)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.binary_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_struct(column.type):
        fields = (_text_bytes(pc.struct_field(column, i)) for i in range(column.type.num_fields))
        return sum(fields, np.zeros(len(column), np.int64))
    if pa.types.is_list(column.type):
        inner = np.concatenate(([0], np.cumsum(_text_bytes(column.values))))
        offsets = column.offsets.to_numpy()
        return inner[offsets[1:]] - inner[offsets[:-1]]
    return np.zeros(len(column), np.int64)


def _longest_row(files: list[str]) -> int:
    """The bytes of text of the table's longest row."""
    longest = 1
    for part in _parts(files):
        sizes = sum(_text_bytes(column.combine_chunks()) for column in part.columns)
        longest = max(longest, int(sizes.max()))
    return longest


def _write_parquet(reader: pa.RecordBatchReader, path: Path) -> None:
    """DuckDB's batches, gathered into row groups of about ROW_GROUP_BYTES and at most MAX_ROW_GROUP rows."""
    group: list[pa.RecordBatch] = []
    size = rows = 0
    with pq.ParquetWriter(path, reader.schema, compression="zstd") as writer:
        for batch in reader:
            group.append(batch)
            size, rows = size + batch.nbytes, rows + batch.num_rows
            if size >= ROW_GROUP_BYTES or rows >= MAX_ROW_GROUP:
                writer.write_table(pa.Table.from_batches(group, reader.schema), row_group_size=rows)
                group, size, rows = [], 0, 0
        if group:
            writer.write_table(pa.Table.from_batches(group, reader.schema), row_group_size=rows)


def _in_use(files: list[str], regime: Regime) -> tuple[dict[str, set[str]], bool]:
    """For each message column, the optional fields any of its messages sets; and whether any record has tools."""
    used, tools = {column: set() for column in MESSAGE_COLUMNS[regime]}, False
    for part in _parts(files):
        for column, fields in used.items():
            turns = pc.list_flatten(part[column])
            fields.update(f for f in OPTIONAL_FIELDS if pc.struct_field(turns, f).null_count < len(turns))
        tools = tools or (regime == Regime.sft and part["tools"].null_count < part.num_rows)
    return used, tools


def _indexed(files: list[str], schema: pa.Schema) -> pa.RecordBatchReader:
    """The table's rows with `_index`, each row's place in the whole table (verl's extra_info.index)."""
    with_index = schema.append(pa.field("_index", pa.int64()))

    def batches() -> Iterator[pa.RecordBatch]:
        offset = 0
        for part in _parts(files):
            index = pa.array(np.arange(offset, offset + part.num_rows, dtype=np.int64))
            offset += part.num_rows
            yield from part.append_column("_index", index).to_batches()

    return pa.RecordBatchReader.from_batches(with_index, batches())


def _messages(column: str, used: set[str], name: str | None = None) -> str:
    """A DuckDB expression for a message-list column, keeping role, content and the optional fields in use, named
    `name` (default: the column's own)."""
    return f"{_message_list(column, used)} as {name or column}"


def _message_list(column: str, used: set[str]) -> str:
    fields = ["'role': m.role", "'content': m.content"]
    for name in OPTIONAL_FIELDS:
        if name in used:
            fields.append(f"'{name}': json(m.{name})" if name == "tool_calls" else f"'{name}': m.{name}")
    return f"list_transform({column}, lambda m: {{{', '.join(fields)}}})"


def _select(regime: Regime, split: str, used: dict[str, set[str]], tools: bool, carried: list[str]) -> str:
    """The export's query; `carried` are the columns stages carry into this regime's gold (Stage.gold_columns),
    exported as they are after the format's own."""
    extra = "".join(f", {name}" for name in carried)
    if regime == Regime.sft:
        messages = _messages("messages", used["messages"])
        return f"select id, {messages}{', json(tools) as tools' if tools else ''}{extra} from gold"
    if regime == Regime.preference:
        sides = ", ".join(_messages(c, used[c]) for c in MESSAGE_COLUMNS[regime])
        return f"select id, {sides}, score_chosen, score_rejected{extra} from gold"
    if regime == Regime.kto:  # TRL's unpaired format: the completion, and whether it is desirable
        side = used["chosen"] | used["rejected"]
        completion = f"coalesce({_message_list('chosen', side)}, {_message_list('rejected', side)}) as completion"
        prompt = _messages("prompt", used["prompt"])
        return f"select id, {prompt}, {completion}, chosen is not null as label{extra} from gold"
    return f"""
        select source as data_source, {_messages("prompt", used["prompt"])}, coalesce(domain, 'general') as ability,
               {{'style': 'rule',
                 'ground_truth': case when verifier = 'python_tests' then verifier_config else answer end}}
                 as reward_model,
               {{'split': '{split}', 'index': _index, 'id': id, 'answer': answer,
                 'verifier': verifier, 'verifier_config': verifier_config, 'difficulty': difficulty}} as extra_info
       {extra} from gold"""


@dataclass(frozen=True)
class ExportTask:
    files: list[str]  # the gold table's staged Arrow IPC parts, in order
    schema: pa.Schema  # the gold table's
    regime: Regime
    split: str
    out_dir: Path
    format: str  # jsonl | parquet


def run_export(task: ExportTask) -> Path | None:
    """Write one gold table in one format to out_dir/<regime>/<split>.<format>; returns the path written.

    One DuckDB thread and a small memory limit: exports of several tables and formats run side by side on the
    engine.
    """
    files, regime, split, out_dir, fmt = task.files, task.regime, task.split, task.out_dir, task.format
    if not files:
        return None
    used, tools = _in_use(files, regime)
    config = {"memory_limit": "256MB", "threads": 1, "preserve_insertion_order": True}
    con = duckdb.connect(config=config)
    con.execute("set enable_progress_bar = false")  # the build draws its own
    con.register("gold", _indexed(files, task.schema))
    folder = out_dir / regime.value
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{split}.{fmt}", folder / f".{split}.{fmt}.tmp"
    carried = [name for name in task.schema.names if name not in gold_schema(regime).names]
    query = _select(regime, split, used, tools, carried)
    if fmt == "jsonl":
        target = str(tmp).replace("'", "''")  # a SQL string literal: quotes in the lake's path are doubled
        con.execute(f"copy ({query}) to '{target}' (format json)")
    else:
        # A batch of the table's longest rows holds at most a row group's bytes.
        rows = min(MAX_ROW_GROUP, max(1, ROW_GROUP_BYTES // _longest_row(files)))
        _write_parquet(con.sql(query).to_arrow_reader(rows), tmp)
    os.replace(tmp, path)
    return path
