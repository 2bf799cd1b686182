"""The request cache: every endpoint answer kept by what decides it, so that no request is paid twice.

A request is keyed by the sha256 of canonical JSON of (model, messages, sampling, k, tag): the model name asked
for, the messages as sent, the sampling settings, the number of completions and an opaque tag (the loop passes
"<policy_version>/<step>", so the same prompt asked at a later step is a new request while a resumed run asking the
same step again is a hit). The value is the k completions as the endpoint gave them, token ids and logprobs
included. One SQLite file per lake (`<lake>/_rl/requests.sqlite`, WAL mode) shared by every process of a run: the
first writer of a key wins and a key never changes its value, so two processes that asked at once both go on with
one answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import orjson

from tunelake.rl.completion import Completion, Sampling
from tunelake.rl.sqlite_file import SharedFile

LAKE_PATH = "_rl/requests.sqlite"
SCHEMA_NAME = "tunelake.request_cache"
SCHEMA_VERSION = 1  # bump when the layout, the key or the stored completion's fields change
# A rowid table: values are kilobytes of token ids and logprobs, which WITHOUT ROWID tables store badly. Token ids
# and logprobs are packed arrays (int32, float64: exact), each completion's after the one before, and the prompt's
# ids once per request (its k completions share them): a third of the bytes of JSON numbers, read back faster.
_SCHEMA = """
CREATE TABLE requests (
    key TEXT PRIMARY KEY, request TEXT NOT NULL, completions TEXT NOT NULL,
    prompt_token_ids BLOB, completion_token_ids BLOB NOT NULL, logprobs BLOB NOT NULL
)
"""
_IDS = np.dtype("<i4")
_LOGPROBS = np.dtype("<f8")


class RequestCacheError(Exception):
    """The file is not a request cache this version of tunelake can read."""


def request_json(model: str, messages: list[dict], sampling: Sampling, k: int, tag: str) -> bytes:
    """Canonical JSON of what decides a request's answer: sorted keys, no spacing, a temperature of 1 as 1.0."""
    settings = asdict(sampling) | {"temperature": float(sampling.temperature), "top_p": float(sampling.top_p)}
    what = {"model": model, "messages": messages, "sampling": settings, "k": k, "tag": tag}
    return orjson.dumps(what, option=orjson.OPT_SORT_KEYS)


def request_key(request: bytes) -> str:
    """The hex sha256 of a request's canonical JSON (`request_json`)."""
    return hashlib.sha256(request).hexdigest()


class RequestCache(SharedFile):
    """One process's handle on the request cache file; its threads may share it (uses are serialised)."""

    LAKE_PATH, NAME, VERSION, SCHEMA, Error = LAKE_PATH, SCHEMA_NAME, SCHEMA_VERSION, _SCHEMA, RequestCacheError

    def get(self, request: bytes) -> list[Completion] | None:
        """The stored completions of a request (its canonical JSON, `request_json`), or None."""
        with self._lock:
            found = self._lookup(request_key(request))
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
            return found

    def put(self, request: bytes, completions: Sequence[Completion]) -> list[Completion]:
        """Store a request's completions unless it has some; gives those the cache holds (the first writer's)."""
        key = request_key(request)
        row = (key, request.decode(), *_packed(completions))
        with self._lock:
            # IMMEDIATE takes the write lock at once, waiting for it up to the busy timeout; a statement that read
            # first could fail busy without waiting when another writer commits in between.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", row)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if cursor.rowcount == 1:
                self.stored += 1
                return list(completions)
            self.raced += 1
            return self._lookup(key)

    def _lookup(self, key: str) -> list[Completion] | None:
        row = self._db.execute(
            "SELECT completions, prompt_token_ids, completion_token_ids, logprobs FROM requests WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _unpacked(*row)


def _packed(completions: Sequence[Completion]) -> tuple[str, bytes | None, bytes, bytes]:
    """A request's completions as stored: their other fields as JSON, then the packed prompt ids, ids, logprobs."""
    prompts = {c.prompt_token_ids for c in completions}
    if len(prompts) != 1:
        raise ValueError(f"the completions of one request share their prompt's token ids; got {len(prompts)} kinds")
    (prompt,) = prompts
    fields = [
        {
            "text": c.text,
            "finish_reason": c.finish_reason,
            "model": c.model,
            "ids": None if c.completion_token_ids is None else len(c.completion_token_ids),
            "logprobs": None if c.logprobs is None else len(c.logprobs),
        }
        for c in completions
    ]
    ids = [i for c in completions for i in c.completion_token_ids or ()]
    logprobs = [lp for c in completions for lp in c.logprobs or ()]
    return (
        orjson.dumps(fields).decode(),
        None if prompt is None else np.asarray(prompt, _IDS).tobytes(),
        np.asarray(ids, _IDS).tobytes(),
        np.asarray(logprobs, _LOGPROBS).tobytes(),
    )


def _unpacked(fields: str, prompt: bytes | None, ids: bytes, logprobs: bytes) -> list[Completion]:
    prompt_ids = None if prompt is None else tuple(np.frombuffer(prompt, _IDS).tolist())
    all_ids = np.frombuffer(ids, _IDS).tolist()
    all_logprobs = np.frombuffer(logprobs, _LOGPROBS).tolist()
    completions, at_id, at_logprob = [], 0, 0
    for f in orjson.loads(fields):
        completion_ids = completion_logprobs = None
        if f["ids"] is not None:
            completion_ids = tuple(all_ids[at_id : at_id + f["ids"]])
            at_id += f["ids"]
        if f["logprobs"] is not None:
            completion_logprobs = tuple(all_logprobs[at_logprob : at_logprob + f["logprobs"]])
            at_logprob += f["logprobs"]
        completions.append(
            Completion(f["text"], f["finish_reason"], prompt_ids, completion_ids, completion_logprobs, f["model"])
        )
    return completions
