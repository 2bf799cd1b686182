"""The `rl/rollouts` table: every scored rollout of an RL run, token-exact, with its group's admission.

Appended one commit per batch of groups (under the lake's lock, like `tunelake freeze`), never rewritten: a run can
be inspected, re-verified after a verifier changes without calling the model again, and assembled into SFT and
preference data (rl/assemble.py). Reads are column-projected, so a large run reads only what it needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tunelake import tables
from tunelake.lake import Lake
from tunelake.rl.groups import Judged
from tunelake.schema import ROLLOUTS


def rollout_rows(run_id: str, judged: Sequence[Judged], verifiers: Mapping[str, tuple[str, str]]) -> pa.Table:
    """The rows of the judged groups (one per rollout, in group then rollout order), in the ROLLOUTS schema.

    verifiers gives each prompt id's (verifier, verifier version)."""
    columns: dict[str, list] = {field.name: [] for field in ROLLOUTS}
    for group_index, item in enumerate(judged):
        group, decision = item.group, item.decision
        if group.prompt_id not in verifiers:
            raise KeyError(f"no verifier given for prompt {group.prompt_id!r}: verifiers maps each prompt id")
        verifier, verifier_version = verifiers[group.prompt_id]
        prompt = orjson.dumps(group.prompt).decode()
        for rollout_index, rollout in enumerate(group.rollouts):
            completion = rollout.completion
            row = {
                "run_id": run_id,
                "step": group.step,
                "prompt_id": group.prompt_id,
                "group_index": group_index,
                "rollout_index": rollout_index,
                "policy_version": group.policy_version,
                "model": completion.model,
                "prompt": prompt,
                "completion_text": completion.text,
                "prompt_token_ids": completion.prompt_token_ids,
                "completion_token_ids": completion.completion_token_ids,
                "logprobs": completion.logprobs,
                "finish_reason": completion.finish_reason,
                "reward": rollout.reward,
                "status": rollout.status,
                "reason": rollout.reason,
                "verifier": verifier,
                "verifier_version": verifier_version,
                "advantage": None if item.advantages is None else item.advantages[rollout_index],
                "admitted": decision.admitted,
                "drop_reason": None if decision.reason is None else decision.reason.value,
                "drop_detail": decision.detail or None,
                "estimator": item.estimator.value,
            }
            for name, value in row.items():
                columns[name].append(value)
    created_at = datetime.now(UTC).isoformat()
    columns["created_at"] = [created_at] * len(columns["run_id"])
    return pa.Table.from_pydict(columns, schema=ROLLOUTS)


def append_rollouts(
    lake: Lake, run_id: str, judged: Sequence[Judged], verifiers: Mapping[str, tuple[str, str]]
) -> int | None:
    """Append the judged groups' rollouts to `rl/rollouts` in one commit; the table's new version (None if there
    were no rollouts). Waits for a running build to finish rather than failing mid-run."""
    return lake.append(tables.ROLLOUTS_NAME, ROLLOUTS, rollout_rows(run_id, judged, verifiers))


def read_rollouts(lake: Lake, columns: list[str] | None = None, run_id: str | None = None) -> pa.Table:
    """The rollouts (of one run, or all), in append order, with only the given columns (by default all)."""
    unknown = sorted(set(columns or ()) - set(ROLLOUTS.names))
    if unknown:
        raise ValueError(
            f"no column {', '.join(unknown)} in {tables.ROLLOUTS_NAME}: expected some of {ROLLOUTS.names}"
        )
    schema = ROLLOUTS if columns is None else pa.schema([ROLLOUTS.field(c) for c in columns])
    if not lake.exists(tables.ROLLOUTS_NAME):
        return schema.empty_table()
    where = None if run_id is None else [("run_id", "=", run_id)]
    parts = [
        pq.read_table(f, columns=columns, filters=where, schema=ROLLOUTS) for f in lake.files(tables.ROLLOUTS_NAME)
    ]
    return pa.concat_tables(parts) if parts else schema.empty_table()
