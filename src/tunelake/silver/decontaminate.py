"""Decontamination: drop every record that holds an item of an evaluation set, in its prompt or its response.

A record is contaminated by an item when it holds at least `min_overlap` of the item's distinct word n-grams (or,
for an item shorter than n words, the item's whole normalised text at word boundaries). Grams come from the one
shingler (silver/ngrams.py); the eval sets are read and indexed once per process (silver/eval_sets.py). A record
is dropped whole (a preference pair with it), with reason `contaminated:<eval>:<item>` and, in the detail, the
share of the item found and the longest matched span, as the record's normalised words.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from tunelake.ingest.readers import file_sha256
from tunelake.schema import Reason
from tunelake.silver.eval_sets import EvalIndex, EvalSetError, Shingles, read_eval_set
from tunelake.silver.ngrams import MAX_N, words
from tunelake.silver.turns import Turns
from tunelake.stage import Outcome, RowLocalStage, StageConfig, Tally

Part = Literal["prompt", "response"]
PARTS: tuple[Part, ...] = ("prompt", "response")
EVAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SPAN_WORDS = 60  # a longer matched span is cut in the detail


class EvalSet(StageConfig):
    name: str = Field(
        description="Names the eval set in reason codes (`contaminated:<name>:<item>`) and the report: a letter or "
        "digit, then letters, digits, '_', '.' or '-'."
    )
    path: str = Field(
        description="The eval file, relative to the recipe: jsonl or json (.gz/.zst), parquet or csv, one item a row."
    )
    field: str = Field(description="The row's field that holds the item's text (e.g. question, problem, prompt).")
    id_field: str | None = Field(
        None, description="A row field that names the item in reason codes (e.g. task_id); else its 0-based index."
    )

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not EVAL_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: expected a letter or digit, then letters, digits, '_', '.' or '-'")
        return value


class DecontaminateConfig(StageConfig):
    """Drops records holding an evaluation item (`contaminated:<eval>:<item>`); see the README's
    "Decontamination"."""

    against: list[EvalSet] = Field(min_length=1, description="The evaluation sets no record may hold an item of.")
    ngram: int = Field(
        8, ge=1, le=MAX_N, description="Word n-gram size; an item of fewer words must appear whole (normalised)."
    )
    min_overlap: float = Field(
        0.5, gt=0, le=1, description="A record is contaminated by an item holding this share of its distinct n-grams."
    )
    check: list[Part] = Field(
        default_factory=lambda: list(PARTS),
        min_length=1,
        description="prompt: every turn before the response (system, user, tool turns; the preference and RL "
        "`prompt`); response: assistant turns (SFT), chosen and rejected (preference), the gold answer (RL).",
    )

    @field_validator("against")
    @classmethod
    def _unique_names(cls, against: list[EvalSet]) -> list[EvalSet]:
        names = [e.name for e in against]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"eval set names must be unique; repeated: {', '.join(dupes)}")
        return against

    def resolve(self, base: Path) -> None:
        """Eval paths made absolute against the recipe's folder; each file is read, so that a missing file or a
        row without its text fails as the recipe loads, not halfway into a build."""
        for eval_set in self.against:
            path = base / eval_set.path
            if not path.is_file():
                raise ValueError(f"eval set {eval_set.name!r}: no file {path}")
            eval_set.path = str(path)
            try:
                read_eval_set(eval_set.path, eval_set.field, eval_set.id_field)
            except EvalSetError as e:
                raise ValueError(f"eval set {eval_set.name!r}: {e}") from None


class Decontaminate(RowLocalStage):
    name = "decontaminate"
    Config = DecontaminateConfig
    reads = ("regime", "messages", "prompt", "chosen", "rejected", "answer")

    @functools.cached_property
    def eval_sha256(self) -> tuple[str, ...]:
        """Each eval file's sha256, in `against` order: computed once (in the parent, travelling with the stage)."""
        return tuple(file_sha256(e.path) for e in self.config.against)

    def describe(self) -> dict:
        """The config, and each eval file's sha256: a changed eval file re-runs the stage on every input."""
        return super().describe() | {"eval_sha256": list(self.eval_sha256)}

    def index(self) -> EvalIndex:
        """The eval sets' index, built once per process for these files (by their sha256) and settings."""
        sets = zip(self.config.against, self.eval_sha256, strict=True)
        return _index(tuple((e.name, e.path, e.field, e.id_field, sha) for e, sha in sets), self.config.ngram)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        index = self.index()
        texts, owner, part = checked_texts(batch, self.config.check)
        shingles = Shingles.of(words(texts), index.n, [size for size in index.tables if size != index.n])
        found = contamination(shingles, owner, index, self.config.min_overlap)
        reason = [None] * batch.num_rows
        detail = [None] * batch.num_rows
        by_record = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[by_record], np.stack([found[0], found[0] + 1]))
        for record, item, share, start, stop in zip(*found, *bounds, strict=True):  # the few contaminated records
            name = index.names[index.item_set[item]]
            reason[record] = f"{Reason.contaminated.value}:{name}:{index.labels[item]}"
            detail[record] = _detail(shingles, part, by_record[start:stop], item, share, index)
        return Outcome(batch, drop=pa.array(reason, pa.string()), detail=pa.array(detail, pa.string()))

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        """Per eval set: its items, and per source the items hit and the records dropped (an eval x source
        matrix)."""
        drops = ledger.filter(pc.equal(ledger["action"], "drop"))
        parts = pc.split_pattern(drops["reason"], ":", max_splits=2)
        hits = pa.table(
            {
                "eval": pc.list_element(parts, 1),
                "item": pc.list_element(parts, 2),
                "source": drops["source"],
            }
        )
        matrix = hits.group_by(["eval", "source"]).aggregate([("item", "count_distinct"), ("item", "count")])
        index = self.index()
        report = {name: {"items": size, "sources": {}} for name, size in zip(index.names, index.sizes, strict=True)}
        for row in matrix.sort_by([("eval", "ascending"), ("source", "ascending")]).to_pylist():
            report[row["eval"]]["sources"][row["source"]] = {
                "items_hit": row["item_count_distinct"],
                "records_dropped": row["item_count"],
            }
        return report


@functools.lru_cache(maxsize=4)
def _index(key: tuple, n: int) -> EvalIndex:
    """The index of the eval sets `key` names (name, path, field, id field, sha256), built once per process."""
    sets = []
    for name, path, field, id_field, sha in key:
        items = read_eval_set(path, field, id_field)
        if items.sha256 != sha:
            raise EvalSetError(f"eval set {name!r}: {path} changed while the build ran; build again")
        sets.append(items)
    return EvalIndex.of([name for name, *_ in key], sets, n)


def checked_texts(batch: pa.RecordBatch, check: list[Part]) -> tuple[pa.StringArray, np.ndarray, np.ndarray]:
    """The texts of the batch that are checked, with each one's record and part (index into PARTS)."""
    texts, owners, parts = [], [], []

    def add(values: pa.Array, owner: np.ndarray, part: Part) -> None:
        if part in check:
            texts.append(values)
            owners.append(owner)
            parts.append(np.full(len(owner), PARTS.index(part), np.int8))

    messages = Turns.of(batch["messages"])
    assistant = pc.fill_null(pc.equal(messages.fields["role"], "assistant"), False).to_numpy(zero_copy_only=False)
    add(messages.fields["content"].filter(~assistant), messages.record[~assistant], "prompt")
    add(messages.fields["content"].filter(assistant), messages.record[assistant], "response")
    for column, part in (("prompt", "prompt"), ("chosen", "response"), ("rejected", "response")):
        turns = Turns.of(batch[column])
        add(turns.fields["content"], turns.record, part)
    answers = batch["answer"]
    add(answers, np.arange(len(answers)), "response")
    return pa.concat_arrays(texts), np.concatenate(owners), np.concatenate(parts)


def contamination(
    shingles: Shingles, owner: np.ndarray, index: EvalIndex, min_overlap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(record, item, share) for each contaminated record: the item it holds the largest share of (the first such
    item on a tie), in record order."""
    pairs = [
        index.tables[size].matches(np.repeat(owner, grams.counts), grams.hashes)
        for size, grams in shingles.grams.items()
    ]
    records = np.concatenate([p[0] for p in pairs])
    items = np.concatenate([p[1] for p in pairs])
    found, matched = np.unique(records * len(index.grams) + items, return_counts=True)
    records, items = np.divmod(found, len(index.grams))
    share = matched / index.grams[items]
    over = share >= min_overlap
    records, items, share = records[over], items[over], share[over]
    best = np.lexsort((items, -share, records))
    first = np.r_[True, records[best][1:] != records[best][:-1]] if len(best) else np.zeros(0, bool)
    best = best[first]
    return records[best], items[best], share[best]


def _detail(shingles: Shingles, part: np.ndarray, mine: np.ndarray, item: int, share: float, index: EvalIndex) -> str:
    """The share of the item found, and the longest run of the item's grams among the record's texts (`mine`), as
    the record's normalised words."""
    n = index.gram_size(item)
    held = index.hashes_of(item)
    best = (0, 0, 0, 0)  # (grams in the run, text, first gram, one past the last)
    for text in mine:
        inside = np.isin(shingles.grams[n].of(text), held).astype(np.int8)
        edges = np.flatnonzero(np.diff(np.r_[0, inside, 0]))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start > best[0]:
                best = (stop - start, text, start, stop)
    _, text, start, stop = best
    span = shingles.words[int(text)].values.to_pylist()[start : stop - 1 + n]
    shown = " ".join(span[:SPAN_WORDS]) + (" ..." if len(span) > SPAN_WORDS else "")
    how = f"{share:.2f} of its {index.grams[item]} {n}-grams" if n == index.n else f"the whole item ({n} words)"
    return f"{how} in the {PARTS[part[text]]}: {shown!r}"
