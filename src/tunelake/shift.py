"""Over-filter warnings: does a stage's cut shift the distribution of what it keeps?

A gate set on one axis can silently narrow another: a length rule that takes most long conversations, a language
rule that empties one source. For every row-local stage, the runner counts the records it took in and the ones it
kept along a few facets of each record (`Facets`), per chunk, as a Tally that adds up over the build and is kept
with a reused file's cache entry. At the end of the build, `findings` compares the two:

- `length` (characters of all the record's text, in half-octave bins) and `turns` (turns of the conversation as
  trained: SFT messages, a preference prompt and its chosen side, an RL prompt): the two-sample Kolmogorov-Smirnov
  statistic between the binned distributions of records in and records kept (binning can only lower it);
- `source`, `domain` and `lang` (null as `unknown`): the share of each value's records the stage removed.

A statistic above the recipe's `silver.over_filter` limits is a warning, in the manifest (`stages.<name>.shift`
and `warnings`) and in the build output, naming the stage and the facet.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from tunelake.silver.turns import MESSAGE_LISTS
from tunelake.stage import Tally

ORDERED = ("length", "turns")  # facets whose values are ordered bins: compared by KS
CATEGORIES = ("source", "domain", "lang")  # facets whose values are names: compared by the share each lost
_UNKNOWN = "unknown"


class OverFilter(BaseModel):
    """When a row-local stage's cut is reported as shifting a distribution (see the README's "Over-filter
    warnings")."""

    model_config = ConfigDict(extra="forbid")

    max_ks: float = Field(
        0.2, gt=0, le=1, description="Warn when the KS statistic of length or turns, kept vs in, is above this."
    )
    max_loss: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Warn when a stage removes more than this share of one source's, domain's or language's records.",
    )
    min_records: int = Field(
        50, ge=1, description="A source, domain or language with fewer records into the stage is not judged."
    )


class Facets:
    """Each record's facet values in a batch: ordered bins as integers, names as dictionary codes."""

    def __init__(self, batch: pa.RecordBatch):
        chars = np.zeros(batch.num_rows, np.int64)
        for column in MESSAGE_LISTS:
            contents = pc.list_flatten(batch[column]).field("content")
            lengths = pc.utf8_length(contents).fill_null(0).to_numpy(zero_copy_only=False)
            parents = pc.list_parent_indices(batch[column]).to_numpy(zero_copy_only=False)
            chars += np.bincount(parents, weights=lengths, minlength=batch.num_rows).astype(np.int64)
        chars += pc.utf8_length(batch["answer"]).fill_null(0).to_numpy(zero_copy_only=False)
        sft = pc.equal(batch["regime"], "sft").to_numpy(zero_copy_only=False)
        turns = np.where(sft, _lengths(batch["messages"]), _lengths(batch["prompt"]) + _lengths(batch["chosen"]))
        self.bins = {"length": np.floor(2 * np.log2(chars + 1)).astype(np.int64), "turns": turns}
        self.names = {name: pc.dictionary_encode(pc.fill_null(batch[name], _UNKNOWN)) for name in CATEGORIES}

    def tally(self, rows: np.ndarray, side: str) -> Tally:
        """Counts of the records `rows` (indices into the batch) by facet value, keyed (side, facet, value)."""
        out: Tally = Counter()
        for facet, bins in self.bins.items():
            values, counts = np.unique(bins[rows], return_counts=True)
            out.update({(side, facet, str(v)): int(n) for v, n in zip(values, counts, strict=True)})
        for facet, names in self.names.items():
            counts = np.bincount(names.indices.to_numpy()[rows], minlength=len(names.dictionary))
            out.update({(side, facet, names.dictionary[i].as_py()): int(counts[i]) for i in np.flatnonzero(counts)})
        return out


def _lengths(column: pa.Array) -> np.ndarray:
    return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


def findings(profile: Tally, limits: OverFilter) -> dict:
    """What a stage's profile (Facets.tally of its records `in` and `kept`) shows: the KS statistic of each ordered
    facet, the value of each named facet that lost the largest share, and the warnings among them."""
    if not profile:
        return {}
    sides = {side: {} for side in ("in", "kept")}
    for (side, facet, value), n in profile.items():
        sides[side].setdefault(facet, Counter())[value] += n
    out, warnings = {}, []
    for facet in ORDERED:
        ks = _ks(sides["in"].get(facet, Counter()), sides["kept"].get(facet, Counter()))
        out[f"{facet}_ks"] = round(ks, 4)
        if ks > limits.max_ks:
            warnings.append(f"{facet}: KS {ks:.3f} between the records in and kept (limit {limits.max_ks})")
    for facet in CATEGORIES:
        took = sides["in"].get(facet, Counter())
        kept = sides["kept"].get(facet, Counter())
        judged = {v: 1 - kept[v] / n for v, n in took.items() if n >= limits.min_records}
        if not judged:
            continue
        worst = max(sorted(judged), key=judged.get)
        out[f"{facet}_most_lost"] = {"value": worst, "share": round(judged[worst], 4), "of": took[worst]}
        warnings += [
            f"{facet} {v!r}: {share:.0%} of its {took[v]} records removed (limit {limits.max_loss:.0%})"
            for v, share in sorted(judged.items())
            if share > limits.max_loss
        ]
    return {**out, "warnings": warnings}


def _ks(took: Counter, kept: Counter) -> float:
    """The largest gap between the two cumulative distributions over the ordered (integer) bins."""
    if not took or not kept:
        return 0.0
    bins = sorted({int(b) for b in (*took, *kept)})
    cdf = [np.cumsum([counts[str(b)] for b in bins]) / sum(counts.values()) for counts in (took, kept)]
    return float(np.abs(cdf[0] - cdf[1]).max())
