"""The RL data plane's cost beside the endpoint's own generation time, at K = 8, against a local endpoint.

The endpoint is the test suite's chat-completions server (tests/rl/chat_server.py: a tiny random Qwen2 with the real
Qwen2.5 tokenizer, token ids and logprobs in the real protocol), started here on 127.0.0.1. The bank is the first
--prompts GSM8K test questions, built into a lake by `tunelake build` (verifier: numeric).

Each repeat runs the same --steps steps twice, interleaved: the endpoint alone (Endpoint.complete_many of each step's
asks, nothing else) and the whole loop (DataPlane.step: curriculum, asks through the request cache, scoring through
the reward cache and verifier pool, admission, the rollouts append, the run's state). Sampling is seeded, so both
sides generate the same tokens; every ask is new to the request cache (a new run each repeat). The loop's overhead
is its time beyond the endpoint-alone time; it is split into scoring (verifiers + reward cache) and the rest.

Run: PYTHONPATH=src:. python bench/rollouts.py [--steps 10] [--prompts 64] [--max-tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.rl.chat_server

from tests.rl.chat_server import ChatServer  # noqa: E402
from tunelake.build import build  # noqa: E402
from tunelake.lake import Lake  # noqa: E402
from tunelake.recipe import load_recipe  # noqa: E402
from tunelake.rl.dataplane import DataPlane, LoopConfig  # noqa: E402
from tunelake.rl.endpoint import Endpoint, RequestCache  # noqa: E402
from tunelake.rl.trainers import Rewards  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
K = 8


def bank(folder: Path, prompts: int) -> Lake:
    with gzip.open(DATA / "gsm8k" / "test.jsonl.gz", "rt") as lines:
        rows = [json.loads(line) for _, line in zip(range(prompts), lines, strict=False)]
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "lake": "lake",
        "sources": [{"name": "gsm8k", "path": "gsm8k.jsonl", "format": "gsm8k", "license": "mit", "origin": "human"}],
        "gold": {"split": {"validation": 0.0, "test": 0.0}, "export": []},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    build(*load_recipe(folder / "recipe.yaml"))
    return Lake(folder / "lake")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=64, help="bank size (GSM8K test questions)")
    parser.add_argument("--per-step", type=int, default=8, help="prompts per step")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    server = ChatServer()
    loop_times, alone_times, score_times, write_times = [], [], [], []
    try:
        with tempfile.TemporaryDirectory() as folder:
            lake = bank(Path(folder), args.prompts)
            rewards = Rewards(lake.root, workers=2)
            warm = Endpoint(server.base_url, server.model)  # the server's and the pool's first calls are not timed
            warm.complete([{"role": "user", "content": "hi"}], LoopConfig().sampling.sampling(), K)
            warm.close()
            rewards.reward("warm", "numeric", "1", None, "1")
            for repeat in range(args.repeats):
                # A seed per repeat: new completions, so the reward cache scores each repeat's afresh.
                sampling = {"max_tokens": args.max_tokens, "seed": 11 + repeat}
                config = LoopConfig(k=K, prompts_per_step=args.per_step, sampling=sampling)
                endpoint = Endpoint(server.base_url, server.model, cache=RequestCache.of_lake(lake.root))
                plane = DataPlane(lake, endpoint, config, run_id=f"bench-{repeat}", rewards=rewards)
                started, scored, written = time.perf_counter(), 0.0, 0.0
                asked = []
                for _ in range(args.steps):
                    step = plane.step()
                    scored, written = scored + step.seconds["score"], written + step.seconds["write"]
                    asked.append([plane.bank.prompt(j.group.prompt_id).messages for j in step.judged])
                loop_times.append(time.perf_counter() - started)
                score_times.append(scored)
                write_times.append(written)
                bare = Endpoint(server.base_url, server.model)  # no cache: the endpoint's own time
                sampling = config.sampling.sampling()
                started = time.perf_counter()
                for messages in asked:
                    bare.complete_many([(m, sampling, K, "") for m in messages])
                alone_times.append(time.perf_counter() - started)
                bare.close()
                endpoint.close()
            rewards.close()
            figures = rewards.cache.figures()
    finally:
        server.stop()
    loop, alone, score, write = (statistics.median(v) for v in (loop_times, alone_times, score_times, write_times))
    ratios = [lo / al - 1 for lo, al in zip(loop_times, alone_times, strict=True)]
    groups = args.steps * args.per_step
    shape = f"{args.steps} steps x {args.per_step} prompts x K={K}, max_tokens {args.max_tokens}"
    print(f"{shape}; median of {args.repeats}")
    print(f"  endpoint alone  {alone:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in alone_times)})")
    print(f"  whole loop      {loop:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in loop_times)})")
    print(f"  loop: {groups / loop:.1f} groups/s, {groups * K / loop:.1f} completions scored/s")
    overhead = loop - alone
    runs = ", ".join(f"{r:+.1%}" for r in ratios)
    median = statistics.median(ratios)
    print(f"  data plane adds {overhead:+.2f} s; per repeat {runs}; median {median:+.1%} (target <= 5%)")
    per_step = {"scoring (verifiers + reward cache)": score, "rollouts append, state and log": write}
    for what, seconds in per_step.items():
        print(f"    {what}: {seconds / args.steps * 1e3:.1f} ms a step ({seconds / alone:.2%} of the endpoint's time)")
    print(f"  reward cache: {figures}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: this process {own:.0f} MiB; the largest child (the server, a worker) {child:.0f} MiB")


if __name__ == "__main__":
    main()
