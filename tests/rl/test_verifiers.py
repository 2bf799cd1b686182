"""The built-in verifiers on real GSM8K / MATH rows and on small hand-written edges, run in process."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import FIXTURES
from tunelake import schema
from tunelake.ingest.adapters.rl import gsm8k_answer, last_boxed
from tunelake.rl.code_verifier import PYTHON_TESTS
from tunelake.rl.composite import COMPOSITE
from tunelake.rl.math_verifier import MATH
from tunelake.rl.text_verifiers import TEXT_VERIFIERS
from tunelake.rl.verifiers import VERIFIERS, ConfigError, Status, check, config_of

REAL = FIXTURES / "real"


def real_rows(name: str) -> list[dict]:
    return [orjson.loads(line) for line in (REAL / name).read_text().splitlines()]


def test_every_built_in_verifier_is_a_name_records_may_carry():
    built_in = {verifier.name for verifier in (*TEXT_VERIFIERS, MATH, PYTHON_TESTS)}
    assert built_in <= set(VERIFIERS)  # beside any a plugin registered
    assert set(schema.VERIFIERS) == built_in | {COMPOSITE}  # several of them, weighted (rl/composite.py)
    assert all(VERIFIERS[name].version for name in built_in)


@pytest.mark.parametrize("row", real_rows("gsm8k_test_sample.jsonl"), ids=lambda r: gsm8k_answer(r["answer"]))
def test_numeric_accepts_gsm8k_solutions_and_rejects_an_off_by_one(row):
    gold = gsm8k_answer(row["answer"])  # 2,125 / 114,200 / -10 among them
    assert check("numeric", gold, row["answer"]).status == Status.ok
    wrong = check("numeric", gold, f"So the total is {int(gold) + 1}.")
    assert (wrong.status, wrong.score) == (Status.wrong, 0.0)


@pytest.mark.parametrize(
    ("completion", "status"),
    [
        ("The answer is $1,000.00.", Status.ok),
        ("so we get \\boxed{1000}", Status.ok),
        ("#### 1000\nThat took a while, 3 steps.", Status.ok),  # the #### line wins over later numbers
        ("We get 999.9999999", Status.ok),  # within the default absolute tolerance 1e-6
        ("We get 999.99", Status.wrong),
        ("I cannot say.", Status.unparsable),
    ],
)
def test_numeric_reads_the_final_number(completion, status):
    assert check("numeric", "1000", completion).status == status


def test_numeric_relative_tolerance():
    assert check("numeric", "1000", "990", {"rel_tolerance": 0.01}).status == Status.ok
    assert check("numeric", "1000", "989", {"rel_tolerance": 0.01}).status == Status.wrong
    assert check("numeric", "1/3", "\\frac{1}{3}", {"tolerance": 0}).status == Status.ok


@pytest.mark.parametrize("row", real_rows("math_test_sample.jsonl"), ids=lambda r: r["unique_id"])
def test_math_accepts_the_reference_solution_against_its_bare_gold(row):
    # 3243 and 567 box two forms of one answer; 4111's gold has nested braces.
    verdict = check("math", last_boxed(row["solution"]), row["solution"])
    assert verdict == check("math", row["answer"], row["solution"])
    assert verdict.status == Status.ok, verdict.reason


def test_math_equivalent_forms_and_a_wrong_one():
    gold = last_boxed(real_rows("math_test_sample.jsonl")[0]["solution"])  # \frac{\sqrt{3}}{3}
    assert check("math", gold, "So it is $\\boxed{\\frac{1}{\\sqrt{3}}}$.").status == Status.ok
    assert check("math", gold, "So it is $\\boxed{\\frac{\\sqrt{2}}{3}}$.").status == Status.wrong
    assert check("math", gold, "no idea").status == Status.unparsable


@pytest.mark.parametrize(
    ("gold", "completion", "status"),
    [
        ("Paris", "The answer is: paris.", Status.ok),
        ("New York", "**new   york**", Status.ok),
        ("Paris", "Lyon", Status.wrong),
        ("Paris", "  ...  ", Status.unparsable),
    ],
)
def test_exact_match_normalises_case_spacing_and_punctuation(gold, completion, status):
    assert check("exact_match", gold, completion).status == status


@pytest.mark.parametrize(
    ("completion", "status"),
    [
        ("The answer is (B).", Status.ok),
        ("B", Status.ok),
        ("Answer: blue", Status.ok),  # the option's text
        ("The answer is C", Status.wrong),
        ("The answer is E", Status.unparsable),  # only three options
        ("I like colours", Status.unparsable),
    ],
)
def test_multiple_choice_reads_a_letter_or_an_option_text(completion, status):
    assert check("multiple_choice", "B", completion, {"options": ["red", "blue", "green"]}).status == status


def test_regex_must_match_the_whole_final_answer():
    config = {"pattern": r"\d{4}-\d{2}-\d{2}"}
    assert check("regex", "", "Answer: 2024-01-05", config).status == Status.ok
    assert check("regex", "", "Answer: 2024-01-05 or so", config).status == Status.wrong
    assert check("regex", "", "Answer: " + "1" * 20_000, config).status == Status.unparsable


def test_json_schema_validates_the_answer():
    config = {"schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    assert check("json_schema", "", 'Here:\n```json\n{"n": 3}\n```', config).status == Status.ok
    wrong = check("json_schema", "", '{"n": "3"}', config)
    assert wrong.status == Status.wrong and "at n" in wrong.reason
    assert check("json_schema", "", "{n: 3}", config).status == Status.unparsable


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("numeric", '{"tolerance": -1}', "tolerance"),
        ("numeric", '{"tolarance": 0}', "tolarance"),
        ("regex", {"pattern": "("}, "regular expression"),
        ("json_schema", {"schema": {"type": "nope"}}, "valid JSON Schema"),
        ("multiple_choice", "[1]", "JSON object"),
        ("llm_judge", None, "unknown verifier"),
    ],
)
def test_a_bad_config_is_an_error_that_names_it(name, config, message):
    with pytest.raises(ConfigError, match=message):
        config_of(name, config)
