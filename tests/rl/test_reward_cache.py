"""The reward cache: hits never re-score, keys are exact, infra errors are retried, concurrent writers agree."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import orjson
import pytest

from tunelake.rl.reward_cache import (
    LAKE_PATH,
    Reward,
    RewardCache,
    RewardCacheError,
    RewardInputs,
    config_sha256,
    reward_key,
    score_through,
)

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
# GSM8K test rows (tests/fixtures/real/SOURCES.md): the reference solution as a completion, its #### line as gold.
GSM8K = [orjson.loads(line) for line in (REAL / "gsm8k_test_sample.jsonl").read_bytes().splitlines()]
CONFIG = '{"tolerance": 1e-6}'


def inputs_of(row: dict, completion: str | None = None) -> RewardInputs:
    return RewardInputs(completion or row["answer"], row["answer"].rsplit("####", 1)[1].strip(), CONFIG)


class CountingVerifier:
    """A stand-in verifier that counts its calls: the last number of the completion against the gold."""

    def __init__(self, status: str | None = None):
        self.calls = 0
        self.status = status

    def __call__(self, inputs: RewardInputs) -> Reward:
        self.calls += 1
        if self.status:
            return Reward(0.0, self.status, "forced")
        right = inputs.completion.rstrip().endswith(inputs.answer)
        return Reward(1.0 if right else 0.0, "ok" if right else "wrong", "last number")


def test_a_hit_never_rescores(tmp_path):
    verifier = CountingVerifier()
    with RewardCache.of_lake(tmp_path) as cache:
        rounds = [
            [score_through(cache, f"p{i}", "numeric", "1", inputs_of(row), verifier) for i, row in enumerate(GSM8K)]
            for _ in range(2)
        ]
        first, again = rounds
        assert verifier.calls == len(GSM8K)
        assert again == first and all(r == Reward(1.0, "ok", "last number") for r in first)
        figures = cache.figures()
    assert (figures["hits"], figures["misses"], figures["stored"]) == (len(GSM8K), len(GSM8K), len(GSM8K))
    assert figures["hit_rate"] == 0.5
    assert (tmp_path / LAKE_PATH).is_file()


def test_keys_differing_in_any_part_miss(tmp_path):
    row = GSM8K[0]
    inputs = inputs_of(row)
    key = reward_key("p0", "numeric", "1", inputs)
    others = [
        key._replace(prompt_id="p1"),
        reward_key("p0", "numeric", "1", inputs._replace(completion=inputs.completion + " ")),
        key._replace(verifier="math"),
        key._replace(verifier_version="2"),
        reward_key("p0", "numeric", "1", inputs._replace(answer="19")),
        reward_key("p0", "numeric", "1", inputs._replace(verifier_config='{"tolerance": 0.5}')),
    ]
    with RewardCache.of_lake(tmp_path) as cache:
        cache.put(key, Reward(1.0, "ok", "match"), inputs)
        assert cache.get_many([key, *others]) == [Reward(1.0, "ok", "match")] + [None] * len(others)
        assert (cache.hits, cache.misses) == (1, len(others))


def test_config_hash_ignores_key_order_and_spacing_but_not_gold():
    assert config_sha256("18", '{"a": 1, "b": [2]}') == config_sha256("18", '{"b":[2],"a":1}')
    assert config_sha256("18", "{}") != config_sha256("19", "{}")
    with pytest.raises(ValueError, match="JSON object"):
        config_sha256("18", "[1]")


def test_infra_error_is_not_stored_and_is_retried(tmp_path):
    broken, working = CountingVerifier("infra_error"), CountingVerifier()
    inputs = inputs_of(GSM8K[1])
    with RewardCache.of_lake(tmp_path) as cache:
        assert score_through(cache, "p", "python_tests", "1", inputs, broken).status == "infra_error"
        assert score_through(cache, "p", "python_tests", "1", inputs, broken).status == "infra_error"
        assert broken.calls == 2 and cache.refused == 2 and cache.stored == 0
        assert score_through(cache, "p", "python_tests", "1", inputs, working).status == "ok"
        assert working.calls == 1


def test_a_key_keeps_its_first_value(tmp_path):
    inputs = inputs_of(GSM8K[2])
    key = reward_key("p", "numeric", "1", inputs)
    with RewardCache.of_lake(tmp_path) as cache:
        assert cache.put(key, Reward(0.0, "timeout", "killed: CPU time"), inputs) == Reward(
            0.0, "timeout", "killed: CPU time"
        )
        assert cache.put(key, Reward(1.0, "ok", "match"), inputs) == Reward(0.0, "timeout", "killed: CPU time")
        assert cache.get(key) == Reward(0.0, "timeout", "killed: CPU time")
        assert (cache.stored, cache.raced, cache.disagreed) == (1, 1, 1)


def test_a_reward_that_cannot_be_right_is_refused_loudly(tmp_path):
    inputs = inputs_of(GSM8K[0])
    key = reward_key("p", "numeric", "1", inputs)
    with RewardCache.of_lake(tmp_path) as cache:
        with pytest.raises(ValueError, match="expected a number in"):
            cache.put(key, Reward(1.5, "ok", ""), inputs)
        with pytest.raises(ValueError, match="expected one of"):
            cache.put(key, Reward(1.0, "fine", ""), inputs)
        with pytest.raises(ValueError, match="does not hash"):
            cache.put(key, Reward(1.0, "ok", ""), inputs._replace(completion="another"))
        assert cache.get(key) is None


def test_a_reopened_cache_sees_earlier_writes(tmp_path):
    inputs = inputs_of(GSM8K[3])
    key = reward_key("p", "numeric", "1", inputs)
    with RewardCache.of_lake(tmp_path) as cache:
        cache.put(key, Reward(1.0, "ok", "match"), inputs)
    with RewardCache.of_lake(tmp_path) as cache:
        assert cache.get(key) == Reward(1.0, "ok", "match")


def test_get_many_spans_several_batches(tmp_path):
    inputs = [inputs_of(GSM8K[0], f"the answer is {i}") for i in range(10_000)]
    keys = [reward_key(f"p{i}", "numeric", "1", x) for i, x in enumerate(inputs)]
    with RewardCache.of_lake(tmp_path) as cache:
        cache.put_many((key, Reward(0.0, "wrong", str(i)), inputs[i]) for i, key in enumerate(keys))
        missing = reward_key("nope", "numeric", "1", inputs[0])
        found = cache.get_many([*keys[::-1], missing])
    assert [r.reason for r in found[:-1]] == [str(i) for i in range(10_000)][::-1] and found[-1] is None


def test_a_rescore_reads_back_every_input(tmp_path):
    scored = {}
    with RewardCache.of_lake(tmp_path) as cache:
        for i, row in enumerate(GSM8K):
            for version in ("1", "2"):
                reward = score_through(cache, f"p{i}", "numeric", version, inputs_of(row), CountingVerifier())
                scored[version, f"p{i}"] = reward
        read = [entry for batch in cache.scored_inputs("numeric", "1", batch=2) for entry in batch]
    assert len(read) == len(GSM8K)
    for key, reward, inputs in read:
        assert key == reward_key(key.prompt_id, "numeric", "1", inputs)  # the inputs give back the same key
        assert scored["1", key.prompt_id] == reward
    assert sorted(inputs.completion for _, _, inputs in read) == sorted(row["answer"] for row in GSM8K)


def test_a_file_that_is_not_a_cache_is_named(tmp_path):
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(RewardCacheError, match=f"{corrupt}.*not a readable tunelake.reward_cache file"):
        RewardCache(corrupt)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    db.close()
    with pytest.raises(RewardCacheError, match=f"{foreign} is an SQLite file but not a tunelake.reward_cache file"):
        RewardCache(foreign)
    with sqlite3.connect(foreign) as db:  # left as it was: not switched to WAL, no table added
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]
    db.close()


def test_a_cache_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "rewards.sqlite"
    RewardCache(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    db.close()
    with pytest.raises(RewardCacheError, match="schema version 99; this tunelake reads version 1"):
        RewardCache(path)


WRITERS = 4
KEYS = 400  # each writer scores all of them, in its own order, so every key is raced


def _write(path: str, writer: int, start: multiprocessing.Event) -> dict:
    start.wait()
    with RewardCache(path) as cache:
        order = list(range(KEYS))
        order = order[writer * 97 % KEYS :] + order[: writer * 97 % KEYS]
        given = {}
        for n in range(0, KEYS, 20):
            entries = []
            for i in order[n : n + 20]:
                inputs = inputs_of(GSM8K[i % len(GSM8K)], f"completion {i}")
                # Each writer's value names it, so the stored one tells which writer was first.
                entries.append((reward_key(f"p{i}", "numeric", "1", inputs), Reward(1.0, "ok", f"w{writer}"), inputs))
            looked = cache.get_many([key for key, _, _ in entries])  # readers and writers interleave
            assert all(r is None or r.reason.startswith("w") for r in looked)
            for (key, _, _), reward in zip(entries, cache.put_many(entries), strict=True):
                given[key.prompt_id] = reward.reason
        return {"given": given, "stored": cache.stored}


def test_concurrent_writers_keep_every_first_write(tmp_path):
    path = str(tmp_path / "rewards.sqlite")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        start = manager.Event()
        with spawn.Pool(WRITERS) as pool:
            pending = [pool.apply_async(_write, (path, w, start)) for w in range(WRITERS)]
            start.set()  # all open a new file at once, too
            results = [p.get(timeout=120) for p in pending]
    assert sum(r["stored"] for r in results) == KEYS  # no lost write, none written twice
    with RewardCache(path) as cache:
        keys = [
            reward_key(f"p{i}", "numeric", "1", inputs_of(GSM8K[i % len(GSM8K)], f"completion {i}"))
            for i in range(KEYS)
        ]
        rewards = cache.get_many(keys)
    assert None not in rewards
    stored = {key.prompt_id: reward.reason for key, reward in zip(keys, rewards, strict=True)}
    for r in results:  # every writer was given the value the cache holds: the first writer's
        assert r["given"] == stored


def test_opening_waits_while_another_process_makes_the_file(tmp_path):
    # A new file another connection holds the write lock of, as while a process creates the cache's tables:
    # switching it to WAL fails at once, without SQLite's busy handler, so opening must wait for it.
    path = tmp_path / "rewards.sqlite"
    maker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    maker.execute("BEGIN IMMEDIATE")
    maker.execute("CREATE TABLE being_made (x)")
    release = threading.Timer(0.3, maker.execute, ("ROLLBACK",))
    release.start()
    try:
        inputs = inputs_of(GSM8K[0])
        with RewardCache(path) as cache:
            cache.put(reward_key("p", "numeric", "1", inputs), Reward(1.0, "ok", ""), inputs)
    finally:
        release.join()
        maker.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
