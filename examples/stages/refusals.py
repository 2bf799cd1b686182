"""An example of a user's own stage (see the README's "Writing a stage"): drop SFT records that refuse."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.stage import Outcome, RowLocalStage, StageConfig


class RefusalConfig(StageConfig):
    phrase: str = Field("I'm sorry, but", description="An assistant turn containing this text is a refusal.")


class DropRefusals(RowLocalStage):
    name = "drop_refusals"
    Config = RefusalConfig
    reads = ("messages",)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        turns = pc.list_flatten(batch["messages"])  # every turn of every SFT record, in record order
        refuses = pc.and_(
            pc.equal(turns.field("role"), "assistant"), pc.match_substring(turns.field("content"), self.config.phrase)
        )
        record = pc.list_parent_indices(batch["messages"]).to_numpy()  # the record each turn belongs to
        found = np.zeros(batch.num_rows, bool)
        found[record[refuses.fill_null(False).to_numpy(zero_copy_only=False)]] = True
        drop = pa.array(np.where(found, "refusal", None), pa.string())  # null: keep the record
        return Outcome(
            batch, drop=drop, detail=pc.if_else(found, f"an assistant turn says {self.config.phrase!r}", None)
        )
