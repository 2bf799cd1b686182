"""RL prompt-bank formats: GSM8K, MATH, HumanEval, MBPP, and a generic prompt/answer/verifier form.

GSM8K and MATH can also be read as SFT (the worked solution becomes the assistant turn).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.arrow import Columnar, Columns, blank, constant, messages, present, strings, strip
from tunelake.ingest.adapters.messages import as_json, chat_messages, list_field, message, optional_text, text_field
from tunelake.schema import Reason, Regime, Rejected


def gsm8k_answer(solution: str) -> str:
    """The gold number after the last '####', without thousands separators ("1,080" -> "1080")."""
    head, sep, tail = solution.rpartition("####")
    if not sep or not tail.strip():
        raise Rejected(Reason.missing_answer, "answer", "expected a final line '#### <number>'")
    return tail.strip().replace(",", "")


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
    tail = pc.struct_field(pc.extract_regex(solution, _AFTER_LAST_MARK), [0])
    rows = len(question)
    fields = {
        "prompt": messages(["user"], [question]),
        "answer": pc.replace_substring(strip(tail), ",", ""),
        "verifier": constant("numeric", rows),
        "domain": constant("math", rows),
    }
    return Columns(fields, {"solution": solution}, present(question, solution) & ~blank(tail))


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


def _level(row: dict) -> float | None:
    level = row.get("level")
    if isinstance(level, str) and level.removeprefix("Level ").isdigit():
        level = int(level.removeprefix("Level "))
    return level / 5 if isinstance(level, int) and not isinstance(level, bool) else None


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
        "verifier_config": as_json(config),
        "domain": "code",
        "meta": {"task_id": row.get("task_id")},
    }


def mbpp(row: dict, regime: Regime) -> dict:
    """MBPP (`text`) and sanitized MBPP (`prompt`); the prompt lists the tests, as the MBPP paper does."""
    task = text_field(row, "text" if "text" in row else "prompt")
    tests = list_field(row, "test_list")
    if not all(isinstance(t, str) for t in tests):
        raise Rejected(Reason.wrong_type, "test_list", "expected a list of assert strings")
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    config = {"test_list": tests, "test_setup_code": setup}
    user = f"{task} Your code should pass these tests:\n\n" + "\n".join(tests)
    return {
        "prompt": [message("user", user)],
        "answer": text_field(row, "code"),
        "verifier": "python_tests",
        "verifier_config": as_json(config),
        "domain": "code",
        "meta": {"task_id": row.get("task_id")},
    }


def generic_rl(row: dict, regime: Regime) -> dict:
    prompt = row["prompt"]
    prompt = [message("user", prompt)] if isinstance(prompt, str) else chat_messages(prompt, "prompt")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = as_json(answer)  # numbers and lists are kept as their JSON text
    difficulty = row.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool) or not isinstance(difficulty, int | float)):
        raise Rejected(Reason.wrong_type, "difficulty", f"expected a number, got {type(difficulty).__name__}")
    return {
        "prompt": prompt,
        "answer": answer,
        "verifier": text_field(row, "verifier"),
        "verifier_config": as_json(row.get("verifier_config")),
        "domain": optional_text(row, "domain"),
        "difficulty": None if difficulty is None else float(difficulty),
    }


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
