"""`tunelake rl reverify`: a run's rollouts scored again by today's verifiers, from the rollouts table alone.

After a verifier changes (a new version, a fixed bug), every completion of the run is scored again through the
reward cache (what the current versions scored already is a hit) against its prompt's record in the bank, its
group judged again (the run's own group config, from its state; a group dropped as stale stays stale), and the
whole run appended to `rl/rollouts` as a new run, `<run>.reverified-<id>`, token ids and all: no model is called,
and the original rows are left as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from tunelake.lake import Lake, new_run_id
from tunelake.rl.bank import Bank, BankError, Prompt
from tunelake.rl.completion import Completion
from tunelake.rl.composite import version_of
from tunelake.rl.dataplane import RUNS, LoopConfig
from tunelake.rl.groups import Decision, DropReason, Group, Rollout, judge
from tunelake.rl.reward_cache import INFRA_ERROR
from tunelake.rl.rollouts import append_rollouts, read_rollouts
from tunelake.rl.trainers import Rewards
from tunelake.tables import SPLITS


@dataclass(frozen=True)
class Reverified:
    run_id: str  # the new run the rescored rollouts were appended as
    rollouts: int
    changed: int  # rollouts whose reward or status changed
    admitted_before: int  # groups
    admitted_after: int


def reverify(lake: Lake, run_id: str, rewards: Rewards) -> Reverified:
    rows = read_rollouts(lake, run_id=run_id).to_pylist()
    if not rows:
        raise ValueError(f"no rollouts of run {run_id!r} in {lake.root}: see `tunelake rl serve` or DataPlane")
    records = _records(lake, {row["prompt_id"] for row in rows})
    state = lake.root / RUNS / f"{run_id}.json"
    config = LoopConfig.model_validate(json.loads(state.read_text())["config"]) if state.exists() else LoopConfig()
    grouped: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["step"], row["group_index"]), []).append(row)
    groups, stale, before, changed = [], [], 0, 0
    for (step, _), members in sorted(grouped.items()):
        members.sort(key=lambda r: r["rollout_index"])
        first, prompt = members[0], records[members[0]["prompt_id"]]
        before += first["admitted"]
        scored = rewards.group(*prompt.record, [r["completion_text"] for r in members])
        rollouts = tuple(
            Rollout(_completion(r), None if s.status == INFRA_ERROR else s.score, s.status, s.reason)
            for r, s in zip(members, scored, strict=True)
        )
        changed += sum(
            (r["reward"], r["status"]) != (o.reward, o.status) for r, o in zip(members, rollouts, strict=True)
        )
        groups.append(Group(prompt.id, json.loads(first["prompt"]), rollouts, first["policy_version"], step))
        stale.append(first["drop_reason"] == DropReason.stale.value)
    judged = []
    for group, was_stale in zip(groups, stale, strict=True):
        (again,) = judge([group], config.groups, group.policy_version)  # staleness is judged below, as it was
        if was_stale:
            again = replace(again, decision=Decision(False, DropReason.stale, "stale when sampled"), advantages=None)
        judged.append(again)
    new_run = f"{run_id}.reverified-{new_run_id()}"
    versions = {p.id: (p.verifier, version_of(p.verifier, p.verifier_config)) for p in records.values()}
    append_rollouts(lake, new_run, judged, versions)
    return Reverified(new_run, len(rows), changed, before, sum(j.decision.admitted for j in judged))


def _records(lake: Lake, ids: set[str]) -> dict[str, Prompt]:
    """The bank records of the run's prompts, from whichever gold split holds them now."""
    found: dict[str, Prompt] = {}
    for split in SPLITS:
        try:
            bank = Bank(lake, split)
        except BankError:
            continue
        found |= {i: bank.prompt(i) for i in ids & set(bank.ids)}
    if missing := ids - set(found):
        raise ValueError(
            f"{len(missing)} of the run's prompts are no longer in the lake's RL gold (e.g. {sorted(missing)[0]}): "
            "a rebuild dropped them, so their gold and verifier are unknown"
        )
    return found


def _completion(row: dict) -> Completion:
    ids = row["completion_token_ids"]
    return Completion(
        row["completion_text"],
        row["finish_reason"],
        None if row["prompt_token_ids"] is None else tuple(row["prompt_token_ids"]),
        None if ids is None else tuple(ids),
        None if row["logprobs"] is None else tuple(row["logprobs"]),
        row["model"],
    )
