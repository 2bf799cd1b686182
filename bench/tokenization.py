"""Tokenize benchmark: SFT render + tokenize + mask + audit + pack on >= 100k real conversations, against the floor
and against TRL, in the same run. (Not named tokenize.py: a script's folder comes first on sys.path, and a
bench/tokenize.py would shadow the standard library's `tokenize` for every script in bench/.)

Three sides, each in its own subprocess, on the same list of conversations and the same tokenizer:

- tunelake: what `tunelake build` runs for SFT tokenization: `tasks.run_tokenize` (read a gold part, render with the
  chat template, encode, mask, audit, write the tokenized part and the quarantine) over gold parts of --chunk-rows
  canonical records on `LocalEngine(--workers)`, then `tasks.run_pack` (best-fit decreasing, max_length) over
  `pack.pack_windows` of the tokenized parts, as with `gold.tokenize.pack.enabled: true`. Timed from the
  pool's start (spawned workers import tunelake there) to its shutdown; the plan (template load + probe) is not timed.
- floor: `tokenizers.Tokenizer.encode_batch` (with offsets, no special tokens added, as tunelake encodes) of the
  texts tunelake's template renders, in chunks of --chunk-rows, in one process with the Rust (rayon) thread pool
  set to --workers threads. Rendering is done once, up front, and not timed.
- TRL: `SFTTrainer(...)` built the way a user builds it for a conversational dataset (`messages` column) with
  `SFTConfig(assistant_only_loss=True, dataset_num_proc=--workers, max_length=--max-length)` and a tiny random
  model; the time is that of `SFTTrainer._prepare_dataset` (the whole preparation: ChatML check, tokenization with
  the training chat template's assistant masks, labels, truncation and the fully-masked filter, or packing), wrapped
  with a timer. `--trl-packing off` is TRL's default (packing=False); `on` sets packing=True (TRL's default strategy
  "bfd") at the same max_length; `both` measures the two. Datasets caching is off, so no run reuses another's map.

Records/s is input conversations / timed seconds for every side; tokens/s is the side's own output tokens (kept
examples) / timed seconds. Peak memory as in bench/ingest.py: `max proc` (largest single process) and `tree` (largest
sampled sum over the child and its workers, including the untimed data loading). `cpu s` is the CPU time of the
timed section (the process and its reaped workers): other load on the machine stretches wall time far more than it
stretches CPU time, so the CPU-per-record ratio is the steadier comparison on a shared machine.

Every child imports a snapshot of src/tunelake copied at start (named by a hash of its files), so all runs measure
the same code even if the tree is edited meanwhile (--live-src to import the working tree).

Conversations are built deterministically from the real data in shared/data (alpaca sample, LLaMA-Factory
alpaca/identity demos, FastChat's multi-turn dummy conversations, OASST2 trees walked root -> leaf, GSM8K train,
HH-RLHF harmless chosen transcripts), shuffled, and repeated with a varied first user turn to reach --records.

    python bench/tokenization.py --quick                    # 10k conversations, 1 run
    python bench/tokenization.py                            # 100k conversations, medians of 3 runs
    python bench/tokenization.py --tokenizer llama-3.1-instruct
    python bench/tokenization.py --quick --profile-only     # cProfile of run_tokenize on one gold part
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's `tokenize` (which linecache, inspect, ... import): run as a script,
# its folder is sys.path[0] and would shadow it. Drop the folder before anything imports `tokenize`.
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import orjson  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
GEN_VERSION = 2  # bump when the generated conversations change, so old work dirs are not reused
RESULT = "RESULT "  # prefix of the one JSON line a child prints

_spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).with_name("ingest.py"))
ingest = sys.modules["bench_ingest"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ingest)  # run_measured, Measured, environment: measured the same way as bench/ingest.py

PHRASES = ingest.PHRASES

# --------------------------------------------------------------------------------------------- conversations


def _load(path: str) -> list[dict]:
    raw = gzip.decompress((DATA / path).read_bytes())
    if raw.lstrip()[:1] == b"[":
        return orjson.loads(raw)
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def _alpaca(path: str, fill: dict | None = None) -> list[list[dict]]:
    out = []
    for row in _load(path):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        answer = row["output"]
        for key, value in (fill or {}).items():  # LLaMA-Factory's identity set leaves {{name}} for the user to fill
            user, answer = user.replace(key, value), answer.replace(key, value)
        out.append(_turns(("user", user), ("assistant", answer)))
    return out


def _fastchat() -> list[list[dict]]:
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    return [
        [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
        for row in _load("fastchat/dummy_conversation.json.gz")
    ]


def _oasst() -> list[list[dict]]:
    """Every root -> leaf path of non-deleted messages, cut after its last assistant turn; distinct paths only."""
    out, seen = [], set()

    def walk(msg: dict, path: list[dict]) -> None:
        if msg.get("deleted"):
            return
        path = [*path, {"role": "user" if msg["role"] == "prompter" else "assistant", "content": msg["text"]}]
        replies = [r for r in msg.get("replies") or [] if not r.get("deleted")]
        if not replies:
            while path and path[-1]["role"] != "assistant":
                path = path[:-1]
            key = tuple(m["content"] for m in path)
            if path and key not in seen:
                seen.add(key)
                out.append(path)
        for reply in replies:
            walk(reply, path)

    for tree in _load("oasst2_filtered/oasst2_filtered.jsonl.gz"):
        walk(tree["prompt"], [])
    return out


def _gsm8k() -> list[list[dict]]:
    return [_turns(("user", r["question"]), ("assistant", r["answer"])) for r in _load("gsm8k/train.jsonl.gz")]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh() -> list[list[dict]]:
    """HH-RLHF chosen transcripts as multi-turn SFT, cut after the last assistant turn."""
    out = []
    for row in _load("hh-rlhf/harmless-base_test.jsonl.gz"):
        parts = _HH_TURN.split(row["chosen"])
        msgs = [
            {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2], strict=True)
        ]
        while msgs and msgs[-1]["role"] != "assistant":
            msgs.pop()
        if msgs and all(m["content"] for m in msgs):
            out.append(msgs)
    return out


SOURCES = {
    "alpaca": lambda: _alpaca("alpaca/alpaca_sample_2000.json.gz"),
    "lf_alpaca_en": lambda: _alpaca("llamafactory_demo/alpaca_en_demo.json.gz"),
    "lf_identity": lambda: _alpaca(
        "llamafactory_demo/identity.json.gz", {"{{name}}": "Tunelake", "{{author}}": "the tunelake team"}
    ),
    "fastchat": _fastchat,
    "oasst2": _oasst,
    "gsm8k": _gsm8k,
    "hh_chosen": _hh,
}


def _vary(messages: list[dict], k: int) -> list[dict]:
    """Variant k > 0: the first user turn gets a phrase and the variant number, so every conversation is distinct."""
    if k == 0:
        return messages
    out, done = [], False
    for m in messages:
        if not done and m["role"] == "user":
            m, done = {**m, "content": f"{m['content']} {PHRASES[k % len(PHRASES)]} (variant {k})"}, True
        out.append(m)
    return out


def generate(records: int, workdir: Path, seed: int) -> dict:
    """Write (or reuse) conversations.jsonl: one {"source", "messages"} per line; returns its description."""
    params = {"version": GEN_VERSION, "records": records, "seed": seed}
    folder = workdir / f"data-n{records}-s{seed}"
    meta_path = folder / "params.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["params"] == params and (folder / "conversations.jsonl").exists():
            return meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    base = [(name, msgs) for name, load in SOURCES.items() for msgs in load()]
    random.Random(seed).shuffle(base)
    unique = Counter(name for name, _ in base)
    used: Counter = Counter()
    turns = 0
    with open(folder / "conversations.jsonl", "wb") as out:
        for i in range(records):
            name, msgs = base[i % len(base)]
            msgs = _vary(msgs, i // len(base))
            used[name] += 1
            turns += len(msgs)
            out.write(orjson.dumps({"source": name, "messages": msgs}) + b"\n")
    meta = {
        "params": params,
        "path": str(folder / "conversations.jsonl"),
        "folder": str(folder),
        "unique": len(base),
        "unique_per_source": dict(unique),
        "records_per_source": dict(used),
        "mean_messages": turns / records,
        "bytes": (folder / "conversations.jsonl").stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def read_conversations(path: str) -> list[dict]:
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


def write_gold_parts(inputs: dict, chunk_rows: int) -> Path:
    """The conversations as gold/sft parts (canonical records, the gold SFT schema) of chunk_rows rows each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunelake.gold.project import gold_schema
    from tunelake.schema import MESSAGE_FIELDS, RECORD, Regime
    from tunelake.silver.identify import encode_lists, prompt_ids, record_ids

    folder = Path(inputs["folder"]) / f"gold-c{chunk_rows}"
    if (folder / "_done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    schema = gold_schema(Regime.sft)
    rows = []

    def flush(seq: int) -> None:
        batch = pa.RecordBatch.from_pylist(rows, schema=RECORD)
        ids = {"id": record_ids(batch, encode_lists(batch)), "prompt_id": prompt_ids(batch)}
        table = pa.Table.from_arrays([ids.get(n, batch[n]) for n in schema.names], schema=schema)
        pq.write_table(table, folder / f"part-{seq:05d}.parquet", compression="zstd")
        rows.clear()

    seq = 0
    for conv in read_conversations(inputs["path"]):
        messages = [{f: m.get(f) for f in MESSAGE_FIELDS} for m in conv["messages"]]
        rows.append(
            {
                "id": "",  # the ids are hashed per part, in flush
                "regime": Regime.sft.value,
                "source": conv["source"],
                "origin": "human",
                "license": "mixed",
                "prompt_id": "",
                "messages": messages,
            }
        )
        if len(rows) == chunk_rows:
            flush(seq)
            seq += 1
    if rows:
        flush(seq)
    (folder / "_done").touch()
    return folder


def render_for_floor(inputs: dict, tokenizer: Path, template_date: str) -> tuple[Path, dict]:
    """Every conversation rendered once with tunelake's template (what the floor encodes); not timed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunelake.gold.tokenize.masks import template_messages
    from tunelake.gold.tokenize.template import load_template
    from tunelake.schema import MESSAGE_FIELDS

    path = Path(inputs["folder"]) / f"rendered-{tokenizer.name}.parquet"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    from datetime import date

    template = load_template(tokenizer, "auto", date.fromisoformat(template_date))
    texts, failed, started = [], 0, time.perf_counter()
    for conv in read_conversations(inputs["path"]):
        messages = [{f: m.get(f) for f in MESSAGE_FIELDS} for m in conv["messages"]]
        try:
            texts.append(template.render(template_messages(messages)))
        except Exception:  # noqa: BLE001 - a template that raises: no text to encode (tunelake quarantines it)
            failed += 1
    pq.write_table(pa.table({"text": texts}), path)
    meta = {"texts": len(texts), "render_failed": failed, "seconds": round(time.perf_counter() - started, 1)}
    meta_path.write_text(json.dumps(meta))
    return path, meta


# --------------------------------------------------------------------------------------------- child modes


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (pool workers are reaped when the pool shuts down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _emit(result: dict) -> None:
    print(RESULT + json.dumps(result), flush=True)


def _floor_child(texts_path: str, tokenizer: str, chunk_rows: int) -> None:
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    texts = pq.read_table(texts_path).column("text").to_pylist()
    tok = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    tok.encode_batch(texts[:64], add_special_tokens=False)  # start the rayon pool outside the timer
    tokens = 0
    cpu, started = _cpu(), time.perf_counter()
    for i in range(0, len(texts), chunk_rows):
        for enc in tok.encode_batch(texts[i : i + chunk_rows], add_special_tokens=False):
            tokens += len(enc.ids)
    seconds = time.perf_counter() - started
    _emit({"seconds": seconds, "cpu_s": _cpu() - cpu, "records": len(texts), "tokens": tokens})


def _tunelake_child(gold_dir: str, tokenizer: str, out_root: str, workers: int, max_length: int) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tunelake.engine.local import LocalEngine
    from tunelake.gold.tokenize.pack import pack_windows, part_size
    from tunelake.gold.tokenize.stage import plan_tokenize
    from tunelake.recipe import Pack, Tokenize
    from tunelake.schema import Regime
    from tunelake.tasks import PackTask, TokenizeTask, run_pack, run_tokenize

    root = Path(out_root)
    shutil.rmtree(root, ignore_errors=True)
    cfg = Tokenize(tokenizer=Path(tokenizer), max_length=max_length, pack=Pack(enabled=True))  # recipe defaults
    plan = plan_tokenize(cfg)  # what build does before reading data: load and probe the template (not timed)
    table = plan.table(Regime.sft, "train")
    files = sorted(str(p) for p in Path(gold_dir).glob("part-*.parquet"))
    tasks = [
        TokenizeTask(root, "bench", seq, f, 0, Regime.sft, table, plan.quarantine, plan.spec, plan.settings)
        for seq, f in enumerate(files)
    ]
    examples = rejected = 0
    cpu, started = _cpu(), time.perf_counter()
    with LocalEngine(workers) as engine:
        first = None
        parts = []
        for done in engine.map(run_tokenize, tasks):
            first = first or time.perf_counter()
            examples, rejected = examples + done.examples, rejected + done.rejected
            parts += [p for p in done.parts if p.table == table]
        tokenized = time.perf_counter()
        files = [str(root / part.table / part.name) for part in parts]
        pack_tasks = [  # windows of consecutive parts, as build._pack makes them
            PackTask(root, "bench", seq, [files[i] for i in window], plan.packed_table("train"), max_length)
            for seq, window in enumerate(pack_windows([part_size(f) for f in files]))
        ]
        stats = [s for _, s in engine.map(run_pack, pack_tasks)]
        packed = time.perf_counter()
    seconds = time.perf_counter() - started
    cpu = _cpu() - cpu

    # Counted after the timer: rejects by reason, tokens and trained tokens of the tokenized examples.
    reasons: Counter = Counter()
    quarantine = root / plan.quarantine
    for f in sorted(quarantine.glob("*.parquet")) if quarantine.exists() else []:
        reasons.update(pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    tokens = trained = 0
    for f in sorted((root / table).glob("*.parquet")):
        t = pq.read_table(f, columns=["input_ids", "labels"])
        tokens += int(pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0)
        trained += int(pc.sum(pc.not_equal(pc.list_flatten(t["labels"]), -100)).as_py() or 0)
    bins, packed_tokens = sum(s.bins for s in stats), sum(s.tokens for s in stats)
    lower = -(-packed_tokens // max_length)
    _emit(
        {
            "seconds": seconds,
            "cpu_s": cpu,
            "first_result_s": (first or tokenized) - started,
            "tokenize_s": tokenized - started,
            "pack_s": packed - tokenized,
            "shutdown_s": seconds - (packed - started),
            "tasks": len(tasks),
            "pack_windows": len(pack_tasks),
            "records": examples + rejected,
            "examples": examples,
            "rejected": rejected,
            "reasons": dict(reasons.most_common()),
            "tokens": tokens,
            "trained_tokens": trained,
            "packing": {
                "bins": bins,
                "tokens": packed_tokens,
                "lower_bound": lower,
                "overhead": bins / lower - 1 if lower else 0.0,
                "efficiency": packed_tokens / (bins * max_length) if bins else 1.0,
            },
        }
    )
    shutil.rmtree(root, ignore_errors=True)


def _trl_child(conversations: str, tokenizer: str, workers: int, max_length: int, packing: str, out: str) -> None:
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    datasets.disable_caching()  # every run tokenizes: no map result is reloaded from an earlier run's cache
    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    # A tiny random model: SFTTrainer needs one, the preparation does not use it (its load is not timed).
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = Qwen2ForCausalLM(config)
    dataset = datasets.Dataset.from_list([{"messages": c["messages"]} for c in read_conversations(conversations)])

    timings: list[float] = []
    cpu_times: list[float] = []
    prepare = SFTTrainer._prepare_dataset

    def timed_prepare(self, *args, **kwargs):
        cpu, started = _cpu(), time.perf_counter()
        try:
            return prepare(self, *args, **kwargs)
        finally:
            timings.append(time.perf_counter() - started)
            cpu_times.append(_cpu() - cpu)

    SFTTrainer._prepare_dataset = timed_prepare

    def trainer(assistant_only_loss: bool) -> SFTTrainer:
        args = SFTConfig(
            output_dir=out,
            assistant_only_loss=assistant_only_loss,
            dataset_num_proc=workers,
            max_length=max_length,
            packing=packing == "on",
            report_to="none",
            use_cpu=True,
            bf16=False,
        )
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)

    note = None
    started = time.perf_counter()
    try:
        t = trainer(True)
    except ValueError as e:  # e.g. Llama-3.1: TRL has no training template (assistant masks) for it
        note = f"assistant_only_loss=True unsupported ({str(e)[:160]}); measured with assistant_only_loss=False"
        timings.clear()
        cpu_times.clear()
        started = time.perf_counter()
        t = trainer(False)
    init = time.perf_counter() - started
    ds = t.train_dataset.data.table  # counted after the timer
    tokens = int(pc.sum(pc.list_value_length(ds["input_ids"])).as_py() or 0)
    trained = int(pc.sum(pc.not_equal(pc.list_flatten(ds["labels"]), -100)).as_py() or 0)
    result = {
        "seconds": sum(timings),
        "cpu_s": sum(cpu_times),
        "trainer_init_s": init,
        "records": len(dataset),
        "rows_out": ds.num_rows,
        "tokens": tokens,
        "trained_tokens": trained,
        "packing": packing == "on",
        "assistant_only_loss": note is None,
        "training_template": t.chat_template is not None,
        "note": note,
    }
    if packing == "on":
        result["packing_stats"] = {"bins": ds.num_rows, "lower_bound": -(-tokens // max_length)}
    _emit(result)


# (label, file, function[, "own"]) of the profile's phase summary: cumulative seconds (nested rows overlap), or
# the function's own time (Arrow's Cython calls do not show in cProfile: they count as their caller's own time)
PHASES = (
    ("run_tokenize: the whole task", "tasks.py", "run_tokenize"),
    ("  read the gold part (Parquet)", "parquet/core.py", "read_table"),
    ("  tokenize_rows", "stage.py", "tokenize_rows"),
    ("    own time (to_pylist, loops, from_pydict)", "stage.py", "tokenize_rows", "own"),
    ("    render_sft (render + find spans)", "masks.py", "render_sft"),
    ("      chat template renders (all)", "template.py", "render"),
    ("      _check_prefix_stable (re-renders)", "masks.py", "_check_prefix_stable"),
    ("    encode (encode_batch + numpy)", "template.py", "encode"),
    ("      Tokenizer.encode_batch", None, "<method 'encode_batch' of 'tokenizers.Tokenizer' objects>"),
    ("    sft_labels (masks + audits)", "masks.py", "sft_labels"),
    ("      audit (b): decode", "template.py", "decode"),
    ("      _token_spans", "masks.py", "_token_spans"),
    ("      special-token check: np.isin", None, "isin"),
    ("      audit (a): _covered", "masks.py", "_covered"),
    ("    fit_length", "masks.py", "fit_length"),
    ("  write_part (Parquet, zstd)", "parts.py", "write_part"),
)


def _profile_child(gold_file: str, tokenizer: str, max_length: int, top: int) -> None:
    """cProfile of run_tokenize (read part, tokenize_rows, write part) on one gold part, as a worker runs it, after
    a warm-up (template probe, tokenizer load). The parent sets RAYON_NUM_THREADS=1: CPU time = wall time."""
    import cProfile
    import pstats
    import tempfile

    import pyarrow.parquet as pq

    from tunelake.gold.tokenize.stage import plan_tokenize, tokenize_rows
    from tunelake.recipe import Tokenize
    from tunelake.schema import Regime
    from tunelake.tasks import TokenizeTask, run_tokenize

    plan = plan_tokenize(Tokenize(tokenizer=Path(tokenizer), max_length=max_length))
    table = pq.read_table(gold_file)
    tokenize_rows(table.slice(0, 64), Regime.sft, plan.spec, plan.settings)
    with tempfile.TemporaryDirectory() as tmp:
        task = TokenizeTask(
            Path(tmp),
            "p",
            0,
            gold_file,
            0,
            Regime.sft,
            plan.table(Regime.sft, "train"),
            plan.quarantine,
            plan.spec,
            plan.settings,
        )
        started = time.perf_counter()
        run_tokenize(task)
        plain = time.perf_counter() - started
        prof = cProfile.Profile()
        prof.enable()
        run_tokenize(task)
        prof.disable()
    n = table.num_rows
    print(
        f"run_tokenize on one gold part of {n:,} rows, one process, 1 rayon thread: {plain:.2f} s without the "
        f"profiler ({n / plain:,.0f} records/s, {plain / n * 1e6:,.0f} us per record)"
    )
    stats = pstats.Stats(prof)
    total = max(v[3] for (_, _, func), v in stats.stats.items() if func == "run_tokenize")
    print(f"\n{'phase (cumulative, under the profiler)':44} {'s':>7} {'share':>6} {'us/record':>10}")
    for label, file, func, *own in PHASES:
        col = 2 if own else 3
        ct = sum(v[col] for (f, _, fn), v in stats.stats.items() if fn == func and (file is None or f.endswith(file)))
        print(f"{label:44} {ct:7.3f} {ct / total:6.1%} {ct / n * 1e6:10,.0f}")
    for key in ("tottime", "cumulative"):
        print(f"\n--- top {top} by {key} ---")
        stats.strip_dirs().sort_stats(key).print_stats(top)


# --------------------------------------------------------------------------------------------- parent


def _result(m) -> dict:
    lines = [line for line in m.log.read_text(errors="replace").splitlines() if line.startswith(RESULT)]
    if m.returncode != 0 or not lines:
        tail = m.log.read_text(errors="replace")[-3000:]
        sys.exit(f"child failed (exit {m.returncode}); end of {m.log}:\n{tail}")
    return json.loads(lines[-1][len(RESULT) :])


def snapshot_src(workdir: Path) -> tuple[Path, str]:
    """A copy of src/tunelake, named by a hash of its files, that every child imports: the tree may be edited
    while a benchmark runs, and all runs must measure the same code."""
    src = ROOT / "src" / "tunelake"
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    digest = h.hexdigest()[:12]
    dest = workdir / f"src-{digest}"
    if not (dest / "_done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest / "tunelake", ignore=shutil.ignore_patterns("__pycache__"))
        (dest / "_done").touch()
    return dest, digest


def run_side(name: str, args: list[str], workdir: Path, run: int, env: dict) -> dict:
    load = os.getloadavg()[0]
    m = ingest.run_measured([sys.executable, __file__, *args], workdir / f"{name}-{run}.log", env=env)
    out = _result(m)
    out.update(process_wall_s=m.wall, max_proc_mb=m.max_proc_mb, tree_mb=m.tree_mb, load_avg_1m_before=load)
    return out


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(sides: dict[str, list[dict]], inputs: dict, args) -> dict:
    med = statistics.median
    n = inputs["params"]["records"]
    summary = {}
    for name, runs in sides.items():
        secs = med(r["seconds"] for r in runs)
        tokens = runs[0]["tokens"]
        summary[name] = {
            "seconds": secs,
            "records_per_s": runs[0]["records"] / secs,
            "tokens": tokens,
            "tokens_per_s": tokens / secs,
            "records": runs[0]["records"],
            "trained_tokens": runs[0].get("trained_tokens"),
            "max_proc_mb": med(r["max_proc_mb"] for r in runs),
            "tree_mb": med(r["tree_mb"] for r in runs),
            "cpu_s": med(r["cpu_s"] for r in runs),
            "all_seconds": [r["seconds"] for r in runs],
            "all_cpu_s": [r["cpu_s"] for r in runs],
        }
    labels = {
        "floor": f"floor: encode_batch ({args.workers} rayon thr)",
        "tunelake": f"tunelake tokenize+pack ({args.workers} proc)",
        "trl": f"TRL _prepare_dataset ({args.workers} proc)",
        "trl_packed": f"TRL ... packing=bfd ({args.workers} proc)",
    }
    print(
        f"\ninput: {n:,} conversations ({inputs['unique']:,} distinct real ones, "
        f"{inputs['mean_messages']:.2f} messages each on average), tokenizer {args.tokenizer.name}, "
        f"max_length {args.max_length}, chunks of {args.chunk_rows:,} records"
    )
    print(
        f"runs: {len(next(iter(sides.values())))}, medians; timed seconds exclude interpreter start, imports, "
        "data and model loading\n"
    )
    head = (
        f"{'':42} {'wall s':>8} {'records/s':>10} {'tokens/s':>11} {'tokens':>12} {'trained tok':>12} "
        f"{'cpu s':>7} {'max proc MiB':>13} {'tree MiB':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, s in summary.items():
        trained = f"{s['trained_tokens']:,}" if s["trained_tokens"] is not None else "-"
        print(
            f"{labels[name]:42} {s['seconds']:8.2f} {_fmt(s['records_per_s']):>10} {_fmt(s['tokens_per_s']):>11} "
            f"{s['tokens']:12,} {trained:>12} {s['cpu_s']:7.1f} {s['max_proc_mb']:13,.0f} {s['tree_mb']:9,.0f}"
        )
    tl = summary["tunelake"]
    ratios = {}
    for name in ("trl", "trl_packed", "floor"):
        if name in summary:
            ratios[f"tunelake/{name}"] = {
                "records_per_s": tl["records_per_s"] / summary[name]["records_per_s"],
                "tokens_per_s": tl["tokens_per_s"] / summary[name]["tokens_per_s"],
                # CPU seconds per record, theirs / ours: what the ratio would be on an otherwise idle machine
                # if both used their cores fully (less sensitive to other load than wall time)
                "cpu_efficiency": (summary[name]["cpu_s"] / summary[name]["records"]) / (tl["cpu_s"] / tl["records"]),
            }
    print()
    for key, r in ratios.items():
        goal = ""
        if key.startswith("tunelake/trl") and not sides[key.split("/")[1]][0]["assistant_only_loss"]:
            goal = "  (goal n/a: TRL ran without assistant masks, see the note below)"
        elif key.startswith("tunelake/trl"):
            goal = f"  (goal >= 2.0: {'met' if r['records_per_s'] >= 2 else 'NOT met'})"
        print(
            f"ratio {key:22} records/s {r['records_per_s']:6.2f}   tokens/s {r['tokens_per_s']:6.2f}   "
            f"CPU-s per record (theirs/ours) {r['cpu_efficiency']:6.2f}{goal}"
        )

    t0 = sides["tunelake"][0]
    pk = t0["packing"]
    med_tl = {k: med(r[k] for r in sides["tunelake"]) for k in ("first_result_s", "tokenize_s", "pack_s")}
    print(
        f"\ntunelake: {t0['examples']:,} examples, {t0['rejected']:,} rejected {t0['reasons'] or ''}; "
        f"{t0['tasks']} tokenize tasks, {t0['pack_windows']} pack window(s)"
    )
    print(
        f"  phases (median s): first task back {med_tl['first_result_s']:.2f} (includes spawning the pool), "
        f"tokenize {med_tl['tokenize_s']:.2f}, pack {med_tl['pack_s']:.2f}"
    )
    print(
        f"  packing: {pk['bins']:,} rows of <= {args.max_length} for {pk['tokens']:,} tokens; lower bound "
        f"ceil(tokens/max_length) = {pk['lower_bound']:,}; overhead {pk['overhead']:.3%}, "
        f"efficiency {pk['efficiency']:.3%}"
    )
    for name in ("trl", "trl_packed"):
        if name in sides:
            r = sides[name][0]
            extra = ""
            if r.get("packing_stats"):
                ps = r["packing_stats"]
                extra = f"; {ps['bins']:,} packed rows, lower bound {ps['lower_bound']:,}"
            print(
                f"{name}: {r['rows_out']:,} rows out, assistant_only_loss={r['assistant_only_loss']}, "
                f"TRL training template: {r['training_template']}, trainer init {r['trainer_init_s']:.1f} s{extra}"
                + (f"\n  NOTE: {r['note']}" if r["note"] else "")
            )
    return {"summary": summary, "ratios": ratios, "runs": sides}


def profile(gold_dir: Path, args, workdir: Path, env: dict) -> None:
    first = sorted(gold_dir.glob("part-*.parquet"))[0]
    cmd = ["_profile", str(first), str(args.tokenizer), str(args.max_length), str(args.top)]
    env = {**env, "RAYON_NUM_THREADS": "1"}
    m = ingest.run_measured([sys.executable, __file__, *cmd], workdir / "profile.log", env=env)
    if m.returncode:
        sys.exit(f"profile failed; see {m.log}")
    print(f"\nprofile ({m.log}):\n" + m.log.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, help="conversations (default 100,000; 10,000 with --quick)")
    ap.add_argument("--runs", type=int, help="measured runs of each side (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run")
    ap.add_argument(
        "--tokenizer",
        default="qwen2.5-instruct",
        help="folder, or a name under shared/data/tokenizers (qwen2.5-instruct, llama-3.1-instruct)",
    )
    ap.add_argument("--workers", type=int, default=2, help="processes (tunelake, TRL) and rayon threads (floor)")
    ap.add_argument("--chunk-rows", type=int, default=2048, help="records per gold part (one tokenize task)")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument(
        "--trl-packing",
        choices=("off", "on", "both"),
        default="off",
        help="TRL's packing: off is its default; on = packing=True (bfd) at --max-length",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tunelake-bench-tokenize"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--template-date", default="2024-07-26", help="the recipe default gold.tokenize.template_date")
    ap.add_argument("--profile", action="store_true", help="also cProfile tokenize_rows on one chunk")
    ap.add_argument("--profile-only", action="store_true", help="only generate the input and profile")
    ap.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    ap.add_argument("--live-src", action="store_true", help="import the working tree, not a snapshot of src/")
    args = ap.parse_args()
    records = args.records or (10_000 if args.quick else 100_000)
    runs = args.runs or (1 if args.quick else 3)
    tok = Path(args.tokenizer)
    args.tokenizer = (tok if tok.exists() else DATA / "tokenizers" / args.tokenizer).resolve()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    code = "live src/ (may change between runs)"
    if not args.live_src:
        snapshot, digest = snapshot_src(workdir)
        sys.path.insert(0, str(snapshot))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(snapshot), os.environ.get("PYTHONPATH")) if p)
        code = f"snapshot {digest} of src/tunelake ({snapshot})"
    print(f"tunelake code: {code}")

    inputs = generate(records, workdir, args.seed)
    gold_dir = write_gold_parts(inputs, args.chunk_rows)
    print(f"input: {inputs['path']} ({inputs['unique']:,} distinct conversations: {inputs['unique_per_source']})")
    if args.profile_only:
        profile(gold_dir, args, workdir, env)
        return
    texts, rendered = render_for_floor(inputs, args.tokenizer, args.template_date)
    if rendered["render_failed"]:
        print(f"floor: {rendered['render_failed']:,} conversations the template cannot render are not encoded")
    host = ingest.environment()
    host["tunelake_code"] = code
    import datasets
    import tokenizers
    import transformers
    import trl

    host.update(
        trl=trl.__version__,
        transformers=transformers.__version__,
        tokenizers=tokenizers.__version__,
        datasets=datasets.__version__,
    )
    trl_modes = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.trl_packing]
    floor_env = {**env, "RAYON_NUM_THREADS": str(args.workers)}
    sides: dict[str, list[dict]] = {"floor": [], "tunelake": []}
    for run in range(runs):  # the sides alternate, so drift in the machine hits all alike
        sides["floor"].append(
            run_side(
                "floor", ["_floor", str(texts), str(args.tokenizer), str(args.chunk_rows)], workdir, run, floor_env
            )
        )
        print(f"run {run + 1}/{runs}: floor {sides['floor'][-1]['seconds']:.2f} s", end="", flush=True)
        sides["tunelake"].append(
            run_side(
                "tunelake",
                [
                    "_tunelake",
                    str(gold_dir),
                    str(args.tokenizer),
                    str(workdir / "lake"),
                    str(args.workers),
                    str(args.max_length),
                ],
                workdir,
                run,
                env,
            )
        )
        print(f", tunelake {sides['tunelake'][-1]['seconds']:.2f} s", end="", flush=True)
        for mode in trl_modes:
            name = "trl" if mode == "off" else "trl_packed"
            cmd = [
                "_trl",
                inputs["path"],
                str(args.tokenizer),
                str(args.workers),
                str(args.max_length),
                mode,
                str(workdir / "trl-out"),
            ]
            sides.setdefault(name, []).append(run_side(name, cmd, workdir, run, env))
            print(f", {name} {sides[name][-1]['seconds']:.2f} s", end="", flush=True)
        print(f"  (load avg before the run: {sides['floor'][-1]['load_avg_1m_before']:.2f})", flush=True)
    results = report(sides, inputs, args)
    results.update(
        input={k: inputs[k] for k in ("params", "unique", "unique_per_source", "records_per_source", "mean_messages")},
        settings={
            "tokenizer": str(args.tokenizer),
            "workers": args.workers,
            "chunk_rows": args.chunk_rows,
            "max_length": args.max_length,
            "trl_packing": args.trl_packing,
        },
        environment=host,
    )
    busy = host["load_avg_1m"] > 0.5
    print(f"environment at start: {host}" + ("  (busy machine: timings are noisy)" if busy else ""))
    out = workdir / f"results-{args.tokenizer.name}-n{records}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    if args.profile:
        profile(gold_dir, args, workdir, env)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "_floor":
        _floor_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "_tunelake":
        _tunelake_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif mode == "_trl":
        _trl_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7])
    elif mode == "_profile":
        _profile_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
