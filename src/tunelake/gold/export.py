"""Exports that trainers load as they are, written by DuckDB from the gold tables.

- SFT: `messages` in TRL's conversational format (+ `tools` when any record has them).
- Preference: `prompt`, `chosen`, `rejected` as message lists (TRL's explicit-prompt conversational format).
- RL: verl's layout: `data_source`, `prompt` (messages), `ability`, `reward_model {style, ground_truth}`,
  `extra_info`.
Message fields that no record of a table uses are left out, so trainers see plain {role, content} turns.
Tool calls are JSON objects in jsonl and JSON text in parquet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from tunelake.schema import MESSAGE_FIELDS, Regime

# Row groups of 16k rows: DuckDB holds a whole row group in memory before writing it, and its default (122,880
# rows of preference pairs) took a worker to 400 MiB; smaller groups also wrote faster here.
FORMATS = {"jsonl": "(format json)", "parquet": "(format parquet, compression zstd, row_group_size 16384)"}


def _messages(con: duckdb.DuckDBPyConnection, column: str) -> str:
    """A DuckDB expression for a message-list column, keeping role, content and the optional fields in use."""
    optional = [f for f in MESSAGE_FIELDS if f not in ("role", "content")]
    used = con.execute(
        "select "
        + ", ".join(
            f"coalesce(bool_or(list_bool_or(list_transform({column}, lambda m: m.{f} is not null))), false)"
            for f in optional
        )
        + " from gold"
    ).fetchone()
    fields = ["'role': m.role", "'content': m.content"]
    for name, in_use in zip(optional, used, strict=True):
        if in_use:
            fields.append(f"'{name}': json(m.{name})" if name == "tool_calls" else f"'{name}': m.{name}")
    return f"list_transform({column}, lambda m: {{{', '.join(fields)}}}) as {column}"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _row_index(files: list[str]) -> str:
    """A DuckDB expression for a row's index in the whole table: its row in its file plus the rows of the files
    before it. A streaming alternative to row_number() over (), which holds the whole table in memory."""
    offsets, total = [], 0
    for f in files:
        offsets.append(f"when {_sql_text(f)} then {total}")
        total += pq.ParquetFile(f).metadata.num_rows
    return f"(case filename {' '.join(offsets)} end + file_row_number)"


def _select(con: duckdb.DuckDBPyConnection, regime: Regime, split: str, files: list[str]) -> str:
    if regime == Regime.sft:
        has_tools = con.execute("select count(tools) > 0 from gold").fetchone()[0]
        tools = ", json(tools) as tools" if has_tools else ""
        return f"select id, {_messages(con, 'messages')}{tools} from gold"
    if regime == Regime.preference:
        sides = ", ".join(_messages(con, c) for c in ("prompt", "chosen", "rejected"))
        return f"select id, {sides}, score_chosen, score_rejected from gold"
    return f"""
        select source as data_source, {_messages(con, "prompt")}, coalesce(domain, 'general') as ability,
               {{'style': 'rule',
                 'ground_truth': case when verifier = 'python_tests' then verifier_config else answer end}}
                 as reward_model,
               {{'split': '{split}', 'index': {_row_index(files)}, 'id': id, 'answer': answer,
                 'verifier': verifier, 'verifier_config': verifier_config, 'difficulty': difficulty}} as extra_info
        from gold"""


@dataclass(frozen=True)
class ExportTask:
    files: list[str]  # the gold table's Parquet files, in order
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
    config = {"memory_limit": "256MB", "threads": 1, "preserve_insertion_order": True}
    con = duckdb.connect(config=config)
    con.execute("set enable_progress_bar = false")  # the build draws its own
    # filename and file_row_number give each row its index in the table (see _row_index).
    con.read_parquet(files, filename=True, file_row_number=True).create_view("gold")
    query = _select(con, regime, split, files)
    folder = out_dir / regime.value
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{split}.{fmt}", folder / f".{split}.{fmt}.tmp"
    target = str(tmp).replace("'", "''")  # a SQL string literal: quotes in the lake's path are doubled
    con.execute(f"copy ({query}) to '{target}' {FORMATS[fmt]}")
    os.replace(tmp, path)
    return path
