"""MinHash arithmetic against brute force: signatures, banding, exact Jaccard, components and the keep rule."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from tunelake.silver import minhash
from tunelake.silver.ngrams import Grams, ngram_hashes


def _texts(seed: int = 1) -> list[str | None]:
    """Random texts over a small vocabulary, each followed by a copy with one word changed; and two empty."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(300)]
    texts = []
    for _ in range(200):
        words = list(rng.choice(vocab, size=rng.integers(1, 80)))
        texts.append(" ".join(words))
        if len(words) > 5:
            words[rng.integers(len(words))] = "changed"
            texts.append(" ".join(words))
    return [*texts, "", None]


def _brute_jaccard(grams: Grams, i: int, j: int) -> float:
    a, b = set(grams.of(i).tolist()), set(grams.of(j).tolist())
    return 1.0 if not (a or b) else len(a & b) / len(a | b)


def test_jaccard_is_exact_for_every_pair_whatever_the_block():
    grams = ngram_hashes(pa.array(_texts()), 3)
    left, right = np.triu_indices(len(grams), 1)
    expected = np.array([_brute_jaccard(grams, i, j) for i, j in zip(left, right, strict=True)])
    sets = minhash.sorted_sets(grams)
    assert np.array_equal(minhash.jaccard(sets, left, right), expected)
    assert np.array_equal(minhash.jaccard(sets, left, right, block=1000), expected)


def test_jaccard_tells_apart_hashes_that_share_their_high_bits():
    """Grams whose hashes agree on every bit the search keys keep are still different grams."""
    high = np.uint64(0xABCDEF) << np.uint64(40)
    a = np.array([high | np.uint64(1), high | np.uint64(2), high | np.uint64(3)], np.uint64)
    b = np.array([high | np.uint64(2), high | np.uint64(4), high | np.uint64(5)], np.uint64)
    sets = Grams(np.array([0, 3, 6, 9]), np.concatenate([a, b, a]))
    assert minhash.jaccard(sets, np.array([0, 0]), np.array([1, 2])).tolist() == [1 / 5, 1.0]


def test_the_bitmap_bound_is_never_below_the_jaccard_and_mostly_rules_out_dissimilar_pairs():
    grams = ngram_hashes(pa.array(_texts()), 3)
    sets = minhash.sorted_sets(grams)
    left, right = np.triu_indices(len(grams), 1)
    exact = minhash.jaccard(sets, left, right)
    bound = minhash.jaccard_bound(minhash.bitmaps(sets), sets.counts, left, right)
    assert (bound >= exact).all()
    assert (bound[exact < 0.5] < 0.5).mean() > 0.9
    assert bound[-1] == exact[-1] == 1.0  # the empty and the null text


def test_a_signature_depends_on_its_text_only(monkeypatch):
    """Blocks of grams (and a text split across blocks) never change a text's signature."""
    grams = ngram_hashes(pa.array(_texts()), 3)
    whole = minhash.signatures(grams, 64)
    for i in (0, 5, len(grams) - 3):
        alone = minhash.signatures(Grams(np.array([0, grams.counts[i]]), grams.of(i)), 64)
        assert np.array_equal(alone[0], whole[i])
    monkeypatch.setattr(minhash, "BLOCK", 7)  # smaller than most texts
    assert np.array_equal(minhash.signatures(grams, 64), whole)
    assert (whole[-2:] == minhash.EMPTY).all()  # the empty and the null text


def test_signatures_estimate_jaccard():
    grams = ngram_hashes(pa.array(_texts()), 3)
    sig = minhash.signatures(grams, 256)
    left, right = np.triu_indices(len(grams) - 2, 1)
    exact = minhash.jaccard(minhash.sorted_sets(grams), left, right)
    similar = exact > 0.3
    estimate = (sig[left[similar]] == sig[right[similar]]).mean(axis=1)
    assert similar.sum() > 100
    assert np.abs(estimate - exact[similar]).mean() < 0.03


def test_band_parameters_reach_the_recall_at_the_threshold_with_the_most_rows():
    bands, rows = minhash.band_parameters(0.8, 128)
    assert (bands, rows) == (21, 6)
    assert minhash.candidate_probability(0.8, bands, rows) >= 0.995
    assert minhash.candidate_probability(0.8, 128 // (rows + 1), rows + 1) < 0.995


def test_band_keys_agree_exactly_when_a_band_agrees():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [5, 2, 3, 4]], np.uint32)
    keys = minhash.band_keys(sig, 2, 2)
    assert keys[0, 0] == keys[1, 0] and keys[0, 1] != keys[1, 1]
    assert keys[0, 1] == keys[2, 1] and keys[0, 0] != keys[2, 0]
    assert (
        minhash.band_keys(np.array([[7, 7]], np.uint32), 2, 1)[0, 0]
        != minhash.band_keys(np.array([[7, 7]], np.uint32), 2, 1)[0, 1]
    )  # the same values in two bands are two buckets
    with pytest.raises(ValueError, match="need 6 permutations"):
        minhash.band_keys(sig, 3, 2)


def test_small_buckets_give_all_their_pairs_and_large_ones_stay_connected():
    rng = np.random.default_rng(0)
    bucket, member = np.sort(rng.integers(0, 30, size=500)), rng.permutation(500)
    expected = {
        (min(x, y), max(x, y))
        for b in np.unique(bucket)
        for x, y in itertools.combinations(member[bucket == b].tolist(), 2)
    }
    every = np.concatenate(list(minhash.bucket_pairs(bucket, member, all_pairs_up_to=1000)))
    assert len(every) == len(expected) and set(map(tuple, np.sort(every, axis=1).tolist())) == expected
    linear = np.concatenate(list(minhash.bucket_pairs(bucket, member, all_pairs_up_to=4)))
    assert len(linear) < 2 * len(bucket)
    assert len(np.unique(np.sort(linear, axis=1), axis=0)) == len(linear)
    label = minhash.components(500, linear)
    assert all(len(set(label[member[bucket == b]])) == 1 for b in np.unique(bucket))


def test_components_and_greedy_keep_match_a_sequential_walk():
    rng = np.random.default_rng(2)
    edges = rng.integers(0, 200, size=(300, 2))
    edges = edges[edges[:, 0] != edges[:, 1]]
    parent = list(range(200))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for u, v in edges:
        parent[max(root(u), root(v))] = min(root(u), root(v))
    label = minhash.components(200, edges)
    assert all(label[i] == min(j for j in range(200) if root(j) == root(i)) for i in range(200))

    neighbours = {i: set() for i in range(200)}
    for u, v in edges:
        neighbours[u].add(v)
        neighbours[v].add(u)
    walked: list[int] = []
    for i in range(200):  # in order of preference: kept unless a kept, preferred neighbour exists
        if not any(j < i and j in walked for j in neighbours[i]):
            walked.append(i)
    kept, dropped_for = minhash.greedy_keep(200, edges)
    assert np.flatnonzero(kept).tolist() == walked
    for i in np.flatnonzero(~kept):
        assert kept[dropped_for[i]] and dropped_for[i] < i and dropped_for[i] in neighbours[i]
