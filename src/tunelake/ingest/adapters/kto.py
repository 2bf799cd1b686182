"""Unpaired binary feedback (KTO): a prompt, one completion and whether it is desirable. TRL's unpaired format
(`prompt`, `completion`, `label`) and a chat with a label (LLaMA-Factory's KTO demo: `messages` ending in the
completion, `label`). The completion goes in `chosen` when it is desirable and in `rejected` when it is not, so a
step that trains on responses never mistakes an undesirable one for a target."""

from __future__ import annotations

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.messages import chat_messages, message
from tunelake.schema import ROLE_ALIASES, Reason, Regime, Rejected


def _label(row: dict) -> bool:
    value = row.get("label")
    if not isinstance(value, bool):
        raise Rejected(Reason.wrong_type, "label", f"expected true (desirable) or false (undesirable), got {value!r}")
    return value


def _record(prompt: list[dict], completion: list[dict], desirable: bool) -> dict:
    return {"prompt": prompt, "chosen" if desirable else "rejected": completion}


def trl_kto(row: dict, regime: Regime) -> dict:
    prompt, completion = row["prompt"], row["completion"]
    prompt = [message("user", prompt)] if isinstance(prompt, str) else chat_messages(prompt, "prompt")
    if isinstance(completion, str):
        completion = [message("assistant", completion)]
    else:
        completion = chat_messages(completion, "completion")
    return _record(prompt, completion, _label(row))


def messages_kto(row: dict, regime: Regime) -> dict:
    """The trailing assistant turns are the completion; everything before them the prompt."""
    messages = chat_messages(row["messages"], "messages")
    start = len(messages)
    while start and ROLE_ALIASES.get(messages[start - 1]["role"].strip().lower()) == "assistant":
        start -= 1
    if start == len(messages):
        raise Rejected(Reason.last_turn_not_assistant, "messages", "expected the completion as the last turn")
    return _record(messages[:start], messages[start:], _label(row))


ADAPTERS = [
    Adapter(
        "trl_kto",
        (Regime.kto,),
        frozenset({"prompt", "completion", "label"}),
        trl_kto,
        frozenset({"prompt", "completion", "label"}),
    ),
    Adapter(
        "messages_kto",
        (Regime.kto,),
        frozenset({"messages", "label"}),
        messages_kto,
        frozenset({"messages", "label"}),
    ),
]
