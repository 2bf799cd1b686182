"""`tunelake build`: sources -> bronze -> silver -> gold, one Delta commit per table, and a manifest.

The flow, in three passes over the data, each run by the engine's workers (see tasks.py):
1. canonicalize (row-local): raw chunks -> bronze rows, quarantined rows and ledger rows, written by the worker
   as Parquet parts, and candidate records, staged as Arrow.
2. dedup (global, DuckDB on the staged keys): which candidates duplicate an earlier one.
3. publish (row-local, per window of staged parts): candidates minus duplicates -> silver/records and, split by
   prompt group, the gold tables (also staged as Arrow for the exports); then trainer exports and the manifest.
Each table's new version is published in one commit, so a killed build leaves every table readable at its
previous version, and re-running it gives the same result.
"""

from __future__ import annotations

import resource
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import __version__
from tunelake.engine.local import LocalEngine
from tunelake.engine.parts import Part, part_name, write_part
from tunelake.gold.export import ExportTask, run_export
from tunelake.gold.project import gold_schema, gold_table
from tunelake.gold.split import SPLITS
from tunelake.gold.tokenize.pack import PackStats, pack_windows, part_size
from tunelake.gold.tokenize.stage import PACKED, TOKENIZED, TokenizePlan, plan_tokenize
from tunelake.gold.tokenize.template import TemplateError
from tunelake.ingest.adapters import FormatError, detect_format
from tunelake.ingest.readers import FileReport, RawChunk, expand, read_chunks
from tunelake.lake import Lake
from tunelake.recipe import Recipe, RecipeError, Source
from tunelake.schema import (
    BRONZE,
    LEDGER,
    QUARANTINE,
    RECORD,
    TOKENIZE_QUARANTINE,
    Reason,
    Regime,
    quarantine_ledger,
    table_of,
)
from tunelake.silver.canonicalize import MAX_FILES, FilePlan, SourcePlan
from tunelake.silver.dedup import exact_duplicates
from tunelake.tasks import (
    STEP_DEDUP,
    STEP_READ,
    Addresses,
    CanonicalizeDone,
    CanonicalizeTask,
    PackTask,
    PublishTask,
    Staged,
    TokenizeTask,
    gold_staging,
    run_canonicalize,
    run_pack,
    run_publish,
    run_tokenize,
)

DETECT_SAMPLE = 200  # rows parsed from the start of a file to detect its format
# Candidates per publish task, and their staged size in chunks (engine.chunk_bytes): each file written costs
# milliseconds whatever its size, and one canonicalize chunk is too small a unit for the nine gold tables (its
# validation rows of a regime are a few dozen). The size limit keeps long records from making a task large.
PUBLISH_ROWS = 16_384
PUBLISH_CHUNKS = 4


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
    progress: Progress
    reports: dict[str, FileReport] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    parts: dict[str, list[Part]] = field(default_factory=lambda: defaultdict(list))  # table -> parts to commit
    stages: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    tokenized: dict | None = None
    schemas: dict[str, pa.Schema] = field(default_factory=dict)  # tables to commit, in order

    @property
    def addresses(self) -> Addresses:
        return Addresses(tuple(s.name for s in self.recipe.sources), tuple(tuple(f) for f in self.files))

    def add(self, parts: list[Part]) -> None:
        for part in parts:
            self.parts[part.table].append(part)

    def will_commit(self, table: str, schema: pa.Schema) -> None:
        """Mark a table's staged parts as its next version; every table is committed at the end of the build."""
        self.schemas[table] = schema

    def staged_files(self, table: str) -> list[str]:
        """The parts this build wrote for a table, in order (what later stages read before anything commits)."""
        return [
            str(self.lake.root / p.table / p.name) for p in sorted(self.parts.get(table, []), key=lambda p: p.name)
        ]

    def commit_all(self) -> None:
        for table, schema in self.schemas.items():
            self.tables[table] = self.lake.commit(table, schema, self.parts.get(table, []), self.run_id)

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
    started_at = datetime.now(UTC).isoformat()
    lake = Lake(recipe.lake)
    run = _Run(recipe, lake, new_run_id(), plan_files(recipe), progress or Progress())
    tokenize = _plan_tokenize(recipe)
    with lake.lock():
        with LocalEngine(recipe.engine.resolved_workers()) as engine:
            lake.clear_staging()  # leftovers of a killed build
            lake.remove_orphans(run.run_id)
            candidates = _canonicalize(run, engine)
            dropped = _dedup(run, engine, candidates)
            _publish(run, engine, candidates, dropped)
            if tokenize:
                _tokenize(run, engine, tokenize)
            run.will_commit("ledger", LEDGER)
            exports = _export(run, engine)
        # Nothing is committed until every stage has succeeded and the counts reconcile. The pool has shut down
        # by now: the commits and the manifest follow each other closely, and the manifest's peak memory counts
        # the reaped workers.
        run.commit_all()
        lake.replace_exports(exports)
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
    try:
        adapter = detect_format(first.sample(DETECT_SAMPLE))
    except FormatError as e:
        return FilePlan(plan, file_index, None, (e.reason, f"{first.file}: {e}"))
    if plan.regime and plan.regime not in adapter.regimes:
        detail = f"{first.file}: detected format {adapter.name} gives {', '.join(adapter.regimes)}, not {plan.regime}"
        return FilePlan(plan, file_index, None, (Reason.unknown_format, detail))
    return FilePlan(plan, file_index, adapter.name)


def _canonicalize(run: _Run, engine: LocalEngine) -> list[Staged]:
    """Returns the staged candidate parts, in input order."""
    started = time.perf_counter()
    tasks = (
        CanonicalizeTask(run.lake.root, run.run_id, seq, chunk, plan)
        for seq, (chunk, plan) in enumerate(
            item for i, s in enumerate(run.recipe.sources) for item in _chunks(run, i, s)
        )
    )
    candidates = []
    run.progress.start("canonicalize", None)  # rows are counted as they are read; the total is unknown up front
    done: CanonicalizeDone
    for done in engine.map(run_canonicalize, tasks):
        run.add(done.parts)
        candidates += [done.staged] if done.staged else []
        run.counts[done.source].update(bronze=done.counts["bronze"], quarantined=done.counts["quarantined"])
        run.progress.advance(done.counts["bronze"])
    run.progress.finish()
    _file_issues(run)
    for source in run.recipe.sources:
        run.will_commit(f"bronze/{source.name}", BRONZE)
    run.will_commit("silver/quarantine", QUARANTINE)
    run.timed("canonicalize", sum(c["bronze"] for c in run.counts.values()), started)
    return candidates


def _file_issues(run: _Run) -> None:
    """Whole-file problems (empty, truncated, unreadable) go to quarantine and the ledger with a null row."""
    rows = [
        (source.name, path, reason.value, detail)
        for i, source in enumerate(run.recipe.sources)
        for path in run.files[i]
        for reason, detail in run.reports[path].issues
    ]
    if not rows:
        return
    for source, *_ in rows:
        run.counts[source]["file_issues"] += 1
    n = len(rows)
    src, paths, reasons, details = (list(c) for c in zip(*rows, strict=True))
    quarantine = table_of(QUARANTINE, n, source=src, file=paths, stage="read", reason=reasons, detail=details)
    ledger = quarantine_ledger(quarantine, "read", run.run_id)
    name = part_name(run.run_id, STEP_READ, 0)
    run.add(
        [
            write_part(run.lake.root, "silver/quarantine", name, quarantine),
            write_part(run.lake.root, "ledger", name, ledger),
        ]
    )


def _dedup(run: _Run, engine: LocalEngine, candidates: list[Staged]) -> pa.Table:
    """The duplicates among all candidates (ordinal, id, kept ordinal, kept id), logged as ledger drops."""
    started = time.perf_counter()
    files = [str(run.lake.root / s.keys.table / s.keys.name) for s in candidates]
    # On the pool, when there is one: DuckDB's working memory then never joins the parent's.
    (dups,) = engine.map(exact_duplicates, [files])
    if dups.num_rows:
        kept_source, kept_file, kept_row = run.addresses.of(dups["kept_ord"])
        detail = pc.binary_join_element_wise(
            "kept ", kept_source, ":", kept_file, ":", pc.cast(kept_row, pa.string()), ""
        )
        reason = pc.binary_join_element_wise(f"{Reason.duplicate.value}:", dups["kept_id"], "")
        drops = run.addresses.ledger(dups["_ord"], dups["id"], "dedup", "drop", reason, detail, run.run_id)
        run.add([write_part(run.lake.root, "ledger", part_name(run.run_id, STEP_DEDUP, 0), drops)])
        for item in pc.value_counts(drops["source"]).to_pylist():
            run.counts[item["values"]]["dropped"] += item["counts"]
    run.timed("dedup", dups.num_rows, started)
    return dups


def _publish(run: _Run, engine: LocalEngine, candidates: list[Staged], dups: pa.Table) -> None:
    started = time.perf_counter()
    dropped = np.sort(dups["_ord"].to_numpy())
    run.progress.start("publish", sum(s.part.rows for s in candidates))

    split, addresses, stage_gold = run.recipe.gold.split, run.addresses, bool(run.recipe.gold.export)
    sizes = [(run.lake.root / s.part.table / s.part.name).stat().st_size for s in candidates]
    windows = _windows(candidates, sizes, PUBLISH_ROWS, PUBLISH_CHUNKS * run.recipe.engine.chunk_bytes)

    def tasks() -> Iterator[PublishTask]:
        for seq, window in enumerate(windows):
            # Parts hold increasing ordinals, so a window's duplicates are one slice of the sorted array.
            lo = np.searchsorted(dropped, window[0].first)
            hi = np.searchsorted(dropped, window[-1].last, side="right")
            yield PublishTask(run.lake.root, run.run_id, seq, window, dropped[lo:hi], split, addresses, stage_gold)

    for done in engine.map(run_publish, tasks()):
        run.add(done.parts)
        for source, n in done.silver.items():
            run.counts[source]["silver"] += n
        run.progress.advance(sum(done.silver.values()))
    run.progress.finish()
    _reconcile(run)
    run.will_commit("silver/records", RECORD)
    for regime in Regime:
        for split in SPLITS:
            table = gold_table(regime, split)
            run.counts["_gold"][table] = sum(p.rows for p in run.parts.get(table, []))
            run.will_commit(table, gold_schema(regime))
    run.timed("publish", sum(run.counts[s.name]["silver"] for s in run.recipe.sources), started)


def _windows(candidates: list[Staged], sizes: list[int], max_rows: int, max_bytes: int) -> list[tuple[Staged, ...]]:
    """Consecutive staged parts, grouped up to max_rows candidates and max_bytes of staged Arrow a group (a part
    over either limit is a group alone)."""
    windows: list[list[Staged]] = []
    rows, size = max_rows, max_bytes  # as if a full group were open, so the first part opens one
    for staged, nbytes in zip(candidates, sizes, strict=True):
        if rows + staged.part.rows > max_rows or size + nbytes > max_bytes:
            windows.append([])
            rows = size = 0
        windows[-1].append(staged)
        rows += staged.part.rows
        size += nbytes
    return [tuple(w) for w in windows]


def _plan_tokenize(recipe: Recipe) -> TokenizePlan | None:
    if recipe.gold.tokenize is None:
        return None
    try:
        return plan_tokenize(recipe.gold.tokenize)
    except TemplateError as e:
        raise RecipeError(f"gold.tokenize: {e}") from None
    except Exception as e:  # noqa: BLE001 - an unreadable tokenizer config, a template that raises when probed
        raise RecipeError(
            f"gold.tokenize: cannot use {recipe.gold.tokenize.tokenizer}: {type(e).__name__}: {e}"
        ) from None


def _tokenize(run: _Run, engine: LocalEngine, plan: TokenizePlan) -> None:
    """Every gold table -> gold/tokenized/<fingerprint>/<regime>/<split>, one task per row group of a gold part;
    then packing."""
    started = time.perf_counter()
    gold_files = [
        (regime, split, file, row_group)
        for regime in Regime
        for split in SPLITS
        for file in run.staged_files(gold_table(regime, split))
        for row_group in range(pq.ParquetFile(file).metadata.num_row_groups)
    ]
    # seq runs over all tasks: their quarantine and ledger parts share two tables and must not share names.
    tasks = [
        TokenizeTask(
            run.lake.root,
            run.run_id,
            seq,
            file,
            row_group,
            regime,
            plan.table(regime, split),
            plan.quarantine,
            plan.spec,
            plan.settings,
        )
        for seq, (regime, split, file, row_group) in enumerate(gold_files)
    ]
    counts: dict[str, Counter] = defaultdict(Counter)
    run.progress.start("tokenize", len(tasks))
    for done in engine.map(run_tokenize, tasks):
        run.add(done.parts)
        counts[done.output].update(examples=done.examples, rejected=done.rejected)
        run.progress.advance(1)
    run.progress.finish()
    for regime in Regime:
        for split in SPLITS:
            run.will_commit(plan.table(regime, split), TOKENIZED[regime])
    run.will_commit(plan.quarantine, TOKENIZE_QUARANTINE)
    run.tokenized = {
        "fingerprint": plan.fingerprint,
        "template": plan.template_name,
        "tables": {table: dict(c) for table, c in sorted(counts.items())},
    }
    if plan.pack:
        run.tokenized["packing"] = _pack(run, engine, plan)
    run.timed("tokenize", sum(c["examples"] + c["rejected"] for c in counts.values()), started)


def _pack(run: _Run, engine: LocalEngine, plan: TokenizePlan) -> dict:
    """gold/tokenized/<fp>/sft_packed/<split>: each split's examples packed in windows of consecutive parts."""
    tasks = []
    for split in SPLITS:
        files = run.staged_files(plan.table(Regime.sft, split))
        for window in pack_windows([part_size(f) for f in files]):
            files_in = [files[i] for i in window]
            tasks.append(
                PackTask(
                    run.lake.root, run.run_id, len(tasks), files_in, plan.packed_table(split), plan.settings.max_length
                )
            )
    per_split: dict[str, list[PackStats]] = defaultdict(list)
    for task, (parts, stats) in zip(tasks, engine.map(run_pack, tasks), strict=True):
        run.add(parts)
        per_split[task.output].append(stats)
    report = {}
    for split in SPLITS:
        table = plan.packed_table(split)
        run.will_commit(table, PACKED)
        stats = per_split.get(table, [])
        total = PackStats(
            plan.settings.max_length,
            sum(s.examples for s in stats),
            sum(s.tokens for s in stats),
            sum(s.bins for s in stats),
        )
        report[table] = {
            k: getattr(total, k) for k in ("examples", "tokens", "bins", "lower_bound", "efficiency", "overhead")
        }
    return report


def _reconcile(run: _Run) -> None:
    """Every bronze row is in silver, quarantined or dropped with a reason; else nothing is published."""
    for source in run.recipe.sources:
        c = run.counts[source.name]
        if c["bronze"] != c["silver"] + c["quarantined"] + c["dropped"]:
            raise RuntimeError(f"counts do not reconcile for source {source.name}: {dict(c)}; nothing was published")


def _export(run: _Run, engine: LocalEngine) -> Path:
    """Every gold table exported into staging; they replace the lake's exports once all commits are done."""
    started = time.perf_counter()
    staging = run.lake.root / "_staging" / run.run_id / "exports"
    tables = [(regime, split) for regime in Regime for split in SPLITS]
    # Largest tables first, so the last task to finish is a small one.
    tables.sort(key=lambda t: -run.counts["_gold"].get(gold_table(*t), 0))
    tasks = [
        ExportTask(
            run.staged_files(gold_staging(run.run_id, gold_table(regime, split))),
            gold_schema(regime),
            regime,
            split,
            staging,
            fmt,
        )
        for regime, split in tables
        for fmt in run.recipe.gold.export
    ]
    for _ in engine.map(run_export, tasks):
        pass
    run.timed("export", sum(run.counts["_gold"].values()), started)
    return staging


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
        "tokenized": run.tokenized,
        "peak_rss_mb": peak_rss_mb(),
    }
