"""Selection by informational distance: keep the N records that cover the corpus best; a global stage.

Greedy k-center (farthest-point) over MinHash signatures of what `by` names (silver/diversity.texts_of): the
distance of two records is 1 - their estimated Jaccard (the share of signature values on which they disagree).
The first center is the record with the smallest id; each next one is the record farthest from every center so
far, ties going to the smallest id. The rest are dropped as `not_selected`, each with its distance to the nearest
selected record. The report gives the coverage achieved (the k-center radius: the largest distance of any record
to its nearest selected one; and the mean distance) beside a seeded random sample of the same size, measured the
same way.

Signatures are kept as the low 16 bits of each MinHash value (two different minima agree by chance once in 65,536:
a Jaccard estimate at most that much high), 64 permutations by default: 128 bytes per record, 128 MiB at a million.
Each step compares one center with every record in one NumPy pass: O(size x records x num_perm).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.schema import Reason
from tunelake.silver import minhash
from tunelake.silver.diversity import Texts, texts_of
from tunelake.silver.lsh import ROWS
from tunelake.silver.ngrams import MAX_N, ngram_hashes
from tunelake.stage import Decisions, GlobalStage, StageConfig, StagedRows, Tally, drops

BLOCK = 1 << 16  # records compared with a center at once: bounds the temporary (BLOCK x num_perm bytes)


class SelectConfig(StageConfig):
    """Keep the `size` records that cover the corpus best (greedy k-center on MinHash signatures)."""

    strategy: Literal["k_center"] = Field(
        "k_center", description="How records are chosen: k_center (greedy farthest-point, deterministic)."
    )
    size: int = Field(ge=1, description="How many records to keep; the rest are dropped as not_selected.")
    by: Texts = Field(
        "prompt",
        description="What the distance compares: `prompt` (the leading system turn and first user turn), "
        "`response` (assistant turns, a chosen response, an RL answer) or `text` (a whole conversation or prompt).",
    )
    seed: int = Field(0, description="Seed of the random sample of the same size that the report compares with.")
    ngram: int = Field(3, ge=1, le=MAX_N, description="Signatures are over word n-grams of this many words.")
    num_perm: int = Field(64, ge=16, le=1024, description="MinHash permutations per signature (2 bytes each).")


class Select(GlobalStage):
    name = "select"
    Config = SelectConfig
    reads = ("regime", "messages", "prompt", "chosen", "answer")

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        grams = minhash.sorted_sets(ngram_hashes(texts_of(batch, self.config.by), self.config.ngram))
        low = minhash.signatures(grams, self.config.num_perm).astype(np.uint16)  # the low 16 bits
        return {"signature": pa.FixedSizeListArray.from_arrays(pa.array(low.ravel()), self.config.num_perm)}

    def columns_key(self) -> dict:
        what = ("by", "ngram", "num_perm")  # the signatures'; size, seed and strategy act in run
        return {"name": self.name, "version": self.version, **{k: getattr(self.config, k) for k in what}}

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        perm = self.config.num_perm
        ords, ids = [], []
        with rows.connect(memory_limit) as con:
            count = con.sql("select count(*) from staged").fetchall()[0][0]
            signatures = np.empty((count, perm), np.uint16)
            done = 0
            for batch in con.sql("select _ord, id, signature from staged order by id, _ord").to_arrow_reader(ROWS):
                ords.append(batch["_ord"])
                ids.append(batch["id"])
                signatures[done : done + batch.num_rows] = batch["signature"].values.to_numpy().reshape(-1, perm)
                done += batch.num_rows
        ordered = pa.table({"_ord": pa.chunked_array(ords, pa.int64()), "id": pa.chunked_array(ids, pa.string())})
        size = min(self.config.size, len(signatures))
        centers, distance = k_center(signatures, size)
        sample = np.random.default_rng(self.config.seed).choice(len(signatures), size, replace=False)
        tally = Tally({("records",): len(signatures), ("selected",): size, ("num_perm",): perm})
        for name, units in (("k_center", distance), ("random", nearest(signatures, sample))):
            tally[(name, "radius")] = int(units.max(initial=0))
            tally[(name, "distance_sum")] = int(units.sum())
        chosen = np.zeros(len(signatures), bool)
        chosen[centers] = True
        out = np.flatnonzero(~chosen)
        out = out[np.argsort(ordered["_ord"].to_numpy()[out])]
        share = pc.round(pa.array(distance[out] / perm), 3)
        detail = pc.binary_join_element_wise(
            f"{self.config.strategy} by {self.config.by} (size {size}): distance ",
            pc.cast(share, pa.string()),
            " to the nearest selected record",
            "",
        )
        index = pa.array(out)
        reason = pa.array([Reason.not_selected.value] * len(out), pa.string())
        decisions = drops(ordered["_ord"].take(index), ordered["id"].take(index), reason, detail)
        return Decisions(decisions, tally=tally)

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        """Coverage of the selection against a random sample of the same size: radius and mean distance."""
        records, perm = tally[("records",)], tally[("num_perm",)]

        def coverage(name: str) -> dict:
            return {
                "radius": round(tally[(name, "radius")] / perm, 4),
                "mean_distance": round(tally[(name, "distance_sum")] / (records * perm), 4) if records else 0.0,
            }

        return {
            "strategy": self.config.strategy,
            "by": self.config.by,
            "records": records,
            "selected": tally[("selected",)],
            "coverage": coverage("k_center"),
            "random_sample": {"seed": self.config.seed, **coverage("random")},
        }


def k_center(signatures: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy farthest-point centers (indices, in the order chosen) of rows in id order, the first row first, ties
    to the earliest row; and every row's distance to its nearest center, in disagreeing signature values."""
    distance = np.full(len(signatures), np.iinfo(np.int32).max, np.int32)
    centers = np.empty(size, np.int64)
    if not size:
        return centers, np.zeros(len(signatures), np.int32)
    center = 0
    for step in range(size):
        centers[step] = center
        _closer(signatures, signatures[center], distance)
        distance[center] = -1  # never again the farthest (rows at distance 0 from the centers stay candidates)
        center = int(np.argmax(distance))
    distance[centers] = 0
    return centers, distance


def nearest(signatures: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Every row's distance to its nearest center, in disagreeing signature values."""
    distance = np.full(len(signatures), np.iinfo(np.int32).max, np.int32)
    for center in centers:
        _closer(signatures, signatures[center], distance)
    return distance


def _closer(signatures: np.ndarray, center: np.ndarray, distance: np.ndarray) -> None:
    """Lower each row's distance to the center's where it is nearer, a block of rows at a time."""
    for lo in range(0, len(signatures), BLOCK):
        block = signatures[lo : lo + BLOCK]
        np.minimum(distance[lo : lo + BLOCK], np.count_nonzero(block != center, axis=1), out=distance[lo : lo + BLOCK])
