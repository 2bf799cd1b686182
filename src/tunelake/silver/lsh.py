"""MinHash LSH over staged columns: what near-duplicate records, prompt groups and the leakage check share.

Per chunk, where the data is: a text's shingles -> its sorted shingle set (staged as a list column) and MinHash
signature -> one 64-bit key per band, staged as one column per band (`shingle_columns`, `band_columns`). Over
everything, a band at a time: rows sharing a key are candidates (bucketed in NumPy over that one column); a
candidate's Jaccard is first bounded from a small bitmap per set, which rules out most pairs below the threshold,
and the rest are verified exactly, a block at a time, reading the block's sets from a file of them in the step's
scratch (`ShingleSets`). `verified_edges` gives every verified pair (what a keep policy needs), `linked` only the
components (it skips pairs already joined). Memory is what one band's keys and one block's sets take, and a few
numbers per row (48 bytes per set column), however many rows.

Rows are numbered 0..n-1 as nodes (`nodes[i]` is node i's `_ord`); pairs and edges are pairs of node numbers,
smaller first. In a bucket the smallest node comes first: a caller that numbers nodes by preference gets each
bucket's preferred member first, which a bucket too large for all its pairs pairs with every other member.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from tunelake.silver import minhash
from tunelake.silver.ngrams import MAX_N, Grams, mix, ngram_hashes
from tunelake.stage import StageConfig

BLOCK = 1 << 16  # candidate pairs verified at once: their shingle sets are read back together
SHINGLES = "shingles"  # the staged column of each text's shingle set (shingle_columns)
WINDOW = 1 << 20  # shingles read from the file of shingle sets at once (8 MiB)
READ = 1 << 22  # shingles of the sets a verification holds at once (32 MiB; a pair's two sets are never split)
ROWS = 1 << 13  # rows fetched from DuckDB at a time (its batches of 64Ki rows of shingle sets took ~150 MiB more)


class MinHashConfig(StageConfig):
    """Near-identical means a Jaccard similarity of word n-gram sets of at least `threshold`, found by MinHash
    LSH and verified exactly."""

    threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Texts whose shingle sets have a Jaccard similarity of at least this are "
        "near-identical; every candidate pair is verified exactly, so none below it is ever matched.",
    )
    ngram: int = Field(5, ge=1, le=MAX_N, description="Shingles are word n-grams of this many normalised words.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per signature.")
    bands: int | None = Field(
        None,
        ge=1,
        description="LSH bands (with `rows`); default: derived from threshold and num_perm so that a "
        "pair at the threshold becomes a candidate with probability >= 0.995.",
    )
    rows: int | None = Field(None, ge=1, description="Signature values per band (with `bands`).")

    @model_validator(mode="after")
    def _banding(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} is more than num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return minhash.band_parameters(self.threshold, self.num_perm)


def band_columns(grams: Grams, config: MinHashConfig, salt: np.ndarray | None = None) -> dict[str, pa.Array]:
    """Each text's band keys as columns `band_0`, `band_1`, ... (uint64; 0 for a text with no words, which is in
    no bucket). A salt per text (e.g. its regime's) keeps texts of different salts out of each other's buckets."""
    bands, rows = config.banding()
    keys = minhash.band_keys(minhash.signatures(grams, config.num_perm), bands, rows)
    if salt is not None:
        keys = mix(keys ^ salt[:, None])
    keys[grams.counts == 0] = 0
    return {f"band_{b}": pa.array(keys[:, b]) for b in range(bands)}


def shingle_columns(texts: pa.Array, config: MinHashConfig) -> dict[str, pa.Array]:
    """Each text's shingle set (`shingles`) and band keys, for `verified_edges` and `linked`."""
    sets = minhash.sorted_sets(ngram_hashes(texts, config.ngram))  # a signature is the same over the set
    return {SHINGLES: set_column(sets), **band_columns(sets, config)}


def set_column(sets: Grams) -> pa.LargeListArray:
    """Sorted shingle sets (minhash.sorted_sets) as a list column, for ShingleSets to read back."""
    return pa.LargeListArray.from_arrays(pa.array(sets.offsets, pa.int64()), pa.array(sets.hashes))


def band_names(config: MinHashConfig) -> list[str]:
    return [f"band_{b}" for b in range(config.banding()[0])]


def band_pairs(
    con: duckdb.DuckDBPyConnection, source: str, nodes: np.ndarray, config: MinHashConfig
) -> Iterator[np.ndarray]:
    """Per band, arrays of the pairs of nodes of the relation `source` that share its key (each pair once within
    the band, smaller node first; a large bucket's pairs with its first member before any other)."""
    node_of = _node_of(nodes)
    for band in band_names(config):
        key = np.zeros(len(nodes), np.uint64)  # by node; 0: in no bucket
        for rows in con.sql(f"select _ord, {band} from {source} where {band} != 0").to_arrow_reader(ROWS):
            key[node_of(rows["_ord"].to_numpy())] = rows[band].to_numpy()
        member = np.argsort(key, kind="stable")  # by key, then node
        bucket = key[member]
        del key  # not held while the band's pairs are made
        keyed = int(np.searchsorted(bucket, 0, side="right"))
        yield from minhash.bucket_pairs(bucket[keyed:], member[keyed:])


def _node_of(nodes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The function from `_ord`s to node numbers."""
    by_ord = np.argsort(nodes)
    ords = nodes[by_ord]
    return lambda ord_: by_ord[np.searchsorted(ords, ord_)]


def verified_edges(
    con: duckdb.DuckDBPyConnection,
    source: str,
    nodes: np.ndarray,
    config: MinHashConfig,
    sets: list[ShingleSets],
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate pair whose shingle sets (`sets`: one ShingleSets per compared part, of the same nodes) each
    have a Jaccard of at least the threshold (edges: int32 pairs, sorted), and the smallest of its Jaccards. A pair
    a later band finds again is not verified again, nor is one whose bound is below the threshold."""
    if len(nodes) >= 1 << 31:
        raise ValueError(f"{len(nodes)} rows: edges are pairs of int32 node numbers")
    edges, similarity, seen = [np.empty((0, 2), np.int32)], [np.empty(0)], PairSet(len(nodes))
    stored = [s for s in sets if s.counts.any()]  # a part no row has: every pair's sets are equal (empty)

    def open_(pairs: np.ndarray) -> np.ndarray:
        pairs = pairs[~seen.holds(pairs)]
        for part in stored:
            pairs = pairs[part.bound(pairs) >= config.threshold]
        return pairs

    for block in _blocks(band_pairs(con, source, nodes, config), open_):
        block = minhash.unique_pairs(open_(block), len(nodes))  # a pair may come twice in one block
        seen.add(block)
        found = np.ones(len(block))
        for part in stored:
            found = np.minimum(found, part.jaccard(block))
        edges.append(block[found >= config.threshold].astype(np.int32))  # half the memory of int64 pairs
        similarity.append(found[found >= config.threshold])
    seen = None  # its pairs (~5M at 1M templated records): not held through the concatenation and sort
    edges, similarity = np.concatenate(edges), np.concatenate(similarity)
    order = np.lexsort((edges[:, 1], edges[:, 0]))
    return edges[order], similarity[order]


def linked(
    con: duckdb.DuckDBPyConnection, source: str, nodes: np.ndarray, config: MinHashConfig, scratch: str
) -> np.ndarray:
    """The connected component of each node (labelled by its smallest node) over the candidate pairs whose staged
    shingle sets (shingle_columns) have a Jaccard of at least the threshold; `scratch` is a folder for a file of
    the sets.

    Only connectivity is asked, so a pair whose nodes are already joined is never verified (a group of many
    near-identical texts is joined by its first pairs, whatever the number of its candidate pairs), nor is a pair
    that failed in an earlier band, nor one whose bound (minhash.jaccard_bound) is below the threshold."""
    label = np.arange(len(nodes))
    failed = PairSet(len(nodes))  # the pairs verified below the threshold

    with ShingleSets(con, source, nodes, scratch) as sets:

        def open_(pairs: np.ndarray) -> np.ndarray:
            pairs = pairs[label[pairs[:, 0]] != label[pairs[:, 1]]]
            pairs = pairs[sets.bound(pairs) >= config.threshold]
            return pairs[~failed.holds(pairs)]

        for block in _blocks(band_pairs(con, source, nodes, config), open_):
            block = minhash.unique_pairs(open_(block), len(nodes))  # what joined since it was kept, once
            close = sets.jaccard(block) >= config.threshold
            label = _merged(label, block[close])
            failed.add(block[~close])
    return label


class ShingleSets:
    """The staged shingle sets (the list column `column`) of a relation's rows, by node: the sets in a file in a
    scratch folder, read back a block of nodes at a time, and their sizes and bitmaps (minhash.bitmaps) in memory,
    to bound a pair's Jaccard without reading its sets. A context manager: the file is removed on leaving."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, source: str, nodes: np.ndarray, scratch: str, column: str = SHINGLES
    ):
        os.makedirs(scratch, exist_ok=True)
        fd, self.path = tempfile.mkstemp(suffix=".shingles", dir=scratch)
        self.start = np.zeros(len(nodes), np.int64)  # where each node's set begins in the file, in hashes (0: none)
        self.counts = np.zeros(len(nodes), np.int64)
        self.bitmaps = np.zeros((len(nodes), minhash.BITMAP_WORDS), np.uint64)
        node_of, written = _node_of(nodes), 0
        with os.fdopen(fd, "wb") as out:
            for batch in con.sql(f"select _ord, {column} from {source}").to_arrow_reader(ROWS):
                node = node_of(batch["_ord"].to_numpy())
                lengths = pc.list_value_length(batch[column]).to_numpy().astype(np.int64)
                offsets = np.zeros(len(lengths) + 1, np.int64)
                np.cumsum(lengths, out=offsets[1:])
                sets = Grams(offsets, pc.list_flatten(batch[column]).to_numpy())
                # Only the nodes with a set are written: the pages of the others (all of a part no row of a
                # regime has, e.g. a preference pair's responses in SFT rows) are never touched, so never resident.
                has = np.flatnonzero(lengths)
                self.start[node[has]] = written + offsets[has]
                self.counts[node[has]] = lengths[has]
                self.bitmaps[node[has]] = minhash.bitmaps(sets)[has]
                sets.hashes.tofile(out)
                written += len(sets.hashes)

    def __enter__(self) -> ShingleSets:
        return self

    def __exit__(self, *exc: object) -> None:
        os.remove(self.path)

    def bound(self, pairs: np.ndarray) -> np.ndarray:
        return minhash.jaccard_bound(self.bitmaps, self.counts, pairs[:, 0], pairs[:, 1])

    def jaccard(self, pairs: np.ndarray) -> np.ndarray:
        """The exact Jaccard of each pair, reading the sets of the pairs' nodes only, for pairs whose sets hold up to
        READ hashes together at a time (long texts would otherwise bring a block's sets into memory at once)."""
        out = np.empty(len(pairs))
        before = np.zeros(len(pairs) + 1, np.int64)  # hashes of the pairs before each
        np.cumsum(self.counts[pairs[:, 0]] + self.counts[pairs[:, 1]], out=before[1:])
        start = 0
        while start < len(pairs):
            stop = max(start + 1, int(np.searchsorted(before, before[start] + READ, side="right")) - 1)
            some = pairs[start:stop]
            involved = np.unique(some)
            sets = self.read(involved)
            out[start:stop] = minhash.jaccard(sets, *(np.searchsorted(involved, side) for side in some.T))
            start = stop
        return out

    def read(self, nodes: np.ndarray) -> Grams:
        """The sets of these nodes, in this order: the file is read in order, a window of up to WINDOW hashes at a
        time (or one set, if longer), so that memory holds one window beside the sets."""
        counts = self.counts[nodes]
        offsets = np.zeros(len(nodes) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        hashes = np.empty(offsets[-1], np.uint64)
        order = np.argsort(self.start[nodes], kind="stable")
        starts = self.start[nodes][order]
        ends = starts + counts[order]
        with open(self.path, "rb") as f:
            lo = 0
            while lo < len(order):
                hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + WINDOW)))
                first = int(starts[lo])
                f.seek(first * 8)
                window = np.fromfile(f, np.uint64, int(ends[hi - 1]) - first)
                take = order[lo:hi]
                hashes[minhash.ranges(offsets[take], counts[take])] = window[
                    minhash.ranges(starts[lo:hi] - first, counts[take])
                ]
                lo = hi
        return Grams(offsets, hashes)


def _merged(label: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Component labels (each the smallest node of its component) after adding edges: the components the edges
    touch are merged as nodes of a small graph of their labels, whatever the size of the whole."""
    if not len(edges):
        return label
    ends = label[edges]
    roots = np.unique(ends)
    merged = roots[minhash.components(len(roots), np.searchsorted(roots, ends))]  # the smallest root of each merge
    at = np.minimum(np.searchsorted(roots, label), len(roots) - 1)
    touched = roots[at] == label
    label = label.copy()
    label[touched] = merged[at[touched]]
    return label


class PairSet:
    """A growing set of node pairs, asked about many pairs at once: runs of sorted keys searched by bisection, the
    recent runs merged into the main one once they are a quarter of its size, so that adding stays cheap however
    large the set grows."""

    def __init__(self, nodes: int):
        self.nodes = nodes
        self.runs: list[np.ndarray] = [np.empty(0, np.int64)]  # the main run first, then the recent ones

    def _keys(self, pairs: np.ndarray) -> np.ndarray:
        return pairs[:, 0] * self.nodes + pairs[:, 1]

    def holds(self, pairs: np.ndarray) -> np.ndarray:
        keys = self._keys(pairs)
        found = np.zeros(len(keys), bool)
        for run in self.runs:
            if len(run):
                at = np.minimum(np.searchsorted(run, keys), len(run) - 1)
                found |= run[at] == keys
        return found

    def add(self, pairs: np.ndarray) -> None:
        """Add pairs the set does not hold (each once)."""
        self.runs.append(np.sort(self._keys(pairs)))
        if 4 * sum(len(r) for r in self.runs[1:]) > len(self.runs[0]):
            merged = np.concatenate(self.runs)
            self.runs = []  # the runs are not held beside the merged one while it is sorted
            merged.sort()  # in place: the runs are disjoint, so no np.unique (a sorted copy and a mask beside it)
            self.runs = [merged]


def _blocks(bands: Iterator[np.ndarray], keep) -> Iterator[np.ndarray]:
    """The bands' pairs that `keep` keeps, in blocks of BLOCK pairs (but the last), so that the texts of a block
    are read back together. A block's pairs were kept before the blocks ahead of it were verified."""
    pending, size = [], 0
    for pairs in bands:
        for start in range(0, len(pairs), BLOCK):
            part = keep(pairs[start : start + BLOCK])
            pending.append(part)
            size += len(part)
            if size >= BLOCK:
                gathered = np.concatenate(pending)
                yield gathered[:BLOCK]
                pending, size = [gathered[BLOCK:]], size - BLOCK
    if size:
        yield np.concatenate(pending)
