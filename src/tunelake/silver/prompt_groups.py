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
    Config = PromptGroupsConfig
    reads = ("regime", "prompt_id", "messages", "prompt", "score_chosen")
    adds = (GROUP_ID, PINNED_SPLIT)
    reads_tables = (tables.FROZEN_NAME,)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        texts = prompt_texts(batch)
        return {
            "prompt_id": batch["prompt_id"],
            "prompt_text": texts,
            "preference": pc.equal(batch["regime"], Regime.preference.value),
            "score": batch["score_chosen"],
            **lsh.text_band_columns(texts, self.config),
        }

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        con = rows.connect(memory_limit)
        frozen = rows.read_table(tables.FROZEN_NAME, FROZEN)
        _prompts(con, frozen, self.config)
        groups = _groups(con, self.config)
        pins = _pins(con, frozen, groups)
        decisions = DECISIONS.empty_table()
        if self.config.max_pairs_per_prompt is not None:
            capped = _capped(con, groups, self.config.max_pairs_per_prompt)
            detail = pc.binary_join_element_wise(capped["detail"], rows.addresses.name(capped["kept_ord"]), "")
            decisions = drops(capped["_ord"], capped["id"], capped["reason"], detail)
        con.register("groups", groups)
        con.register("pins", pins)
        notes = con.sql(
            f"""
            select s._ord, g.group_id as {GROUP_ID.name}, p.split as {PINNED_SPLIT.name}
            from staged s left join groups g using (_ord)
            left join pins p on p.grp = coalesce(g.group_id, s.prompt_id)
            order by s._ord
            """
        ).to_arrow_table()
        return Decisions(decisions, notes.cast(pa.schema([pa.field("_ord", pa.int64()), GROUP_ID, PINNED_SPLIT])))


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


def _prompts(con: duckdb.DuckDBPyConnection, frozen: pa.Table, config: PromptGroupsConfig) -> None:
    """The view `prompts`: every record's prompt (its `_ord`, prompt_id, text and band keys), and each frozen
    prompt's, numbered below zero."""
    outside = frozen.group_by("prompt_id", use_threads=False).aggregate([("prompt_text", "first")])
    outside = outside.rename_columns(["prompt_id", "prompt_text"])
    outside = outside.add_column(0, "_ord", pa.array(-1 - np.arange(outside.num_rows), pa.int64()))
    for name, keys in lsh.text_band_columns(outside["prompt_text"], config).items():
        outside = outside.append_column(name, keys)
    con.register("frozen_prompts", outside)
    columns = ", ".join(["_ord", "prompt_id", "prompt_text", *lsh.band_names(config)])
    con.execute(
        f"create temp view prompts as select {columns} from staged union all select {columns} from frozen_prompts"
    )


def _groups(con: duckdb.DuckDBPyConnection, config: PromptGroupsConfig) -> pa.Table:
    """(`_ord`, group_id) for every record (and frozen prompt) whose prompt has near-identical others: the group is
    the smallest prompt_id among them, so it does not depend on which records carry them."""
    nodes = con.sql("select _ord from prompts order by prompt_id, _ord").fetchnumpy()["_ord"]
    label = lsh.linked(con, "prompts", nodes, ("prompt_text",), config)  # the smallest node: the smallest prompt
    grouped = np.flatnonzero(np.bincount(label, minlength=len(nodes))[label] > 1)
    con.register("members", pa.table({"_ord": nodes[grouped], "head": nodes[label[grouped]]}))
    groups = con.sql(
        "select m._ord, h.prompt_id as group_id from members m join prompts h on h._ord = m.head order by m._ord"
    ).to_arrow_table()
    con.unregister("members")
    return groups.cast(pa.schema([pa.field("_ord", pa.int64()), pa.field("group_id", pa.string())]))


def _pins(con: duckdb.DuckDBPyConnection, frozen: pa.Table, groups: pa.Table) -> pa.Table:
    """(grp, split): the split each group (or lone prompt) holding a frozen prompt is pinned to. Raises
    BuildRefused where frozen sets pin one group to two splits."""
    con.register("frozen", frozen)
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
