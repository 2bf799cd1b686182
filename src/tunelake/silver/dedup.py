"""Exact dedup across the whole corpus, regime-aware: a global step on the candidate records.

The key is the whole record for SFT (the conversation) and preference (the prompt, chosen, rejected triple,
so a pair is kept or dropped whole), and the prompt for RL (one gold answer per prompt). The first
occurrence in input order (recipe source order, then file, then row) is kept.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

DUPLICATES = pa.schema([("_ord", pa.int64()), ("id", pa.string()), ("kept_ord", pa.int64()), ("kept_id", pa.string())])
# An RL record's id includes its answer; its key is the whole prompt (not only the prompt group of splits).
DEDUP_KEY = "case when regime = 'rl' then md5(cast(prompt as varchar)) else id end"


def exact_duplicates(candidate_files: list[str], memory_limit: str = "256MB") -> pa.Table:
    """One row per dropped candidate: its `_ord` and `id`, and the `kept_ord` and `kept_id` it duplicates."""
    if not candidate_files:
        return DUPLICATES.empty_table()
    con = duckdb.connect(config={"memory_limit": memory_limit})
    query = f"""
        select _ord, id, first_value(_ord) over w as kept_ord, first_value(id) over w as kept_id
        from (select _ord, id, {DEDUP_KEY} as key from read_parquet($files))
        window w as (partition by key order by _ord)
        qualify row_number() over w > 1
        order by _ord
    """
    return con.sql(query, params={"files": candidate_files}).to_arrow_table()
