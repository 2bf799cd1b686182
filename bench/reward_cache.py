"""Reward cache benchmark: puts and gets per second, one process and two, and the latency of a hit.

Entries: N keys made from GSM8K's training solutions (shared/data/gsm8k/train.jsonl.gz) as completions, each
varied by a suffix so every completion is distinct, scored under the `numeric` verifier with the row's `####`
line as gold (so each entry stores a real ~300-byte completion and a gold beside its reward).

Sides, each on a new cache file, medians of RUNS:
- put_many / get_many in batches of BATCH keys (what a trainer's reward function sees: one batch of rollouts);
- the baseline beside them: put and get one key per call (a transaction and a query per key);
- two spawned processes at once: each puts its own half, then each gets every key; and each puts every key in
  its own order (every key raced, the first writer's value kept);
- a hit's latency: one `get` of a stored key, median and p99 over SAMPLE calls;
- the cost of making a key (hashing the completion and the gold with the config).

    python bench/reward_cache.py              # 100k keys, median of 3
    python bench/reward_cache.py --quick      # 10k keys, 1 run
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from tunelake.rl.reward_cache import Reward, RewardCache, RewardInputs, reward_key

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl.gz"
BATCH = 1_000
SAMPLE = 10_000  # keys the one-per-call baseline and the latency use
CONFIG = '{"tolerance": 1e-6}'


def entries(n: int) -> list[tuple]:
    """n distinct (key, reward, inputs) of GSM8K solutions."""
    with gzip.open(GSM8K) as f:
        rows = [orjson.loads(line) for line in f]
    made = []
    for i in range(n):
        row = rows[i % len(rows)]
        inputs = RewardInputs(f"{row['answer']}\n(sample {i})", row["answer"].rsplit("####", 1)[1].strip(), CONFIG)
        made.append((reward_key(f"gsm8k-{i % len(rows)}", "numeric", "1", inputs), Reward(1.0, "ok", "match"), inputs))
    return made


def batches(items: list, size: int = BATCH):
    return (items[i : i + size] for i in range(0, len(items), size))


_MADE: list[tuple] = []  # a worker's own copy of the entries, made once, so no call ships them


def _make(n: int) -> None:
    _MADE.extend(entries(n))


def _put(path: str, made: list[tuple]) -> float:
    t = time.perf_counter()
    with RewardCache(path) as cache:
        for batch in batches(made):
            cache.put_many(batch)
    return time.perf_counter() - t


def _get(path: str, keys: list) -> float:
    t = time.perf_counter()
    with RewardCache(path) as cache:
        for batch in batches(keys):
            assert None not in cache.get_many(batch)
    return time.perf_counter() - t


def _in_worker(action: str, path: str, part: slice) -> tuple[float, float]:
    """Wall-clock start and end of putting or getting a slice of the worker's entries."""
    made = _MADE[part]
    start = time.time()
    _put(path, made) if action == "put" else _get(path, [key for key, _, _ in made])
    return start, time.time()


def _two(pool, calls: list[tuple]) -> float:
    """Wall seconds from the first start to the last end of two processes running at once."""
    spans = [pending.get() for pending in [pool.apply_async(_in_worker, call) for call in calls]]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def one_run(made: list[tuple], pool, folder: Path) -> dict[str, float]:
    n = len(made)
    keys = [key for key, _, _ in made]
    figures = {}
    path = str(folder / "one.sqlite")
    figures["put_many/s"] = n / _put(path, made)
    figures["get_many/s"] = n / _get(path, keys)
    figures["file MiB"] = sum(p.stat().st_size for p in folder.glob("one.sqlite*")) / 2**20
    with RewardCache(path) as cache:
        sample = keys[:: max(1, n // SAMPLE)][:SAMPLE]
        latencies = []
        for key in sample:
            t = time.perf_counter_ns()
            cache.get(key)
            latencies.append(time.perf_counter_ns() - t)
        latencies.sort()
        figures["hit median us"] = latencies[len(latencies) // 2] / 1e3
        figures["hit p99 us"] = latencies[int(len(latencies) * 0.99)] / 1e3
        figures["get one/s"] = len(latencies) / (sum(latencies) / 1e9)
    with RewardCache(str(folder / "single.sqlite")) as cache:
        t = time.perf_counter()
        for key, reward, inputs in made[:SAMPLE]:
            cache.put(key, reward, inputs)
        figures["put one/s"] = SAMPLE / (time.perf_counter() - t)
    t = time.perf_counter()
    for _, _, inputs in made[:SAMPLE]:
        reward_key("gsm8k", "numeric", "1", inputs)
    figures["keys made/s"] = SAMPLE / (time.perf_counter() - t)

    two = str(folder / "two.sqlite")
    halves = [slice(0, n // 2), slice(n // 2, n)]
    figures["2 proc put_many/s"] = n / _two(pool, [("put", two, half) for half in halves])
    figures["2 proc get_many/s"] = 2 * n / _two(pool, [("get", two, slice(None)), ("get", two, slice(None, None, -1))])
    raced = str(folder / "raced.sqlite")
    # puts tried by both (every key twice, one of each pair loses its race)
    figures["2 proc raced put_many/s"] = (
        2 * n / _two(pool, [("put", raced, slice(None)), ("put", raced, slice(None, None, -1))])
    )
    with RewardCache(raced) as cache:
        assert None not in cache.get_many(keys)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10k keys, 1 run")
    args = ap.parse_args()
    n, runs = (10_000, 1) if args.quick else (args.keys, args.runs)
    made = entries(n)
    results: list[dict[str, float]] = []
    with multiprocessing.get_context("spawn").Pool(2, _make, (n,)) as pool:
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as folder:
                results.append(one_run(made, pool, Path(folder)))
    print(f"\n{n:,} keys, batches of {BATCH:,}, medians of {runs}")
    for name in results[0]:
        print(f"  {name:<24} {statistics.median(r[name] for r in results):>12,.1f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {'peak RSS MiB (main)':<24} {rss:>12,.1f}  (holds the {n:,} entries themselves)")


if __name__ == "__main__":
    main()
