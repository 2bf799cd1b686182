"""Normalisation that never changes meaning: Unicode NFC, whitespace at turn edges, role aliases.

Vectorised over a batch of canonical records. Each rule is Python's own, so a record normalises the same
whichever way it came in: `str.strip()`'s whitespace is trimmed by Arrow with exactly that character set, and
NFC is Python's `unicodedata` (applied only to the few non-ASCII strings; ASCII text is always NFC).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters.arrow import strip
from tunelake.schema import ROLE_ALIASES
from tunelake.silver.turns import MESSAGE_LISTS, Turns

_ALIASES = pa.array(list(ROLE_ALIASES))
_CANONICAL = pa.array(list(ROLE_ALIASES.values()))
# What changed, by a 3-bit code (nfc 1, role 2, strip 4): the names, sorted, or None.
_CHANGES = np.array(
    [",".join(k for bit, k in ((1, "nfc"), (2, "role"), (4, "strip")) if code & bit) or None for code in range(8)],
    object,
)


def _changed(before: pa.Array, after: pa.Array) -> np.ndarray:
    return pc.not_equal(before, after).fill_null(False).to_numpy(zero_copy_only=False)


def _nfc(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """NFC of each string, and which ones it changed."""
    candidates = np.flatnonzero(~pc.string_is_ascii(texts).fill_null(True).to_numpy(zero_copy_only=False))
    changed = np.zeros(len(texts), bool)
    normal = []
    for i, text in zip(candidates, texts.take(candidates).to_pylist(), strict=True):
        if not unicodedata.is_normalized("NFC", text):
            changed[i] = True
            normal.append(unicodedata.normalize("NFC", text))
    if not normal:
        return texts, changed
    return pc.replace_with_mask(texts, pa.array(changed), pa.array(normal, pa.string())), changed


def _role(roles: pa.Array) -> pa.Array:
    """Stripped, lower-cased, and the canonical name for a known alias (an unknown role stays, to be named by
    validation). Non-ASCII roles go through Python's lower() so that the name quoted back is the same."""
    lowered = pc.utf8_lower(strip(roles))
    odd = np.flatnonzero(~pc.string_is_ascii(roles).fill_null(True).to_numpy(zero_copy_only=False))
    if len(odd):
        python = [r.strip().lower() for r in roles.take(odd).to_pylist()]
        mask = np.zeros(len(roles), bool)
        mask[odd] = True
        lowered = pc.replace_with_mask(lowered, pa.array(mask), pa.array(python, pa.string()))
    alias = pc.index_in(lowered, _ALIASES)
    return pc.if_else(pc.is_valid(alias), pc.take(_CANONICAL, alias), lowered)


def normalize(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
    """The batch normalised, and per record what changed ("nfc", "role", "strip", comma-separated) or None."""
    n = batch.num_rows
    flags = {name: np.zeros(n, bool) for name in ("nfc", "role", "strip")}
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    for key in MESSAGE_LISTS:
        turns = Turns.of(columns[key])
        if not len(turns.record):
            continue
        role = _role(turns.fields["role"])
        flags["role"][turns.record[_changed(turns.fields["role"], role)]] = True
        replaced = {"role": role}
        for field in ("content", "reasoning_content"):
            nfc, changed = _nfc(turns.fields[field])
            flags["nfc"][turns.record[changed]] = True
            replaced[field] = strip(nfc)
            flags["strip"][turns.record[_changed(nfc, replaced[field])]] = True
        columns[key] = turns.replaced(**replaced)
    # A code answer's leading indentation is code: it continues the prompt's function body.
    answer, changed = _nfc(columns["answer"])
    flags["nfc"] |= changed
    code = pc.equal(columns["verifier"], "python_tests").fill_null(False)
    stripped = pc.if_else(code, answer, strip(answer))
    flags["strip"] |= _changed(answer, stripped)
    columns["answer"] = stripped
    code = flags["nfc"] * 1 + flags["role"] * 2 + flags["strip"] * 4
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=batch.schema), _CHANGES[code]
