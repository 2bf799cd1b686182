"""Gold acceptance of the RL verifiers, and the per-call cost of their killable worker processes.

- MATH test (5,000): each reference solution against its own gold (its last \\boxed{}, as the `math` adapter reads
  it) with the `math` verifier; GSM8K test (1,319): each solution (its `####` line) against the gold the `gsm8k`
  adapter extracts, with `numeric`. Every miss is listed with its reason.
- Cost: the first --calls MATH rows verified by calling math-verify directly in this process (parse the boxed gold,
  parse the solution, verify; its own signal timeouts on, main thread) beside the same rows through a
  VerifierPool of one worker, in the same run.

Run: PYTHONPATH=src python bench/verify_gold.py [--calls 1000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from pathlib import Path

from math_verify import parse, verify

from tunelake.ingest.adapters.rl import gsm8k_answer, last_boxed
from tunelake.rl.verifier_pool import VerifierPool

DATA = Path("/work/shared/data")


def rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines]


def acceptance(pool: VerifierPool, name: str, cases: list[tuple[str, str, str]]) -> None:
    misses = [(key, verdict) for key, gold, text in cases if (verdict := pool.verify(name, gold, text)).status != "ok"]
    print(f"{name}: {len(cases) - len(misses):,} / {len(cases):,} accepted ({1 - len(misses) / len(cases):.2%})")
    for key, verdict in misses:
        print(f"  miss {key}: {verdict.status} {verdict.reason}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000, help="MATH rows timed directly and through the pool")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    math_rows = rows(DATA / "math/math_test_full.jsonl.gz")
    gsm8k_rows = rows(DATA / "gsm8k/test.jsonl.gz")
    math_cases = [(r["unique_id"], last_boxed(r["solution"]), r["solution"]) for r in math_rows]
    gsm8k_cases = [(str(i), gsm8k_answer(r["answer"]), r["answer"]) for i, r in enumerate(gsm8k_rows)]
    with VerifierPool(workers=1, timeout_s=30) as pool:
        acceptance(pool, "math", math_cases)
        acceptance(pool, "numeric", gsm8k_cases)

    # Timed on a fresh worker (math-verify caches parses: the acceptance run's worker has seen these rows) and in
    # this process, which has not parsed any: both cold.
    timed = math_cases[: args.calls]
    with VerifierPool(workers=1, timeout_s=30) as pool:
        pool.verify("numeric", "1", "1")  # the worker's start is not a call's cost
        start = time.perf_counter()
        for _, gold, text in timed:
            pool.verify("math", gold, text)
        pooled = (time.perf_counter() - start) / len(timed)
        start = time.perf_counter()
        for _ in range(1000):
            pool.verify("numeric", "18", "#### 18")
        round_trip = (time.perf_counter() - start) / 1000
    start = time.perf_counter()
    for _, gold, text in timed:
        verify(parse(f"\\boxed{{{gold}}}"), parse(text))
    direct = (time.perf_counter() - start) / len(timed)
    print(f"math-verify direct: {direct * 1e3:.3f} ms/call; through the pool: {pooled * 1e3:.3f} ms/call")
    print(f"overhead of the worker process: {(pooled - direct) * 1e3:+.3f} ms/call ({pooled / direct:.2f}x)")
    print(f"a whole pool call of numeric (request, check, reply): {round_trip * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
