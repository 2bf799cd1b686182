"""Reading a final answer out of a completion: the last \\boxed{}, a GSM8K '####' line, an 'answer is' phrase."""

from __future__ import annotations

import re
from fractions import Fraction

from tunelake.ingest.adapters.rl import last_boxed

# Phrases models close with; the last one in a completion wins.
_ANSWER_PHRASE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)
# Surrounding characters that carry no answer: spaces, closing punctuation, quotes, emphasis and math delimiters.
_WRAPPING = " \t\r\n.,;:!?\"'`*$\u201c\u201d\u2018\u2019"
# A number: thousands separators only between groups of three, optional sign, decimals, exponent, or a fraction.
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)}\]])[-+\u2212])?"
    r"(?:\\d?frac\{(?P<fnum>\d+)\}\{(?P<fden>\d+)\}"
    r"|(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE](?P<exp>[-+]?\d+))?(?:\s*/\s*(?P<den>\d+))?)"
)


def final_answer(text: str) -> str:
    """The answer a completion closes with: the last \\boxed{}, else after the last '####', else after the last
    'answer is' / 'Answer:' (to the end of its line), else the whole text; surrounding punctuation stripped."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(_WRAPPING)
    head, sep, tail = text.rpartition("####")
    if sep:
        return tail.strip().split("\n", 1)[0].strip(_WRAPPING)
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases:
        return phrases[-1].strip(_WRAPPING)
    return text.strip(_WRAPPING)


def normalised(text: str) -> str:
    """Case folded, runs of whitespace made one space, surrounding punctuation and quotes stripped."""
    return " ".join(text.casefold().split()).strip(_WRAPPING)


def last_number(text: str) -> Fraction | None:
    """The last number in a text, exactly ("2,125" -> 2125, "1/4" and "\\frac{1}{4}" -> 1/4, "-3.5e2" -> -350)."""
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    found = matches[-1]
    if found["fnum"] is not None:
        value = Fraction(int(found["fnum"]), int(found["fden"])) if int(found["fden"]) else None
    else:
        value = Fraction(found["num"].replace(",", "")) * Fraction(10) ** int(found["exp"] or 0)
        if found["den"] is not None:
            value = value / int(found["den"]) if int(found["den"]) else None
    if value is None:
        return None
    return -value if found["sign"] in ("-", "\u2212") else value


def shown(text: str, limit: int = 60) -> str:
    """A text cut for a reason line."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "\u2026")
