"""Verifiers the pool tests load into their workers (`VerifierPool(plugins=["tests.rl.worker_plugins"])`)."""

from __future__ import annotations

import os

from pydantic import BaseModel

from tunelake.rl.verdict import Verdict, Verifier, ok, wrong
from tunelake.rl.verifiers import register


class NoConfig(BaseModel):
    pass


def exits_worker(gold: str, completion: str, config: NoConfig) -> Verdict:
    os._exit(3)  # a worker that dies mid-check (a segfault in a C extension, the OOM killer)


def raises(gold: str, completion: str, config: NoConfig) -> Verdict:
    raise KeyError(completion)  # a bug in a verifier


_calls = iter(range(1 << 30))


def flaky(gold: str, completion: str, config: NoConfig) -> Verdict:
    return ok() if next(_calls) % 2 == 0 else wrong("the other verdict")  # a verifier that disagrees with itself


register(Verifier("test_exits_worker", "1", NoConfig, exits_worker))
register(Verifier("test_flaky", "1", NoConfig, flaky))
register(Verifier("test_raises", "1", NoConfig, raises))
