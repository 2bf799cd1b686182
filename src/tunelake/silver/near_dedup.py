"""Near-duplicate removal and prompt groups (MinHash LSH, verified by exact Jaccard): a global stage.

Two questions, answered over the whole corpus in one step:
1. Which records are near-duplicates of a record kept? What is compared depends on the regime: an SFT record's
   conversation, an RL record's prompt, a preference record's prompt and both responses (a pair is a duplicate
   only when each of the three is, and is kept or dropped whole). Within `scope` (each regime apart, or the
   whole corpus). A dropped record names the kept one (`near_duplicate_of:<id>`) and their Jaccard, which is
   always at least the threshold: a record is dropped only for a verified neighbour that is kept.
2. Which prompts are near-identical, across every regime? Their records share a `group_id`, which the splits
   follow, so two near-identical prompts never land in two splits; a preference prompt group may be capped.

Work per chunk (columns, in the workers): the compared texts, their shingles' MinHash signatures folded into
band keys. Work over everything (run): buckets grouped in DuckDB, candidate pairs, exact Jaccard of the
candidates' shingle sets (only theirs are read back), connected components and the keep policy in NumPy.

Which record of a cluster is kept: the highest `score_chosen` (preference) where there is one, then the
earliest source in the recipe, then the smallest id; whatever the number of workers or chunks.
"""

from __future__ import annotations

from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from tunelake.address import SOURCE_SHIFT, ordinal_parts
from tunelake.schema import Reason, Regime
from tunelake.silver import minhash
from tunelake.silver.ngrams import MAX_N, Grams, mix, ngram_hashes
from tunelake.silver.turns import Turns
from tunelake.stage import DECISIONS, GROUP_ID, Decisions, GlobalStage, StageConfig, StagedRows

CLUSTER_ID = pa.field("cluster_id", pa.string())
# The texts a record is compared on, in order: a preference pair's three parts, else one.
PARTS = ("text", "text_chosen", "text_rejected")
# Each part's shingles are salted apart, so a prompt's words never count as a response's.
_SALT = mix(np.arange(1, len(PARTS) + 1, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))


class NearDedupConfig(StageConfig):
    """MinHash LSH near-duplicate removal; every candidate pair is verified by exact Jaccard."""

    threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Records whose shingle sets have a Jaccard similarity of at least this are "
        "near-duplicates (for a preference pair: its prompt, chosen and rejected each).",
    )
    ngram: int = Field(5, ge=1, le=MAX_N, description="Shingles are word n-grams of this many normalised words.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations per signature.")
    bands: int | None = Field(
        None,
        ge=1,
        description="LSH bands (with `rows`); default: derived from threshold and num_perm so that a "
        "pair at the threshold becomes a candidate with probability >= 0.995.",
    )
    rows: int | None = Field(None, ge=1, description="Signature values per band (with `bands`).")
    scope: Literal["regime", "corpus"] = Field(
        "regime", description="Compare records within their regime, or across the whole corpus."
    )
    max_pairs_per_prompt: int | None = Field(
        None,
        ge=1,
        description="Preference: keep at most this many pairs per group of near-identical prompts "
        "(the preferred ones, as for the kept member of a cluster); the rest are dropped as prompt_cap.",
    )

    @model_validator(mode="after")
    def _banding(self) -> NearDedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} is more than num_perm = {self.num_perm}")
        return self

    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return minhash.band_parameters(self.threshold, self.num_perm)


class NearDedup(GlobalStage):
    name = "near_dedup"
    Config = NearDedupConfig
    reads = ("regime", "prompt_id", "messages", "prompt", "chosen", "rejected", "score_chosen")
    adds = (CLUSTER_ID, GROUP_ID)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The compared texts and the band keys of their signatures, for records and for prompts."""
        texts = compared_texts(batch)
        prompts = opening_text(batch)
        scope = batch["regime"] if self.config.scope == "regime" else pa.nulls(batch.num_rows, pa.string())
        n = self.config.ngram
        grams = [ngram_hashes(texts[p], n) for p in PARTS]
        # A prompt that is its record's whole text (an RL prompt, a preference prompt of one turn) is not shingled
        # twice: its grams are the text's.
        same = pc.fill_null(pc.equal(texts["text"], prompts), False)
        if pc.all(same).as_py() is not False:
            prompt_grams = grams[0]
        else:
            others = ngram_hashes(pc.if_else(same, pa.scalar(None, pa.string()), prompts), n)
            prompt_grams = _rows_from(grams[0], others, same.to_numpy(zero_copy_only=False))
        return {
            "scope": scope,
            "score": batch["score_chosen"],
            "prompt_id": batch["prompt_id"],
            **texts,
            "bands": self._bands(salted_grams(grams)),
            "prompt_text": prompts,
            "prompt_bands": self._bands(prompt_grams),
        }

    def _bands(self, grams: Grams) -> pa.ListArray:
        bands, rows = self.config.banding()
        keys = minhash.band_keys(minhash.signatures(grams, self.config.num_perm), bands, rows)
        # A text with no words has no signature to compare: it is in no bucket.
        keys[grams.counts == 0] = 0
        offsets = np.arange(0, keys.size + 1, bands, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(keys.ravel()))

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        con = duckdb.connect(config={"memory_limit": memory_limit})
        con.execute("set enable_progress_bar = false")  # the build draws its own
        con.register("staged", rows.relation(con))
        threshold = self.config.threshold
        drops, clusters = _near_duplicates(con, threshold, self.config.ngram)
        groups = _prompt_groups(con, threshold, self.config.ngram)
        decisions = [drops]
        if self.config.max_pairs_per_prompt is not None:
            decisions.append(_prompt_cap(con, drops, groups, self.config.max_pairs_per_prompt))
        decided = pa.concat_tables(decisions).sort_by("_ord")
        reasons = decided["reason"]
        detail = pc.binary_join_element_wise(decided["detail"], rows.addresses.name(decided["kept_ord"]), "")
        action = pa.array(["drop"] * decided.num_rows, pa.string())
        table = pa.Table.from_arrays([decided["_ord"], decided["id"], action, reasons, detail], schema=DECISIONS)
        return Decisions(table, _annotations(con, clusters, groups))


def compared_texts(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    """What a record is compared on (see PARTS): an SFT conversation's contents, an RL prompt's, a preference
    pair's prompt, chosen and rejected; null where a part does not apply."""
    regime = batch["regime"]
    sft, preference = pc.equal(regime, Regime.sft.value), pc.equal(regime, Regime.preference.value)
    text = pc.if_else(sft, Turns.of(batch["messages"]).text(), Turns.of(batch["prompt"]).text())
    none = pa.nulls(batch.num_rows, pa.string())
    return {
        "text": text,
        "text_chosen": pc.if_else(preference, Turns.of(batch["chosen"]).text(), none),
        "text_rejected": pc.if_else(preference, Turns.of(batch["rejected"]).text(), none),
    }


def opening_text(batch: pa.RecordBatch) -> pa.Array:
    """Each record's prompt as the splits see it (as its prompt_id does): a leading system turn and the first
    user turn, from `messages` for SFT, `prompt` otherwise."""
    sft = pc.equal(batch["regime"], Regime.sft.value)
    return pc.if_else(sft, _opening(batch["messages"]), _opening(batch["prompt"]))


def _opening(column: pa.Array) -> pa.Array:
    turns = Turns.of(column)
    role = turns.fields["role"]
    system = (turns.position == 0) & pc.equal(role, "system").fill_null(False).to_numpy(zero_copy_only=False)
    user = turns.first(pc.equal(role, "user").fill_null(False).to_numpy(zero_copy_only=False))
    chosen = system.copy()
    chosen[user[user >= 0]] = True
    return turns.text(chosen)


def salted_grams(grams: list[Grams]) -> Grams:
    """Per record, the shingles of all its parts together (ngram_hashes of each part, in PARTS order), each
    part's salted apart."""
    with np.errstate(over="ignore"):
        hashes = [mix(g.hashes ^ salt) for g, salt in zip(grams, _SALT, strict=False)]
    return _concatenated(grams, hashes)


def _rows_from(first: Grams, second: Grams, take_first: np.ndarray) -> Grams:
    """Per row, first's grams where take_first holds, else second's (second has none where take_first holds)."""
    keep = np.repeat(take_first, first.counts)
    kept = Grams(np.r_[0, np.cumsum(np.where(take_first, first.counts, 0))], first.hashes[keep])
    return _concatenated([kept, second], [kept.hashes, second.hashes])


def _concatenated(grams: list[Grams], hashes: list[np.ndarray]) -> Grams:
    """Per row, the hashes of every one of `grams` (given by `hashes`, in their order) one after another."""
    owner = np.concatenate([np.repeat(np.arange(len(g)), g.counts) for g in grams])
    order = np.argsort(owner, kind="stable")
    counts = sum(g.counts for g in grams)
    offsets = np.zeros(len(grams[0]) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Grams(offsets, np.concatenate(hashes)[order])


def _candidate_pairs(con: duckdb.DuckDBPyConnection, source: str, bands: str, scope: str) -> np.ndarray:
    """Pairs of `_ord` (of the relation `source`) sharing a bucket in some band, each once."""
    members = con.sql(
        f"""
        with banded as (
            select _ord, {scope} as scope, unnest({bands}) as key from {source} where {bands} is not null
        ),
        shared as (select scope, key from banded where key != 0 group by all having count(*) > 1)
        select dense_rank() over (order by b.scope, b.key) as bucket, b._ord
        from banded b semi join shared s on b.key = s.key and b.scope is not distinct from s.scope
        order by bucket, b._ord
        """
    ).fetchnumpy()
    return minhash.unique_pairs(minhash.bucket_pairs(members["bucket"], members["_ord"]))


def _verified(con, source: str, pairs: np.ndarray, parts: tuple[str, ...], ngram: int, threshold: float):
    """The pairs whose every part has a Jaccard of at least the threshold, with the smallest part's Jaccard.
    Returns (nodes: sorted ords of the pairs, edges as node indices, similarity per edge)."""
    nodes = np.unique(pairs)
    con.register("nodes", pa.table({"_ord": nodes}))
    texts = con.sql(
        f"select {', '.join(parts)} from {source} semi join nodes using (_ord) order by _ord"
    ).to_arrow_table()
    con.unregister("nodes")
    left, right = np.searchsorted(nodes, pairs[:, 0]), np.searchsorted(nodes, pairs[:, 1])
    similarity = np.ones(len(pairs))
    for part in parts:
        sets = minhash.sorted_sets(ngram_hashes(texts[part], ngram))
        similarity = np.minimum(similarity, minhash.jaccard(sets, left, right))
    keep = similarity >= threshold
    return nodes, np.stack([left[keep], right[keep]], axis=1), similarity[keep]


def _near_duplicates(con, threshold: float, ngram: int) -> tuple[pa.Table, pa.Table]:
    """The records dropped (`_ord`, id, reason, detail, kept_ord) and each clustered record's cluster
    (`_ord`, cluster_id: the id of its cluster's kept record)."""
    pairs = _candidate_pairs(con, "staged", "bands", "scope")
    nodes, edges, similarity = _verified(con, "staged", pairs, PARTS, ngram, threshold)
    con.register("nodes", pa.table({"_ord": nodes}))
    facts = con.sql("select _ord, id, score from staged semi join nodes using (_ord) order by _ord").to_arrow_table()
    con.unregister("nodes")
    # Rank the nodes by the keep policy (greedy_keep prefers lower ranks): highest score, earliest source, id.
    facts = facts.append_column("source", ordinal_parts(facts["_ord"])[0])
    facts = facts.set_column(2, "score", pc.fill_null(facts["score"], -np.inf))  # no score ranks last
    policy = [("score", "descending"), ("source", "ascending"), ("id", "ascending")]
    by_rank = pc.sort_indices(facts, sort_keys=policy).to_numpy()
    rank_of = np.empty(len(nodes), np.int64)
    rank_of[by_rank] = np.arange(len(nodes))
    ranked = np.sort(rank_of[edges], axis=1)
    kept, dropped_for = minhash.greedy_keep(len(nodes), ranked)
    label = minhash.components(len(nodes), ranked)  # a component's label is its best rank: a kept record
    ids = facts["id"]
    clustered = np.flatnonzero(np.bincount(ranked.ravel(), minlength=len(nodes)))  # ranks on some edge
    clusters = pa.table(
        {"_ord": nodes[by_rank[clustered]], CLUSTER_ID.name: ids.take(pa.array(by_rank[label[clustered]]))}
    )
    dropped = np.flatnonzero(~kept)  # ranks
    kept_rank = dropped_for[dropped]
    # The Jaccard of each dropped record with the kept one it names: their edge's.
    edge_keys = ranked[:, 0] * len(nodes) + ranked[:, 1]
    order = np.argsort(edge_keys)
    jaccards = similarity[order[np.searchsorted(edge_keys[order], kept_rank * len(nodes) + dropped)]]
    detail = pc.binary_join_element_wise(
        "jaccard ", pc.cast(pc.round(pa.array(jaccards), 3), pa.string()), " with the kept ", ""
    )
    drops = pa.table(
        {
            "_ord": nodes[by_rank[dropped]],
            "id": ids.take(pa.array(by_rank[dropped])),
            "reason": pc.binary_join_element_wise(
                f"{Reason.near_duplicate.value}:", ids.take(pa.array(by_rank[kept_rank])), ""
            ),
            "detail": detail,
            "kept_ord": nodes[by_rank[kept_rank]],
        }
    )
    return drops, clusters


def _prompt_groups(con, threshold: float, ngram: int) -> pa.Table:
    """(prompt_id, group_id) for every prompt that has near-identical others: the group is the smallest
    prompt_id among them, so the group of a prompt does not depend on which records carry it."""
    con.execute(
        """
        create temp table prompts as
        select prompt_id, any_value(prompt_text) as prompt_text, any_value(prompt_bands) as prompt_bands,
               dense_rank() over (order by prompt_id) - 1 as _ord
        from staged group by prompt_id
        """
    )
    pairs = _candidate_pairs(con, "prompts", "prompt_bands", "null")
    nodes, edges, _ = _verified(con, "prompts", pairs, ("prompt_text",), ngram, threshold)
    label = minhash.components(len(nodes), edges)  # prompts are numbered in prompt_id order: the smallest wins
    grouped = np.flatnonzero(label != np.arange(len(nodes))) if len(nodes) else np.empty(0, np.int64)
    members = np.unique(np.concatenate([grouped, label[grouped]]))
    con.register("members", pa.table({"_ord": nodes[members], "head": nodes[label[members]]}))
    groups = con.sql(
        """
        select p.prompt_id, h.prompt_id as group_id
        from members m join prompts p on p._ord = m._ord join prompts h on h._ord = m.head
        """
    ).to_arrow_table()
    con.unregister("members")
    return groups


def _prompt_cap(con, drops: pa.Table, groups: pa.Table, cap: int) -> pa.Table:
    """Preference pairs beyond the first `cap` of their prompt group (by the keep policy), among those not
    already dropped."""
    con.register("drops", drops.select(["_ord"]))
    con.register("groups", groups)
    capped = con.sql(
        f"""
        with pairs as (
            select s._ord, s.id, coalesce(g.group_id, s.prompt_id) as grp,
                   row_number() over (
                       partition by coalesce(g.group_id, s.prompt_id)
                       order by s.score desc nulls last, s._ord >> {SOURCE_SHIFT}, s.id
                   ) as place,
                   first_value(s._ord) over (
                       partition by coalesce(g.group_id, s.prompt_id)
                       order by s.score desc nulls last, s._ord >> {SOURCE_SHIFT}, s.id
                   ) as kept_ord
            from staged s left join groups g using (prompt_id)
            where s.text_chosen is not null and s._ord not in (select _ord from drops)
        )
        select _ord, id, '{Reason.prompt_cap.value}:' || grp as reason,
               'pair ' || place || ' of its prompt group, over the cap of {cap}; the first kept is ' as detail,
               kept_ord
        from pairs where place > {cap}
        """
    ).to_arrow_table()
    con.unregister("drops")
    con.unregister("groups")
    return capped.cast(drops.schema)


def _annotations(con, clusters: pa.Table, groups: pa.Table) -> pa.Table:
    """Every record's cluster_id (its own id when it has no near-duplicate) and group_id (null where its prompt
    has no near-identical other: the splits then use its prompt_id)."""
    con.register("clusters", clusters)
    con.register("groups", groups)
    notes = con.sql(
        f"""
        select s._ord, coalesce(c.{CLUSTER_ID.name}, s.id) as {CLUSTER_ID.name}, g.group_id as {GROUP_ID.name}
        from staged s left join clusters c using (_ord) left join groups g using (prompt_id)
        order by s._ord
        """
    ).to_arrow_table()
    return notes.cast(pa.schema([pa.field("_ord", pa.int64()), CLUSTER_ID, GROUP_ID]))
