"""SFT formats: OpenAI messages, ShareGPT, Alpaca, Dolly, prompt/completion."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.ingest.adapters import Adapter
from tunelake.ingest.adapters.arrow import Columnar, Columns, blank, message_lists, messages, present, strings
from tunelake.ingest.adapters.messages import (
    chat_messages,
    list_field,
    message,
    optional_text,
    sharegpt_message,
    system_prompt,
    text_field,
    tool_calls_json,
    tools_json,
)
from tunelake.schema import Reason, Regime, Rejected


def openai_messages(row: dict, regime: Regime) -> dict:
    return {"messages": chat_messages(row["messages"], "messages"), "tools": tools_json(row.get("tools"))}


_PLAIN_CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_PLAIN_SHAREGPT = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))


def _plain_turns(column: pa.ChunkedArray, role_key: str, content_key: str) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """Canonical message lists from lists of plain {role, content} objects (under the given keys), the rows
    the per-row adapter must see (a turn with no role: it names the field), and every turn's role."""
    column = column.combine_chunks()
    turns = pc.list_flatten(column)
    role, content = turns.field(role_key), turns.field(content_key)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    record = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    roleless = np.zeros(len(column), bool)
    roleless[record[role.is_null().to_numpy(zero_copy_only=False)]] = True
    return message_lists(role, content, lengths), present(column) & ~roleless, role


def openai_columns(table: pa.Table) -> Columns:
    """openai_messages() for a whole chunk of plain {role, content} messages (and no tools)."""
    messages, handled, _ = _plain_turns(table["messages"], "role", "content")
    return Columns({"messages": messages}, {}, handled)


def sharegpt_columns(table: pa.Table) -> Columns:
    """sharegpt() for a whole chunk of plain {from, value} turns (no system, no tools, no function calls)."""
    messages, handled, role = _plain_turns(table["conversations"], "from", "value")
    special = pc.is_in(role, pa.array(["function_call", "observation"])).to_numpy(zero_copy_only=False)
    record = pc.list_parent_indices(table["conversations"].combine_chunks()).to_numpy(zero_copy_only=False)
    handled[record[special]] = False  # a call's JSON is parsed, an observation renamed: the per-row adapter's work
    return Columns({"messages": messages}, {}, handled)


def _sharegpt_turn(turn: object, where: str) -> dict:
    """A ShareGPT turn; `function_call` turns become assistant tool calls, `observation` turns tool results."""
    msg = sharegpt_message(turn, where)
    if msg["role"] == "function_call":
        try:
            call = orjson.loads(msg["content"] or "")
        except orjson.JSONDecodeError as e:
            raise Rejected(Reason.invalid_json, f"{where}.value", f"function_call is not JSON: {e}") from None
        return message("assistant", "", tool_calls=tool_calls_json([call], f"{where}.value"))
    if msg["role"] == "observation":
        msg["role"] = "tool"
    return msg


def sharegpt(row: dict, regime: Regime) -> dict:
    turns = list_field(row, "conversations")
    messages = [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    return {"messages": [*system_prompt(row), *messages], "tools": tools_json(row.get("tools"))}


def _history(row: dict) -> list[dict]:
    """Alpaca-style `history`: earlier [instruction, response] pairs."""
    history = row.get("history")
    if history is not None and not isinstance(history, list):
        raise Rejected(Reason.wrong_type, "history", f"expected a list of pairs, got {type(history).__name__}")
    out = []
    for i, pair in enumerate(history or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise Rejected(Reason.wrong_type, f"history[{i}]", "expected a [user, assistant] pair of strings")
        out += [message("user", pair[0]), message("assistant", pair[1])]
    return out


def _instruction(row: dict, context_key: str) -> str:
    instruction = text_field(row, "instruction")
    context = optional_text(row, context_key) or ""
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def alpaca(row: dict, regime: Regime) -> dict:
    user = message("user", _instruction(row, "input"))
    return {"messages": [*system_prompt(row), *_history(row), user, message("assistant", text_field(row, "output"))]}


def alpaca_columns(table: pa.Table) -> Columns:
    """alpaca() for a whole chunk of rows with no system or history."""
    instruction, context, output = (table[k].combine_chunks() for k in ("instruction", "input", "output"))
    with_context = pc.binary_join_element_wise(instruction, "\n\n", context, "")
    user = pc.if_else(pa.array(~blank(context)), with_context, instruction)
    return Columns({"messages": messages(["user", "assistant"], [user, output])}, {}, present(instruction, output))


def dolly(row: dict, regime: Regime) -> dict:
    user = message("user", _instruction(row, "context"))
    response = message("assistant", text_field(row, "response"))
    return {"messages": [user, response], "domain": optional_text(row, "category")}


def _turns(row: dict, key: str, role: str) -> list[dict]:
    value = row.get(key)
    if isinstance(value, str):
        return [message(role, value)]
    if value is None:
        raise Rejected(Reason.missing_field, key, "expected a string or a list of messages")
    return chat_messages(value, key)


def prompt_completion(row: dict, regime: Regime) -> dict:
    return {"messages": _turns(row, "prompt", "user") + _turns(row, "completion", "assistant")}


ADAPTERS = [
    Adapter(
        "openai",
        (Regime.sft,),
        frozenset({"messages"}),
        openai_messages,
        frozenset({"messages", "tools"}),
        # A boolean `label` marks KTO data (desirable or not): read as SFT it would train on the undesirable answers.
        matches=lambda r: isinstance(r["messages"], list) and not isinstance(r.get("label"), bool),
        columnar=Columnar(pa.schema([("messages", _PLAIN_CHAT)]), (Regime.sft,), openai_columns),
    ),
    Adapter(
        "sharegpt",
        (Regime.sft,),
        frozenset({"conversations"}),
        sharegpt,
        frozenset({"conversations", "system", "tools"}),
        matches=lambda r: isinstance(r["conversations"], list),
        columnar=Columnar(pa.schema([("conversations", _PLAIN_SHAREGPT)]), (Regime.sft,), sharegpt_columns),
    ),
    Adapter(
        "alpaca",
        (Regime.sft,),
        frozenset({"instruction", "output"}),
        alpaca,
        frozenset({"instruction", "input", "output", "system", "history"}),
        columnar=Columnar(strings("instruction", "input", "output"), (Regime.sft,), alpaca_columns),
    ),
    Adapter(
        "dolly",
        (Regime.sft,),
        frozenset({"instruction", "response"}),
        dolly,
        frozenset({"instruction", "context", "response", "category"}),
    ),
    Adapter(
        "prompt_completion",
        (Regime.sft,),
        frozenset({"prompt", "completion"}),
        prompt_completion,
        frozenset({"prompt", "completion"}),
    ),
]
