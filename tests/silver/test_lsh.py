"""LSH over a relation: verified edges from shared buckets, and components that skip the pairs already joined yet
equal the components of every verified edge."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from tests.silver.test_minhash import _texts
from tunelake.silver import lsh, minhash
from tunelake.silver.lsh import MinHashConfig


def _relation(texts: list[str | None], config: MinHashConfig) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    column = pa.array(texts, pa.string())
    rows = pa.table({"_ord": np.arange(len(texts)) * 7 + 3, "text": column, **lsh.text_band_columns(column, config)})
    con.register("rows", rows)
    return con


def test_linked_components_equal_those_of_every_verified_pair(monkeypatch):
    """Many near-identical texts (one word changed in each of 60 copies) beside unrelated ones: skipping joined
    pairs verifies far fewer, and the components are the same."""
    rng = np.random.default_rng(5)
    base = _texts(3)
    family = base[0].split()
    copies = []
    for _ in range(60):
        words = list(family)
        words[rng.integers(len(words))] = f"w{rng.integers(1000)}"
        copies.append(" ".join(words))
    texts = [*base, *copies]
    config = MinHashConfig(threshold=0.7, ngram=3)
    con = _relation(texts, config)
    nodes = np.arange(len(texts)) * 7 + 3
    assert sum(len(p) for p in lsh.band_pairs(con, "rows", nodes, config)) > 500
    edges, similarity = lsh.verified_edges(con, "rows", nodes, ("text",), config)
    assert (similarity >= 0.7).all() and len(edges) > 60
    monkeypatch.setattr(lsh, "BLOCK", 64)
    assert np.array_equal(lsh.linked(con, "rows", nodes, ("text",), config), minhash.components(len(nodes), edges))


def test_a_pair_set_holds_what_was_added_however_it_grows():
    rng = np.random.default_rng(1)
    held = lsh.PairSet(1000)
    added: set[tuple[int, int]] = set()
    for _ in range(40):
        pairs = np.sort(rng.integers(0, 1000, size=(rng.integers(1, 300), 2)), axis=1)
        asked = np.sort(rng.integers(0, 1000, size=(500, 2)), axis=1)
        assert held.holds(asked).tolist() == [tuple(p) in added for p in asked.tolist()]
        held.add(pairs)
        added.update(map(tuple, pairs.tolist()))
