"""Which canonical columns each regime's gold table keeps (the others are null for that regime)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from tunelake.schema import RECORD, Regime

COMMON = (
    "id",
    "source",
    "origin",
    "license",
    "prompt_id",
    "lang",
    "domain",
    "difficulty",
    "token_count",
    "created_at",
    "meta",
)
REGIME_COLUMNS = {
    Regime.sft: ("messages", "tools"),
    Regime.preference: ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"),
    Regime.rl: ("prompt", "answer", "verifier", "verifier_config"),
    Regime.kto: ("prompt", "chosen", "rejected"),  # one side set: the completion, and by its side its label
}


def gold_schema(regime: Regime, chain: Sequence = ()) -> pa.Schema:
    """A regime's gold columns: the canonical ones it uses, then those the chain's stages add and carry into its
    gold (Stage.gold_columns)."""
    names = COMMON[:5] + REGIME_COLUMNS[regime] + COMMON[5:]
    carried = [f for stage in chain for f in stage.adds if f.name in stage.gold_columns.get(regime.value, ())]
    return pa.schema([RECORD.field(n) for n in names] + carried)
