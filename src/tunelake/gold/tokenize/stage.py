"""The tokenize stage: a gold table's rows -> token ids and audited labels, per regime.

Row-local: one gold part at a time. Rendering and the audits are per record (templates are Jinja); the
tokenizer encodes a whole part in one batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa

from tunelake import tables
from tunelake.gold.tokenize.masks import (
    MaskSettings,
    completion_example,
    fit_length,
    preference_example,
    prompt_ids,
    render_sft,
    sft_labels,
    template_messages,
    template_tools,
)
from tunelake.gold.tokenize.template import (
    ChatTemplate,
    TextTokenizer,
    files_sha256,
    fingerprint,
    load_template,
)
from tunelake.recipe import Tokenize
from tunelake.schema import Reason, Regime, Rejected

IDS = pa.list_(pa.int32())
T, K = TypeVar("T"), TypeVar("K")
TOKENIZED = {
    Regime.sft: pa.schema(
        [("id", pa.string()), ("input_ids", IDS), ("labels", IDS), ("attention_mask", pa.list_(pa.int8()))]
    ),
    Regime.preference: pa.schema(
        [
            ("id", pa.string()),
            ("prompt_input_ids", IDS),
            ("chosen_input_ids", IDS),
            ("rejected_input_ids", IDS),
            ("prompt_length", pa.int32()),
            ("chosen_length", pa.int32()),
            ("rejected_length", pa.int32()),
        ]
    ),
    Regime.rl: pa.schema(
        [
            ("id", pa.string()),
            ("prompt_input_ids", IDS),
            ("prompt_length", pa.int32()),
            ("answer", pa.string()),
            ("verifier", pa.string()),
            ("verifier_config", pa.string()),
        ]
    ),
    Regime.kto: pa.schema(
        [
            ("id", pa.string()),
            ("prompt_input_ids", IDS),
            ("completion_input_ids", IDS),
            ("prompt_length", pa.int32()),
            ("completion_length", pa.int32()),
            ("label", pa.bool_()),
        ]
    ),
}


# Packed SFT rows (see pack.py): whole examples side by side, position_ids restarting at each.
PACKED = pa.schema(
    [
        ("input_ids", IDS),
        ("labels", IDS),
        ("position_ids", IDS),
        ("seq_lengths", IDS),
        ("ids", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker needs to load the same template and tokenizer (both cached per process)."""

    tokenizer_dir: Path
    chat_template: str
    today: date

    def load(self) -> tuple[ChatTemplate, TextTokenizer]:
        # Cached by the files' contents, not only their path: another tokenizer copied into the same folder loads
        # anew instead of being served the one loaded before.
        contents = files_sha256(self.tokenizer_dir, self.chat_template)
        return _load(self.tokenizer_dir, self.chat_template, self.today, contents)


@lru_cache(maxsize=4)
def _load(tokenizer_dir: Path, chat_template: str, today: date, contents: str) -> tuple[ChatTemplate, TextTokenizer]:
    """The probed template and the tokenizer; `contents` (the files' sha256) is there for the cache key only."""
    template = load_template(tokenizer_dir, chat_template, today)
    template.end_of_turn, template.assistant_header  # noqa: B018 - probe once per process, not per record
    return template, TextTokenizer.load(tokenizer_dir)


def _attempt(id_: K, rejects: list[tuple[K, Rejected]], work: Callable[[], T]) -> T | None:
    """work(), or None with the record's rejection noted. Only Rejected is caught (a template that refuses a record
    raises it, see masks._render): any other exception is a bug and fails the build."""
    try:
        return work()
    except Rejected as r:
        rejects.append((id_, r))
    return None


def _preference(template, tok, row: dict, settings: MaskSettings) -> dict:
    if row.get("pair_label") == 0.5:  # silver.preference's soft tie: tokenized pairs carry no label
        raise Rejected(Reason.tie, "pair_label", "a soft tie: without its label it would train as a win for chosen")
    p, c, r = preference_example(template, tok, row["prompt"], row["chosen"], row["rejected"], settings)
    return {
        "prompt_input_ids": p,
        "chosen_input_ids": c,
        "rejected_input_ids": r,
        "prompt_length": len(p),
        "chosen_length": len(c),
        "rejected_length": len(r),
    }


def _kto(template, tok, row: dict, settings: MaskSettings) -> dict:
    side = "chosen" if row["chosen"] else "rejected"  # validation keeps exactly one
    p, c = completion_example(template, tok, row["prompt"], row[side], side, settings)
    return {
        "prompt_input_ids": p,
        "completion_input_ids": c,
        "prompt_length": len(p),
        "completion_length": len(c),
        "label": side == "chosen",
    }


def _rl(template, tok, row: dict, settings: MaskSettings) -> dict:
    p = prompt_ids(template, tok, row["prompt"], settings)
    return {
        "prompt_input_ids": p,
        "prompt_length": len(p),
        "answer": row["answer"],
        "verifier": row["verifier"],
        "verifier_config": row["verifier_config"],
    }


def _sft_columns(input_ids: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, pa.ListArray]:
    """The examples' list columns, each built from one concatenated array (no per-row conversion)."""
    lengths = np.fromiter((len(a) for a in input_ids), np.int64, len(input_ids))
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
    return {
        "input_ids": pa.ListArray.from_arrays(offsets, np.concatenate([np.empty(0, np.int32), *input_ids])),
        "labels": pa.ListArray.from_arrays(offsets, np.concatenate([np.empty(0, np.int32), *labels])),
        "attention_mask": pa.ListArray.from_arrays(offsets, np.ones(lengths.sum(), np.int8)),
    }


def tokenize_rows(
    table: pa.Table, regime: Regime, spec: TokenizerSpec, settings: MaskSettings
) -> tuple[pa.Table, list[tuple[str, Rejected]]]:
    """The tokenized rows of a gold table, and (id, Rejected) for each record that cannot be trained on."""
    template, tok = spec.load()
    rejects: list[tuple[str, Rejected]] = []
    out: dict[str, list | pa.Array] = {name: [] for name in TOKENIZED[regime].names}
    if regime == Regime.sft:
        kept, rendered = [], []
        for row in table.select(["id", "messages", "tools"]).to_pylist():
            work = lambda row=row: render_sft(  # noqa: E731
                template, template_messages(row["messages"]), template_tools(row["tools"]), settings
            )
            if (r := _attempt(row["id"], rejects, work)) is not None:
                kept.append(row["id"])
                rendered.append(r)
        # One batched encode and one vectorised audit for the whole part.
        enc = tok.encode_many([r.text for r in rendered])
        labels, failed = sft_labels(rendered, enc, tok)
        for r, id_ in enumerate(kept):
            if r in failed:
                rejects.append((id_, failed[r]))
                continue
            start, end = enc.bounds[r], enc.bounds[r + 1]
            work = lambda start=start, end=end: fit_length(enc.ids[start:end], labels[start:end], settings)  # noqa: E731
            if (result := _attempt(id_, rejects, work)) is not None:
                out["id"].append(id_)
                out["input_ids"].append(result[0])
                out["labels"].append(result[1])
        out |= _sft_columns(out["input_ids"], out["labels"])
    else:
        example = {Regime.preference: _preference, Regime.kto: _kto, Regime.rl: _rl}[regime]
        for row in table.to_pylist():
            values = _attempt(row["id"], rejects, lambda row=row: example(template, tok, row, settings))
            if values is not None:
                out["id"].append(row["id"])
                for k, v in values.items():
                    out[k].append(v)
    return pa.Table.from_pydict(out, schema=TOKENIZED[regime]), rejects


@dataclass(frozen=True)
class TokenizePlan:
    spec: TokenizerSpec
    settings: MaskSettings
    pack: bool
    fingerprint: str
    template_name: str

    def table(self, regime: Regime, split: str) -> str:
        return tables.TOKENIZED_TABLE.name(fingerprint=self.fingerprint, regime=regime.value, split=split)

    def packed_table(self, split: str) -> str:
        return tables.PACKED_TABLE.name(fingerprint=self.fingerprint, split=split)

    @property
    def quarantine(self) -> str:
        return tables.TOKENIZE_QUARANTINED.name(fingerprint=self.fingerprint)


def plan_tokenize(cfg: Tokenize) -> TokenizePlan:
    """Load and probe the template and tokenizer once, up front, so a bad path or template fails the build
    before it reads any data; raises TemplateError."""
    spec = TokenizerSpec(cfg.tokenizer, cfg.chat_template, cfg.template_date)
    template, _ = spec.load()
    settings = MaskSettings(cfg.max_length, cfg.train_on, cfg.train_on_eot, cfg.overlong)
    fp = fingerprint(cfg.tokenizer, template, cfg.model_dump(mode="json", exclude={"tokenizer"}))
    return TokenizePlan(spec, settings, cfg.pack.enabled, fp, template.name)
