"""The `math` verifier: HF math-verify, gold parsed first, its signal timeouts off (the worker is the timeout)."""

from __future__ import annotations

import functools

from math_verify import parse, verify
from pydantic import BaseModel, ConfigDict, Field

from tunelake.rl.answers import shown
from tunelake.rl.verdict import Verdict, Verifier, ok, unparsable, wrong


class MathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    float_rounding: int = Field(6, ge=0, description="Decimal places floats are rounded to before they are compared")
    strict: bool = Field(
        True, description="math-verify's strict mode: variables must match, a bare number is not an equation's value"
    )


@functools.lru_cache(maxsize=1024)  # a group's completions share their gold: it is parsed once per worker
def _target(gold: str) -> list:
    # A bare gold ("\frac{\sqrt3}{3}", as MATH's last \boxed{} leaves it) has no delimiters for math-verify's LaTeX
    # extraction to find: boxing it makes it read as the gold it is.
    return parse(gold if "\\boxed" in gold else f"\\boxed{{{gold}}}", parsing_timeout=None)


def math(gold: str, completion: str, config: MathConfig) -> Verdict:
    target = _target(gold)
    if not target:
        return unparsable(f"math-verify cannot read the gold {shown(gold)}")
    answer = parse(completion, parsing_timeout=None)
    if not answer:
        return unparsable("math-verify finds no answer in the completion")
    if verify(target, answer, float_rounding=config.float_rounding, strict=config.strict, timeout_seconds=None):
        return ok()
    return wrong(f"answer {shown(str(answer[-1]))} is not the gold {shown(gold)}")


MATH = Verifier("math", "1", MathConfig, math)
