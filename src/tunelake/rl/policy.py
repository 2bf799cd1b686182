"""Where completions come from: an OpenAI-compatible Endpoint, or a Python callable that samples them itself."""

from __future__ import annotations

from collections.abc import Callable

from tunelake.rl.completion import Completion, Sampling
from tunelake.rl.endpoint import Endpoint

# (messages, sampling, k) -> k completions: a policy in the same process (a trainer's own generate, a test's).
Generate = Callable[[list[dict], Sampling, int], list[Completion]]
Ask = tuple[list[dict], Sampling, int, str]  # (messages, sampling, k, tag): see Endpoint.complete


def ask_many(policy: Endpoint | Generate, asks: list[Ask]) -> list[list[Completion]]:
    """Each ask's completions, in order: an endpoint's side by side through its request cache, a callable's in
    turn (it has no cache: what it samples is its own business)."""
    if isinstance(policy, Endpoint):
        return policy.complete_many(asks)
    return [policy(messages, sampling, k) for messages, sampling, k, _ in asks]


def model_of(policy: Endpoint | Generate) -> str:
    """The policy's name, as calibrations and rollouts record it."""
    return policy.model if isinstance(policy, Endpoint) else getattr(policy, "__name__", type(policy).__name__)
