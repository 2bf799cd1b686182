"""LSH over a relation: verified edges from shared buckets, and components that skip the pairs already joined yet
equal the components of every verified edge."""

from __future__ import annotations

from contextlib import ExitStack

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tests.silver.test_minhash import _texts
from tunelake.silver import lsh, minhash
from tunelake.silver.lsh import MinHashConfig
from tunelake.silver.ngrams import ngram_hashes


def _relation(texts: list[str | None], config: MinHashConfig) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    columns = lsh.shingle_columns(pa.array(texts, pa.string()), config)
    con.register("rows", pa.table({"_ord": np.arange(len(texts)) * 7 + 3, **columns}))
    return con


def test_shingle_columns_band_keys_are_those_of_the_texts():
    texts = pa.array(_texts(2))
    config = MinHashConfig(ngram=3)
    columns = lsh.shingle_columns(texts, config)
    keys = lsh.band_columns(ngram_hashes(texts, 3), config)  # of the grams as they come, repeats and all
    assert all(columns[b].equals(k) for b, k in keys.items())
    sets = minhash.sorted_sets(ngram_hashes(texts, 3))
    assert columns[lsh.SHINGLES].to_pylist() == [sets.of(i).tolist() for i in range(len(sets))]


def test_shingle_sets_read_back_any_nodes_in_the_order_asked(tmp_path, monkeypatch):
    texts = _texts(4)
    config = MinHashConfig(ngram=3)
    con = _relation(texts, config)
    nodes = (np.arange(len(texts)) * 7 + 3)[::-1]  # node i is the text len - 1 - i
    sets = minhash.sorted_sets(ngram_hashes(pa.array(texts), 3))
    monkeypatch.setattr(lsh, "WINDOW", 50)  # many windows, some sets longer than one
    with lsh.ShingleSets(con, "rows", nodes, str(tmp_path)) as stored:
        asked = np.array([5, 0, 17, 5, len(texts) - 1, 3])
        got = stored.read(asked)
        assert [got.of(k).tolist() for k in range(len(asked))] == [sets.of(len(texts) - 1 - i).tolist() for i in asked]
    assert not list(tmp_path.iterdir())


def test_linked_components_equal_those_of_every_verified_pair(monkeypatch, tmp_path):
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
    with lsh.ShingleSets(con, "rows", nodes, str(tmp_path)) as sets:
        edges, similarity = lsh.verified_edges(con, "rows", nodes, config, [sets])
    assert (similarity >= 0.7).all() and len(edges) > 60
    monkeypatch.setattr(lsh, "BLOCK", 64)
    label = lsh.linked(con, "rows", nodes, config, str(tmp_path))
    assert np.array_equal(label, minhash.components(len(nodes), edges))


def test_verified_edges_are_the_candidates_whose_every_part_is_near_identical(monkeypatch, tmp_path):
    """Two set columns (a record's two parts): an edge is a candidate pair with both parts' exact Jaccard (plain
    Python sets) at least the threshold, with the smaller of the two; none is missed for the bound or the blocks,
    and a part no row has (all empty) changes nothing."""
    config = MinHashConfig(threshold=0.6, ngram=3)
    first = _texts(6)
    second = [t if i % 3 else (t or "") + " and a tail of several other words" for i, t in enumerate(first)]
    columns = lsh.shingle_columns(pa.array(first, pa.string()), config)
    second_sets = lsh.shingle_columns(pa.array(second, pa.string()), config)[lsh.SHINGLES]
    empty = lsh.shingle_columns(pa.nulls(len(first), pa.string()), config)[lsh.SHINGLES]
    nodes = np.arange(len(first)) * 5 + 1
    con = duckdb.connect()
    con.register("rows", pa.table({"_ord": nodes, **columns, "second": second_sets, "empty": empty}))
    monkeypatch.setattr(lsh, "BLOCK", 32)  # many blocks, a pair met again in a later one
    monkeypatch.setattr(lsh, "READ", 50)  # a block's pairs verified a few sets at a time
    with ExitStack() as stack:
        parts = [lsh.SHINGLES, "second", "empty"]
        stored = [stack.enter_context(lsh.ShingleSets(con, "rows", nodes, str(tmp_path), c)) for c in parts]
        edges, similarity = lsh.verified_edges(con, "rows", nodes, config, stored)

    sets = [[set(v) for v in column.to_pylist()] for column in (columns[lsh.SHINGLES], second_sets)]

    def exact(i: int, j: int) -> float:
        return min(len(s[i] & s[j]) / len(s[i] | s[j]) if s[i] | s[j] else 1.0 for s in sets)

    candidates = {tuple(p) for pairs in lsh.band_pairs(con, "rows", nodes, config) for p in pairs.tolist()}
    expected = sorted((i, j) for i, j in candidates if exact(i, j) >= 0.6)
    assert expected and len(expected) < len(candidates)  # some candidates fail on one part only
    assert any(
        exact(i, j) < 0.6 <= min(len(sets[0][i] & sets[0][j]) / len(sets[0][i] | sets[0][j]), 1.0)
        for i, j in candidates
        if sets[0][i] | sets[0][j]
    )
    assert edges.tolist() == [list(e) for e in expected]
    assert similarity.tolist() == pytest.approx([exact(i, j) for i, j in expected])
    assert not list(tmp_path.iterdir())


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
