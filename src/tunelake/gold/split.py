"""Splits by prompt group: a record's split is a pure function of its prompt, the seed and the fractions.

So a prompt never sits in two splits, and adding data never moves an existing record to another split.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from tunelake.recipe import Split

SPLITS = ("train", "validation", "test")


def split_of(prompt_id: str, split: Split) -> str:
    digest = hashlib.blake2b(f"{split.seed}:{prompt_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < split.validation:
        return "validation"
    if u < split.validation + split.test:
        return "test"
    return "train"


def assign_splits(prompt_ids: pa.Array, split: Split) -> pa.Array:
    return pa.array([split_of(p, split) for p in prompt_ids.to_pylist()], pa.string())
