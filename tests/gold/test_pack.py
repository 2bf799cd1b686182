"""Packing keeps every example whole and isolated, fits max_length, and stays within 0.2% of the lower bound."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tunelake.gold.tokenize.masks import IGNORE as IGNORE_INDEX
from tunelake.gold.tokenize.pack import PackStats, best_fit_decreasing, pack

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


def _examples(lengths, seed: int = 0) -> pa.Table:
    """Tokenized examples with random token ids and a masked prompt prefix, as the tokenizer emits them."""
    rng = np.random.default_rng(seed)
    input_ids, labels = [], []
    for n in lengths:
        ids = rng.integers(0, 50_000, n).tolist()
        prompt = int(rng.integers(0, n))
        input_ids.append(ids)
        labels.append([IGNORE_INDEX] * prompt + ids[prompt:])
    return pa.table(
        {
            "id": [f"ex{i}" for i in range(len(input_ids))],
            "input_ids": pa.array(input_ids, pa.list_(pa.int32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "attention_mask": pa.array([[1] * len(x) for x in input_ids], pa.list_(pa.int8())),
        }
    )


def _unpacked(packed: pa.Table):
    """(id, input_ids, labels, position_ids) of every example, cut out of the packed rows by seq_lengths."""
    for row in packed.to_pylist():
        start = 0
        for id_, n in zip(row["ids"], row["seq_lengths"], strict=True):
            end = start + n
            yield id_, row["input_ids"][start:end], row["labels"][start:end], row["position_ids"][start:end]
            start = end


@pytest.fixture(scope="module")
def random_examples() -> pa.Table:
    rng = np.random.default_rng(7)
    return _examples(np.clip(rng.lognormal(4.0, 1.0, 600).astype(int), 1, 512), seed=7)


def test_every_example_appears_exactly_once(random_examples):
    packed, stats = pack(random_examples, 512)
    ids = [i for row in packed.column("ids").to_pylist() for i in row]
    assert sorted(ids) == sorted(random_examples.column("id").to_pylist())
    assert stats.examples == len(ids) == random_examples.num_rows
    assert stats.bins == packed.num_rows


def test_no_row_exceeds_max_length_and_rows_are_not_padded(random_examples):
    packed, stats = pack(random_examples, 512)
    row_lengths = [len(r) for r in packed.column("input_ids").to_pylist()]
    assert max(row_lengths) <= 512
    assert sum(row_lengths) == stats.tokens == sum(len(r) for r in random_examples.column("input_ids").to_pylist())
    for name in ("labels", "position_ids"):
        assert [len(r) for r in packed.column(name).to_pylist()] == row_lengths


def test_position_ids_restart_at_every_example_boundary(random_examples):
    packed, _ = pack(random_examples, 512)
    for _, input_ids, _, position_ids in _unpacked(packed):
        assert position_ids == list(range(len(input_ids)))


def test_seq_lengths_sum_to_row_length(random_examples):
    packed, _ = pack(random_examples, 512)
    for row in packed.to_pylist():
        assert sum(row["seq_lengths"]) == len(row["input_ids"])
        assert len(row["seq_lengths"]) == len(row["ids"])
        assert all(n > 0 for n in row["seq_lengths"])


def test_first_label_of_each_example_is_ignored_and_the_rest_are_kept(random_examples):
    packed, _ = pack(random_examples, 512)
    original = {r["id"]: r for r in random_examples.to_pylist()}
    for id_, input_ids, labels, _ in _unpacked(packed):
        assert input_ids == original[id_]["input_ids"]
        assert labels[0] == IGNORE_INDEX
        assert labels[1:] == original[id_]["labels"][1:]


def test_output_columns_and_types():
    packed, _ = pack(_examples([3, 2]), 8)
    assert packed.schema == pa.schema(
        {
            "input_ids": pa.list_(pa.int32()),
            "labels": pa.list_(pa.int32()),
            "position_ids": pa.list_(pa.int32()),
            "seq_lengths": pa.list_(pa.int32()),
            "ids": pa.list_(pa.string()),
        }
    )


def test_packing_is_deterministic(random_examples):
    first, first_stats = pack(random_examples, 512)
    again, again_stats = pack(random_examples, 512)
    assert first.equals(again)
    assert first_stats == again_stats


def test_equal_lengths_are_placed_in_index_order_and_ties_go_to_the_oldest_bin():
    # The 6s (indices 0, 2, 4) each open a bin with 4 left; the 3 at index 1 goes to bin 0, the one at 3 to bin 1.
    assert best_fit_decreasing(np.array([6, 3, 6, 3, 6]), 10) == [[0, 1], [2, 3], [4]]


def test_each_example_goes_to_the_bin_it_fills_most_tightly():
    # 12 -> bin 0 (8 left); 9 -> bin 1 (11 left); 9 fits only bin 1 (2 left); 2 fits both and bin 1 is tighter.
    # First fit would put the 2 into bin 0.
    assert best_fit_decreasing(np.array([12, 9, 9, 2]), 20) == [[0], [1, 2, 3]]


def test_overlong_example_raises_naming_its_index_and_length():
    with pytest.raises(ValueError, match=r"example 2 has 11 tokens, more than max_length=10"):
        best_fit_decreasing(np.array([3, 10, 11, 4]), 10)
    with pytest.raises(ValueError, match=r"example 1 has 9 tokens, more than max_length=8"):
        pack(_examples([3, 9, 2]), 8)


def test_empty_example_and_mismatched_labels_raise():
    with pytest.raises(ValueError, match=r"example 1 has 0 tokens"):
        best_fit_decreasing(np.array([3, 0]), 10)
    table = _examples([3, 2])
    table = table.set_column(2, "labels", pa.array([[1, 2, 3], [1]], pa.list_(pa.int32())))
    with pytest.raises(ValueError, match=r"row 1 \(id ex1\) has 2 input_ids but 1 labels"):
        pack(table, 8)


def test_stats_on_a_hand_checked_case():
    # 6, 6, 6 into 10s: no two fit together, so 3 rows against a lower bound of ceil(18 / 10) = 2.
    packed, stats = pack(_examples([6, 6, 6]), 10)
    assert stats == PackStats(max_length=10, examples=3, tokens=18, bins=3)
    assert (stats.lower_bound, stats.efficiency, stats.overhead) == (2, 0.6, 0.5)
    # 6, 3, 6, 3, 6 -> [6, 3], [6, 3], [6]: 24 tokens in 3 rows of 10, and ceil(2.4) = 3 so no overhead.
    packed, stats = pack(_examples([6, 3, 6, 3, 6]), 10)
    assert [r["seq_lengths"] for r in packed.to_pylist()] == [[6, 3], [6, 3], [6]]
    assert (stats.tokens, stats.bins, stats.lower_bound, stats.efficiency, stats.overhead) == (24, 3, 3, 0.8, 0.0)


def test_empty_table_packs_to_no_rows():
    packed, stats = pack(_examples([]), 16)
    assert packed.num_rows == 0
    assert (stats.bins, stats.lower_bound, stats.efficiency, stats.overhead) == (0, 0, 1.0, 0.0)


def test_chunked_and_sliced_input_packs_like_a_contiguous_table():
    table = _examples([5, 7, 3, 9, 2, 4], seed=3)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 3), table.slice(5)])
    assert chunked.column("input_ids").num_chunks == 3
    assert pack(chunked, 12)[0].equals(pack(table, 12)[0])


def _chatml(turns) -> str:
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)


@pytest.fixture(scope="module")
def real_conversation_lengths() -> np.ndarray:
    """Qwen2.5 token counts of 4,812 real conversations: alpaca (2,000), fastchat (500), hh-rlhf harmless (2,312)."""
    tokenizers = pytest.importorskip("tokenizers")
    texts = []
    with gzip.open(DATA / "alpaca" / "alpaca_sample_2000.json.gz") as f:
        for r in json.load(f):
            prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
            texts.append(_chatml([("user", prompt), ("assistant", r["output"])]))
    with gzip.open(DATA / "fastchat" / "dummy_conversation.json.gz") as f:
        for r in json.load(f):
            texts.append(
                _chatml([("user" if t["from"] == "human" else "assistant", t["value"]) for t in r["conversations"]])
            )
    with gzip.open(DATA / "hh-rlhf" / "harmless-base_test.jsonl.gz") as f:
        texts.extend(json.loads(line)["chosen"] for line in f)
    tokenizer = tokenizers.Tokenizer.from_file(str(DATA / "tokenizers" / "qwen2.5-instruct" / "tokenizer.json"))
    return np.array([len(e.ids) for e in tokenizer.encode_batch(texts)])


@pytest.mark.parametrize("max_length", [2048, 4096])
def test_real_conversations_pack_within_0_2_percent_of_the_lower_bound(real_conversation_lengths, max_length):
    lengths = real_conversation_lengths
    assert len(lengths) == 4812
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    tokens = pa.ListArray.from_arrays(offsets, pa.array(np.ones(lengths.sum(), np.int32)))
    table = pa.table({"id": [str(i) for i in range(len(lengths))], "input_ids": tokens, "labels": tokens})
    _, stats = pack(table, max_length)
    # Measured: 267 rows at 2048 and 134 at 4096, both exactly the lower bound (efficiency 99.7% / 99.3%).
    assert stats.bins <= stats.lower_bound * 1.002, stats


def test_pack_windows_are_consecutive_balanced_and_within_limits():
    from tunelake.gold.tokenize.pack import WINDOW_EXAMPLES, pack_windows

    sizes = [(2048, 400_000)] * 49  # 100,352 examples: two windows are needed
    windows = pack_windows(sizes)
    assert [i for w in windows for i in w] == list(range(49))
    assert len(windows) == 2 and abs(len(windows[0]) - len(windows[1])) <= 1
    assert all(sum(sizes[i][0] for i in w) <= WINDOW_EXAMPLES for w in windows)
    assert pack_windows([(10, 100)]) == [[0]] and pack_windows([]) == []
