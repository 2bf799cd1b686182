"""Ingest benchmark: `tunelake build` from raw to gold on >= 1M records, beside its floors and datatrove.

Sides, each measured in the same run on the same files, alternating run by run:

- the layout floor (`--layout-floor`): the writes a build makes (parse, then bronze, silver and gold as zstd
  Parquet and both exports) with no logic between them, on a pool of as many processes as the build. The headline
  ratio is build / layout floor records/s; project target >= 0.6.
- datatrove (when it is installed: `pip install datatrove`; it is not a tunelake dependency), 2 tasks on 2
  workers, start_method "fork" (its default forkserver respawned workers in a loop here), in two pipelines:
  JsonlReader -> ExactDedupSignature, then ExactFindDedups, then JsonlReader -> ExactDedupFilter -> ParquetWriter
  (three LocalPipelineExecutor stages in sequence sharing a folder), and JsonlReader -> LambdaFilter (keeps every
  document with text) -> ParquetWriter. The bench rows have no `text` field, so the reader's adapter makes each
  row's serialized JSON the Document's text: datatrove dedups and writes whole rows. It does less than a build (no
  canonical schema, no quarantine, no ledger, no splits, no gold, no exports), so this is the part of the job it
  has. Project target: a build at least 4x datatrove with exact dedup. datatrove shards by file (task r reads
  files r, r+2, ...), so with three input files one task reads two of them.
- pyarrow's streaming JSONL -> Parquet copy of the same files (the I/O floor, no processing), for information.

Peak memory of a build must stay under 1 GiB however large the input.

Input is generated deterministically from the real samples in shared/data and written once per parameter set
under --workdir. `--corpus mixed` (default): HH-RLHF harmless test (preference), the alpaca sample (SFT) and
GSM8K train (RL), each row repeated with a varied prompt so records are distinct, plus a share of exact
duplicates. `--corpus long`: longer multi-turn SFT conversations, several KB each: OASST2 root-to-assistant
paths, three joined into one `messages` conversation, and eight HH-RLHF chosen transcripts split into turns and
joined into one ShareGPT `conversations` list.

    python bench/ingest.py --quick                 # 100k records, 1 run: a smoke run
    python bench/ingest.py                         # 1M records, median of 3 runs
    python bench/ingest.py --corpus long           # the long multi-turn corpus
    python bench/ingest.py --incremental           # also a no-op rebuild and a rebuild after adding 5% records
    python bench/ingest.py --scale-check           # also a build at N/4: peak memory must stay flat
    python bench/ingest.py --layout-floor          # also the writes a build makes, with no logic between them
    python bench/ingest.py --no-datatrove          # skip the datatrove sides even when it is installed
    python bench/ingest.py --quick --profile       # cProfile of one build with engine.workers=1

`CPU s` is the user + system time of the measured process and every process it reaped (the pool's workers).
Peak memory is given three ways: `max proc` is the largest single process (os.wait4 on the child, which folds in
every worker it reaped), `tree` is the largest sum of RSS over the child and its workers, sampled every 50 ms
(what the machine must hold), and `manifest` is the build's own `peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
GEN_VERSION = 1  # bump when the generated content changes, so old work dirs are not reused

# Endings appended to the user prompt; with the variant number they make every generated record distinct.
PHRASES = (
    "Please keep it short.",
    "Explain your reasoning.",
    "Answer in plain English.",
    "Be as precise as you can.",
    "I need this for a class.",
    "Assume I am a beginner.",
    "Give one example.",
    "Thanks in advance!",
)


def _vary_text(text: str, k: int) -> str:
    return f"{text} {PHRASES[k % len(PHRASES)]} (variant {k})"


def _vary_hh(row: dict, k: int) -> dict:
    """The phrase goes at the end of the first human turn, in both transcripts, so the pair keeps its shared prompt."""
    out = dict(row)
    for side in ("chosen", "rejected"):
        text = row[side]
        cut = text.find("\n\nAssistant:")
        cut = len(text) if cut < 0 else cut
        out[side] = _vary_text(text[:cut], k) + text[cut:]
    return out


def _vary_field(name: str):
    def vary(row: dict, k: int) -> dict:
        return {**row, name: _vary_text(row[name], k)}

    return vary


def _vary_first_turn(field: str, text: str):
    """For conversation rows: the phrase goes at the end of the first turn (a user turn in these corpora)."""

    def vary(row: dict, k: int) -> dict:
        turns = list(row[field])
        turns[0] = {**turns[0], text: _vary_text(turns[0][text], k)}
        return {**row, field: turns}

    return vary


def _same_rows(rows: list[dict]) -> list[dict]:
    return rows


def _oasst2_conversations(trees: list[dict], joined: int = 3) -> list[dict]:
    """OASST2 trees -> `messages` conversations: every root-to-assistant path (cut after its last assistant turn),
    `joined` consecutive paths concatenated into one conversation (still alternating user / assistant)."""
    paths = []

    def walk(node: dict, before: list[dict]) -> None:
        path = [*before, {"role": "user" if node["role"] == "prompter" else "assistant", "content": node["text"]}]
        replies = node.get("replies") or []
        if not replies and len(path) >= 2:
            paths.append(path if path[-1]["role"] == "assistant" else path[:-1])
        for reply in replies:
            walk(reply, path)

    for tree in trees:
        walk(tree["prompt"], [])
    return [
        {"messages": [turn for j in range(joined) for turn in paths[(i + j) % len(paths)]]} for i in range(len(paths))
    ]


def _hh_conversations(rows: list[dict], joined: int = 8) -> list[dict]:
    """HH-RLHF rows -> ShareGPT `conversations`: each chosen transcript split at its Human: / Assistant: markers,
    `joined` consecutive transcripts concatenated into one conversation of many turns."""
    transcripts = []
    for row in rows:
        turns = []
        for piece in row["chosen"].split("\n\nHuman: ")[1:]:
            human, _, assistant = piece.partition("\n\nAssistant: ")
            turns += [{"from": "human", "value": human.strip()}, {"from": "gpt", "value": assistant.strip()}]
        if turns and all(t["value"] for t in turns):
            transcripts.append(turns)
    n = len(transcripts)
    return [{"conversations": [t for j in range(joined) for t in transcripts[(i + j) % n]]} for i in range(n)]


@dataclass(frozen=True)
class Spec:
    name: str
    path: str  # under shared/data
    share: float  # of the generated records
    license: str
    origin: str
    vary: object
    shape: object = _same_rows  # the sample file's rows -> the base rows that get varied


CORPORA = {
    "mixed": (
        Spec("hh_harmless", "hh-rlhf/harmless-base_test.jsonl.gz", 0.35, "mit", "human", _vary_hh),
        Spec(
            "alpaca",
            "alpaca/alpaca_sample_2000.json.gz",
            0.35,
            "cc-by-nc-4.0",
            "distilled",
            _vary_field("instruction"),
        ),
        Spec("gsm8k", "gsm8k/train.jsonl.gz", 0.30, "mit", "human", _vary_field("question")),
    ),
    "long": (
        Spec(
            "oasst2_multi",
            "oasst2_filtered/oasst2_filtered.jsonl.gz",
            0.5,
            "apache-2.0",
            "human",
            _vary_first_turn("messages", "content"),
            _oasst2_conversations,
        ),
        Spec(
            "hh_multi",
            "hh-rlhf/harmless-base_test.jsonl.gz",
            0.5,
            "mit",
            "human",
            _vary_first_turn("conversations", "value"),
            _hh_conversations,
        ),
    ),
}


def _load_rows(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes())
    if raw.lstrip()[:1] == b"[":
        return orjson.loads(raw)
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- input generation


def generate(records: int, workdir: Path, seed: int, dup_rate: float, gz: bool, corpus: str) -> dict:
    """Write (or reuse) the input files; returns their description (also kept as params.json beside them)."""
    params = {
        "version": GEN_VERSION,
        "corpus": corpus,
        "records": records,
        "seed": seed,
        "dup_rate": dup_rate,
        "gzip": gz,
    }
    folder = workdir / f"data-{corpus}-n{records}-s{seed}-d{dup_rate:g}{'-gz' if gz else ''}"
    meta_path = folder / "params.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["params"] == params and all(Path(f["path"]).exists() for f in meta["files"]):
            return meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    specs = CORPORA[corpus]
    counts = [round(records * s.share) for s in specs]
    counts[-1] = records - sum(counts[:-1])
    files = []
    for index, (spec, n) in enumerate(zip(specs, counts, strict=True)):
        rng = random.Random(f"{seed}:{spec.name}")
        base = spec.shape(_load_rows(DATA / spec.path))
        rng.shuffle(base)
        path = folder / f"{spec.name}.jsonl{'.gz' if gz else ''}"
        variants = 0
        with gzip.open(path, "wb", compresslevel=6) if gz else open(path, "wb", buffering=1 << 20) as out:
            for i in range(n):
                if i and rng.random() < dup_rate:
                    k = rng.randrange(variants)  # an exact copy of a record written before
                else:
                    k, variants = variants, variants + 1
                out.write(orjson.dumps(spec.vary(base[k % len(base)], k)) + b"\n")
        files.append(
            {
                "source": spec.name,
                "path": str(path),
                "records": n,
                "unique": variants,
                "duplicates": n - variants,
                "bytes": path.stat().st_size,
                "license": spec.license,
                "origin": spec.origin,
                "index": index,
            }
        )
    meta = {"params": params, "files": files, "seconds": round(time.perf_counter() - started, 1)}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def write_recipe(path: Path, inputs: dict, lake: Path, workers: int) -> Path:
    lines = [f"lake: {lake}", "sources:"]
    for f in inputs["files"]:
        lines += [
            f"  - name: {f['source']}",
            f"    path: {f['path']}",
            "    format: auto",
            f"    license: {f['license']}",
            f"    origin: {f['origin']}",
        ]
    lines += [
        "gold:",
        "  split: {validation: 0.02, test: 0.02, seed: 0}",
        "  export: [jsonl, parquet]",
        "engine:",
        f"  workers: {workers}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------- measuring


def _tree_rss(root: int) -> int:
    """Sum of RSS (bytes) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is the ppid
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # fields[21] is rss, in pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


@dataclass
class Measured:
    wall: float
    returncode: int
    max_proc_mb: float  # largest single process: the child, or any descendant it reaped
    tree_mb: float  # largest sampled sum over the child and its descendants
    cpu_s: float  # user + system CPU seconds of the child and every descendant it reaped
    log: Path
    extra: dict = field(default_factory=dict)


def run_measured(cmd: list[str], log: Path, env: dict | None = None) -> Measured:
    """Run cmd to completion, with its wall time and peak memory (see the module docstring)."""
    peak = [0]
    done = threading.Event()
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(wall, proc.returncode, usage.ru_maxrss / 1024, peak[0] / 2**20, cpu, log)


def _check(m: Measured, what: str) -> None:
    if m.returncode != 0:
        tail = m.log.read_text(errors="replace")[-3000:]
        sys.exit(f"{what} failed (exit {m.returncode}); end of {m.log}:\n{tail}")


def run_baseline(inputs: dict, workdir: Path, run: int) -> Measured:
    out = workdir / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "_baseline", str(out), *(f["path"] for f in inputs["files"])]
    m = run_measured(cmd, workdir / f"baseline-{run}.log")
    _check(m, "pyarrow baseline")
    m.extra = json.loads(m.log.read_text().strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return m


def _tunelake_cmd(recipe: Path) -> list[str]:
    exe = shutil.which("tunelake")
    return [exe, "build", str(recipe)] if exe else [sys.executable, __file__, "_build", str(recipe)]


def run_tunelake(inputs: dict, workdir: Path, workers: int, tag: str) -> Measured:
    lake = workdir / "lake"
    shutil.rmtree(lake, ignore_errors=True)  # a fresh lake each run
    recipe = write_recipe(workdir / "recipe.yaml", inputs, lake, workers)
    m = run_measured(_tunelake_cmd(recipe), workdir / f"tunelake-{tag}.log")
    _check(m, "tunelake build")
    manifest = json.loads(max((lake / "manifests").glob("*.json")).read_text())
    m.extra = {
        "stages": manifest["passes"],
        "counts": manifest["counts"],
        "gold": manifest["gold"],
        "peak_rss_mb": manifest["peak_rss_mb"],
    }
    shutil.rmtree(lake, ignore_errors=True)
    return m


def run_incremental(inputs: dict, workdir: Path, workers: int, runs: int, args) -> dict:
    """Per run: a full build into a fresh lake, a no-op rebuild of it, and a rebuild after adding 5% new records
    (a second generation of the corpus, with another seed, as extra sources). Targets: the no-op rebuild at most
    10% of the full build's wall time, the 5% rebuild at most 15%."""
    records = sum(f["records"] for f in inputs["files"])
    more = generate(records // 20, workdir, args.seed + 1, args.dup_rate, args.gzip, args.corpus)
    grown = {"files": inputs["files"] + [{**f, "source": f"{f['source']}_new"} for f in more["files"]]}
    lake = workdir / "lake-incremental"
    walls: dict[str, list[float]] = {"full": [], "no-op": [], "+5%": []}
    passes: list[dict] = []  # the +5% rebuild's passes, per run
    for run in range(runs):
        shutil.rmtree(lake, ignore_errors=True)
        for name, which in (("full", inputs), ("no-op", inputs), ("+5%", grown)):
            recipe = write_recipe(workdir / "recipe-incremental.yaml", which, lake, workers)
            m = run_measured(_tunelake_cmd(recipe), workdir / f"incremental-{name}-{run}.log")
            _check(m, f"tunelake build ({name})")
            walls[name].append(m.wall)
        passes.append(json.loads(max((lake / "manifests").glob("*.json")).read_text())["passes"])
        print(f"incremental run {run + 1}/{runs}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()))
    shutil.rmtree(lake, ignore_errors=True)
    full = statistics.median(walls["full"])
    summary = {k: {"wall_s": statistics.median(v), "of_full": statistics.median(v) / full} for k, v in walls.items()}
    print(f"\nincremental ({records:,} records, +{records // 20:,}): medians of {runs}")
    for name, targets in (("full", None), ("no-op", 0.10), ("+5%", 0.15)):
        line = f"  {name:<6} {summary[name]['wall_s']:8.2f} s"
        if targets is not None:
            line += f"   {summary[name]['of_full']:.3f} of the full build (target <= {targets})"
        print(line)
    # Where the +5% rebuild goes: the exports are whole files per split, rewritten by every build that changes gold.
    summary["+5% passes"] = {k: statistics.median(p[k]["seconds"] for p in passes) for k in passes[0]}
    print(
        "  +5% rebuild's passes (median s, share of the full build): "
        + ", ".join(f"{k} {v:.2f} ({v / full:.3f})" for k, v in summary["+5% passes"].items())
    )
    return summary


# --------------------------------------------------------------------------------------------- child modes


def _baseline_child(out_dir: str, paths: list[str]) -> None:
    """Copy each JSONL file to Parquet (zstd) with pyarrow, streaming when it can; prints one JSON line."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    def stream(path: str, dest: Path, parse_options=None) -> int:
        reader = pj.open_json(path, parse_options=parse_options)
        rows = 0
        with pq.ParquetWriter(dest, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows

    started = time.perf_counter()
    rows, modes = 0, {}
    for path in paths:
        dest = Path(out_dir) / (Path(path).name.split(".")[0] + ".parquet")
        try:
            rows += stream(path, dest)
            modes[path] = "open_json"
            continue
        except pa.ArrowInvalid as e:  # the schema inferred from the first block may not fit a later one
            first_error = str(e)
        try:
            with pj.open_json(path) as probe:  # types of the first block, every column nullable
                schema = probe.schema
            options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
            rows += stream(path, dest, options)
            modes[path] = f"open_json with explicit schema (inference failed: {first_error[:120]})"
        except pa.ArrowInvalid as e:
            table = pj.read_json(path)
            pq.write_table(table, dest, compression="zstd")
            rows += table.num_rows
            modes[path] = f"read_json, not streaming (open_json failed: {str(e)[:120]})"
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "modes": modes}))


def run_layout(inputs: dict, workdir: Path, run: int, workers: int) -> Measured:
    out = workdir / "layout"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        __file__,
        "_layout",
        str(out),
        str(workers or os.cpu_count()),
        *(f["path"] for f in inputs["files"]),
    ]
    m = run_measured(cmd, workdir / f"layout-{run}.log")
    _check(m, "layout floor")
    shutil.rmtree(out, ignore_errors=True)
    return m


def _layout_chunk(task: tuple[str, str, bytes]) -> int:
    """One 8 MiB chunk (the build's default) through the writes a build must make, and no logic: parse it, write
    bronze (the raw lines), silver and gold (the parsed rows, each once), and the Parquet and JSONL exports."""
    import io

    import duckdb
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    pa.set_cpu_count(1)
    out, name, data = task
    rows = pj.read_json(io.BytesIO(data), pj.ReadOptions(use_threads=False, block_size=len(data) + 1))
    raw = pa.table({"raw": pa.array(data.split(b"\n")[:-1], pa.large_binary())})
    # The build's Parquet settings (engine/parts.py), without its dictionary-encoded columns.
    settings = {"compression": "zstd", "use_dictionary": False, "data_page_version": "2.0"}
    pq.write_table(raw, f"{out}/bronze-{name}.parquet", **settings)
    for table in ("silver", "gold"):
        pq.write_table(rows, f"{out}/{table}-{name}.parquet", **settings)
    con = duckdb.connect(config={"threads": 1})
    con.register("t", rows)
    con.execute(f"copy t to '{out}/export-{name}.parquet' (format parquet, compression zstd, row_group_size 16384)")
    con.execute(f"copy t to '{out}/export-{name}.jsonl' (format json)")
    return rows.num_rows


def _layout_child(out_dir: str, workers: int, paths: list[str]) -> None:
    """The layout floor: chunks of the input through _layout_chunk on a spawned pool of `workers` processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    def chunks(index: int, path: str):
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            rest, seq = b"", 0
            while block := f.read(8 << 20):
                block = rest + block
                cut = block.rfind(b"\n") + 1
                block, rest = block[:cut], block[cut:]
                yield out_dir, f"{index}-{seq}", block
                seq += 1
            if rest:
                yield out_dir, f"{index}-{seq}", rest + b"\n"

    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        tasks = (task for i, path in enumerate(paths) for task in chunks(i, path))
        rows = sum(pool.map(_layout_chunk, tasks))
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))


DATATROVE_SIDES = {"dedup": "datatrove exact dedup", "filter": "datatrove read -> filter -> write"}


def datatrove_installed() -> bool:
    return importlib.util.find_spec("datatrove") is not None


def run_datatrove(inputs: dict, workdir: Path, run: int, pipeline: str) -> Measured:
    out = workdir / f"datatrove-{pipeline}"
    shutil.rmtree(out, ignore_errors=True)  # datatrove skips tasks its logging folder marks as done
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "_datatrove", pipeline, str(out), *(f["path"] for f in inputs["files"])]
    m = run_measured(cmd, workdir / f"datatrove-{pipeline}-{run}.log")
    _check(m, f"datatrove {pipeline}")
    m.extra = json.loads(m.log.read_text().strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return m


def _row_as_document(self, data: dict, path: str, id_in_file: int | str) -> dict:
    """JsonlReader's adapter: the row's serialized JSON is the Document's text (the rows have no `text` field)."""
    return {"text": orjson.dumps(data).decode(), "id": f"{path}/{id_in_file}", "metadata": {}}


def _document_bytes(doc) -> bytes:  # what exact dedup hashes (datatrove's xxhash takes bytes)
    return doc.text.encode()


def _has_text(doc) -> bool:
    return bool(doc.text)


def _datatrove_child(pipeline: str, out_dir: str, paths: list[str]) -> None:
    """datatrove's pipeline `pipeline` ("dedup" or "filter", see the module docstring) over `paths`, 2 tasks on 2
    forked workers; prints one JSON line with the rows it wrote."""
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter

    out = Path(out_dir)
    folder = Path(paths[0]).parent
    listing = out / "paths.txt"  # the reader takes files by name under one folder: these files, in this order
    listing.write_text("".join(Path(p).name + "\n" for p in paths))

    def executor(name: str, steps: list) -> LocalPipelineExecutor:
        return LocalPipelineExecutor(
            steps, tasks=2, workers=2, start_method="fork", logging_dir=str(out / "logs" / name)
        )

    def reader() -> JsonlReader:
        return JsonlReader(str(folder), paths_file=str(listing), adapter=_row_as_document)

    writer = ParquetWriter(str(out / "parquet"), compression="zstd")
    if pipeline == "dedup":
        config = ExactDedupConfig(content_getter=_document_bytes)
        sigs, dups = str(out / "signatures"), str(out / "duplicates")
        stages = {
            "signature": [reader(), ExactDedupSignature(sigs, config, finder_workers=2)],
            "find": [ExactFindDedups(sigs, dups, config)],
            "filter": [reader(), ExactDedupFilter(dups, config), writer],
        }
    else:
        stages = {"filter": [reader(), LambdaFilter(_has_text), writer]}
    seconds = {}
    for name, steps in stages.items():  # in sequence: each stage reads the folder the one before wrote
        started = time.perf_counter()
        executor(name, steps).run()
        seconds[name] = round(time.perf_counter() - started, 2)
    rows = sum(pq.read_metadata(f).num_rows for f in (out / "parquet").glob("*.parquet"))
    print(json.dumps({"rows": rows, "stages": seconds}))


def _build_child(recipe: str) -> None:
    from tunelake.build import build
    from tunelake.recipe import load_recipe

    cfg, sha = load_recipe(recipe)
    build(cfg, sha)


# --------------------------------------------------------------------------------------------- report


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def environment() -> dict:
    """What the figures depend on: the code measured, the machine, and how busy it was."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout
    import pyarrow

    return {
        "commit": commit + ("+dirty src" if dirty.strip() else ""),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "pyarrow": pyarrow.__version__,
    }


LABELS = {
    "baseline": "pyarrow open_json -> parquet",
    "tunelake": "tunelake build",
    "layout": "layout floor: writes, no logic",
    **{f"datatrove_{k}": v for k, v in DATATROVE_SIDES.items()},
}


def _summary(ms: list[Measured], n: int) -> dict:
    """One side's medians over its runs."""
    med = statistics.median
    wall = med(m.wall for m in ms)
    return {
        "wall_s": wall,
        "records_per_s": n / wall,
        "cpu_s": med(m.cpu_s for m in ms),
        "max_proc_mb": med(m.max_proc_mb for m in ms),
        "tree_mb": med(m.tree_mb for m in ms),
        "all_walls": [m.wall for m in ms],
    }


def report(inputs: dict, sides: dict[str, list[Measured]]) -> dict:
    """Prints the table and the ratios; `sides` maps a LABELS key to its runs (sides not measured are absent)."""
    n = inputs["params"]["records"]
    size = sum(f["bytes"] for f in inputs["files"])
    med = statistics.median
    summary = {name: _summary(ms, n) for name, ms in sides.items()}
    tl, base = summary["tunelake"], summary["baseline"]
    tl["manifest_peak_rss_mb"] = med(m.extra["peak_rss_mb"] for m in sides["tunelake"])
    parts = ", ".join(f"{f['source']} {f['records']:,} ({f['duplicates']:,} dup)" for f in inputs["files"])
    print(f"\ninput: {inputs['params']['corpus']} corpus, {n:,} records, {size / 2**20:,.0f} MiB: {parts}")
    print(f"runs: {len(sides['tunelake'])}, medians; wall time includes interpreter start and imports\n")
    head = (
        f"{'':34} {'wall s':>8} {'records/s':>11} {'CPU s':>7} {'CPU us/rec':>11} {'max proc MiB':>13} "
        f"{'tree MiB':>9} {'manifest MiB':>13}"
    )
    print(head)
    print("-" * len(head))
    for name, side in summary.items():
        manifest = f"{side['manifest_peak_rss_mb']:13,.0f}" if name == "tunelake" else ""
        print(
            f"{LABELS[name]:34} {side['wall_s']:8.2f} {_fmt(side['records_per_s']):>11} {side['cpu_s']:7.2f} "
            f"{side['cpu_s'] / n * 1e6:11.2f} {side['max_proc_mb']:13,.0f} {side['tree_mb']:9,.0f} {manifest}"
        )

    def over(name: str) -> float:
        return tl["records_per_s"] / summary[name]["records_per_s"]

    met = {True: "met", False: "NOT met"}
    ratios = {"tunelake_over_baseline": over("baseline")}
    if "layout" in summary:
        ratios["tunelake_over_layout"] = over("layout")
        print(
            f"\nratio tunelake build / layout floor records/s: {over('layout'):.3f}  "
            f"(target >= 0.6: {met[over('layout') >= 0.6]})"
        )
    else:
        print("\nratio tunelake build / layout floor records/s: not measured (add --layout-floor; target >= 0.6)")
    if "datatrove_dedup" in summary:
        ratios["tunelake_over_datatrove_dedup"] = over("datatrove_dedup")
        ratios["tunelake_over_datatrove_filter"] = over("datatrove_filter")
        print(
            f"ratio tunelake / datatrove exact dedup records/s: {over('datatrove_dedup'):.2f}  "
            f"(target >= 4: {met[over('datatrove_dedup') >= 4]})"
        )
        print(f"ratio tunelake / datatrove read -> filter -> write records/s: {over('datatrove_filter'):.2f}")
        print(
            "ratio of CPU per record (datatrove exact dedup's / tunelake's): "
            f"{summary['datatrove_dedup']['cpu_s'] / tl['cpu_s']:.2f}  (less moved by other load)"
        )
    print(f"ratio tunelake / pyarrow records/s: {over('baseline'):.3f}  (for information: the I/O floor)")
    print(f"ratio of CPU per record (pyarrow's / tunelake's): {base['cpu_s'] / tl['cpu_s']:.3f}  (for information)")
    if "layout" in summary:
        print(
            f"ratio layout floor / pyarrow records/s: {base['wall_s'] / summary['layout']['wall_s']:.3f}  (the most a "
            "build that writes bronze, silver, gold and both exports could reach here)"
        )
    tree = max(m.tree_mb for m in sides["tunelake"])
    print(f"tunelake peak memory (tree, worst run): {tree:,.0f} MiB  (target < 1024: {met[tree < 1024]})")
    modes = {v for m in sides["baseline"] for v in m.extra["modes"].values()}
    if modes != {"open_json"}:
        print("baseline reader: " + "; ".join(sorted(modes)))
    base["modes"] = sorted(modes)

    runs = sides["tunelake"]
    stages = list(runs[0].extra["stages"])
    print(f"\n{'tunelake stage':14} {'records':>10} {'seconds':>9} {'records/s':>11} {'input rec/s':>12} {'share':>6}")
    rows = {}
    for stage in stages:
        secs = med(m.extra["stages"][stage]["seconds"] for m in runs)
        recs = runs[0].extra["stages"][stage]["records"]
        rows[stage] = {
            "records": recs,
            "seconds": secs,
            "records_per_s": recs / secs if secs else None,
            "input_records_per_s": n / secs if secs else None,
        }
        print(
            f"{stage:14} {recs:10,} {secs:9.2f} {_fmt(recs / secs) if secs else '-':>11} "
            f"{_fmt(n / secs) if secs else '-':>12} {secs / tl['wall_s']:6.1%}"
        )
    t_wall = tl["wall_s"]
    other = t_wall - sum(r["seconds"] for r in rows.values())
    print(f"{'(outside)':14} {'':>10} {other:9.2f} {'':>11} {'':>12} {other / t_wall:6.1%}  start, imports, commits")
    counts = runs[0].extra["counts"]
    total = {k: sum(c[k] for c in counts.values()) for k in ("bronze", "silver", "quarantined", "dropped")}
    expected = sum(f["duplicates"] for f in inputs["files"])
    print(f"\ncounts: {total}; generated exact duplicates: {expected:,}")
    tl.update(stages=rows, counts=total)
    if "datatrove_dedup" in summary:
        kept = {name: sides[name][0].extra["rows"] for name in ("datatrove_dedup", "datatrove_filter")}
        print(
            f"datatrove wrote {kept['datatrove_dedup']:,} rows after exact dedup (generated unique rows: "
            f"{n - expected:,}) and {kept['datatrove_filter']:,} after the filter"
        )
        for name in ("datatrove_dedup", "datatrove_filter"):
            steps = sides[name][0].extra["stages"]
            summary[name]["stages"] = {k: med(m.extra["stages"][k] for m in sides[name]) for k in steps}
            timed = ", ".join(f"{k} {v:.2f} s" for k, v in summary[name]["stages"].items())
            print(f"{LABELS[name]} stages (median): {timed}")
    return {"records": n, "input_bytes": size, "runs": len(runs), **summary, "ratios": ratios}


def profile(inputs: dict, workdir: Path, top: int) -> None:
    """One build in a single process (engine.workers=1) under cProfile; prints the top functions."""
    import pstats

    lake = workdir / "lake-profile"
    shutil.rmtree(lake, ignore_errors=True)
    recipe = write_recipe(workdir / "recipe-profile.yaml", inputs, lake, workers=1)
    prof = workdir / "build.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), __file__, "_build", str(recipe)]
    m = run_measured(cmd, workdir / "profile.log")
    _check(m, "profiled build")
    shutil.rmtree(lake, ignore_errors=True)
    print(f"\nprofile: one build, engine.workers=1, {m.wall:.1f} s under cProfile; saved to {prof}")
    for key in ("tottime", "cumulative"):
        print(f"\n--- top {top} by {key} ---")
        pstats.Stats(str(prof)).strip_dirs().sort_stats(key).print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, help="records to generate (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--runs", type=int, help="measured runs of each side (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tunelake-bench"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="mixed", help="what to generate (default mixed)")
    ap.add_argument("--dup-rate", type=float, default=0.05, help="share of exact duplicate rows (default 0.05)")
    ap.add_argument("--gzip", action="store_true", help="write the input as .jsonl.gz instead of plain .jsonl")
    ap.add_argument("--workers", type=int, default=0, help="the recipe's engine.workers (0: one per core)")
    ap.add_argument("--scale-check", action="store_true", help="also build N/4 records and compare peak memory")
    ap.add_argument(
        "--layout-floor",
        action="store_true",
        help="also time the writes a build makes (bronze, silver, gold, both exports) with no logic between them",
    )
    ap.add_argument(
        "--incremental", action="store_true", help="also time a no-op rebuild and one after adding 5%% records"
    )
    ap.add_argument("--no-datatrove", action="store_true", help="skip the datatrove sides even when it is installed")
    ap.add_argument("--profile", action="store_true", help="also profile one build with engine.workers=1")
    ap.add_argument("--profile-only", action="store_true", help="only generate the input and profile")
    ap.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    args = ap.parse_args()
    records = args.records or (100_000 if args.quick else 1_000_000)
    runs = args.runs or (1 if args.quick else 3)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    inputs = generate(records, workdir, args.seed, args.dup_rate, args.gzip, args.corpus)
    print(f"input: {Path(inputs['files'][0]['path']).parent} (generated in {inputs['seconds']} s, maybe earlier)")
    if args.profile_only:
        profile(inputs, workdir, args.top)
        return
    env = environment()
    datatrove = not args.no_datatrove and datatrove_installed()
    if not args.no_datatrove and not datatrove:
        print("datatrove is not installed (pip install datatrove): its sides are skipped")
    sides: dict[str, list[Measured]] = {"baseline": [], "tunelake": []}
    if args.layout_floor:
        sides["layout"] = []
    if datatrove:
        sides.update({f"datatrove_{k}": [] for k in DATATROVE_SIDES})
    for run in range(runs):  # alternate the sides so drift in the machine hits them alike
        sides["baseline"].append(run_baseline(inputs, workdir, run))
        sides["tunelake"].append(run_tunelake(inputs, workdir, args.workers, str(run)))
        if args.layout_floor:
            sides["layout"].append(run_layout(inputs, workdir, run, args.workers))
        for pipeline in DATATROVE_SIDES if datatrove else ():
            sides[f"datatrove_{pipeline}"].append(run_datatrove(inputs, workdir, run, pipeline))
        walls = ", ".join(f"{LABELS[name].split(':')[0]} {ms[-1].wall:.2f} s" for name, ms in sides.items())
        print(f"run {run + 1}/{runs}: {walls}", flush=True)
    results = report(inputs, sides)
    results["environment"] = env
    print(f"environment at start: {env}" + ("  (busy machine: timings are noisy)" if env["load_avg_1m"] > 0.5 else ""))

    if args.scale_check:
        small = generate(records // 4, workdir, args.seed, args.dup_rate, args.gzip, args.corpus)
        m = run_tunelake(small, workdir, args.workers, "quarter")
        print("\nscale check (peak memory should not grow with the input):")
        print(f"{'records':>12} {'wall s':>8} {'max proc MiB':>13} {'tree MiB':>9} {'manifest MiB':>13}")
        full = results["tunelake"]
        print(
            f"{records // 4:12,} {m.wall:8.2f} {m.max_proc_mb:13,.0f} {m.tree_mb:9,.0f} {m.extra['peak_rss_mb']:13,}"
        )
        print(
            f"{records:12,} {full['wall_s']:8.2f} {full['max_proc_mb']:13,.0f} {full['tree_mb']:9,.0f} "
            f"{full['manifest_peak_rss_mb']:13,.0f}"
        )
        results["scale_check"] = {
            "records": records // 4,
            "wall_s": m.wall,
            "max_proc_mb": m.max_proc_mb,
            "tree_mb": m.tree_mb,
            "manifest_peak_rss_mb": m.extra["peak_rss_mb"],
        }
    if args.incremental:
        results["incremental"] = run_incremental(inputs, workdir, args.workers, runs, args)
    out = workdir / f"results-{args.corpus}-n{records}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    if args.profile:
        profile(inputs, workdir, args.top)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        _baseline_child(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_layout":
        _layout_child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_datatrove":
        _datatrove_child(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_build":
        _build_child(sys.argv[2])
    else:
        main()
