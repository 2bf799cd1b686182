"""Token ids and audited loss masks, derived from the rendered text, never from token-id patterns.

For SFT: render the conversation with the model's template, locate each trained assistant message's content
and the end-of-turn marker that closes it in the rendered string, and map those character spans to tokens
with the fast tokenizer's offsets. Every record is then audited:
(a) the characters covered by trained tokens are exactly the trained spans (content, anything the template
    renders for the turn's tool calls, and the end-of-turn marker): nothing of a header, system or user turn;
(b) for tokenizers that round-trip (Llama-3, Qwen2.5; not SentencePiece ones such as Mistral v0.1), decoding
    each span's trained tokens gives back the span's text.
A record that fails is rejected with a reason code and the evidence, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
import numpy as np
import orjson

from tunelake.gold.tokenize.template import ChatTemplate, Encoded, TextTokenizer
from tunelake.schema import Reason, Rejected

MASKING_VERSION = "masks-4"  # bump when a change alters ids or labels: it is part of the fingerprint
IGNORE = -100


@dataclass(frozen=True)
class MaskSettings:
    max_length: int
    train_on: str  # all_assistant | last_assistant
    train_on_eot: bool
    overlong: str  # drop | truncate_left | truncate_right


def template_messages(messages: list[dict]) -> list[dict]:
    """Canonical messages as templates expect them: no null fields, tool calls as objects."""
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if v is not None}
        if "tool_calls" in msg:
            msg["tool_calls"] = orjson.loads(msg["tool_calls"])
        msg.setdefault("content", "")
        out.append(msg)
    return out


def template_tools(tools: str | None) -> list[dict] | None:
    return orjson.loads(tools) if tools else None


def _render(template: ChatTemplate, messages: list[dict], tools, generation_prompt: bool = False) -> str:
    try:
        return template.render(messages, tools, generation_prompt)
    except jinja2.TemplateError as e:
        # The template refused the record: its raise_exception (Mistral's on a system role) raises TemplateError, as
        # do its undefined values and sandbox violations. Any other exception is a bug and fails the build.
        raise Rejected(Reason.template_error, None, f"{template.name} raised: {e}") from None


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # trained character spans, in order
    # The messages' own text the template copies into the render (content, reasoning, names, tool calls, tool
    # schemas): none of it may spell a special token, or the tokenizer would parse it as one.
    texts: tuple[str, ...] = ()


def message_texts(messages: list[dict], tools: list[dict] | None = None) -> tuple[str, ...]:
    """The free text of template messages (content, reasoning, names, tool calls) and of the tool schemas, for the
    special-token check: the template copies all of it into the render."""
    keys = ("content", "reasoning_content", "name", "tool_call_id")
    out = []
    for m in messages:
        out += [m[k] for k in keys if isinstance(m.get(k), str) and m.get(k)]
        if m.get("tool_calls"):
            out.append(orjson.dumps(m["tool_calls"]).decode())
    if tools:
        out.append(orjson.dumps(tools).decode())
    return tuple(out)


def require_rendered(template: ChatTemplate, text: str, messages: list[dict], field: str) -> None:
    """Every message's content, reasoning and tool calls must appear in the render, in order: a template that
    leaves one out would have the record trained on (or prompted with) less than it says."""
    cursor = 0
    for i, m in enumerate(messages):
        if m.get("content"):
            at = text.find(m["content"], cursor)
            if at < 0:
                raise Rejected(Reason.template_dropped_content, f"{field}[{i}].content", f"{template.name} drops it")
            cursor = at + len(m["content"])
        if m.get("reasoning_content") and m["reasoning_content"] not in text:
            raise Rejected(
                Reason.template_dropped_content, f"{field}[{i}].reasoning_content", f"{template.name} drops it"
            )
        for call in m.get("tool_calls") or ():
            name = call.get("function", call).get("name") or ""
            if name not in text:
                raise Rejected(
                    Reason.template_dropped_content, f"{field}[{i}].tool_calls", f"{template.name} drops {name!r}"
                )


def find_control_text(tok: TextTokenizer, texts: tuple[str, ...]) -> str | None:
    """The first special token's text spelled in the texts: the tokenizer would parse it as a control token."""
    for text in texts:
        if hit := tok.special_pattern.search(text):
            return hit[0]
    return None


def reject_control_text(tok: TextTokenizer, texts: tuple[str, ...], field: str | None) -> None:
    if hit := find_control_text(tok, texts):
        raise Rejected(Reason.special_token_in_content, field, f"{hit!r} inside a message would end a turn")


def _after_header(text: str, cursor: int, header: str) -> int | None:
    """Where the first assistant header at or after `cursor` ends (None if the template has none there)."""
    for h in (header, header.strip()):
        if h.strip() and (at := text.find(h, cursor)) >= 0:
            return at + len(h)
    return None


def render_sft(template: ChatTemplate, messages: list[dict], tools, settings: MaskSettings) -> Rendered:
    text = _render(template, messages, tools)
    eot = template.end_of_turn
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    trained = set(assistants if settings.train_on == "all_assistant" else assistants[-1:])
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        content = msg.get("content") or ""
        after = _after_header(text, cursor, template.assistant_header) if msg["role"] == "assistant" else None
        start = -1
        if content and after is not None:
            # An assistant's content is looked for after its own header: a short one ("a", "d") also occurs in the
            # header and in earlier template text, and a match there would train the wrong characters.
            start = text.find(content, after)
            if start >= 0 and 0 <= text.find(eot, after) < start:
                start = -1  # past the end of this turn: the header found was a later turn's
        if start < 0:
            start = text.find(content, cursor) if content else cursor
        if start < 0:
            raise Rejected(
                Reason.template_dropped_content, f"messages[{i}].content", f"{template.name} does not render it"
            )
        end = start + len(content)
        if msg.get("tool_calls"):
            close = text.find(eot, max(end, after or 0))
            turn = text[cursor : close if close >= 0 else len(text)]
            for call in msg["tool_calls"]:
                name = call.get("function", call).get("name") or ""
                if name not in turn:
                    raise Rejected(
                        Reason.template_dropped_content,
                        f"messages[{i}].tool_calls",
                        f"{template.name} does not render the call to {name!r}",
                    )
        if i not in trained:
            cursor = end
            continue
        reasoning = msg.get("reasoning_content")
        if not content:
            # A tool-call-only turn: train on what the model generates, from where the generation prompt ends.
            start = end = after if after is not None else _generation_start(template, messages[:i], tools, text, i)
        elif after is not None and reasoning and reasoning in text[after:start]:
            start = after  # the model generates the reasoning the template renders before the content: train it
        elif reasoning:
            # Training the answer without the reasoning that produced it is a silent loss: pick a template that
            # renders reasoning (e.g. Qwen3's), or drop reasoning_content upstream on purpose.
            if reasoning in _render(template, messages[: i + 1], tools):
                raise Rejected(
                    Reason.template_not_prefix_stable,
                    f"messages[{i}]",
                    f"{template.name} drops this turn's reasoning once later turns follow",
                )
            raise Rejected(
                Reason.template_dropped_content,
                f"messages[{i}].reasoning_content",
                f"{template.name} does not render the reasoning of a trained turn",
            )
        close = text.find(eot, end)
        if close < 0:
            raise Rejected(Reason.stop_token_not_trained, f"messages[{i}]", f"no {eot!r} closes the turn")
        between = text[end:close]
        if between.strip() and not msg.get("tool_calls"):
            raise Rejected(Reason.mask_overruns_turn, f"messages[{i}]", f"text before {eot!r}: {between[:80]!r}")
        spans.append((start, close + len(eot) if settings.train_on_eot else (close if msg.get("tool_calls") else end)))
        cursor = close + len(eot)
    _check_prefix_stable(template, messages, tools, text, spans, trained)
    return Rendered(text, spans, message_texts(messages, tools))


def _generation_start(template: ChatTemplate, context: list[dict], tools, text: str, i: int) -> int:
    """Where turn i's generation starts in the full render: the end of the context rendered with the generation
    prompt (for templates with no assistant header to anchor on, such as Mistral's)."""
    prompt = _render(template, context, tools, generation_prompt=True)
    if not text.startswith(prompt):
        raise Rejected(Reason.template_not_prefix_stable, f"messages[{i}]", "the context renders differently")
    return len(prompt)


def _check_prefix_stable(template, messages, tools, text: str, spans: list[tuple[int, int]], trained: set) -> None:
    """An earlier trained turn must render the same once later turns follow: else the model is trained on a
    context (e.g. with reasoning kept) that it never sees at inference (where past reasoning is dropped)."""
    for (_, end), i in zip(spans[:-1], sorted(trained)[:-1], strict=True):
        prefix = _render(template, messages[: i + 1], tools)
        if prefix[:end] != text[:end]:
            at = next(k for k in range(end) if k >= len(prefix) or prefix[k] != text[k])
            raise Rejected(
                Reason.template_not_prefix_stable,
                f"messages[{i}]",
                f"renders differently once later turns follow, at char {at}: {text[at : at + 60]!r}",
            )


def _token_spans(offsets: np.ndarray, spans) -> tuple[np.ndarray, np.ndarray]:
    """(inside, straddling) per token: fully within a span, or crossing a span's edge (spans sorted, disjoint)."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    spans = np.asarray(spans, np.int64).reshape(-1, 2)
    if not len(spans):
        return np.zeros(len(offsets), bool), np.zeros(len(offsets), bool)
    span_starts, span_ends = spans[:, 0], spans[:, 1]
    before = np.searchsorted(span_starts, starts, side="right") - 1  # the last span starting at or before a token
    has, k = before >= 0, np.maximum(before, 0)
    inside = has & (starts < span_ends[k]) & (ends <= span_ends[k])
    overlaps = has & (starts < span_ends[k]) & (ends > span_starts[k])
    nxt = np.minimum(before + 1, len(spans) - 1)  # the first span starting after the token starts
    into_next = (before + 1 < len(spans)) & (starts < span_starts[nxt]) & (ends > span_starts[nxt])
    return inside, (overlaps & ~inside) | into_next


def _runs(ranges: np.ndarray) -> np.ndarray:
    """[start, end) ranges (sorted by start) merged where they overlap or touch: the characters they cover."""
    if not len(ranges):
        return ranges.reshape(0, 2)
    reach = np.maximum.accumulate(ranges[:, 1])
    new = np.concatenate(([True], ranges[1:, 0] > reach[:-1]))
    first = np.flatnonzero(new)
    last = np.concatenate((first[1:] - 1, [len(ranges) - 1]))
    return np.stack([ranges[first, 0], reach[last]], axis=1)


def _record_of(runs: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The record each run (of shifted characters) belongs to."""
    return np.searchsorted(base, runs[:, 0], side="right") - 1


def _records_differing(a: np.ndarray, b: np.ndarray, base: np.ndarray) -> np.ndarray:
    """The records whose runs differ between two sets of runs (only called when some do: a set of tuples is
    plenty for this path, and exact however large the offsets)."""
    odd = set(map(tuple, a.tolist())) ^ set(map(tuple, b.tolist()))
    return np.unique(_record_of(np.asarray(sorted(odd), np.int64).reshape(-1, 2), base))


def sft_labels(rendered: list[Rendered], enc: Encoded, tok: TextTokenizer) -> tuple[np.ndarray, dict[int, Rejected]]:
    """Labels (IGNORE off the trained spans) for all tokens of many rendered conversations, after the audits, and
    the rejection of each record that fails one, by its index (its labels are then meaningless).

    The records are audited together: each one's character offsets and spans are shifted past the record before
    (with a one-character gap, so no run of characters joins two records), and one numpy pass serves them all.
    """
    rejects: dict[int, Rejected] = {}

    def reject(r: int, reason: Reason, detail: str) -> None:
        rejects.setdefault(r, Rejected(reason, None, detail))  # the first failed check of a record is its reason

    lengths = np.diff(enc.bounds)
    token_record = np.repeat(np.arange(len(rendered)), lengths)
    sizes = np.fromiter((len(r.text) + 1 for r in rendered), np.int64, len(rendered))
    base = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    offsets = enc.offsets + base[token_record, None]
    span_counts = np.fromiter((len(r.spans) for r in rendered), np.int64, len(rendered))
    spans = np.asarray([s for r in rendered for s in r.spans], np.int64).reshape(-1, 2)
    span_record = np.repeat(np.arange(len(rendered)), span_counts)
    spans += base[span_record, None]

    if tok.bos_id is not None:
        two = np.flatnonzero(lengths > 1)  # records with a first and a second token
        first = enc.bounds[two]
        for r in two[(enc.ids[first] == tok.bos_id) & (enc.ids[first + 1] == tok.bos_id)]:
            reject(r, Reason.double_bos, "the rendered text starts with two BOS tokens")
    for r, rendered_r in enumerate(rendered):
        if hit := find_control_text(tok, rendered_r.texts):
            reject(r, Reason.special_token_in_content, f"{hit!r} inside a message would end a turn")
    inside, straddle = _token_spans(offsets, spans)
    for j in np.flatnonzero(straddle):
        r = token_record[j]
        s, e = enc.offsets[j]
        reject(r, Reason.mask_overruns_turn, f"token {rendered[r].text[s:e]!r} at chars {s}-{e} crosses a span edge")
    for r in np.flatnonzero(np.bincount(token_record[inside], minlength=len(rendered)) == 0):
        reject(r, Reason.mask_empty, "no token is trained")
    # Audit (a): trained characters are exactly the spans.
    trained_runs = _runs(offsets[inside & (offsets[:, 1] > offsets[:, 0])])
    span_runs = _runs(spans)
    if not np.array_equal(trained_runs, span_runs):
        for r in _records_differing(trained_runs, span_runs, base):
            local = (trained_runs[_record_of(trained_runs, base) == r] - base[r]).tolist()
            expected = (span_runs[_record_of(span_runs, base) == r] - base[r]).tolist()
            reject(r, Reason.mask_audit_failed, f"trained characters {local} != spans {expected}")
    # Audit (b): decoding the trained tokens gives back each span's text (one batched decode for all spans).
    trained = np.flatnonzero(inside)
    if tok.round_trips and len(trained):
        span_of = np.searchsorted(spans[:, 0], offsets[trained, 0], side="right") - 1
        cuts = np.flatnonzero(np.diff(span_of)) + 1
        decoded = tok.decode_many([g.tolist() for g in np.split(enc.ids[trained], cuts)])
        for k, text in zip(span_of[np.concatenate(([0], cuts))], decoded, strict=True):
            r = span_record[k]
            s, e = spans[k] - base[r]
            if text != rendered[r].text[s:e]:
                reject(r, Reason.mask_audit_failed, f"decoded {text[:60]!r} != {rendered[r].text[s:e][:60]!r}")
    return np.where(inside, enc.ids, IGNORE).astype(np.int32), rejects


def fit_length(ids: np.ndarray, labels: np.ndarray, settings: MaskSettings) -> tuple[np.ndarray, np.ndarray]:
    """Apply the overlong policy; a cut that loses the trained tokens it must keep rejects the record."""
    n, limit = len(ids), settings.max_length
    if n <= limit:
        return ids, labels
    if settings.overlong == "drop":
        raise Rejected(Reason.overlong, None, f"{n} tokens; max_length is {limit}")
    if settings.overlong == "truncate_right":
        ids, labels = ids[:limit], labels[:limit]
    else:  # truncate_left, keeping the last trained turn whole
        trained = np.flatnonzero(labels != IGNORE)
        gaps = np.flatnonzero(np.diff(trained) > 1)  # trained turns are separated by untrained tokens
        last_turn_start = trained[gaps[-1] + 1] if len(gaps) else trained[0]
        if n - last_turn_start > limit:
            raise Rejected(
                Reason.labels_lost_to_truncation, None, f"the last trained turn alone exceeds {limit} tokens"
            )
        ids, labels = ids[n - limit :], labels[n - limit :]
    if (labels == IGNORE).all():
        raise Rejected(Reason.labels_lost_to_truncation, None, f"cutting to {limit} tokens leaves nothing trained")
    return ids, labels


def sft_example(
    template: ChatTemplate, tok: TextTokenizer, messages: list[dict], tools, settings: MaskSettings
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) for one SFT record; raises Rejected."""
    rendered = render_sft(template, template_messages(messages), template_tools(tools), settings)
    enc = tok.encode_many([rendered.text])
    labels, rejects = sft_labels([rendered], enc, tok)
    if rejects:
        raise rejects[0]
    return fit_length(enc.ids, labels, settings)


def prompt_ids(template: ChatTemplate, tok: TextTokenizer, prompt: list[dict], settings: MaskSettings) -> np.ndarray:
    """Token ids of a prompt rendered with the generation prompt (RL prompt banks)."""
    messages = template_messages(prompt)
    reject_control_text(tok, message_texts(messages), "prompt")
    text = _render(template, messages, None, generation_prompt=True)
    require_rendered(template, text, messages, "prompt")
    ((ids, _),) = tok.encode([text])
    if len(ids) > settings.max_length:
        raise Rejected(Reason.overlong, "prompt", f"{len(ids)} tokens; max_length is {settings.max_length}")
    return ids


def preference_example(
    template: ChatTemplate,
    tok: TextTokenizer,
    prompt: list[dict],
    chosen: list[dict],
    rejected: list[dict],
    settings: MaskSettings,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt_ids, chosen_ids, rejected_ids): the prompt rendered once, each response as its continuation."""
    prompt_msgs, prompt_text = _prompt(template, tok, prompt)
    p_chosen, chosen_ids = _continuation(template, tok, prompt_msgs, prompt_text, chosen, "chosen")
    p_rejected, rejected_ids = _continuation(template, tok, prompt_msgs, prompt_text, rejected, "rejected")
    if not np.array_equal(p_chosen, p_rejected):
        raise Rejected(Reason.template_not_prefix_stable, "prompt", "the prompt tokenizes differently per response")
    if np.array_equal(chosen_ids, rejected_ids):
        raise Rejected(Reason.chosen_equals_rejected, "chosen", "both responses render to the same tokens")
    if len(p_chosen) + max(len(chosen_ids), len(rejected_ids)) > settings.max_length:
        raise Rejected(Reason.overlong, None, f"prompt + response exceed max_length {settings.max_length}")
    return p_chosen, chosen_ids, rejected_ids


def completion_example(
    template: ChatTemplate,
    tok: TextTokenizer,
    prompt: list[dict],
    completion: list[dict],
    side: str,
    settings: MaskSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_ids, completion_ids) of a KTO record: its one completion (in `side`) as the prompt's continuation."""
    prompt_msgs, prompt_text = _prompt(template, tok, prompt)
    p, ids = _continuation(template, tok, prompt_msgs, prompt_text, completion, side)
    if len(p) + len(ids) > settings.max_length:
        raise Rejected(Reason.overlong, None, f"prompt + completion exceed max_length {settings.max_length}")
    return p, ids


def _prompt(template: ChatTemplate, tok: TextTokenizer, prompt: list[dict]) -> tuple[list[dict], str]:
    """The prompt's messages as the template takes them, and its render up to the generation prompt."""
    prompt_msgs = template_messages(prompt)
    reject_control_text(tok, message_texts(prompt_msgs), "prompt")
    prompt_text = _render(template, prompt_msgs, None, generation_prompt=True)
    require_rendered(template, prompt_text, prompt_msgs, "prompt")
    return prompt_msgs, prompt_text


def _continuation(
    template: ChatTemplate,
    tok: TextTokenizer,
    prompt_msgs: list[dict],
    prompt_text: str,
    response: list[dict],
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids, response ids): the prompt and the response (`name`) rendered together, cut where the prompt's
    render ends; a token across that edge, or a prompt that renders otherwise before the response, is rejected."""
    response = template_messages(response)
    reject_control_text(tok, message_texts(response), name)
    text = _render(template, prompt_msgs + response, None)
    if not text.startswith(prompt_text):
        raise Rejected(Reason.template_not_prefix_stable, name, "the prompt renders differently before a response")
    require_rendered(template, text[len(prompt_text) :], response, name)
    ((ids, offsets),) = tok.encode([text])
    boundary = len(prompt_text)
    straddle = (offsets[:, 0] < boundary) & (offsets[:, 1] > boundary)
    if straddle.any():
        s, e = offsets[np.flatnonzero(straddle)[0]]
        raise Rejected(Reason.mask_overruns_turn, name, f"token {text[s:e]!r} crosses the prompt/response edge")
    cut = int(np.searchsorted(offsets[:, 0], boundary))
    return ids[:cut], ids[cut:]
