"""The units of work a build hands to its engine.

Each task runs one stage over one piece of the input and writes the stage's outputs as Parquet parts itself,
returning only what the parent needs to count and commit: no data travels back between processes. Tasks
import no Delta code; only the dedup and export steps run DuckDB in a worker.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import tables
from tunelake.address import Addresses
from tunelake.engine.parts import Part, part_name, read_arrow, write_arrow, write_part
from tunelake.gold.split import assign_splits
from tunelake.gold.tokenize.masks import MaskSettings
from tunelake.gold.tokenize.pack import PackStats, pack
from tunelake.gold.tokenize.stage import PACKED, TokenizerSpec, tokenize_rows
from tunelake.ingest.readers import RawChunk
from tunelake.recipe import Split
from tunelake.runner import StageCount, Verdicts, count_reasons, run_row_stages
from tunelake.schema import TOKENIZE_QUARANTINE, Regime, quarantine_ledger, table_of
from tunelake.silver.canonicalize import STAGE, STAGE_VERSION, FilePlan, by_row, canonicalize
from tunelake.stage import GROUP_ID, MIX_COPIES, PINNED_SPLIT, GlobalStage, RowLocalStage
from tunelake.tables import SPLITS

# Rows in a row group of a gold part, the unit one tokenize task reads: a publish window holds tens of thousands
# of records, and tokenizing them at once would hold all their token ids and offsets.
GOLD_ROW_GROUP = 2048
# Rows a global step makes its staged columns of at once (see _step_columns).
COLUMN_ROWS = 4096

# The steps of a build, in the order their ledger parts sort: read, then canonicalize (fused with the first
# segment's row-local stages), then two steps per later segment (the global step before it, then its row-local
# pass; the last segment's stages run in publish), then tokenize and pack. See runner.segments.
STEP_READ, STEP_CANONICALIZE = 0, 1


def global_step(segment: int) -> int:
    """The step of the global steps that end a segment (a part's seq is the step's place among them)."""
    return 2 * segment + 2


def pass_step(segment: int) -> int:
    """The step of a segment's row-local pass (canonicalize for the first, publish for the last)."""
    return 2 * segment + 1


def publish_step(segments: int) -> int:
    return pass_step(segments - 1)


def candidates_table(run_id: str, pass_: int) -> str:
    """Where a row-local pass stages its kept candidate records (Arrow), for the next pass or publish."""
    return tables.staged(run_id, f"candidates-{pass_}")


def group_runs_table(run_id: str) -> str:
    """Where canonicalize stages, per chunk of a grouped format, its runs of rows (canonicalize.GROUP_RUNS): the
    build reads them back to refuse a file whose key comes back after its run ended."""
    return tables.staged(run_id, "group-runs")


def columns_table(run_id: str, pass_: int) -> str:
    """Where a row-local pass stages, per chunk, the columns its global steps read (Parquet; a step's columns are
    named `<step>.<column>`)."""
    return tables.staged(run_id, f"columns-{pass_}")


def annotations_table(run_id: str, step: GlobalStage) -> str:
    """Where a global step's annotations are staged (one Parquet file, sorted by `_ord`)."""
    return tables.staged(run_id, f"annotations-{step.name}")


def gold_staging(run_id: str, table: str) -> str:
    """Where publish stages a gold table's rows as Arrow, for the exports to stream without decoding Parquet."""
    return tables.staged(run_id, table)


@dataclass(frozen=True)
class Staged:
    """A chunk's (or window's) kept candidates, staged, and the columns staged for the next global steps; they
    hold the ordinals first..last, in order."""

    part: Part
    columns: Part | None
    first: int
    last: int


@dataclass(frozen=True)
class Pass:
    """What a row-local pass runs over each batch, and where it stages its output."""

    index: int
    stages: tuple[RowLocalStage, ...]
    steps: tuple[GlobalStage, ...]  # whose columns to stage
    addresses: Addresses


@dataclass
class PassDone:
    parts: list[Part]
    staged: Staged | None
    stage_counts: list[StageCount]
    per_source: Counter  # (source, "dropped" | "quarantined") -> rows, from the pass's stages


def _stage_out(
    root: Path, run_id: str, pass_: Pass, name: str, kept: pa.RecordBatch, counts: list[StageCount]
) -> Staged | None:
    """The kept candidates staged, with the columns of the pass's global steps (the time each step takes to make
    them is added to `counts`, under its name)."""
    part = write_arrow(root, candidates_table(run_id, pass_.index), name, kept)
    if not part:
        return None
    columns = None
    if pass_.steps:
        data = {"_ord": kept["_ord"], "id": kept["id"]}
        for step in pass_.steps:
            started = time.perf_counter()
            data.update({f"{step.name}.{column}": array for column, array in _step_columns(step, kept).items()})
            counts.append(StageCount(step.name, step.version, "global", seconds=time.perf_counter() - started))
        columns = write_part(root, columns_table(run_id, pass_.index), name, pa.table(data))
    ords = kept["_ord"]
    return Staged(part, columns, ords[0].as_py(), ords[-1].as_py())


def _step_columns(step: GlobalStage, kept: pa.RecordBatch) -> dict[str, pa.ChunkedArray]:
    """A global step's columns of a chunk, made COLUMN_ROWS rows at a time: what a step works through to make them
    (shingles, their sorts and hashes: several times the text) is a slice's, not the whole chunk's."""
    slices = [step.columns(kept.slice(start, COLUMN_ROWS)) for start in range(0, max(kept.num_rows, 1), COLUMN_ROWS)]
    return {name: pa.chunked_array([made[name] for made in slices]) for name in slices[0]}


@dataclass(frozen=True)
class CanonicalizeTask:
    root: Path
    run_id: str
    seq: int
    chunk: RawChunk
    plan: FilePlan
    pass_: Pass
    bronze: bool  # whether to write the rows to bronze (append-only: not when bronze holds the file already)


@dataclass
class CanonicalizeDone(PassDone):
    source: str = ""
    file: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    fresh: bool = True  # read from its file this build (not reused from the ingest cache)

    def cached_parts(self) -> list[Part]:
        """The parts an ingest cache entry keeps: all but bronze (which keeps the rows itself)."""
        return [p for p in self.parts if p.table in (tables.QUARANTINED, tables.LEDGER_NAME)]


def run_canonicalize(task: CanonicalizeTask) -> CanonicalizeDone:
    """One raw chunk -> bronze, quarantine and ledger parts, and its candidates through the first segment's
    row-local stages, staged."""
    started = time.perf_counter()
    result = canonicalize(task.chunk, task.plan, task.run_id)
    made = result.counts["bronze"] + result.counts["siblings"]  # a row that gives n records counts n
    ingest = StageCount(STAGE, STAGE_VERSION, "ingest", made, result.candidates.num_rows)
    ingest.quarantined.update(result.quarantine["reason"].to_pylist())
    empty = result.ledger.filter(pc.equal(result.ledger["action"], "drop"))  # rows that gave no record
    count_reasons(ingest.dropped, empty["reason"])  # grouped_into:<row> counts as grouped_into
    ingest.seconds = time.perf_counter() - started
    verdicts = Verdicts([result.quarantine], [result.ledger])
    verdicts.per_source[task.plan.source.name, "dropped"] += empty.num_rows
    kept, counts = run_row_stages(
        result.candidates, task.pass_.stages, task.pass_.addresses, task.run_id, verdicts, result.bronze
    )
    quarantine, ledger = verdicts.tables()
    source = task.plan.source.name
    name = part_name(task.run_id, STEP_CANONICALIZE, task.seq)
    parts = [
        write_part(task.root, tables.bronze(source), name, result.bronze) if task.bronze else None,
        write_part(task.root, tables.QUARANTINED, name, quarantine),
        write_part(task.root, tables.LEDGER_NAME, name, by_row(ledger) if counts else ledger),
    ]
    if result.groups is not None:
        parts.append(write_part(task.root, group_runs_table(task.run_id), name, result.groups))
    staged = _stage_out(task.root, task.run_id, task.pass_, name, kept, counts)
    done = CanonicalizeDone([p for p in parts if p], staged, [ingest, *counts], verdicts.per_source)
    done.source, done.file, done.counts = source, task.chunk.file, result.counts
    return done


@dataclass(frozen=True)
class Window:
    """Consecutive staged parts of one pass, with what decided about them since: the ordinals global steps
    removed, and the annotations they made (Parquet files of `_ord` + columns)."""

    staged: tuple[Staged, ...]
    decided: np.ndarray  # sorted ordinals of these candidates that a global step dropped or quarantined
    annotations: tuple[str, ...]

    def notes(self) -> list[pa.Table]:
        """Each annotation file's rows for this window's ordinals."""
        lo, hi = self.staged[0].first, self.staged[-1].last
        return [pq.read_table(file, filters=[("_ord", ">=", lo), ("_ord", "<=", hi)]) for file in self.annotations]

    def read(self, root: Path, notes: list[pa.Table] | None = None) -> pa.Table:
        """The window's candidates still in the build, with the annotations (`notes`, read here unless given)
        joined (null where none)."""
        batch = pa.concat_tables(read_arrow(root / s.part.table / s.part.name) for s in self.staged)
        if len(self.decided):
            batch = batch.filter(pc.invert(pc.is_in(batch["_ord"], pa.array(self.decided))))
        for annotated in self.notes() if notes is None else notes:
            at = pc.index_in(batch["_ord"], annotated["_ord"])
            for name in annotated.column_names[1:]:
                batch = batch.append_column(annotated.schema.field(name), annotated[name].take(at))
        return batch


@dataclass(frozen=True)
class RestageTask:
    root: Path
    run_id: str
    seq: int
    window: Window
    pass_: Pass
    step: int  # the ledger step of this pass


def run_restage(task: RestageTask) -> PassDone:
    """A window of the last pass's candidates, minus what global steps removed, through the next segment's
    row-local stages; staged again."""
    batch = task.window.read(task.root)
    verdicts = Verdicts()
    kept, counts = run_row_stages(
        _batch(batch),
        task.pass_.stages,
        task.pass_.addresses,
        task.run_id,
        verdicts,
    )
    quarantine, ledger = verdicts.tables()
    name = part_name(task.run_id, task.step, task.seq)
    parts = [
        write_part(task.root, tables.QUARANTINED, name, quarantine),
        write_part(task.root, tables.LEDGER_NAME, name, ledger),
    ]
    staged = _stage_out(task.root, task.run_id, task.pass_, name, kept, counts) if kept.num_rows else None
    return PassDone([p for p in parts if p], staged, counts, verdicts.per_source)


@dataclass(frozen=True)
class PublishTask:
    root: Path
    run_id: str
    seq: int
    step: int
    window: Window
    pass_: Pass  # the last segment's row-local stages
    silver: pa.Schema  # the canonical schema plus the columns the chain's stages add
    gold: dict[Regime, pa.Schema]  # each regime's gold columns (gold_schema)
    split: Split
    stage_gold: bool  # whether exports will stream the gold rows (the recipe asks for some)


@dataclass
class PublishDone(PassDone):
    silver: Counter = field(default_factory=Counter)  # records per source
    key: str | None = None  # the window's publish cache key (None: not cached)
    reused: bool = False  # linked from the publish cache, not made this build


def run_publish(task: PublishTask, notes: list[pa.Table]) -> PublishDone:
    """Candidates still in the build, through the last segment's row-local stages -> silver/records and, split
    by group (the prompt, unless a stage annotated a `group_id`; a `pinned_split` overrides), the gold tables.
    `notes` are the window's annotations (Window.notes)."""
    addresses, verdicts = task.pass_.addresses, Verdicts()
    batch, counts = run_row_stages(
        _batch(task.window.read(task.root, notes)), task.pass_.stages, addresses, task.run_id, verdicts
    )
    name = part_name(task.run_id, task.step, task.seq)
    quarantine, ledger = verdicts.tables()
    done = PublishDone([], None, counts, verdicts.per_source)
    if not batch.num_rows:
        return done
    for added in task.silver:  # a column no step annotated any record of (none of its kind in the build) is null
        if added.name not in batch.schema.names:
            batch = batch.append_column(added, pa.nulls(batch.num_rows, added.type))
    records = batch.select(task.silver.names)
    groups = batch["prompt_id"]
    if GROUP_ID.name in batch.schema.names:
        groups = pc.coalesce(batch[GROUP_ID.name], groups)
    splits = assign_splits(groups, task.split)
    if PINNED_SPLIT.name in batch.schema.names:
        splits = pc.coalesce(batch[PINNED_SPLIT.name], splits)
    where = pc.binary_join_element_wise("gold/", records["regime"], "/", splits, "")
    keep = addresses.ledger(batch["_ord"], batch["id"], "split", "keep", None, where, task.run_id)
    parts = [
        write_part(task.root, tables.QUARANTINED, name, quarantine),
        write_part(task.root, tables.RECORDS, name, records),
        write_part(task.root, tables.LEDGER_NAME, name, pa.concat_tables([ledger, keep])),
    ]
    gold, gold_splits = records, splits
    if MIX_COPIES.name in records.column_names:  # records to repeat in gold: their copies follow them
        copies = records[MIX_COPIES.name].to_numpy()
        repeat = pa.array(np.repeat(np.arange(records.num_rows), copies))
        gold, gold_splits = records.take(repeat), splits.take(repeat)
    # Each gold table's rows are written as soon as they are selected, so one of them is held at a time.
    for regime in Regime:
        in_regime = pc.equal(gold["regime"], regime.value)
        for split in SPLITS:
            table = tables.gold(regime, split)
            rows = gold.filter(pc.and_(in_regime, pc.equal(gold_splits, split))).select(task.gold[regime].names)
            parts.append(write_part(task.root, table, name, rows, GOLD_ROW_GROUP))
            if task.stage_gold:
                parts.append(write_arrow(task.root, gold_staging(task.run_id, table), name, rows))
    done.parts = [p for p in parts if p]
    for item in pc.value_counts(records["source"]).to_pylist():
        done.silver[item["values"]] += item["counts"]
    return done


def _batch(table: pa.Table) -> pa.RecordBatch:
    """A table as one batch: what row-local stages take."""
    return pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], schema=table.schema)


@dataclass(frozen=True)
class TokenizeTask:
    root: Path
    run_id: str
    step: int
    seq: int
    gold_file: str  # one Parquet file of a gold table
    row_group: int  # the one row group of it this task tokenizes
    regime: Regime
    output: str  # the tokenized table, gold/tokenized/<fingerprint>/<regime>/<split>
    quarantine: str  # gold/tokenized/<fingerprint>/quarantine
    spec: TokenizerSpec
    settings: MaskSettings


@dataclass
class TokenizeDone:
    output: str
    parts: list[Part]
    examples: int
    rejected: int


def run_tokenize(task: TokenizeTask) -> TokenizeDone:
    """One row group of a gold part -> tokenized rows; the records that cannot be trained on go to quarantine and
    the ledger."""
    gold = pq.ParquetFile(task.gold_file).read_row_group(task.row_group)
    rows, rejects = tokenize_rows(gold, task.regime, task.spec, task.settings)
    name = part_name(task.run_id, task.step, task.seq)
    parts = [write_part(task.root, task.output, name, rows)]
    if rejects:
        source = dict(zip(gold["id"].to_pylist(), gold["source"].to_pylist(), strict=True))
        ids = [i for i, _ in rejects]
        quarantine = table_of(
            TOKENIZE_QUARANTINE,
            len(ids),
            id=ids,
            source=[source[i] for i in ids],
            table=task.output,
            reason=[r.reason.value for _, r in rejects],
            field=[r.field for _, r in rejects],
            detail=[r.detail for _, r in rejects],
        )
        ledger = quarantine_ledger(quarantine, "tokenize", task.run_id)
        parts += [
            write_part(task.root, task.quarantine, name, quarantine),
            write_part(task.root, tables.LEDGER_NAME, name, ledger),
        ]
    return TokenizeDone(task.output, [p for p in parts if p], gold.num_rows - len(rejects), len(rejects))


@dataclass(frozen=True)
class PackTask:
    root: Path
    run_id: str
    step: int
    seq: int
    files: list[str]  # consecutive parts of one tokenized SFT table: one packing window
    output: str
    max_length: int


def run_pack(task: PackTask) -> tuple[list[Part], PackStats]:
    """Best-fit decreasing over one window of tokenized examples; a window wastes at most its last bin."""
    rows = pa.concat_tables(pq.read_table(f, columns=["id", "input_ids", "labels"]) for f in task.files)
    packed, stats = pack(rows, task.max_length)
    part = write_part(task.root, task.output, part_name(task.run_id, task.step, task.seq), packed.cast(PACKED))
    return ([part] if part else []), stats
