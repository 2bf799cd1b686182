"""The verifiers that read an answer as text: exact_match, numeric, multiple_choice, regex, json_schema."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelake.rl.answers import final_answer, last_number, normalised, shown
from tunelake.rl.verdict import Verdict, Verifier, ok, unparsable, wrong


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactMatchConfig(_Config):
    extract: bool = Field(
        True, description="Compare the final answer (last \\boxed{}, '####' line, 'answer is ...'), not the whole text"
    )


def exact_match(gold: str, completion: str, config: ExactMatchConfig) -> Verdict:
    answer = final_answer(completion) if config.extract else completion
    if not answer.strip():
        return unparsable("no answer in the completion")
    if normalised(answer) == normalised(final_answer(gold) if config.extract else gold):
        return ok()
    return wrong(f"answer {shown(answer)} is not the gold {shown(gold)}")


class NumericConfig(_Config):
    tolerance: float = Field(1e-6, ge=0, description="Absolute tolerance: |answer - gold| <= tolerance is right")
    rel_tolerance: float = Field(0.0, ge=0, description="Relative tolerance, a share of |gold| (0.01 = 1%)")


def numeric(gold: str, completion: str, config: NumericConfig) -> Verdict:
    expected = last_number(final_answer(gold))
    if expected is None:
        return unparsable(f"no number in the gold {shown(gold)}")
    answer = last_number(final_answer(completion))
    if answer is None:
        return unparsable("no number in the completion's final answer")
    # Exact rationals: 0.1 + 0.2 style float error never decides a verdict.
    if abs(answer - expected) <= max(config.tolerance, config.rel_tolerance * abs(expected)):
        return ok()
    return wrong(f"{float(answer):g} is not the gold {float(expected):g}")


class MultipleChoiceConfig(_Config):
    options: list[str] = Field(
        default_factory=list, description="The option texts in letter order (A, B, ...); an answer may give the text"
    )

    @field_validator("options")
    @classmethod
    def _at_most_five(cls, options: list[str]) -> list[str]:
        if len(options) > 5:
            raise ValueError(f"expected at most 5 options (A-E), got {len(options)}")
        return options


_LETTER = re.compile(r"\(?([A-E])\)?(?:[.:)]|\s*$)")


def _choice(text: str, config: MultipleChoiceConfig) -> str | None:
    """The letter a text picks: a lone letter ("B", "(B)", "B.", "B) text"), or one option's text."""
    answer = final_answer(text)
    letters = "ABCDE"[: len(config.options) or 5]
    picked = _LETTER.match(answer)
    if picked and picked[1] in letters:
        return picked[1]
    texts = {normalised(option): letter for letter, option in zip(letters, config.options, strict=False)}
    return texts.get(normalised(answer))


def multiple_choice(gold: str, completion: str, config: MultipleChoiceConfig) -> Verdict:
    expected = _choice(gold, config)
    if expected is None:
        return unparsable(f"the gold {shown(gold)} names no option")
    answer = _choice(completion, config)
    if answer is None:
        return unparsable("the final answer names no option (a letter A-E or an option's text)")
    return ok() if answer == expected else wrong(f"chose {answer}, the gold is {expected}")


# Python's re backtracks: a long answer against a nested quantifier can take exponential time. The worker's hard
# timeout bounds it; the cap keeps ordinary calls far from it.
MAX_REGEX_ANSWER = 10_000


class RegexConfig(_Config):
    pattern: str = Field(description="A Python regular expression the final answer must match in full")
    extract: bool = Field(True, description="Match the final answer (as exact_match reads it), not the whole text")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"expected a Python regular expression: {error}") from None
        return pattern


def regex(gold: str, completion: str, config: RegexConfig) -> Verdict:
    answer = (final_answer(completion) if config.extract else completion).strip()
    if not answer:
        return unparsable("no answer in the completion")
    if len(answer) > MAX_REGEX_ANSWER:
        return unparsable(f"answer of {len(answer):,} characters, over the {MAX_REGEX_ANSWER:,} a pattern may scan")
    if re.fullmatch(config.pattern, answer):
        return ok("matches the pattern")
    return wrong(f"answer {shown(answer)} does not match {shown(config.pattern)}")


class JsonSchemaConfig(_Config):
    json_schema: dict[str, Any] = Field(
        alias="schema", description="The JSON Schema (draft 2020-12 unless it says $schema) the answer must satisfy"
    )

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"expected a valid JSON Schema: {error.message}") from None
        return schema


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def json_schema(gold: str, completion: str, config: JsonSchemaConfig) -> Verdict:
    """The gold is not read: the schema is the specification (a gold instance may serve to prove the schema)."""
    fenced = _FENCE.findall(completion)
    text = fenced[-1] if fenced else completion
    try:
        instance = orjson.loads(text.strip())
    except orjson.JSONDecodeError as error:
        return unparsable(f"the answer is not JSON: {error}")
    validator = jsonschema.validators.validator_for(config.json_schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(validator(config.json_schema).iter_errors(instance))
    if error is None:
        return ok("satisfies the schema")
    where = "/".join(str(part) for part in error.absolute_path) or "the top level"
    return wrong(f"at {where}: {error.message[:120]}")


TEXT_VERIFIERS = (
    Verifier("exact_match", "1", ExactMatchConfig, exact_match),
    Verifier("numeric", "1", NumericConfig, numeric),
    Verifier("multiple_choice", "1", MultipleChoiceConfig, multiple_choice),
    Verifier("regex", "1", RegexConfig, regex),
    Verifier("json_schema", "1", JsonSchemaConfig, json_schema),
)
