"""The shared shingler: normalised words, and word n-gram hashes that agree with a per-text definition."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import REPO
from tunelake.silver.ngrams import Grams, ngram_hashes, normalize, words

MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _reference(text: str | None, n: int) -> list[int]:
    """The gram hashes of one text, written out with Python ints from the module docstring's definition."""
    position = [_mix((i * 0x9E3779B97F4A7C15) & MASK) | 1 for i in range(1, n + 1)]
    found = words(pa.array([text], pa.string())).to_pylist()[0]
    hashes = []
    for word in found:
        data = word.encode()
        total = sum((b + 1) * pow(0x100000001B3, i, 1 << 64) for i, b in enumerate(data)) & MASK
        hashes.append(_mix(total ^ len(data)))
    starts = range(len(hashes) - n + 1) if len(hashes) >= n else range(min(len(hashes), 1))
    return [_mix(sum(h * p for h, p in zip(hashes[s : s + n], position, strict=False)) & MASK) for s in starts]


def _alpaca_texts() -> list[str]:
    """The 300 real Alpaca records of the bundled example (examples/data/SOURCES.md)."""
    rows = json.loads(gzip.decompress((REPO / "examples" / "data" / "alpaca_300.json.gz").read_bytes()))
    return [" ".join(r[k] for k in ("instruction", "input", "output")) for r in rows]


def test_normalizing_ignores_case_punctuation_and_spacing():
    texts = pa.array(["Hello,  World!\n", "hello world", "HELLO -- world...", "Ünïcode ÄB, 12.5", None])
    assert words(texts).to_pylist() == [["hello", "world"]] * 3 + [["ünïcode", "äb", "12", "5"], []]
    assert normalize(texts)[3].as_py() == "ünïcode äb 12 5"
    grams = ngram_hashes(texts, 2)
    assert np.array_equal(grams.of(0), grams.of(1)) and np.array_equal(grams.of(0), grams.of(2))


def test_words_are_the_letter_and_digit_runs_of_the_lowercased_text():
    """ASCII texts take a byte table, the others Unicode lowercasing and a regex: both give what a plain reading of
    the rule gives, character by character."""
    unicode = ["naïve café—déjà vu, 3½ €", "日本語のテキスト、です。", "Ünïcode ÄB, 12.5", "tab\there\r\nnew—line"]
    texts = [*_alpaca_texts(), *unicode, "x_y", "", "   ", "!!!", None]
    for text, found in zip(texts, words(pa.array(texts)).to_pylist(), strict=True):
        expected = "".join(c if c.isalnum() else " " for c in (text or "").lower()).split()
        assert found == expected, text


@pytest.mark.parametrize("n", [1, 3, 5, 8])
def test_gram_hashes_match_the_per_text_definition(n):
    texts = [*_alpaca_texts()[:40], "", None, "one", "two words", "   ", "!!!", "a b a b a b"]
    grams = ngram_hashes(pa.array(texts), n)
    assert len(grams) == len(texts)
    for i, text in enumerate(texts):
        assert grams.of(i).tolist() == _reference(text, n), text


def test_counts_are_overlapping_grams_and_short_texts_give_one():
    grams = ngram_hashes(pa.array(["a b c d e f", "a b", "", None, "?!"]), 5)
    assert grams.counts.tolist() == [2, 1, 0, 0, 0]


def test_word_order_matters_and_repeats_repeat():
    grams = ngram_hashes(pa.array(["a b c", "c b a", "x y x y x y"]), 2)
    assert set(grams.of(0).tolist()).isdisjoint(grams.of(1).tolist())
    assert len(set(grams.of(2).tolist())) == 2  # "x y" and "y x"


def test_a_slice_or_a_chunked_array_hashes_as_its_rows_alone():
    texts = pa.array(_alpaca_texts()[:30])
    whole = ngram_hashes(texts, 5)
    part = ngram_hashes(texts.slice(7, 10), 5)
    chunked = ngram_hashes(pa.chunked_array([texts.slice(0, 7), texts.slice(7)]), 5)
    assert np.array_equal(part.hashes, whole.hashes[whole.offsets[7] : whole.offsets[17]])
    assert np.array_equal(chunked.hashes, whole.hashes) and np.array_equal(chunked.offsets, whole.offsets)


def test_distinct_grams_of_real_text_get_distinct_hashes():
    texts = _alpaca_texts()
    grams = ngram_hashes(pa.array(texts), 5)
    distinct_grams = {
        tuple(ws[s : s + 5]) if len(ws) >= 5 else tuple(ws)
        for ws in words(pa.array(texts)).to_pylist()
        for s in range(max(len(ws) - 4, 1))
    }
    assert len(distinct_grams) > 10_000
    assert len(np.unique(grams.hashes)) == len(distinct_grams)


def test_n_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="1..16"):
        ngram_hashes(pa.array(["a"]), 0)
    assert isinstance(ngram_hashes(pa.array([], pa.string()), 3), Grams)
