"""The row-local stage from bronze to silver: raw rows -> normalised, validated canonical records.

One call handles one chunk of one file and gives back Arrow batches for four tables: the bronze rows,
the candidate records (deduplicated later, globally), the quarantined rows and the ledger rows.

Adapting: a format with a columnar adapter (ingest/adapters/arrow.py) parses and adapts the whole chunk with
Arrow; the rows it cannot vouch for, and every row of other formats, go through the per-row adapter. Then
normalisation, validation and identity run vectorised over all of the chunk's records (canonical_batch), one
implementation whichever way a record came in.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tunelake.address import MAX_SUB, ordinals
from tunelake.ingest.adapters import ADAPTERS, group_key
from tunelake.ingest.adapters.arrow import constant, json_string
from tunelake.ingest.adapters.messages import EXTRA, json_text, optional_text
from tunelake.ingest.adapters.pairs import RatingsPolicy
from tunelake.ingest.readers import RawChunk
from tunelake.schema import (
    BRONZE,
    LEDGER,
    QUARANTINE,
    RECORD,
    NoRecord,
    Reason,
    Regime,
    Rejected,
    quarantine_ledger,
    table_of,
)
from tunelake.silver.identify import encode_lists, prompt_ids, record_ids
from tunelake.silver.normalize import normalize
from tunelake.silver.turns import MESSAGE_LISTS
from tunelake.silver.validate import validate
from tunelake.stage import BuildRefused

# Candidate records carry their input position so dedup can keep the first occurrence of each duplicate.
CANDIDATE = RECORD.append(pa.field("_ord", pa.int64(), nullable=False))
# A record as the adapters make it: everything but the ids, which are hashes of the normalised content.
ADAPTED = pa.schema([f for f in RECORD if f.name not in ("id", "prompt_id")])
STAGE = "canonicalize"
STAGE_VERSION = "3"  # bump when canonical records change for the same input
BOM = b"\xef\xbb\xbf"
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
    ratings: RatingsPolicy = RatingsPolicy()  # for the adapters that combine ratings (Adapter.ratings)


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
    groups: pa.Table | None = None  # a grouped format's runs of rows (GROUP_RUNS), for the build's check that no
    # key comes back after its run ended (an unsorted file)


def adapt(obj: object, plan: FilePlan) -> list[dict | Rejected]:
    """One parsed row -> the fields of its canonical records (usually one; an adapter may make several of one
    row), before normalisation (no id yet); a Rejected in the list is one record of the row that cannot be made
    (the row's others go on); raises Rejected for a row that gives none."""
    if not isinstance(obj, dict):
        raise Rejected(Reason.wrong_type, None, f"expected a JSON object per row, got {type(obj).__name__}")
    if plan.format_error:
        raise Rejected(plan.format_error[0], None, plan.format_error[1])
    return _adapt(obj, plan)  # adapters check every shape they read: any other exception is a bug, and fails loudly


def _adapt(obj: dict, plan: FilePlan) -> list[dict | Rejected]:
    adapter = ADAPTERS[plan.adapter]
    regime = plan.source.regime or adapter.regimes[0]
    missing = sorted(adapter.required - obj.keys())
    if missing:
        raise Rejected(Reason.missing_field, missing[0], f"the {adapter.name} format needs {', '.join(missing)}")
    made = adapter.convert(obj, regime, plan.source.ratings) if adapter.ratings else adapter.convert(obj, regime)
    return _finished(made, obj, plan, adapter, regime)


def adapt_group(rows: list[tuple[int, dict]], plan: FilePlan) -> list[dict | Rejected]:
    """A grouped format's run of rows with one key, as (row number, parsed row) -> the group's records, as adapt
    gives a row's; raises Rejected for a group that gives none. The group's meta holds the fields every row has
    the same value in (the prompt's source, its id); fields that differ per row are the adapter's to read."""
    adapter = ADAPTERS[plan.adapter]
    for number, row in rows:
        missing = sorted(adapter.required - row.keys())
        if missing:
            detail = f"the {adapter.name} format needs {', '.join(missing)}"
            raise Rejected(Reason.missing_field, f"rows[{number}].{missing[0]}", detail)
    first = rows[0][1]
    common = {k: v for k, v in first.items() if all(k in row and row[k] == v for _, row in rows[1:])}
    regime = plan.source.regime or adapter.regimes[0]
    made = adapter.convert(rows, regime, plan.source.ratings) if adapter.ratings else adapter.convert(rows, regime)
    return _finished(made, common, plan, adapter, regime)


def _finished(made: dict | list, obj: dict, plan: FilePlan, adapter, regime: Regime) -> list[dict | Rejected]:
    records = made if isinstance(made, list) else [made]
    if len(records) > MAX_SUB:
        raise Rejected(
            Reason.wrong_type, None, f"the row gives {len(records)} records; at most {MAX_SUB} may come of one row"
        )
    return [r if isinstance(r, Rejected) else _finish(r, obj, plan, adapter, regime) for r in records]


def _finish(record: dict, obj: dict, plan: FilePlan, adapter, regime: Regime) -> dict:
    """A record as the adapter made it, with what every record carries: meta, regime, source, license."""
    source = plan.source
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
    given = {key: optional_text(obj, key) for key in _PASSTHROUGH}  # a record's own license, if any, wins
    license_ = source.license if given["license"] is None else given["license"]
    if not license_:
        raise Rejected(Reason.missing_license, "license", "neither the recipe source nor the record gives a license")
    record.update(
        regime=regime.value,
        source=source.name,
        origin=source.origin,
        license=license_,
        meta=dump_meta(meta) if meta else None,
        lang=given["lang"],
        created_at=given["created_at"],
    )
    return record


def dump_meta(value: object) -> str:
    """Meta as JSON text, keys sorted: the same whatever order a source wrote its keys in."""
    return json_text(value, "meta", sort_keys=True)


def adapted_batch(records: list[dict]) -> pa.RecordBatch:
    """Records from per-row adapters, as a batch."""
    return pa.RecordBatch.from_pylist(records, schema=ADAPTED)


def canonical_batch(adapted: pa.RecordBatch, max_chars: int) -> tuple[pa.RecordBatch, np.ndarray, dict[int, Rejected]]:
    """Adapted records -> the whole batch normalised and identified (RECORD schema), what normalisation changed
    per record (see normalize), and the first problem of each invalid record, by index."""
    batch, changes = normalize(adapted)
    lists = encode_lists(batch)
    problems = validate(batch, max_chars, lists)
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    columns.update(id=record_ids(batch, lists), prompt_id=prompt_ids(batch))
    return pa.RecordBatch.from_arrays([columns[n] for n in RECORD.names], schema=RECORD), changes, problems


def canonical_record(obj: object, plan: FilePlan) -> tuple[dict, set[str]]:
    """The canonical record for one parsed row, and what normalisation changed; raises Rejected."""
    first = adapt(obj, plan)[0]
    if isinstance(first, Rejected):
        raise first
    batch, changes, problems = canonical_batch(adapted_batch([first]), plan.source.max_chars)
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
    lines = chunk.data.split(b"\n")
    if chunk.data.endswith(b"\n"):
        lines.pop()
    for offset, line in enumerate(lines):
        if not line.removesuffix(b"\r").strip():
            continue  # a blank line is not a row
        bronze["row"].append(chunk.first_row + offset)
        bronze["raw_hash"].append(hashlib.blake2b(line, digest_size=16).hexdigest())
        bronze["raw"].append(line)
    raws = bronze["raw"]

    # Adapt: a whole chunk at once where the format allows it; the rows it leaves, one by one.
    # A record's sub is its place among the records its row gave (0 but for adapters that make several).
    parts, at, subs = [], [], []  # adapted batches, and the bronze index and sub of each of their records
    rejected: list[tuple[int, int | None, Rejected]] = []  # (bronze index, sub (None: the whole row), why)
    rejected_siblings = 0  # records beyond a row's first that its adapter rejected (not among `subs`)
    empty: list[tuple[int, str, str]] = []  # (bronze index, reason, detail) of rows that give no record: dropped
    runs: list[tuple[str, bytes, int, int]] = []  # a grouped format's runs: (key field, key, first row, last row)
    whole = _columnar(chunk.data, plan, len(raws)) if len(raws) == len(lines) else None
    if whole is not None and whole[1].all():  # the common case: nothing left for the per-row path
        adapted, at, subs = whole[0], np.arange(len(raws)), np.zeros(len(raws), np.int64)
    else:
        if whole is not None:
            batch, handled = whole
            parts.append(batch.filter(pa.array(handled)))
            at.append(np.flatnonzero(handled))
            subs.append(np.zeros(int(handled.sum()), np.int64))
        one_by_one = range(len(raws)) if whole is None else np.flatnonzero(~whole[1]).tolist()
        records, record_at, record_sub = [], [], []
        if plan.adapter and not plan.format_error and ADAPTERS[plan.adapter].group_by:
            outcomes = _group_outcomes(raws, bronze["row"], plan, runs)
        else:
            outcomes = ((k, _outcome(raws[k], plan)) for k in one_by_one)
        for k, made in outcomes:
            if isinstance(made, Rejected):
                rejected.append((k, None, made))
                continue
            if isinstance(made, NoRecord):
                empty.append((k, made.reason.value, made.detail))
                continue
            if isinstance(made, _Grouped):
                empty.append((k, f"{Reason.grouped_into.value}:{made.row}", made.detail))
                continue
            for sub, item in enumerate(made):
                if isinstance(item, Rejected):  # one record of the row: it keeps its sub, the others go on
                    rejected.append((k, sub, item))
                    rejected_siblings += sub > 0
                else:
                    records.append(item)
                    record_at.append(k)
                    record_sub.append(sub)
        parts.append(adapted_batch(records))
        at.append(np.asarray(record_at, np.int64))
        subs.append(np.asarray(record_sub, np.int64))
        at = np.concatenate(at)
        in_order = np.argsort(at, kind="stable")
        at, subs = at[in_order], np.concatenate(subs)[in_order]
        adapted = pa.concat_batches(parts).take(pa.array(in_order))

    batch, changes, problems = canonical_batch(adapted, source.max_chars)
    rejected += [(at[i], subs[i], r) for i, r in problems.items()]
    valid = np.ones(len(at), bool)
    valid[list(problems)] = False
    rows = np.asarray(bronze["row"], np.int64)
    kept_rows, kept_subs = pa.array(rows[at[valid]]), pa.array(subs[valid])
    rejected.sort(key=lambda item: (item[0], -1 if item[1] is None else item[1]))  # input order
    why = [r for _, _, r in rejected]
    candidates = batch.filter(pa.array(valid)).append_column(
        CANDIDATE.field("_ord"), ordinals(source.index, plan.index, kept_rows, kept_subs)
    )
    ids, kept_changes = candidates["id"], changes[valid]
    modified = np.flatnonzero(kept_changes != None)  # noqa: E711 - an object array: elementwise
    quarantine = table_of(
        QUARANTINE,
        len(rejected),
        source=source.name,
        file=chunk.file,
        row=rows[[k for k, _, _ in rejected]].tolist(),
        sub=pa.array([None if sub is None else int(sub) for _, sub, _ in rejected], pa.int32()),
        stage=STAGE,
        reason=[r.reason.value for r in why],
        field=[r.field for r in why],
        detail=[r.detail for r in why],
        raw=[raws[k] for k, _, _ in rejected],
    )
    ledger = [
        quarantine_ledger(quarantine, STAGE, run_id),
        table_of(
            LEDGER,
            len(ids),
            id=ids,
            source=source.name,
            file=chunk.file,
            row=kept_rows,
            sub=pc.cast(kept_subs, pa.int32()),
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
            sub=pc.cast(kept_subs.take(pa.array(modified, pa.int64())), pa.int32()),
            stage=STAGE,
            action="modify",
            reason="normalized",
            detail=kept_changes[modified].tolist(),
            run_id=run_id,
        ),
        table_of(
            LEDGER,
            len(empty),
            source=source.name,
            file=chunk.file,
            row=rows[[k for k, _, _ in empty]].tolist(),
            stage=STAGE,
            action="drop",
            reason=[reason for _, reason, _ in empty],
            detail=[detail for _, _, detail in empty],
            run_id=run_id,
        ),
    ]
    return ChunkResult(
        bronze=table_of(BRONZE, len(bronze["row"]), source=source.name, file=chunk.file, **bronze),
        candidates=candidates,
        quarantine=quarantine,
        ledger=by_row(pa.concat_tables(ledger)),
        groups=_runs_table(source.name, chunk.file, runs),
        counts={
            "bronze": len(bronze["row"]),
            # Records beyond the first that rows gave: bronze + siblings = candidates + quarantined + dropped.
            "siblings": int((subs > 0).sum()) + rejected_siblings,
            "quarantined": len(rejected),
            "dropped": len(empty),
            "candidates": candidates.num_rows,
        },
    )


def _outcome(raw: bytes, plan: FilePlan) -> list[dict | Rejected] | Rejected | NoRecord:
    try:
        return adapt(_parse(raw.removesuffix(b"\r")), plan)
    except (Rejected, NoRecord) as r:
        return r


@dataclass(frozen=True)
class _Grouped:
    """A row of a grouped format that is not its group's first: its ratings are in the pairs recorded there."""

    row: int  # the group's first row, where its pairs are addressed
    detail: str


def _group_outcomes(
    raws: list[bytes], rows: list[int], plan: FilePlan, runs: list[tuple[str, bytes, int, int]]
) -> Iterator[tuple[int, list[dict | Rejected] | Rejected | NoRecord | _Grouped]]:
    """A grouped format's chunk, by bronze index: each run of consecutive rows with one key adapted as one group
    (see adapt_group), its records at its first row and every other row of it _Grouped there; a row that is not a
    JSON object with a key is quarantined alone and does not end the run around it (the reader cuts the same way,
    see readers.grouped_chunks). Each run is added to `runs`."""
    adapter = ADAPTERS[plan.adapter]
    run: list[tuple[int, dict]] = []
    key = None
    for k, raw in enumerate(raws):
        try:
            obj = _parse(raw.removesuffix(b"\r"))
        except Rejected as r:
            yield k, r
            continue
        found = group_key(adapter, obj) if isinstance(obj, dict) else None
        if found is None:
            yield k, _outcome(raw, plan) if not isinstance(obj, dict) else _keyless(adapter)
            continue
        if run and found != key:
            yield from _group(run, key, rows, plan, runs)
            run = []
        key = found
        run.append((k, obj))
    if run:
        yield from _group(run, key, rows, plan, runs)


def _keyless(adapter) -> Rejected:
    fields = " or ".join(adapter.group_by)
    return Rejected(
        Reason.missing_field, adapter.group_by[-1], f"a {adapter.name} row needs {fields}: the rows of one are a group"
    )


def _group(
    run: list[tuple[int, dict]], key: tuple[str, bytes], rows: list[int], plan: FilePlan, runs: list
) -> Iterator[tuple[int, list[dict | Rejected] | Rejected | NoRecord | _Grouped]]:
    numbered = [(rows[k], obj) for k, obj in run]
    first, last = numbered[0][0], numbered[-1][0]
    runs.append((key[0], key[1], first, last))
    try:
        made = adapt_group(numbered, plan)
    except (Rejected, NoRecord) as r:
        made = r
    yield run[0][0], made
    shown = key[1].decode(errors="replace")
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    detail = f"{key[0]} {shown}: rows {first}-{last} are one group; its pairs are recorded at row {first}"
    for k, _ in run[1:]:
        yield k, _Grouped(first, detail)


# A grouped format's runs of rows, per chunk: the key (a hash of its JSON, and the start of it to show) and its rows.
GROUP_RUNS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("key_field", pa.string(), nullable=False),
        pa.field("key_hash", pa.binary(16), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("first_row", pa.int64(), nullable=False),
        pa.field("last_row", pa.int64(), nullable=False),
    ]
)


def _runs_table(source: str, file: str, runs: list[tuple[str, bytes, int, int]]) -> pa.Table | None:
    if not runs:
        return None
    by, keys, first, last = zip(*runs, strict=True)
    return pa.table(
        {
            "source": [source] * len(runs),
            "file": [file] * len(runs),
            "key_field": by,
            "key_hash": [hashlib.blake2b(k, digest_size=16).digest() for k in keys],
            "key": [k[:200].decode(errors="replace") for k in keys],
            "first_row": first,
            "last_row": last,
        },
        schema=GROUP_RUNS,
    )


def by_row(ledger: pa.Table) -> pa.Table:
    """Ledger rows in input order, record by record of a row (a stable sort: a record's keep entry stays before
    its modify entry, and a row's entries before those of the stages after canonicalize)."""
    return ledger.take(pc.sort_indices(ledger, [("row", "ascending"), ("sub", "ascending")]))


def _columnar(data: bytes, plan: FilePlan, rows: int) -> tuple[pa.RecordBatch, np.ndarray] | None:
    """A chunk adapted whole by its format's columnar adapter (see ingest/adapters/arrow.py), and the rows it
    vouches for; None when the chunk must go row by row: the format has no columnar form, or some row does not
    parse as the fields that form reads (with those types) plus the first row's extra keys (see _read_schema)."""
    source = plan.source
    adapter = ADAPTERS.get(plan.adapter) if plan.adapter and not plan.format_error else None
    columnar = adapter and adapter.columnar
    if not columnar or (source.regime or adapter.regimes[0]) not in columnar.regimes or not source.license:
        return None
    if data[:1] != b"{":  # a BOM, or a first row that is not an object (pyarrow 26 crashes on a leading null)
        return None
    schema = _read_schema(data.split(b"\n", 1)[0], columnar.reads, adapter.consumes | set(_PASSTHROUGH))
    # The table holds a cell for every field in every row and costs Arrow calls per field: with fewer rows than
    # fields, or more cells than bytes (rows holding few of the first row's keys), row by row is cheaper, and linear.
    if schema is None or len(schema) > rows or len(schema) * rows > len(data):
        return None
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    try:
        table = pj.read_json(io.BytesIO(data), pj.ReadOptions(use_threads=False, block_size=len(data) + 1), options)
        table.validate(full=True)  # pyarrow.json does not check UTF-8: invalid_utf8 is the per-row path's to name
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None  # a key the schema lacks (nested ones too), a value of another type, a row that is not JSON
    if table.num_rows != rows:  # with no blank lines (checked by the caller), one row per line
        return None
    leftovers = {name: table[name] for name in schema.names[len(columnar.reads) :]}
    built = columnar.build(table.select(columnar.reads.names))
    entries, plain = _leftover_json(leftovers, rows)
    for key, values in built.meta.items():
        entries[key], ok = json_string(values)
        plain &= ok
    fields = built.fields | {
        "regime": constant((source.regime or adapter.regimes[0]).value, rows),
        "source": constant(source.name, rows),
        "origin": constant(source.origin, rows),
        "license": constant(source.license, rows),
        "meta": _meta_json(source.meta, entries, rows),
    }
    columns = [fields[f.name] if f.name in fields else pa.nulls(rows, f.type) for f in ADAPTED]
    return pa.RecordBatch.from_arrays(columns, schema=ADAPTED), built.handled & plain


# The Arrow type an extra key is read as, by the Python type of its value in a chunk's first row (a bool is an int
# in Python: the lookup is by exact type), and how its values are written as JSON (orjson's spelling).
_EXTRA_TYPES = {str: pa.string(), bool: pa.bool_(), int: pa.int64()}
_JSON_VALUES = {
    pa.string(): json_string,
    pa.int64(): lambda v: (pc.cast(v, pa.string()), np.ones(len(v), bool)),
    pa.bool_(): lambda v: (pc.if_else(v, "true", "false"), np.ones(len(v), bool)),
}


def _read_schema(first_line: bytes, reads: pa.Schema, mapped: set[str]) -> pa.Schema | None:
    """The schema a chunk is read with: the fields the columnar form reads, then the other keys of the chunk's first
    row, typed by their value there; None when that row has an extra key the per-row adapter maps, or one whose value
    is not text, an integer or a boolean. Read with unexpected_field_behavior="error", a row with any other key fails
    the read: a table is never wider than the first row (were it as wide as all the chunk's keys, rows that each bring
    new keys would cost keys x rows)."""
    try:
        first = orjson.loads(first_line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(first, dict):
        return None
    extra = [(key, _EXTRA_TYPES.get(type(value))) for key, value in first.items() if key not in reads.names]
    if any(kind is None or key in mapped for key, kind in extra):
        return None
    return pa.schema([*reads, *extra])


def _leftover_json(leftovers: dict[str, pa.ChunkedArray], rows: int) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The JSON of each extra key's values, and the rows where it is certain: a row with a null there may have
    had the key or not (`null` and absent read the same), so it goes row by row."""
    entries, plain = {}, np.ones(rows, bool)
    for name, column in leftovers.items():
        column = column.combine_chunks()
        entries[name], ok = _JSON_VALUES[column.type](column)
        plain &= ok & column.is_valid().to_numpy(zero_copy_only=False)
    return entries, plain


def _meta_json(source_meta: dict, entries: dict[str, pa.Array], rows: int) -> pa.Array:
    """The meta object the per-row adapter writes ({**source meta, **entries}, keys sorted), from JSON texts."""
    if not entries:  # the same for every row
        return constant(dump_meta(source_meta) if source_meta else None, rows)
    merged = {k: dump_meta(v) for k, v in source_meta.items()} | entries
    pieces = []
    for i, key in enumerate(sorted(merged)):
        pieces += [("{" if i == 0 else ",") + dump_meta(key) + ":", merged[key]]
    return pc.binary_join_element_wise(*pieces, "}", "")


# Only a row with a run of 19 digits can hold an integer beyond 64 bits, which orjson reads as a float.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _parse(text: bytes) -> object:
    text = text.removeprefix(BOM)
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as u:
            raise Rejected(Reason.invalid_utf8, None, f"byte {u.start} is not UTF-8") from None
        raise Rejected(Reason.invalid_json, None, str(e)) from None
    if _LONG_DIGITS.search(text) is None:
        return obj
    # orjson has read it, so it is valid JSON: the stdlib reads it the same, but keeps every integer exact.
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as e:  # nesting near Python's limit; an integer of over 4,300 digits
        raise Rejected(Reason.invalid_json, None, f"cannot read its long integers exactly: {e}") from None


class UnsortedGroups(BuildRefused):
    """A file of a grouped format (rated_rows) whose rows of one key are not all next to each other."""


def refuse_split_groups(files: list[str], memory_limit: str) -> None:
    """UnsortedGroups, saying why the file must be sorted first, where a grouped format's key comes back after its
    run ended (its groups were adapted in pieces, so their pairs and aggregates would be wrong): from the runs chunks
    staged (GROUP_RUNS, one row per run), in DuckDB, so memory stays flat whatever the number of groups."""
    with duckdb.connect(config={"memory_limit": memory_limit, "threads": 1}) as db:
        found = db.execute(
            """select source, file, any_value(key_field), any_value(key),
                      list(first_row || '-' || last_row order by first_row), count(*) over () as keys
               from read_parquet($files) group by source, file, key_hash having count(*) > 1
               order by source, file, min(first_row) limit 3""",
            {"files": files},
        ).fetchall()
    if not found:
        return
    source, file, by, key, where, keys = found[0]
    examples = "; ".join(f"{r[2]} {r[3][:60]} in rows {', '.join(r[4][:4])}" for r in found)
    raise UnsortedGroups(
        f"source {source!r}: {file} is not sorted by {by}: the rows of one {by} must be next to each other (they are "
        f"one group, whose pairs are made together), but {keys} {by} values come back after other rows ({examples}). "
        f"Sort the file by {by} (e.g. with DuckDB: COPY (SELECT * FROM read_json('{file}') ORDER BY {by}) TO "
        f"'sorted.jsonl'). Nothing was published."
    )
