"""Sandboxed programs/s on real canonical solutions: tunelake.rl.sandbox.run_tests with every limit on, beside a bare
`subprocess.run([python, file])` per program (no limits, no isolation) in the same run, one program at a time.

Programs: MBPP's 974 reference solutions with their tests and HumanEval's 164 canonical solutions with `check(...)`,
from shared/data. Each side runs the whole set three times; the median rate is reported. Both sides use the same
interpreter (the sandbox's: the system Python).

    PYTHONPATH=src python bench/sandbox.py [--limit N]
"""

import argparse
import gzip
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tunelake.rl.sandbox import INTERPRETER, Limits, isolation, run_tests

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIMITS = Limits()


def programs(limit: int | None) -> list[tuple[str, str, str]]:
    """(name, program, tests) for every MBPP and HumanEval row."""
    rows = []
    with gzip.open(DATA / "mbpp" / "mbpp.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            tests = "\n".join([row["test_setup_code"], *row["test_list"], *row["challenge_test_list"]])
            rows.append((f"mbpp/{row['task_id']}", row["code"], tests))
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            tests = f"{row['test']}\ncheck({row['entry_point']})"
            rows.append((row["task_id"], row["prompt"] + row["canonical_solution"], tests))
    return rows[:limit] if limit else rows


def sandboxed(rows: list[tuple[str, str, str]]) -> tuple[float, int]:
    started = time.perf_counter()
    passed = sum(run_tests(program, tests, limits=LIMITS).passed for _, program, tests in rows)
    return len(rows) / (time.perf_counter() - started), passed


def bare(rows: list[tuple[str, str, str]]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "solution.py"
        started = time.perf_counter()
        passed = 0
        for _, program, tests in rows:
            path.write_text(f"{program}\n\n{tests}\n")
            passed += subprocess.run([INTERPRETER, str(path)], capture_output=True, timeout=60).returncode == 0
        return len(rows) / (time.perf_counter() - started), passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N programs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side; the median is reported")
    args = parser.parse_args()
    rows = programs(args.limit)
    run_tests("pass", "", limits=LIMITS)  # start the warm interpreter outside the timing
    rates = {"bare": [], "sandbox": []}
    passes = {}
    for _ in range(args.repeats):  # interleaved, so both sides see the same machine load
        for side, run in (("bare", bare), ("sandbox", sandboxed)):
            rate, passes[side] = run(rows)
            rates[side].append(rate)
    medians = {side: statistics.median(values) for side, values in rates.items()}
    print(f"interpreter {INTERPRETER}; sandbox isolation: {isolation()}; limits {LIMITS.model_dump()}")
    print(f"{len(rows)} programs (MBPP + HumanEval canonical solutions), median of {args.repeats}")
    for side in ("bare", "sandbox"):
        runs = ", ".join(f"{r:.1f}" for r in rates[side])
        print(f"  {side:8} {medians[side]:7.1f} programs/s  (runs: {runs}; passed {passes[side]}/{len(rows)})")
    print(f"  ratio    {medians['sandbox'] / medians['bare']:.2f}x the bare rate")


if __name__ == "__main__":
    main()
