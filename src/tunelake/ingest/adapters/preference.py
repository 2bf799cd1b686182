"""Preference formats: TRL preference (explicit or implicit prompt), HH-RLHF transcripts, ShareGPT pairs."""

from __future__ import annotations

import re

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.messages import chat_message, chat_messages, message, split_shared_prefix, text_field
from tunelake.schema import Reason, Regime, Rejected

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _scores(row: dict) -> dict:
    out = {}
    for key in ("score_chosen", "score_rejected"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Rejected(Reason.wrong_type, key, f"expected a number, got {type(value).__name__}")
        out[key] = None if value is None else float(value)
    return out


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


def sharegpt_preference(row: dict, regime: Regime) -> dict:
    prompt = chat_messages(row["conversations"], "conversations")
    if isinstance(row.get("system"), str) and row["system"]:
        prompt.insert(0, message("system", row["system"]))
    return {
        "prompt": prompt,
        "chosen": [chat_message(row["chosen"], "chosen")],
        "rejected": [chat_message(row["rejected"], "rejected")],
    }


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
    ),
    Adapter(
        "sharegpt_preference",
        (Regime.preference,),
        frozenset({"conversations", "chosen", "rejected"}),
        sharegpt_preference,
        frozenset({"conversations", "chosen", "rejected", "system"}),
        matches=lambda r: isinstance(r["chosen"], dict),
    ),
]
