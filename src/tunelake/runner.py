"""The stage runner: how a chain of stages becomes passes over the data, and how every stage's verdicts become
ledger and quarantine rows, through one path, with counts that reconcile.

A chain is cut into segments, each a run of row-local stages ending at a run of global steps (or at publish). The
first segment runs in the ingest pass, fused with canonicalize over each chunk; a later segment runs in a pass over
the staged candidates of the one before. A row-local pass also stages, per chunk, the columns the segment's global
steps ask for (all of them, so global steps back to back cost no pass between them); the parent then runs the
steps over those files on the engine, one after another, each without the rows the ones before it removed, and
writes their decisions.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.address import Addresses
from tunelake.schema import LEDGER, QUARANTINE, quarantine_ledger, table_of
from tunelake.shift import Facets
from tunelake.stage import ACTIONS, DECISIONS, Decisions, GlobalStage, Outcome, RowLocalStage, Stage, Tally


@dataclass(frozen=True)
class Segment:
    rows: tuple[RowLocalStage, ...]  # fused over each chunk, in order
    steps: tuple[GlobalStage, ...]  # the global steps that end the segment, in order; none for the last one


def segments(chain: list[Stage]) -> list[Segment]:
    """The chain cut after each run of global steps; there is always a last segment, which publish ends."""
    cut, rows, steps = [], [], []
    for stage in chain:
        if isinstance(stage, GlobalStage):
            steps.append(stage)
            continue
        if steps:
            cut.append(Segment(tuple(rows), tuple(steps)))
            rows, steps = [], []
        rows.append(stage)
    if steps:
        cut.append(Segment(tuple(rows), tuple(steps)))
        rows = []
    return [*cut, Segment(tuple(rows), ())]


@dataclass
class StageCount:
    """One stage's counts; workers return them per chunk and the parent adds them up."""

    name: str
    version: str
    kind: str  # row-local | global | ingest
    records_in: int = 0
    kept: int = 0
    modified: int = 0
    dropped: Counter = field(default_factory=Counter)  # by reason code
    quarantined: Counter = field(default_factory=Counter)  # by reason code
    seconds: float = 0.0
    tally: Tally = field(default_factory=Counter)  # the stage's own figures (Outcome.tally, Decisions.tally)
    profile: Tally = field(default_factory=Counter)  # its records in and kept by facet (shift.Facets), row-local

    def add(self, other: StageCount) -> None:
        self.records_in += other.records_in
        self.kept += other.kept
        self.modified += other.modified
        self.dropped.update(other.dropped)
        self.quarantined.update(other.quarantined)
        self.seconds += other.seconds
        self.tally.update(other.tally)
        self.profile.update(other.profile)

    def reconciles(self) -> bool:
        return self.records_in == self.kept + sum(self.dropped.values()) + sum(self.quarantined.values())

    def report(self) -> dict:
        return {
            "version": self.version,
            "kind": self.kind,
            "records": self.records_in,
            "in": self.records_in,
            "kept": self.kept,
            "modified": self.modified,
            "dropped": dict(sorted(self.dropped.items())),
            "quarantined": dict(sorted(self.quarantined.items())),
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_in / self.seconds) if self.seconds > 0 else None,
        }


def count_of(stage: Stage) -> StageCount:
    return StageCount(stage.name, stage.version, "global" if isinstance(stage, GlobalStage) else "row-local")


@dataclass
class Verdicts:
    """What a pass decided besides the rows it kept: quarantine and ledger rows, and per-source totals."""

    quarantine: list[pa.Table] = field(default_factory=list)
    ledger: list[pa.Table] = field(default_factory=list)
    per_source: Counter = field(default_factory=Counter)  # (source, "dropped" | "quarantined") -> rows

    def tables(self) -> tuple[pa.Table, pa.Table]:
        quarantine = (
            pa.concat_tables(q.select(QUARANTINE.names) for q in self.quarantine)
            if self.quarantine
            else (QUARANTINE.empty_table())
        )
        ledger = pa.concat_tables(self.ledger) if self.ledger else LEDGER.empty_table()
        return quarantine, ledger


def run_row_stages(
    batch: pa.RecordBatch,
    stages: tuple[RowLocalStage, ...],
    addresses: Addresses,
    run_id: str,
    verdicts: Verdicts,
    raw: pa.Table | None = None,
) -> tuple[pa.RecordBatch, list[StageCount]]:
    """The batch through each stage in turn; returns the rows all of them kept, and each stage's counts.

    `raw` (bronze's `row` and `raw` columns of the chunk) gives quarantined rows their raw bytes when known.
    Each stage's profile counts the records it took and kept by the facets they had coming in.
    """
    counts = []
    facets = Facets(batch) if stages else None
    alive = np.arange(batch.num_rows)  # the incoming rows still in the batch
    for stage in stages:
        started = time.perf_counter()
        count = count_of(stage)
        count.records_in = batch.num_rows
        outcome = stage.process(batch)
        _check(stage, batch, outcome)
        batch, gone = _apply(stage, outcome, addresses, run_id, verdicts, count, raw)
        count.kept = batch.num_rows
        count.tally.update(outcome.tally)
        count.profile.update(facets.tally(alive, "in"))
        alive = alive[~gone]
        count.profile.update(facets.tally(alive, "kept"))
        count.seconds = time.perf_counter() - started
        counts.append(count)
    return batch, counts


def _check(stage: Stage, batch: pa.RecordBatch, outcome: Outcome) -> None:
    """A stage that loses or adds rows, or both drops and quarantines one, is a bug: fail the build, loudly."""
    if outcome.rows.num_rows != batch.num_rows:
        raise RuntimeError(f"stage {stage.name!r} returned {outcome.rows.num_rows} rows for {batch.num_rows}")
    for name in ("drop", "quarantine", "field", "detail", "modified"):
        column = getattr(outcome, name)
        if column is not None and len(column) != batch.num_rows:
            raise RuntimeError(f"stage {stage.name!r}: `{name}` has {len(column)} entries for {batch.num_rows} rows")
    if outcome.drop is not None and outcome.quarantine is not None:
        both = pc.and_(pc.is_valid(outcome.drop), pc.is_valid(outcome.quarantine))
        if pc.any(both).as_py():
            raise RuntimeError(f"stage {stage.name!r} both dropped and quarantined a row")
    if "_ord" not in outcome.rows.schema.names or not outcome.rows["_ord"].equals(batch["_ord"]):
        raise RuntimeError(f"stage {stage.name!r} changed the rows' `_ord` (their input addresses)")


def _apply(
    stage: Stage,
    outcome: Outcome,
    addresses: Addresses,
    run_id: str,
    verdicts: Verdicts,
    count: StageCount,
    raw: pa.Table | None,
) -> tuple[pa.RecordBatch, np.ndarray]:
    """The rows the stage kept, and which of its input rows are gone."""
    rows = outcome.rows
    ords, ids = rows["_ord"], rows["id"]
    gone = np.zeros(rows.num_rows, bool)
    if outcome.drop is not None:
        dropped = pc.is_valid(outcome.drop)
        where = pa.array(np.flatnonzero(dropped.to_numpy(zero_copy_only=False)))
        if len(where):
            reason = outcome.drop.take(where)
            detail = outcome.detail.take(where) if outcome.detail is not None else None
            verdicts.ledger.append(
                addresses.ledger(ords.take(where), ids.take(where), stage.name, "drop", reason, detail, run_id)
            )
            _tally(count.dropped, verdicts.per_source, "dropped", reason, rows["source"].take(where))
            gone[where.to_numpy()] = True
    if outcome.quarantine is not None:
        where = pa.array(np.flatnonzero(pc.is_valid(outcome.quarantine).to_numpy(zero_copy_only=False)))
        if len(where):
            reason = outcome.quarantine.take(where)
            verdicts.quarantine.append(
                quarantined(
                    addresses,
                    ords.take(where),
                    ids.take(where),
                    stage.name,
                    reason,
                    outcome.field.take(where) if outcome.field is not None else None,
                    outcome.detail.take(where) if outcome.detail is not None else None,
                    raw,
                )
            )
            verdicts.ledger.append(quarantine_ledger(verdicts.quarantine[-1], stage.name, run_id))
            _tally(count.quarantined, verdicts.per_source, "quarantined", reason, rows["source"].take(where))
            gone[where.to_numpy()] = True
    if outcome.modified is not None:
        where = pa.array(np.flatnonzero(pc.is_valid(outcome.modified).to_numpy(zero_copy_only=False) & ~gone))
        if len(where):
            changed = outcome.modified.take(where)
            verdicts.ledger.append(
                addresses.ledger(ords.take(where), ids.take(where), stage.name, "modify", stage.name, changed, run_id)
            )
            count.modified += len(where)
    return (rows.filter(pa.array(~gone)) if gone.any() else rows), gone


def quarantined(
    addresses: Addresses,
    ords: pa.Array,
    ids: pa.Array,
    stage: str,
    reason: pa.Array,
    field_: pa.Array | None,
    detail: pa.Array | None,
    raw: pa.Table | None,
) -> pa.Table:
    """Quarantine rows for candidates a stage rejected (raw bytes from the chunk's bronze rows, when given)."""
    source, file, row, sub = addresses.of(ords)
    raws = None
    if raw is not None:
        raws = raw["raw"].take(pc.index_in(row, raw["row"]))
    quarantine = table_of(
        QUARANTINE,
        len(ords),
        source=source,
        file=file,
        row=row,
        sub=sub,
        id=ids,
        stage=stage,
        reason=reason,
        field=field_,
        detail=detail,
        raw=raws,
    )
    return quarantine


def count_reasons(by_reason: Counter, reasons: pa.Array) -> None:
    """Count reasons by their code: `near_duplicate_of:<id>` counts as near_duplicate_of."""
    codes = pc.list_element(pc.split_pattern(reasons, ":", max_splits=1), 0)
    for item in pc.value_counts(codes).to_pylist():
        by_reason[item["values"]] += item["counts"]


def _tally(by_reason: Counter, per_source: Counter, action: str, reasons: pa.Array, sources: pa.Array) -> None:
    count_reasons(by_reason, reasons)
    for item in pc.value_counts(sources).to_pylist():
        per_source[(item["values"], action)] += item["counts"]


def global_verdicts(
    stage: GlobalStage, decided: Decisions, addresses: Addresses, run_id: str, count: StageCount
) -> Verdicts:
    """A global step's decisions as ledger and quarantine rows, counted; a malformed decision fails the build."""
    table = decided.decisions
    if table.schema != DECISIONS:
        raise RuntimeError(f"stage {stage.name!r} returned decisions in {table.schema}, expected {DECISIONS}")
    if table.num_rows and pc.count_distinct(table["_ord"]).as_py() != table.num_rows:
        raise RuntimeError(f"stage {stage.name!r} decided about one record twice")
    unknown = set(pc.unique(table["action"]).to_pylist()) - set(ACTIONS)
    if unknown:
        raise RuntimeError(f"stage {stage.name!r} returned actions {sorted(unknown)}; expected {ACTIONS}")
    verdicts = Verdicts()
    source = addresses.of(table["_ord"])[0]
    for action, key, counter in (("drop", "dropped", count.dropped), ("quarantine", "quarantined", count.quarantined)):
        mine = pc.equal(table["action"], action)
        if pc.all(mine).as_py():  # one action for all (a step that only drops): no copy of the decisions
            rows, sources = table, source
        else:
            rows, sources = table.filter(mine), source.filter(mine)
        if not rows.num_rows:
            continue
        if action == "drop":
            verdicts.ledger.append(
                addresses.ledger(rows["_ord"], rows["id"], stage.name, "drop", rows["reason"], rows["detail"], run_id)
            )
        else:
            q = quarantined(
                addresses, rows["_ord"], rows["id"], stage.name, rows["reason"], None, rows["detail"], None
            )
            verdicts.quarantine.append(q)
            verdicts.ledger.append(quarantine_ledger(q, stage.name, run_id))
        _tally(counter, verdicts.per_source, key, rows["reason"], sources)
    count.kept = count.records_in - table.num_rows
    count.tally.update(decided.tally)
    return verdicts
