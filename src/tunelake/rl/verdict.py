"""A verification result and the shape of a verifier (a name, a version, a config model, a pure check)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel


class Status(StrEnum):
    ok = "ok"
    wrong = "wrong"
    unparsable = "unparsable"  # no answer could be read from the completion (or the gold could not be read)
    timeout = "timeout"
    infra_error = "infra_error"  # a worker that died: never a reward, callers retry or report it


@dataclass(frozen=True)
class Verdict:
    score: float  # in [0, 1]; for infra_error it is meaningless and never used as a reward
    status: Status
    reason: str  # short, human-readable


def ok(reason: str = "matches the gold answer") -> Verdict:
    return Verdict(1.0, Status.ok, reason)


def wrong(reason: str) -> Verdict:
    return Verdict(0.0, Status.wrong, reason)


def unparsable(reason: str) -> Verdict:
    return Verdict(0.0, Status.unparsable, reason)


@dataclass(frozen=True)
class Verifier:
    """A named, versioned, deterministic check: a new version whenever the same inputs could score differently."""

    name: str
    version: str
    config: type[BaseModel]  # the record's verifier_config (a JSON object) validates against it
    check: Callable[[str, str, BaseModel], Verdict]  # (gold, completion, config) -> Verdict
