"""Completions and groups for the data plane's tests, without an endpoint."""

from __future__ import annotations

from tunelake.rl.completion import Completion
from tunelake.rl.groups import Group, Rollout


def rollout(
    text: str = "The answer is 4.",
    reward: float | None = 1.0,
    status: str = "ok",
    finish_reason: str = "stop",
    tokens: int = 5,
    reason: str = "",
) -> Rollout:
    """A rollout whose completion has `tokens` sampled tokens (ids 100.., logprobs -0.5 each)."""
    ids = tuple(range(100, 100 + tokens))
    completion = Completion(text, finish_reason, (1, 2, 3), ids, tuple(-0.5 for _ in ids), "tiny-policy")
    return Rollout(completion, reward, status, reason or status)


def group(rewards: list[float | None], policy_version: int = 3, step: int = 7, prompt_id: str = "p0") -> Group:
    """A group of one rollout per reward: 1.0 ok, None infra_error, anything else wrong."""
    rollouts = tuple(
        rollout(reward=r, status="ok" if r == 1.0 else "infra_error" if r is None else "wrong") for r in rewards
    )
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    return Group(prompt_id, prompt, rollouts, policy_version, step)
