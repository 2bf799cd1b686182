"""Format adapters: one raw row of a known format -> the fields of one canonical record.

An adapter is a plain function plus the facts needed to pick it: the fields a row must have, a check on
their values (to tell apart formats with the same field names), and the regimes it can produce.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson

from tunelake.ingest.adapters.arrow import Columnar
from tunelake.ingest.readers import RawChunk, grouped_chunks
from tunelake.schema import Reason, Regime, Rejected


@dataclass(frozen=True)
class Adapter:
    name: str
    regimes: tuple[Regime, ...]  # the first is the default
    required: frozenset[str]
    # row, regime -> canonical fields (+ "meta" extras); a list of them for a row that gives several records, where
    # a Rejected in the list quarantines that one record (its sub) and lets the row's others go on
    convert: Callable[..., dict | list[dict | Rejected]]
    consumes: frozenset[str]  # fields mapped into the record; the rest of the row goes to meta
    matches: Callable[[dict], bool] = lambda row: True
    columnar: Columnar | None = None  # the same conversion for a whole parsed chunk, where the format allows it
    ratings: bool = False  # convert combines ratings: it takes the source's pairs.RatingsPolicy as a third argument
    # A grouped format (one row per rated response): the rows of one prompt are a group, keyed by the first of these
    # fields a row has. Each run of consecutive rows with one key is one unit: the reader never cuts a chunk inside
    # it, and convert takes the run's (row number, row) pairs instead of one row.
    group_by: tuple[str, ...] = ()

    def fits(self, row: dict) -> bool:
        return self.required <= row.keys() and self.matches(row)


def group_key(adapter: Adapter, row: dict) -> tuple[str, bytes] | None:
    """The field a row of a grouped format is grouped by and its value as JSON (keys sorted, so a prompt given as
    messages groups whatever order their keys are in); None when the row has none of the adapter's group_by."""
    field = next((f for f in adapter.group_by if row.get(f) is not None), None)
    return None if field is None else (field, orjson.dumps(row[field], option=orjson.OPT_SORT_KEYS))


def line_group_key(adapter: Adapter, line: bytes) -> bytes | None:
    """group_key of a raw line, None where the line is not a JSON object or has no key (the reader's cut points)."""
    try:
        row = orjson.loads(line.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        return None
    found = group_key(adapter, row) if isinstance(row, dict) else None
    return None if found is None else found[1]


def whole_groups(adapter: Adapter, chunks: Iterator[RawChunk]) -> Iterator[RawChunk]:
    """A file's chunks as its adapter must see them: a grouped format's cut only between groups (its rows of one
    group are adapted together), any other's as read."""
    if not adapter.group_by:
        return chunks
    return grouped_chunks(chunks, functools.partial(line_group_key, adapter))


def _registry() -> dict[str, Adapter]:
    from tunelake.ingest.adapters import judged, kto, oasst2, preference, rated, rated_rows, rl, sft

    adapters = [
        *sft.ADAPTERS,
        *preference.ADAPTERS,
        *rated.ADAPTERS,
        *rated_rows.ADAPTERS,
        *judged.ADAPTERS,
        *oasst2.ADAPTERS,
        *kto.ADAPTERS,
        *rl.ADAPTERS,
    ]
    return {a.name: a for a in adapters}


ADAPTERS: dict[str, Adapter] = _registry()


class FormatError(ValueError):
    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


def detect_format(rows: list[dict]) -> Adapter:
    """The one adapter that fits most sampled rows and is not a less specific form of another that fits.

    Raises FormatError (unknown_format / ambiguous_format) naming the fields it saw.
    """
    seen = sorted({k for row in rows for k in row})
    if not rows:
        raise FormatError(Reason.unknown_format, "no JSON object rows to detect the format from")
    fitting = [a for a in ADAPTERS.values() if sum(a.fits(r) for r in rows) * 2 > len(rows)]
    # Prefer the most specific: drop an adapter whose required fields are a strict subset of another's.
    best = [a for a in fitting if not any(a.required < b.required for b in fitting)]
    if len(best) == 1:
        return best[0]
    if not best:
        raise FormatError(Reason.unknown_format, f"no known format fits; fields seen: {', '.join(seen)}")
    names = " and ".join(sorted(a.name for a in best))
    raise FormatError(
        Reason.ambiguous_format, f"fits {names}; set `format:` in the recipe. Fields seen: {', '.join(seen)}"
    )
