"""A message-list column flattened for vectorised work: every turn of every record side by side.

Normalisation, validation and identity all ask per-turn questions ("is this role known?", "which is the first
user turn?") and answer them per record; this is the one place that maps between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import MESSAGE, MESSAGE_FIELDS

MESSAGE_LISTS = ("messages", "prompt", "chosen", "rejected")
# Where what a model is trained to say lives, per regime: a pair's rejected side (and an undesirable KTO completion)
# is what it teaches against, and an RL record has no response (its gold answer is checked, not imitated).
TRAINED_RESPONSES = (("messages", ("sft",)), ("chosen", ("preference", "kto")))


@dataclass(frozen=True)
class Turns:
    column: pa.Array  # list<MESSAGE>, one list per record (null where the record has none)
    fields: dict[str, pa.Array]  # each message field over all turns, in record order
    record: np.ndarray  # the record each turn belongs to
    position: np.ndarray  # each turn's index in its record's list
    lengths: np.ndarray  # turns per record (0 for a null list)

    @classmethod
    def of(cls, column: pa.Array) -> Turns:
        flat = pc.list_flatten(column)
        lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        record = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        fields = {name: flat.field(name) for name in MESSAGE_FIELDS}
        return cls(column, fields, record, np.arange(len(record)) - starts[record], lengths)

    @property
    def records(self) -> int:
        return len(self.column)

    def last(self) -> np.ndarray:
        """The index (into the turns) of each record's last turn; -1 where a record has none."""
        return np.where(self.lengths > 0, np.cumsum(self.lengths) - 1, -1)

    def first(self, turns: np.ndarray) -> np.ndarray:
        """Per record, the index of its first turn where `turns` (a bool per turn) holds; -1 where none does."""
        out = np.full(self.records, -1, np.int64)
        hits = np.flatnonzero(turns)
        records, first = np.unique(self.record[hits], return_index=True)  # turns are in record order
        out[records] = hits[first]
        return out

    def opening(self) -> tuple[np.ndarray, np.ndarray]:
        """Per record, the index of its system turn (only if it comes first) and of its first user turn, -1 where
        none: the prompt as prompt ids and splits see it."""
        role = self.fields["role"]
        system = self.first((self.position == 0) & pc.equal(role, "system").fill_null(False).to_numpy(False))
        user = self.first(pc.equal(role, "user").fill_null(False).to_numpy(zero_copy_only=False))
        return system, user

    def any(self, turns: np.ndarray) -> np.ndarray:
        return self.first(turns) >= 0

    def text(self, turns: np.ndarray | None = None) -> pa.StringArray:
        """Per record, the contents of its turns (those where `turns`, a bool per turn, holds; default all) joined
        by newlines; "" where none."""
        content = pc.fill_null(self.fields["content"], "")
        lengths = self.lengths
        if turns is not None:
            content = content.filter(pa.array(turns))
            lengths = np.bincount(self.record[turns], minlength=self.records)
        offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))), pa.int32())
        return pc.fill_null(pc.binary_join(pa.ListArray.from_arrays(offsets, content), "\n"), "")

    def replaced(self, **fields: pa.Array) -> pa.Array:
        """The column with some message fields replaced (arrays over all turns, in the same order)."""
        children = [fields.get(name, self.fields[name]) for name in MESSAGE_FIELDS]
        values = pa.StructArray.from_arrays(children, fields=list(MESSAGE))
        offsets = pa.array(np.concatenate(([0], np.cumsum(self.lengths))), pa.int32())
        return pa.ListArray.from_arrays(offsets, values, mask=self.column.is_null())


@dataclass(frozen=True)
class Responses:
    """Every response a model is trained to say in a batch: SFT assistant turns, a pair's chosen assistant turns, a
    desirable KTO completion's (but for turns that only call a tool)."""

    texts: pa.StringArray  # each response's content ("" where null), in record order, then turn order
    record: np.ndarray  # the record each belongs to
    position: np.ndarray  # its turn's index in the record's message list

    @classmethod
    def of(cls, batch: pa.RecordBatch) -> Responses:
        texts, records, positions = [], [], []
        for column, regimes in TRAINED_RESPONSES:
            in_regime = pc.is_in(batch["regime"], pa.array(regimes)).to_numpy(zero_copy_only=False)
            if not in_regime.any():
                continue
            turns = Turns.of(batch[column])
            content = pc.fill_null(turns.fields["content"], "")
            assistant = pc.equal(turns.fields["role"], "assistant").fill_null(False).to_numpy(zero_copy_only=False)
            # A turn that only calls a tool says nothing in prose (its arguments are JSON, in `tool_calls`).
            calls_only = pc.and_(pc.is_valid(turns.fields["tool_calls"]), pc.equal(content, ""))
            assistant &= in_regime[turns.record] & ~calls_only.to_numpy(zero_copy_only=False)
            texts.append(content.filter(pa.array(assistant)))
            records.append(turns.record[assistant])
            positions.append(turns.position[assistant])
        if not texts:
            return cls(pa.array([], pa.string()), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(pa.concat_arrays(texts), np.concatenate(records), np.concatenate(positions))
