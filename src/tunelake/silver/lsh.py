"""MinHash LSH over staged columns: what near-duplicate records, prompt groups and the leakage check share.

Per chunk, where the data is: a text's shingles -> its MinHash signature -> one 64-bit key per band (`band_keys`).
Over everything, in DuckDB: rows sharing a key in some band are candidates (`candidate_pairs`); only the
candidates' texts are read back, to verify each pair by exact Jaccard (`verified_pairs`).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from tunelake.silver import minhash
from tunelake.silver.ngrams import MAX_N, Grams, ngram_hashes
from tunelake.stage import StageConfig


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


def band_keys(grams: Grams, config: MinHashConfig) -> pa.ListArray:
    """Each text's band keys, a list per text; a text with no words is in no bucket (its keys are 0)."""
    bands, rows = config.banding()
    keys = minhash.band_keys(minhash.signatures(grams, config.num_perm), bands, rows)
    keys[grams.counts == 0] = 0
    offsets = np.arange(0, keys.size + 1, bands, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(keys.ravel()))


def text_band_keys(texts: pa.Array, config: MinHashConfig) -> pa.ListArray:
    return band_keys(ngram_hashes(texts, config.ngram), config)


def candidate_pairs(con: duckdb.DuckDBPyConnection, source: str, bands: str, scope: str = "null") -> np.ndarray:
    """Pairs of `_ord` of the relation `source` whose `bands` share a key in some band (and whose `scope`
    expression is equal), each pair once, (smaller, larger)."""
    members = con.sql(
        f"""
        with banded as (
            select _ord, {scope} as scope, unnest({bands}) as key from {source} where {bands} is not null
        ),
        shared as (select scope, key from banded where key != 0 group by all having count(*) > 1)
        select dense_rank() over (order by b.scope, b.key) as bucket, b._ord
        from banded b semi join shared s on b.key = s.key and b.scope is not distinct from s.scope
        order by bucket, b._ord
        """
    ).fetchnumpy()
    return minhash.unique_pairs(minhash.bucket_pairs(members["bucket"], members["_ord"]))


def verified_pairs(
    con: duckdb.DuckDBPyConnection, source: str, pairs: np.ndarray, texts: tuple[str, ...], config: MinHashConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs whose every text column has a Jaccard of at least the threshold, with the smallest of
    their Jaccards. Returns (nodes: the sorted `_ord`s of the candidates, edges as indices into nodes, similarity
    per edge); only the candidates' texts are read."""
    nodes = np.unique(pairs)
    con.register("_candidates", pa.table({"_ord": nodes}))
    read = con.sql(f"select {', '.join(texts)} from {source} semi join _candidates using (_ord) order by _ord")
    columns = read.to_arrow_table()
    con.unregister("_candidates")
    left, right = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
    similarity = np.ones(len(pairs))
    for text in texts:
        sets = minhash.sorted_sets(ngram_hashes(columns[text], config.ngram))
        similarity = np.minimum(similarity, minhash.jaccard(sets, left, right))
    keep = similarity >= config.threshold
    return nodes, np.stack([left[keep], right[keep]], axis=1), similarity[keep]
