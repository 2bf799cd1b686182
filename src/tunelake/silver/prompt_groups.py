"""Prompt groups: near-identical prompts share a split, and frozen eval prompts keep theirs; a global stage.

A record's prompt, as the splits see it, is its leading system turn and first user turn (what its `prompt_id`
hashes), in every regime. Prompts whose shingle sets have a Jaccard of at least the threshold are joined, and
each connected group of them takes the smallest `prompt_id` among them as its `group_id`: the splits follow it,
so two near-identical prompts never land in two splits (across regimes too).

Frozen eval sets (`tunelake freeze`, the lake's `frozen` table) join the same graph: a group holding a frozen
prompt is pinned to that prompt's frozen split (`pinned_split`), so a frozen prompt never moves and its
near-duplicates never reach train. Two frozen sets that pin near-identical prompts to two splits refuse the
build, naming both.

Optionally, a preference prompt group keeps at most `max_pairs_per_prompt` pairs (the preferred ones: highest
score, earliest source, smallest id); the rest are dropped as `prompt_cap:<group>`.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake import tables
from tunelake.address import SOURCE_SHIFT
from tunelake.schema import FROZEN, Reason, Regime
from tunelake.silver import lsh
from tunelake.silver.lsh import MinHashConfig
from tunelake.silver.turns import Turns
from tunelake.stage import DECISIONS, GROUP_ID, PINNED_SPLIT, BuildRefused, Decisions, GlobalStage, StagedRows, drops


class PromptGroupsConfig(MinHashConfig):
    """Near-identical prompts (MinHash LSH, verified by exact Jaccard) share a split; frozen eval sets pin theirs."""

    max_pairs_per_prompt: int | None = Field(
        None,
        ge=1,
        description="Preference: keep at most this many pairs per group of near-identical prompts "
        "(the highest score, then the earliest source, then the smallest id); the rest are dropped as prompt_cap.",
    )


class PromptGroups(GlobalStage):
    name = "prompt_groups"
    version = "2"  # 2: stages each prompt's shingle set instead of its text (ingest caches of 1 lack it)
    Config = PromptGroupsConfig
    reads = ("regime", "prompt_id", "messages", "prompt", "score_chosen")
    adds = (GROUP_ID, PINNED_SPLIT)
    reads_tables = (tables.FROZEN_NAME,)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        return {
            "prompt_id": batch["prompt_id"],
            "preference": pc.equal(batch["regime"], Regime.preference.value),
            "score": batch["score_chosen"],
            **lsh.shingle_columns(prompt_texts(batch), self.config),
        }

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        frozen = rows.read_table(tables.FROZEN_NAME, FROZEN)
        outside = _frozen_prompts(frozen, self.config)
        # A connection per phase: DuckDB keeps what a query took with its connection until it closes, so the
        # step's memory is its largest phase's, not the sum of all.
        with _prompts(rows, memory_limit, outside, self.config) as con:
            nodes = con.sql("select _ord from prompts order by prompt_id, _ord").fetchnumpy()["_ord"]
        with _prompts(rows, memory_limit, outside, self.config) as con:
            label = lsh.linked(con, "prompts", nodes, self.config, rows.scratch)  # smallest node: smallest prompt
        with _prompts(rows, memory_limit, outside, self.config) as con:
            groups, prompt_ids, named_by = _groups(con, nodes, label)
            con.register("frozen", frozen)
            pins = _pins(con, groups)
            decisions = DECISIONS.empty_table()
            if self.config.max_pairs_per_prompt is not None:
                capped = _capped(con, groups, self.config.max_pairs_per_prompt)
                detail = pc.binary_join_element_wise(capped["detail"], rows.addresses.name(capped["kept_ord"]), "")
                decisions = drops(capped["_ord"], capped["id"], capped["reason"], detail)
        pin = pc.index_in(prompt_ids, pins["grp"]).fill_null(-1).to_numpy()[named_by]  # into pins; -1: none
        notes = groups.append_column(PINNED_SPLIT, pins["split"].take(pa.array(pin, mask=pin < 0)))
        records = int(np.searchsorted(notes["_ord"].to_numpy(), 0))  # frozen prompts come first, below zero
        return Decisions(decisions, notes.slice(records))


def prompt_texts(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Each record's prompt as the splits see it (as its prompt_id does): a leading system turn and the first
    user turn, from `messages` for SFT, `prompt` otherwise."""
    sft = pc.equal(batch["regime"], Regime.sft.value)
    return pc.if_else(sft, _opening(batch["messages"]), _opening(batch["prompt"]))


def gold_prompt_texts(rows: pa.Table, regime: Regime) -> pa.Array:
    """prompt_texts of rows of one regime's gold table (which has `messages` for SFT, else `prompt`)."""
    return _opening(rows[prompt_column(regime)])


def prompt_column(regime: Regime) -> str:
    return "messages" if regime is Regime.sft else "prompt"


def _opening(column: pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    turns = Turns.of(column)
    chosen = np.zeros(len(turns.record), bool)
    for first in turns.opening():
        chosen[first[first >= 0]] = True
    return turns.text(chosen)


def _frozen_prompts(frozen: pa.Table, config: PromptGroupsConfig) -> pa.Table:
    """Each frozen prompt's `_ord` (below zero), prompt_id, shingle set and band keys."""
    outside = frozen.group_by("prompt_id", use_threads=False).aggregate([("prompt_text", "first")])
    return pa.table(
        {
            "_ord": pa.array(-1 - np.arange(outside.num_rows), pa.int64()),
            "prompt_id": outside["prompt_id"],
            **lsh.shingle_columns(outside["prompt_text_first"], config),
        }
    )


def _prompts(
    rows: StagedRows, memory_limit: str, outside: pa.Table, config: PromptGroupsConfig
) -> duckdb.DuckDBPyConnection:
    """A connection with the view `prompts`: every record's prompt (its `_ord`, prompt_id, shingle set and band
    keys), and each frozen prompt's (`outside`, registered as `frozen_prompts`)."""
    con = rows.connect(memory_limit)
    con.register("frozen_prompts", outside)
    columns = ", ".join(["_ord", "prompt_id", lsh.SHINGLES, *lsh.band_names(config)])
    con.execute(
        f"create temp view prompts as select {columns} from staged union all select {columns} from frozen_prompts"
    )
    return con


def _groups(
    con: duckdb.DuckDBPyConnection, nodes: np.ndarray, label: np.ndarray
) -> tuple[pa.Table, pa.ChunkedArray, np.ndarray]:
    """Every prompt's (`_ord`, group_id), by `_ord` (frozen prompts first, below zero): the smallest prompt_id
    among the prompts near-identical to it (its component's label), so it does not depend on which records carry
    them; null where there is none. With every prompt_id as read, and for each prompt the one of them that names
    its group, or its lone prompt (its own)."""
    prompts = con.sql("select _ord, prompt_id from prompts").to_arrow_reader(lsh.ROWS).read_all()
    node = np.argsort(nodes)  # of each prompt by `_ord`
    read = np.empty_like(node)  # where each node's prompt was read
    read[node[np.searchsorted(nodes[node], prompts["_ord"].to_numpy())]] = np.arange(len(node))
    named_by = read[label[node]]
    alone = np.bincount(label, minlength=len(label))[label[node]] == 1
    group_id = prompts["prompt_id"].take(pa.array(named_by, mask=alone))
    groups = pa.table(
        {"_ord": nodes[node], GROUP_ID.name: group_id}, schema=pa.schema([("_ord", pa.int64()), GROUP_ID])
    )
    return groups, prompts["prompt_id"], named_by


def _pins(con: duckdb.DuckDBPyConnection, groups: pa.Table) -> pa.Table:
    """(grp, split): the split each group (or lone prompt) holding a frozen prompt (of the table `frozen`) is
    pinned to. Raises BuildRefused where frozen sets pin one group to two splits."""
    con.register("groups", groups)
    pins = con.sql(
        """
        select coalesce(g.group_id, f.prompt_id) as grp, list_sort(list(distinct f.split)) as splits,
               list(distinct f.name || ' (' || f.split || ', prompt ' || f.prompt_id || ')') as held_by
        from frozen f join frozen_prompts p using (prompt_id) left join groups g on g._ord = p._ord
        group by grp order by grp
        """
    ).to_arrow_table()
    con.unregister("groups")
    conflicts = pins.filter(pc.greater(pc.list_value_length(pins["splits"]), 1))
    if conflicts.num_rows:
        first = conflicts.slice(0, 1).to_pylist()[0]
        raise BuildRefused(
            f"{conflicts.num_rows} group(s) of near-identical prompts hold frozen prompts of two splits, so one "
            f"would move: e.g. group {first['grp']}: {'; '.join(sorted(first['held_by']))}. Frozen sets must not "
            "overlap across splits; freeze them again from one build's gold."
        )
    return pa.table({"grp": pins["grp"], "split": pc.list_element(pins["splits"], 0)})


def _capped(con: duckdb.DuckDBPyConnection, groups: pa.Table, cap: int) -> pa.Table:
    """Preference pairs beyond the first `cap` of their prompt group, by the keep policy: (`_ord`, id, reason,
    detail, kept_ord: the group's first pair)."""
    con.register("groups", groups)
    policy = f"order by s.score desc nulls last, s._ord >> {SOURCE_SHIFT}, s.id, s._ord"  # _ord: ties, one way
    capped = con.sql(
        f"""
        with grouped as (
            select s.*, coalesce(g.group_id, s.prompt_id) as grp
            from staged s left join groups g using (_ord) where s.preference
        ),
        pairs as (
            select _ord, id, grp,
                   row_number() over (partition by grp {policy}) as place,
                   first_value(_ord) over (partition by grp {policy}) as kept_ord
            from grouped s
        )
        select _ord, id, '{Reason.prompt_cap.value}:' || grp as reason,
               'pair ' || place || ' of its prompt group, over the cap of {cap}; the first kept is ' as detail,
               kept_ord
        from pairs where place > {cap} order by _ord
        """
    ).to_arrow_table()
    con.unregister("groups")
    return capped
