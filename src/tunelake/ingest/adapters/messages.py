"""Turning the many spellings of a chat message into the canonical message dict."""

from __future__ import annotations

import json

import orjson

from tunelake.schema import MESSAGE_FIELDS, ROLE_ALIASES, Reason, Rejected


def text_field(row: dict, key: str) -> str:
    """row[key] as a string, or a Rejected naming the field."""
    if key not in row or row[key] is None:
        raise Rejected(Reason.missing_field, key, "expected a string, the field is missing")
    value = row[key]
    if not isinstance(value, str):
        raise Rejected(Reason.wrong_type, key, f"expected a string, got {type(value).__name__}")
    return value


def optional_text(row: dict, key: str) -> str | None:
    """row[key] if it is a string or absent; any other type is a Rejected naming the field."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise Rejected(Reason.wrong_type, key, f"expected a string, got {type(value).__name__}")
    return value


def optional_number(row: dict, key: str) -> float | None:
    """row[key] as a float if it is a number or absent; any other type (a boolean too) is a Rejected naming it."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(Reason.wrong_type, key, f"expected a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond 64 bits, read exactly (see canonicalize._parse)
        raise Rejected(Reason.wrong_type, key, "expected a number, got an integer too large for a float") from None


def list_field(row: dict, key: str) -> list:
    if key not in row or row[key] is None:
        raise Rejected(Reason.missing_field, key, "expected a list, the field is missing")
    value = row[key]
    if not isinstance(value, list):
        raise Rejected(Reason.wrong_type, key, f"expected a list, got {type(value).__name__}")
    return value


def string_list(row: dict, key: str, required: bool = True) -> list[str]:
    """row[key] as a list of strings ([] when it is optional and absent); else a Rejected naming the field."""
    if not required and row.get(key) is None:
        return []
    value = list_field(row, key)
    if not all(isinstance(v, str) for v in value):
        raise Rejected(Reason.wrong_type, key, "expected a list of strings")
    return value


def json_text(value: object, where: str | None, sort_keys: bool = False) -> str:
    """Compact JSON text of a parsed value, as orjson writes it. orjson cannot write integers beyond 64 bits nor
    nesting past 254 levels: the stdlib writes those exactly, and what it cannot (nesting near Python's recursion
    limit) is a Rejected naming the field."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS if sort_keys else 0).decode()
    except orjson.JSONEncodeError:
        try:
            return json.dumps(value, default=str, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":"))
        except RecursionError:
            raise Rejected(Reason.invalid_json, where, "nested too deep to write back as JSON") from None


def as_json(value: object, where: str) -> str | None:
    """Keep structured values (tool calls, tool schemas, configs) as JSON text; JSON strings pass as they are."""
    if value is None or isinstance(value, str):
        return value
    return json_text(value, where)


def function_call(call: object) -> object:
    """A tool call in the OpenAI shape {"type": "function", "function": {name, arguments}}.

    A bare {name, arguments} (ShareGPT function_call turns, typed tool_call parts) is wrapped, so a call has one
    spelling whatever its source; the Llama-3.1 and Mistral-Nemo templates read only `tool_call.function`.
    """
    if isinstance(call, dict) and "function" not in call:
        return {"type": "function", "function": call}
    return call


def message(role: str, content: str | None, **extra: str | None) -> dict:
    msg = dict.fromkeys(MESSAGE_FIELDS)
    msg.update(role=role, content=content, **extra)
    return msg


def system_prompt(row: dict) -> list[dict]:
    """The row's `system` field as a first message; none when it is absent, null or empty (no system prompt). A
    system prompt that is not text is a Rejected: dropping it would train the record without its instructions."""
    system = optional_text(row, "system")
    return [message("system", system)] if system else []


def _content(value: object, where: str) -> tuple[str | None, str | None, list]:
    """Text, reasoning and tool calls from a message content: a string, or a list of typed parts."""
    if value is None or isinstance(value, str):
        return value, None, []
    if not isinstance(value, list):
        raise Rejected(Reason.wrong_type, where, f"expected a string or a list of parts, got {type(value).__name__}")
    texts, reasoning, calls = [], [], []
    for i, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise Rejected(Reason.wrong_type, f"{where}[{i}]", f"expected a part object, got {type(part).__name__}")
        kind = part.get("type", "text")
        body = part.get("text", part.get("value"))
        if kind == "tool_call":
            calls.append(function_call(orjson.loads(body) if isinstance(body, str) else body))
        elif not isinstance(body, str):
            raise Rejected(Reason.wrong_type, f"{where}[{i}]", f"expected text in a {kind!r} part")
        elif kind == "reasoning":
            reasoning.append(body)
        elif kind == "text":
            texts.append(body)
        else:
            raise Rejected(
                Reason.wrong_type, f"{where}[{i}].type", f"expected text, reasoning or tool_call, got {kind!r}"
            )
    return "".join(texts), ("\n".join(reasoning) or None), calls


# Keys of a raw message that map to canonical message fields; any other key is kept under EXTRA.
_MESSAGE_KEYS = frozenset(
    {"role", "from", "content", "value", "name", "tool_calls", "tool_call_id", "reasoning_content"}
)
EXTRA = "_extra"


def _json_list_of_objects(value: object, where: str) -> list[dict]:
    """A list of JSON objects, given as such or as JSON text; else Rejected naming the field."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            raise Rejected(Reason.invalid_json, where, f"expected JSON: {e}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Rejected(Reason.wrong_type, where, "expected a list of objects")
    return value


def tools_json(value: object) -> str | None:
    """Tool schemas as JSON text; an empty list (or its JSON text) means no tools."""
    return None if value in (None, "", "[]", []) else as_json(_json_list_of_objects(value, "tools"), "tools")


def _check_arguments(arguments: object, where: str) -> None:
    """A call's arguments: JSON text of an object (OpenAI's spelling), the object itself (what Glaive and
    LLaMA-Factory data hold), or absent for a call that takes none; anything else is a Rejected naming the field."""
    if arguments is None or isinstance(arguments, dict):
        return
    got = type(arguments).__name__
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError as e:
            raise Rejected(Reason.invalid_json, where, f"expected JSON text of an object: {e}") from None
        if isinstance(parsed, dict):
            return
        got = f"JSON text of {type(parsed).__name__}"
    raise Rejected(Reason.wrong_type, where, f"expected an object or JSON text of one, got {got}")


def tool_calls_json(value: object, where: str) -> str | None:
    """Tool calls as JSON text in the OpenAI shape, each with a function name; None when there are none."""
    if value in (None, "", "[]", []):
        return None
    raw = _json_list_of_objects(value, where)
    calls = [function_call(c) for c in raw]
    if not all(isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str) for c in calls):
        raise Rejected(Reason.wrong_type, where, "expected each tool call to name its function")
    for i, (spelled, call) in enumerate(zip(raw, calls, strict=True)):
        path = f"{where}[{i}]{'.function' if 'function' in spelled else ''}.arguments"
        _check_arguments(call["function"].get("arguments"), path)
    return as_json(calls, where)


def chat_message(value: object, where: str) -> dict:
    """A canonical message from an OpenAI-style {role, content, ...} or ShareGPT-style {from, value} object."""
    if not isinstance(value, dict):
        raise Rejected(Reason.wrong_type, where, f"expected a message object, got {type(value).__name__}")
    role = value.get("role", value.get("from"))
    if not isinstance(role, str):
        raise Rejected(
            Reason.missing_field if role is None else Reason.wrong_type, f"{where}.role", "expected a role string"
        )
    raw_content = value.get("content", value.get("value"))
    try:
        content, reasoning, calls = _content(raw_content, f"{where}.content")
    except orjson.JSONDecodeError as e:
        raise Rejected(Reason.invalid_json, f"{where}.content", f"tool_call part is not JSON: {e}") from None
    tool_calls = tool_calls_json(value.get("tool_calls") or calls or None, f"{where}.tool_calls")
    reasoning = value.get("reasoning_content", reasoning)
    for key, val in (
        ("name", value.get("name")),
        ("tool_call_id", value.get("tool_call_id")),
        ("reasoning_content", reasoning),
    ):
        if val is not None and not isinstance(val, str):
            raise Rejected(Reason.wrong_type, f"{where}.{key}", f"expected a string, got {type(val).__name__}")
    msg = message(
        role,
        content,
        name=value.get("name"),
        tool_calls=tool_calls,
        tool_call_id=value.get("tool_call_id"),
        reasoning_content=reasoning,
    )
    extra = {k: v for k, v in value.items() if k not in _MESSAGE_KEYS}
    if extra:  # e.g. LLaMA-Factory's per-message loss_weight: kept in the record's meta, never dropped
        msg[EXTRA] = extra
    return msg


def sharegpt_message(turn: object, where: str) -> dict:
    """A canonical message from a ShareGPT {from, value} turn, whose value is text or null (lists of typed parts are
    OpenAI's `content`; read as parts, ["x"] would silently become the text "x")."""
    if isinstance(turn, dict) and not isinstance(turn.get("value"), str | None):
        raise Rejected(Reason.wrong_type, f"{where}.value", f"expected a string, got {type(turn['value']).__name__}")
    return chat_message(turn, where)


def chat_messages(value: object, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise Rejected(Reason.wrong_type, where, f"expected a list of messages, got {type(value).__name__}")
    return [chat_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) from two whole conversations: the prompt is their longest shared run of
    messages that ends before an assistant turn, so both responses start with the assistant."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and ROLE_ALIASES.get(chosen[n - 1]["role"].strip().lower()) == "assistant":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]
