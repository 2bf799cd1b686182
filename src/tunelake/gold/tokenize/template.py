"""Chat templates and tokenizers, loaded from local files and probed once for what masking needs to know.

Rendering goes through transformers' own Jinja renderer (the one `apply_chat_template` uses), so a render is
byte-for-byte what the model sees at inference. Templates are distrusted: probing finds the assistant header
(what `add_generation_prompt` appends) and the end-of-turn marker from renders of sentinel conversations,
instead of assuming a family's layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

BUILTIN = Path(__file__).parent / "templates"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class TemplateError(ValueError):
    """A template or tokenizer that cannot be used at all (not one record's problem)."""


def _token_text(value: object) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


@dataclass(frozen=True)
class ChatTemplate:
    text: str  # the Jinja source
    name: str  # where it came from, for messages and the manifest
    special_tokens: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    today: date

    def render(self, messages: list[dict], tools: list[dict] | None = None, generation_prompt: bool = False) -> str:
        """What `apply_chat_template` renders for plain JSON messages: the same compiled template, the same
        reasoning aliases, called directly (its wrapper's deep copy of plain data costs 7% of tokenization)."""
        return self._compiled.render(
            messages=self._alias_reasoning(messages),
            tools=tools,
            documents=None,
            add_generation_prompt=generation_prompt,
            strftime_now=self._strftime_now,
            **self.special_tokens,
        )

    @cached_property
    def _compiled(self):
        """transformers' sandboxed Jinja environment (trim_blocks, lstrip_blocks, its tojson, raise_exception).
        Imported here, not with the module: transformers costs a third of a second and 45 MiB in every process
        that imports tunelake's tasks, and only tokenization needs it."""
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(self.text)

    @cached_property
    def _alias_reasoning(self):
        """transformers' step that copies each message's reasoning under the other names templates read it by."""
        from transformers.utils.chat_template_utils import _alias_reasoning_fields

        return _alias_reasoning_fields

    def _strftime_now(self, fmt: str) -> str:
        """The recipe's template_date, not the clock: a render must not change with the day it runs."""
        return self.today.strftime(fmt)

    @cached_property
    def assistant_header(self) -> str:
        """What add_generation_prompt appends: the text before an assistant turn's content (may be empty, as in
        Mistral v0.1, whose user turn already ends with `[/INST]`)."""
        user = [{"role": "user", "content": "\x01probe-user\x01"}]
        plain, prompted = self.render(user), self.render(user, generation_prompt=True)
        # Some templates close a conversation (e.g. with eos) unless asked for a generation prompt.
        return prompted[len(_common_prefix(plain, prompted)) :]

    @cached_property
    def end_of_turn(self) -> str:
        """The marker that closes an assistant turn, found after a middle turn and after the last one."""
        marks = ["\x01probe-a1\x01", "\x01probe-a2\x01"]
        msgs = [
            {"role": "user", "content": "\x01probe-u1\x01"},
            {"role": "assistant", "content": marks[0]},
            {"role": "user", "content": "\x01probe-u2\x01"},
            {"role": "assistant", "content": marks[1]},
        ]
        text = self.render(msgs)
        middle = text[text.index(marks[0]) + len(marks[0]) : text.index("\x01probe-u2\x01")]
        last = text[text.index(marks[1]) + len(marks[1]) :]
        eot = _common_prefix(middle, last).rstrip()
        if not eot:
            raise TemplateError(f"{self.name}: no end-of-turn marker follows an assistant turn")
        return eot


def load_template(tokenizer_dir: Path, chat_template: str, today: date) -> ChatTemplate:
    """The chat template named by the recipe: 'auto' (the tokenizer's own), a .jinja path, or a built-in."""
    config = _tokenizer_config(tokenizer_dir)
    special = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
    if chat_template == "auto":
        text = config.get("chat_template")
        if isinstance(text, list):  # named templates: the default one
            named = [t for t in text if isinstance(t, dict) and isinstance(t.get("template"), str)]
            text = next((t["template"] for t in named if t.get("name") == "default"), None)
        if text is not None and not isinstance(text, str):
            raise TemplateError(f"{tokenizer_dir}: chat_template is a {type(text).__name__}, expected text")
        jinja = tokenizer_dir / "chat_template.jinja"
        text = text or (jinja.read_text() if jinja.exists() else None)
        if not text:
            raise TemplateError(
                f"{tokenizer_dir}: the tokenizer has no chat template; set gold.tokenize.chat_template"
            )
        name = f"{tokenizer_dir.name} (auto)"
    elif chat_template.endswith(".jinja"):
        path = Path(chat_template)
        if not path.exists():
            raise TemplateError(f"chat template file {path} does not exist")
        text, name = path.read_text(), path.name
    else:
        path = BUILTIN / f"{chat_template}.jinja"
        if not path.exists():
            names = sorted(p.stem for p in BUILTIN.glob("*.jinja"))
            raise TemplateError(f"unknown built-in chat template {chat_template!r}; expected one of {names}")
        text, name = path.read_text(), chat_template
    return ChatTemplate(text, name, special, today)


def _tokenizer_config(tokenizer_dir: Path) -> dict:
    path = tokenizer_dir / "tokenizer_config.json"
    if not path.exists():
        raise TemplateError(f"{tokenizer_dir}: no tokenizer_config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise TemplateError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(config, dict):
        raise TemplateError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class Encoded:
    """Many texts' tokens end to end: ids, character offsets (within each text), and the bounds of each text's
    tokens ([bounds[r], bounds[r + 1]) for text r)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # (tokens, 2) int64
    bounds: np.ndarray  # int64, texts + 1

    def record(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.bounds[r], self.bounds[r + 1]
        return self.ids[start:end], self.offsets[start:end]


@dataclass(frozen=True)
class TextTokenizer:
    """A fast (Rust) tokenizer with the facts masking needs: special tokens, BOS, round-tripping."""

    tokenizer: Tokenizer
    bos_id: int | None

    @classmethod
    def load(cls, tokenizer_dir: Path) -> TextTokenizer:
        path = tokenizer_dir / "tokenizer.json"
        if not path.exists():
            raise TemplateError(f"{tokenizer_dir}: no tokenizer.json (a fast tokenizer is required for offsets)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises nothing narrower for a bad file
            raise TemplateError(f"{path}: not a tokenizer the tokenizers library can load: {e}") from None
        bos = _token_text(_tokenizer_config(tokenizer_dir).get("bos_token"))
        return cls(tok, tok.token_to_id(bos) if bos else None)

    def encode_many(self, texts: list[str]) -> Encoded:
        """All texts in one batched call; the text already holds its special tokens, so none are added."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        n = int(lengths.sum())
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, n)
        flat = chain.from_iterable(chain.from_iterable(e.offsets for e in encodings))
        offsets = np.fromiter(flat, np.int64, 2 * n).reshape(n, 2)
        return Encoded(ids, offsets, np.concatenate(([0], np.cumsum(lengths))))

    def encode(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, offsets) per text."""
        enc = self.encode_many(texts)
        return [enc.record(r) for r in range(len(texts))]

    def decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=False)

    def decode_many(self, ids: list[list[int]]) -> list[str]:
        return self.tokenizer.decode_batch(ids, skip_special_tokens=False)

    @cached_property
    def special_pattern(self) -> re.Pattern:
        """Matches the text of any special token: what a message may not spell (it would be parsed as the token)."""
        texts = sorted((t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special), key=len)
        return re.compile("|".join(re.escape(t) for t in reversed(texts)) or "(?!)")

    @cached_property
    def round_trips(self) -> bool:
        """Whether decode(encode(text)) == text; SentencePiece ("legacy") tokenizers add spaces and do not."""
        probe = "Hello world.\n\n  Indented: x = [1, 2]\nÜber 東京 🙂 end"
        ((ids, _),) = self.encode([probe])
        return self.decode(ids) == probe


def files_sha256(tokenizer_dir: Path, chat_template: str) -> str:
    """sha256 of every file a tokenizer and its chat template are loaded from: tokenizer.json, tokenizer_config.json,
    the folder's chat_template.jinja and a .jinja file the recipe names (built-ins ship with the code)."""
    paths = [tokenizer_dir / name for name in (*TOKENIZER_FILES, "chat_template.jinja")]
    if chat_template.endswith(".jinja"):
        paths.append(Path(chat_template))
    h = hashlib.sha256()
    for path in paths:
        data = path.read_bytes() if path.is_file() else b""
        h.update(len(data).to_bytes(8, "little") + data)  # lengths keep one file from running into the next
    return h.hexdigest()


def fingerprint(tokenizer_dir: Path, template: ChatTemplate, settings: dict) -> str:
    """A hash of everything that changes token ids or labels: tokenizer files, template, settings, version."""
    from tunelake.gold.tokenize.masks import MASKING_VERSION

    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        h.update((tokenizer_dir / name).read_bytes())
    h.update(template.text.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(MASKING_VERSION.encode())
    return h.hexdigest()[:16]
