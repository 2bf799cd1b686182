"""`format: auto` on real files (tests/fixtures/real): the right adapter for each, and errors that name the fields."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import FIXTURES
from tunelake.ingest.adapters import ADAPTERS, FormatError, detect_format
from tunelake.schema import Reason, Rejected
from tunelake.silver.canonicalize import FilePlan, SourcePlan, canonical_record

REAL = FIXTURES / "real"


def real_rows(name: str) -> list[dict]:
    return [orjson.loads(line) for line in (REAL / name).read_bytes().splitlines() if line.strip()]


def detection_error(rows: list[dict]) -> FormatError:
    with pytest.raises(FormatError) as info:
        detect_format(rows)
    return info.value


@pytest.mark.parametrize(
    ("fixture", "adapter"),
    [
        ("hh_rlhf_harmless_sample.jsonl", "hh_rlhf"),
        ("gsm8k_test_sample.jsonl", "gsm8k"),
        ("math_test_sample.jsonl", "math"),
        ("math500_sample.jsonl", "math"),
        ("humaneval_sample.jsonl", "humaneval"),
        ("mbpp_sample.jsonl", "mbpp"),
        ("mbpp_sanitized_sample.jsonl", "mbpp"),
        ("alpaca_sample.jsonl", "alpaca"),
        ("llamafactory_identity_sample.jsonl", "alpaca"),
        ("fastchat_sharegpt_sample.jsonl", "sharegpt"),
        ("glaive_toolcall_sample.jsonl", "sharegpt"),
        ("dpo_en_demo_sample.jsonl", "sharegpt_preference"),
        ("reason_tool_use_sample.jsonl", "openai"),
        ("v1_sft_demo_sample.jsonl", "openai"),
        ("v1_dpo_demo_sample.jsonl", "llamafactory_v1_dpo"),
        ("ultrafeedback_shape_sample.jsonl", "rated_completions"),
        ("alpaca_eval_cot_sample.jsonl", "alpaca_eval"),
        ("alpaca_eval_weighted_sample.jsonl", "alpaca_eval"),
        ("oasst2_ranked_sample.jsonl", "oasst2_tree"),
        ("quality_oasst2_lang_sample.jsonl", "oasst2_tree"),
    ],
)
def test_auto_detection_picks_the_adapter_for_each_real_file(fixture, adapter):
    assert detect_format(real_rows(fixture)).name == adapter


def test_dpo_en_demo_picks_sharegpt_preference_over_the_less_specific_sharegpt():
    rows = real_rows("dpo_en_demo_sample.jsonl")
    assert all(ADAPTERS["sharegpt"].fits(r) and ADAPTERS["sharegpt_preference"].fits(r) for r in rows)
    assert detect_format(rows).name == "sharegpt_preference"


def test_hh_transcripts_are_not_taken_for_trl_preference_with_the_same_field_names():
    rows = real_rows("hh_rlhf_harmless_sample.jsonl")
    assert not any(ADAPTERS["trl_preference"].fits(r) for r in rows)
    assert detect_format(rows).name == "hh_rlhf"


def test_detection_follows_the_majority_of_sampled_rows():
    # One GSM8K row has lost its "#### <answer>" line; the other four still decide the format.
    rows = real_rows("gsm8k_test_sample.jsonl")
    rows[1]["answer"] = rows[1]["answer"].removesuffix("\n#### 3")
    assert detect_format(rows).name == "gsm8k"


@pytest.mark.parametrize(
    ("fixture", "fields"),
    [
        ("seed_tasks_sample.jsonl", "id, instances, instruction, is_classification, name"),
        ("mt_bench_question_sample.jsonl", "category, question_id, reference, turns"),
    ],
)
def test_real_file_of_no_known_format_is_unknown_format_naming_the_fields_seen(fixture, fields):
    error = detection_error(real_rows(fixture))
    assert error.reason == Reason.unknown_format
    assert str(error) == f"no known format fits; fields seen: {fields}"


def test_kto_file_is_detected_as_kto_feedback_never_as_sft():
    # Read as OpenAI-messages SFT, the label=false rows (undesirable answers) would become training targets.
    assert detect_format(real_rows("kto_en_demo_sample.jsonl")).name == "messages_kto"


def test_rows_fitting_two_unrelated_formats_are_ambiguous_naming_both_and_the_fields():
    # Real Alpaca rows that also carry a Dolly-style `response`: alpaca and dolly both fit, neither is more specific.
    rows = [{**r, "response": r["output"]} for r in real_rows("alpaca_sample.jsonl")]
    error = detection_error(rows)
    assert error.reason == Reason.ambiguous_format
    assert str(error) == (
        "fits alpaca and dolly; set `format:` in the recipe. Fields seen: input, instruction, output, response"
    )


def test_ultrafeedback_shaped_rows_with_messages_and_pairs_are_ambiguous():
    # UltraFeedback-binarized style: prompt, chosen/rejected conversations, and the chosen conversation as `messages`.
    dpo = real_rows("dpo_en_demo_sample.jsonl")[0]
    user = {"role": "user", "content": dpo["conversations"][0]["value"]}
    chosen = [user, {"role": "assistant", "content": dpo["chosen"]["value"]}]
    rejected = [user, {"role": "assistant", "content": dpo["rejected"]["value"]}]
    row = {"prompt": user["content"], "chosen": chosen, "rejected": rejected, "messages": chosen}
    error = detection_error([row])
    assert error.reason == Reason.ambiguous_format
    assert str(error).startswith("fits openai and trl_preference;")
    assert str(error).endswith("Fields seen: chosen, messages, prompt, rejected")


def test_no_rows_to_sample_is_unknown_format():
    error = detection_error([])
    assert error.reason == Reason.unknown_format
    assert str(error) == "no JSON object rows to detect the format from"


def test_a_detection_error_quarantines_every_row_of_the_file_with_its_reason_code():
    error = detection_error(real_rows("seed_tasks_sample.jsonl"))
    source = SourcePlan(0, "seed", None, "apache-2.0", "human", {}, 1_000_000)
    plan = FilePlan(source, 0, None, (error.reason, f"seed_tasks_sample.jsonl: {error}"))
    with pytest.raises(Rejected) as info:
        canonical_record(real_rows("seed_tasks_sample.jsonl")[0], plan)
    assert info.value.reason == Reason.unknown_format
    assert info.value.detail == (
        "seed_tasks_sample.jsonl: no known format fits; "
        "fields seen: id, instances, instruction, is_classification, name"
    )
