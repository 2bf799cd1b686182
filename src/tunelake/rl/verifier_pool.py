"""Verifiers run in a small pool of killable worker processes, under a hard timeout that needs no signal.

A check that runs past its time (math-verify can hold the GIL for minutes in a C big-integer power) is ended by
killing its worker; the worker is replaced and later calls score as before. A worker that dies gives
`infra_error`, never a 0. Nothing here touches the caller's signal handlers or alarms, so it works from any thread.
"""

from __future__ import annotations

import importlib
import os
import queue
import select
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence

import orjson

from tunelake.rl.verifiers import Status, Verdict, config_of


class VerifierError(RuntimeError):
    """A verifier raised: a bug, reported with the worker's traceback, never turned into a verdict."""


class _Died(Exception):
    """The worker is gone or could not be used: the call's verdict is infra_error."""


class _Worker:
    def __init__(self, plugins: Sequence[str]):
        # The worker resolves modules as this process does (tunelake itself, plugin modules from tests or users).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tunelake.rl.verifier_worker", *plugins],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.ready = False
        self._pending = b""

    def _line(self, seconds: float) -> bytes | None:
        """The next line the worker writes, or None if none comes within `seconds`; _Died if it exits."""
        deadline = time.monotonic() + seconds
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _Died(f"the verifier worker died (exit code {self.process.wait()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line

    def call(self, request: dict, timeout_s: float, start_timeout_s: float) -> dict | None:
        """The worker's reply, or None if it runs past timeout_s (the caller then kills the worker)."""
        if not self.ready:
            if self._line(start_timeout_s) is None:
                raise _Died(f"the verifier worker did not start within {start_timeout_s:g} s")
            self.ready = True
        try:
            self.process.stdin.write(orjson.dumps(request) + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise _Died(f"the verifier worker died (exit code {self.process.wait()})") from None
        line = self._line(timeout_s)
        return None if line is None else orjson.loads(line)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()


class VerifierPool:
    """Runs verifiers by name in `workers` processes; each call is bounded by `timeout_s` and is thread-safe."""

    def __init__(
        self, workers: int = 2, timeout_s: float = 10.0, start_timeout_s: float = 120.0, plugins: Sequence[str] = ()
    ):
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"expected workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        for module in plugins:  # their configs validate here, their checks run in the workers
            importlib.import_module(module)
        self.timeout_s, self.start_timeout_s, self._plugins = timeout_s, start_timeout_s, tuple(plugins)
        self._all = [_Worker(self._plugins) for _ in range(workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._all:
            self._idle.put(worker)
        self._closer = weakref.finalize(self, _kill_all, self._all)

    def verify(self, verifier: str, gold: str, completion: str, config: str | dict | None = None) -> Verdict:
        """The verdict of `verifier` on `completion` against `gold`; ConfigError for an unknown name or bad config."""
        request = {
            "verifier": verifier,
            "gold": gold,
            "completion": completion,
            "config": config_of(verifier, config).model_dump(by_alias=True),
        }
        worker = self._idle.get()
        reply = None
        try:
            reply = worker.call(request, self.timeout_s, self.start_timeout_s)
        except _Died as died:
            return Verdict(0.0, Status.infra_error, str(died))
        finally:
            # A worker that timed out, died, or was interrupted mid-call (a caller's signal) holds an unread
            # reply or none: it is replaced, never reused.
            self._idle.put(worker if reply is not None else self._replace(worker))
        if reply is None:
            return Verdict(0.0, Status.timeout, f"no verdict within {self.timeout_s:g} s: the worker was killed")
        if "error" in reply:
            raise VerifierError(f"verifier {verifier!r} raised:\n{reply['error']}")
        return Verdict(reply["score"], Status(reply["status"]), reply["reason"])

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = _Worker(self._plugins)
        self._all[self._all.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        """Kills every worker (also done when the pool is collected or the interpreter exits)."""
        self._closer()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
