"""A verifier worker process: reads one JSON request a line on stdin, answers one JSON verdict a line.

Started by VerifierPool as `python -m tunelake.rl.verifier_worker [plugin modules]`; it is killed, never
interrupted, when a check runs past its time, so nothing here installs a signal handler or an alarm.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback

import orjson

from tunelake.rl.verifiers import VERIFIERS


def serve(requests, replies) -> None:
    for line in requests:
        request = orjson.loads(line)
        verifier = VERIFIERS[request["verifier"]]
        try:
            config = verifier.config.model_validate(request["config"])
            verdict = verifier.check(request["gold"], request["completion"], config)
            reply = {"score": verdict.score, "status": verdict.status.value, "reason": verdict.reason}
        except Exception:  # a bug in a verifier: the caller raises it with this traceback, it is no verdict
            reply = {"error": traceback.format_exc()}
        replies.write(orjson.dumps(reply) + b"\n")
        replies.flush()


def main() -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr instead of corrupting a reply.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    # math-verify warns that its timeouts are off on first use: here the pool's kill is the timeout.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for module in sys.argv[1:]:
        importlib.import_module(module)
    replies.write(b'{"ready": true}\n')
    replies.flush()
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
