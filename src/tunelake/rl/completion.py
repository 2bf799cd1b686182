"""A completion as the policy sampled it, and the sampling settings that decide what an endpoint returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def as_json(self) -> dict:
        """The completion as JSON values (tuples as lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> Completion:
        """The completion `as_json` gave."""
        return cls(
            text=value["text"],
            finish_reason=value["finish_reason"],
            prompt_token_ids=_tuple(value["prompt_token_ids"]),
            completion_token_ids=_tuple(value["completion_token_ids"]),
            logprobs=_tuple(value["logprobs"]),
            model=value["model"],
        )


def _tuple(values: list | None) -> tuple | None:
    return None if values is None else tuple(values)
