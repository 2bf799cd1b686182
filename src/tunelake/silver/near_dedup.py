"""Near-duplicate removal (MinHash LSH, verified by exact Jaccard): a global stage.

Which records are near-duplicates of a record kept? What is compared depends on the regime: an SFT record's
conversation, an RL record's prompt, a preference record's prompt and both responses (a pair is a duplicate only
when each of the three is, and is kept or dropped whole); within `scope` (each regime apart, or the whole
corpus). A dropped record names the kept one (`near_duplicate_of:<id>`) and their Jaccard, which is always at
least the threshold: a record is dropped only for a verified neighbour that is kept. Every record keeps its
cluster's kept id as `cluster_id`.

Work per chunk (columns, in the workers): the shingle sets of the compared texts and their band keys. Work over
everything (run): candidate pairs from shared buckets, exact Jaccard of the candidates' staged shingle sets,
connected components and the keep policy in NumPy (see silver/lsh.py and silver/minhash.py).

Which record of a cluster is kept: the highest `score_chosen` (preference) where there is one, then the
earliest source in the recipe, then the smallest id; whatever the number of workers or chunks.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.address import SOURCE_SHIFT
from tunelake.schema import Reason, Regime
from tunelake.silver import lsh, minhash
from tunelake.silver.lsh import MinHashConfig
from tunelake.silver.ngrams import Grams, mix, ngram_hashes
from tunelake.silver.turns import Turns
from tunelake.stage import Decisions, GlobalStage, StagedRows, drops

CLUSTER_ID = pa.field("cluster_id", pa.string())
# The texts a record is compared on, in order: a preference pair's three parts, else one; and their staged sets.
PARTS = ("text", "text_chosen", "text_rejected")
SETS = tuple(f"shingles_{part}" for part in PARTS)
# The salts of a preference pair's chosen and rejected shingles (the first part's are used as they are).
_SALT = mix(np.arange(1, len(PARTS), dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
_REGIMES = pa.array([r.value for r in Regime])
_REGIME_SALT = mix(np.arange(1, len(Regime) + 1, dtype=np.uint64) * np.uint64(0xA0761D6478BD642F))
# The keep policy over the staged columns: the highest score (no score, or NaN, ranks last), the earliest source,
# the smallest id; the input order last, for records alike in all three.
KEEP_ORDER = f"case when isnan(score) then null else score end desc nulls last, _ord >> {SOURCE_SHIFT}, id, _ord"


class NearDedupConfig(MinHashConfig):
    """MinHash LSH near-duplicate removal; every candidate pair is verified by exact Jaccard."""

    scope: Literal["regime", "corpus"] = Field(
        "regime", description="Compare records within their regime, or across the whole corpus."
    )


class NearDedup(GlobalStage):
    name = "near_dedup"
    version = "2"  # 2: stages the compared texts' shingle sets instead of the texts (ingest caches of 1 lack them)
    Config = NearDedupConfig
    reads = ("regime", "messages", "prompt", "chosen", "rejected", "score_chosen")
    adds = (CLUSTER_ID,)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The shingle sets of the compared texts, and the band keys of all their shingles (each part's salted
        apart)."""
        texts = compared_texts(batch)
        sets = [minhash.sorted_sets(ngram_hashes(texts[part], self.config.ngram)) for part in PARTS]
        salt = None
        if self.config.scope == "regime":  # each regime's keys salted apart: two regimes never share a bucket
            salt = _REGIME_SALT[pc.index_in(batch["regime"], _REGIMES).to_numpy()]
        return {
            "score": batch["score_chosen"],
            **{column: lsh.set_column(part) for column, part in zip(SETS, sets, strict=True)},
            **lsh.band_columns(salted_grams(sets), self.config, salt),
        }

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        # A connection per phase: DuckDB keeps what a query took with its connection until it closes, so the
        # step's memory is its largest phase's, not the sum of all.
        with rows.connect(memory_limit) as con:
            # Nodes numbered by the keep policy: a bucket's first member and greedy_keep's preferred node agree.
            records = con.sql(f"select _ord from staged order by {KEEP_ORDER}").fetchnumpy()["_ord"]
        with ExitStack() as stack:
            with rows.connect(memory_limit) as con:
                sets = [stack.enter_context(lsh.ShingleSets(con, "staged", records, rows.scratch, c)) for c in SETS]
            with rows.connect(memory_limit) as con:
                edges, similarity = lsh.verified_edges(con, "staged", records, self.config, sets)
            del sets  # their sizes and bitmaps (48 bytes a row a part): not needed past verification
        with rows.connect(memory_limit) as con:  # every record's id, as it streams (no join or sort in DuckDB)
            read = con.sql("select _ord, id from staged").to_arrow_reader(lsh.ROWS).read_all()
        by_ord = np.argsort(read["_ord"].to_numpy())
        ords, ids = read["_ord"].to_numpy()[by_ord], read["id"].take(pa.array(by_ord)).combine_chunks()
        del read
        dropped, kept, jaccards, cluster_of = _near_duplicates(records, edges, similarity, ords)
        del edges, similarity  # not held while the decisions' strings, the step's largest part, are made
        # Every record's cluster: its own id when it has no near-duplicate.
        notes = pa.table({"_ord": ords, CLUSTER_ID.name: ids.take(pa.array(cluster_of))})
        detail = pc.binary_join_element_wise(
            "jaccard ",
            pc.cast(pc.round(pa.array(jaccards), 3), pa.string()),
            " with the kept ",
            rows.addresses.name(pa.array(ords[kept])),
            "",
        )
        reason = pc.binary_join_element_wise(f"{Reason.near_duplicate.value}:", ids.take(pa.array(kept)), "")
        decisions = drops(pa.array(ords[dropped]), ids.take(pa.array(dropped)), reason, detail)
        return Decisions(decisions, notes.cast(pa.schema([pa.field("_ord", pa.int64()), CLUSTER_ID])))


def compared_texts(batch: pa.RecordBatch) -> dict[str, pa.Array]:
    """What a record is compared on (see PARTS): an SFT conversation's contents, an RL prompt's, a preference
    pair's prompt, chosen and rejected; null where a part does not apply."""
    regime = batch["regime"]
    sft = pc.equal(regime, Regime.sft.value)
    # A KTO record is compared as a pair is: prompt and both sides (one of them empty; the label is which).
    preference = pc.is_in(regime, pa.array([Regime.preference.value, Regime.kto.value]))
    text = pc.if_else(sft, Turns.of(batch["messages"]).text(), Turns.of(batch["prompt"]).text())
    none = pa.nulls(batch.num_rows, pa.string())
    return {
        "text": text,
        "text_chosen": pc.if_else(preference, Turns.of(batch["chosen"]).text(), none),
        "text_rejected": pc.if_else(preference, Turns.of(batch["rejected"]).text(), none),
    }


def salted_grams(grams: list[Grams]) -> Grams:
    """Per record, the shingles of all its parts (PARTS) together: a conversation's or prompt's as they are, a
    preference pair's responses salted apart (so a prompt's words never count as a response's)."""
    if not any(len(g.hashes) for g in grams[1:]):  # no preference pair in the batch
        return grams[0]
    with np.errstate(over="ignore"):
        hashes = [grams[0].hashes, *(mix(g.hashes ^ salt) for g, salt in zip(grams[1:], _SALT, strict=True))]
    counts = [g.counts for g in grams]
    offsets = np.zeros(len(grams[0]) + 1, np.int64)
    np.cumsum(sum(counts), out=offsets[1:])
    # Each part's grams go after those of the parts before it, within their record's run: no sort needed.
    out = np.empty(offsets[-1], np.uint64)
    before = offsets[:-1].copy()
    for g, part_hashes, count in zip(grams, hashes, counts, strict=True):
        out[np.repeat(before - g.offsets[:-1], count) + np.arange(len(part_hashes))] = part_hashes
        before += count
    return Grams(offsets, out)


def _near_duplicates(
    records: np.ndarray, edges: np.ndarray, similarity: np.ndarray, ords: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From the verified edges (sorted) between the records (`_ord`s in policy order), and all records' `_ord`s
    (`ords`, sorted): the positions in `ords` of the records dropped and of the kept record each is dropped for,
    their Jaccards, and each record's cluster as the position of its kept record."""
    involved = np.unique(edges)  # from here on, ranks among the records on some edge (still in policy order)
    ranked = np.searchsorted(involved, edges).astype(edges.dtype)
    at = np.searchsorted(ords, records[involved])  # each ranked record's position in ords
    kept, dropped_for = minhash.greedy_keep(len(involved), ranked)
    label = minhash.components(len(involved), ranked)  # a component's label is its best rank: a kept record
    cluster_of = np.arange(len(ords))
    cluster_of[at] = at[label]
    dropped = np.flatnonzero(~kept)
    kept_rank = dropped_for[dropped]
    # The Jaccard of each dropped record with the kept one it names: their edge's (ranks kept the edges sorted).
    edge_keys = ranked[:, 0].astype(np.int64) * len(involved) + ranked[:, 1]
    jaccards = similarity[np.searchsorted(edge_keys, kept_rank * len(involved) + dropped)]
    return at[dropped], at[kept_rank], jaccards, cluster_of
