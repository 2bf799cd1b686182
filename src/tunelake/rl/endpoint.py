"""An OpenAI-compatible chat-completions endpoint: k completions per ask, with the exact tokens that were sampled.

Each ask is one `POST {base_url}/chat/completions` with `n=k`, `logprobs: true` and vLLM's `return_token_ids:
true`, which makes vLLM (>= 0.10.2) answer with the prompt's token ids (top-level `prompt_token_ids`) and each
choice's sampled ids (`choices[i].token_ids`). An endpoint that does not return them gives None there, never ids
made by tokenizing the text again: text re-tokenizes differently from what was sampled, and training on those
ids is silently off-policy.

Faults that pass (500, 502, 503, 504, 429, a timeout, a dropped connection) are retried with exponential backoff
and jitter, honouring a Retry-After; one that persists past `retries` raises EndpointError naming the URL, the last
status or error and the tries. Any other refusal (a 4xx but 429) is the request's own fault and raises at once with
the server's message. A RequestCache makes an ask that was answered before free: a resumed run pays nothing twice.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson

from tunelake.rl.completion import Completion, Sampling
from tunelake.rl.request_cache import RequestCache, request_json

__all__ = ["Completion", "Endpoint", "EndpointError", "RequestCache", "Sampling"]

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_CAP_S = 30.0  # the longest wait between two tries that backoff alone makes
RETRY_AFTER_CAP_S = 300.0  # a Retry-After longer than this is a misconfigured server, not a wait to sit through


class EndpointError(RuntimeError):
    """A fault that persisted past the retries, or a request the endpoint refused: names the URL, status and tries."""

    def __init__(self, message: str, *, url: str, status: int | None, tries: int):
        super().__init__(message)
        self.url = url
        self.status = status  # the last HTTP status, None when the last try got no answer (a timeout, a drop)
        self.tries = tries


class _Passing(Exception):
    """A fault worth another try; `wait_s` is the server's Retry-After, when it gave one."""

    def __init__(self, what: str, status: int | None, wait_s: float | None = None):
        super().__init__(what)
        self.status = status
        self.wait_s = wait_s


class Endpoint:
    """An OpenAI-compatible chat-completions endpoint, through httpx; its methods may be called from many threads."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 6,
        cache: RequestCache | None = None,
        backoff_s: float = 0.5,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_s = backoff_s  # the first retry waits about this long, each next one twice as long
        self.cache = cache
        self.requests = 0  # requests the endpoint answered: each one paid for
        self.retried = 0  # tries that met a passing fault and were made again
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The slots bound requests in flight across every caller's threads; the pool holds as many connections, so
        # a request never waits for one (a pool wait would count against its timeout).
        self._slots = threading.BoundedSemaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(headers=headers, timeout=timeout_s, limits=limits)
        self._counts = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def figures(self) -> dict[str, int]:
        """Requests answered (paid) and tries retried by this endpoint."""
        return {"requests": self.requests, "retried": self.retried}

    def complete(self, messages: list[dict], sampling: Sampling, k: int, tag: str = "") -> list[Completion]:
        """k completions of `messages`: the cache's when this exact ask (with `tag`) was answered before."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        request = request_json(self.model, messages, sampling, k, tag)
        if self.cache is not None and (cached := self.cache.get(request)) is not None:
            return cached
        completions = self._generate(messages, sampling, k)
        return completions if self.cache is None else self.cache.put(request, completions)

    def complete_many(self, asks: list[tuple[list[dict], Sampling, int, str]]) -> list[list[Completion]]:
        """The completions of each (messages, sampling, k, tag) ask, in order, at most `concurrency` at once."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="endpoint") as pool:
            futures = [pool.submit(self.complete, *ask) for ask in asks]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:  # a persistent fault stops the asks not yet sent
                    future.cancel()
                raise

    def _generate(self, messages: list[dict], sampling: Sampling, k: int) -> list[Completion]:
        body = {
            "model": self.model,
            "messages": messages,
            "n": k,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "logprobs": True,
            "return_token_ids": True,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return self._post(orjson.dumps(body), k)

    def _post(self, content: bytes, k: int) -> list[Completion]:
        """The completions the endpoint answered, trying again while a fault passes."""
        for attempt in range(self.retries + 1):
            try:
                with self._slots:
                    answer = self._try(content, attempt + 1, k)
                with self._counts:
                    self.requests += 1
                return answer
            except _Passing as fault:
                if attempt == self.retries:
                    raise EndpointError(
                        f"POST {self.url} failed {attempt + 1} times; the last: {fault}",
                        url=self.url,
                        status=fault.status,
                        tries=attempt + 1,
                    ) from None
                with self._counts:
                    self.retried += 1
                time.sleep(self._wait_s(attempt, fault.wait_s))
        raise AssertionError("unreachable: the last try returns or raises")

    def _try(self, content: bytes, tries: int, k: int) -> list[Completion]:
        try:
            response = self._client.post(self.url, content=content, headers={"Content-Type": "application/json"})
        except httpx.TimeoutException as e:
            raise _Passing(f"no answer within {self._client.timeout.read} s ({type(e).__name__})", None) from None
        except httpx.UnsupportedProtocol as e:
            raise EndpointError(f"POST {self.url}: {e}", url=self.url, status=None, tries=tries) from None
        except httpx.TransportError as e:  # refused, reset or dropped: the server may be restarting
            raise _Passing(f"{type(e).__name__}: {e}", None) from None
        status = response.status_code
        if status in RETRIED_STATUSES:
            raise _Passing(f"HTTP {status}: {_message(response)}", status, _retry_after_s(response))
        if status != 200:
            raise EndpointError(
                f"POST {self.url} was refused with HTTP {status}: {_message(response)} (not retried: the request "
                "itself is wrong)",
                url=self.url,
                status=status,
                tries=tries,
            )
        try:
            return _completions(orjson.loads(response.content), k, self.model)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise EndpointError(
                f"POST {self.url} answered HTTP 200 with what is not a chat completion of n={k} choices "
                f"({type(e).__name__}: {e}): {response.text[:200]!r}",
                url=self.url,
                status=status,
                tries=tries,
            ) from None

    def _wait_s(self, attempt: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random), or the server's Retry-After if longer."""
        backoff = min(BACKOFF_CAP_S, self.backoff_s * 2**attempt)
        wait = backoff / 2 + random.uniform(0, backoff / 2)
        return min(RETRY_AFTER_CAP_S, max(wait, retry_after_s or 0.0))


def _completions(answer: dict, k: int, asked_model: str) -> list[Completion]:
    """The k completions of a chat-completions answer, in choice order."""
    choices = sorted(answer["choices"], key=lambda choice: choice["index"])
    if len(choices) != k:
        raise ValueError(f"{len(choices)} choices")
    prompt_ids = _ids(answer.get("prompt_token_ids"))
    model = answer.get("model") or asked_model
    completions = []
    for choice in choices:
        content = (choice.get("logprobs") or {}).get("content")
        ids = _ids(choice.get("token_ids"))
        logprobs = None if content is None else tuple(float(token["logprob"]) for token in content)
        if ids is not None and logprobs is not None and len(ids) != len(logprobs):  # each would be another's
            raise ValueError(f"choice {choice['index']}: {len(ids)} token ids but {len(logprobs)} logprobs")
        completions.append(
            Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "",
                prompt_token_ids=prompt_ids,
                completion_token_ids=ids,
                logprobs=logprobs,
                model=model,
            )
        )
    return completions


def _ids(values: list | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _message(response: httpx.Response) -> str:
    """The server's error message: OpenAI's {"error": {"message"}}, vLLM's older {"message"}, else the body."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return response.text[:500]


def _retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (given as seconds or as an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
