"""The RL verifiers: gold acceptance, `math` cold and cached beside math-verify called directly, and `python_tests`
programs/s beside a bare subprocess per program; all in one run, on real data from shared/data.

1. Gold acceptance: each reference solution against its own gold with the verifier and config its adapter gives the
   record (as silver.verified_gold checks it): GSM8K test (`numeric`), MATH test (`math`), HumanEval and MBPP
   (`python_tests`, in the sandbox). Every miss is listed with its reason.
2. `math`: groups of 8 completions of a MATH problem (its own reference solution and 7 other problems', so most
   are wrong, as in RL; every text distinct, as a policy's are), --calls completions in all, scored through
   `Rewards.group` (reward cache + a verifier pool of 2 workers, one per core), called from a thread that is not
   the main one: cold (a fresh cache, every call a miss), then cached (the same calls again, every one a hit);
   beside math-verify called directly on the same pairs as TRL's and open-r1's accuracy rewards call it (per
   completion: parse the boxed gold, parse the completion, verify), which must run on the main thread (its
   timeouts are SIGALRM-based) and so runs one at a time. Each repeat takes problems of its own, so no side sees a
   text twice (math-verify caches the parses of texts it has seen); median of --repeats.
3. `python_tests`: MBPP's and HumanEval's canonical solutions through `Rewards` (its verifier worker runs the
   sandbox with every limit on), beside a bare `subprocess.run([python, file])` per program (no limits, no
   isolation), one program at a time, interleaved, median of --repeats.

Run: PYTHONPATH=src python bench/verify.py [--calls 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from math_verify import parse, verify

from tunelake.ingest.adapters.rl import gsm8k, humaneval, math, mbpp
from tunelake.rl.sandbox import INTERPRETER
from tunelake.rl.trainers import Rewards
from tunelake.schema import Regime

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 8  # completions per prompt, as a GRPO step scores them


def rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as lines:
        return [json.loads(line) for line in lines]


def records() -> dict[str, list[tuple[str, dict, str]]]:
    """Per dataset, (key, record as its adapter makes it, the worked answer verified_gold checks)."""
    sets = {
        "gsm8k": [
            (str(i), gsm8k(r, Regime.rl), r["answer"]) for i, r in enumerate(rows(DATA / "gsm8k/test.jsonl.gz"))
        ],
        "math": [
            (r["unique_id"], math(r, Regime.rl), r["solution"]) for r in rows(DATA / "math/math_test_full.jsonl.gz")
        ],
    }
    code = {"humaneval": (humaneval, "humaneval/HumanEval.jsonl.gz"), "mbpp": (mbpp, "mbpp/mbpp.jsonl.gz")}
    for name, (adapter, path) in code.items():
        made = [(str(r["task_id"]), adapter(r, Regime.rl)) for r in rows(DATA / path)]
        sets[name] = [(key, record, record["answer"]) for key, record in made]  # code: the canonical solution
    return sets


def acceptance(rewards: Rewards, name: str, cases: list[tuple[str, dict, str]]) -> None:
    misses = []
    for key, record, worked in cases:
        reward = rewards.reward(
            f"{name}/{key}", record["verifier"], record["answer"], record.get("verifier_config"), worked
        )
        if reward.status != "ok":
            misses.append((key, reward))
    share = 1 - len(misses) / len(cases)
    print(f"  {name:9} {len(cases) - len(misses):5,} / {len(cases):5,} gold accepted ({share:.2%})")
    for key, reward in misses:
        print(f"      miss {key}: {reward.status}: {reward.reason[:160]}")


def timed(call: Callable[[], None], thread: ThreadPoolExecutor | None = None) -> float:
    start = time.perf_counter()
    thread.submit(call).result() if thread else call()
    return time.perf_counter() - start


def bare(cases: list[tuple[str, dict, str]]) -> Callable[[], None]:
    """Each program with its tests in a bare subprocess, one at a time."""

    def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "solution.py"
            for _, record, worked in cases:
                config = json.loads(record["verifier_config"])
                tests = config.get("test") or "\n".join([config.get("test_setup_code") or "", *config["test_list"]])
                entry = f"\ncheck({config['entry_point']})" if config.get("entry_point") else ""
                program = (config.get("prompt") or "") + worked if entry else worked
                path.write_text(f"{program}\n\n{tests}{entry}\n")
                subprocess.run([INTERPRETER, str(path)], capture_output=True, timeout=60)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="MATH solutions timed cold, cached and direct")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side; the median is reported")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    sets = records()
    thread = ThreadPoolExecutor(1)  # ours are called off the main thread, as a trainer's reward workers do

    print("gold acceptance (each reference solution against its own gold):")
    with tempfile.TemporaryDirectory() as lake:
        rewards = Rewards(lake, workers=1, timeout_s=30, normalize={})
        for name, cases in sets.items():
            acceptance(rewards, name, cases)
        rewards.close()

    sides: dict[str, list[float]] = {"direct": [], "cold": [], "cached": []}
    verify(parse("\\boxed{1}"), parse("1"))  # math-verify's first call loads its LaTeX grammar: not a call's cost
    groups = args.calls // K
    for repeat in range(args.repeats):
        # Each completion is a distinct text, as a policy's are, and each repeat takes problems of its own: no side
        # sees a text twice (math-verify caches the parses of texts it has seen).
        problems = sets["math"][repeat * groups * K : (repeat + 1) * groups * K]
        asks = [
            (
                problems[g * K][0],
                problems[g * K][1]["answer"],
                [worked for _, _, worked in problems[g * K : (g + 1) * K]],
            )
            for g in range(groups)
        ]
        with tempfile.TemporaryDirectory() as lake:
            rewards = Rewards(lake, workers=2, timeout_s=30, normalize={})
            rewards.group("warm", "math", "1", None, ["1", "2"])  # each worker's start is not a call's cost

            def ours(rewards: Rewards = rewards, asks: list = asks) -> None:
                for key, answer, completions in asks:
                    rewards.group(key, "math", answer, None, completions)

            sides["cold"].append(groups * K / timed(ours, thread))
            sides["cached"].append(groups * K / timed(ours, thread))
            assert rewards.cache.figures()["hits"] == groups * K  # the second pass ran no verifier
            rewards.close()

        def direct(asks: list = asks) -> None:  # per completion, as TRL's and open-r1's accuracy rewards call it
            for _, answer, completions in asks:
                for completion in completions:
                    verify(parse(f"\\boxed{{{answer}}}"), parse(completion))

        sides["direct"].append(groups * K / timed(direct))
    rate = {side: statistics.median(values) for side, values in sides.items()}
    print(f"math: {groups:,} MATH problems x {K} completions, median of {args.repeats} (verifications/s):")
    for side, values in sides.items():
        print(f"  {side:8} {rate[side]:10,.0f}/s  (runs: {', '.join(f'{v:,.0f}' for v in values)})")
    print(f"  cold   {rate['cold'] / rate['direct']:.2f}x math-verify direct (target >= 1.0x)")
    print(f"  cached {rate['cached'] / rate['cold']:.0f}x cold (target >= 100x)")

    code = sets["mbpp"] + sets["humaneval"]
    programs: dict[str, list[float]] = {"bare": [], "verifier": []}
    for repeat in range(args.repeats):
        programs["bare"].append(len(code) / timed(bare(code)))
        with tempfile.TemporaryDirectory() as lake:
            rewards = Rewards(lake, workers=1, timeout_s=30, normalize={})
            rewards.reward("warm", "numeric", "1", None, "1")

            def sandboxed(rewards: Rewards = rewards, repeat: int = repeat) -> None:
                for key, record, worked in code:
                    config = record["verifier_config"]
                    rewards.reward(f"{repeat}/{key}", "python_tests", record["answer"], config, worked)

            programs["verifier"].append(len(code) / timed(sandboxed, thread))
            rewards.close()
    rate = {side: statistics.median(values) for side, values in programs.items()}
    print(f"python_tests: {len(code):,} MBPP + HumanEval canonical solutions, median of {args.repeats}:")
    for side, values in programs.items():
        print(f"  {side:8} {rate[side]:7.1f} programs/s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  ratio    {rate['verifier'] / rate['bare']:.2f}x the bare subprocess (target >= 1.0x)")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: this process {own:.0f} MiB; the largest child (a verifier worker, a program) {child:.0f} MiB")


if __name__ == "__main__":
    main()
