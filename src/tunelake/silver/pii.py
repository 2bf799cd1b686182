"""PII: find e-mail addresses, phone numbers, IP addresses, credit card numbers and secrets in every message, and
redact them (or drop the record); a row-local stage.

Every turn's content is screened at once by one RE2 pattern (Arrow's regex kernels); only the few turns it flags
go through Python, where each candidate is confirmed (a card number by its Luhn check digit and length, a
high-entropy token by its entropy and mix of characters) and replaced by a placeholder such as `<EMAIL>`. The
patterns are written in the syntax RE2 and Python's `re` share, ASCII only, so the screen flags every turn the
redactor would change.

A redacted record's `id` and `prompt_id` are computed again from its new content, so two rows that differ only in
a redacted address are exact duplicates. The original text stays in bronze only; each redacted record gets a
ledger `modify` row counting what was redacted, by type, and naming its id before. The RL `answer` (a gold answer)
and tool-call arguments are not screened.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.schema import Reason
from tunelake.silver.identify import encode_lists, prompt_ids, record_ids
from tunelake.silver.turns import MESSAGE_LISTS, Turns
from tunelake.stage import Outcome, RowLocalStage, StageConfig

PiiType = Literal["secret", "email", "credit_card", "ip", "phone"]
TYPES: tuple[PiiType, ...] = ("secret", "email", "credit_card", "ip", "phone")  # the order they are redacted in
PLACEHOLDER = {t: f"<{t.upper()}>" for t in TYPES}  # <SECRET>, <EMAIL>, <CREDIT_CARD>, <IP>, <PHONE>
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Well-known key formats: AWS, GitHub, OpenAI, Slack, Google, Stripe, PEM private keys, JWTs.
_KNOWN_KEYS = (
    r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[rs]k_live_[0-9A-Za-z]{24,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)
PATTERNS: dict[PiiType, str] = {
    # A known key format, or any long run of token characters, kept only if it looks random (see _random).
    "secret": _KNOWN_KEYS + r"|[A-Za-z0-9+/_=-]{32,}",
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "credit_card": r"\b[0-9](?:[ -]?[0-9]){12,18}\b",
    "ip": rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b",
    # North American numbers with separators (a bare run of ten digits is more often a number than a phone), or
    # any number written with its + country code; 8 to 15 digits either way (see _phone).
    "phone": r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{2,4}\)[ .-]?|\b[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}\b"
    r"|\+[0-9]{1,3}(?:[ .-]?[0-9]{1,4}){2,5}\b",
}
_KNOWN_KEY = re.compile(_KNOWN_KEYS, re.ASCII)
MIN_ENTROPY = 4.5  # bits per character: random base64 has ~6, English words and hex digests (<= 4) have less
PII_COUNTS = pa.struct([(t, pa.int32()) for t in TYPES])


class PiiConfig(StageConfig):
    """Redacts (or drops records holding) e-mail addresses, phone numbers, IP addresses, credit card numbers and
    secrets in every message; see the README's "Quality gates"."""

    action: Literal["redact", "drop"] = Field(
        "redact", description="redact: replace each with a placeholder such as <EMAIL>; drop: drop the record."
    )
    types: list[PiiType] = Field(default_factory=lambda: list(TYPES), description="What to find.")


class Pii(RowLocalStage):
    name = "pii"
    version = "1"
    Config = PiiConfig
    reads = MESSAGE_LISTS
    adds = (pa.field("pii", PII_COUNTS),)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        types = [t for t in TYPES if t in self.config.types]
        screen = "|".join(f"(?:{PATTERNS[t]})" for t in types)
        found = np.zeros((batch.num_rows, len(TYPES)), np.int32)
        columns = {}
        for name in MESSAGE_LISTS:
            turns = Turns.of(batch[name])
            content = turns.fields["content"]
            flagged = np.flatnonzero(pc.match_substring_regex(content, screen).fill_null(False).to_numpy(False))
            if not len(flagged):
                continue
            texts = content.take(pa.array(flagged)).to_pylist()
            redacted = []
            for at, text in zip(flagged, texts, strict=True):
                text, counts = redact(text, types)
                redacted.append(text)
                for kind, n in counts.items():
                    found[turns.record[at], TYPES.index(kind)] += n
            new = pc.replace_with_mask(content, _mask(len(content), flagged), pa.array(redacted, pa.string()))
            columns[name] = turns.replaced(content=new)
        counts = pa.StructArray.from_arrays([pa.array(column) for column in found.T], fields=list(PII_COUNTS))
        hit = found.sum(axis=1) > 0
        if self.config.action == "drop":
            first = np.array([f"{Reason.pii.value}:{t}" for t in TYPES], object)[(found > 0).argmax(axis=1)]
            return Outcome(
                batch.append_column(self.adds[0], counts),
                drop=pa.array(np.where(hit, first, None), pa.string()),
                detail=_summary(found, hit, None),
            )
        rows = _reidentified(batch, columns, hit)
        return Outcome(rows.append_column(self.adds[0], counts), modified=_summary(found, hit, batch["id"]))


def redact(text: str, types: list[PiiType]) -> tuple[str, Counter]:
    """The text with every confirmed item of these types replaced by its placeholder, and how many of each."""
    counts: Counter = Counter()
    for kind in types:
        text = _COMPILED[kind].sub(_replacer(kind, counts), text)
    return text, counts


def _replacer(kind: PiiType, counts: Counter) -> Callable[[re.Match], str]:
    confirm = _CONFIRM.get(kind, lambda _: True)

    def replace(match: re.Match) -> str:
        if not confirm(match):
            return match.group()
        counts[kind] += 1
        return PLACEHOLDER[kind]

    return replace


def _card(match: re.Match) -> bool:
    """A card number: 13 to 19 digits whose Luhn check digit is right, and not the digits of a decimal fraction
    (0.9381531715393066 passes Luhn)."""
    text, start, end = match.string, match.start(), match.end()
    fraction = text[end : end + 1] in (".", ",") and text[end + 1 : end + 2].isdigit()
    if text[start - 1 : start] in (".", ",") or fraction:
        return False
    digits = [int(c) for c in match.group() if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _phone(match: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in match.group()) <= 15  # E.164 numbers have at most 15 digits


def _random(match: re.Match) -> bool:
    """A secret: a known key format, or a token with letters of both cases and digits whose characters carry at
    least MIN_ENTROPY bits each (a word, a path or a hex digest does not)."""
    candidate = match.group()
    if _KNOWN_KEY.fullmatch(candidate):
        return True
    if not (re.search("[a-z]", candidate) and re.search("[A-Z]", candidate) and re.search("[0-9]", candidate)):
        return False
    counts = Counter(candidate).values()
    entropy = -sum(c / len(candidate) * math.log2(c / len(candidate)) for c in counts)
    return entropy >= MIN_ENTROPY


_COMPILED = {kind: re.compile(pattern, re.ASCII) for kind, pattern in PATTERNS.items()}
_CONFIRM: dict[str, Callable[[re.Match], bool]] = {"credit_card": _card, "phone": _phone, "secret": _random}


def _mask(length: int, where: np.ndarray) -> pa.Array:
    mask = np.zeros(length, bool)
    mask[where] = True
    return pa.array(mask)


def _reidentified(batch: pa.RecordBatch, columns: dict[str, pa.Array], hit: np.ndarray) -> pa.RecordBatch:
    """The batch with its redacted message columns, and the id and prompt id of each redacted record anew."""
    if not hit.any():
        return batch
    for name, column in columns.items():
        batch = batch.set_column(batch.schema.get_field_index(name), batch.schema.field(name), column)
    changed = batch.filter(pa.array(hit))
    mask = pa.array(hit)
    for name, values in (("id", record_ids(changed, encode_lists(changed))), ("prompt_id", prompt_ids(changed))):
        at = batch.schema.get_field_index(name)
        batch = batch.set_column(at, batch.schema.field(name), pc.replace_with_mask(batch[name], mask, values))
    return batch


def _summary(found: np.ndarray, hit: np.ndarray, ids: pa.Array | None) -> pa.Array:
    """Per record with PII: what was found, by type (and, for a redaction, the id it had before)."""
    out = np.full(len(hit), None, object)
    before = ids.to_pylist() if ids is not None else None
    for i in np.flatnonzero(hit):
        what = ", ".join(f"{t} {n}" for t, n in zip(TYPES, found[i], strict=True) if n)
        out[i] = f"redacted {what}; id was {before[i]}" if before is not None else what
    return pa.array(out, pa.string())
