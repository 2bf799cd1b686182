"""Validation of a normalised canonical record: the first problem found is raised as Rejected."""

from __future__ import annotations

from tunelake.schema import ROLES, VERIFIERS, Reason, Regime, Rejected


def _check_turns(messages: list[dict], field: str) -> None:
    for i, msg in enumerate(messages):
        if msg["role"] not in ROLES:
            raise Rejected(
                Reason.unknown_role, f"{field}[{i}].role", f"expected one of {', '.join(ROLES)}, got {msg['role']!r}"
            )
        if not msg["content"] and not msg["tool_calls"]:
            raise Rejected(Reason.empty_turn, f"{field}[{i}].content", f"the {msg['role']} turn is empty")


def _check_order(messages: list[dict], field: str) -> None:
    """System only first; then user and assistant alternate, with tool results only after an assistant turn."""
    prev = None
    for i, msg in enumerate(messages):
        role = msg["role"]
        ok = {
            "system": prev is None,
            "user": prev in (None, "system", "assistant", "tool"),
            "assistant": prev in ("user", "tool"),
            "tool": prev in ("assistant", "tool"),
        }[role]
        if not ok:
            raise Rejected(Reason.bad_role_order, f"{field}[{i}].role", f"{role} cannot follow {prev or 'the start'}")
        prev = role


def _text_size(record: dict) -> int:
    """Characters of text a model reads or writes: each turn's content, reasoning and tool calls, the tool schemas
    and the gold answer. (Counting content alone let a 10 MB reasoning trace or tool call through.)"""
    turns = (m for key in ("messages", "prompt", "chosen", "rejected") for m in record.get(key) or ())
    size = sum(len(m["content"] or "") + len(m["reasoning_content"] or "") + len(m["tool_calls"] or "") for m in turns)
    return size + len(record.get("answer") or "") + len(record.get("tools") or "")


def validate(record: dict, max_chars: int) -> None:
    regime = record["regime"]
    if regime == Regime.sft:
        msgs = record["messages"]
        _check_turns(msgs, "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise Rejected(Reason.no_assistant_turn, "messages", "expected at least one assistant turn")
        _check_order(msgs, "messages")
        if msgs[-1]["role"] != "assistant":
            raise Rejected(
                Reason.last_turn_not_assistant, f"messages[{len(msgs) - 1}].role", f"ends with {msgs[-1]['role']}"
            )
    elif regime == Regime.preference:
        prompt = record["prompt"]
        if not prompt:
            raise Rejected(Reason.missing_field, "prompt", "expected at least one prompt message")
        _check_turns(prompt, "prompt")
        for side in ("chosen", "rejected"):
            response = record[side]
            if not response or not any((m["content"] or m["tool_calls"]) for m in response):
                raise Rejected(Reason.empty_response, side, "the response is empty")
            _check_turns(response, side)
            if bad := next((i for i, m in enumerate(response) if m["role"] not in ("assistant", "tool")), None):
                # A response is what the policy generates: a user or system turn in it would be trained on.
                raise Rejected(Reason.bad_role_order, f"{side}[{bad}].role", "a response holds only assistant turns")
            _check_order(prompt + response, f"prompt+{side}")
            if response[-1]["role"] != "assistant":
                raise Rejected(Reason.last_turn_not_assistant, side, f"ends with {response[-1]['role']}")
        if record["chosen"] == record["rejected"]:
            raise Rejected(Reason.chosen_equals_rejected, "chosen", "chosen and rejected are the same response")
    else:
        prompt = record["prompt"]
        if not prompt:
            raise Rejected(Reason.missing_field, "prompt", "expected at least one prompt message")
        _check_turns(prompt, "prompt")
        _check_order(prompt, "prompt")
        if not record.get("answer"):
            raise Rejected(Reason.missing_answer, "answer", "expected a gold answer")
        if record.get("verifier") not in VERIFIERS:
            raise Rejected(
                Reason.unknown_verifier,
                "verifier",
                f"expected one of {', '.join(VERIFIERS)}, got {record.get('verifier')!r}",
            )
    size = _text_size(record)
    if size > max_chars:
        raise Rejected(
            Reason.too_long, None, f"{size} characters of text; the limit (silver.max_chars) is {max_chars}"
        )
