"""Normalised words and word n-gram hashes of texts, vectorised over a whole Arrow array.

One shingler for every stage that compares text (near-dedup, decontamination, prompt groups), so two stages never
disagree about what counts as the same words. Normalising lowercases, turns every character that is neither a
letter, a digit nor whitespace into a space, and splits on whitespace: "Hello,  World!" and "hello world" have the
same words.

Hashes are 64-bit and stable across processes, machines and versions of Python, NumPy and Arrow (they are part of
cached outputs): a word's hash is a polynomial over its UTF-8 bytes, finished by SplitMix64's mixer; an n-gram's is
the mixer over its words' hashes, each multiplied by a constant of its position. Everything runs in NumPy over the
flattened buffers, with no Python loop per row, word or gram.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BYTE_BASE = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime, as the polynomial's base
MAX_N = 16  # the longest n-gram


# ASCII bytes as normalising maps them: letters lowercased, digits kept, every other ASCII byte a space. Bytes of
# multi-byte characters (>= 0x80) are left for the Unicode path.
_ASCII = np.arange(256, dtype=np.uint8)
_ASCII[:128] = ord(" ")
for _first, _last in ((b"a", b"z"), (b"0", b"9")):
    _ASCII[_first[0] : _last[0] + 1] = np.arange(_first[0], _last[0] + 1)
_ASCII[ord("A") : ord("Z") + 1] = np.arange(ord("a"), ord("z") + 1)


def normalize(texts: pa.Array) -> pa.StringArray:
    """Each text lowercased, with every character that is neither a letter nor a digit a space (null stays null).
    Runs of spaces are left: words() splits on them."""
    texts = texts.cast(pa.string()) if not pa.types.is_string(texts.type) else texts  # null or large_string
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    # ASCII bytes through a table (the same as the Unicode rule for them, and much faster than a regex); only the
    # texts that hold other characters go through Unicode lowercasing and the regex as well.
    validity, offsets, data = texts.buffers()
    if data is None:
        return texts
    mapped = pa.py_buffer(_ASCII[np.frombuffer(data, np.uint8)])
    texts = pa.StringArray.from_buffers(len(texts), offsets, mapped, validity, texts.null_count, texts.offset)
    other = pc.invert(pc.fill_null(pc.string_is_ascii(texts), True))
    if not pc.any(other).as_py():
        return texts
    unicode = pc.replace_substring_regex(pc.utf8_lower(texts.filter(other)), r"[^\p{L}\p{N}]+", " ")
    return pc.replace_with_mask(texts, other, unicode)


def words(texts: pa.Array) -> pa.ListArray:
    """Each text's normalised words, in order (a null text has none)."""
    normal = pc.utf8_trim_whitespace(normalize(texts))
    # Splitting "" gives [""]: a text with no words is made null first, so that it has none.
    split = pc.utf8_split_whitespace(pc.if_else(pc.equal(normal, ""), pa.scalar(None, pa.string()), normal))
    return pc.fill_null(split, pa.scalar([], split.type))


@dataclass(frozen=True)
class Grams:
    """Per text, the hashes of its word n-grams in order: text i's are hashes[offsets[i]:offsets[i + 1]]."""

    offsets: np.ndarray  # int64, one more than there are texts
    hashes: np.ndarray  # uint64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def ngram_hashes(texts: pa.Array, n: int) -> Grams:
    """The hashes of each text's word n-grams (overlapping, in order). A text with fewer than n words, but at
    least one, gives one gram of all its words; an empty or null text gives none."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return word_ngram_hashes(words(texts), n)


def word_ngram_hashes(split: pa.ListArray, n: int) -> Grams:
    """The hashes of the n-grams of each list of words (as `words` gives them): for a caller that takes grams of
    several sizes of the same texts, or of words it has rewritten, without splitting the texts again."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n-gram size must be in 1..{MAX_N}, got {n}")
    # Each distinct word is hashed once: a corpus repeats its vocabulary many times over.
    vocabulary = pc.dictionary_encode(split.flatten())
    word_hashes = _word_hashes(vocabulary.dictionary)[vocabulary.indices.to_numpy()]
    bounds = _list_offsets(split)
    starts, per_text = bounds[:-1], np.diff(bounds)
    grams = np.where(per_text >= n, per_text - n + 1, np.minimum(per_text, 1))
    offsets = np.zeros(len(split) + 1, np.int64)
    np.cumsum(grams, out=offsets[1:])
    # Gram j of a text starts at word starts[text] + j; it takes up to n words, never past the text's last word.
    first = np.repeat(starts - offsets[:-1], grams) + np.arange(offsets[-1], dtype=np.int64)
    end = np.repeat(bounds[1:], grams)
    acc = np.zeros(len(first), np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):
            at = first + t
            inside = at < end
            acc += np.where(inside, word_hashes[np.minimum(at, len(word_hashes) - 1)] * _POSITION[t], np.uint64(0))
    return Grams(offsets, mix(acc) if len(acc) else acc)


def _list_offsets(lists: pa.ListArray) -> np.ndarray:
    offsets = np.frombuffer(lists.buffers()[1], np.int32)[lists.offset : lists.offset + len(lists) + 1]
    return offsets.astype(np.int64) - offsets[0]


def _word_hashes(flat: pa.StringArray) -> np.ndarray:
    """A 64-bit hash per word: sum of byte * base^position over its UTF-8 bytes, then mixed."""
    if len(flat) == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(flat.buffers()[1], np.int32)[flat.offset : flat.offset + len(flat) + 1].astype(np.int64)
    data = np.frombuffer(flat.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    offsets -= offsets[0]
    lengths = np.diff(offsets)  # split_whitespace never gives an empty word
    position = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    powers = _powers(int(lengths.max()))
    with np.errstate(over="ignore"):
        terms = (data.astype(np.uint64) + np.uint64(1)) * powers[position]
        return mix(np.add.reduceat(terms, offsets[:-1]) ^ lengths.astype(np.uint64))


def _powers(count: int) -> np.ndarray:
    """base^0, base^1, ... base^(count - 1), modulo 2^64."""
    powers = np.empty(count, np.uint64)
    powers[0] = 1
    with np.errstate(over="ignore"):
        np.cumprod(np.full(count - 1, _BYTE_BASE, np.uint64), out=powers[1:])
    return powers


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit affects every output bit."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# One odd multiplier per position in an n-gram (SplitMix64's outputs 1..MAX_N), so "a b" and "b a" differ.
with np.errstate(over="ignore"):
    _POSITION = mix(np.arange(1, MAX_N + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
