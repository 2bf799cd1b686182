"""Validation of normalised canonical records, vectorised over a batch: each record's first problem, as Rejected.

The checks run in a fixed order per regime and a record is rejected by the first one it fails, so its reason
does not depend on the other records of the batch. Messages for the rejected few are built in Python.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunelake.schema import ROLES, VERIFIERS, Reason, Regime, Rejected
from tunelake.silver.turns import MESSAGE_LISTS, Turns

SYSTEM, USER, ASSISTANT, TOOL = (ROLES.index(r) for r in ("system", "user", "assistant", "tool"))
START, UNKNOWN = len(ROLES), len(ROLES) + 1
# FOLLOWS[prev, role]: system only first; then user and assistant alternate, with tool results only after an
# assistant turn.
FOLLOWS = np.zeros((UNKNOWN + 1, UNKNOWN + 1), bool)
FOLLOWS[START, SYSTEM] = True
FOLLOWS[[START, SYSTEM, ASSISTANT, TOOL], USER] = True
FOLLOWS[[USER, TOOL], ASSISTANT] = True
FOLLOWS[[ASSISTANT, TOOL], TOOL] = True
_ROLES = pa.array(ROLES)


def _bools(values: pa.Array) -> np.ndarray:
    return values.fill_null(False).to_numpy(zero_copy_only=False)


def _blank(values: pa.Array) -> np.ndarray:
    """Null or the empty string (what `not value` means for a string)."""
    return ~_bools(pc.greater(pc.binary_length(values), 0))


def _codes(turns: Turns) -> np.ndarray:
    return pc.fill_null(pc.index_in(turns.fields["role"], _ROLES), UNKNOWN).to_numpy(zero_copy_only=False)


def _last_role(turns: Turns, codes: np.ndarray) -> np.ndarray:
    """The role code of each record's last turn (START for a record with none)."""
    last, out = turns.last(), np.full(turns.records, START)
    out[last >= 0] = codes[last[last >= 0]]
    return out


class _Problems:
    """The first problem of each record, by record index."""

    def __init__(self) -> None:
        self.found: dict[int, Rejected] = {}

    def add(self, records: np.ndarray, make: Callable[[int], Rejected]) -> None:
        for r in np.flatnonzero(records):
            if r not in self.found:
                self.found[int(r)] = make(int(r))

    def turns(self, turns: Turns, field: str, scope: np.ndarray) -> None:
        """Every turn has a known role and some content or tool calls; the first that does not is the problem."""
        codes = _codes(turns)
        bad = (codes == UNKNOWN) | (_blank(turns.fields["content"]) & _blank(turns.fields["tool_calls"]))
        first = turns.first(bad)

        def make(r: int) -> Rejected:
            i = first[r]
            role = turns.fields["role"][i].as_py()
            where = f"{field}[{turns.position[i]}]"
            if codes[i] == UNKNOWN:
                return Rejected(
                    Reason.unknown_role, f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}"
                )
            return Rejected(Reason.empty_turn, f"{where}.content", f"the {role} turn is empty")

        self.add(scope & (first >= 0), make)

    def order(self, turns: Turns, field: str, scope: np.ndarray, then: Turns | None = None) -> None:
        """The roles of a record's turns (and then those of `then`, as one list) follow each other as FOLLOWS
        allows; the first that does not is the problem."""
        codes, record, position = _codes(turns), turns.record, turns.position
        if then is not None:
            codes = np.concatenate((codes, _codes(then)))
            record = np.concatenate((record, then.record))
            position = np.concatenate((position, then.position + turns.lengths[then.record]))
            in_order = np.lexsort((position, record))
            codes, record, position = codes[in_order], record[in_order], position[in_order]
        prev = np.where(position == 0, START, np.roll(codes, 1))
        bad = np.flatnonzero(~FOLLOWS[prev, codes])
        records, first = np.unique(record[bad], return_index=True)
        at = dict(zip(records.tolist(), bad[first].tolist(), strict=True))

        def make(r: int) -> Rejected:
            j = at[r]
            following = "the start" if prev[j] == START else ROLES[prev[j]]
            return Rejected(
                Reason.bad_role_order, f"{field}[{position[j]}].role", f"{ROLES[codes[j]]} cannot follow {following}"
            )

        in_scope = np.zeros(len(scope), bool)
        in_scope[records] = True
        self.add(scope & in_scope, make)


def validate(batch: pa.RecordBatch, max_chars: int, lists: dict[str, pa.Array]) -> dict[int, Rejected]:
    """The first problem of each invalid record in a normalised batch, by its index in the batch. `lists` is the
    batch's encoded message lists (identify.encode_lists)."""
    turns = {key: Turns.of(batch[key]) for key in MESSAGE_LISTS}
    regime = batch["regime"]
    sft, preference, rl, kto = (_bools(pc.equal(regime, r.value)) for r in Regime)
    problems = _Problems()

    msgs = turns["messages"]
    problems.turns(msgs, "messages", sft)
    problems.add(
        sft & ~msgs.any(_codes(msgs) == ASSISTANT),
        lambda r: Rejected(Reason.no_assistant_turn, "messages", "expected at least one assistant turn"),
    )
    problems.order(msgs, "messages", sft)
    last_role = _last_role(msgs, _codes(msgs))
    problems.add(
        sft & (last_role != ASSISTANT),
        lambda r: Rejected(
            Reason.last_turn_not_assistant, f"messages[{msgs.lengths[r] - 1}].role", f"ends with {ROLES[last_role[r]]}"
        ),
    )

    prompt = turns["prompt"]
    no_prompt = lambda r: Rejected(Reason.missing_field, "prompt", "expected at least one prompt message")  # noqa: E731
    problems.add((preference | rl | kto) & (prompt.lengths == 0), no_prompt)
    problems.turns(prompt, "prompt", preference | rl | kto)
    # A KTO record's one completion: in chosen (desirable) or rejected (undesirable), never both, never neither.
    given = {side: turns[side].lengths > 0 for side in ("chosen", "rejected")}
    problems.add(
        kto & given["chosen"] & given["rejected"],
        lambda r: Rejected(
            Reason.wrong_type,
            "rejected",
            "a KTO record holds one completion: in chosen when desirable, in rejected when not; both are given",
        ),
    )
    problems.add(
        kto & ~given["chosen"] & ~given["rejected"],
        lambda r: Rejected(Reason.empty_response, "chosen", "a KTO record needs its completion"),
    )
    for side in ("chosen", "rejected"):
        response = turns[side]
        responds = preference | (kto & given[side])  # the records whose `side` is a response to check
        said = response.any(~(_blank(response.fields["content"]) & _blank(response.fields["tool_calls"])))
        problems.add(
            responds & ~said, lambda r, side=side: Rejected(Reason.empty_response, side, "the response is empty")
        )
        problems.turns(response, side, responds)
        codes = _codes(response)
        # A response is what the policy generates: a user or system turn in it would be trained on.
        first = response.first((codes != ASSISTANT) & (codes != TOOL))
        problems.add(
            responds & (first >= 0),
            lambda r, side=side, first=first, response=response: Rejected(
                Reason.bad_role_order,
                f"{side}[{response.position[first[r]]}].role",
                "a response holds only assistant turns",
            ),
        )
        problems.order(prompt, f"prompt+{side}", responds, then=response)
        last_role = _last_role(response, codes)
        problems.add(
            responds & (last_role != ASSISTANT),
            lambda r, side=side, last_role=last_role: Rejected(
                Reason.last_turn_not_assistant, side, f"ends with {ROLES[last_role[r]]}"
            ),
        )
    same = _bools(pc.equal(lists["chosen"], lists["rejected"]))
    problems.add(
        preference & same,
        lambda r: Rejected(Reason.chosen_equals_rejected, "chosen", "chosen and rejected are the same response"),
    )

    problems.order(prompt, "prompt", rl)
    problems.add(
        rl & _blank(batch["answer"]), lambda r: Rejected(Reason.missing_answer, "answer", "expected a gold answer")
    )
    verifier = batch["verifier"]
    problems.add(
        rl & ~_bools(pc.is_in(verifier, pa.array(VERIFIERS))),
        lambda r: Rejected(
            Reason.unknown_verifier, "verifier", f"expected one of {', '.join(VERIFIERS)}, got {verifier[r].as_py()!r}"
        ),
    )

    size = _text_size(batch, turns)
    problems.add(
        size > max_chars,
        lambda r: Rejected(
            Reason.too_long, None, f"{size[r]} characters of text; the limit (silver.max_chars) is {max_chars}"
        ),
    )
    return problems.found


def _length(values: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _text_size(batch: pa.RecordBatch, turns: dict[str, Turns]) -> np.ndarray:
    """Characters of text a model reads or writes: each turn's content, reasoning and tool calls, the tool schemas
    and the gold answer. (Counting content alone let a 10 MB reasoning trace or tool call through.)"""
    size = _length(batch["answer"]) + _length(batch["tools"])
    for t in turns.values():
        per_turn = sum(_length(t.fields[f]) for f in ("content", "reasoning_content", "tool_calls"))
        size += np.bincount(t.record, weights=per_turn, minlength=t.records).astype(np.int64)
    return size
