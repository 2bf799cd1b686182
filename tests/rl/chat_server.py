"""A small OpenAI-compatible chat-completions server for tests, and the handle tests start it with.

It serves a tiny randomly initialised Qwen2 (hidden 64, 2 layers, seeded) with the real Qwen2.5 tokenizer and chat
template (tests/fixtures/tokenizers/qwen2.5-instruct) through the real protocol, as vLLM answers it: `n`
completions sampled with `temperature`, `top_p`, `max_tokens` and `seed`; with `return_token_ids`, the prompt's
ids (top-level `prompt_token_ids`) and each choice's sampled ids (`token_ids`, <|im_end|> included when it
stopped); with `logprobs`, `logprobs.content[].logprob` of each sampled token; `finish_reason` "stop" at
<|im_end|>, "length" at max_tokens; `usage`. HTTP is the standard library's ThreadingHTTPServer.

A random model almost never ends a turn on its own, so <|im_end|>'s logit gets a fixed bonus (part of the model:
its logprobs include it): at temperature 1 both finish reasons occur within 16 tokens.

Test controls, beside the protocol:
- `POST /_control` {"faults": [...], "token_ids": bool, "delay_s": float, "reset_stats": bool}: `faults` replaces
  the queue of faults the next chat requests meet, in order: {"kind": "status", "status": 500} (an error answer;
  "retry_after" adds that header), {"kind": "answer", "body": {...}} (HTTP 200 with that body),
  {"kind": "hang", "seconds": s} (no answer for s seconds, then the connection is
  closed) or {"kind": "drop"} (the connection is closed without an answer). `token_ids: false` leaves the token
  ids out of answers, as an endpoint without `return_token_ids` does; `delay_s` holds each generation that long.
- `GET /_stats`: {"received", "served", "in_flight", "max_in_flight", "faults_left"}: chat requests received and
  answered with completions (each one a paid generation), and the most generations that ran at once.

Run: `python tests/rl/chat_server.py [--port 0]`; it prints `serving <base_url>` once it listens.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson

TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "qwen2.5-instruct"
MODEL_NAME = "tiny-qwen2"
STOP = "<|im_end|>"
STOP_BONUS = 9.0  # added to <|im_end|>'s logit: at temperature 1, 16 tokens end about 3 completions in 5


class TinyChatModel:
    """A seeded random Qwen2 small enough for 2 CPU cores, with the Qwen2.5 tokenizer and chat template."""

    def __init__(self, seed: int = 0):
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        torch.set_num_threads(1)  # requests run in threads of their own: one core each
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
        config = Qwen2Config(
            vocab_size=len(self.tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        self.model = Qwen2ForCausalLM(config).eval()
        self.stop_id = self.tokenizer.convert_tokens_to_ids(STOP)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def sample(
        self, prompt_ids: list[int], n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None
    ) -> list[tuple[list[int], list[float], str]]:
        """n completions of the prompt: (sampled ids, their logprobs, finish reason) each."""
        torch = self.torch
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int.from_bytes(uuid.uuid4().bytes[:8]) >> 1)
        ids: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        done = [False] * n
        with torch.no_grad():
            # Logits of the last position only: all of them (n x prompt x 152k vocabulary) took GBs per request.
            out = self.model(input_ids=torch.tensor([prompt_ids] * n), use_cache=True, logits_to_keep=1)
            for _ in range(max_tokens):
                logits = out.logits[:, -1].float()
                logits[:, self.stop_id] += STOP_BONUS
                logp = torch.log_softmax(logits, dim=-1)  # the model's own logprobs, as vLLM returns by default
                tokens = self._draw(logits, temperature, top_p, generator)
                for i, token in enumerate(tokens.tolist()):
                    if not done[i]:
                        ids[i].append(token)
                        logprobs[i].append(float(logp[i, token]))
                        done[i] = token == self.stop_id
                if all(done):
                    break
                out = self.model(input_ids=tokens[:, None], cache=out.cache, use_cache=True)
        return [(ids[i], logprobs[i], "stop" if done[i] else "length") for i in range(n)]

    def _draw(self, logits, temperature: float, top_p: float, generator):
        torch = self.torch
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # the nucleus keeps its first token
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]


class State:
    """The server's test controls and counts, shared by its request threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.faults: collections.deque[dict] = collections.deque()
        self.token_ids = True
        self.delay_s = 0.0
        self.in_flight = 0  # generations running now (a hang or a drop never generates)
        self.reset()

    def reset(self) -> None:
        self.received = self.served = self.max_in_flight = 0

    def stats(self) -> dict:
        with self.lock:
            return {
                "received": self.received,
                "served": self.served,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "faults_left": len(self.faults),
            }


def handler_for(model: TinyChatModel, state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects

        def log_message(self, *args) -> None:  # quiet: tests read the stats, not a log
            pass

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._send(200, state.stats())
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/_control":
                self._control(orjson.loads(body))
            elif self.path == "/v1/chat/completions":
                with state.lock:
                    state.received += 1
                    fault = state.faults.popleft() if state.faults else None
                self._chat(body, fault)
            else:
                self._error(404, f"no route {self.path}")

        def _control(self, settings: dict) -> None:
            with state.lock:
                if "faults" in settings:
                    state.faults = collections.deque(settings["faults"])
                state.token_ids = settings.get("token_ids", state.token_ids)
                state.delay_s = settings.get("delay_s", state.delay_s)
                if settings.get("reset_stats"):
                    state.reset()
            self._send(200, state.stats())

        def _chat(self, body: bytes, fault: dict | None) -> None:
            if fault is not None:
                if fault["kind"] == "status":
                    headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
                    return self._error(fault["status"], "injected fault", headers)
                if fault["kind"] == "answer":
                    return self._send(200, fault["body"])
                if fault["kind"] == "hang":
                    time.sleep(fault["seconds"])
                self.close_connection = True  # a hang or a drop: the connection closes with no answer
                return None
            request = orjson.loads(body)
            problem = _invalid(request)
            if problem:
                return self._error(404 if problem.startswith("The model") else 400, problem)
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay_s)
                prompt_ids = model.prompt_ids(request["messages"])
                samples = model.sample(
                    prompt_ids,
                    request.get("n", 1),
                    request.get("temperature", 1.0),
                    request.get("top_p", 1.0),
                    request.get("max_tokens") or 16,
                    request.get("seed"),
                )
            finally:
                with state.lock:
                    state.in_flight -= 1
            with state.lock:
                state.served += 1
                token_ids = state.token_ids and request.get("return_token_ids", False)
            self._send(200, _answer(model, prompt_ids, samples, request.get("logprobs", False), token_ids))
            return None

        def _error(self, status: int, message: str, headers: dict | None = None) -> None:
            kind = "BadRequestError" if status == 400 else "NotFoundError" if status == 404 else "ServerError"
            self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}}, headers)

        def _send(self, status: int, value: dict, headers: dict | None = None) -> None:
            payload = orjson.dumps(value)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, header in (headers or {}).items():
                self.send_header(name, header)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _invalid(request: dict) -> str | None:
    """What is wrong with a chat request, as vLLM words its 400s (404 for another model), or None."""
    if request.get("model") != MODEL_NAME:
        return f"The model `{request.get('model')}` does not exist."
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "each message must be an object with a role"
    if request.get("n", 1) < 1:
        return "n must be at least 1."
    if request.get("temperature", 1.0) < 0:
        return f"temperature must be non-negative, got {request['temperature']}."
    if not 0 < request.get("top_p", 1.0) <= 1:
        return f"top_p must be in (0, 1], got {request['top_p']}."
    if (request.get("max_tokens") or 16) < 1:
        return f"max_tokens must be at least 1, got {request['max_tokens']}."
    return None


def _answer(model: TinyChatModel, prompt_ids: list[int], samples: list, logprobs: bool, token_ids: bool) -> dict:
    """A chat.completion answer, as vLLM's ChatCompletionResponse serialises it."""
    tokenizer = model.tokenizer
    choices = []
    for index, (ids, lps, finish) in enumerate(samples):
        choice = {
            "index": index,
            "message": {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)},
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        if logprobs:
            tokens = [tokenizer.decode([i]) for i in ids]
            choice["logprobs"] = {
                "content": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                    for t, lp in zip(tokens, lps, strict=True)
                ]
            }
        if token_ids:
            choice["token_ids"] = ids
        choices.append(choice)
    completion_tokens = sum(len(ids) for ids, _, _ in samples)
    answer = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
        },
    }
    if token_ids:
        answer["prompt_token_ids"] = prompt_ids
    return answer


class ChatServer:
    """A test's handle on a chat server running in a subprocess on 127.0.0.1 (a free port)."""

    def __init__(self, seed: int = 0):
        # stderr to a file: a pipe nobody reads could fill and stall the server. Closed by stop().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--port", "0", "--seed", str(seed)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("serving "):
            self.stop()
            self._log.seek(0)
            raise RuntimeError(f"the chat server did not start: {line!r}\n{self._log.read().decode()[-4000:]}")
        self.base_url = line.split()[1]  # http://127.0.0.1:<port>/v1
        self.root = self.base_url.removesuffix("/v1")
        self.model = MODEL_NAME

    def control(self, **settings) -> dict:
        """Set the server's test controls (see the module's docstring); gives its stats."""
        return httpx.post(f"{self.root}/_control", json=settings, timeout=10).json()

    def stats(self) -> dict:
        return httpx.get(f"{self.root}/_stats", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--seed", type=int, default=0, help="the model's initialisation seed")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(TinyChatModel(args.seed), State()))
    server.daemon_threads = True  # a hanging request never holds the server's exit
    print(f"serving http://127.0.0.1:{server.server_port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
