"""The hard timeout: every check runs in a killable worker process; the hazards measured on math-verify and verl's
reward pool, one test each."""

from __future__ import annotations

import signal
import threading

import math_verify
import pytest

from tunelake.rl.verifier_pool import VerifierError, VerifierPool
from tunelake.rl.verifiers import Status, Verdict

PLUGINS = ["tests.rl.worker_plugins"]
# With its timeouts off, math-verify compares this to 81 by computing 10**(10**10) in a C big-integer power that
# holds the GIL: measured here, still running after 15 s.
HANGS = "$10^{10^{10}}$"
OK = Verdict(1.0, Status.ok, "matches the gold answer")


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=1, timeout_s=2, plugins=PLUGINS) as pool:
        yield pool


def test_a_hanging_check_is_killed_and_the_next_calls_score_correctly(pool):
    verdict = pool.verify("math", "81", HANGS)
    assert (verdict.status, verdict.score) == (Status.timeout, 0.0)
    # verl's pool scores every later call 0.0 once a worker is killed; here the worker is replaced.
    assert [pool.verify("math", "81", "$9^2$") for _ in range(3)] == [OK] * 3
    assert pool.verify("math", "81", "$9^3$").status == Status.wrong


def test_a_worker_that_dies_is_infra_error_never_zero_and_the_pool_recovers(pool):
    verdict = pool.verify("test_exits_worker", "", "")
    assert verdict.status == Status.infra_error and "exit code 3" in verdict.reason
    assert pool.verify("numeric", "18", "#### 18") == OK


def test_a_verifier_bug_raises_with_its_traceback_and_the_worker_stays(pool):
    with pytest.raises(VerifierError, match="KeyError: 'boom'"):
        pool.verify("test_raises", "", "boom")
    assert pool.verify("numeric", "18", "#### 18") == OK


def test_math_verify_in_a_thread_raises_with_its_own_timeout_but_the_pool_does_not(pool):
    results = {}

    def direct():
        try:
            math_verify.parse("$9^2$")
        except ValueError as error:  # its SIGALRM timeout cannot be set off the main thread: the hazard
            results["direct"] = error
        results["pool"] = pool.verify("math", "81", "$9^2$")

    thread = threading.Thread(target=direct)
    thread.start()
    thread.join()
    assert "threaded environment" in str(results["direct"])
    assert results["pool"] == OK


def test_the_callers_alarm_survives_a_check(pool):
    handler = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        signal.alarm(100)
        math_verify.verify(math_verify.parse("$81$"), math_verify.parse("$9^2$"))
        assert signal.alarm(0) == 0  # math-verify cancelled the caller's alarm: the hazard
        signal.alarm(100)
        assert pool.verify("math", "81", "$9^2$") == OK
        assert signal.alarm(0) > 0  # still pending
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, handler)


def test_a_callers_alarm_fires_during_a_check(pool):
    class Fired(Exception):
        pass

    def fire(*_):
        raise Fired

    handler = signal.signal(signal.SIGALRM, fire)
    try:
        signal.alarm(1)
        with pytest.raises(Fired):
            pool.verify("math", "81", HANGS)  # the worker's timeout is 2 s: the caller's 1 s alarm comes first
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, handler)
    # The interrupted worker held no reply: it was replaced, and the pool answers as before.
    assert pool.verify("math", "81", "$9^2$") == OK


def test_concurrent_callers_share_the_pool():
    with VerifierPool(workers=2, timeout_s=2) as pool:
        verdicts = {}

        def call(i: int) -> None:
            verdicts[i] = pool.verify("math", "81", HANGS if i == 0 else "$9^2$")

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert verdicts[0].status == Status.timeout
    assert [verdicts[i] for i in range(1, 6)] == [OK] * 5
