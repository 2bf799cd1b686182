"""Exact dedup across the whole corpus, regime-aware: a global step on the candidate records.

The key is the whole record for SFT (the conversation) and preference (the prompt, chosen, rejected triple,
so a pair is kept or dropped whole), and the prompt for RL (one gold answer per prompt). The first
occurrence in input order (recipe source order, then file, then row) is kept.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import Regime
from tunelake.silver.identify import content_hashes, encode_messages

DUPLICATES = pa.schema([("_ord", pa.int64()), ("id", pa.string()), ("kept_ord", pa.int64()), ("kept_id", pa.string())])
KEYS = pa.schema([("_ord", pa.int64()), ("id", pa.string()), ("key", pa.string())])


def dedup_keys(candidates: pa.RecordBatch) -> pa.Table:
    """Each candidate's ordinal, id and dedup key (staged by the row-local stage, so the global step reads three
    small columns): the id, but for RL the hash of the whole prompt, as an RL record's id includes its answer."""
    rl = pc.equal(candidates["regime"], Regime.rl.value)
    prompts = content_hashes(encode_messages(candidates["prompt"].filter(rl)))
    key = pc.replace_with_mask(candidates["id"], rl, prompts)
    return pa.Table.from_arrays([candidates["_ord"], candidates["id"], key], schema=KEYS)


def exact_duplicates(key_files: list[str], memory_limit: str = "256MB") -> pa.Table:
    """One row per dropped candidate: its `_ord` and `id`, and the `kept_ord` and `kept_id` it duplicates."""
    if not key_files:
        return DUPLICATES.empty_table()
    con = duckdb.connect(config={"memory_limit": memory_limit})
    con.execute("set enable_progress_bar = false")  # the build draws its own
    query = """
        select _ord, id, first_value(_ord) over w as kept_ord, first_value(id) over w as kept_id
        from read_parquet($files)
        window w as (partition by key order by _ord)
        qualify row_number() over w > 1
        order by _ord
    """
    return con.sql(query, params={"files": key_files}).to_arrow_table()
