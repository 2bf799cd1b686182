"""The endpoint client against a real chat-completions server: exact tokens, retries, bounded concurrency, cache."""

from __future__ import annotations

import multiprocessing
import time
from datetime import date
from pathlib import Path

import httpx
import orjson
import pytest
from tokenizers import Tokenizer

from tests.rl.chat_server import STOP, TOKENIZER, ChatServer
from tunelake.gold.tokenize.masks import MaskSettings, prompt_ids
from tunelake.gold.tokenize.template import TextTokenizer, load_template
from tunelake.rl.endpoint import Completion, Endpoint, EndpointError, RequestCache, Sampling

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
# GSM8K test questions (tests/fixtures/real/SOURCES.md) as RL prompts.
QUESTIONS = [orjson.loads(line)["question"] for line in (REAL / "gsm8k_test_sample.jsonl").read_bytes().splitlines()]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]
SAMPLING = Sampling(temperature=1.0, top_p=1.0, max_tokens=12, seed=7)
TOKENS = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
STOP_ID = TOKENS.token_to_id(STOP)


def endpoint(server: ChatServer, **options) -> Endpoint:
    options = {"retries": 3, "backoff_s": 0.01, "timeout_s": 30.0, **options}
    return Endpoint(server.base_url, server.model, **options)


def test_completions_carry_the_servers_tokens_and_logprobs(chat_server):
    k = 8
    with endpoint(chat_server) as ep:
        completions = ep.complete(PROMPTS[0], SAMPLING, k)
    raw = httpx.post(
        f"{chat_server.base_url}/chat/completions",
        json={"model": chat_server.model, "messages": PROMPTS[0], "n": k, "temperature": 1.0, "top_p": 1.0,
              "max_tokens": 12, "seed": 7, "logprobs": True, "return_token_ids": True},
        timeout=30,
    ).json()  # fmt: skip
    assert len(completions) == k
    for completion, choice in zip(completions, raw["choices"], strict=True):  # seeded: the same draw again
        assert completion.completion_token_ids == tuple(choice["token_ids"])
        assert completion.logprobs == tuple(t["logprob"] for t in choice["logprobs"]["content"])
        assert (completion.text, completion.finish_reason) == (choice["message"]["content"], choice["finish_reason"])
        assert completion.model == "tiny-qwen2"
    # The prompt as the endpoint tokenized it is what tunelake's RL export gives for the same prompt.
    template = load_template(TOKENIZER, "auto", date.today())
    settings = MaskSettings(max_length=4096, train_on="all_assistant", train_on_eot=True, overlong="drop")
    expected = tuple(prompt_ids(template, TextTokenizer.load(TOKENIZER), PROMPTS[0], settings).tolist())
    assert all(c.prompt_token_ids == expected for c in completions)
    for c in completions:
        ids = c.completion_token_ids
        assert len(c.logprobs) == len(ids) and all(lp <= 0 for lp in c.logprobs)
        assert TOKENS.decode(list(ids), skip_special_tokens=True) == c.text
        if c.finish_reason == "stop":
            assert ids[-1] == STOP_ID and STOP_ID not in ids[:-1]
        else:
            assert c.finish_reason == "length" and len(ids) == SAMPLING.max_tokens and STOP_ID not in ids
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    # Why the ids are kept as sampled: the text tokenizes again to other ids.
    assert any(
        TOKENS.encode(c.text, add_special_tokens=False).ids != [i for i in c.completion_token_ids if i != STOP_ID]
        for c in completions
    )


def test_sampling_settings_reach_the_sampler(chat_server):
    with endpoint(chat_server) as ep:
        greedy = ep.complete(PROMPTS[1], Sampling(temperature=0.0, max_tokens=6), 3)
        short = ep.complete(PROMPTS[1], Sampling(temperature=1.0, max_tokens=2, seed=1), 4)
        seeded = [ep.complete(PROMPTS[1], Sampling(seed=3, max_tokens=8), 4) for _ in range(2)]
        other_seed = ep.complete(PROMPTS[1], Sampling(seed=4, max_tokens=8), 4)
        nucleus = ep.complete(PROMPTS[1], Sampling(top_p=1e-9, max_tokens=6, seed=5), 3)
    assert len({c.completion_token_ids for c in greedy}) == 1
    assert all(len(c.completion_token_ids) <= 2 for c in short)
    assert seeded[0] == seeded[1] and seeded[0] != other_seed
    assert nucleus == greedy  # a nucleus of one token is greedy sampling


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500},
        {"kind": "status", "status": 502},
        {"kind": "status", "status": 503},
        {"kind": "status", "status": 504},
        {"kind": "status", "status": 429},
        {"kind": "drop"},
    ],
    ids=["500", "502", "503", "504", "429", "dropped"],
)
def test_a_passing_fault_is_retried(chat_server, fault):
    chat_server.control(faults=[fault, fault])
    with endpoint(chat_server) as ep:
        completions = ep.complete(PROMPTS[0], SAMPLING, 2)
        assert ep.figures() == {"requests": 1, "retried": 2}
    stats = chat_server.stats()
    assert (stats["received"], stats["served"], stats["faults_left"]) == (3, 1, 0)
    assert len(completions) == 2 and all(c.completion_token_ids for c in completions)


def test_a_429_waits_as_long_as_retry_after_says(chat_server):
    chat_server.control(faults=[{"kind": "status", "status": 429, "retry_after": "1"}])
    with endpoint(chat_server, backoff_s=0.001) as ep:
        started = time.monotonic()
        ep.complete(PROMPTS[0], SAMPLING, 1)
        waited = time.monotonic() - started
    assert waited >= 1.0  # backoff alone would have waited about a millisecond
    assert chat_server.stats()["served"] == 1


def test_a_request_past_the_timeout_is_retried(chat_server):
    chat_server.control(faults=[{"kind": "hang", "seconds": 6}])
    with endpoint(chat_server, timeout_s=3.0) as ep:
        completions = ep.complete(PROMPTS[0], SAMPLING, 2)
        assert ep.retried == 1
    assert len(completions) == 2 and chat_server.stats()["served"] == 1


def test_a_persistent_fault_stops_with_a_clear_message(chat_server):
    chat_server.control(faults=[{"kind": "status", "status": 500}] * 10)
    with endpoint(chat_server, retries=2) as ep, pytest.raises(EndpointError) as caught:
        ep.complete(PROMPTS[0], SAMPLING, 2)
    error = caught.value
    assert (error.status, error.tries, error.url) == (500, 3, f"{chat_server.base_url}/chat/completions")
    assert str(error) == (
        f"POST {chat_server.base_url}/chat/completions failed 3 times; the last: HTTP 500: injected fault"
    )
    assert chat_server.stats()["received"] == 3


def test_an_unreachable_endpoint_stops_naming_the_error(chat_server):
    with Endpoint("http://127.0.0.1:9/v1", "m", retries=1, backoff_s=0.01) as ep, pytest.raises(EndpointError) as e:
        ep.complete(PROMPTS[0], SAMPLING, 1)
    assert e.value.status is None and e.value.tries == 2
    assert "POST http://127.0.0.1:9/v1/chat/completions failed 2 times; the last: ConnectError" in str(e.value)


def test_a_bad_request_fails_at_once_with_the_servers_message(chat_server):
    with endpoint(chat_server) as ep, pytest.raises(EndpointError) as bad:
        ep.complete(PROMPTS[0], Sampling(temperature=-1.0), 1)
    other = Endpoint(chat_server.base_url, "no-such-model", retries=3)
    with other, pytest.raises(EndpointError) as unknown:
        other.complete(PROMPTS[0], SAMPLING, 1)
    assert (bad.value.status, bad.value.tries) == (400, 1)
    assert "HTTP 400: temperature must be non-negative, got -1.0." in str(bad.value)
    assert (unknown.value.status, unknown.value.tries) == (404, 1)
    assert "The model `no-such-model` does not exist." in str(unknown.value)
    assert chat_server.stats()["received"] == 2


def test_an_answer_that_is_not_a_chat_completion_fails_at_once(chat_server):
    two_choices = {"choices": [{"index": i, "message": {"role": "assistant", "content": "4"}} for i in range(2)]}
    not_chat = {"object": "list"}
    # Token ids and logprobs that do not line up: each logprob would be stored against another token.
    logprob = {"token": "4", "logprob": -0.5}
    misaligned = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "token_ids": [19, 151645],
                               "logprobs": {"content": [logprob]}, "finish_reason": "stop"}]}  # fmt: skip
    faults = [{"kind": "answer", "body": body} for body in (not_chat, two_choices, misaligned)]
    chat_server.control(faults=faults)
    with endpoint(chat_server) as ep:
        with pytest.raises(EndpointError, match=r"not a chat completion of n=2 choices \(KeyError: 'choices'\)"):
            ep.complete(PROMPTS[0], SAMPLING, 2)
        with pytest.raises(EndpointError, match=r"not a chat completion of n=3 choices \(ValueError: 2 choices\)"):
            ep.complete(PROMPTS[0], SAMPLING, 3)
        with pytest.raises(EndpointError, match=r"choice 0: 2 token ids but 1 logprobs"):
            ep.complete(PROMPTS[0], SAMPLING, 1)
    assert chat_server.stats()["received"] == 3


def test_requests_in_flight_are_bounded(chat_server):
    chat_server.control(delay_s=0.3)  # each generation lasts long enough for requests to overlap
    asks = [(PROMPTS[i % len(PROMPTS)], SAMPLING, k, "") for i, k in enumerate(range(1, 7))]
    with endpoint(chat_server, concurrency=2) as ep:
        answers = ep.complete_many(asks)
    assert [len(a) for a in answers] == list(range(1, 7))  # in the order asked
    stats = chat_server.stats()
    assert stats["served"] == 6 and stats["max_in_flight"] <= 2


def test_a_cached_ask_pays_nothing(chat_server, tmp_path):
    with RequestCache.of_lake(tmp_path) as cache, endpoint(chat_server, cache=cache) as ep:
        first = ep.complete(PROMPTS[0], Sampling(max_tokens=8), 4, tag="0/1")  # unseeded: only a hit repeats it
    assert (tmp_path / "_rl" / "requests.sqlite").exists()
    # A resumed run: a new process's handles, the same ask.
    with RequestCache.of_lake(tmp_path) as cache, endpoint(chat_server, cache=cache) as ep:
        again = ep.complete(PROMPTS[0], Sampling(max_tokens=8), 4, tag="0/1")
        assert chat_server.stats()["served"] == 1 and ep.figures()["requests"] == 0
        assert again == first and all(c.completion_token_ids and c.logprobs for c in again)
        ep.complete(PROMPTS[0], Sampling(max_tokens=8), 4, tag="0/2")  # a later step asks again
        ep.complete(PROMPTS[0], Sampling(max_tokens=8, temperature=0.7), 4, tag="0/1")
        ep.complete(PROMPTS[0], Sampling(max_tokens=8), 3, tag="0/1")
        ep.complete(PROMPTS[1], Sampling(max_tokens=8), 4, tag="0/1")
        assert chat_server.stats()["served"] == 5
        assert cache.figures() == {"hits": 1, "misses": 4, "hit_rate": 0.2, "stored": 4, "raced": 0}


def test_an_endpoint_without_token_ids_gives_none(chat_server, tmp_path):
    chat_server.control(token_ids=False)
    with RequestCache.of_lake(tmp_path) as cache, endpoint(chat_server, cache=cache) as ep:
        completions = ep.complete(PROMPTS[0], SAMPLING, 4)
        cached = ep.complete(PROMPTS[0], SAMPLING, 4)
    assert all(c.prompt_token_ids is None and c.completion_token_ids is None for c in completions)
    assert all(c.logprobs for c in completions)  # what the endpoint did return is kept
    assert cached == completions


def _ask_all(base_url: str, model: str, path: str, start) -> list[list[Completion]]:
    start.wait()
    with RequestCache(path) as cache, Endpoint(base_url, model, cache=cache, concurrency=2) as ep:
        # Unseeded: two processes that both pay for an ask draw different completions.
        return ep.complete_many([(p, Sampling(max_tokens=8), 2, "0/0") for p in PROMPTS])


def test_two_processes_share_the_cache(chat_server, tmp_path):
    path = str(tmp_path / "requests.sqlite")
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        start = manager.Event()
        with spawn.Pool(2) as pool:
            pending = [pool.apply_async(_ask_all, (chat_server.base_url, chat_server.model, path, start))]
            pending.append(pool.apply_async(_ask_all, (chat_server.base_url, chat_server.model, path, start)))
            start.set()  # both open a new file and ask at once
            first, second = (p.get(timeout=120) for p in pending)
    assert first == second  # the first writer's answer, whichever process paid
    served = chat_server.stats()["served"]
    assert len(PROMPTS) <= served <= 2 * len(PROMPTS)
    with RequestCache(path) as cache, Endpoint(chat_server.base_url, chat_server.model, cache=cache) as ep:
        assert ep.complete_many([(p, Sampling(max_tokens=8), 2, "0/0") for p in PROMPTS]) == first
    assert chat_server.stats()["served"] == served
