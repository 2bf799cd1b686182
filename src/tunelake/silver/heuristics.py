"""Heuristic quality gate for chat data: drop records whose responses are empty-ish, overlong, repetitive, full of
non-printing characters or cut inside a code block; a row-local stage.

What is judged is what a model is trained to say: the assistant turns of an SFT conversation and of a preference
pair's chosen side. A pair's rejected side is not gated (a poor rejected response is what the pair teaches
against), nor is an RL prompt bank's gold answer (short by nature). Each rule is a score and a threshold:

- `response_chars`: the shortest and the longest response, in characters, against min/max_response_chars;
- `dup_line_frac`: the share of a response's non-blank lines that repeat an earlier line of it (Gopher's rule);
- `top_ngram_frac`: the share of a response's words covered by its most frequent word n-gram, when that n-gram
  occurs more than once (Gopher's rule counts characters; words are what the shared shingler gives). Both
  repetition scores are 0 for a response under `repetition_min_words` words: on 2,000 real Alpaca answers, a
  top 3-gram share above 0.2 flagged 1.75% of all answers, mostly short ones that name a phrase twice, and 0.3%
  of those of 50 words or more;
- `non_printing_frac`: the share of a response's characters that are control characters (tab, line feed and
  carriage return excepted) or U+FFFD, the mark of bytes that did not decode (format characters such as the
  zero-width joiner of emoji sequences are text);
- `unclosed_fence`: a response with an odd number of ``` fences was cut inside a code block.

A record's scores are the worst over its responses; they are kept in the `heuristics` column of silver. A record
failing a rule is dropped as `low_quality:<rule>`, the first failing rule in the order above, with its score and
threshold in the detail. Everything runs over all of a batch's responses at once (Arrow and NumPy).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.schema import Reason
from tunelake.silver.ngrams import MAX_N, word_ngram_hashes, words
from tunelake.silver.turns import Responses
from tunelake.stage import Outcome, RowLocalStage, StageConfig

SCORES = pa.struct(
    [
        ("shortest_response_chars", pa.int64()),
        ("longest_response_chars", pa.int64()),
        ("dup_line_frac", pa.float64()),
        ("top_ngram_frac", pa.float64()),
        ("non_printing_frac", pa.float64()),
        ("unclosed_fence", pa.bool_()),
    ]
)


class HeuristicsConfig(StageConfig):
    """Drops records whose responses fail a quality rule (`low_quality:<rule>`), each with its score; see the
    README's "Quality gates"."""

    min_response_chars: int = Field(1, ge=0, description="A response shorter than this (in characters) fails.")
    max_response_chars: int = Field(20_000, gt=0, description="A response longer than this (in characters) fails.")
    max_dup_line_frac: float = Field(
        0.3, ge=0, le=1, description="The most of a response's non-blank lines that may repeat an earlier line."
    )
    max_top_ngram_frac: float = Field(
        0.2, ge=0, le=1, description="The most of a response's words its most repeated word n-gram may cover."
    )
    top_ngram: int = Field(3, ge=2, le=MAX_N, description="The n of top_ngram_frac's word n-grams.")
    repetition_min_words: int = Field(
        50, ge=0, description="A response of fewer words is not judged for repetition (both scores are 0)."
    )
    max_non_printing_frac: float = Field(
        0.01, ge=0, le=1, description="The most of a response's characters that may be control characters or U+FFFD."
    )
    unclosed_fence: bool = Field(True, description="Drop a response cut inside a ``` code block.")


class Heuristics(RowLocalStage):
    name = "heuristics"
    version = "2"  # 2: a turn that only calls a tool is not judged (was too_short)
    Config = HeuristicsConfig
    reads = ("regime", "messages", "chosen")
    adds = (pa.field("heuristics", SCORES),)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        responses = Responses.of(batch)
        scores = _scores(responses.texts, responses.record, batch.num_rows, self.config)
        reason, detail = _verdicts(scores, self.config)
        judged = scores["shortest_response_chars"].is_valid()
        column = pa.StructArray.from_arrays(list(scores.values()), fields=list(SCORES), mask=pc.invert(judged))
        return Outcome(batch.append_column(self.adds[0], column), drop=reason, detail=detail)


def _scores(texts: pa.Array, record: np.ndarray, rows: int, config: HeuristicsConfig) -> dict[str, pa.Array]:
    """Each rule's score per record, the worst over its responses (null for a record with none)."""
    chars = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
    split = words(texts)
    long_enough = pc.list_value_length(split).to_numpy(zero_copy_only=False) >= config.repetition_min_words
    per_response = {
        "dup_line_frac": np.where(long_enough, _dup_line_frac(texts), 0.0),
        "top_ngram_frac": np.where(long_enough, _top_ngram_frac(split, config.top_ngram), 0.0),
        "non_printing_frac": _non_printing(texts) / np.maximum(chars, 1),
    }
    fences = pc.count_substring(texts, "```").to_numpy(zero_copy_only=False)
    judged = np.bincount(record, minlength=rows) > 0
    scores = {
        "shortest_response_chars": _worst(np.minimum, chars, record, rows, np.iinfo(np.int64).max),
        "longest_response_chars": _worst(np.maximum, chars, record, rows, -1),
        **{name: _worst(np.maximum, values, record, rows, -1.0) for name, values in per_response.items()},
        "unclosed_fence": _worst(np.maximum, fences % 2, record, rows, 0).astype(bool),
    }
    return {name: pa.array(values, SCORES.field(name).type, mask=~judged) for name, values in scores.items()}


def _worst(reduce: np.ufunc, values: np.ndarray, record: np.ndarray, rows: int, empty) -> np.ndarray:
    out = np.full(rows, empty, dtype=np.result_type(values, type(empty)))
    reduce.at(out, record, values)
    return out


def _dup_line_frac(texts: pa.Array) -> np.ndarray:
    """Per text, the share of its non-blank lines that repeat an earlier line of the same text."""
    split = pc.split_pattern(texts, "\n")
    lines = pc.utf8_trim_whitespace(pc.list_flatten(split))
    filled = pc.not_equal(lines, "").to_numpy(zero_copy_only=False)
    text = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(np.int64)[filled]
    line = pc.dictionary_encode(lines.filter(pa.array(filled))).indices.to_numpy(zero_copy_only=False)
    width = int(line.max(initial=0)) + 1  # (text, line) as one key: its distinct values count distinct lines
    total = np.bincount(text, minlength=len(texts))
    distinct = np.bincount(np.unique(text * width + line) // width, minlength=len(texts))
    return (total - distinct) / np.maximum(total, 1)


def _top_ngram_frac(split: pa.ListArray, n: int) -> np.ndarray:
    """Per list of words, the share of them covered by its most frequent word n-gram (0 where none repeats;
    overlapping occurrences count each of their words once per occurrence, up to all of the words)."""
    word_counts = pc.list_value_length(split).to_numpy(zero_copy_only=False).astype(np.int64)
    grams = word_ngram_hashes(split, n)
    if not len(grams.hashes):
        return np.zeros(len(split))
    text = np.repeat(np.arange(len(split)), grams.counts)
    order = np.lexsort((grams.hashes, text))
    text, hashes = text[order], grams.hashes[order]
    # Runs of one gram within one text, and the longest run of each text.
    starts = np.flatnonzero(np.concatenate(([True], (text[1:] != text[:-1]) | (hashes[1:] != hashes[:-1]))))
    runs = np.diff(np.append(starts, len(text)))
    top = np.zeros(len(split), np.int64)
    np.maximum.at(top, text[starts], runs)
    covered = np.where(top > 1, np.minimum(top * n, word_counts), 0)
    return covered / np.maximum(word_counts, 1)


def _non_printing(texts: pa.Array) -> np.ndarray:
    """Per text, its control characters (tab, line feed and carriage return excepted) and U+FFFD."""
    found = pc.count_substring_regex(texts, "[\\p{Cc}\ufffd]").to_numpy(zero_copy_only=False)
    allowed = pc.count_substring_regex(texts, r"[\t\n\r]").to_numpy(zero_copy_only=False)
    return (found - allowed).astype(np.float64)


def _verdicts(scores: dict[str, pa.Array], config: HeuristicsConfig) -> tuple[pa.Array, pa.Array]:
    """The first failing rule of each record (`low_quality:<rule>`, null where all pass) and its score."""
    # Records with no response to judge (null scores) pass every rule.
    value = {
        name: column.fill_null(False if name == "unclosed_fence" else 0).to_numpy(zero_copy_only=False)
        for name, column in scores.items()
    }
    judged = scores["shortest_response_chars"].is_valid().to_numpy(zero_copy_only=False)
    c = config
    rules = (  # rule, its score, where it fails, the bound
        ("too_short", "shortest_response_chars", lambda v: v < c.min_response_chars, f"< {c.min_response_chars}"),
        ("too_long", "longest_response_chars", lambda v: v > c.max_response_chars, f"> {c.max_response_chars}"),
        ("non_printing", "non_printing_frac", lambda v: v > c.max_non_printing_frac, f"> {c.max_non_printing_frac:g}"),
        ("repetitive_lines", "dup_line_frac", lambda v: v > c.max_dup_line_frac, f"> {c.max_dup_line_frac:g}"),
        ("repetitive_ngrams", "top_ngram_frac", lambda v: v > c.max_top_ngram_frac, f"> {c.max_top_ngram_frac:g}"),
        ("unclosed_fence", "unclosed_fence", lambda v: v & c.unclosed_fence, "(a ``` fence left open)"),
    )
    reason, detail = np.full(len(judged), None, object), np.full(len(judged), None, object)
    for rule, score, fails, bound in reversed(rules):  # the first failing rule is written last, so it wins
        where = np.asarray(fails(value[score]), bool) & judged
        if where.any():
            shown = np.char.mod("%.4g", value[score][where].astype(np.float64))
            reason[where] = f"{Reason.low_quality.value}:{rule}"
            detail[where] = np.char.add(f"{score} ", np.char.add(shown, f" {bound}"))
    return pa.array(reason, pa.string()), pa.array(detail, pa.string())
