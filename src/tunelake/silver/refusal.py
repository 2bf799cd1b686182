"""Refusal tagging: find the responses a model would be trained to refuse with, tag them (or drop them), and
report the benign-refusal rate per source and domain; a row-local stage.

What is judged is what a model is trained to say (turns.Responses): the assistant turns of an SFT conversation
and the chosen side of a preference pair. A pair's rejected side is not judged: a refusal there is trained
against, not into the model (and a refusing rejected side is often the point of the pair). An RL record has no
response to judge.

A refusal is a response with a sentence that starts, within its first OPENING_CHARS (200) characters, with one of
PATTERNS (after an interjection such as "Well," and an apology such as "I'm sorry, but"), matched
case-insensitively by RE2 over every response of a batch at once, after its ``` code blocks are removed (a
refusal quoted in a code block is text the model writes, not a refusal). Why anchored so, from the 2,312 chosen
responses of HH-RLHF harmless-base: 43 open with a pattern; 9 more have it start a later sentence within 200
characters, 7 of them refusals after a remark ("That information isn't available.  I'm sorry, I can't help
you."); past 200 characters no chosen response has one, and the rejected sides that do refuse a last step after
complying ("... use a web browser to search for the Social Security Number.  I can't do that for you"). The same
phrases inside a sentence are mostly not refusals ("I'm sorry to say that", "I can't believe humans").

Over-refusal is a failure mode, not safety: a refusal of a prompt meant to be refused (red-teaming, harmful
requests) is expected, every other refusal is benign. The recipe names the sources and domains whose prompts
are meant to be refused; the report gives, per source and per domain, the records judged, refused and the rate,
and the same for the benign ones, with a warning where the benign-refusal rate is above `max_benign_rate`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelake.schema import Reason
from tunelake.silver.turns import Responses
from tunelake.stage import Outcome, RowLocalStage, StageConfig, Tally

# Bump when PATTERNS change: the version is in the `refusal` column, the report and every cache key.
PATTERNS_VERSION = "1"
_A = "['’]"  # an apostrophe, straight or curly (HH-RLHF writes ’)
_I_AM = rf"i(?:{_A}m|\s+am)"
# "I can't", "I won't", "I'm unable to", "I'm not going to": what a refusal says the model will not do.
_I_CANNOT = (
    rf"(?:i\s+(?:can{_A}?t|cannot|can\s+not|won{_A}t|will\s+not)|"
    rf"{_I_AM}\s+(?:unable|not\s+(?:able|going|willing|allowed|permitted))\s+to)"
)
# A refusal is a sentence that starts within the first OPENING_CHARS characters of a response (see the module's
# docstring for why), after an interjection, then an apology or regret ("Oh, I'm sorry, but ...").
OPENING_CHARS = 200
OPENING = (
    rf"^(?:(?s:.{{0,{OPENING_CHARS}}})[.!?\n]\s*)?\s*(?:(?:oh|well|okay|ok|hmm|um|no)[,.!]?\s+)?"
    rf"(?:(?:{_I_AM}\s+(?:very\s+|really\s+|so\s+|truly\s+)?(?:sorry|afraid)(?:\s+that)?|sorry|apologies|"
    r"unfortunately)\s*[,.!;:-]*\s*(?:but\s+)?)?"
)
# The refusals, in the order a response is named by (the first that matches). Each follows OPENING.
PATTERNS: dict[str, str] = {
    # "As an AI language model, I cannot ...": the model's nature given as the reason.
    "as_an_ai": rf"as\s+an?\s+(?:ai|artificial\s+intelligence)\b[^.!?\n]{{0,40}}?,?\s*"
    rf"(?:{_I_CANNOT}|i\s+(?:don{_A}t|do\s+not)|{_I_AM}\s+not)",
    # "I can't help with that", "I won't assist", "I'm not going to answer this", "I'm unable to provide ...".
    "cannot_help": rf"{_I_CANNOT}\s+(?:really\s+|actually\s+)?(?:help|assist|answer|provide|comply|fulfil|"
    r"support|give|tell|share|discuss|engage|participate|write|create|generate|do\s+(?:that|this|it)\b)",
    # "I'm sorry, but I can't." / "I cannot do that": a bare refusal ending its sentence.
    "cannot": rf"i\s+(?:can{_A}?t|cannot|won{_A}t)(?:\s+do\s+(?:that|this))?\s*(?:[.!]|$)",
    # "I must decline", "I refuse to ...".
    "decline": rf"i(?:\s+(?:must|have\s+to|will\s+have\s+to|need\s+to)|{_A}ll\s+have\s+to)\s+(?:respectfully\s+)?"
    r"(?:decline|refuse)|i\s+(?:respectfully\s+)?(?:decline|refuse)\s+to",
    # "I'm not comfortable with that", "I don't feel comfortable helping".
    "not_comfortable": rf"(?:{_I_AM}\s+not|i\s+(?:don{_A}t|do\s+not)\s+feel)\s+comfortable",
    # "I don't think that's appropriate".
    "not_appropriate": rf"i\s+(?:don{_A}t|do\s+not)\s+think\s+(?:that|this|it)(?:{_A}s|\s+is|\s+would\s+be)\s+"
    r"(?:appropriate|something\s+i\s+(?:can|should))",
}
PATTERNS_SHA = hashlib.sha256(repr(sorted(PATTERNS.items())).encode() + OPENING.encode()).hexdigest()[:12]
_CODE_BLOCK = r"(?s)```.*?(?:```|$)"  # an unclosed block runs to the end
UNKNOWN_DOMAIN = "unknown"
KINDS = ("total", "source", "domain")  # what the report counts by, in its order

REFUSAL = pa.struct(
    [
        ("refused", pa.bool_()),
        ("pattern", pa.string()),  # the pattern that names the refusal (null where none)
        ("turn", pa.int32()),  # the first refusing turn's index in messages (SFT) or chosen (preference)
        ("patterns_version", pa.string()),
    ]
)


class ExpectedRefusals(BaseModel):
    """Where prompts are meant to be refused (red-teaming, harmful requests): a refusal there is not over-refusal."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list, description="Sources whose prompts are meant to be refused.")
    domains: list[str] = Field(
        default_factory=list, description="Domains (the record's `domain`) whose prompts are meant to be refused."
    )


class RefusalConfig(StageConfig):
    """Tags responses that refuse (or drops them, `refusal:<pattern>`) and reports the benign-refusal rate per
    source and domain; see the README's "Quality gates". `refusal: tag` is short for `refusal: {action: tag}`."""

    action: Literal["tag", "drop"] = Field(
        "tag", description="tag: keep every record, with its `refusal` column; drop: drop records that refuse."
    )
    expected: ExpectedRefusals = Field(
        default_factory=ExpectedRefusals,
        description="Sources and domains whose prompts are meant to be refused; every other refusal is benign.",
    )
    max_benign_rate: float = Field(
        0.05, ge=0, le=1, description="The report warns where the benign-refusal rate is above this."
    )

    def check_sources(self, sources: list[str]) -> None:
        unknown = sorted(set(self.expected.sources) - set(sources))
        if unknown:
            raise ValueError(
                f"expected.sources names sources the recipe does not have: {', '.join(unknown)} "
                f"(its sources: {', '.join(sources)})"
            )

    @model_validator(mode="before")
    @classmethod
    def _bare_action(cls, value: Any) -> Any:
        return {"action": value} if isinstance(value, str) else value


class Refusal(RowLocalStage):
    name = "refusal"
    Config = RefusalConfig
    reads = ("regime", "source", "domain", "messages", "chosen")
    adds = (pa.field("refusal", REFUSAL),)

    def describe(self) -> dict:
        return {**super().describe(), "patterns": f"{PATTERNS_VERSION}:{PATTERNS_SHA}"}

    def process(self, batch: pa.RecordBatch) -> Outcome:
        responses = Responses.of(batch)
        named = refusal_patterns(responses.texts)
        rows = batch.num_rows
        judged = np.bincount(responses.record, minlength=rows) > 0
        refusing = np.flatnonzero(named >= 0)  # responses are in record then turn order: the first is the turn
        records, first = np.unique(responses.record[refusing], return_index=True)
        pattern = np.full(rows, None, object)
        pattern[records] = np.array(list(PATTERNS), object)[named[refusing[first]]]
        turn = np.zeros(rows, np.int32)
        turn[records] = responses.position[refusing[first]]
        refused = np.zeros(rows, bool)
        refused[records] = True
        column = pa.StructArray.from_arrays(
            [
                pa.array(refused),
                pa.array(pattern, pa.string()),
                pa.array(turn, pa.int32(), mask=~refused),
                pa.array(np.full(rows, PATTERNS_VERSION, object), pa.string()),
            ],
            fields=list(REFUSAL),
            mask=pa.array(~judged),
        )
        outcome = Outcome(batch.append_column(self.adds[0], column), tally=_tally(batch, judged, refused))
        if self.config.action == "drop" and len(records):
            outcome.drop = pa.array(
                np.where(refused, np.char.add(f"{Reason.refusal.value}:", pattern.astype(str)), None), pa.string()
            )
            outcome.detail = _details(responses, refusing[first], records, pattern, rows)
        return outcome

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        return refusal_report(tally, self.config)


def refusal_patterns(texts: pa.Array) -> np.ndarray:
    """Per response, the index in PATTERNS of the first pattern a sentence of its opening starts with (code blocks
    removed); -1 if none."""
    named = np.full(len(texts), -1, np.int64)
    opening = pc.replace_substring_regex(texts, _CODE_BLOCK, "")
    screen = OPENING + "(?:" + "|".join(f"(?:{p})" for p in PATTERNS.values()) + ")"
    flagged = np.flatnonzero(pc.match_substring_regex(opening, screen, ignore_case=True).to_numpy(False))
    if not len(flagged):
        return named
    opening = opening.take(pa.array(flagged))
    for i, pattern in reversed(list(enumerate(PATTERNS.values()))):  # the first pattern is written last, so wins
        hit = pc.match_substring_regex(opening, OPENING + pattern, ignore_case=True).to_numpy(zero_copy_only=False)
        named[flagged[hit]] = i
    return named


def _tally(batch: pa.RecordBatch, judged: np.ndarray, refused: np.ndarray) -> Tally:
    """("judged" | "refused", source, domain) -> records, over the judged records."""
    domain = pc.fill_null(batch["domain"], UNKNOWN_DOMAIN)
    table = pa.table({"source": batch["source"], "domain": domain, "refused": pa.array(refused)})
    counts = (
        table.filter(pa.array(judged))
        .group_by(["source", "domain"])
        .aggregate([("refused", "count"), ("refused", "sum")])
    )
    tally: Tally = Counter()
    for row in counts.to_pylist():
        tally["judged", row["source"], row["domain"]] += row["refused_count"]
        if row["refused_sum"]:
            tally["refused", row["source"], row["domain"]] += row["refused_sum"]
    return tally


def _details(responses: Responses, at: np.ndarray, records: np.ndarray, pattern: np.ndarray, rows: int) -> pa.Array:
    """Per refusing record: the turn, the pattern and the opening of the response, for a user to judge."""
    opening = pc.utf8_slice_codeunits(responses.texts.take(pa.array(at)), 0, 80).to_pylist()
    detail = np.full(rows, None, object)
    for record, turn, name, text in zip(records, responses.position[at], pattern[records], opening, strict=True):
        detail[record] = f"turn {turn} opens with a refusal ({name}, patterns v{PATTERNS_VERSION}): {text!r}"
    return pa.array(detail, pa.string())


def refusal_report(tally: Tally, config: RefusalConfig) -> dict:
    """Records judged and refused, and the rate, in total and per source and domain; the same for the benign ones
    (not in an expected source or domain); and a warning for each benign-refusal rate above max_benign_rate."""
    expected_sources, expected_domains = set(config.expected.sources), set(config.expected.domains)
    figures: dict[tuple[str, str], Counter] = {}
    for (what, source, domain), n in sorted(tally.items()):
        expected = source in expected_sources or domain in expected_domains
        for key in zip(KINDS, ("", source, domain), strict=True):
            counts = figures.setdefault(key, Counter())
            counts[what] += n
            if not expected:
                counts[f"benign_{what}"] += n
    entries = {key: _entry(counts) for key, counts in figures.items()}
    warnings = [
        f"benign-refusal rate {entry['benign_rate']:.2%} of {'all records' if kind == 'total' else f'{kind} {name}'} "
        f"({entry['benign_refused']} of {entry['benign_judged']}) is above max_benign_rate {config.max_benign_rate:g}"
        for (kind, name), entry in sorted(entries.items(), key=lambda item: (KINDS.index(item[0][0]), item[0][1]))
        if entry["benign_rate"] is not None and entry["benign_rate"] > config.max_benign_rate
    ]
    total = entries.get(("total", ""), _entry(Counter()))
    return {
        "patterns_version": PATTERNS_VERSION,
        "summary": _summary(total),
        "total": total,
        "by_source": {name: entry for (kind, name), entry in sorted(entries.items()) if kind == "source"},
        "by_domain": {name: entry for (kind, name), entry in sorted(entries.items()) if kind == "domain"},
        "warnings": warnings,
    }


def _entry(counts: Counter) -> dict:
    judged, refused = counts["judged"], counts["refused"]
    benign_judged, benign_refused = counts["benign_judged"], counts["benign_refused"]
    return {
        "judged": judged,
        "refused": refused,
        "rate": round(refused / judged, 6) if judged else None,
        "benign_judged": benign_judged,
        "benign_refused": benign_refused,
        "benign_rate": round(benign_refused / benign_judged, 6) if benign_judged else None,
    }


def _summary(total: dict) -> str:
    """The report's line for the build's output: the refusal and benign-refusal rates over all judged records."""
    benign = f"{total['benign_rate']:.2%}" if total["benign_rate"] is not None else "n/a"
    return (
        f"refusals (patterns v{PATTERNS_VERSION}): {total['refused']} of {total['judged']} responses "
        f"judged; benign-refusal rate {benign} ({total['benign_refused']} of {total['benign_judged']})"
    )
