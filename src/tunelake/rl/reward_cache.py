"""The reward cache: every verifier result kept by what decides it, so a hit never re-runs a verifier.

A reward is keyed by (prompt_id, completion_sha256, verifier, verifier_version, config_sha256). The config hash
covers the gold answer as well as the verifier's settings (`config_sha256`): a record's prompt_id hashes its prompt
alone, so two records with one prompt and different golds (a corrected answer) share it. The cache is one SQLite
file in the lake (`<lake>/_rl/rewards.sqlite`, WAL mode), shared by every process that scores: the first writer of
a key wins and a key never changes its value. `infra_error` results are never stored: they are retried.

Beside each reward it keeps what a rescore after a verifier version bump needs, content-addressed so each distinct
text is stored once: the completion text (by its sha256) and the gold answer with the verifier config (by the
config hash). Completions live nowhere else (rollouts are generated live, a trainer's reward function sees them
once) and gold tables are overwritten by each build, so a reference to either could outlive what it points at.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import orjson

from tunelake.rl.sqlite_file import SharedFile

LAKE_PATH = "_rl/rewards.sqlite"
SCHEMA_NAME = "tunelake.reward_cache"
SCHEMA_VERSION = 1  # bump when a table's layout or a key's meaning changes, so older files are not misread
# Statuses a verifier returns (tunelake.rl.verifiers.Status); kept as text so this module stands alone.
STATUSES = frozenset({"ok", "wrong", "unparsable", "timeout", "infra_error"})
INFRA_ERROR = "infra_error"
KEY_COLUMNS = ("prompt_id", "completion_sha256", "verifier", "verifier_version", "config_sha256")
_KEY_COLUMNS = ", ".join(KEY_COLUMNS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rewards (
    prompt_id TEXT NOT NULL, completion_sha256 TEXT NOT NULL, verifier TEXT NOT NULL,
    verifier_version TEXT NOT NULL, config_sha256 TEXT NOT NULL,
    score REAL NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY ({_KEY_COLUMNS})
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS completions (sha256 TEXT PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (sha256 TEXT PRIMARY KEY, answer TEXT, verifier_config TEXT NOT NULL);
"""


class RewardCacheError(Exception):
    """The file is not a reward cache this version of tunelake can read."""


class RewardKey(NamedTuple):
    prompt_id: str
    completion_sha256: str  # hex sha256 of the completion's UTF-8 bytes (`completion_sha256`)
    verifier: str
    verifier_version: str
    config_sha256: str  # hex sha256 of the gold answer and the verifier config (`config_sha256`)


class Reward(NamedTuple):
    score: float  # in [0, 1]
    status: str  # one of STATUSES
    reason: str


class RewardInputs(NamedTuple):
    """What a verifier scored besides the prompt: kept so a new verifier version can score it again."""

    completion: str
    answer: str | None  # the record's gold answer
    verifier_config: str  # the record's verifier_config, a JSON object as text


class Verdict(Protocol):
    score: float
    status: str
    reason: str


def completion_sha256(completion: str) -> str:
    """The hex sha256 of a completion's UTF-8 bytes."""
    return hashlib.sha256(completion.encode()).hexdigest()


def config_sha256(answer: str | None, verifier_config: str) -> str:
    """The hex sha256 of a gold answer and a verifier config; the config's key order and spacing do not count."""
    config = orjson.loads(verifier_config or "{}")
    if not isinstance(config, dict):
        raise ValueError(f"verifier_config must be a JSON object, got {verifier_config[:80]!r}")
    what = {"answer": answer, "config": config}
    return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()


def reward_key(prompt_id: str, verifier: str, verifier_version: str, inputs: RewardInputs) -> RewardKey:
    """The key of scoring `inputs` for a prompt with one version of a verifier."""
    return RewardKey(
        prompt_id,
        completion_sha256(inputs.completion),
        verifier,
        verifier_version,
        config_sha256(inputs.answer, inputs.verifier_config),
    )


class RewardCache(SharedFile):
    """One process's handle on the reward cache file; open one per process (its threads share it: verl scores from
    a thread pool)."""

    LAKE_PATH, NAME, VERSION, SCHEMA, Error = LAKE_PATH, SCHEMA_NAME, SCHEMA_VERSION, _SCHEMA, RewardCacheError

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.disagreed = 0  # of the raced, how many this handle scored differently: a verifier not deterministic
        self.refused = 0  # infra_error results, not stored so that they are retried
        # Row values in a batch query: 6 per key (its place and its five parts), within SQLite's variable limit.
        self._batch = min(4096, self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 6)

    def figures(self) -> dict[str, int | float]:
        """This handle's counts: hits, misses, hit rate, rewards stored, raced, disagreed and refused."""
        return {**super().figures(), "disagreed": self.disagreed, "refused": self.refused}

    def get(self, key: RewardKey) -> Reward | None:
        """The stored reward of `key`, or None."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[RewardKey]) -> list[Reward | None]:
        """The stored reward of each key (None where there is none), one query per batch of keys."""
        with self._lock:
            found = self._lookup(keys)
            hits = sum(reward is not None for reward in found)
            self.hits += hits
            self.misses += len(found) - hits
        return found

    def _lookup(self, keys: Sequence[RewardKey]) -> list[Reward | None]:
        found: list[Reward | None] = [None] * len(keys)
        for start in range(0, len(keys), self._batch):
            batch = keys[start : start + self._batch]
            values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(batch))
            params = [p for i, key in enumerate(batch, start) for p in (i, *key)]
            on = " AND ".join(f"r.{c} = k.{c}" for c in KEY_COLUMNS)
            query = (
                f"WITH k(i, {_KEY_COLUMNS}) AS (VALUES {values}) "
                f"SELECT k.i, r.score, r.status, r.reason FROM k JOIN rewards r ON {on}"
            )
            for i, score, status, reason in self._db.execute(query, params):
                found[i] = Reward(score, status, reason)
        return found

    def put(self, key: RewardKey, reward: Reward, inputs: RewardInputs) -> Reward:
        """Store `reward` for `key` unless the key has one; gives the reward the cache holds (the first writer's)."""
        return self.put_many([(key, reward, inputs)])[0]

    def put_many(self, entries: Iterable[tuple[RewardKey, Reward, RewardInputs]]) -> list[Reward]:
        """Store each new reward with its inputs in one transaction; gives, per entry, the reward the cache holds.

        An infra_error is not stored (it is given back as it is, to be retried); a key some writer stored first
        keeps that writer's reward.
        """
        entries = list(entries)
        kept = [(key, reward, inputs) for key, reward, inputs in entries if _checked(key, reward, inputs)]
        with self._lock:
            self.refused += len(entries) - len(kept)
            if not kept or self._insert(kept) == len(kept):
                return [reward for _, reward, _ in entries]  # every one stored by this call, or refused
            held = iter(self._lookup([key for key, _, _ in kept]))
            return self._held(entries, held)

    def _held(self, entries: list[tuple[RewardKey, Reward, RewardInputs]], held: Iterator[Reward]) -> list[Reward]:
        """Per entry, the reward the cache holds: what another writer stored first where it raced this one."""
        given = []
        for _, reward, _ in entries:
            if reward.status == INFRA_ERROR:
                given.append(reward)
                continue
            stored = next(held)
            if stored != reward:
                self.disagreed += 1
            given.append(stored)
        return given

    def _insert(self, entries: list[tuple[RewardKey, Reward, RewardInputs]]) -> int:
        """Insert the entries new to the cache in one transaction; gives how many rewards were new."""
        db = self._db
        # IMMEDIATE takes the write lock at once (waiting for it up to the busy timeout); a deferred transaction
        # that reads first could fail busy without waiting when another writer commits in between.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO completions VALUES (?, ?) ON CONFLICT DO NOTHING",
                ((key.completion_sha256, inputs.completion) for key, _, inputs in entries),
            )
            db.executemany(
                "INSERT INTO configs VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                ((key.config_sha256, inputs.answer, inputs.verifier_config) for key, _, inputs in entries),
            )
            before = db.total_changes
            db.executemany(
                f"INSERT INTO rewards ({_KEY_COLUMNS}, score, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                ((*key, *reward) for key, reward, _ in entries),
            )
            inserted = db.total_changes - before
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.stored += inserted
        self.raced += len(entries) - inserted
        return inserted

    def scored_inputs(
        self, verifier: str, verifier_version: str, batch: int = 1024
    ) -> Iterator[list[tuple[RewardKey, Reward, RewardInputs]]]:
        """Every reward one version of a verifier gave, with its inputs, in batches (what a rescore reads)."""
        last: tuple = ("",) * len(KEY_COLUMNS)
        columns = ", ".join(f"r.{c}" for c in KEY_COLUMNS)
        while True:
            # Keyset pages: each query is short, so writers (a rescore's own puts included) are never held up.
            rows = self._db.execute(
                f"SELECT {columns}, r.score, r.status, r.reason, c.text, g.answer, g.verifier_config "
                "FROM rewards r JOIN completions c ON c.sha256 = r.completion_sha256 "
                "JOIN configs g ON g.sha256 = r.config_sha256 "
                f"WHERE r.verifier = ? AND r.verifier_version = ? AND ({columns}) > ({', '.join('?' * 5)}) "
                f"ORDER BY {columns} LIMIT ?",
                (verifier, verifier_version, *last, batch),
            ).fetchall()
            if not rows:
                return
            yield [(RewardKey(*row[:5]), Reward(*row[5:8]), RewardInputs(*row[8:])) for row in rows]
            last = rows[-1][:5]


def _checked(key: RewardKey, reward: Reward, inputs: RewardInputs) -> bool:
    """Whether a reward is to be stored (not an infra_error); raises on a reward or inputs that cannot be right."""
    if reward.status not in STATUSES:
        raise ValueError(f"reward status {reward.status!r} for {key}: expected one of {sorted(STATUSES)}")
    if reward.status == INFRA_ERROR:
        return False
    if not (isinstance(reward.score, int | float) and math.isfinite(reward.score) and 0 <= reward.score <= 1):
        raise ValueError(f"reward score {reward.score!r} for {key}: expected a number in [0, 1]")
    if completion_sha256(inputs.completion) != key.completion_sha256:
        raise ValueError(f"the completion stored with {key} does not hash to its completion_sha256")
    return True


def score_through(
    cache: RewardCache,
    prompt_id: str,
    verifier: str,
    verifier_version: str,
    inputs: RewardInputs,
    score: Callable[[RewardInputs], Verdict],
) -> Reward:
    """The cached reward of `inputs`, scoring them with `score` (and storing its verdict) only on a miss."""
    key = reward_key(prompt_id, verifier, verifier_version, inputs)
    if (reward := cache.get(key)) is not None:
        return reward
    verdict = score(inputs)
    return cache.put(key, Reward(float(verdict.score), str(verdict.status), verdict.reason), inputs)
