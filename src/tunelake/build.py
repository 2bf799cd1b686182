"""`tunelake build`: sources -> bronze -> silver -> gold, one Delta commit per table, and a manifest.

The flow, in three passes over the data:
1. canonicalize (row-local, on the process pool): raw chunks -> bronze rows, candidate records (staged as
   Parquet), quarantined rows and ledger rows.
2. dedup (global, DuckDB): which candidates duplicate an earlier one.
3. publish (streaming): candidates minus duplicates -> silver/records and, split by prompt group, the gold
   tables; then trainer exports and the manifest.
Each table's new version is published in one commit, so a killed build leaves every table readable at its
previous version, and re-running it gives the same result.
"""

from __future__ import annotations

import functools
import resource
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import __version__
from tunelake.engine.local import ordered_map
from tunelake.gold.export import export_table
from tunelake.gold.project import gold_schema, gold_table
from tunelake.gold.split import SPLITS, assign_splits
from tunelake.ingest.adapters import FormatError, detect_format
from tunelake.ingest.readers import FileReport, RawChunk, expand, read_chunks
from tunelake.lake import BRONZE, LEDGER, QUARANTINE, Lake, TableWriter
from tunelake.recipe import Recipe, RecipeError, Source
from tunelake.schema import RECORD, Reason, Regime
from tunelake.silver.canonicalize import (
    CANDIDATE,
    MAX_FILES,
    ChunkResult,
    FilePlan,
    SourcePlan,
    canonicalize,
    ordinal_parts,
)
from tunelake.silver.dedup import exact_duplicates

DETECT_SAMPLE = 200  # rows parsed from the start of a file to detect its format


@dataclass
class Progress:
    """Hooks for a progress display; the CLI passes a rich one, tests and libraries the silent default."""

    def start(self, stage: str, total: int | None) -> None: ...
    def advance(self, amount: int) -> None: ...
    def finish(self) -> None: ...


@dataclass
class _Run:
    recipe: Recipe
    lake: Lake
    run_id: str
    files: list[list[str]]  # per source, sorted
    reports: dict[str, FileReport] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    stages: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)

    def address(self, ords: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(source, file, row) arrays for candidate ordinals (see canonicalize.ordinal)."""
        src, fil, row = ordinal_parts(ords)
        names = pa.array([s.name for s in self.recipe.sources])
        flat_files = [f for files in self.files for f in files]
        offsets = [0]
        for files in self.files:
            offsets.append(offsets[-1] + len(files))
        file_index = pc.add(pc.take(pa.array(offsets[:-1], pa.int64()), src), fil)
        return pc.take(names, src), pc.take(pa.array(flat_files), file_index), row

    def timed(self, stage: str, records: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.stages[stage] = {
            "records": records,
            "seconds": round(seconds, 3),
            "records_per_s": round(records / seconds) if seconds > 0 else None,
        }


def peak_rss_mb() -> int:
    """Peak resident memory of this process or of any one worker, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, workers) / 1024)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def plan_files(recipe: Recipe) -> list[list[str]]:
    files = []
    for source in recipe.sources:
        found = expand(source.path)
        if not found:
            raise RecipeError(f"source {source.name!r}: no file matches {source.path}")
        if len(found) > MAX_FILES:
            raise RecipeError(f"source {source.name!r}: {len(found)} files; split it into sources of <= {MAX_FILES}")
        files.append(found)
    return files


def build(recipe: Recipe, recipe_sha256: str, progress: Progress | None = None) -> dict:
    """Run a whole build; returns its manifest (also written to <lake>/manifests/<run_id>.json)."""
    progress = progress or Progress()
    started_at = datetime.now(UTC).isoformat()
    lake = Lake(recipe.lake)
    run = _Run(recipe, lake, new_run_id(), plan_files(recipe))
    with lake.lock():
        lake.clear_staging()  # leftovers of a killed build
        staging = lake.staging(run.run_id)
        ledger = lake.writer("ledger", LEDGER, run.run_id)
        candidate_files = _canonicalize(run, staging, ledger, progress)
        duplicates = _dedup(run, candidate_files, ledger)
        _publish(run, candidate_files, duplicates, ledger, progress)
        run.tables["ledger"] = ledger.commit()
        _export(run, progress)
        lake.clear_staging()
        manifest = _manifest(run, recipe_sha256, started_at)
        lake.write_manifest(manifest)
    return manifest


def _chunks(run: _Run, source_index: int, source: Source) -> Iterator[tuple[RawChunk, FilePlan]]:
    plan = SourcePlan(
        source_index,
        source.name,
        source.regime,
        source.license,
        source.origin,
        source.meta,
        run.recipe.silver.max_chars,
    )
    for file_index, path in enumerate(run.files[source_index]):
        report = run.reports[path] = FileReport(path)
        file_plan = None
        for chunk in read_chunks(path, report, run.recipe.engine.chunk_bytes):
            if file_plan is None:
                file_plan = _file_plan(plan, file_index, source.format, chunk)
                run.formats[path] = file_plan.adapter or file_plan.format_error[0].value
            yield chunk, file_plan


def _file_plan(plan: SourcePlan, file_index: int, fmt: str, first: RawChunk) -> FilePlan:
    if fmt != "auto":
        return FilePlan(plan, file_index, fmt)
    rows = []
    for line in first.data.split(b"\n")[:DETECT_SAMPLE]:
        try:
            obj = orjson.loads(line.removeprefix(b"\xef\xbb\xbf"))
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    try:
        adapter = detect_format(rows)
    except FormatError as e:
        return FilePlan(plan, file_index, None, (e.reason, f"{first.file}: {e}"))
    if plan.regime and plan.regime not in adapter.regimes:
        detail = f"{first.file}: detected format {adapter.name} gives {', '.join(adapter.regimes)}, not {plan.regime}"
        return FilePlan(plan, file_index, None, (Reason.unknown_format, detail))
    return FilePlan(plan, file_index, adapter.name)


def _canonicalize_chunk(item: tuple[RawChunk, FilePlan], run_id: str) -> tuple[str, ChunkResult]:
    chunk, plan = item
    return plan.source.name, canonicalize(chunk, plan, run_id)


def _canonicalize(run: _Run, staging: Path, ledger: TableWriter, progress: Progress) -> list[str]:
    started = time.perf_counter()
    lake, recipe = run.lake, run.recipe
    bronze = {s.name: lake.writer(f"bronze/{s.name}", BRONZE, run.run_id) for s in recipe.sources}
    quarantine = lake.writer("silver/quarantine", QUARANTINE, run.run_id)
    items = (item for i, s in enumerate(recipe.sources) for item in _chunks(run, i, s))
    candidate_path = staging / "candidates.parquet"
    candidates = pq.ParquetWriter(candidate_path, CANDIDATE, compression="lz4")
    progress.start("canonicalize", None)  # rows are counted as they are read; the total is unknown up front
    fn = functools.partial(_canonicalize_chunk, run_id=run.run_id)
    for source, result in ordered_map(fn, items, recipe.engine.resolved_workers()):
        bronze[source].write(result.bronze)
        quarantine.write(result.quarantine)
        ledger.write(result.ledger)
        candidates.write(result.candidates)
        run.counts[source].update(bronze=result.counts["bronze"], quarantined=result.counts["quarantined"])
        progress.advance(result.counts["bronze"])
    candidates.close()
    progress.finish()
    _file_issues(run, quarantine, ledger)
    for name, writer in bronze.items():
        run.tables[f"bronze/{name}"] = writer.commit()
    run.tables["silver/quarantine"] = quarantine.commit()
    run.timed("canonicalize", sum(c["bronze"] for c in run.counts.values()), started)
    return [str(candidate_path)]


def _file_issues(run: _Run, quarantine: TableWriter, ledger: TableWriter) -> None:
    """Whole-file problems (empty, truncated, unreadable) go to quarantine and the ledger with a null row."""
    rows = []
    for source_index, source in enumerate(run.recipe.sources):
        for path in run.files[source_index]:
            for reason, detail in run.reports[path].issues:
                rows.append((source.name, path, reason.value, detail))
                run.counts[source.name]["file_issues"] += 1
    if not rows:
        return
    n = len(rows)
    src, paths, reasons, details = (list(c) for c in zip(*rows, strict=True))
    quarantine.write(
        pa.RecordBatch.from_pydict(
            {
                "source": src,
                "file": paths,
                "row": [None] * n,
                "stage": ["read"] * n,
                "reason": reasons,
                "field": [None] * n,
                "detail": details,
                "raw": [None] * n,
            },
            schema=QUARANTINE,
        )
    )
    ledger.write(
        pa.RecordBatch.from_pydict(
            {
                "id": [None] * n,
                "source": src,
                "file": paths,
                "row": [None] * n,
                "stage": ["read"] * n,
                "action": ["quarantine"] * n,
                "reason": reasons,
                "detail": details,
                "run_id": [run.run_id] * n,
            },
            schema=LEDGER,
        )
    )


def _ledger_batch(run: _Run, ords: pa.Array, ids: pa.Array, stage: str, action: str, reason, detail) -> pa.RecordBatch:
    source, file, row = run.address(ords)
    n = len(ords)
    const = lambda v: v if isinstance(v, pa.Array) else pa.array([v] * n, pa.string())  # noqa: E731
    return pa.RecordBatch.from_arrays(
        [ids, source, file, row, const(stage), const(action), const(reason), const(detail), const(run.run_id)],
        schema=LEDGER,
    )


def _dedup(run: _Run, candidate_files: list[str], ledger: TableWriter) -> pa.Table:
    started = time.perf_counter()
    dups = exact_duplicates(candidate_files)
    if dups.num_rows:
        kept_source, kept_file, kept_row = run.address(dups["kept_ord"].combine_chunks())
        detail = pc.binary_join_element_wise(
            "kept ", kept_source, ":", kept_file, ":", pc.cast(kept_row, pa.string()), ""
        )
        reason = pc.binary_join_element_wise("duplicate_of:", dups["kept_id"].combine_chunks(), "")
        batch = _ledger_batch(
            run, dups["_ord"].combine_chunks(), dups["id"].combine_chunks(), "dedup", "drop", reason, detail
        )
        ledger.write(batch)
        for source, n in Counter(batch.column("source").to_pylist()).items():
            run.counts[source]["dropped"] += n
    run.timed("dedup", dups.num_rows, started)
    return dups


def _publish(run: _Run, candidate_files: list[str], dups: pa.Table, ledger: TableWriter, progress: Progress) -> None:
    """Candidates minus duplicates -> silver/records and the gold tables, in one streaming pass."""
    started = time.perf_counter()
    lake, split_cfg = run.lake, run.recipe.gold.split
    silver = lake.writer("silver/records", RECORD, run.run_id)
    gold = {(r, s): lake.writer(gold_table(r, s), gold_schema(r), run.run_id) for r in Regime for s in SPLITS}
    dropped = dups["_ord"].combine_chunks()
    progress.start("publish", sum(pq.ParquetFile(f).metadata.num_rows for f in candidate_files))
    for path in candidate_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=16384):
            progress.advance(batch.num_rows)
            if len(dropped):
                batch = batch.filter(pc.invert(pc.is_in(batch.column("_ord"), dropped)))
            if not batch.num_rows:
                continue
            records = pa.Table.from_batches([batch]).select(RECORD.names)
            silver.write(records)
            splits = assign_splits(batch.column("prompt_id"), split_cfg)
            for (regime, split), writer in gold.items():
                mask = pc.and_(pc.equal(batch.column("regime"), regime.value), pc.equal(splits, split))
                writer.write(records.filter(mask).select(writer.schema.names))
            where = pc.binary_join_element_wise("gold/", batch.column("regime"), "/", splits, "")
            ledger.write(_ledger_batch(run, batch.column("_ord"), batch.column("id"), "split", "keep", None, where))
            for source, n in Counter(batch.column("source").to_pylist()).items():
                run.counts[source]["silver"] += n
    progress.finish()
    _reconcile(run)
    run.tables["silver/records"] = silver.commit()
    for (regime, split), writer in gold.items():
        run.tables[gold_table(regime, split)] = writer.commit()
        run.counts["_gold"][gold_table(regime, split)] = writer.rows
    run.timed("publish", silver.rows, started)


def _reconcile(run: _Run) -> None:
    """Every bronze row is in silver, quarantined or dropped with a reason; else nothing is published."""
    for source in run.recipe.sources:
        c = run.counts[source.name]
        if c["bronze"] != c["silver"] + c["quarantined"] + c["dropped"]:
            raise RuntimeError(f"counts do not reconcile for source {source.name}: {dict(c)}; nothing was published")


def _export(run: _Run, progress: Progress) -> None:
    started = time.perf_counter()
    out = run.lake.root / "exports"
    shutil.rmtree(out, ignore_errors=True)  # exports mirror the current gold, nothing older
    formats = run.recipe.gold.export
    rows = 0
    for regime in Regime:
        for split in SPLITS:
            table = gold_table(regime, split)
            export_table(run.lake.files(table), regime, split, out, formats)
            rows += run.counts["_gold"][table]
    run.timed("export", rows, started)


def _manifest(run: _Run, recipe_sha256: str, started_at: str) -> dict:
    counts = {}
    for source in run.recipe.sources:
        c = run.counts[source.name]
        counts[source.name] = {k: c[k] for k in ("bronze", "silver", "quarantined", "dropped", "file_issues")}
    inputs = [
        {
            "source": s.name,
            "path": p,
            "sha256": run.reports[p].sha256,
            "bytes": run.reports[p].bytes,
            "rows": run.reports[p].rows,
            "format": run.formats.get(p),
            "issues": [{"reason": r.value, "detail": d} for r, d in run.reports[p].issues],
        }
        for i, s in enumerate(run.recipe.sources)
        for p in run.files[i]
    ]
    return {
        "run_id": run.run_id,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "tunelake_version": __version__,
        "recipe_sha256": recipe_sha256,
        "recipe": run.recipe.model_dump(mode="json"),
        "inputs": inputs,
        "tables": dict(sorted(run.tables.items())),
        "counts": counts,
        "gold": {k: v for k, v in sorted(run.counts["_gold"].items())},
        "stages": run.stages,
        "peak_rss_mb": peak_rss_mb(),
    }
