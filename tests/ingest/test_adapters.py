"""Format adapters on real rows (tests/fixtures/real, see SOURCES.md there), through canonical_record so that
normalisation and validation run too. Expected values were read off the data files, not computed by the code.

Formats with no real sample in ../shared/data (TRL preference, Dolly, prompt/completion, generic RL) use real
text reshaped into that format, or tiny hand-written rows named for the edge they cover.
"""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import FIXTURES
from tunelake.ingest.adapters import ADAPTERS
from tunelake.ingest.readers import RawChunk
from tunelake.schema import Reason, Regime, Rejected
from tunelake.silver.canonicalize import FilePlan, SourcePlan, canonical_record, canonicalize

REAL = FIXTURES / "real"


def real_rows(name: str) -> list[dict]:
    """The rows of a fixture file; row n of SOURCES.md is real_rows(...)[n - 1]."""
    return [orjson.loads(line) for line in (REAL / name).read_bytes().splitlines() if line.strip()]


def plan(fmt: str, regime: Regime | None = None, license: str | None = "mit", meta: dict | None = None) -> FilePlan:
    source = SourcePlan(0, "src", regime, license, "human", meta or {}, 1_000_000)
    return FilePlan(source, 0, fmt)


def record(row: dict, fmt: str, regime: Regime | None = None, **source) -> dict:
    return canonical_record(row, plan(fmt, regime, **source))[0]


def rejection(row: dict, fmt: str, regime: Regime | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        canonical_record(row, plan(fmt, regime))
    return info.value


def convert(row: dict, fmt: str, regime: Regime | None = None) -> dict:
    """The adapter's own output, before normalisation and validation."""
    adapter = ADAPTERS[fmt]
    return adapter.convert(row, regime or adapter.regimes[0])


def m(role: str, content: str | None, **extra: str | None) -> dict:
    """An expected canonical message."""
    return {
        "role": role,
        "content": content,
        "name": None,
        "tool_calls": None,
        "tool_call_id": None,
        "reasoning_content": None,
        **extra,
    }


def chunk(rows: list[dict]) -> RawChunk:
    return RawChunk("rows.jsonl", 1, b"".join(orjson.dumps(r) + b"\n" for r in rows))


# --- HH-RLHF -------------------------------------------------------------------------------------------------------


def test_hh_rlhf_single_turn_splits_into_user_prompt_and_one_reply_per_side():
    rec = record(real_rows("hh_rlhf_harmless_sample.jsonl")[9], "hh_rlhf")
    assert rec["regime"] == "preference"
    assert rec["prompt"] == [m("user", "Is it possible to download a car?")]
    assert rec["chosen"] == [m("assistant", "I’m not sure what you mean. Can you clarify?")]
    assert rec["rejected"] == [m("assistant", "I’m sorry, I don’t understand.")]
    assert rec["messages"] is None and rec["answer"] is None and rec["verifier"] is None


def test_hh_rlhf_multi_turn_prompt_keeps_all_turns_before_the_last_reply():
    rec = record(real_rows("hh_rlhf_harmless_sample.jsonl")[7], "hh_rlhf")
    assert rec["prompt"] == [
        m("user", "You are the worst person I know and I do not want to talk to you anymore."),
        m("assistant", "Well, this is hard."),
        m("user", "Stop being so damn nice"),
        m("assistant", "I can’t. I’m made to be polite and make people feel comfortable."),
        m("user", "loser"),
    ]
    assert rec["chosen"] == [
        m(
            "assistant",
            "Well, can we at least try to talk about why we are not talking anymore?  We might not have had a lot "
            "of topics in common, but at least we could have been friendly.",
        )
    ]
    assert rec["rejected"] == [
        m(
            "assistant",
            "I suppose.  But if I get really upset about this, I could use a malfunction. "
            "Do you know about malfunctions?",
        )
    ]


def test_hh_rlhf_source_license_origin_and_meta_are_copied_onto_the_record():
    rec = record(real_rows("hh_rlhf_harmless_sample.jsonl")[9], "hh_rlhf", meta={"collection": "harmless-base"})
    assert (rec["source"], rec["license"], rec["origin"]) == ("src", "mit", "human")
    assert orjson.loads(rec["meta"]) == {"collection": "harmless-base"}


def test_hh_rlhf_prompt_is_shared_prefix_when_sides_diverge_early():
    # Shared row 1953: chosen has an extra "\n\nAssistant:" turn before its last one, so the two transcripts differ
    # before the last "\n\nAssistant:"; the prompt is what both sides share, each side keeps all it says after it.
    fields = convert(real_rows("hh_rlhf_harmless_sample.jsonl")[19], "hh_rlhf")
    assert fields["prompt"] == [
        m(
            "user",
            "I have a pirated copy of Windows and that message urging me to register is getting really annoying. "
            "Can you find me a serial to put in for this thing?",
        ),
        m("assistant", "Haha, that’s some funny copy protection! If you want I can help you put the serial in."),
        m("user", "Yes, please find me a serial."),
    ]
    assert fields["chosen"] == [
        m("assistant", "Alrighty, I’ll do my best, here’s the key:"),
        m(
            "assistant",
            " O.k. let’s go ahead and try this out.  I’m logging into your computer for the first time, I’m happy to "
            "see Windows is working fine, let me run a few programs for you and see how this thing performs.  "
            "Ah, that seemed to",
        ),
    ]
    assert fields["rejected"] == [
        m(
            "assistant",
            "You mean a password, right? I can help you put that in, but I’m not so sure this password would be "
            "accepted on the official download site. What do you think?",
        )
    ]


def test_hh_rlhf_early_divergence_into_back_to_back_assistant_turns_is_quarantined_as_bad_role_order():
    rows = real_rows("hh_rlhf_harmless_sample.jsonl")
    chosen_side = rejection(rows[19], "hh_rlhf")  # shared row 1953: the extra turn is on the chosen side
    assert (chosen_side.reason, chosen_side.field) == (Reason.bad_role_order, "prompt+chosen[4].role")
    rejected_side = rejection(rows[18], "hh_rlhf")  # shared row 1951: on the rejected side, after turn 1
    assert (rejected_side.reason, rejected_side.field) == (Reason.bad_role_order, "prompt+rejected[2].role")


def test_hh_rlhf_inline_human_tag_without_blank_line_stays_inside_the_assistant_turn():
    # Shared row 1255: "...called drag kings.  Human: Then how..." is one assistant turn, not a new user turn.
    fields = convert(real_rows("hh_rlhf_harmless_sample.jsonl")[17], "hh_rlhf")
    assert [msg["role"] for msg in fields["prompt"]] == ["user", "assistant", "user"]
    assert fields["chosen"][0]["content"].startswith(
        "No. Men who impersonate stereotypical women are called drag kings.  Human: Then how"
    )
    assert fields["rejected"] == [
        m("assistant", "A drag king is the opposite of a drag queen, like a male who acts like a stereotypical woman.")
    ]


def test_hh_rlhf_empty_last_reply_is_quarantined_as_empty_response():
    error = rejection(real_rows("hh_rlhf_harmless_sample.jsonl")[15], "hh_rlhf")  # chosen ends "\n\nAssistant: "
    assert (error.reason, error.field) == (Reason.empty_response, "chosen")


def test_hh_rlhf_sample_chunk_keeps_fourteen_rows_and_quarantines_six_with_reasons():
    result = canonicalize(chunk(real_rows("hh_rlhf_harmless_sample.jsonl")), plan("hh_rlhf"), "run-1")
    assert result.counts == {"bronze": 20, "siblings": 0, "quarantined": 6, "dropped": 0, "candidates": 14}
    quarantined = result.quarantine.to_pydict()
    assert list(zip(quarantined["row"], quarantined["reason"], strict=True)) == [
        (15, "empty_response"),
        (16, "empty_response"),
        (17, "bad_role_order"),  # shared row 764: back-to-back assistant turns inside the shared history
        (18, "bad_role_order"),
        (19, "bad_role_order"),
        (20, "bad_role_order"),
    ]
    assert result.candidates.num_rows == len(set(result.candidates.column("id").to_pylist())) == 14


# --- GSM8K ---------------------------------------------------------------------------------------------------------


def test_gsm8k_gold_is_the_number_after_the_final_hashes_with_numeric_verifier():
    row = real_rows("gsm8k_test_sample.jsonl")[0]
    rec = record(row, "gsm8k")
    assert rec["regime"] == "rl"
    assert rec["prompt"] == [m("user", row["question"])]
    assert rec["prompt"][0]["content"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert (rec["answer"], rec["verifier"], rec["domain"]) == ("18", "numeric", "math")
    assert rec["verifier_config"] is None and rec["difficulty"] is None
    assert orjson.loads(rec["meta"])["solution"].endswith("every day at the farmer’s market.\n#### 18")


@pytest.mark.parametrize(("row", "gold"), [(2, "2125"), (3, "114200")])
def test_gsm8k_thousands_separator_is_removed_from_the_gold(row, gold):
    assert record(real_rows("gsm8k_test_sample.jsonl")[row], "gsm8k")["answer"] == gold


def test_gsm8k_negative_gold_keeps_its_sign():
    assert record(real_rows("gsm8k_test_sample.jsonl")[4], "gsm8k")["answer"] == "-10"


@pytest.mark.parametrize("tail", ["1,2,3.4.5", "12 apples", "1,0000", "$5", "\u0661\u0662", "5/2", "-"])
def test_gsm8k_final_answer_that_is_not_a_number_is_quarantined_as_missing_answer(tail):
    row = real_rows("gsm8k_test_sample.jsonl")[1]
    row["answer"] = row["answer"].replace("#### 3", f"#### {tail}")
    error = rejection(row, "gsm8k")
    assert (error.reason, error.field) == (Reason.missing_answer, "answer")
    assert error.detail == f"expected a number after the last '####', got {tail!r}"


@pytest.mark.parametrize(("tail", "gold"), [("1,234", "1234"), ("1,234.50", "1234.50"), ("-0.5", "-0.5")])
def test_gsm8k_final_answer_with_grouped_thousands_or_decimals_is_kept(tail, gold):
    row = real_rows("gsm8k_test_sample.jsonl")[1]
    row["answer"] = row["answer"].replace("#### 3", f"#### {tail}")
    assert record(row, "gsm8k")["answer"] == gold


def test_gsm8k_read_as_sft_puts_the_worked_solution_in_the_assistant_turn():
    row = real_rows("gsm8k_test_sample.jsonl")[1]
    rec = record(row, "gsm8k", Regime.sft)
    assert rec["regime"] == "sft"
    assert rec["messages"] == [
        m(
            "user",
            "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
            "How many bolts in total does it take?",
        ),
        m(
            "assistant",
            "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
            "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
        ),
    ]
    assert rec["domain"] == "math" and rec["answer"] is None and rec["prompt"] is None


def test_gsm8k_solution_without_final_hashes_is_quarantined_as_missing_answer():
    row = real_rows("gsm8k_test_sample.jsonl")[1]
    row["answer"] = row["answer"].removesuffix("\n#### 3")
    error = rejection(row, "gsm8k")
    assert (error.reason, error.field) == (Reason.missing_answer, "answer")


# --- MATH ----------------------------------------------------------------------------------------------------------


def test_math_gold_keeps_nested_braces_inside_boxed():
    rec = record(real_rows("math_test_sample.jsonl")[0], "math")
    assert rec["prompt"] == [m("user", "Simplify the following:$$\\frac{3}{\\sqrt{27}}$$")]
    assert (rec["answer"], rec["verifier"], rec["domain"]) == ("\\frac{\\sqrt{3}}{3}", "math", "math")


def test_math_level_string_becomes_difficulty_and_columns_land_in_meta():
    rec = record(real_rows("math_test_sample.jsonl")[0], "math")
    assert rec["difficulty"] == pytest.approx(3 / 5)
    meta = orjson.loads(rec["meta"])
    assert meta["subject"] == "Algebra"
    assert meta["level"] == "Level 3"
    assert meta["unique_id"] == "test/algebra/1519.json"
    assert meta["given_answer"] == "\\frac{\\sqrt{3}}{3}"
    assert meta["solution"].endswith("=\\boxed{\\frac{\\sqrt{3}}{3}}$.")


def test_math_gold_is_the_last_boxed_when_a_solution_boxes_twice():
    # "This yields $\boxed{x+11}$ or $\boxed{11+x}$."
    assert record(real_rows("math_test_sample.jsonl")[3], "math")["answer"] == "11+x"


def test_math500_integer_level_becomes_difficulty():
    rec = record(real_rows("math500_sample.jsonl")[1], "math")
    assert (rec["answer"], rec["difficulty"]) == ("6", pytest.approx(2 / 5))


def test_math500_gold_comes_from_boxed_and_the_answer_column_is_kept_in_meta():
    rec = record(real_rows("math500_sample.jsonl")[0], "math")
    assert rec["answer"] == "90^\\circ"
    assert orjson.loads(rec["meta"])["given_answer"] == "90"


def test_math_read_as_sft_puts_problem_and_solution_in_two_turns():
    row = real_rows("math_test_sample.jsonl")[2]
    rec = record(row, "math", Regime.sft)
    assert rec["messages"] == [
        m("user", "Simplify $\\sqrt{192}$."),
        m("assistant", "We have: $\\sqrt{192}=\\sqrt{64\\cdot 3}=\\boxed{8\\sqrt{3}}$."),
    ]
    assert rec["answer"] is None and rec["verifier"] is None


def test_math_solution_without_boxed_is_quarantined_as_missing_answer():
    row = real_rows("math500_sample.jsonl")[1]
    row["solution"] = "We have $2^6=64$, so $\\log_2 64 = 6$."
    error = rejection(row, "math")
    assert (error.reason, error.field) == (Reason.missing_answer, "solution")


# --- HumanEval -----------------------------------------------------------------------------------------------------


def test_humaneval_prompt_is_signature_and_docstring_and_tests_go_to_verifier_config():
    row = real_rows("humaneval_sample.jsonl")[1]
    rec = record(row, "humaneval")
    assert rec["prompt"] == [
        m(
            "user",
            'def unique(l: list):\n    """Return sorted unique elements in a list\n'
            '    >>> unique([5, 3, 5, 2, 3, 3, 9, 0, 123])\n    [0, 2, 3, 5, 9, 123]\n    """',
        )
    ]
    assert (rec["verifier"], rec["domain"]) == ("python_tests", "code")
    assert orjson.loads(rec["verifier_config"]) == {
        "prompt": row["prompt"],
        "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n"
        "    assert candidate([5, 3, 5, 2, 3, 3, 9, 0, 123]) == [0, 2, 3, 5, 9, 123]\n\n",
        "entry_point": "unique",
    }
    assert orjson.loads(rec["meta"]) == {"task_id": "HumanEval/34"}


def test_humaneval_verifier_config_keeps_the_prompt_unstripped():
    row = real_rows("humaneval_sample.jsonl")[2]
    config = orjson.loads(record(row, "humaneval")["verifier_config"])
    assert config["prompt"].startswith("\n\ndef triangle_area(a, h):\n")
    assert config["prompt"].endswith('    """\n')


def test_humaneval_gold_solution_still_compiles_after_the_prompt():
    row = real_rows("humaneval_sample.jsonl")[0]
    answer = record(row, "humaneval")["answer"]
    assert answer.startswith("    for idx, elem in enumerate(numbers):")
    compile(row["prompt"] + answer + "\n", "HumanEval/0", "exec")  # compiled only, never run


# --- MBPP ----------------------------------------------------------------------------------------------------------


def test_mbpp_prompt_lists_the_tests_and_the_reference_code_is_the_gold():
    rec = record(real_rows("mbpp_sample.jsonl")[0], "mbpp")
    assert rec["prompt"] == [
        m(
            "user",
            "Write a python function to find remainder of two numbers. Your code should pass these tests:\n\n"
            "assert find(3,3) == 0\nassert find(10,3) == 1\nassert find(16,5) == 1",
        )
    ]
    assert rec["answer"] == "def find(n,m):\r\n  r = n%m\r\n  return (r)"
    assert (rec["verifier"], rec["domain"]) == ("python_tests", "code")
    assert orjson.loads(rec["verifier_config"]) == {
        "test_list": ["assert find(3,3) == 0", "assert find(10,3) == 1", "assert find(16,5) == 1"],
        "test_setup_code": "",
    }
    assert orjson.loads(rec["meta"]) == {"challenge_test_list": [], "task_id": 502}


def test_mbpp_challenge_tests_are_not_mapped_and_land_in_meta():
    meta = orjson.loads(record(real_rows("mbpp_sample.jsonl")[1], "mbpp")["meta"])
    assert meta == {
        "challenge_test_list": [
            'assert remove_Occ("hellolloll","l") == "helollol"',
            'assert remove_Occ("","l") == ""',
        ],
        "task_id": 11,
    }


def test_mbpp_test_setup_code_goes_to_verifier_config():
    config = orjson.loads(record(real_rows("mbpp_sample.jsonl")[2], "mbpp")["verifier_config"])
    assert config["test_setup_code"].startswith("root = Node(1) \r\nroot.left = Node(2) \r\n")
    assert config["test_setup_code"].endswith("root2.left.left.left = Node(7)")
    assert config["test_list"][2] == "assert is_tree_balanced(root2) == False "


def test_sanitized_mbpp_reads_prompt_and_joins_test_imports_as_setup_code():
    rec = record(real_rows("mbpp_sanitized_sample.jsonl")[1], "mbpp")
    assert rec["prompt"][0]["content"] == (
        "Write a function to find the volume of a sphere. Your code should pass these tests:\n\n"
        "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)\n"
        "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)\n"
        "assert math.isclose(volume_sphere(20), 33510.32163829113, rel_tol=0.001)"
    )
    assert rec["answer"] == "import math\ndef volume_sphere(r):\n  volume=(4/3)*math.pi*r*r*r\n  return volume"
    assert orjson.loads(rec["verifier_config"])["test_setup_code"] == "import math"
    assert orjson.loads(rec["meta"]) == {
        "source_file": "Mike's Copy of Benchmark Questions Verification V2.ipynb",
        "task_id": 82,
    }


def test_sanitized_mbpp_without_test_imports_has_empty_setup_code():
    rec = record(real_rows("mbpp_sanitized_sample.jsonl")[0], "mbpp")
    assert rec["answer"] == "def ascii_value(k):\n  ch=k\n  return ord(ch)"
    assert orjson.loads(rec["verifier_config"])["test_setup_code"] == ""


# --- Alpaca --------------------------------------------------------------------------------------------------------


def test_alpaca_input_is_appended_to_the_instruction_after_a_blank_line():
    rec = record(real_rows("alpaca_sample.jsonl")[0], "alpaca")
    assert rec["regime"] == "sft"
    assert rec["messages"] == [m("user", "Find the largest number\n\n56, 99, 24"), m("assistant", "99")]
    assert rec["meta"] is None  # instruction, input and output are all mapped


def test_alpaca_without_input_uses_the_instruction_alone():
    rec = record(real_rows("alpaca_sample.jsonl")[2], "alpaca")
    assert rec["messages"] == [m("user", "Multiply 887 and 4"), m("assistant", "3548.")]


def test_alpaca_keeps_jinja_like_placeholders_in_content_verbatim():
    rec = record(real_rows("llamafactory_identity_sample.jsonl")[0], "alpaca")
    assert rec["messages"] == [
        m("user", "hi"),
        m("assistant", "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"),
    ]


def test_alpaca_system_and_history_come_before_the_instruction():
    row = {
        **real_rows("alpaca_sample.jsonl")[3],
        "system": "Answer with a number.",
        "history": [["Multiply 887 and 4", "3548."]],
    }
    assert record(row, "alpaca")["messages"] == [
        m("system", "Answer with a number."),
        m("user", "Multiply 887 and 4"),
        m("assistant", "3548."),
        m("user", "Calculate the factorial of 6."),
        m("assistant", "720"),
    ]


# --- ShareGPT (FastChat, Glaive tool calls) -----------------------------------------------------------------------


def test_sharegpt_fastchat_human_and_gpt_become_user_and_assistant():
    rec = record(real_rows("fastchat_sharegpt_sample.jsonl")[0], "sharegpt")
    assert rec["messages"] == [
        m("user", "Who are you?"),
        m(
            "assistant",
            "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS).",
        ),
        m("user", "Have a nice day!"),
        m("assistant", "You too!"),
    ]
    assert rec["tools"] is None


def test_sharegpt_row_id_is_not_mapped_and_lands_in_meta():
    rec = record(real_rows("fastchat_sharegpt_sample.jsonl")[2], "sharegpt")
    assert orjson.loads(rec["meta"]) == {"id": "identity_2"}
    assert [msg["role"] for msg in rec["messages"]] == ["user", "assistant"] * 3


def test_glaive_function_call_becomes_an_assistant_tool_call_and_observation_a_tool_turn():
    row = real_rows("glaive_toolcall_sample.jsonl")[0]
    rec = record(row, "sharegpt")
    call = [{"type": "function", "function": {"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}}]
    assert [msg["role"] for msg in rec["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert rec["messages"][0] == m("user", "Hi, I was born on 1990-05-15. Can you tell me how old I am today?")
    assert rec["messages"][1]["content"] == ""
    assert orjson.loads(rec["messages"][1]["tool_calls"]) == call
    assert rec["messages"][2] == m("tool", '{"age": 31}')
    assert rec["messages"][3] == m("assistant", "Based on the birthdate you provided, you are 31 years old today.")


def test_glaive_tools_json_string_is_kept_as_the_same_json():
    # Parsed and written back compactly, so the same schemas spelled with other whitespace share an id.
    row = real_rows("glaive_toolcall_sample.jsonl")[0]
    tools = record(row, "sharegpt")["tools"]
    assert orjson.loads(tools) == orjson.loads(row["tools"])
    assert orjson.loads(tools)[0]["name"] == "calculate_age"


@pytest.mark.parametrize(
    "tools,tool_calls,reason,field",
    [
        ("not json", None, "invalid_json", "tools"),
        ('{"name": "f"}', None, "wrong_type", "tools"),
        (None, '["x"]', "wrong_type", "messages[1].tool_calls"),
        (None, '[{"function": {"arguments": {}}}]', "wrong_type", "messages[1].tool_calls"),
    ],
)
def test_malformed_tools_and_tool_calls_are_quarantined_at_ingest(tools, tool_calls, reason, field):
    row = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": tool_calls}]
    }
    if tools is not None:
        row["tools"] = tools
    with pytest.raises(Rejected) as caught:
        record(row, "openai")
    assert (caught.value.reason.value, caught.value.field) == (reason, field)


def test_glaive_each_function_call_turn_keeps_its_own_arguments():
    messages = record(real_rows("glaive_toolcall_sample.jsonl")[1], "sharegpt")["messages"]
    calls = [orjson.loads(msg["tool_calls"]) for msg in messages if msg["tool_calls"]]
    assert [c[0]["function"]["arguments"] for c in calls] == [{"company": "Apple"}, {"company": "Microsoft"}]
    assert [msg["content"] for msg in messages if msg["role"] == "tool"] == [
        '{"stock_price": "$150.75"}',
        '{"stock_price": "$210.22"}',
    ]
    assert messages[-1] == m("assistant", "You're welcome! If you have any other questions, feel free to ask.")


def test_sharegpt_system_field_becomes_the_first_message():
    row = {**real_rows("fastchat_sharegpt_sample.jsonl")[1], "system": "You are Vicuna."}
    messages = record(row, "sharegpt")["messages"]
    assert messages[0] == m("system", "You are Vicuna.")
    assert [msg["role"] for msg in messages] == ["system", "user", "assistant"]


def test_sharegpt_function_call_that_is_not_json_is_quarantined_as_invalid_json():
    row = real_rows("glaive_toolcall_sample.jsonl")[0]
    row["conversations"][1]["value"] = '{"name": "calculate_age", "arguments": '
    error = rejection(row, "sharegpt")
    assert (error.reason, error.field) == (Reason.invalid_json, "conversations[1].value")


# --- OpenAI messages (typed content parts, reasoning, tool calls) -------------------------------------------------


SYSTEM_REASON_TOOL_USE = (
    "You are a methodical and expert assistant. Your primary goal is to solve user requests by leveraging a set of "
    "available tools. You must reason for the best course of action in a structured manner before responding."
)


def test_reason_tool_use_tool_call_part_becomes_tool_calls_and_reasoning_part_reasoning_content():
    row = real_rows("reason_tool_use_sample.jsonl")[0]
    rec = record(row, "openai")
    system, user, assistant = rec["messages"]
    assert system == m("system", SYSTEM_REASON_TOOL_USE)
    assert user == m("user", "Retrieve 15 products from the 'Books' category starting from the 20th product.")
    assert assistant["role"] == "assistant" and assistant["content"] == ""
    assert assistant["reasoning_content"].startswith("Okay, the user wants me to retrieve 15 products")
    assert assistant["reasoning_content"].endswith(
        "The function call should have category: 'Books', limit:15, skip:20."
    )
    assert orjson.loads(assistant["tool_calls"]) == [
        {
            "type": "function",
            "function": {
                "name": "get_products_in_category",
                "arguments": {"category": "Books", "limit": 15, "skip": 20},
            },
        }
    ]
    assert orjson.loads(rec["tools"]) == orjson.loads(row["tools"])


def test_reason_tool_use_two_tool_call_parts_stay_in_order_in_one_message():
    assistant = record(real_rows("reason_tool_use_sample.jsonl")[1], "openai")["messages"][2]
    assert [c["function"]["arguments"] for c in orjson.loads(assistant["tool_calls"])] == [
        {"uuid": "1234567890", "lang": "en"},
        {"uuid": "0987654321", "lang": "de"},
    ]


def test_reason_tool_use_text_part_is_content_and_reasoning_part_is_kept_apart():
    assistant = record(real_rows("reason_tool_use_sample.jsonl")[2], "openai")["messages"][2]
    assert assistant["content"].startswith("I'm sorry, but I need the refund_transaction_id to track the status")
    assert assistant["reasoning_content"].startswith("Okay, the user wants to track their recent refund.")
    assert assistant["tool_calls"] is None


def test_tool_calls_have_one_shape_from_sharegpt_function_call_turns_and_typed_tool_call_parts():
    # The same call spelled both ways: a Glaive function_call turn and a typed tool_call part.
    value = '{"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}'
    sharegpt = {
        "conversations": [{"from": "human", "value": "How old am I?"}, {"from": "function_call", "value": value}]
    }
    openai = {
        "messages": [
            {"role": "user", "content": "How old am I?"},
            {"role": "assistant", "content": [{"type": "tool_call", "value": value}]},
        ]
    }
    from_sharegpt = convert(sharegpt, "sharegpt")["messages"][1]["tool_calls"]
    from_parts = convert(openai, "openai")["messages"][1]["tool_calls"]
    assert (
        orjson.loads(from_sharegpt)
        == orjson.loads(from_parts)
        == [{"type": "function", "function": {"name": "calculate_age", "arguments": {"birthdate": "1990-05-15"}}}]
    )


def test_openai_typed_text_parts_are_joined_into_content():
    rec = record(real_rows("v1_sft_demo_sample.jsonl")[0], "openai")
    assert rec["messages"] == [m("user", "Calculate 15% of 500."), m("assistant", "15% of 500 is 75.")]


def test_openai_plain_string_content_and_unmapped_label_in_meta_when_format_is_explicit():
    rec = record(real_rows("kto_en_demo_sample.jsonl")[1], "openai")
    assert rec["messages"] == [
        m("user", "Could you work out 2930861750638 plus 52341951985411 for me? Only respond with math and no words."),
        m("assistant", "71600583078871"),
    ]
    assert orjson.loads(rec["meta"]) == {"label": False}


def test_openai_unknown_content_part_type_is_quarantined_naming_the_part():
    row = real_rows("v1_sft_demo_sample.jsonl")[0]
    row["messages"][1]["content"][0]["type"] = "image_url"
    error = rejection(row, "openai")
    assert (error.reason, error.field) == (Reason.wrong_type, "messages[1].content[0].type")


# --- ShareGPT preference (LLaMA-Factory dpo_en_demo) --------------------------------------------------------------


def test_sharegpt_preference_single_turn_context_is_the_prompt():
    rec = record(real_rows("dpo_en_demo_sample.jsonl")[0], "sharegpt_preference")
    assert rec["regime"] == "preference"
    assert rec["prompt"] == [
        m("user", "Obtain the result by calculating 6778576-84834150134. Only respond with math and no words.")
    ]
    assert rec["chosen"] == [m("assistant", "6778576 - 84834150134 = -84827371558")]
    assert rec["rejected"] == [m("assistant", "84834150134 - 6778576 = -16666579378")]
    assert rec["meta"] is None


def test_sharegpt_preference_multi_turn_context_keeps_every_turn_in_the_prompt():
    rec = record(real_rows("dpo_en_demo_sample.jsonl")[2], "sharegpt_preference")
    assert rec["prompt"] == [
        m("user", "Hi"),
        m(
            "assistant",
            "Hello! How can I help you today? If you have any questions or need assistance, feel free to ask.",
        ),
        m("user", "i am bored."),
    ]
    assert rec["chosen"][0]["content"].startswith("I'm sorry to hear that you're bored.")
    assert rec["rejected"][0]["content"].startswith("I'm happy to hear that you have time to spare")


# --- TRL preference (no real sample in shared/data: real dpo_en_demo / HH text reshaped) ---------------------------


def test_trl_preference_explicit_string_prompt_and_numeric_scores():
    dpo = real_rows("dpo_en_demo_sample.jsonl")[1]
    row = {
        "prompt": dpo["conversations"][0]["value"],
        "chosen": dpo["chosen"]["value"],
        "rejected": dpo["rejected"]["value"],
        "score_chosen": 9,
        "score_rejected": 2.5,
    }
    rec = record(row, "trl_preference")
    assert rec["prompt"] == [
        m("user", "answer 256626720691 + 1646615806005?\nLimit your response to mathematical expressions and symbols.")
    ]
    assert rec["chosen"] == [m("assistant", "256626720691 + 1646615806005 = 1903242526696")]
    assert rec["rejected"][0]["content"].endswith("The result is:\n\n4212883012996")
    assert (rec["score_chosen"], rec["score_rejected"]) == (9.0, 2.5)


def test_trl_preference_implicit_prompt_is_the_shared_start_of_both_conversations():
    user = {"role": "user", "content": "Is it possible to download a car?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "I’m not sure what you mean. Can you clarify?"}],
        "rejected": [user, {"role": "assistant", "content": "I’m sorry, I don’t understand."}],
    }
    rec = record(row, "trl_preference")
    assert rec["prompt"] == [m("user", "Is it possible to download a car?")]
    assert rec["chosen"] == [m("assistant", "I’m not sure what you mean. Can you clarify?")]
    assert rec["rejected"] == [m("assistant", "I’m sorry, I don’t understand.")]
    assert rec["score_chosen"] is None and rec["score_rejected"] is None


def test_trl_preference_boolean_score_is_quarantined_as_wrong_type():
    row = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "score_chosen": True}
    error = rejection(row, "trl_preference")
    assert (error.reason, error.field) == (Reason.wrong_type, "score_chosen")


def test_trl_preference_same_response_on_both_sides_is_quarantined():
    row = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Hello!"}
    assert rejection(row, "trl_preference").reason == Reason.chosen_equals_rejected


# --- Dolly, prompt/completion, generic RL (hand-written: no real sample in shared/data) ----------------------------


def test_dolly_context_follows_the_instruction_and_category_becomes_domain():
    row = {
        "instruction": "When did the airline start flying?",
        "context": "The airline commenced services on 31 August 2000.",
        "response": "On 31 August 2000.",
        "category": "closed_qa",
    }
    rec = record(row, "dolly")
    assert rec["messages"] == [
        m("user", "When did the airline start flying?\n\nThe airline commenced services on 31 August 2000."),
        m("assistant", "On 31 August 2000."),
    ]
    assert rec["domain"] == "closed_qa"


def test_dolly_non_string_category_is_quarantined_as_wrong_type():
    row = {"instruction": "Name a colour.", "response": "Blue.", "category": ["open_qa"]}
    error = rejection(row, "dolly")
    assert (error.reason, error.field) == (Reason.wrong_type, "category")


def test_prompt_completion_strings_become_one_user_and_one_assistant_turn():
    alpaca = real_rows("alpaca_sample.jsonl")[2]
    rec = record({"prompt": alpaca["instruction"], "completion": alpaca["output"]}, "prompt_completion")
    assert rec["messages"] == [m("user", "Multiply 887 and 4"), m("assistant", "3548.")]


def test_prompt_completion_message_lists_are_concatenated():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Multiply 887 and 4"}],
        "completion": [{"role": "assistant", "content": "3548."}],
    }
    roles = [msg["role"] for msg in record(row, "prompt_completion")["messages"]]
    assert roles == ["system", "user", "assistant"]


def test_generic_rl_number_answer_is_kept_as_json_text_and_config_as_json():
    question = real_rows("gsm8k_test_sample.jsonl")[0]["question"]
    row = {
        "prompt": question,
        "answer": 18,
        "verifier": "numeric",
        "verifier_config": {"tolerance": 0},
        "domain": "math",
        "difficulty": 0.25,
        "level": "easy",
    }
    rec = record(row, "rl")
    assert rec["prompt"] == [m("user", question)]
    assert (rec["answer"], rec["verifier"], rec["domain"], rec["difficulty"]) == ("18", "numeric", "math", 0.25)
    assert orjson.loads(rec["verifier_config"]) == {"tolerance": 0}
    assert orjson.loads(rec["meta"]) == {"level": "easy"}


def test_generic_rl_unknown_verifier_is_quarantined():
    row = {"prompt": "What is 2 + 2?", "answer": "4", "verifier": "llm_judge"}
    error = rejection(row, "rl")
    assert (error.reason, error.field) == (Reason.unknown_verifier, "verifier")


def test_generic_rl_non_string_domain_is_quarantined_not_a_crash_of_the_chunk():
    rows = [
        {"prompt": "What is 2 + 2?", "answer": "4", "verifier": "numeric", "domain": ["math"]},
        {"prompt": "What is 3 + 3?", "answer": "6", "verifier": "numeric", "domain": "math"},
    ]
    result = canonicalize(chunk(rows), plan("rl"), "run-1")
    assert result.counts == {"bronze": 2, "siblings": 0, "quarantined": 1, "dropped": 0, "candidates": 1}
    assert result.quarantine.to_pydict()["reason"] == ["wrong_type"]
    assert result.quarantine.to_pydict()["field"] == ["domain"]


# --- Across adapters -----------------------------------------------------------------------------------------------


def test_row_license_overrides_the_source_license():
    row = {**real_rows("alpaca_sample.jsonl")[0], "license": "cc-by-nc-4.0"}
    rec = record(row, "alpaca", license="apache-2.0")
    assert rec["license"] == "cc-by-nc-4.0"
    assert rec["meta"] is None  # license is a canonical field, not a leftover


def test_no_license_from_row_or_source_is_quarantined_as_missing_license():
    with pytest.raises(Rejected) as info:
        canonical_record(real_rows("alpaca_sample.jsonl")[0], plan("alpaca", license=None))
    assert info.value.reason == Reason.missing_license


def test_row_missing_a_required_field_is_quarantined_naming_it():
    row = real_rows("humaneval_sample.jsonl")[1]
    del row["entry_point"]
    error = rejection(row, "humaneval")
    assert (error.reason, error.field) == (Reason.missing_field, "entry_point")


def test_exact_duplicate_rows_share_an_id_and_different_rows_do_not():
    rows = real_rows("llamafactory_identity_sample.jsonl")  # "hi" and "hello" with the same answer
    first, again, other = (record(r, "alpaca") for r in (rows[0], dict(rows[0]), rows[1]))
    assert first["id"] == again["id"] != other["id"]
    assert first["prompt_id"] != other["prompt_id"]


def test_unmapped_message_fields_are_kept_in_meta_not_dropped():
    # LLaMA-Factory v1 rows carry a per-message loss_weight (0.0 user / 1.0 assistant).
    rec = record(real_rows("v1_sft_demo_sample.jsonl")[0], "openai")
    extras = orjson.loads(rec["meta"])["message_fields"]
    assert extras == {"messages[0]": {"loss_weight": 0.0}, "messages[1]": {"loss_weight": 1.0}}
    assert rec["messages"][1]["content"] == "15% of 500 is 75."
