"""Quality-gate benchmark: tunelake's quality gates beside datatrove's Gopher quality and repetition filters, on the
same real conversations in the same run.

Input (made once per size under --workdir): the ingest benchmark's mixed corpus (bench/ingest.py: real HH-RLHF
and Alpaca rows with deterministic variation; its GSM8K share is left out, as RL records are not judged), built
into canonical records by `tunelake build` with no stage, and the SFT and preference records of silver kept as one
Parquet file. Both sides read that file.

Sides, each in its own process on 2 spawned workers, a task per row group of the file (CHUNK records, as a build's
chunk), alternating run by run:
- tunelake: every gate under `silver.quality` that exists (today: pii, lang, heuristics, then refusal, with their
  defaults) run on each chunk as a build runs them (RowLocalStage.process over an Arrow batch of canonical records).
- datatrove (when installed: `pip install datatrove spacy`; its English word tokenizer is spaCy's):
  GopherQualityFilter and GopherRepetitionFilter, defaults, on a Document per record whose text is what tunelake's
  gates judge (an SFT record's assistant turns, a pair's chosen side, joined by blank lines). Each filter is called
  on every document (not stopping at the first rejection), as each of tunelake's gates sees every record.

Project target: tunelake at least 3x datatrove's records/s with all gates on; peak memory flat as input grows.

    python bench/quality.py --quick      # 20k conversations, 1 run
    python bench/quality.py              # 200k conversations, median of 3 runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import _check, _tunelake_cmd, environment, generate, run_measured, write_recipe  # noqa: E402

CHUNK = 10_000  # records per row group of the input, and per task


def prepare(conversations: int, workdir: Path) -> Path:
    """The benchmark's records (SFT and preference from silver), as one Parquet file; made once per size."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tunelake.lake import Lake

    out = workdir / f"quality-records-{conversations}.parquet"
    if out.exists():
        return out
    inputs = generate(round(conversations / 0.7), workdir, 0, 0.0, False, "mixed")  # hh + alpaca are 70%
    lake = workdir / "lake-quality-input"
    shutil.rmtree(lake, ignore_errors=True)
    recipe = write_recipe(workdir / "recipe-quality-input.yaml", inputs, lake, 0)
    text = recipe.read_text().replace("  export: [jsonl, parquet]", "  export: []")
    recipe.write_text(text + "silver:\n  exact_dedup: null\n")
    m = run_measured(_tunelake_cmd(recipe), workdir / "quality-input.log")
    _check(m, "tunelake build of the benchmark's records")
    records = Lake(lake).read("silver/records")
    records = records.filter(pc.is_in(records["regime"], value_set=pa.array(["sft", "preference"])))
    pq.write_table(records.slice(0, conversations), out, row_group_size=CHUNK)
    shutil.rmtree(lake, ignore_errors=True)
    return out


def _tunelake_chunk(task: tuple[str, int]) -> dict[str, int]:
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from tunelake.recipe import Silver
    from tunelake.stages import BUILTIN, section

    path, group = task
    batch = pq.ParquetFile(path).read_row_group(group).combine_chunks().to_batches()[0]
    gates = [name for name in BUILTIN if name.startswith("silver.quality.")]
    recipe = SimpleNamespace(silver=Silver.model_validate({"quality": {name.rsplit(".", 1)[1]: {} for name in gates}}))
    counted: dict[str, int] = {}
    for name in gates:
        outcome = BUILTIN[name](section(recipe, name)).process(batch)
        gate = name.rsplit(".", 1)[1]
        for what, column in (("dropped", outcome.drop), ("modified", outcome.modified)):
            for reason in column.drop_null().to_pylist() if column is not None else []:
                key = reason if what == "dropped" else f"{gate}: modified"
                counted[key] = counted.get(key, 0) + 1
        for (figure, *_), n in outcome.tally.items():  # e.g. refusal's records judged and refused
            counted[f"{gate}: {figure}"] = counted.get(f"{gate}: {figure}", 0) + n
        batch = outcome.rows
    return counted


def _judged_texts(path: str, group: int) -> list[str]:
    """What tunelake's gates judge, per record: assistant turns (SFT) or the chosen side, by blank lines."""
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).read_row_group(group, columns=["regime", "messages", "chosen"]).to_pylist()
    texts = []
    for row in rows:
        turns = row["messages"] if row["regime"] == "sft" else row["chosen"]
        texts.append("\n\n".join(t["content"] or "" for t in turns if t["role"] == "assistant"))
    return texts


def _datatrove_chunk(task: tuple[str, int]) -> dict[str, int]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    path, group = task
    filters = (GopherQualityFilter(), GopherRepetitionFilter())
    dropped: dict[str, int] = {}
    for i, text in enumerate(_judged_texts(path, group)):
        doc = Document(text=text, id=f"{group}-{i}")
        for f in filters:
            verdict = f.filter(doc)
            if verdict is not True and not (isinstance(verdict, tuple) and verdict[0]):
                reason = verdict[1] if isinstance(verdict, tuple) else type(f).__name__
                dropped[reason] = dropped.get(reason, 0) + 1
    return dropped


def _child(side: str, path: str, workers: int) -> None:
    """One side over the whole file on a spawned pool; prints one JSON line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    rows = meta.num_rows
    work = _tunelake_chunk if side == "tunelake" else _datatrove_chunk
    started = time.perf_counter()
    dropped: dict[str, int] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for part in pool.map(work, [(path, group) for group in range(meta.num_row_groups)]):
            for reason, n in part.items():
                dropped[reason] = dropped.get(reason, 0) + n
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "dropped": dropped}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, help="records judged (default 200,000; 20,000 with --quick)")
    ap.add_argument("--runs", type=int, help="measured runs of each side (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run")
    ap.add_argument("--workers", type=int, default=2, help="processes per side (default 2)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tunelake-bench"))
    args = ap.parse_args()
    n = args.conversations or (20_000 if args.quick else 200_000)
    runs = args.runs or (1 if args.quick else 3)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = prepare(n, args.workdir)
    sides = ["tunelake"]
    try:
        import datatrove  # noqa: F401
    except ImportError:
        print("datatrove is not installed (pip install datatrove spacy): its side is skipped")
    else:
        sides.append("datatrove")
    measured: dict[str, list] = {side: [] for side in sides}
    for run in range(runs):
        for side in sides:
            cmd = [sys.executable, __file__, "_child", side, str(path), str(args.workers)]
            m = run_measured(cmd, args.workdir / f"quality-{side}-{run}.log")
            _check(m, side)
            m.extra = json.loads(m.log.read_text().strip().splitlines()[-1])
            measured[side].append(m)
        print(f"run {run + 1}/{runs}: " + ", ".join(f"{s} {measured[s][-1].wall:.2f} s" for s in sides))
    print(f"\n{n:,} conversations, {args.workers} workers, medians of {runs}")
    print(f"{'side':<10} {'wall s':>8} {'records/s':>11} {'CPU s':>8} {'tree MiB':>9}  dropped")
    rate = {}
    for side, ms in measured.items():
        wall = statistics.median(m.wall for m in ms)
        rate[side] = n / wall
        print(
            f"{side:<10} {wall:8.2f} {rate[side]:11,.0f} {statistics.median(m.cpu_s for m in ms):8.2f} "
            f"{statistics.median(m.tree_mb for m in ms):9,.0f}  {ms[-1].extra['dropped']}"
        )
    if "datatrove" in rate:
        print(f"\nratio tunelake / datatrove records/s: {rate['tunelake'] / rate['datatrove']:.2f}  (target >= 3)")
    print(f"environment: {environment()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
