"""The row-local stage from bronze to silver: raw rows -> normalised, validated canonical records.

One call handles one chunk of one file and gives back Arrow batches for four tables: the bronze rows,
the candidate records (deduplicated later, globally), the quarantined rows and the ledger rows. Parsing,
adapting and validating nested chat data has no vectorised form, so this is the per-row Python of a build.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import ADAPTERS
from tunelake.ingest.adapters.messages import EXTRA
from tunelake.ingest.readers import RawChunk
from tunelake.schema import BRONZE, LEDGER, QUARANTINE, RECORD, Reason, Regime, Rejected, prompt_id, record_id
from tunelake.silver.normalize import MESSAGE_LISTS, normalize_record
from tunelake.silver.validate import validate

# Candidate records carry their input position so dedup can keep the first occurrence of each duplicate.
CANDIDATE = RECORD.append(pa.field("_ord", pa.int64(), nullable=False))
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


def canonical_record(obj: object, plan: FilePlan) -> tuple[dict, set[str]]:
    """The normalised, validated record for one parsed row, and what normalisation changed."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.wrong_type, None, f"expected a JSON object per row, got {type(obj).__name__}")
    if plan.format_error:
        raise Rejected(plan.format_error[0], None, plan.format_error[1])
    source = plan.source
    adapter = ADAPTERS[plan.adapter]
    regime = source.regime or adapter.regimes[0]
    missing = sorted(adapter.required - obj.keys())
    if missing:
        raise Rejected(Reason.missing_field, missing[0], f"the {adapter.name} format needs {', '.join(missing)}")
    fields = adapter.convert(obj, regime)
    leftovers = {k: v for k, v in obj.items() if k not in adapter.consumes and k not in _PASSTHROUGH}
    meta = {**source.meta, **leftovers, **(fields.pop("meta", None) or {})}
    message_extras = {
        f"{key}[{i}]": msg.pop(EXTRA)
        for key in MESSAGE_LISTS
        for i, msg in enumerate(fields.get(key) or ())
        if EXTRA in msg
    }
    if message_extras:
        meta["message_fields"] = message_extras
    record = dict.fromkeys(RECORD.names) | fields
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
    changes = normalize_record(record)
    validate(record, source.max_chars)
    record["id"] = record_id(record)
    record["prompt_id"] = prompt_id(record)
    return record, changes


def _append(columns: dict[str, list], values: tuple) -> None:
    for column, value in zip(columns.values(), values, strict=True):
        column.append(value)


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
    bronze = {k: [] for k in BRONZE.names}
    quarantine = {k: [] for k in QUARANTINE.names}
    ledger = {k: [] for k in LEDGER.names}
    candidates: list[dict] = []

    def log(row: int, id_: str | None, action: str, reason: str | None, detail: str | None) -> None:
        _append(ledger, (id_, source.name, chunk.file, row, STAGE, action, reason, detail, run_id))

    lines = chunk.data.split(b"\n")
    if chunk.data.endswith(b"\n"):
        lines.pop()
    for offset, line in enumerate(lines):
        row = chunk.first_row + offset
        text = line.removesuffix(b"\r")
        if not text.strip():
            continue  # a blank line is not a row
        _append(bronze, (source.name, chunk.file, row, hashlib.blake2b(line, digest_size=16).hexdigest(), line))
        try:
            try:
                obj = orjson.loads(text.removeprefix(b"\xef\xbb\xbf"))
            except orjson.JSONDecodeError as e:
                try:
                    text.decode("utf-8")
                except UnicodeDecodeError as u:
                    raise Rejected(Reason.invalid_utf8, None, f"byte {u.start} is not UTF-8") from None
                raise Rejected(Reason.invalid_json, None, str(e)) from None
            try:
                record, changes = canonical_record(obj, plan)
            except Rejected:
                raise
            except Exception as e:  # noqa: BLE001 - a value of a shape no check foresaw rejects its row only
                raise Rejected(
                    Reason.wrong_type, None, f"the {plan.adapter} format cannot read this row: {e!r}"
                ) from None
        except Rejected as r:
            _append(quarantine, (source.name, chunk.file, row, STAGE, r.reason.value, r.field, r.detail, line))
            where = f"{r.field}: " if r.field else ""
            log(row, None, "quarantine", r.reason.value, where + r.detail)
            continue
        record["_ord"] = ordinal(source.index, plan.index, row)
        candidates.append(record)
        log(row, record["id"], "keep", None, f"format={plan.adapter}")
        if changes:
            log(row, record["id"], "modify", "normalized", ",".join(sorted(changes)))
    return ChunkResult(
        bronze=pa.RecordBatch.from_pydict(bronze, schema=BRONZE),
        candidates=pa.RecordBatch.from_pylist(candidates, schema=CANDIDATE),
        quarantine=pa.RecordBatch.from_pydict(quarantine, schema=QUARANTINE),
        ledger=pa.RecordBatch.from_pydict(ledger, schema=LEDGER),
        counts={"bronze": len(bronze["row"]), "quarantined": len(quarantine["row"]), "candidates": len(candidates)},
    )
