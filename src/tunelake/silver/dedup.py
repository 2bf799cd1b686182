"""Exact dedup across the whole corpus, regime-aware: a global stage.

The key is the whole record for SFT (the conversation) and preference (the prompt, chosen, rejected triple,
so a pair is kept or dropped whole), and the prompt for RL (one gold answer per prompt). The first
occurrence in input order (recipe source order, then file, then row) is kept.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import Reason, Regime
from tunelake.silver.identify import content_hashes, encode_messages
from tunelake.stage import Decisions, GlobalStage, StageConfig, StagedRows, drops


class ExactDedupConfig(StageConfig):
    """Exact dedup has nothing to set; `silver.exact_dedup: null` turns it off."""


class ExactDedup(GlobalStage):
    name = "exact_dedup"
    Config = ExactDedupConfig
    reads = ("regime", "id", "prompt")

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Each candidate's key (staged per chunk, so the global step reads one small column): the id, but for RL
        the hash of the whole prompt, as an RL record's id includes its answer."""
        rl = pc.equal(batch["regime"], Regime.rl.value)
        prompts = content_hashes(encode_messages(batch["prompt"].filter(rl)))
        return {"key": pc.replace_with_mask(batch["id"], rl, prompts)}

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        """Drop every candidate whose key an earlier one has, naming the kept record and its input row."""
        con = rows.connect(memory_limit)
        dups = con.sql(
            """
            select _ord, id, first_value(_ord) over w as kept_ord, first_value(id) over w as kept_id
            from staged
            window w as (partition by key order by _ord)
            qualify row_number() over w > 1
            order by _ord
            """
        ).to_arrow_table()
        reason = pc.binary_join_element_wise(f"{Reason.duplicate.value}:", dups["kept_id"], "")
        detail = pc.binary_join_element_wise("kept ", rows.addresses.name(dups["kept_ord"]), "")
        return Decisions(drops(dups["_ord"], dups["id"], reason, detail))
