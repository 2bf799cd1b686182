"""Every reason code of validation, each on a row made from real data, in whole builds: the row lands in
silver/quarantine with its code, the field it names and its bytes, and the good rows beside it reach silver.

Real rows: tests/fixtures/bad (see SOURCES.md there). Each case is one line of a source file, named for its edge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.schema import Reason

BAD = FIXTURES / "bad"
ALPACA = [json.loads(line) for line in (BAD / "alpaca_30.jsonl").read_bytes().splitlines()]
GSM8K = [json.loads(line) for line in (BAD / "gsm8k_train_40.jsonl").read_bytes().splitlines()]
HH = [json.loads(line) for line in (BAD / "hh_rlhf_harmless_4.jsonl").read_bytes().splitlines()]


@dataclass(frozen=True)
class Case:
    name: str  # the edge it covers
    line: bytes  # the raw line, as written to the file
    reason: str | None = None  # None: the row is kept
    field: str | None = None


def dump(row: object) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode()


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def hh_turns(transcript: str) -> tuple[str, str]:
    """(human text, assistant text) of a single-turn HH-RLHF transcript."""
    human, _, assistant = transcript.removeprefix("\n\nHuman: ").partition("\n\nAssistant: ")
    return human, assistant


def gsm8k_final(row: dict) -> str:
    return row["answer"].rpartition("####")[2].strip()


def sft_cases() -> list[Case]:
    a = ALPACA
    user, bot = (lambda i: msg("user", a[i]["instruction"])), (lambda i: msg("assistant", a[i]["output"]))
    return [
        Case("kept", dump({"messages": [user(0), bot(0)]})),
        Case("kept_with_system", dump({"messages": [msg("system", "You are concise."), user(1), bot(1)]})),
        Case("invalid_json", dump({"messages": [user(2), bot(2)]})[:-1], "invalid_json"),
        Case("missing_field", dump({"conversation": [user(3), bot(3)]}), "missing_field", "messages"),
        Case(
            "unknown_role",
            dump({"messages": [user(4), msg("moderator", a[4]["output"])]}),
            "unknown_role",
            "messages[1].role",
        ),
        Case(
            "empty_turn",
            dump({"messages": [user(5), msg("assistant", " \n\t ")]}),
            "empty_turn",
            "messages[1].content",
        ),
        Case("no_assistant_turn", dump({"messages": [user(6)]}), "no_assistant_turn", "messages"),
        Case(
            "last_turn_not_assistant",
            dump({"messages": [user(7), bot(7), user(8)]}),
            "last_turn_not_assistant",
            "messages[2].role",
        ),
        Case(
            "two_users_in_a_row",
            dump({"messages": [user(9), user(10), bot(10)]}),
            "bad_role_order",
            "messages[1].role",
        ),
        Case(
            "assistant_first", dump({"messages": [bot(11), user(11), bot(11)]}), "bad_role_order", "messages[0].role"
        ),
        Case(
            "system_not_first",
            dump({"messages": [user(12), msg("system", "Be brief."), bot(12)]}),
            "bad_role_order",
            "messages[1].role",
        ),
        Case(
            "tool_after_user",
            dump({"messages": [user(13), msg("tool", "42"), bot(13)]}),
            "bad_role_order",
            "messages[1].role",
        ),
    ]


def hh_cases() -> list[Case]:
    h = HH
    return [
        Case("kept", dump(h[0])),
        Case(
            "chosen_equals_rejected",
            dump({"chosen": h[1]["chosen"], "rejected": h[1]["chosen"]}),
            "chosen_equals_rejected",
            "chosen",
        ),
        Case(
            "empty_chosen",
            dump(
                {
                    "chosen": h[2]["chosen"].partition("\n\nAssistant:")[0] + "\n\nAssistant:",
                    "rejected": h[2]["rejected"],
                }
            ),
            "empty_response",
            "chosen",
        ),
        Case(
            "blank_rejected",
            dump(
                {
                    "chosen": h[2]["chosen"],
                    "rejected": h[2]["rejected"].partition("\n\nAssistant:")[0] + "\n\nAssistant:  ",
                }
            ),
            "empty_response",
            "rejected",
        ),
        Case("missing_rejected", dump({"chosen": h[3]["chosen"]}), "missing_field", "rejected"),
    ]


def trl_cases() -> list[Case]:
    def pair(i: int, **change) -> dict:
        human, chosen = hh_turns(HH[i]["chosen"])
        _, rejected = hh_turns(HH[i]["rejected"])
        return {"prompt": [msg("user", human)], "chosen": chosen, "rejected": rejected, **change}

    human = hh_turns(HH[1]["chosen"])[0]
    windows = pair(2)  # the same row saved as Windows-1252 (its curly apostrophes become single bytes)
    assert "\u2019" in json.dumps(windows, ensure_ascii=False)
    return [
        Case("kept", dump(pair(3))),
        Case("invalid_utf8", json.dumps(windows, ensure_ascii=False).encode("cp1252"), "invalid_utf8"),
        Case("empty_prompt", dump(pair(0, prompt=[])), "missing_field", "prompt"),
        Case(
            "unknown_role_in_prompt", dump(pair(0, prompt=[msg("moderator", human)])), "unknown_role", "prompt[0].role"
        ),
        Case("empty_prompt_turn", dump(pair(0, prompt=[msg("user", "")])), "empty_turn", "prompt[0].content"),
        Case(
            "chosen_starts_with_user",  # a response holds only what the policy generates
            dump(pair(1, chosen=[msg("user", human)])),
            "bad_role_order",
            "chosen[0].role",
        ),
        Case(
            "chosen_holds_a_user_turn",
            dump(pair(1, chosen=[msg("assistant", "Sure."), msg("user", human)])),
            "bad_role_order",
            "chosen[1].role",
        ),
        Case(
            "chosen_ends_with_tool",
            dump(pair(1, chosen=[msg("assistant", "Sure."), msg("tool", "{}")])),
            "last_turn_not_assistant",
            "chosen",
        ),
        Case("empty_rejected", dump(pair(1, rejected="")), "empty_response", "rejected"),
    ]


def gsm8k_cases() -> list[Case]:
    g = GSM8K
    no_final_line = {"question": g[1]["question"], "answer": g[1]["answer"].rpartition("\n####")[0]}
    return [
        Case("kept", dump(g[0])),
        Case("no_final_answer_line", dump(no_final_line), "missing_answer", "answer"),
    ]


def rl_cases() -> list[Case]:
    def task(i: int, **change) -> dict:
        return {"prompt": GSM8K[i]["question"], "answer": gsm8k_final(GSM8K[i]), "verifier": "numeric", **change}

    q = GSM8K[3]["question"]
    return [
        Case("kept", dump(task(2))),
        Case("unknown_verifier", dump(task(3, verifier="regex_match")), "unknown_verifier", "verifier"),
        Case("blank_answer", dump(task(4, answer="  ")), "missing_answer", "answer"),
        Case("null_answer", dump(task(5, answer=None)), "missing_answer", "answer"),
        Case("empty_prompt", dump(task(6, prompt=[])), "missing_field", "prompt"),
        Case("no_verifier", dump({k: v for k, v in task(7).items() if k != "verifier"}), "missing_field", "verifier"),
        Case("empty_prompt_turn", dump(task(8, prompt="")), "empty_turn", "prompt[0].content"),
        Case("prompt_from_assistant", dump(task(9, prompt=[msg("assistant", q)])), "bad_role_order", "prompt[0].role"),
        Case("unknown_role_in_prompt", dump(task(10, prompt=[msg("teacher", q)])), "unknown_role", "prompt[0].role"),
    ]


SOURCES = {
    "sft": ("openai", sft_cases()),
    "hh": ("hh_rlhf", hh_cases()),
    "trl": ("trl_preference", trl_cases()),
    "gsm8k": ("gsm8k", gsm8k_cases()),
    "rl": ("rl", rl_cases()),
}
CASES = [(source, row, case) for source, (_, cases) in SOURCES.items() for row, case in enumerate(cases, 1)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    sources = []
    for name, (fmt, cases) in SOURCES.items():
        path = root / f"{name}.jsonl"
        path.write_bytes(b"".join(case.line + b"\n" for case in cases))
        sources.append({"name": name, "path": str(path), "format": fmt, "license": "mit", "origin": "human"})
    # Sources of bad rows only: the quarantine-rate gate would stop the build.
    return run_build(write_recipe(root, sources, engine={"workers": 1}, silver={"max_quarantine_rate": 1}))


@pytest.mark.parametrize(("source", "row", "case"), CASES, ids=[f"{s}-{c.name}" for s, _, c in CASES])
def test_each_case_is_kept_or_quarantined_with_its_reason_and_field(built, source, row, case):
    manifest, lake = built
    quarantined = lake.query(
        "select file, reason, field, raw from q where source = $s and row = $r",
        {"s": source, "r": row},
        q="silver/quarantine",
    )
    kept = lake.query(
        "select count(*) from l join s using (id) where l.source = $s and l.row = $r and l.stage = 'split'",
        {"s": source, "r": row},
        l="ledger",
        s="silver/records",
    )[0][0]
    if case.reason is None:
        assert (quarantined, kept) == ([], 1)
        return
    assert kept == 0
    [(file, reason, field, raw)] = quarantined
    assert (reason, field) == (case.reason, case.field)
    assert raw == case.line and file.endswith(f"/{source}.jsonl")
    ledger = lake.query(
        "select reason, detail from l where source = $s and row = $r and action = 'quarantine'",
        {"s": source, "r": row},
        l="ledger",
    )
    assert [r for r, _ in ledger] == [case.reason]
    assert ledger[0][1].startswith(f"{case.field}: " if case.field else "")


def test_counts_reconcile(built):
    manifest, _ = built
    for source, (_, cases) in SOURCES.items():
        bad = sum(c.reason is not None for c in cases)
        assert manifest["counts"][source] == {
            "bronze": len(cases),
            "siblings": 0,
            "silver": len(cases) - bad,
            "quarantined": bad,
            "dropped": 0,
            "file_issues": 0,
        }


def test_every_validation_reason_code_has_a_case():
    codes = {
        "invalid_json",
        "invalid_utf8",
        "missing_field",
        "missing_license",
        "unknown_role",
        "empty_turn",
        "no_assistant_turn",
        "last_turn_not_assistant",
        "bad_role_order",
        "chosen_equals_rejected",
        "empty_response",
        "missing_answer",
        "unknown_verifier",
        "too_long",
    }
    assert codes <= {r.value for r in Reason}
    covered = {c.reason for _, _, c in CASES} | {"too_long"}  # too_long: below; missing_license: test_bad_inputs
    assert codes - covered == {"missing_license"}


def rl_size(row: dict) -> int:
    """The text size validation measures for a GSM8K row read as RL: the question and the final answer."""
    return len(row["question"].strip()) + len(gsm8k_final(row))


def test_too_long_follows_the_recipe_limit_and_keeps_a_record_at_exactly_the_limit(tmp_path):
    rows = GSM8K[:12]
    limit = sorted(rl_size(r) for r in rows)[6]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "gsm8k", "path": str(path), "license": "mit", "origin": "human"}
    manifest, lake = run_build(
        write_recipe(tmp_path, [source], silver={"max_chars": limit, "max_quarantine_rate": 1}, engine={"workers": 1})
    )
    too_long = [i for i, r in enumerate(rows, 1) if rl_size(r) > limit]
    assert 0 < len(too_long) < len(rows)
    assert any(rl_size(r) == limit for r in rows)
    got = lake.query("select row, reason, field, detail from q order by row", q="silver/quarantine")
    assert [(row, reason, field) for row, reason, field, _ in got] == [(i, "too_long", None) for i in too_long]
    assert all(f"is {limit}" in detail for *_, detail in got)
    assert manifest["counts"]["gsm8k"]["silver"] == len(rows) - len(too_long)


def test_too_long_counts_reasoning_and_tool_calls_not_only_content(tmp_path):
    a = ALPACA[20:23]
    long_text = " ".join(r["output"] for r in ALPACA)  # real text, longer than the limit below
    limit = 2000
    assert len(long_text) > limit
    call = {"type": "function", "function": {"name": "search", "arguments": json.dumps({"query": long_text})}}
    rows = [
        {"messages": [msg("user", a[0]["instruction"]), msg("assistant", a[0]["output"])]},
        {
            "messages": [
                msg("user", a[1]["instruction"]),
                {"role": "assistant", "content": a[1]["output"], "reasoning_content": long_text},
            ]
        },
        {
            "messages": [
                msg("user", a[2]["instruction"]),
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "no results", "tool_call_id": "0"},
                msg("assistant", "Sorry."),
            ]
        },
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "chat", "path": str(path), "format": "openai", "license": "mit", "origin": "human"}
    _, lake = run_build(
        write_recipe(tmp_path, [source], silver={"max_chars": limit, "max_quarantine_rate": 1}, engine={"workers": 1})
    )
    got = lake.query("select row, reason from q order by row", q="silver/quarantine")
    assert got == [(2, "too_long"), (3, "too_long")]
