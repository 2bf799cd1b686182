"""Record ids and prompt ids: hashes of normalised content, computed over a whole batch.

Content is written out in one unambiguous encoding (a string is `S<bytes>:<text>`, a missing value `N`, a
message list `L<turns>:` and its messages' fields in schema order), built with Arrow string kernels, then hashed
with BLAKE2b-128. Two records have the same id exactly when their content fields are equal.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import CONTENT_FIELDS, MESSAGE_FIELDS, Regime
from tunelake.silver.turns import MESSAGE_LISTS, Turns


def _text(values: pa.Array) -> pa.Array | str:
    if len(values) and values.null_count == len(values):
        return "N"  # a scalar: most fields of most records are missing, and joining a scalar costs nothing
    lengths = pc.cast(pc.binary_length(values), pa.string())
    return pc.fill_null(pc.binary_join_element_wise("S", lengths, ":", values, ""), "N")


def _joined(turns: Turns, per_turn: pa.Array) -> pa.Array:
    """Each record's turn encodings, concatenated in order ("" for a record with no turns)."""
    offsets = pa.array(np.concatenate(([0], np.cumsum(turns.lengths))), pa.int32())
    return pc.fill_null(pc.binary_join(pa.ListArray.from_arrays(offsets, per_turn), ""), "")


def encode_messages(column: pa.Array) -> pa.Array:
    """Each record's message list, encoded (`N` for a missing list)."""
    if len(column) and column.null_count == len(column):
        return pa.array(["N"] * len(column), pa.string())
    turns = Turns.of(column)
    per_turn = pc.binary_join_element_wise(*(_text(turns.fields[f]) for f in MESSAGE_FIELDS), "")
    counts = pc.cast(pa.array(turns.lengths), pa.string())
    encoded = pc.binary_join_element_wise("L", counts, ":", _joined(turns, per_turn), "")
    return pc.if_else(pc.is_null(column), "N", encoded)


def content_hashes(encoded: pa.Array) -> pa.Array:
    """BLAKE2b-128 of each encoded value, as hex."""
    blobs = pc.cast(encoded, pa.binary()).to_pylist()
    return pa.array([hashlib.blake2b(b, digest_size=16).hexdigest() for b in blobs], pa.string())


def encode_lists(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    """Every message-list column encoded (validation compares chosen and rejected on these, ids hash them)."""
    return {key: encode_messages(batch[key]) for key in MESSAGE_LISTS}


def record_ids(batch: pa.RecordBatch, lists: dict[str, pa.Array]) -> pa.Array:
    """The stable id of each canonical record: the hash of its normalised content fields, nothing else. `lists`
    is encode_lists(batch)."""
    parts = [lists[f] if f in MESSAGE_LISTS else _text(batch[f]) for f in CONTENT_FIELDS]
    return content_hashes(pc.binary_join_element_wise(*parts, ""))


def _opening(column: pa.Array) -> pa.Array:
    """Per record, the encoded role and content of the system turn (if it comes first) and the first user turn."""
    turns = Turns.of(column)
    role, content = turns.fields["role"], turns.fields["content"]
    per_turn = pc.binary_join_element_wise(_text(role), _text(content), "")
    system, user = turns.opening()

    def pick(index: np.ndarray) -> pa.Array:
        return pc.fill_null(per_turn.take(pa.array(index, mask=index < 0)), "")

    return pc.binary_join_element_wise(pick(system), pick(user), "")


def prompt_ids(batch: pa.RecordBatch) -> pa.Array:
    """The prompt group of each record, what must never sit in two splits: its system turn and first user turn,
    in every regime (from `messages` for SFT, `prompt` otherwise), so an SFT conversation and a preference pair
    or RL prompt that open the same way share a split."""
    sft = pc.equal(batch["regime"], Regime.sft.value)
    return content_hashes(pc.if_else(sft, _opening(batch["messages"]), _opening(batch["prompt"])))
