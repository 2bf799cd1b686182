"""A completion as the policy sampled it, and the sampling settings that decide what an endpoint returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """Everything besides the messages that decides what the endpoint returns."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    """One sampled completion, with the exact tokens the sampler drew when the endpoint returned them."""

    text: str
    finish_reason: str  # "stop" | "length" | ... as the endpoint said
    prompt_token_ids: tuple[int, ...] | None  # as the endpoint tokenized the prompt (None if it did not return them)
    completion_token_ids: tuple[int, ...] | None  # exactly the sampled tokens
    logprobs: tuple[float, ...] | None  # the sampler's logprob of each sampled token
    model: str  # the model name the endpoint answered with
