"""The seam every curation step plugs into.

A stage is a name, a version, a config model (its recipe section), the columns it reads and adds, the optional
packages it needs, and one of two kinds of work:
- row-local (`RowLocalStage.process`): a batch of candidate records in; the same rows out (with added or
  rewritten columns) and, per row, whether it is dropped or quarantined and why, or what was modified;
- global (`GlobalStage.run`): the columns it asked for, staged for every candidate of the build, in; decisions
  (drop or quarantine an ordinal, with a reason) and annotations (ordinal -> columns such as `group_id`) out.

A stage never writes the ledger, the quarantine or any table: the runner (runner.py) does, through one path, and
counts every stage. Stages know nothing about which engine runs them, so a global step reads staged files, never
the parent's memory.

Candidate records are Arrow batches of the canonical schema (schema.RECORD) plus `_ord`, the record's input
address packed in an int64 (silver/canonicalize.ordinal), plus the columns earlier stages added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

# A stage's decisions about candidates: action is `drop` or `quarantine`; reason is a reason code (optionally
# `code:<id>`, as in `duplicate_of:<id>`).
DECISIONS = pa.schema(
    [
        ("_ord", pa.int64()),
        ("id", pa.string()),
        ("action", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)
ACTIONS = ("drop", "quarantine")


def drops(ords: pa.Array, ids: pa.Array, reasons: pa.Array, details: pa.Array) -> pa.Table:
    """DECISIONS rows dropping these candidates, each with its reason and detail."""
    action = pa.array(["drop"] * len(ords), pa.string())
    return pa.Table.from_arrays([ords, ids, action, reasons, details], schema=DECISIONS)


# The annotation that decides splits: records sharing a group_id always share a split (default: the prompt id).
GROUP_ID = pa.field("group_id", pa.string())
# The annotation that pins a record to a split whatever its group's would be (a frozen eval set's split).
PINNED_SPLIT = pa.field("pinned_split", pa.string())
# The annotation that repeats a record in gold (gold.mix's upsampling): publish writes its row this many times in its
# gold table, so every copy shares its split. Silver keeps one row per record.
MIX_COPIES = pa.field("mix_copies", pa.int32())


class StageConfig(BaseModel):
    """A stage's recipe section; subclasses add fields, each with a description."""

    model_config = ConfigDict(extra="forbid")

    def resolve(self, base: Path) -> None:
        """Make the section's file paths absolute against the recipe's folder `base` and check the files they name,
        as the recipe loads; raise ValueError saying which file and what is wrong. Nothing to do by default."""

    def check_sources(self, sources: list[str]) -> None:
        """Raise ValueError, as the recipe loads, where the section names a source the recipe does not have (a typo
        there would silently match nothing). Nothing to check by default."""


class MissingDependency(ValueError):
    """A stage needs a package that is not installed."""


class BuildRefused(RuntimeError):
    """A global step found that the build must not publish (e.g. a frozen eval prompt would change split); the
    message says why and what to do. Nothing is published."""


class Stage:
    name: ClassVar[str]
    version: ClassVar[str] = "1"  # bump when the stage's output changes for the same input and config
    Config: ClassVar[type[StageConfig]] = StageConfig
    reads: ClassVar[tuple[str, ...]] = ()  # candidate columns it looks at
    adds: ClassVar[tuple[pa.Field, ...]] = ()  # columns it adds (row-local) or annotates (global); kept in silver
    requires: ClassVar[dict[str, str]] = {}  # importable module -> the command that installs it
    reads_tables: ClassVar[tuple[str, ...]] = ()  # published lake tables a global step reads (tables.py names)
    # Of the columns it adds, those a regime's gold tables and exports keep as well (regime value -> names), where a
    # trainer needs them (a pair's soft label); the others stay in silver.
    gold_columns: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, config: StageConfig | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise MissingDependency naming the install command, as a recipe loads (not halfway into a build)."""
        for module, install in cls.requires.items():
            if importlib.util.find_spec(module) is None:
                raise MissingDependency(f"stage {cls.name!r} needs the package {module!r}: {install}")

    def describe(self) -> dict:
        """What identifies this stage's behaviour: in the manifest and in every cache key."""
        return {"name": self.name, "version": self.version, "config": self.config.model_dump(mode="json")}

    def fingerprint(self) -> str:
        return hashlib.sha256(orjson.dumps(self.describe(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def report(self, ledger: pa.Table, tally: Tally) -> dict | None:
        """What this stage adds to the manifest's `reports` (e.g. an eval x source matrix), from the build's ledger
        rows of this stage (schema.LEDGER) and the figures it tallied (Outcome.tally, Decisions.tally) over the
        whole build; None adds nothing. The counts per reason are kept by the runner."""
        return None


# Figures a stage adds up over a build, by a key of strings (e.g. ("refused", source, domain) -> records): what
# a row-local stage tallies per chunk the runner sums over chunks, and keeps with a reused chunk's counts.
Tally = Counter[tuple[str, ...]]


@dataclass
class Outcome:
    """What a row-local stage did to a batch. Every per-row array has one entry per input row; null means no."""

    rows: pa.RecordBatch  # the input rows, in order, with added or rewritten columns
    drop: pa.Array | None = None  # reason code where the row is dropped
    quarantine: pa.Array | None = None  # reason code where the row is quarantined
    field: pa.Array | None = None  # for a quarantined row: the field at fault
    detail: pa.Array | None = None  # for a dropped, quarantined or modified row: the particulars
    modified: pa.Array | None = None  # what the stage changed in a kept row (a ledger `modify` entry)
    tally: Tally = dataclasses.field(default_factory=Counter)  # figures for the stage's report, summed over chunks


class RowLocalStage(Stage, ABC):
    """Runs on one batch at a time, anywhere: the runner fuses consecutive row-local stages over each chunk."""

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> Outcome: ...


@dataclass
class StagedRows:
    """A global step's input: its columns for every candidate still in the build, staged as Parquet files."""

    files: list[str]  # `_ord`, `id` and each step's columns as `<step>.<column>`; rows in ordinal order per file
    addresses: object  # tasks.Addresses: ordinal -> (source, file, row), for details that name an input row
    step: str  # whose columns these are
    removed: np.ndarray  # sorted ordinals that global steps before this one removed: left out
    tables: dict[str, list[str]]  # the published tables it reads (Stage.reads_tables) -> their Parquet files
    scratch: str  # a folder in the build's staging where the step's DuckDB may spill

    def relation(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
        """`_ord`, `id` and this step's columns, under their own names, for the candidates still in the build."""
        staged = con.read_parquet(self.files)
        prefix = f"{self.step}."
        mine = [f'"{c}" as "{c[len(prefix) :]}"' for c in staged.columns if c.startswith(prefix)]
        rows = staged.project(", ".join(["_ord", "id", *mine]))
        if len(self.removed):
            rows = rows.join(con.from_arrow(pa.table({"_ord": self.removed})), "_ord", how="anti")
        return rows

    def connect(self, memory_limit: str) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection for the step, within its memory (spilling into the build's staging) and with these
        rows registered as `staged`."""
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": self.scratch})
        con.execute("set enable_progress_bar = false")  # the build draws its own
        con.register("staged", self.relation(con))
        return con

    def read_table(self, name: str, schema: pa.Schema) -> pa.Table:
        """A published table the step reads, whole (empty while the lake has none)."""
        files = self.tables.get(name, [])
        return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]) if files else schema.empty_table()


@dataclass
class Decisions:
    """What a global step decided: rows in DECISIONS, and annotations (`_ord` + the stage's `adds` columns)."""

    decisions: pa.Table
    annotations: pa.Table | None = None
    tally: Tally = dataclasses.field(default_factory=Counter)  # figures for the stage's report


class GlobalStage(Stage, ABC):
    """Sees every candidate at once, through the columns it asks for (staged per chunk by the row-local pass)."""

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The columns this step reads, computed per chunk where the data is (default: its `reads` columns)."""
        return {name: batch[name] for name in self.reads}

    def columns_key(self) -> dict:
        """What decides `columns` (in the key of every cached ingest entry that staged them); default: all of
        `describe()`. A step whose columns depend on part of its config only names that part, so that changing
        the rest (a mix's ratios, a selection's size) reruns the step, not the ingest pass."""
        return self.describe()

    @abstractmethod
    def run(self, rows: StagedRows, memory_limit: str) -> Decisions: ...
