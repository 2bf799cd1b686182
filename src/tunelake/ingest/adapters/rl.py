"""RL prompt-bank formats: GSM8K, MATH, HumanEval, MBPP, and a generic prompt/answer/verifier form.

GSM8K and MATH can also be read as SFT (the worked solution becomes the assistant turn).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.arrow import Columnar, Columns, constant, messages, present, strings, strip
from tunelake.ingest.adapters.messages import (
    as_json,
    chat_messages,
    message,
    optional_number,
    optional_text,
    string_list,
    text_field,
)
from tunelake.schema import Reason, Regime, Rejected

# A GSM8K gold number: digits (commas only between groups of three), an optional sign and decimals. ASCII digits
# only: the same pattern is RE2's in gsm8k_columns, where \d is ASCII.
_NUMBER = r"-?([0-9]{1,3}(,[0-9]{3})+|[0-9]+)(\.[0-9]+)?"


def gsm8k_answer(solution: str) -> str:
    """The gold number after the last '####', without thousands separators ("1,080" -> "1080")."""
    head, sep, tail = solution.rpartition("####")
    tail = tail.strip()
    if not sep or not tail:
        raise Rejected(Reason.missing_answer, "answer", "expected a final line '#### <number>'")
    if not re.fullmatch(_NUMBER, tail):
        raise Rejected(Reason.missing_answer, "answer", f"expected a number after the last '####', got {tail!r}")
    return tail.replace(",", "")


def gsm8k(row: dict, regime: Regime) -> dict:
    question, solution = text_field(row, "question"), text_field(row, "answer")
    if regime == Regime.sft:
        return {"messages": [message("user", question), message("assistant", solution)], "domain": "math"}
    return {
        "prompt": [message("user", question)],
        "answer": gsm8k_answer(solution),
        "verifier": "numeric",
        "domain": "math",
        "meta": {"solution": solution},
    }


_AFTER_LAST_MARK = r"(?s)^.*####(?P<tail>.*)$"  # greedy: the text after the last '####', as rpartition


def gsm8k_columns(table: pa.Table) -> Columns:
    """gsm8k() for a whole chunk, in the RL regime."""
    question, solution = table["question"].combine_chunks(), table["answer"].combine_chunks()
    tail = strip(pc.struct_field(pc.extract_regex(solution, _AFTER_LAST_MARK), [0]))
    number = pc.match_substring_regex(tail, f"^(?:{_NUMBER})$").fill_null(False).to_numpy(zero_copy_only=False)
    rows = len(question)
    fields = {
        "prompt": messages(["user"], [question]),
        "answer": pc.replace_substring(tail, ",", ""),
        "verifier": constant("numeric", rows),
        "domain": constant("math", rows),
    }
    return Columns(fields, {"solution": solution}, present(question, solution) & number)


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (or \\fbox{...}) in a solution, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


_LEVELS = {**{n: n for n in range(1, 6)}, **{str(n): n for n in range(1, 6)}}


def _level(row: dict) -> float | None:
    """MATH's level ("Level 3"; 3 in MATH-500) over the top level, 5; None for any other value (it stays in meta)."""
    level = row.get("level")
    if isinstance(level, str):
        level = level.removeprefix("Level ")
    elif isinstance(level, bool) or not isinstance(level, int):
        return None
    return _LEVELS[level] / 5 if level in _LEVELS else None


def math(row: dict, regime: Regime) -> dict:
    problem, solution = text_field(row, "problem"), text_field(row, "solution")
    meta = {"subject": row.get("subject"), "level": row.get("level"), "unique_id": row.get("unique_id")}
    if regime == Regime.sft:
        return {"messages": [message("user", problem), message("assistant", solution)], "domain": "math", "meta": meta}
    answer = last_boxed(solution)
    if answer is None:
        raise Rejected(Reason.missing_answer, "solution", "expected a \\boxed{...} answer in the solution")
    meta |= {"solution": solution, "given_answer": row.get("answer")}
    return {
        "prompt": [message("user", problem)],
        "answer": answer,
        "verifier": "math",
        "domain": "math",
        "difficulty": _level(row),
        "meta": meta,
    }


def humaneval(row: dict, regime: Regime) -> dict:
    prompt = text_field(row, "prompt")
    config = {"prompt": prompt, "test": text_field(row, "test"), "entry_point": text_field(row, "entry_point")}
    return {
        "prompt": [message("user", prompt)],
        "answer": text_field(row, "canonical_solution"),
        "verifier": "python_tests",
        "verifier_config": as_json(config, "verifier_config"),
        "domain": "code",
        "meta": {"task_id": row.get("task_id")},
    }


def mbpp(row: dict, regime: Regime) -> dict:
    """MBPP (`text`) and sanitized MBPP (`prompt`); the prompt lists the tests, as the MBPP paper does."""
    task = text_field(row, "text" if "text" in row else "prompt")
    tests = string_list(row, "test_list")
    setup = optional_text(row, "test_setup_code") or "\n".join(string_list(row, "test_imports", required=False))
    config = {"test_list": tests, "test_setup_code": setup}
    user = f"{task} Your code should pass these tests:\n\n" + "\n".join(tests)
    return {
        "prompt": [message("user", user)],
        "answer": text_field(row, "code"),
        "verifier": "python_tests",
        "verifier_config": as_json(config, "verifier_config"),
        "domain": "code",
        "meta": {"task_id": row.get("task_id")},
    }


def generic_rl(row: dict, regime: Regime) -> dict:
    prompt = row["prompt"]
    prompt = [message("user", prompt)] if isinstance(prompt, str) else chat_messages(prompt, "prompt")
    return {
        "prompt": prompt,
        "answer": _gold(row),
        "verifier": text_field(row, "verifier"),
        "verifier_config": as_json(row.get("verifier_config"), "verifier_config"),
        "domain": optional_text(row, "domain"),
        "difficulty": optional_number(row, "difficulty"),
    }


def _gold(row: dict) -> str | None:
    """The gold answer as text: a string, or a number as its JSON text (GSM8K-like 18 -> "18"). A list, object or
    boolean is a Rejected: as JSON text it would be compared to a rollout's answer as if it were one."""
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float | None):
        raise Rejected(Reason.wrong_type, "answer", f"expected a string or a number, got {type(answer).__name__}")
    return as_json(answer, "answer")


ADAPTERS = [
    Adapter(
        "gsm8k",
        (Regime.rl, Regime.sft),
        frozenset({"question", "answer"}),
        gsm8k,
        frozenset({"question", "answer"}),
        matches=lambda r: isinstance(r["answer"], str) and "####" in r["answer"],
        columnar=Columnar(strings("question", "answer"), (Regime.rl,), gsm8k_columns),
    ),
    Adapter(
        "math",
        (Regime.rl, Regime.sft),
        frozenset({"problem", "solution"}),
        math,
        frozenset({"problem", "solution", "answer", "level", "subject", "unique_id"}),
    ),
    Adapter(
        "humaneval",
        (Regime.rl,),
        frozenset({"task_id", "prompt", "canonical_solution", "test", "entry_point"}),
        humaneval,
        frozenset({"task_id", "prompt", "canonical_solution", "test", "entry_point"}),
    ),
    Adapter(
        "mbpp",
        (Regime.rl,),
        frozenset({"code", "test_list"}),
        mbpp,
        frozenset({"text", "prompt", "code", "test_list", "test_setup_code", "test_imports", "task_id"}),
        matches=lambda r: "text" in r or "prompt" in r,
    ),
    Adapter(
        "rl",
        (Regime.rl,),
        frozenset({"prompt", "answer", "verifier"}),
        generic_rl,
        frozenset({"prompt", "answer", "verifier", "verifier_config", "domain", "difficulty"}),
    ),
]
