"""Input addresses: where a candidate record came from, packed in one sortable int64 (its ordinal).

An address is (source, file, row, sub): the source's place in the recipe, the file's place in the source, the
1-based row in the file, and the record's place among the records one row gave (an adapter may make several
records from one row: rated completions become several pairs). Ordinals sort in input order, so "the first
occurrence" is the smallest ordinal, whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import LEDGER, table_of

# Bits of each part: 8 + 20 + 29 + 6 = 63, so an ordinal is a non-negative int64.
SOURCE_BITS, FILE_BITS, ROW_BITS, SUB_BITS = 8, 20, 29, 6
MAX_SOURCES, MAX_FILES, MAX_ROWS, MAX_SUB = (1 << b for b in (SOURCE_BITS, FILE_BITS, ROW_BITS, SUB_BITS))
_ROW_SHIFT = SUB_BITS
_FILE_SHIFT = _ROW_SHIFT + ROW_BITS
SOURCE_SHIFT = _FILE_SHIFT + FILE_BITS


def ordinal(source: int, file: int, row: int = 0, sub: int = 0) -> int:
    """The ordinal of one address."""
    return (source << SOURCE_SHIFT) | (file << _FILE_SHIFT) | (row << _ROW_SHIFT) | sub


def ordinals(source: int, file: int, rows: pa.Array, subs: pa.Array | None = None) -> pa.Array:
    """The ordinals of many rows of one file (sub 0 unless given)."""
    ords = pc.bit_wise_or(ordinal(source, file), pc.shift_left(pc.cast(rows, pa.int64()), _ROW_SHIFT))
    return ords if subs is None else pc.bit_wise_or(ords, pc.cast(subs, pa.int64()))


def ordinal_parts(ords: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """(source, file, row, sub) index arrays back from ordinals."""
    return (
        pc.shift_right(ords, SOURCE_SHIFT),
        pc.bit_wise_and(pc.shift_right(ords, _FILE_SHIFT), MAX_FILES - 1),
        pc.bit_wise_and(pc.shift_right(ords, _ROW_SHIFT), MAX_ROWS - 1),
        pc.bit_wise_and(ords, MAX_SUB - 1),
    )


@dataclass(frozen=True)
class Addresses:
    """Maps ordinals back to the (source, file, row, sub) columns of the ledger and the quarantine."""

    sources: tuple[str, ...]
    files: tuple[tuple[str, ...], ...]

    def of(self, ords: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
        src, fil, row, sub = ordinal_parts(ords)
        starts = np.cumsum([0] + [len(f) for f in self.files[:-1]])
        flat = pa.array([f for files in self.files for f in files], pa.string())
        file_index = pc.add(pc.take(pa.array(starts, pa.int64()), src), fil)
        return pc.take(pa.array(self.sources, pa.string()), src), pc.take(flat, file_index), row, sub

    def name(self, ords: pa.Array) -> pa.Array:
        """`source:file:row` (`:sub` for a row's second record on) of each ordinal, for ledger details."""
        source, file, row, sub = self.of(ords)
        suffix = pc.if_else(pc.equal(sub, 0), "", pc.binary_join_element_wise(":", pc.cast(sub, pa.string()), ""))
        return pc.binary_join_element_wise(source, ":", file, ":", pc.cast(row, pa.string()), suffix, "")

    def ledger(self, ords: pa.Array, ids: pa.Array, stage: str, action: str, reason, detail, run_id: str) -> pa.Table:
        """Ledger rows for candidates; reason and detail are arrays or one value for all."""
        source, file, row, sub = self.of(ords)
        return table_of(
            LEDGER,
            len(ords),
            id=ids,
            source=source,
            file=file,
            row=row,
            sub=sub,
            stage=stage,
            action=action,
            reason=reason,
            detail=detail,
            run_id=run_id,
        )
