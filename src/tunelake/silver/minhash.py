"""MinHash signatures, LSH banding, exact Jaccard and clusters: the arithmetic of near-duplicate detection.

Vectorised end to end (NumPy over whole arrays; no Python loop per record, gram, pair or edge):
- a signature is, per permutation, the minimum over a text's gram hashes of a multiply-shift hash (the high 32
  bits of a * h + b modulo 2^64, a odd): one outer product per block of grams, reduced per text;
- a band of `rows` signature values is folded into one 64-bit bucket key, so two texts share a bucket in a band
  when their values agree on all its rows: P(candidate) = 1 - (1 - J^rows)^bands;
- candidates are verified by exact Jaccard of their gram sets, so banding decides recall only, never precision;
  a bitmap per set (a bit per gram hash modulo 256) bounds a pair's Jaccard from above first, so that most pairs
  below the threshold are ruled out without their sets;
- clusters are connected components of the verified pairs, by min-label propagation with pointer jumping.

Everything here is deterministic and independent of how records are split into chunks or workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tunelake.silver.ngrams import Grams, mix

SEED = 0x7475_6E65_6C61_6B65  # "tunelake": the permutations are part of cached outputs; never change it
BLOCK = 1 << 14  # grams hashed at once: BLOCK x num_perm x 8 bytes of scratch (16 MiB at 128 permutations)
EMPTY = np.uint32(0xFFFF_FFFF)  # the signature value of a text with no grams
BITMAP_WORDS = 4  # a set's bitmap: 256 bits


def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each permutation: a odd, from SplitMix64 over SEED (so the same on every machine)."""
    with np.errstate(over="ignore"):
        counter = np.uint64(SEED) + np.arange(1, 2 * num_perm + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    values = mix(counter)
    return values[:num_perm] | np.uint64(1), values[num_perm:]


def signatures(grams: Grams, num_perm: int) -> np.ndarray:
    """Each text's MinHash signature, uint32 of shape (texts, num_perm); a text with no grams is all EMPTY."""
    a, b = permutations(num_perm)
    out = np.full((len(grams), num_perm), EMPTY, np.uint32)
    counts = grams.counts
    has = np.flatnonzero(counts)
    if not len(has):
        return out
    # Blocks end at text boundaries (a text longer than a block is hashed in pieces, its minimum carried over).
    starts = grams.offsets[has]
    ends = grams.offsets[has + 1]
    lo = 0
    while lo < len(has):
        hi = int(np.searchsorted(starts, starts[lo] + BLOCK, side="left"))
        hi = max(hi, lo + 1)
        first, last = int(starts[lo]), int(ends[hi - 1])
        block_min = np.full((num_perm, hi - lo), np.iinfo(np.uint64).max, np.uint64)
        for piece in range(first, last, BLOCK):
            piece_end = min(piece + BLOCK, last)
            hashed = _hash(grams.hashes[piece:piece_end], a, b)
            # Texts of this block that have grams in this piece, and where their grams start within it.
            t_lo = int(np.searchsorted(ends[lo:hi], piece, side="right"))
            t_hi = int(np.searchsorted(starts[lo:hi], piece_end, side="left"))
            at = np.maximum(starts[lo + t_lo : lo + t_hi], piece) - piece
            np.minimum(block_min[:, t_lo:t_hi], np.minimum.reduceat(hashed, at, axis=1), out=block_min[:, t_lo:t_hi])
        out[has[lo:hi]] = (block_min >> np.uint64(32)).astype(np.uint32).T
        lo = hi
    return out


def _hash(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every permutation of every gram hash, before the shift: (num_perm, grams) uint64 (a * h + b modulo 2^64).
    The shift to the high 32 bits is monotone, so it is applied after the minimum, to num_perm values per text
    rather than to every gram."""
    with np.errstate(over="ignore"):
        values = np.multiply.outer(a, hashes)
        values += b[:, None]
    return values


def band_parameters(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm: the most rows per band (the fewest false candidates) whose
    chance of making a pair at exactly `threshold` a candidate is at least `recall`."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall:
            return bands, rows
    return num_perm, 1


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """The chance that a pair of this similarity shares a bucket in at least one band."""
    return 1 - (1 - jaccard**rows) ** bands


def band_keys(signature: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Per text and band, a 64-bit key of the band's values: (texts, bands) uint64, the band index mixed in, so
    keys of different bands never meet."""
    if bands * rows > signature.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations, got {signature.shape[1]}")
    keys = np.empty((signature.shape[0], bands), np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            acc = np.full(signature.shape[0], np.uint64(band + 1) * np.uint64(0xD6E8FEB86659FD93), np.uint64)
            for column in signature[:, band * rows : (band + 1) * rows].T:
                acc = mix(acc ^ column.astype(np.uint64))
            keys[:, band] = acc
    return keys


def bucket_pairs(bucket: np.ndarray, member: np.ndarray, all_pairs_up_to: int = 32) -> Iterator[np.ndarray]:
    """Candidate pairs from (bucket, member) rows sorted by bucket, each once, in arrays of pairs; (smaller,
    larger) where members are sorted within their bucket.

    A bucket of up to `all_pairs_up_to` members gives all its pairs; a larger one (many near-identical texts, or
    a value shared by chance) gives each member paired with the bucket's first, then with the next, so candidates
    stay linear in its size while its true duplicates still join one component. The pairs with a large bucket's
    first come first: a caller that skips the pairs already joined has most of the bucket joined by them."""
    n = len(bucket)
    if not n:
        return
    first = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    sizes = np.diff(np.r_[first, n])
    small = np.repeat(sizes <= all_pairs_up_to, sizes)
    is_first = np.zeros(n, bool)
    is_first[first] = True
    later_in_big = ~small & ~is_first
    yield np.stack([np.repeat(member[first], sizes)[later_in_big], member[later_in_big]], axis=1)
    for d in range(1, min(all_pairs_up_to, int(sizes.max()))):
        # In a large bucket, neighbours only, but for the first and the second: already paired.
        ok = (bucket[d:] == bucket[:-d]) & (small[:-d] | ((d == 1) & ~is_first[:-d]))
        i = np.flatnonzero(ok)
        yield np.stack([member[i], member[i + d]], axis=1)


def unique_pairs(pairs: np.ndarray, nodes: int) -> np.ndarray:
    """Each unordered pair of nodes 0..nodes-1 once, as (smaller, larger), in the order of its first occurrence."""
    if not len(pairs):
        return pairs.reshape(0, 2)
    low, high = pairs.min(axis=1), pairs.max(axis=1)
    _, first = np.unique(low * nodes + high, return_index=True)
    first.sort()
    return np.stack([low[first], high[first]], axis=1)


def sorted_sets(grams: Grams) -> Grams:
    """Each text's gram hashes as a sorted set (duplicates removed): what Jaccard compares."""
    if not len(grams.hashes):
        return grams
    text = np.repeat(np.arange(len(grams)), grams.counts)
    hashes = grams.hashes[_by_group_then_value(text, grams.hashes)]
    first = np.r_[True, (hashes[1:] != hashes[:-1]) | (text[1:] != text[:-1])]
    offsets = np.zeros(len(grams) + 1, np.int64)
    np.cumsum(np.bincount(text[first], minlength=len(grams)), out=offsets[1:])
    return Grams(offsets, hashes[first])


def _by_group_then_value(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """An order that sorts by group, then value (as np.lexsort((values, group)) does, but for the order among
    equal values), for groups in 0..n: two single-key sorts (each value's rank, then group * n + rank), several
    times faster than lexsort's two stable argsorts. Equal values have neighbouring ranks, so within a group they
    stay next to each other."""
    n = len(values)
    by_value = np.argsort(values)
    rank = np.empty(n, np.int64)
    rank[by_value] = np.arange(n, dtype=np.int64)
    key = group.astype(np.int64) * n + rank
    key.sort()
    return by_value[key % n]


def jaccard(sets: Grams, left: np.ndarray, right: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Exact Jaccard of the sets of texts left[k] and right[k] (from sorted_sets), float64 per pair. Two empty
    sets are identical (1.0)."""
    counts = sets.counts
    out = np.empty(len(left), np.float64)
    sizes = counts[left] + counts[right]
    start = 0
    while start < len(left):
        # Pairs whose grams together fit the block (at least one pair, at most `block` pairs).
        fit = int(np.searchsorted(np.cumsum(sizes[start : start + block]), block, side="right"))
        stop = start + max(1, fit)
        out[start:stop] = _jaccard_block(sets, left[start:stop], right[start:stop])
        start = stop
    return out


_PAIR_BITS = 20  # a block's pair number, above the high 44 bits of a gram hash in _jaccard_block's keys


def _jaccard_block(sets: Grams, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """jaccard of up to 2^_PAIR_BITS pairs. Each side's grams are keyed by (pair, the hash's high bits), which
    keeps them sorted, as each set is: a search of the left keys in the right ones finds each common gram without
    a sort. Grams whose hashes share their high bits share a key, so a match is confirmed on the full hash, at
    every right gram of an equal key."""
    counts = sets.counts
    left_n, right_n = counts[left], counts[right]
    left_hashes = sets.hashes[ranges(sets.offsets[left], left_n)]
    right_hashes = sets.hashes[ranges(sets.offsets[right], right_n)]
    pair = np.arange(len(left), dtype=np.uint64) << np.uint64(64 - _PAIR_BITS)
    left_keys = np.repeat(pair, left_n) | (left_hashes >> np.uint64(_PAIR_BITS))
    right_keys = np.repeat(pair, right_n) | (right_hashes >> np.uint64(_PAIR_BITS))
    common = np.zeros(len(left_keys), bool)
    if len(right_keys):
        at = np.searchsorted(right_keys, left_keys)
        starts = np.flatnonzero(np.r_[True, right_keys[1:] != right_keys[:-1]])
        for step in range(int(np.diff(np.r_[starts, len(right_keys)]).max())):  # the longest run of equal keys
            i = np.minimum(at + step, len(right_keys) - 1)
            common |= (right_keys[i] == left_keys) & (right_hashes[i] == left_hashes)
    inter = np.bincount(np.repeat(np.arange(len(left)), left_n)[common], minlength=len(left)).astype(np.float64)
    union = left_n + right_n - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + n) for each (s, n)."""
    total = int(lengths.sum())
    if not total:
        return np.empty(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def bitmaps(sets: Grams) -> np.ndarray:
    """Each set's bitmap, (sets, BITMAP_WORDS) uint64: the bit of each of its gram hashes modulo 256. Two sets'
    bitmaps differ in at most as many bits as the sets differ in grams (a bit set in one bitmap only is set by a
    gram of one set only), which is what jaccard_bound counts on."""
    out = np.zeros((len(sets), BITMAP_WORDS), np.uint64)
    has = np.flatnonzero(sets.counts)
    if not len(has):
        return out
    word = (sets.hashes >> np.uint64(6)) % np.uint64(BITMAP_WORDS)
    bit = np.uint64(1) << (sets.hashes & np.uint64(63))
    for w in range(BITMAP_WORDS):
        out[has, w] = np.bitwise_or.reduceat(np.where(word == w, bit, np.uint64(0)), sets.offsets[has])
    return out


def jaccard_bound(bitmaps: np.ndarray, counts: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """An upper bound of the Jaccard of sets left[k] and right[k] from their bitmaps and sizes, float64 per pair:
    never below what jaccard gives (so a pair it puts below a threshold is below it), and below the threshold for
    most pairs that are, as their differing grams mostly set differing bits."""
    apart = np.bitwise_count(bitmaps[left] ^ bitmaps[right]).sum(axis=1, dtype=np.int64)
    total = counts[left] + counts[right]
    inter = (total - apart) // 2  # at most: each gram in one set only is at least one bit apart
    return np.where(total > 0, inter / np.maximum(total - inter, 1), 1.0)


def components(nodes: int, edges: np.ndarray) -> np.ndarray:
    """The connected component of each node 0..nodes-1, labelled by its smallest node."""
    label = np.arange(nodes, dtype=np.int64)
    if not len(edges):
        return label
    u, v = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(label[u], label[v])
        before = label.copy()
        np.minimum.at(label, u, low)
        np.minimum.at(label, v, low)
        label = label[label]  # pointer jumping: each node takes its label's label
        if np.array_equal(label, before):
            return label


def greedy_keep(nodes: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which nodes to keep when node i is preferred to node j for i < j: a node is dropped when a kept node
    preferred to it shares an edge with it (so no two kept nodes share an edge, and every dropped node names a
    kept neighbour). Returns (kept mask, for each dropped node the kept neighbour it is dropped for, else -1).

    Decided in rounds over all edges at once: a node whose preferred neighbours are all decided and dropped is
    kept; a node with a kept preferred neighbour is dropped. Rounds are as many as the longest chain of
    preference among undecided nodes, not as many as edges."""
    kept = np.ones(nodes, bool)
    dropped_for = np.full(nodes, -1, np.int64)
    if not len(edges):
        return kept, dropped_for
    better, worse = edges.min(axis=1), edges.max(axis=1)
    state = np.zeros(nodes, np.int8)  # 0 undecided, 1 kept, 2 dropped
    state[np.setdiff1d(np.arange(nodes), worse)] = 1  # nobody preferred to them shares an edge
    while (state[worse] == 0).any():
        # Undecided nodes with a kept preferred neighbour are dropped, for the most preferred such neighbour.
        hit = (state[better] == 1) & (state[worse] == 0)
        if hit.any():
            order = np.lexsort((better[hit], worse[hit]))
            w, b = worse[hit][order], better[hit][order]
            first = np.r_[True, w[1:] != w[:-1]]
            dropped_for[w[first]] = b[first]
            state[w[first]] = 2
        # Undecided nodes whose preferred neighbours are all dropped are kept.
        blocking = np.zeros(nodes, bool)
        blocking[worse[state[better] != 2]] = True
        state[(state == 0) & ~blocking] = 1
    kept = state != 2
    return kept, dropped_for
