"""Evaluation sets to decontaminate against: their items read from files, and an index of the items' word n-grams.

An eval file is read as a source is (ingest/readers.py: JSON Lines or a JSON array, parquet or csv, gzip or zstd),
and one text field of each row is an item. The index maps each gram hash to the items holding it, so that a batch
of records is matched against every item of every eval set at once, with NumPy: no loop per record or per gram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.readers import FileReport, read_chunks
from tunelake.silver.ngrams import Grams, word_ngram_hashes, words

_BOM = b"\xef\xbb\xbf"
_CHUNK_BYTES = 8 << 20


class EvalSetError(ValueError):
    """An eval file that cannot be used: the message names the file, the row and the field."""


@dataclass(frozen=True)
class EvalItems:
    """One eval set's items, in file order: texts[i] is item i, labelled labels[i] (its id field, or i)."""

    texts: list[str]
    labels: list[str]
    sha256: str


def read_eval_set(path: str, field: str, id_field: str | None) -> EvalItems:
    """The items of an eval file: `field` of each row (a string), labelled by `id_field` or the item's index."""
    report = FileReport(path)
    texts, labels = [], []
    for chunk in read_chunks(path, report, _CHUNK_BYTES):
        for offset, line in enumerate(chunk.data.split(b"\n")):
            if not line.strip():
                continue
            row = chunk.first_row + offset
            try:
                obj = orjson.loads(line.removeprefix(_BOM))
            except orjson.JSONDecodeError as e:
                raise EvalSetError(f"{path}: row {row} is not JSON ({e})") from None
            if not isinstance(obj, dict):
                raise EvalSetError(f"{path}: row {row} is a JSON {type(obj).__name__}, expected an object")
            texts.append(_text(obj, field, path, row))
            labels.append(_text(obj, id_field, path, row, ids=True) if id_field else str(len(labels)))
    if report.issues:
        reason, detail = report.issues[0]
        raise EvalSetError(f"{path}: {reason.value}: {detail}")
    return EvalItems(texts, labels, report.sha256)


def _text(obj: dict, field: str, path: str, row: int, ids: bool = False) -> str:
    if field not in obj:
        raise EvalSetError(f"{path}: row {row} has no field {field!r} (fields: {', '.join(sorted(obj)) or 'none'})")
    value = obj[field]
    if ids and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # MBPP's task_id is a number
    if not isinstance(value, str):
        expected = "a string or an integer" if ids else "a string"
        raise EvalSetError(f"{path}: row {row}: field {field!r} is {type(value).__name__}, expected {expected}")
    return value


@dataclass(frozen=True)
class GramTable:
    """Gram hashes (sorted, distinct) -> the items holding each: items[starts[g]:starts[g + 1]] hold hashes[g]."""

    hashes: np.ndarray  # uint64
    starts: np.ndarray  # int64, one more than there are hashes
    items: np.ndarray  # int64

    @classmethod
    def of(cls, item: np.ndarray, hashes: np.ndarray) -> GramTable:
        """The table of (item, gram hash) pairs, repeats allowed."""
        order = np.lexsort((item, hashes))
        item, hashes = item[order], hashes[order]
        distinct = np.ones(len(hashes), bool)
        distinct[1:] = (hashes[1:] != hashes[:-1]) | (item[1:] != item[:-1])
        item, hashes = item[distinct], hashes[distinct]
        first = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, np.int64)
        return cls(hashes[first], np.r_[first, len(hashes)].astype(np.int64), item.astype(np.int64))

    def matches(self, owner: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner, item) once for every distinct (owner, gram) among `hashes` that an item holds, one pair per item
        holding it: a pair repeats as many times as the owner has distinct grams of that item."""
        if not len(self.hashes) or not len(hashes):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = self.hashes[at] == hashes
        pairs = np.unique(owner[hit] * len(self.hashes) + at[hit])  # each distinct gram of an owner counts once
        owner, gram = np.divmod(pairs, len(self.hashes))
        per_gram = self.starts[gram + 1] - self.starts[gram]
        first = np.repeat(self.starts[gram] - np.cumsum(per_gram) + per_gram, per_gram)
        return np.repeat(owner, per_gram), self.items[first + np.arange(per_gram.sum())]


@dataclass(frozen=True)
class EvalIndex:
    """Every item of every eval set, numbered in order (set by set), with its grams.

    Items of at least `n` words are matched by their n-grams; a shorter item of k words is matched whole, as the one
    k-gram it is, which is an exact match of its normalised words at word boundaries.
    """

    n: int
    names: list[str]  # per eval set
    item_set: np.ndarray  # per item: the index of its eval set
    labels: list[str]  # per item
    word_counts: np.ndarray  # per item: how many normalised words it has
    grams: np.ndarray  # per item: its distinct grams (the share's denominator; 0 for an item with no words)
    tables: dict[int, GramTable]  # gram size -> the items' grams of that size (n, and each short item's length)
    item_starts: np.ndarray  # item i's distinct gram hashes are item_hashes[item_starts[i]:item_starts[i + 1]]
    item_hashes: np.ndarray
    sizes: list[int]  # items per eval set

    @classmethod
    def of(cls, names: list[str], sets: list[EvalItems], n: int) -> EvalIndex:
        texts = pa.array([t for s in sets for t in s.texts], pa.string())
        split = words(texts)
        counts = pc.list_value_length(split).to_numpy(zero_copy_only=False).astype(np.int64)
        sizes = np.unique(counts[(counts > 0) & (counts < n)]).tolist()
        shingles = Shingles.of(split, n, sizes)
        pairs = {}
        for size, grams in shingles.grams.items():
            item = np.repeat(np.arange(len(texts)), grams.counts)
            # Long items by their n-grams; a short item of k words by its one k-gram.
            mine = counts[item] >= n if size == n else counts[item] == size
            pairs[size] = (item[mine], grams.hashes[mine])
        # Item -> its distinct gram hashes (for the detail of a match), sorted by item then hash.
        item = np.concatenate([p[0] for p in pairs.values()])
        hashes = np.concatenate([p[1] for p in pairs.values()])
        order = np.lexsort((hashes, item))
        item, hashes = item[order], hashes[order]
        distinct = np.r_[True, (item[1:] != item[:-1]) | (hashes[1:] != hashes[:-1])] if len(item) else []
        item, hashes = item[distinct], hashes[distinct]
        grams = np.bincount(item, minlength=len(texts))
        return cls(
            n,
            names,
            np.repeat(np.arange(len(sets)), [len(s.texts) for s in sets]),
            [label for s in sets for label in s.labels],
            counts,
            grams,
            {size: GramTable.of(*p) for size, p in pairs.items()},
            np.r_[0, np.cumsum(grams)].astype(np.int64),
            hashes,
            [len(s.texts) for s in sets],
        )

    def hashes_of(self, item: int) -> np.ndarray:
        return self.item_hashes[self.item_starts[item] : self.item_starts[item + 1]]

    def gram_size(self, item: int) -> int:
        """The words per gram an item is matched by: n, or all its words for a short item."""
        return min(int(self.word_counts[item]), self.n)


@dataclass(frozen=True)
class Shingles:
    """Texts' normalised words, and their grams of each size an EvalIndex matches by: n-grams over the words with
    every run of digits as one placeholder, shorter grams over the words as they are."""

    words: pa.ListArray
    grams: dict[int, Grams]

    @classmethod
    def of(cls, split: pa.ListArray, n: int, short_sizes: list[int]) -> Shingles:
        # Why a placeholder for numbers: a copy whose numbers were changed (the usual way a benchmark item is
        # "rewritten") keeps its words but not its digits. Measured on planted copies of every GSM8K test, MATH-500,
        # HumanEval and MBPP item (README, "Decontamination"): numbers-renamed copies are found 0.996 of the time
        # with the placeholder, 0.595 with digits kept; hits on untouched GSM8K train rise from 2 to 4 of 7,473, all
        # 4 test problems with other names and numbers (Alpaca: 0 of 2,000 both ways). Short items keep their
        # digits: they are often little but numbers ("simplify sqrt 242"), and with a placeholder would match every
        # problem of that form.
        masked = pa.ListArray.from_arrays(split.offsets, pc.replace_substring_regex(split.values, r"\p{Nd}+", "0"))
        grams = {n: word_ngram_hashes(masked, n)}
        for size in short_sizes:
            grams[size] = word_ngram_hashes(split, size)
        return cls(split, grams)
