"""Template and mode collapse: clusters of similar records, reported per source, optionally capped; a global stage.

Near-duplicate removal (near_dedup, at 0.8) leaves templated data that is the same answer with other nouns. This
stage joins records whose texts (`by`: responses, prompts, or whole texts) have a Jaccard of at least a looser
threshold (default 0.5) into clusters (MinHash LSH, every join verified exactly; connected components), and
reports per source how much of it sits in its largest clusters and the distinct-n of its responses. Every record
keeps its cluster as `diversity_cluster`: the id of the cluster's first record by the keep policy (its own id when
it is alone). With `max_per_cluster`, a cluster keeps that many records by the policy; the rest are dropped as
`cluster_cap:<cluster>`.

The keep policy is near_dedup's: the highest `score_chosen`, then the earliest source in the recipe, then the
smallest id; whatever the number of workers or chunks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.address import SOURCE_SHIFT
from tunelake.schema import Reason, Regime
from tunelake.silver import lsh, minhash
from tunelake.silver.lsh import MinHashConfig
from tunelake.silver.near_dedup import KEEP_ORDER, compared_texts
from tunelake.silver.ngrams import MAX_N, ngram_hashes
from tunelake.silver.prompt_groups import prompt_texts
from tunelake.silver.turns import Turns
from tunelake.stage import DECISIONS, Decisions, GlobalStage, StagedRows, Tally, drops

DIVERSITY_CLUSTER = pa.field("diversity_cluster", pa.string())
TOP = (1, 10)  # the report's shares: of a scope's records, those in its largest cluster, and in its 10 largest
Texts = Literal["response", "prompt", "text"]


class DiversityConfig(MinHashConfig):
    """Clusters of similar records (MinHash LSH at a looser threshold than near_dedup, each join verified by exact
    Jaccard), reported per source; optionally capped."""

    threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Records whose texts' shingle sets have a Jaccard of at least this share a cluster "
        "(joined transitively); every join is verified exactly.",
    )
    by: Texts = Field(
        "response",
        description="What is compared: `response` (an SFT record's assistant turns, a preference pair's chosen "
        "response, an RL record's answer), `prompt` (the leading system turn and first user turn), or `text` "
        "(what near_dedup compares: a whole conversation, or a prompt).",
    )
    distinct_n: int = Field(
        2, ge=1, le=MAX_N, description="The report's distinct-n of responses uses word n-grams of this many words."
    )
    max_per_cluster: int | None = Field(
        None,
        ge=1,
        description="Keep at most this many records per cluster (the highest score, then the earliest source, then "
        "the smallest id); the rest are dropped as cluster_cap. Null: report only.",
    )


class Diversity(GlobalStage):
    name = "diversity"
    Config = DiversityConfig
    reads = ("regime", "messages", "prompt", "chosen", "answer", "score_chosen")
    adds = (DIVERSITY_CLUSTER,)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """The compared texts' shingle sets and band keys; the responses' distinct n-grams and their n-gram count."""
        responses = texts_of(batch, "response")
        grams = ngram_hashes(responses, self.config.distinct_n)
        compared = responses if self.config.by == "response" else texts_of(batch, self.config.by)
        return {
            "score": batch["score_chosen"],
            "response_ngrams": pa.array(grams.counts),
            "response_grams": lsh.set_column(minhash.sorted_sets(grams)),  # distinct within the record: smaller
            **lsh.shingle_columns(compared, self.config),
        }

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        # A connection per phase: DuckDB keeps what a query took with its connection until it closes.
        with rows.connect(memory_limit) as con:
            ranked = con.sql(f"select _ord, id from staged order by {KEEP_ORDER}").to_arrow_table()
        nodes, ids = ranked["_ord"].to_numpy(), ranked["id"]  # nodes numbered by the keep policy
        with rows.connect(memory_limit) as con:
            label = lsh.linked(con, "staged", nodes, self.config, rows.scratch)  # smallest node: the first kept
        with rows.connect(memory_limit) as con:
            tally = _distinct_ngrams(con, rows.addresses.sources)
        tally.update(_cluster_figures(nodes, label, ids, rows.addresses.sources))
        decisions = DECISIONS.empty_table()
        if self.config.max_per_cluster is not None:
            decisions = _capped(nodes, label, ids, self.config.max_per_cluster, rows.addresses)
        by_ord = np.argsort(nodes)
        notes = pa.table(
            {"_ord": nodes[by_ord], DIVERSITY_CLUSTER.name: ids.take(pa.array(label[by_ord]))},
            schema=pa.schema([pa.field("_ord", pa.int64()), DIVERSITY_CLUSTER]),
        )
        return Decisions(decisions, notes, tally)

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        """Per source and for the corpus: records, clusters, the shares of their records in their largest
        clusters, distinct-n of responses, and records capped; and the corpus's largest clusters."""
        capped = {item["values"]: item["counts"] for item in pc.value_counts(ledger["source"]).to_pylist()}
        scopes = {key[1:-1] for key in tally if key[0] == "scope"}

        def figures(scope: tuple[str, ...]) -> dict:
            records = tally[("scope", *scope, "records")]
            share = {f"top{k}_share": round(tally[("scope", *scope, f"top{k}")] / records, 4) for k in TOP}
            ngrams = tally[("scope", *scope, "ngrams")]
            distinct = tally[("scope", *scope, "distinct_ngrams")]
            return {
                "records": records,
                "clusters": tally[("scope", *scope, "clusters")],
                **share,
                "ngrams": ngrams,
                "distinct_ngrams": distinct,  # approximate (HyperLogLog)
                "distinct_n": round(distinct / ngrams, 4) if ngrams else None,
            }

        largest = sorted(((-n, key[1]) for key, n in tally.items() if key[0] == "largest"))
        return {
            "by": self.config.by,
            "threshold": self.config.threshold,
            "n": self.config.distinct_n,
            "corpus": {**figures(("corpus",)), "capped": sum(capped.values())},
            "sources": {
                scope[1]: {**figures(scope), "capped": capped.get(scope[1], 0)}
                for scope in sorted(scopes)
                if scope[0] == "source"
            },
            "largest_clusters": [{"cluster": cluster, "records": -n} for n, cluster in largest],
        }


def texts_of(batch: pa.RecordBatch, texts: Texts) -> pa.Array:
    """Each record's text of one kind (DiversityConfig.by): its response, its prompt, or its whole text."""
    if texts == "prompt":
        return prompt_texts(batch)
    if texts == "text":
        return compared_texts(batch)["text"]
    regime = batch["regime"]
    turns = Turns.of(batch["messages"])
    assistant = pc.equal(turns.fields["role"], "assistant").fill_null(False).to_numpy(zero_copy_only=False)
    response = pc.if_else(pc.equal(regime, Regime.sft.value), turns.text(assistant), Turns.of(batch["chosen"]).text())
    return pc.if_else(pc.equal(regime, Regime.rl.value), pc.fill_null(batch["answer"], ""), response)


def _cluster_figures(nodes: np.ndarray, label: np.ndarray, ids: pa.Array, sources: tuple[str, ...]) -> Tally:
    """Per source and for the corpus (as `("scope", "source", name, figure)`, `("scope", "corpus", figure)`):
    records, clusters, and the records in the scope's largest and 10 largest clusters (counting the scope's own
    records only); and the corpus's 10 largest clusters (`("largest", cluster id)`: records), the larger first,
    then the cluster whose first record comes first by the keep policy."""
    tally = Tally()
    source = nodes >> SOURCE_SHIFT
    scopes = [(("corpus",), np.ones(len(nodes), bool))]
    scopes += [(("source", name), source == i) for i, name in enumerate(sources) if (source == i).any()]
    for scope, members in scopes:
        clusters, sizes = np.unique(label[members], return_counts=True)
        largest = np.lexsort((clusters, -sizes))  # ties: the cluster whose first record is first
        tally[("scope", *scope, "records")] = int(members.sum())
        tally[("scope", *scope, "clusters")] = len(clusters)
        for k in TOP:
            tally[("scope", *scope, f"top{k}")] = int(sizes[largest[:k]].sum())
        if scope == ("corpus",):
            for cluster, size in zip(clusters[largest[: max(TOP)]], sizes[largest[: max(TOP)]], strict=True):
                tally[("largest", ids[int(cluster)].as_py())] = int(size)
    return tally


def _distinct_ngrams(con, sources: tuple[str, ...]) -> Tally:
    """Per source and for the corpus: the responses' n-grams, and how many distinct ones (HyperLogLog: DuckDB's
    approx_count_distinct, a few percent off, in bounded memory; an exact count took 9x the time and over the
    memory limit at a million records, see the README)."""
    counted = con.sql(
        f"""
        with grams as (
            select _ord >> {SOURCE_SHIFT} as source, unnest(response_grams) as gram from staged
        ),
        distinct_grams as (
            select source, approx_count_distinct(gram) as n from grams group by grouping sets ((source), ())
        ),
        total as (
            select _ord >> {SOURCE_SHIFT} as source, sum(response_ngrams)::bigint as n
            from staged group by grouping sets ((source), ())
        )
        select t.source, t.n as ngrams, coalesce(d.n, 0) as distinct_ngrams
        from total t left join distinct_grams d on t.source is not distinct from d.source
        """
    ).fetchall()
    tally = Tally()
    for source, ngrams, distinct in counted:
        scope = ("corpus",) if source is None else ("source", sources[source])
        tally[("scope", *scope, "ngrams")] = int(ngrams)
        tally[("scope", *scope, "distinct_ngrams")] = int(distinct)
    return tally


def _capped(nodes: np.ndarray, label: np.ndarray, ids: pa.Array, cap: int, addresses) -> pa.Table:
    """DECISIONS dropping each cluster's records after its first `cap` by the keep policy (the node order)."""
    members = np.argsort(label, kind="stable")  # by cluster, then by the policy
    first = np.flatnonzero(np.r_[True, label[members][1:] != label[members][:-1]])
    place = np.empty(len(members), np.int64)  # of each node in its cluster: 0 for its first record
    place[members] = np.arange(len(members)) - np.repeat(first, np.diff(np.r_[first, len(members)]))
    over = np.flatnonzero(place >= cap)
    over = over[np.argsort(nodes[over])]
    cluster = ids.take(pa.array(label[over]))
    detail = pc.binary_join_element_wise(
        "record ",
        pc.cast(pa.array(place[over] + 1), pa.string()),
        " of the ",
        pc.cast(pa.array(np.bincount(label, minlength=len(label))[label[over]]), pa.string()),
        f" in its diversity cluster, over the cap of {cap}; the first kept is ",
        addresses.name(pa.array(nodes[label[over]])),
        "",
    )
    reason = pc.binary_join_element_wise(f"{Reason.cluster_cap.value}:", cluster, "")
    return drops(pa.array(nodes[over]), ids.take(pa.array(over)), reason, detail)
