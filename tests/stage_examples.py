"""Stages the tests name in recipes (`use: tests.stage_examples.X`): each shows one thing a stage may do."""

from __future__ import annotations

from collections import Counter

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.stage import (
    DECISIONS,
    GROUP_ID,
    Decisions,
    GlobalStage,
    Outcome,
    RowLocalStage,
    StageConfig,
    StagedRows,
    Tally,
)


class CountChars(RowLocalStage):
    """Adds a column (kept in silver); rewrites `domain` of RL records, logged as modified."""

    name = "count_chars"
    adds = (pa.field("answer_chars", pa.int64()),)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        rl = pc.equal(batch["regime"], "rl")
        chars = pc.utf8_length(batch["answer"]).cast(pa.int64())
        rows = batch.append_column(self.adds[0], chars)
        index = rows.schema.get_field_index("domain")
        rows = rows.set_column(index, "domain", pc.if_else(rl, pa.scalar("math", pa.string()), rows["domain"]))
        return Outcome(
            rows, modified=pc.if_else(rl, pa.scalar("domain=math", pa.string()), pa.scalar(None, pa.string()))
        )


class QuarantineShortAnswersConfig(StageConfig):
    min_chars: int = Field(description="RL answers shorter than this are quarantined.")


class QuarantineShortAnswers(RowLocalStage):
    name = "quarantine_short_answers"
    Config = QuarantineShortAnswersConfig
    reads = ("answer",)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        short = pc.fill_null(pc.less(pc.utf8_length(batch["answer"]), self.config.min_chars), False)
        reason = pc.if_else(short, pa.scalar("short_answer", pa.string()), pa.scalar(None, pa.string()))
        answered = pc.value_counts(batch.filter(pc.is_valid(batch["answer"]))["source"]).to_pylist()
        tally = Counter({("answers", item["values"]): item["counts"] for item in answered})
        return Outcome(
            batch, quarantine=reason, field=pc.if_else(short, "answer", pa.scalar(None, pa.string())), tally=tally
        )

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        """Per source, the rows quarantined (from the stage's own ledger rows) of the answers seen (its tally)."""
        quarantined = pc.value_counts(ledger.filter(pc.equal(ledger["action"], "quarantine"))["source"]).to_pylist()
        counts = {item["values"]: item["counts"] for item in quarantined}
        return {source: {"quarantined": counts.get(source, 0), "answers": n} for (_, source), n in tally.items()}


class OneGroupPerSource(GlobalStage):
    """Annotates every record with its source's group, so each source lands whole in one split; drops the
    second record of each source and quarantines the third."""

    name = "one_group_per_source"
    reads = ("source",)
    adds = (GROUP_ID,)

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        con = duckdb.connect(config={"memory_limit": memory_limit})
        staged = rows.relation(con)
        notes = staged.query("r", "select _ord, md5(source) as group_id from r").to_arrow_table()
        decided = staged.query(
            "r",
            """
            select _ord, id, if(n = 2, 'drop', 'quarantine') as action,
                if(n = 2, 'second_of_source', 'third_of_source') as reason, 'number ' || n as detail
            from (select *, row_number() over (partition by source order by _ord) as n from r)
            where n in (2, 3) order by _ord
            """,
        ).to_arrow_table()
        return Decisions(decided.cast(DECISIONS), notes)


class GroupsByCount(GlobalStage):
    """Annotates every record with the number of candidates as its group: each record's annotation changes when
    a record is added, and nothing else about it does."""

    name = "groups_by_count"
    adds = (GROUP_ID,)

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        con = duckdb.connect(config={"memory_limit": memory_limit})
        notes = rows.relation(con).query("r", "select _ord, md5(count(*) over ()::varchar) as group_id from r")
        return Decisions(DECISIONS.empty_table(), notes.to_arrow_table())


class LosesARow(RowLocalStage):
    """A broken stage: returns one row fewer than it was given."""

    name = "loses_a_row"

    def process(self, batch: pa.RecordBatch) -> Outcome:
        return Outcome(batch.slice(1))


class NeedsAMissingPackage(RowLocalStage):
    name = "needs_a_missing_package"
    requires = {"tunelake_no_such_package": "pip install tunelake-no-such-package"}

    def process(self, batch: pa.RecordBatch) -> Outcome:
        return Outcome(batch)


class ForgetsToProcess(RowLocalStage):
    """A stage that never says what it does to a batch."""

    name = "forgets_to_process"
