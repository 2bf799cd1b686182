"""The canonical record: one Arrow schema for all regimes, record ids, and the reason codes."""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc


class Regime(StrEnum):
    sft = "sft"
    preference = "preference"
    rl = "rl"
    # Unpaired binary feedback (KTO): a prompt and one completion, in `chosen` when it is desirable and in `rejected`
    # when it is not. The preference regime's own projection for trainers that learn from single labelled answers.
    kto = "kto"


ROLES = ("system", "user", "assistant", "tool")
# Role names sources use, and the canonical role each means.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}

# Verifier names an RL record may carry (tunelake.rl.verifiers implements them; composite, several of them with
# weights, is tunelake.rl.composite).
VERIFIERS = ("exact_match", "numeric", "math", "multiple_choice", "regex", "json_schema", "python_tests", "composite")

# Tool calls are kept as a JSON string: their argument schemas differ per tool, a fixed struct would lose them.
MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("name", pa.string()),
        ("tool_calls", pa.string()),
        ("tool_call_id", pa.string()),
        ("reasoning_content", pa.string()),
    ]
)
MESSAGE_FIELDS = tuple(f.name for f in MESSAGE)
MESSAGES = pa.list_(MESSAGE)

RECORD = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("regime", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        # Hash of the normalised prompt (system + first user turn for SFT): the unit of splitting.
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("messages", MESSAGES),
        pa.field("prompt", MESSAGES),
        pa.field("chosen", MESSAGES),
        pa.field("rejected", MESSAGES),
        pa.field("answer", pa.string()),
        pa.field("verifier", pa.string()),
        pa.field("verifier_config", pa.string()),  # JSON object
        pa.field("tools", pa.string()),  # JSON list of tool schemas
        pa.field("lang", pa.string()),
        pa.field("domain", pa.string()),
        pa.field("difficulty", pa.float64()),
        pa.field("token_count", pa.int64()),
        pa.field("score_chosen", pa.float64()),
        pa.field("score_rejected", pa.float64()),
        pa.field("created_at", pa.string()),  # ISO 8601, as the source gave it
        pa.field("meta", pa.string()),  # JSON object
    ]
)

# The other tables of the lake.
BRONZE = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),  # 1-based record number in the file (the line number for JSONL)
        ("raw_hash", pa.string()),
        ("raw", pa.large_binary()),  # verbatim bytes of the row (JSON text of it for parquet/csv/json arrays)
    ]
)

QUARANTINE = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),  # null for a problem with the whole file (empty, truncated, unreadable)
        ("sub", pa.int32()),  # which of the row's records (as in the ledger); null for a row that gave none
        ("id", pa.string()),  # the record's id, when a stage quarantined a record; null for a row or file
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
        ("raw", pa.large_binary()),
    ]
)

# A frozen eval set (`tunelake freeze`): one row per record of the gold table it pins, with its prompt as the
# splits see it, so later builds keep that prompt and its near-duplicates in the frozen split.
FROZEN = pa.schema(
    [
        ("name", pa.string()),  # the set's name, unique in the lake
        ("table", pa.string()),  # the gold table it was frozen from, e.g. gold/sft/test
        ("version", pa.int64()),  # that table's Delta version
        ("split", pa.string()),
        ("id", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_text", pa.string()),
        ("frozen_at", pa.string()),  # ISO time
    ]
)

# The RL data plane's `rl/rollouts` table: one row per rollout, with its group's admission (rl/rollouts.py).
ROLLOUTS = pa.schema(
    [
        ("run_id", pa.string()),  # the RL run that sampled it
        ("step", pa.int64()),
        ("prompt_id", pa.string()),  # the bank record's id
        ("group_index", pa.int32()),  # the group's place in its step's batch
        ("rollout_index", pa.int32()),  # the rollout's place in its group
        ("policy_version", pa.int64()),  # the policy that generated it
        ("model", pa.string()),  # the model name the endpoint answered with
        ("prompt", pa.string()),  # the prompt messages, JSON
        ("completion_text", pa.string()),
        # Exactly as sampled (null where the endpoint did not return them): a trainer trains on these, not on a
        # re-tokenization of the text. Logprobs are float32, as samplers compute them.
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("finish_reason", pa.string()),
        ("reward", pa.float64()),  # null for a verifier infra_error
        ("status", pa.string()),  # the verifier's status: ok, wrong, unparsable, timeout, infra_error
        ("reason", pa.string()),  # the verifier's reason
        ("verifier", pa.string()),
        ("verifier_version", pa.string()),
        ("advantage", pa.float64()),  # null when the group was dropped
        ("admitted", pa.bool_()),  # the group's admission, the same on each of its rows
        ("drop_reason", pa.string()),  # groups.DropReason; null when admitted
        ("drop_detail", pa.string()),
        ("estimator", pa.string()),  # groups.Estimator of the advantages
        ("created_at", pa.string()),  # ISO time of the append
    ]
)

CALIBRATION = pa.schema(
    [
        ("calibration_id", pa.string()),  # one `tunelake rl calibrate` run
        ("prompt_id", pa.string()),  # the bank record's id
        ("split", pa.string()),  # the gold split the prompt is in
        ("model", pa.string()),  # the policy that was sampled, as the endpoint named it
        ("k", pa.int32()),  # completions sampled
        ("sampling", pa.string()),  # the sampling settings, JSON
        ("passed", pa.int32()),  # completions its verifier passed (status ok)
        ("scored", pa.int32()),  # completions with a verdict (all but infra_error)
        ("pass_rate", pa.float64()),  # passed / scored; null when none was scored
        ("difficulty", pa.float64()),  # 1 - pass_rate
        ("measured_at", pa.string()),  # ISO time
    ]
)

LEDGER = pa.schema(
    [
        ("id", pa.string()),  # canonical record id; null when the row never became a record
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        # Which of the records its row gave (an adapter may make several of one row); null for an entry about a
        # row that gave none.
        ("sub", pa.int32()),
        ("stage", pa.string()),
        ("action", pa.string()),  # keep | drop | quarantine | modify
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("run_id", pa.string()),
    ]
)


# Records that cannot be trained on, found by tokenization (gold/tokenized/<fingerprint>/quarantine).
TOKENIZE_QUARANTINE = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("table", pa.string()),
        ("reason", pa.string()),
        ("field", pa.string()),
        ("detail", pa.string()),
    ]
)


def table_of(schema: pa.Schema, rows: int, **columns: object) -> pa.Table:
    """A table of `rows` rows in `schema`: each keyword is a column (a list or an Arrow array) or one value for
    every row; a column not given is null."""

    def column(field: pa.Field) -> pa.Array:
        value = columns.get(field.name)
        if isinstance(value, list | pa.Array | pa.ChunkedArray):
            return value if isinstance(value, pa.Array | pa.ChunkedArray) else pa.array(value, field.type)
        return pa.array([value] * rows, field.type)

    return pa.Table.from_arrays([column(f) for f in schema], schema=schema)


def quarantine_ledger(quarantine: pa.Table, stage: str, run_id: str) -> pa.Table:
    """The ledger rows for quarantined rows (silver or tokenize quarantine): where each was, and why, as
    "field: detail" (or the detail alone when the problem is not one field's)."""
    field, detail = quarantine["field"], quarantine["detail"]
    why = pc.if_else(pc.is_valid(field), pc.binary_join_element_wise(field, ": ", detail, ""), detail)
    where = {k: quarantine[k] for k in ("id", "source", "file", "row", "sub") if k in quarantine.column_names}
    return table_of(
        LEDGER,
        quarantine.num_rows,
        **where,
        stage=stage,
        action="quarantine",
        reason=quarantine["reason"],
        detail=why,
        run_id=run_id,
    )


# Fields that make up a record's content, and so its id.
CONTENT_FIELDS = (
    "regime",
    "messages",
    "prompt",
    "chosen",
    "rejected",
    "answer",
    "verifier",
    "verifier_config",
    "tools",
)


class Reason(StrEnum):
    """Why a record was quarantined or dropped. Each code is explained in the README's table of reason codes."""

    invalid_json = "invalid_json"
    invalid_utf8 = "invalid_utf8"
    wrong_type = "wrong_type"
    missing_field = "missing_field"
    missing_license = "missing_license"
    unknown_format = "unknown_format"
    ambiguous_format = "ambiguous_format"
    unknown_role = "unknown_role"
    empty_turn = "empty_turn"
    no_assistant_turn = "no_assistant_turn"
    last_turn_not_assistant = "last_turn_not_assistant"
    bad_role_order = "bad_role_order"
    chosen_equals_rejected = "chosen_equals_rejected"
    empty_response = "empty_response"
    missing_answer = "missing_answer"
    unknown_verifier = "unknown_verifier"
    too_long = "too_long"
    truncated_file = "truncated_file"
    unreadable_file = "unreadable_file"
    empty_file = "empty_file"
    # Pairs made of ratings, ranks or judgments (ingest/adapters/rated.py, judged.py, oasst2.py).
    missing_rating = "missing_rating"  # a pair with a response that has no usable rating; the row's others go on
    no_pair = "no_pair"  # a row with fewer than two rated responses: no pair can be made of it
    # written as grouped_into:<row>: a row of a grouped format (rated_rows) whose ratings are in the pairs of its
    # group, recorded at the group's first row (dropped: nothing in it is wrong)
    grouped_into = "grouped_into"
    no_ranked_replies = "no_ranked_replies"  # an OASST2 tree with no two ranked replies to one message (dropped)
    invalid_verdict = "invalid_verdict"  # a judgment with no verdict, or one out of range or contradicting itself
    deleted_message = "deleted_message"  # a pair with a message its source marks deleted (in a side or the prompt)
    failed_review = "failed_review"  # a pair with a message whose review failed in its source (OASST2 review_result)
    duplicate = "duplicate_of"  # written as duplicate_of:<id>
    near_duplicate = "near_duplicate_of"  # written as near_duplicate_of:<id>
    prompt_cap = "prompt_cap"  # written as prompt_cap:<group id>
    cluster_cap = "cluster_cap"  # written as cluster_cap:<cluster id>, beyond silver.diversity's max_per_cluster
    not_selected = "not_selected"  # gold.select kept a subset of the corpus that covers it best, without it
    contaminated = "contaminated"  # written as contaminated:<eval set>:<item>
    low_quality = "low_quality"  # written as low_quality:<rule>
    pii = "pii"  # written as pii:<type>, where silver.quality.pii drops instead of redacting
    refusal = "refusal"  # written as refusal:<pattern>, where silver.quality.refusal drops instead of tagging
    mix_sampled_out = "mix_sampled_out"  # written as mix_sampled_out:<group>: beyond its group's quota in gold.mix
    mix_unlisted = "mix_unlisted"  # written as mix_unlisted:<group>: a group gold.mix.ratios gives no share
    language = "language"  # written as language:<code> (outside silver.quality.lang's allow-list) or language:mixed
    unverifiable_gold = "unverifiable_gold"  # an RL record whose gold does not pass its own verifier
    bad_verifier_config = "bad_verifier_config"  # an RL record's verifier_config its verifier does not accept
    # silver.preference: which pairs a preference set holds.
    judgment_merged = "judgment_merged"  # written as judgment_merged:<id>: another vote on a pair kept as <id>
    low_agreement = "low_agreement"  # a pair's votes agree less than min_agreement
    tie = "tie"  # the source cannot tell the two responses apart (ties: drop)
    low_margin = "low_margin"  # a pair from ratings whose score difference is below min_margin
    pair_not_selected = "pair_not_selected"  # the strategy chose another pair of the prompt's rated responses
    length_balance = "length_balance"  # thinned so that chosen is longer in half the pairs
    # Tokenization (gold/tokenized): the record is never trained on.
    template_error = "template_error"
    template_dropped_content = "template_dropped_content"
    template_not_prefix_stable = "template_not_prefix_stable"
    special_token_in_content = "special_token_in_content"
    double_bos = "double_bos"
    stop_token_not_trained = "stop_token_not_trained"
    mask_empty = "mask_empty"
    mask_overruns_turn = "mask_overruns_turn"
    mask_audit_failed = "mask_audit_failed"
    overlong = "overlong"
    labels_lost_to_truncation = "labels_lost_to_truncation"


class Rejected(Exception):
    """A record that cannot be handled correctly: quarantined with a reason code, the field, and what was wrong."""

    def __init__(self, reason: Reason, field: str | None, detail: str):
        super().__init__(f"{reason.value}: {field + ': ' if field else ''}{detail}")
        self.reason, self.field, self.detail = reason, field, detail


class NoRecord(Exception):
    """A row read correctly that gives no record of its regime (an OASST2 tree with no two ranked replies to one
    message holds no preference pair): dropped in the ledger with a reason code, not quarantined, as nothing in it
    is wrong."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail
