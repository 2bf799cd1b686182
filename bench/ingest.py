"""Ingest benchmark: `tunelake build` from raw to gold on >= 1M records, beside the I/O floor.

The floor is pyarrow's streaming JSONL -> Parquet copy of the same files (no processing), measured in the same
run. Project target: a build runs at least half as fast as the floor (ratio >= 0.5), and its peak memory stays
under 1 GiB however large the input.

Input is generated deterministically from the real samples in shared/data (HH-RLHF harmless test: preference,
alpaca sample: SFT, GSM8K train: RL), each row repeated with a varied prompt so records are distinct, plus a share
of exact duplicates. It is written once per parameter set under --workdir and reused.

    python bench/ingest.py --quick                 # 100k records, 1 run: a smoke run
    python bench/ingest.py                         # 1M records, median of 3 runs
    python bench/ingest.py --scale-check           # also a build at N/4: peak memory must stay flat
    python bench/ingest.py --layout-floor          # also the writes a build makes, with no logic between them
    python bench/ingest.py --quick --profile       # cProfile of one build with engine.workers=1

`CPU s` is the user + system time of the measured process and every process it reaped (the pool's workers).
Peak memory is given three ways: `max proc` is the largest single process (os.wait4 on the child, which folds in
every worker it reaped), `tree` is the largest sum of RSS over the child and its workers, sampled every 50 ms
(what the machine must hold), and `manifest` is the build's own `peak_rss_mb`.
"""

from __future__ import annotations

import argparse
import gzip
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


@dataclass(frozen=True)
class Spec:
    name: str
    path: str  # under shared/data
    share: float  # of the generated records
    license: str
    origin: str
    vary: object


SPECS = (
    Spec("hh_harmless", "hh-rlhf/harmless-base_test.jsonl.gz", 0.35, "mit", "human", _vary_hh),
    Spec("alpaca", "alpaca/alpaca_sample_2000.json.gz", 0.35, "cc-by-nc-4.0", "distilled", _vary_field("instruction")),
    Spec("gsm8k", "gsm8k/train.jsonl.gz", 0.30, "mit", "human", _vary_field("question")),
)


def _load_rows(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes())
    if raw.lstrip()[:1] == b"[":
        return orjson.loads(raw)
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- input generation


def generate(records: int, workdir: Path, seed: int, dup_rate: float, gz: bool) -> dict:
    """Write (or reuse) the input files; returns their description (also kept as params.json beside them)."""
    params = {"version": GEN_VERSION, "records": records, "seed": seed, "dup_rate": dup_rate, "gzip": gz}
    folder = workdir / f"data-n{records}-s{seed}-d{dup_rate:g}{'-gz' if gz else ''}"
    meta_path = folder / "params.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["params"] == params and all(Path(f["path"]).exists() for f in meta["files"]):
            return meta
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    counts = [round(records * s.share) for s in SPECS]
    counts[-1] = records - sum(counts[:-1])
    files = []
    for index, (spec, n) in enumerate(zip(SPECS, counts, strict=True)):
        rng = random.Random(f"{seed}:{spec.name}")
        base = _load_rows(DATA / spec.path)
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
        "stages": manifest["stages"],
        "counts": manifest["counts"],
        "gold": manifest["gold"],
        "peak_rss_mb": manifest["peak_rss_mb"],
    }
    shutil.rmtree(lake, ignore_errors=True)
    return m


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


def report(inputs: dict, base: list[Measured], tl: list[Measured], layout: list[Measured]) -> dict:
    n = inputs["params"]["records"]
    size = sum(f["bytes"] for f in inputs["files"])
    med = statistics.median
    b_wall, t_wall = med(m.wall for m in base), med(m.wall for m in tl)
    b_rps, t_rps = n / b_wall, n / t_wall
    b_cpu, t_cpu = med(m.cpu_s for m in base), med(m.cpu_s for m in tl)
    parts = ", ".join(f"{f['source']} {f['records']:,} ({f['duplicates']:,} dup)" for f in inputs["files"])
    print(f"\ninput: {n:,} records, {size / 2**20:,.0f} MiB: {parts}")
    print(f"runs: {len(tl)}, medians; wall time includes interpreter start and imports\n")
    head = (
        f"{'':34} {'wall s':>8} {'records/s':>11} {'CPU s':>7} {'CPU us/rec':>11} {'max proc MiB':>13} "
        f"{'tree MiB':>9} {'manifest MiB':>13}"
    )
    print(head)
    print("-" * len(head))
    print(
        f"{'pyarrow open_json -> parquet':34} {b_wall:8.2f} {_fmt(b_rps):>11} {b_cpu:7.2f} {b_cpu / n * 1e6:11.2f} "
        f"{med(m.max_proc_mb for m in base):13,.0f} {med(m.tree_mb for m in base):9,.0f} {'':>13}"
    )
    print(
        f"{'tunelake build':34} {t_wall:8.2f} {_fmt(t_rps):>11} {t_cpu:7.2f} {t_cpu / n * 1e6:11.2f} "
        f"{med(m.max_proc_mb for m in tl):13,.0f} {med(m.tree_mb for m in tl):9,.0f} "
        f"{med(m.extra['peak_rss_mb'] for m in tl):13,.0f}"
    )
    if layout:
        l_wall, l_cpu = med(m.wall for m in layout), med(m.cpu_s for m in layout)
        print(
            f"{'layout floor: writes, no logic':34} {l_wall:8.2f} {_fmt(n / l_wall):>11} {l_cpu:7.2f} "
            f"{l_cpu / n * 1e6:11.2f} {med(m.max_proc_mb for m in layout):13,.0f} "
            f"{med(m.tree_mb for m in layout):9,.0f}"
        )
    ratio = t_rps / b_rps
    tree = max(m.tree_mb for m in tl)
    met = {True: "met", False: "NOT met"}
    print(f"\nratio tunelake / pyarrow records/s: {ratio:.3f}  (target >= 0.5: {met[ratio >= 0.5]})")
    print(f"ratio of CPU per record (pyarrow's / tunelake's): {b_cpu / t_cpu:.3f}  (less moved by other load)")
    if layout:
        print(
            f"ratio layout floor / pyarrow records/s: {b_wall / l_wall:.3f}  (the most a build that writes bronze, "
            "silver, gold and both exports could reach here)"
        )
    print(f"tunelake peak memory (tree, worst run): {tree:,.0f} MiB  (target < 1024: {met[tree < 1024]})")
    modes = {v for m in base for v in m.extra["modes"].values()}
    if modes != {"open_json"}:
        print("baseline reader: " + "; ".join(sorted(modes)))

    stages = list(tl[0].extra["stages"])
    print(f"\n{'tunelake stage':14} {'records':>10} {'seconds':>9} {'records/s':>11} {'input rec/s':>12} {'share':>6}")
    rows = {}
    for stage in stages:
        secs = med(m.extra["stages"][stage]["seconds"] for m in tl)
        recs = tl[0].extra["stages"][stage]["records"]
        rows[stage] = {
            "records": recs,
            "seconds": secs,
            "records_per_s": recs / secs if secs else None,
            "input_records_per_s": n / secs if secs else None,
        }
        print(
            f"{stage:14} {recs:10,} {secs:9.2f} {_fmt(recs / secs) if secs else '-':>11} "
            f"{_fmt(n / secs) if secs else '-':>12} {secs / t_wall:6.1%}"
        )
    other = t_wall - sum(r["seconds"] for r in rows.values())
    print(f"{'(outside)':14} {'':>10} {other:9.2f} {'':>11} {'':>12} {other / t_wall:6.1%}  start, imports, commits")
    counts = tl[0].extra["counts"]
    total = {k: sum(c[k] for c in counts.values()) for k in ("bronze", "silver", "quarantined", "dropped")}
    expected = sum(f["duplicates"] for f in inputs["files"])
    print(f"\ncounts: {total}; generated exact duplicates: {expected:,}")
    return {
        "records": n,
        "input_bytes": size,
        "runs": len(tl),
        "baseline": {
            "wall_s": b_wall,
            "records_per_s": b_rps,
            "cpu_s": b_cpu,
            "modes": sorted(modes),
            "max_proc_mb": med(m.max_proc_mb for m in base),
            "tree_mb": med(m.tree_mb for m in base),
        },
        "tunelake": {
            "wall_s": t_wall,
            "records_per_s": t_rps,
            "cpu_s": t_cpu,
            "stages": rows,
            "counts": total,
            "max_proc_mb": med(m.max_proc_mb for m in tl),
            "tree_mb": med(m.tree_mb for m in tl),
            "manifest_peak_rss_mb": med(m.extra["peak_rss_mb"] for m in tl),
        },
        "layout_floor": {"wall_s": l_wall, "cpu_s": l_cpu, "ratio": b_wall / l_wall} if layout else None,
        "ratio": ratio,
        "all_runs": {
            "baseline": [m.wall for m in base],
            "tunelake": [m.wall for m in tl],
            "layout_floor": [m.wall for m in layout],
        },
    }


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
    ap.add_argument("--dup-rate", type=float, default=0.05, help="share of exact duplicate rows (default 0.05)")
    ap.add_argument("--gzip", action="store_true", help="write the input as .jsonl.gz instead of plain .jsonl")
    ap.add_argument("--workers", type=int, default=0, help="the recipe's engine.workers (0: one per core)")
    ap.add_argument("--scale-check", action="store_true", help="also build N/4 records and compare peak memory")
    ap.add_argument(
        "--layout-floor",
        action="store_true",
        help="also time the writes a build makes (bronze, silver, gold, both exports) with no logic between them",
    )
    ap.add_argument("--profile", action="store_true", help="also profile one build with engine.workers=1")
    ap.add_argument("--profile-only", action="store_true", help="only generate the input and profile")
    ap.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    args = ap.parse_args()
    records = args.records or (100_000 if args.quick else 1_000_000)
    runs = args.runs or (1 if args.quick else 3)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    inputs = generate(records, workdir, args.seed, args.dup_rate, args.gzip)
    print(f"input: {Path(inputs['files'][0]['path']).parent} (generated in {inputs['seconds']} s, maybe earlier)")
    if args.profile_only:
        profile(inputs, workdir, args.top)
        return
    env = environment()
    base, tl, layout = [], [], []
    for run in range(runs):  # alternate the sides so drift in the machine hits them alike
        base.append(run_baseline(inputs, workdir, run))
        print(f"run {run + 1}/{runs}: pyarrow {base[-1].wall:.2f} s", end="", flush=True)
        tl.append(run_tunelake(inputs, workdir, args.workers, str(run)))
        print(f", tunelake {tl[-1].wall:.2f} s", end="", flush=True)
        if args.layout_floor:
            layout.append(run_layout(inputs, workdir, run, args.workers))
            print(f", layout floor {layout[-1].wall:.2f} s", end="", flush=True)
        print(flush=True)
    results = report(inputs, base, tl, layout)
    results["environment"] = env
    print(f"environment at start: {env}" + ("  (busy machine: timings are noisy)" if env["load_avg_1m"] > 0.5 else ""))

    if args.scale_check:
        small = generate(records // 4, workdir, args.seed, args.dup_rate, args.gzip)
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
    out = workdir / f"results-n{records}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {out}")
    if args.profile:
        profile(inputs, workdir, args.top)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        _baseline_child(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_layout":
        _layout_child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_build":
        _build_child(sys.argv[2])
    else:
        main()
