"""The row-local stage from bronze to silver: raw rows -> normalised, validated canonical records.

One call handles one chunk of one file and gives back Arrow batches for four tables: the bronze rows,
the candidate records (deduplicated later, globally), the quarantined rows and the ledger rows. Parsing and
adapting the many shapes of raw rows is per-row Python; normalisation, validation and identity then run
vectorised over the chunk's records (canonical_batch), one implementation for every format.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import ADAPTERS
from tunelake.ingest.adapters.messages import EXTRA
from tunelake.ingest.readers import RawChunk
from tunelake.schema import BRONZE, LEDGER, QUARANTINE, RECORD, Reason, Regime, Rejected, table_of
from tunelake.silver.identify import prompt_ids, record_ids
from tunelake.silver.normalize import normalize
from tunelake.silver.turns import MESSAGE_LISTS
from tunelake.silver.validate import validate

# Candidate records carry their input position so dedup can keep the first occurrence of each duplicate.
CANDIDATE = RECORD.append(pa.field("_ord", pa.int64(), nullable=False))
# A record as the adapters make it: everything but the ids, which are hashes of the normalised content.
_UNIDENTIFIED = pa.schema([f for f in RECORD if f.name not in ("id", "prompt_id")])
STAGE = "canonicalize"
# Canonical fields a raw row may give directly, whatever its format.
_PASSTHROUGH = ("license", "lang", "created_at")


@dataclass(frozen=True)
class SourcePlan:
    """What the stage needs to know about the source a chunk came from."""

    index: int
    name: str
    regime: Regime | None
    license: str | None
    origin: str
    meta: dict
    max_chars: int


@dataclass(frozen=True)
class FilePlan:
    source: SourcePlan
    index: int  # position of the file in the source, for the ordering key
    adapter: str | None  # None when no format could be chosen for the file
    format_error: tuple[Reason, str] | None = None


@dataclass
class ChunkResult:
    bronze: pa.RecordBatch
    candidates: pa.RecordBatch
    quarantine: pa.RecordBatch
    ledger: pa.RecordBatch
    counts: dict[str, int] = field(default_factory=dict)


# An input position packed in an int64: 8 bits of source, 20 of file, 35 of row.
MAX_SOURCES, MAX_FILES, MAX_ROWS = 1 << 8, 1 << 20, 1 << 35


def ordinal(source: int, file: int, row: int) -> int:
    """A sortable int64 for an input position: source, then file, then row."""
    return (source << 55) | (file << 35) | row


def ordinal_parts(ords: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(source, file, row) index arrays back from ordinals."""
    return (
        pc.shift_right(ords, 55),
        pc.bit_wise_and(pc.shift_right(ords, 35), MAX_FILES - 1),
        pc.bit_wise_and(ords, MAX_ROWS - 1),
    )


def adapt(obj: object, plan: FilePlan) -> dict:
    """One parsed row -> the fields of its canonical record, before normalisation (no id yet); raises Rejected."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.wrong_type, None, f"expected a JSON object per row, got {type(obj).__name__}")
    if plan.format_error:
        raise Rejected(plan.format_error[0], None, plan.format_error[1])
    try:
        return _adapt(obj, plan)
    except Rejected:
        raise
    except Exception as e:  # noqa: BLE001 - a value of a shape no check foresaw rejects its row only
        raise Rejected(Reason.wrong_type, None, f"the {plan.adapter} format cannot read this row: {e!r}") from None


def _adapt(obj: dict, plan: FilePlan) -> dict:
    source = plan.source
    adapter = ADAPTERS[plan.adapter]
    regime = source.regime or adapter.regimes[0]
    missing = sorted(adapter.required - obj.keys())
    if missing:
        raise Rejected(Reason.missing_field, missing[0], f"the {adapter.name} format needs {', '.join(missing)}")
    record = adapter.convert(obj, regime)
    leftovers = {k: v for k, v in obj.items() if k not in adapter.consumes and k not in _PASSTHROUGH}
    meta = {**source.meta, **leftovers, **(record.pop("meta", None) or {})}
    message_extras = {
        f"{key}[{i}]": msg.pop(EXTRA)
        for key in MESSAGE_LISTS
        for i, msg in enumerate(record.get(key) or ())
        if EXTRA in msg
    }
    if message_extras:
        meta["message_fields"] = message_extras
    license_ = obj.get("license") if isinstance(obj.get("license"), str) else source.license
    if not license_:
        raise Rejected(Reason.missing_license, "license", "neither the recipe source nor the record gives a license")
    record.update(
        regime=regime.value,
        source=source.name,
        origin=source.origin,
        license=license_,
        meta=orjson.dumps(meta, default=str).decode() if meta else None,
        **{k: obj[k] for k in ("lang", "created_at") if isinstance(obj.get(k), str)},
    )
    return record


def canonical_batch(records: list[dict], max_chars: int) -> tuple[pa.RecordBatch, np.ndarray, dict[int, Rejected]]:
    """Adapted records -> the whole batch normalised and identified (RECORD schema), what normalisation changed
    per record (see normalize), and the first problem of each invalid record, by index."""
    batch, changes = normalize(pa.RecordBatch.from_pylist(records, schema=_UNIDENTIFIED))
    problems = validate(batch, max_chars)
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    columns.update(id=record_ids(batch), prompt_id=prompt_ids(batch))
    return pa.RecordBatch.from_arrays([columns[n] for n in RECORD.names], schema=RECORD), changes, problems


def canonical_record(obj: object, plan: FilePlan) -> tuple[dict, set[str]]:
    """The canonical record for one parsed row, and what normalisation changed; raises Rejected."""
    batch, changes, problems = canonical_batch([adapt(obj, plan)], plan.source.max_chars)
    if problems:
        raise problems[0]
    return batch.to_pylist()[0], set((changes[0] or "").split(",")) - {""}


@contextmanager
def _no_gc() -> Iterator[None]:
    """The stage makes many short-lived dicts and no cycles; the cyclic GC would rescan them all, for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def canonicalize(chunk: RawChunk, plan: FilePlan, run_id: str) -> ChunkResult:
    with _no_gc():
        return _canonicalize(chunk, plan, run_id)


def _canonicalize(chunk: RawChunk, plan: FilePlan, run_id: str) -> ChunkResult:
    source = plan.source
    bronze = {"row": [], "raw_hash": [], "raw": []}
    rejected: list[tuple[int, bytes, Rejected]] = []  # (row, raw line, why)
    records, rows, raws = [], [], []  # adapted records, and their rows and raw lines

    lines = chunk.data.split(b"\n")
    if chunk.data.endswith(b"\n"):
        lines.pop()
    for offset, line in enumerate(lines):
        row = chunk.first_row + offset
        text = line.removesuffix(b"\r")
        if not text.strip():
            continue  # a blank line is not a row
        bronze["row"].append(row)
        bronze["raw_hash"].append(hashlib.blake2b(line, digest_size=16).hexdigest())
        bronze["raw"].append(line)
        try:
            records.append(adapt(_parse(text), plan))
        except Rejected as r:
            rejected.append((row, line, r))
            continue
        rows.append(row)
        raws.append(line)

    batch, changes, problems = canonical_batch(records, source.max_chars)
    rejected += [(rows[i], raws[i], r) for i, r in problems.items()]
    valid = np.ones(len(records), bool)
    valid[list(problems)] = False
    kept_rows = pa.array(np.asarray(rows, np.int64)[valid])
    candidates = batch.filter(pa.array(valid)).append_column(
        CANDIDATE.field("_ord"), pc.bit_wise_or(ordinal(source.index, plan.index, 0), kept_rows)
    )
    ids, kept_changes = candidates["id"], changes[valid]
    modified = np.flatnonzero(kept_changes != None)  # noqa: E711 - an object array: elementwise
    ledger = [
        table_of(
            LEDGER,
            len(rejected),
            source=source.name,
            file=chunk.file,
            row=[row for row, _, _ in rejected],
            stage=STAGE,
            action="quarantine",
            reason=[r.reason.value for _, _, r in rejected],
            detail=[f"{r.field}: {r.detail}" if r.field else r.detail for _, _, r in rejected],
            run_id=run_id,
        ),
        table_of(
            LEDGER,
            len(ids),
            id=ids,
            source=source.name,
            file=chunk.file,
            row=kept_rows,
            stage=STAGE,
            action="keep",
            detail=f"format={plan.adapter}",
            run_id=run_id,
        ),
        table_of(
            LEDGER,
            len(modified),
            id=ids.take(pa.array(modified, pa.int64())),
            source=source.name,
            file=chunk.file,
            row=kept_rows.take(pa.array(modified, pa.int64())),
            stage=STAGE,
            action="modify",
            reason="normalized",
            detail=kept_changes[modified].tolist(),
            run_id=run_id,
        ),
    ]
    quarantine = table_of(
        QUARANTINE,
        len(rejected),
        source=source.name,
        file=chunk.file,
        row=[row for row, _, _ in rejected],
        stage=STAGE,
        reason=[r.reason.value for _, _, r in rejected],
        field=[r.field for _, _, r in rejected],
        detail=[r.detail for _, _, r in rejected],
        raw=[raw for _, raw, _ in rejected],
    )
    return ChunkResult(
        bronze=table_of(BRONZE, len(bronze["row"]), source=source.name, file=chunk.file, **bronze),
        candidates=candidates,
        quarantine=_by_row(quarantine),
        ledger=_by_row(pa.concat_tables(ledger)),
        counts={"bronze": len(bronze["row"]), "quarantined": len(rejected), "candidates": candidates.num_rows},
    )


def _by_row(table: pa.Table) -> pa.Table:
    """Rows in input order (a stable sort: a record's keep entry stays before its modify entry)."""
    return table.take(pc.sort_indices(table["row"]))


def _parse(text: bytes) -> object:
    try:
        return orjson.loads(text.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as e:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as u:
            raise Rejected(Reason.invalid_utf8, None, f"byte {u.start} is not UTF-8") from None
        raise Rejected(Reason.invalid_json, None, str(e)) from None
