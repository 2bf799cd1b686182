"""Packing: tokenized examples bin-packed (best-fit decreasing) into rows of at most `max_length` tokens.

A packed row concatenates whole examples; nothing is truncated or split. Each row carries
`position_ids` that restart at 0 for every example and `seq_lengths` (the example lengths in order),
which is what a varlen / block-diagonal attention needs so that no token attends across examples.
The first label of every example is set to -100 so that the last token of one example is never
trained to predict the first token of the next. That costs nothing: in an unpacked row the first
label is never a target either (a causal LM predicts token t+1 from tokens <= t).

Rows are variable length and carry no padding: padding a batch to a common length (and the
position_ids / labels of that padding) is the collator's job, because only the collator knows the
batch. Everything here is a pure, deterministic function of its inputs.

With transformers (sdpa / eager), position_ids that restart give a block-diagonal causal mask only when
no 2-D attention_mask is passed and use_cache=False; with the default use_cache=True the detection is
skipped and attention silently crosses examples (measured in tests/gold/test_train_step.py).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake.gold.tokenize.masks import IGNORE

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PackStats:
    """How well a packing used its rows: bins used against the lower bound ceil(tokens / max_length)."""

    max_length: int
    examples: int
    tokens: int
    bins: int
    lower_bound: int = field(init=False)
    """ceil(tokens / max_length): no packing of these examples can use fewer rows."""
    efficiency: float = field(init=False)
    """Non-pad tokens / capacity = tokens / (bins * max_length); 1.0 when there is nothing to pack."""
    overhead: float = field(init=False)
    """bins / lower_bound - 1: the fraction of rows used beyond the lower bound."""

    def __post_init__(self) -> None:
        lower_bound = -(-self.tokens // self.max_length)
        object.__setattr__(self, "lower_bound", lower_bound)
        object.__setattr__(self, "efficiency", self.tokens / (self.bins * self.max_length) if self.bins else 1.0)
        object.__setattr__(self, "overhead", self.bins / lower_bound - 1 if lower_bound else 0.0)


def best_fit_decreasing(lengths: np.ndarray, max_length: int) -> list[list[int]]:
    """Bins of example indices: each example, longest first, goes into the open bin it fills most tightly.

    Ties are broken deterministically: equal lengths are placed in index order, and among equally tight
    bins the one opened first wins. Within a bin, indices are in placement order (non-increasing length).
    Runs in O(n log n): the sort, then one bisect per example over the distinct remaining capacities
    (at most `max_length` of them), each holding a heap of bin ids.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D array of integers, got shape {lengths.shape} dtype {lengths.dtype}")
    lengths = lengths.astype(np.int64, copy=False)
    overlong = np.flatnonzero(lengths > max_length)
    if overlong.size:
        i = int(overlong[0])
        raise ValueError(
            f"example {i} has {int(lengths[i])} tokens, more than max_length={max_length} "
            f"({overlong.size} example(s) too long); truncate or drop them before packing"
        )
    empty = np.flatnonzero(lengths < 1)
    if empty.size:
        i = int(empty[0])
        raise ValueError(f"example {i} has {int(lengths[i])} tokens; drop empty examples before packing")

    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    # open_caps: sorted distinct remaining capacities that at least one open bin has;
    # bins_with_cap[c]: heap of the ids of the bins with exactly c tokens left. Full bins leave both.
    open_caps: list[int] = []
    bins_with_cap: list[list[int] | None] = [None] * (max_length + 1)
    for i, n in zip(order.tolist(), lengths[order].tolist(), strict=True):
        k = bisect_left(open_caps, n)
        if k == len(open_caps):
            b = len(bins)
            bins.append([i])
            left = max_length - n
        else:
            cap = open_caps[k]
            heap = bins_with_cap[cap]
            b = heapq.heappop(heap)
            if not heap:
                del open_caps[k]
                bins_with_cap[cap] = None
            bins[b].append(i)
            left = cap - n
        if left:
            heap = bins_with_cap[left]
            if heap is None:
                bins_with_cap[left] = [b]
                insort(open_caps, left)
            else:
                heapq.heappush(heap, b)
    return bins


def pack(table: pa.Table, max_length: int) -> tuple[pa.Table, PackStats]:
    """Packed rows (one per bin) and their stats, from tokenized examples `id`, `input_ids`, `labels`.

    Output columns: `input_ids`, `labels`, `position_ids`, `seq_lengths` (list<int32>) and `ids`
    (list<string>, the packed examples' ids in row order). Rows are NOT padded: each is at most
    `max_length` tokens and padding is left to the collator. An input `attention_mask` is ignored
    (unpadded examples attend to all their tokens; packed rows get their boundaries from
    `position_ids` / `seq_lengths`). Raises ValueError naming the row for an example that is longer
    than `max_length`, empty, null, or whose labels do not match its input_ids in length.
    """
    missing = [c for c in ("id", "input_ids", "labels") if c not in table.column_names]
    if missing:
        raise ValueError(f"pack needs columns id, input_ids, labels; missing {missing} (has {table.column_names})")
    ids = table.column("id").combine_chunks().cast(pa.string())
    input_ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels").combine_chunks()
    for name, column in (("id", ids), ("input_ids", input_ids), ("labels", labels)):
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"row {row} (and {column.null_count - 1} more) has a null {name}")

    lengths = pc.list_value_length(input_ids).to_numpy().astype(np.int64)
    label_lengths = pc.list_value_length(labels).to_numpy().astype(np.int64)
    mismatched = np.flatnonzero(lengths != label_lengths)
    if mismatched.size:
        row = int(mismatched[0])
        raise ValueError(
            f"row {row} (id {ids[row].as_py()}) has {lengths[row]} input_ids but {label_lengths[row]} labels"
        )
    tokens = int(lengths.sum())
    if tokens > _INT32_MAX:
        raise ValueError(f"{tokens} tokens is more than one Arrow list array can offset; pack in smaller shards")

    bins = best_fit_decreasing(lengths, max_length)
    stats = PackStats(max_length=max_length, examples=len(lengths), tokens=tokens, bins=len(bins))

    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(lengths))
    examples_per_bin = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    packed_lengths = lengths[order]
    example_offsets = np.concatenate([[0], np.cumsum(packed_lengths)])  # into the flat token stream
    bin_first_example = np.concatenate([[0], np.cumsum(examples_per_bin)])
    row_offsets = pa.array(example_offsets[bin_first_example], pa.int32())
    example_starts = example_offsets[:-1]

    flat_input_ids = input_ids.take(order).flatten().cast(pa.int32())
    flat_labels = labels.take(order).flatten().cast(pa.int32()).to_numpy(zero_copy_only=False).copy()
    flat_labels[example_starts] = IGNORE
    # Positions count up by 1 and drop back to 0 at each example start: one cumsum over the step sizes.
    position_ids = np.ones(tokens, dtype=np.int32)
    if tokens:
        position_ids[0] = 0
        position_ids[example_starts[1:]] = 1 - packed_lengths[:-1]
        np.cumsum(position_ids, out=position_ids)

    bin_offsets = pa.array(bin_first_example, pa.int32())
    packed = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(row_offsets, flat_input_ids),
            "labels": pa.ListArray.from_arrays(row_offsets, pa.array(flat_labels, pa.int32())),
            "position_ids": pa.ListArray.from_arrays(row_offsets, pa.array(position_ids)),
            "seq_lengths": pa.ListArray.from_arrays(bin_offsets, pa.array(packed_lengths.astype(np.int32))),
            "ids": pa.ListArray.from_arrays(bin_offsets, ids.take(order)),
        }
    )
    return packed, stats


WINDOW_EXAMPLES = 65_536  # examples packed together: a window wastes at most one bin, and bounds memory
WINDOW_TOKENS = 1 << 28  # ...and so many tokens (a pack holds at most 2**31 - 1)


def part_size(path: str) -> tuple[int, int]:
    """(examples, tokens) of a tokenized Parquet part, from its metadata alone."""
    meta = pq.ParquetFile(path).metadata
    column = next(c for c in range(meta.num_columns) if meta.schema.column(c).path.startswith("input_ids"))
    return meta.num_rows, sum(meta.row_group(g).column(column).num_values for g in range(meta.num_row_groups))


def pack_windows(sizes: list[tuple[int, int]]) -> list[list[int]]:
    """Consecutive parts grouped into as few windows as the limits allow, of about equal size (so the windows
    pack side by side in the same time): index lists into `sizes`, given (examples, tokens) per part."""
    examples, tokens = sum(e for e, _ in sizes), sum(t for _, t in sizes)
    count = max(1, -(-examples // WINDOW_EXAMPLES), -(-tokens // WINDOW_TOKENS))
    target_examples, target_tokens = -(-examples // count), -(-tokens // count)
    windows, window, e_sum, t_sum = [], [], 0, 0
    for i, (e, t) in enumerate(sizes):
        full = e_sum >= target_examples or t_sum >= target_tokens
        if window and (full or e_sum + e > WINDOW_EXAMPLES or t_sum + t > WINDOW_TOKENS):
            windows.append(window)
            window, e_sum, t_sum = [], 0, 0
        window.append(i)
        e_sum, t_sum = e_sum + e, t_sum + t
    return windows + ([window] if window else [])
