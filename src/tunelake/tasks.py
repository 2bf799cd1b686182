"""The units of work a build hands to its engine.

Each task runs one stage over one piece of the input and writes the stage's outputs as Parquet parts itself,
returning only what the parent needs to count and commit: no data travels back between processes. Tasks
import no Delta code; only the dedup and export steps run DuckDB in a worker.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake.engine.parts import Part, part_name, read_arrow, write_arrow, write_part
from tunelake.gold.project import gold_schema, gold_table
from tunelake.gold.split import SPLITS, assign_splits
from tunelake.gold.tokenize.masks import MaskSettings
from tunelake.gold.tokenize.pack import PackStats, pack
from tunelake.gold.tokenize.stage import PACKED, TokenizerSpec, tokenize_rows
from tunelake.ingest.readers import RawChunk
from tunelake.recipe import Split
from tunelake.schema import LEDGER, RECORD, TOKENIZE_QUARANTINE, Regime, quarantine_ledger, table_of
from tunelake.silver.canonicalize import FilePlan, canonicalize, ordinal_parts
from tunelake.silver.dedup import dedup_keys

# Rows in a row group of a gold part, the unit one tokenize task reads: a publish window holds tens of thousands
# of records, and tokenizing them at once would hold all their token ids and offsets.
GOLD_ROW_GROUP = 2048

# A build's steps, in the order their ledger parts sort.
STEP_READ, STEP_CANONICALIZE, STEP_DEDUP, STEP_PUBLISH, STEP_TOKENIZE, STEP_PACK = 0, 1, 2, 3, 4, 5


def candidates_table(run_id: str) -> str:
    """Where canonicalize stages candidate records for publishing after the global dedup step."""
    return f"_staging/{run_id}/candidates"


def gold_staging(run_id: str, table: str) -> str:
    """Where publish stages a gold table's rows as Arrow, for the exports to stream without decoding Parquet."""
    return f"_staging/{run_id}/{table}"


def keys_table(run_id: str) -> str:
    """Where canonicalize stages the candidates' dedup keys, for the global dedup step."""
    return f"_staging/{run_id}/keys"


@dataclass(frozen=True)
class Addresses:
    """Maps candidate ordinals back to the (source, file, row) columns of the ledger."""

    sources: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]

    def of(self, ords: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
        src, fil, row = ordinal_parts(ords)
        starts = np.cumsum([0] + [len(f) for f in self.files[:-1]])
        flat = pa.array([f for files in self.files for f in files], pa.string())
        file_index = pc.add(pc.take(pa.array(starts, pa.int64()), src), fil)
        return pc.take(pa.array(self.sources, pa.string()), src), pc.take(flat, file_index), row

    def ledger(self, ords: pa.Array, ids: pa.Array, stage: str, action: str, reason, detail, run_id: str) -> pa.Table:
        """Ledger rows for candidates; reason and detail are arrays or one value for all."""
        source, file, row = self.of(ords)
        return table_of(
            LEDGER,
            len(ords),
            id=ids,
            source=source,
            file=file,
            row=row,
            stage=stage,
            action=action,
            reason=reason,
            detail=detail,
            run_id=run_id,
        )


@dataclass(frozen=True)
class CanonicalizeTask:
    root: Path
    run_id: str
    seq: int
    chunk: RawChunk
    plan: FilePlan


@dataclass(frozen=True)
class Staged:
    """A chunk's candidate records and their dedup keys, staged; they hold the ordinals first..last, in order."""

    part: Part
    keys: Part
    first: int
    last: int


@dataclass
class CanonicalizeDone:
    source: str
    parts: list[Part]
    counts: dict[str, int]
    staged: Staged | None


def run_canonicalize(task: CanonicalizeTask) -> CanonicalizeDone:
    result = canonicalize(task.chunk, task.plan, task.run_id)
    source = task.plan.source.name
    name = part_name(task.run_id, STEP_CANONICALIZE, task.seq)
    parts = [
        write_part(task.root, f"bronze/{source}", name, result.bronze),
        write_part(task.root, "silver/quarantine", name, result.quarantine),
        write_part(task.root, "ledger", name, result.ledger),
    ]
    part = write_arrow(task.root, candidates_table(task.run_id), name, result.candidates)
    staged = None
    if part:
        keys = write_part(task.root, keys_table(task.run_id), name, dedup_keys(result.candidates))
        ords = result.candidates.column("_ord")
        staged = Staged(part, keys, ords[0].as_py(), ords[-1].as_py())
    return CanonicalizeDone(source, [p for p in parts if p], result.counts, staged)


@dataclass(frozen=True)
class PublishTask:
    root: Path
    run_id: str
    seq: int
    candidates: tuple[Staged, ...]  # consecutive staged parts
    dropped: np.ndarray  # ordinals of these candidates that duplicate an earlier record
    split: Split
    addresses: Addresses
    stage_gold: bool  # whether exports will stream the gold rows (the recipe asks for some)


@dataclass
class PublishDone:
    parts: list[Part]
    silver: Counter = field(default_factory=Counter)  # records per source


def run_publish(task: PublishTask) -> PublishDone:
    """Staged candidates minus their duplicates -> silver/records and, split by prompt group, gold."""
    batch = pa.concat_tables(read_arrow(task.root / s.part.table / s.part.name) for s in task.candidates)
    if len(task.dropped):
        batch = batch.filter(pc.invert(pc.is_in(batch["_ord"], pa.array(task.dropped))))
    name = part_name(task.run_id, STEP_PUBLISH, task.seq)
    done = PublishDone([])
    if not batch.num_rows:
        return done
    records = batch.select(RECORD.names)
    splits = assign_splits(batch["prompt_id"].combine_chunks(), task.split)
    where = pc.binary_join_element_wise("gold/", records["regime"], "/", splits, "")
    keep = task.addresses.ledger(batch["_ord"], batch["id"], "split", "keep", None, where, task.run_id)
    parts = [write_part(task.root, "silver/records", name, records), write_part(task.root, "ledger", name, keep)]
    # Each gold table's rows are written as soon as they are selected, so one of them is held at a time.
    for regime in Regime:
        in_regime = pc.equal(records["regime"], regime.value)
        for split in SPLITS:
            table = gold_table(regime, split)
            rows = records.filter(pc.and_(in_regime, pc.equal(splits, split))).select(gold_schema(regime).names)
            parts.append(write_part(task.root, table, name, rows, GOLD_ROW_GROUP))
            if task.stage_gold:
                parts.append(write_arrow(task.root, gold_staging(task.run_id, table), name, rows))
    done.parts = [p for p in parts if p]
    for item in pc.value_counts(records["source"]).to_pylist():
        done.silver[item["values"]] += item["counts"]
    return done


@dataclass(frozen=True)
class TokenizeTask:
    root: Path
    run_id: str
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
    name = part_name(task.run_id, STEP_TOKENIZE, task.seq)
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
            write_part(task.root, "ledger", name, ledger),
        ]
    return TokenizeDone(task.output, [p for p in parts if p], gold.num_rows - len(rejects), len(rejects))


@dataclass(frozen=True)
class PackTask:
    root: Path
    run_id: str
    seq: int
    files: list[str]  # consecutive parts of one tokenized SFT table: one packing window
    output: str
    max_length: int


def run_pack(task: PackTask) -> tuple[list[Part], PackStats]:
    """Best-fit decreasing over one window of tokenized examples; a window wastes at most its last bin."""
    rows = pa.concat_tables(pq.read_table(f, columns=["id", "input_ids", "labels"]) for f in task.files)
    packed, stats = pack(rows, task.max_length)
    part = write_part(task.root, task.output, part_name(task.run_id, STEP_PACK, task.seq), packed.cast(PACKED))
    return ([part] if part else []), stats
