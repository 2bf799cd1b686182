"""Building blocks of columnar adapters: a whole parsed chunk -> canonical fields as Arrow arrays.

A format whose rows are flat strings (Alpaca, GSM8K, HH-RLHF) can be adapted a chunk at a time with Arrow
kernels instead of a row at a time in Python. A columnar adapter must give exactly what its per-row adapter
gives: any row it cannot vouch for (a missing field, an odd shape) it leaves to the per-row adapter, which
also names the reason when the row is bad. tests/ingest/test_columnar.py checks the two agree row for row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import MESSAGE, Regime

# Every character str.strip() removes (tests/silver/test_canonical_batch.py checks it against str.isspace()).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Characters orjson writes as a short escape; any other control character makes a row per-row work.
_ESCAPES = (
    ("\\", "\\\\"),  # first, so the backslashes of the other escapes are not doubled
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\x08", "\\b"),
    ("\x0c", "\\f"),
)
_OTHER_CONTROL = r"[\x00-\x07\x0b\x0e-\x1f]"


@dataclass(frozen=True)
class Columns:
    """Canonical fields for every row of a chunk (arrays), the `meta` entries it adds (string arrays), and the
    rows it vouches for; the fields of the other rows are ignored."""

    fields: dict[str, pa.Array]
    meta: dict[str, pa.Array]
    handled: np.ndarray


@dataclass(frozen=True)
class Columnar:
    reads: pa.Schema  # the fields it reads, with their types; other keys of a row go to meta
    regimes: tuple[Regime, ...]  # the regimes it makes (others go row by row)
    build: Callable[[pa.Table], Columns]


def strings(*names: str) -> pa.Schema:
    return pa.schema([(n, pa.string()) for n in names])


def strip(texts: pa.Array) -> pa.Array:
    """str.strip() of each string."""
    return pc.utf8_trim(texts, characters=WHITESPACE)


def blank(texts: pa.Array) -> np.ndarray:
    """Rows whose string is empty once stripped (or missing)."""
    return ~pc.greater(pc.utf8_length(strip(texts)), 0).fill_null(False).to_numpy(zero_copy_only=False)


def constant(value: str | None, rows: int) -> pa.Array:
    return pa.array([value] * rows, pa.string())


def present(*values: pa.Array) -> np.ndarray:
    """Rows where every array has a value (a missing field or a JSON null is left to the per-row adapter)."""
    out = np.ones(len(values[0]), bool)
    for v in values:
        out &= v.is_valid().to_numpy(zero_copy_only=False)
    return out


def messages(roles: list[str], contents: list[pa.Array]) -> pa.ListArray:
    """One message list per row, each of the same turns: turn k has role roles[k] and content contents[k][row]."""
    turns, rows = len(contents), len(contents[0])
    interleaved = (np.arange(turns)[None, :] * rows + np.arange(rows)[:, None]).ravel()
    content = pa.concat_arrays([c.cast(pa.string()) for c in contents]).take(pa.array(interleaved))
    role = pa.array(np.tile(np.array(roles, object), rows), pa.string())
    offsets = pa.array(np.arange(0, rows * turns + 1, turns), pa.int32())
    return pa.ListArray.from_arrays(offsets, _struct(role, content))


def message_lists(role: pa.Array, content: pa.Array, lengths: np.ndarray) -> pa.ListArray:
    """Message lists of the given lengths from turns laid end to end."""
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))), pa.int32())
    return pa.ListArray.from_arrays(offsets, _struct(role, content))


def _struct(role: pa.Array, content: pa.Array) -> pa.StructArray:
    nulls = pa.nulls(len(role), pa.string())
    children = [role, content] + [nulls] * (len(MESSAGE) - 2)
    return pa.StructArray.from_arrays(children, fields=list(MESSAGE))


def json_string(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Each string as orjson writes it (a quoted JSON string literal), and the rows where that is certain (no
    control character that would need a \\u escape)."""
    ok = ~pc.match_substring_regex(values, _OTHER_CONTROL).fill_null(True).to_numpy(zero_copy_only=False)
    for char, escape in _ESCAPES:
        values = pc.replace_substring(values, char, escape)
    return pc.binary_join_element_wise('"', values, '"', ""), ok
