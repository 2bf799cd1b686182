"""Splits by prompt group: a record's split is a pure function of its prompt, the seed and the fractions.

So a prompt never sits in two splits, and adding data never moves an existing record to another split.
A prompt id (a 128-bit hex digest) mixed with the seed by SplitMix64's finaliser, so that every seed gives an
independent assignment, places the prompt in [0, 1); vectorised over a whole part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tunelake.silver.ngrams import mix
from tunelake.tables import SPLITS

if TYPE_CHECKING:  # the recipe loads the stages, and gold.mix places records with `unit`: no import at run time
    from tunelake.recipe import Split

_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)


def unit(prompt_ids: pa.Array, seed: int) -> np.ndarray:
    """Each id's place in [0, 1) (a prompt id here, a record id in gold.mix): its 32 hex digits as two 64-bit
    words, each mixed in with the seed."""
    offsets = np.frombuffer(prompt_ids.buffers()[1], np.int32)[
        prompt_ids.offset : prompt_ids.offset + len(prompt_ids) + 1
    ]
    digits = _HEX[np.frombuffer(prompt_ids.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]]
    if (np.diff(offsets) != 32).any() or (digits == 255).any():
        raise ValueError("ids must be 128-bit lower-case hex digests")
    mixed = np.full(len(prompt_ids), seed, np.uint64)
    with np.errstate(over="ignore"):
        for word in digits.reshape(-1, 2, 16).transpose(1, 2, 0):  # the two halves, digit by digit
            value = np.zeros(len(prompt_ids), np.uint64)
            for column in word:
                value = (value << np.uint64(4)) | column.astype(np.uint64)
            mixed = mix(mixed ^ value)
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_splits(prompt_ids: pa.Array, split: Split) -> pa.Array:
    u = unit(prompt_ids, split.seed)
    names = np.where(u < split.validation, 1, np.where(u < split.validation + split.test, 2, 0))
    return pa.array(np.asarray(SPLITS, object)[names], pa.string())


def split_of(prompt_id: str, split: Split) -> str:
    return assign_splits(pa.array([prompt_id]), split)[0].as_py()
