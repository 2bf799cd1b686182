"""python_tests: a completion's code run against the record's tests in the sandbox (rl/sandbox.py).

The tests come from the record's verifier_config as the code adapters write it: HumanEval's `test` (a
`check(candidate)`) with its `entry_point` and `prompt` (the signature a completion may continue), or MBPP's
`test_list` of asserts with `test_setup_code`. The program and all its tests run as one file in one sandboxed
process. A completion in a fenced code block is read from its first block; one that does not define the entry
point continues the prompt, as HumanEval's canonical solutions do.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelake.rl.sandbox import Limits, run_tests
from tunelake.rl.verdict import Status, Verdict, Verifier, ok, wrong

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


class PythonTestsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = Field(None, description="HumanEval: the signature and docstring a completion may continue")
    test: str | None = Field(None, description="HumanEval: a check(candidate) function")
    entry_point: str | None = Field(None, description="HumanEval: the function check() is called with")
    test_list: list[str] = Field(default_factory=list, description="MBPP: asserts, run in order")
    test_setup_code: str = Field("", description="MBPP: code run before the asserts")
    limits: Limits = Field(default_factory=Limits, description="What the program with its tests may use")

    @model_validator(mode="after")
    def _some_tests(self) -> PythonTestsConfig:
        if not self.test_list and not (self.test and self.entry_point):
            raise ValueError("expected tests: `test_list` (MBPP), or `test` with `entry_point` (HumanEval)")
        return self


def program_of(completion: str, config: PythonTestsConfig) -> str:
    """The code to run: the first fenced block of the completion, else all of it; a HumanEval completion that does
    not define the entry point continues the prompt."""
    fenced = _FENCE.search(completion)
    code = fenced.group(1) if fenced else completion
    if config.entry_point and config.prompt and not re.search(rf"\bdef\s+{re.escape(config.entry_point)}\s*\(", code):
        return config.prompt + code
    return code


def tests_of(config: PythonTestsConfig) -> str:
    if config.test_list:
        return "\n".join([config.test_setup_code, *config.test_list])
    return f"{config.test}\ncheck({config.entry_point})"


def python_tests(gold: str, completion: str, config: PythonTestsConfig) -> Verdict:
    result = run_tests(program_of(completion, config), tests_of(config), limits=config.limits)
    if result.status == "ok" and result.passed:
        return ok("passes its tests")
    if result.status == "timeout":
        return Verdict(0.0, Status.timeout, result.reason)
    if result.status == "infra_error":
        return Verdict(0.0, Status.infra_error, result.reason)
    return wrong(result.reason)


PYTHON_TESTS = Verifier("python_tests", "1", PythonTestsConfig, python_tests)
