"""Preference formats: TRL preference (explicit or implicit prompt), HH-RLHF transcripts, ShareGPT pairs, and
LLaMA-Factory's v1 DPO (whole conversations with typed content)."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.arrow import Columnar, Columns, blank, message_lists, present, strings
from tunelake.ingest.adapters.messages import (
    chat_messages,
    list_field,
    message,
    optional_number,
    sharegpt_message,
    split_shared_prefix,
    system_prompt,
    text_field,
)
from tunelake.schema import Reason, Regime, Rejected

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _scores(row: dict) -> dict:
    return {key: optional_number(row, key) for key in ("score_chosen", "score_rejected")}


def _side(row: dict, key: str) -> list[dict]:
    value = row.get(key)
    if value is None:
        raise Rejected(Reason.missing_field, key, "expected a string or a list of messages")
    return [message("assistant", value)] if isinstance(value, str) else chat_messages(value, key)


def trl_preference(row: dict, regime: Regime) -> dict:
    if "prompt" in row:
        prompt = row["prompt"]
        prompt = [message("user", prompt)] if isinstance(prompt, str) else chat_messages(prompt, "prompt")
        chosen, rejected = _side(row, "chosen"), _side(row, "rejected")
    else:  # implicit prompt: both sides hold the whole conversation
        prompt, chosen, rejected = split_shared_prefix(
            chat_messages(row["chosen"], "chosen"), chat_messages(row["rejected"], "rejected")
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_scores(row)}


def hh_transcript(text: str, field: str) -> list[dict]:
    """Messages from an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise Rejected(Reason.wrong_type, field, "expected the transcript to start with '\\n\\nHuman:'")
    return [message(_HH_ROLES[role], body) for role, body in zip(parts[1::2], parts[2::2], strict=True)]


def hh_rlhf(row: dict, regime: Regime) -> dict:
    chosen = hh_transcript(text_field(row, "chosen"), "chosen")
    rejected = hh_transcript(text_field(row, "rejected"), "rejected")
    prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# Each marker as the regex would match it (with its optional space first), and the code that replaces it.
_HH_MARKS = (
    ("\n\nHuman: ", "\x00\x01"),
    ("\n\nHuman:", "\x00\x01"),
    ("\n\nAssistant: ", "\x00\x02"),
    ("\n\nAssistant:", "\x00\x02"),
)


def _turns(texts: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    """hh_transcript() for a whole array: (role, body) of every turn laid end to end, turns per row, and the rows
    that are plain transcripts (nothing before the first turn, none of the control characters that mark cuts)."""
    odd = pc.match_substring_regex(texts, "[\\x00-\\x02]").fill_null(True)
    if pc.any(odd).as_py():
        texts = pc.if_else(odd, "", texts)  # such rows go row by row; as "" they keep the others' turns in step
    # Plain substring passes (far cheaper than the regex with a group): each marker becomes NUL and a role code.
    for mark, code in _HH_MARKS:
        texts = pc.replace_substring(texts, mark, code)
    pieces = pc.split_pattern(texts, "\x00")
    sizes = pc.list_value_length(pieces).to_numpy(zero_copy_only=False).astype(np.int64)
    turns = pc.list_flatten(pc.list_slice(pieces, 1))
    role = pc.if_else(pc.starts_with(turns, "\x01"), "user", "assistant")
    body = pc.utf8_ltrim(turns, characters="\x01\x02")
    plain = blank(pc.list_element(pieces, 0)) & ~odd.to_numpy(zero_copy_only=False)
    return role, body, sizes - 1, plain


def _ranges(first: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The indices first[r] .. first[r] + lengths[r] - 1 of every row r, laid end to end."""
    starts = np.repeat(first - (np.cumsum(lengths) - lengths), lengths)
    return pa.array(starts + np.arange(lengths.sum()), pa.int64())


def hh_rlhf_columns(table: pa.Table) -> Columns:
    """hh_rlhf() for a whole chunk: both transcripts split into turns, then split_shared_prefix()."""
    chosen, rejected = table["chosen"].combine_chunks(), table["rejected"].combine_chunks()
    handled = present(chosen, rejected)
    c_role, c_body, c_turns, c_plain = _turns(chosen.fill_null(""))
    r_role, r_body, r_turns, r_plain = _turns(rejected.fill_null(""))
    c_first, r_first = np.cumsum(c_turns) - c_turns, np.cumsum(r_turns) - r_turns
    # The shared prefix: turns equal on both sides, compared pairwise up to the shorter transcript.
    both = np.minimum(c_turns, r_turns)
    pair_c, pair_r = _ranges(c_first, both), _ranges(r_first, both)
    same = pc.and_(
        pc.equal(c_role.take(pair_c), r_role.take(pair_r)), pc.equal(c_body.take(pair_c), r_body.take(pair_r))
    )
    differs = np.flatnonzero(~same.to_numpy(zero_copy_only=False))
    row_of_pair = np.repeat(np.arange(len(both)), both)
    shared = both.copy()
    rows, first = np.unique(row_of_pair[differs], return_index=True)
    shared[rows] = differs[first] - (np.cumsum(both) - both)[rows]
    # ... ending before an assistant turn, so both responses start with the assistant.
    is_assistant = pc.equal(c_role, "assistant").to_numpy(zero_copy_only=False)
    while len(is_assistant) and (back := (shared > 0) & is_assistant[np.maximum(c_first + shared - 1, 0)]).any():
        shared[back] -= 1
    c_rest, r_rest = c_turns - shared, r_turns - shared
    prompt_at, chosen_at = _ranges(c_first, shared), _ranges(c_first + shared, c_rest)
    rejected_at = _ranges(r_first + shared, r_rest)
    fields = {
        "prompt": message_lists(c_role.take(prompt_at), c_body.take(prompt_at), shared),
        "chosen": message_lists(c_role.take(chosen_at), c_body.take(chosen_at), c_rest),
        "rejected": message_lists(r_role.take(rejected_at), r_body.take(rejected_at), r_rest),
    }
    return Columns(fields, {}, handled & c_plain & r_plain)


def sharegpt_preference(row: dict, regime: Regime) -> dict:
    turns = list_field(row, "conversations")
    prompt = [sharegpt_message(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return {
        "prompt": [*system_prompt(row), *prompt],
        "chosen": [sharegpt_message(row["chosen"], "chosen")],
        "rejected": [sharegpt_message(row["rejected"], "rejected")],
    }


def llamafactory_v1_dpo(row: dict, regime: Regime) -> dict:
    """LLaMA-Factory's `v1_dpo`: both sides are whole conversations (typed content, per-message loss_weight, which
    canonicalize keeps in meta.message_fields); the prompt is their shared prefix."""
    prompt, chosen, rejected = split_shared_prefix(
        chat_messages(list_field(row, "chosen_messages"), "chosen_messages"),
        chat_messages(list_field(row, "rejected_messages"), "rejected_messages"),
    )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _is_hh(row: dict) -> bool:
    return isinstance(row["chosen"], str) and row["chosen"].startswith("\n\nHuman:")


ADAPTERS = [
    Adapter(
        "trl_preference",
        (Regime.preference,),
        frozenset({"chosen", "rejected"}),
        trl_preference,
        frozenset({"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}),
        matches=lambda r: not _is_hh(r) and ("prompt" in r or isinstance(r["chosen"], list)),
    ),
    Adapter(
        "hh_rlhf",
        (Regime.preference,),
        frozenset({"chosen", "rejected"}),
        hh_rlhf,
        frozenset({"chosen", "rejected"}),
        matches=_is_hh,
        columnar=Columnar(strings("chosen", "rejected"), (Regime.preference,), hh_rlhf_columns),
    ),
    Adapter(
        "sharegpt_preference",
        (Regime.preference,),
        frozenset({"conversations", "chosen", "rejected"}),
        sharegpt_preference,
        frozenset({"conversations", "chosen", "rejected", "system"}),
        matches=lambda r: isinstance(r["chosen"], dict),
    ),
    Adapter(
        "llamafactory_v1_dpo",
        (Regime.preference,),
        frozenset({"chosen_messages", "rejected_messages"}),
        llamafactory_v1_dpo,
        frozenset({"chosen_messages", "rejected_messages"}),
    ),
]
