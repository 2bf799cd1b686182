"""The request cache's key is exact and canonical; its file refuses what it cannot read; answers keep every bit."""

from __future__ import annotations

import math
import sqlite3

import pytest

from tunelake.rl.completion import Completion, Sampling
from tunelake.rl.request_cache import LAKE_PATH, RequestCache, RequestCacheError, request_json, request_key

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
SAMPLING = Sampling(temperature=0.7, top_p=0.95, max_tokens=64, seed=None)


def key(messages=MESSAGES, sampling=SAMPLING, k=8, tag="3/10", model="policy") -> str:
    return request_key(request_json(model, messages, sampling, k, tag))


def test_the_key_ignores_spelling_and_counts_every_part():
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    assert key(reordered) == key()
    assert key(sampling=Sampling(temperature=1, top_p=1, max_tokens=64)) == key(sampling=Sampling(max_tokens=64))
    others = [
        key(model="policy-v2"),
        key(MESSAGES[1:]),
        key([*MESSAGES[:1], {"role": "user", "content": "What is 2 + 3?"}]),
        key(sampling=Sampling(temperature=0.8, top_p=0.95, max_tokens=64)),
        key(sampling=Sampling(temperature=0.7, top_p=0.9, max_tokens=64)),
        key(sampling=Sampling(temperature=0.7, top_p=0.95, max_tokens=65)),
        key(sampling=Sampling(temperature=0.7, top_p=0.95, max_tokens=64, seed=0)),
        key(k=7),
        key(tag="3/11"),
        key(tag=""),
    ]
    assert len({key(), *others}) == len(others) + 1


def test_a_stored_answer_comes_back_exactly(tmp_path):
    prompt = (151644, 872, 198)
    answer = [
        Completion("4", "stop", prompt, (19, 151645), (-0.1 / 3, -1e-300), "policy"),
        Completion("", "length", prompt, None, None, "policy"),  # an endpoint that gave no ids for this one
        Completion("", "stop", prompt, (), (), "policy"),  # an empty completion is not a missing one
        Completion("5 6", "length", prompt, (20, 220, 21), (-2.5, -0.0, -7.125), "policy"),
    ]
    untokenized = [Completion("4", "stop", None, None, None, "policy")]
    request = request_json("policy", MESSAGES, SAMPLING, 4, "")
    other = request_json("policy", MESSAGES, SAMPLING, 1, "")
    with RequestCache.of_lake(tmp_path) as cache:
        assert cache.get(request) is None
        assert cache.put(request, answer) == answer
        assert cache.put(request, answer[::-1]) == answer  # the first writer's answer is kept
        assert cache.put(other, untokenized) == untokenized
        with pytest.raises(ValueError, match="share their prompt's token ids"):
            cache.put(request_json("policy", MESSAGES, SAMPLING, 5, ""), [*answer, *untokenized])
    with RequestCache(tmp_path / LAKE_PATH) as cache:
        again = cache.get(request)
        assert cache.get(other) == untokenized
        assert cache.figures() == {"hits": 2, "misses": 0, "hit_rate": 1.0, "stored": 0, "raced": 0}
    assert again == answer and math.copysign(1, again[3].logprobs[1]) == -1


def test_a_file_it_cannot_read_is_refused_and_left_alone(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(RequestCacheError, match="not a tunelake.request_cache file .*tables: notes"):
        RequestCache(foreign)
    with sqlite3.connect(foreign) as db:
        assert [name for (name,) in db.execute("SELECT name FROM sqlite_master")] == ["notes"]

    older = tmp_path / "older.sqlite"
    RequestCache(older).close()
    with sqlite3.connect(older) as db:
        db.execute("UPDATE schema_version SET version = 0")
    with pytest.raises(RequestCacheError, match="schema version 0; this tunelake reads version 1"):
        RequestCache(older)

    text = tmp_path / "text.sqlite"
    text.write_text("not a database, though long enough to look like one's header " * 4)
    with pytest.raises(RequestCacheError, match="is not a readable tunelake.request_cache file"):
        RequestCache(text)
