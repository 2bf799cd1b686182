"""`tunelake build`: sources -> bronze -> silver -> gold, one Delta commit per table, and a manifest.

The flow, in passes over the data run by the engine's workers (see tasks.py), around the recipe's chain of stages
(see runner.py for how a chain becomes passes):
1. ingest (row-local): raw chunks -> bronze rows, quarantined rows and ledger rows, written by the worker as
   Parquet parts; candidate records through the first row-local stages, staged as Arrow, with the columns the
   first global step reads.
2. each global step (e.g. exact dedup, DuckDB over the staged columns) decides which candidates leave; a later
   run of row-local stages is a pass over the staged candidates.
3. publish (per window of staged parts): candidates minus decisions, through the last row-local stages ->
   silver/records and, split by group, the gold tables (also staged as Arrow for the exports), or a window's
   outputs linked from the publish cache where nothing that decides them changed (publish_cache.py); then
   tokenization, trainer exports and the manifest.
Each table's new version is published in one commit, so a killed build leaves every table readable at its
previous version, and re-running it gives the same result.
"""

from __future__ import annotations

import itertools
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tunelake import __version__, shift, tables
from tunelake.address import MAX_FILES, SOURCE_SHIFT, Addresses
from tunelake.audit import run_audits
from tunelake.cache import FileHashes, IngestCache, ReuseTask, entry_key, ingest_settings, run_reuse
from tunelake.engine.local import LocalEngine, give_back_memory
from tunelake.engine.parts import Part, part_name, write_part
from tunelake.engine.protocol import Engine
from tunelake.gold.export import ExportTask, run_export
from tunelake.gold.freeze import refuse_unkept_frozen_sets
from tunelake.gold.project import gold_schema
from tunelake.gold.tokenize.pack import PackStats, pack_windows, part_size
from tunelake.gold.tokenize.stage import PACKED, TOKENIZED, TokenizePlan, plan_tokenize
from tunelake.gold.tokenize.template import TemplateError
from tunelake.ingest.adapters import ADAPTERS, FormatError, detect_format, whole_groups
from tunelake.ingest.adapters.pairs import ratings_policy
from tunelake.ingest.readers import FileReport, RawChunk, expand, read_chunks
from tunelake.lake import Lake, new_run_id
from tunelake.publish_cache import (
    CachedPublish,
    PublishCache,
    part_identity,
    publish_settings,
    run_cached_publish,
    window_key,
)
from tunelake.recipe import Recipe, RecipeError, Source
from tunelake.runner import Segment, StageCount, count_of, global_verdicts, segments
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
from tunelake.silver.canonicalize import FilePlan, SourcePlan, refuse_split_groups
from tunelake.stage import DECISIONS, Decisions, GlobalStage, Stage, StagedRows
from tunelake.tables import SPLITS
from tunelake.tasks import (
    STEP_CANONICALIZE,
    STEP_READ,
    CanonicalizeDone,
    CanonicalizeTask,
    PackTask,
    Pass,
    PassDone,
    PublishDone,
    PublishTask,
    RestageTask,
    Staged,
    TokenizeTask,
    Window,
    annotations_table,
    candidates_table,
    columns_table,
    global_step,
    gold_staging,
    group_runs_table,
    pass_step,
    publish_step,
    run_canonicalize,
    run_pack,
    run_restage,
    run_tokenize,
)

DETECT_SAMPLE = 200  # rows parsed from the start of a file to detect its format
# Candidates per publish (or later row-local) task, and their staged size in chunks (engine.chunk_bytes): each
# file written costs milliseconds whatever its size, and one canonicalize chunk is too small a unit for the nine
# gold tables (its validation rows of a regime are a few dozen). The size limit keeps long records from making a
# task large.
PUBLISH_ROWS = 16_384
PUBLISH_CHUNKS = 4
GLOBAL_MEMORY = "256MB"  # DuckDB's working memory in a global step, in one worker


class QuarantineRateExceeded(RuntimeError):
    """A source lost more of its rows to quarantine than the recipe allows: likely a regression, not bad data."""


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
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # per source
    gold: dict[str, int] = field(default_factory=dict)  # rows per gold table
    stage_counts: dict[str, StageCount] = field(default_factory=dict)  # per stage, in chain order
    parts: dict[str, list[Part]] = field(default_factory=lambda: defaultdict(list))  # table -> parts to commit
    passes: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    tokenized: dict | None = None
    stage_reports: dict[str, dict] = field(default_factory=dict)  # per stage that reports (Stage.report)
    audits: dict[str, dict] = field(default_factory=dict)  # per audit that found something to audit
    schemas: dict[str, pa.Schema] = field(default_factory=dict)  # tables to commit, in order
    previous: dict = field(default_factory=dict)  # the manifest of the last complete build ({} if none)
    cache: IngestCache | None = None
    hashes: FileHashes | None = None
    read_tables: dict[str, int] = field(default_factory=dict)  # published tables the chain reads -> version
    shas: dict[str, str | None] = field(default_factory=dict)  # input file -> its sha256 (None: not known yet)
    keys: dict[str, str] = field(default_factory=dict)  # input file -> its ingest cache key (where the sha is known)
    reused: set[str] = field(default_factory=set)  # input files whose ingest outputs came from the cache
    fresh: dict[str, list[CanonicalizeDone]] = field(default_factory=lambda: defaultdict(list))  # read this build
    identities: dict[str, str] = field(default_factory=dict)  # staged part name -> what decides its rows (ingest's)
    windows: list[PublishDone] = field(default_factory=list)  # what publish did with each window

    @property
    def addresses(self) -> Addresses:
        return Addresses(tuple(s.name for s in self.recipe.sources), tuple(tuple(f) for f in self.files))

    def add(self, parts: list[Part]) -> None:
        for part in parts:
            self.parts[part.table].append(part)

    def tally(self, done: PassDone) -> None:
        """A pass's parts and counts: per stage, and each source's dropped and quarantined rows."""
        self.add(done.parts)
        for count in done.stage_counts:
            self.stage_counts.setdefault(count.name, StageCount(count.name, count.version, count.kind)).add(count)
        for (source, action), n in done.per_source.items():
            self.counts[source][action] += n

    def will_commit(self, table: str, schema: pa.Schema) -> None:
        """Mark a table's staged parts as its next version (for an append-only table, as what the version adds);
        every table is committed at the end of the build."""
        self.schemas[table] = schema

    def staged_files(self, table: str) -> list[str]:
        """The parts this build wrote for a table, in order (what later stages read before anything commits)."""
        return [
            str(self.lake.root / p.table / p.name) for p in sorted(self.parts.get(table, []), key=lambda p: p.name)
        ]

    def commit_all(self) -> None:
        for table, schema in self.schemas.items():
            parts, append = self.parts.get(table, []), tables.mode_of(table) is tables.Mode.append
            if append and not parts and self.lake.exists(table):  # nothing new: the published version stands
                self.tables[table] = self.lake.version(table)
            else:
                self.tables[table] = self.lake.commit(table, schema, parts, self.run_id, append)

    def timed(self, name: str, records: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.passes[name] = {
            "records": records,
            "seconds": round(seconds, 3),
            "records_per_s": round(records / seconds) if seconds > 0 else None,
        }


def peak_rss_mb() -> int:
    """Peak resident memory of this process or of any one worker, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, workers) / 1024)


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
    chain = recipe.stage_chain()
    segs = segments(chain)
    with lake.lock():
        run.cache, run.hashes = IngestCache(lake.root), FileHashes(lake.root)
        run.previous = (lake.manifests() or [{}])[-1]
        wanted = sorted({t for stage in chain for t in stage.reads_tables if lake.exists(t)})
        run.read_tables = {t: lake.version(t) for t in wanted}
        _cache_keys(run, segs[0])
        if _unchanged(run, recipe_sha256, chain):
            return {**run.previous, "unchanged": True}
        refuse_unkept_frozen_sets(lake, chain)
        try:
            with LocalEngine(recipe.engine.resolved_workers()) as engine:
                lake.finish_publishing()  # a build killed after its manifest, before its exports were in place
                lake.clear_staging()  # leftovers of a killed build
                lake.remove_orphans(run.run_id)
                staged = _ingest(run, engine, segs[0])
                windows = None
                for index, segment in enumerate(segs[:-1]):
                    decided, annotations = _global_steps(run, engine, index, segment.steps, staged)
                    windows = _windows(run, staged, decided, annotations)
                    if index + 1 < len(segs) - 1:  # a segment between two global steps: its own pass
                        staged = _restage(run, engine, index + 1, segs[index + 1], windows)
                        windows = None
                _publish(run, engine, windows or _windows(run, staged, np.empty(0, np.int64), ()), segs, chain)
                _check_quarantine_rates(run)
                if tokenize:
                    _tokenize(run, engine, tokenize, publish_step(len(segs)))
                run.will_commit(tables.LEDGER_NAME, LEDGER)
                _stage_reports(run, chain)
                _audits(run)
                exports = _export(run, engine, chain)
            # Nothing is committed until every stage has succeeded and the counts reconcile. The pool has shut down
            # by now: the commits and the manifest follow each other closely, and the manifest's peak memory counts
            # the reaped workers.
            run.commit_all()
            manifest = _manifest(run, recipe_sha256, started_at, chain)
            lake.write_manifest(manifest)  # publishes every commit above at once (see Lake.published)
            lake.replace_exports(exports)
            _cache_fresh_files(run)
            PublishCache(lake.root).put_fresh(run.run_id, run.windows)
            lake.clear_staging()
        except BaseException:
            _discard(run)
            raise
    return manifest


def _cache_fresh_files(run: _Run) -> None:
    """Keep what the ingest pass made of each file read this build, and every input's sha256, for the next."""
    reports = {}
    for path in run.fresh:
        report = run.reports[path]
        reports[path] = {
            "path": path,
            "sha256": report.sha256,
            "bytes": report.bytes,
            "rows": report.rows,
            "issues": [(r.value, d) for r, d in report.issues],
            "notes": report.notes,
            "format": run.formats.get(path),
        }
    run.cache.put_fresh(run.keys, run.fresh, reports)
    run.hashes.save(run.shas)


def _discard(run: _Run) -> None:
    """After a failed build (a full disk, a bug, Ctrl-C): remove its staging and every part it wrote into a table
    it did not commit, so nothing of it is left on the disk."""
    run.lake.clear_staging()
    for part in run.lake.root.rglob(f"part-{run.run_id}-*"):
        if part.parent.relative_to(run.lake.root).as_posix() not in run.tables:
            part.unlink(missing_ok=True)


def _chunks(
    run: _Run, source_index: int, source: Source, file_index: int, path: str
) -> Iterator[tuple[RawChunk, FilePlan]]:
    plan = SourcePlan(
        source_index,
        source.name,
        source.regime,
        source.license,
        source.origin,
        source.meta,
        run.recipe.silver.max_chars,
        ratings_policy(run.recipe),
    )
    report = run.reports[path] = FileReport(path)
    chunks = read_chunks(path, report, run.recipe.engine.chunk_bytes)
    first = next(chunks, None)
    if first is None:
        return
    file_plan = _file_plan(plan, file_index, source.format, first)
    run.formats[path] = file_plan.adapter or file_plan.format_error[0].value
    chunks = itertools.chain([first], chunks)
    if file_plan.adapter:
        chunks = whole_groups(ADAPTERS[file_plan.adapter], chunks)
    for chunk in chunks:
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


def _ingest(run: _Run, engine: Engine, segment: Segment) -> list[Staged]:
    """Raw chunks through canonicalize and the first segment's row-local stages, or a file's cached outputs where
    nothing that decides them changed; returns the staged candidate parts, in input order. Once every file is
    read, each file's sha256 and ingest cache key are known, and so is each staged part's identity (see
    publish_cache.py)."""
    started = time.perf_counter()
    pass_ = Pass(0, segment.rows, segment.steps, run.addresses)
    staged, origins, chunks = [], [], Counter()
    run.progress.start("canonicalize", None)  # rows are counted as they are read; the total is unknown up front
    for done in engine.map(_run_ingest, _ingest_tasks(run, pass_, segment)):
        run.tally(done)
        if done.staged:
            staged.append(done.staged)
            origins.append((done.file, chunks[done.file]))
        chunks[done.file] += 1
        run.counts[done.source].update({k: done.counts[k] for k in ("bronze", "siblings", "quarantined")})
        run.progress.advance(done.counts["bronze"])
        if done.fresh:
            run.fresh[done.file].append(done)
    run.progress.finish()
    if files := run.staged_files(group_runs_table(run.run_id)):  # a grouped format's file must be sorted by key
        refuse_split_groups(files, GLOBAL_MEMORY)
    run.shas = {path: run.shas[path] or run.reports[path].sha256 for path in run.shas}
    _keys(run, segment, run.shas)
    for part, (file, chunk) in zip(staged, origins, strict=True):
        if file in run.keys:
            run.identities[part.part.name] = part_identity(run.keys[file], chunk, part.first)
    _file_issues(run)
    for source in run.recipe.sources:
        run.will_commit(tables.bronze(source.name), BRONZE)
    run.will_commit(tables.QUARANTINED, QUARANTINE)
    run.timed("canonicalize", sum(c["bronze"] for c in run.counts.values()), started)
    return staged


def _cache_keys(run: _Run, segment: Segment) -> None:
    """Each input file's sha256 and ingest cache key (see cache.py), before anything is read. A lake with no
    build before has nothing to match: its files are hashed only as they are read."""
    known = bool(run.previous) or run.cache.root.exists()
    run.shas = {path: run.hashes.sha256(path, hash_now=known) for files in run.files for path in files}
    _keys(run, segment, run.shas)


def _keys(run: _Run, segment: Segment, shas: dict[str, str | None]) -> None:
    settings = ingest_settings(run.recipe, segment)
    for source, files in zip(run.recipe.sources, run.files, strict=True):
        for path in files:
            if shas[path]:
                run.keys[path] = entry_key(shas[path], path, settings[source.name])


def _unchanged(run: _Run, recipe_sha256: str, chain: list) -> bool:
    """Whether the last complete build had this recipe, chain, tunelake version, these very input files and the
    same versions of the lake tables its stages read (so a build now would publish the same lake): then there is
    nothing to do."""
    last = run.previous
    return (
        bool(last)
        and last.get("read_tables", {}) == run.read_tables
        and last.get("recipe_sha256") == recipe_sha256
        and last.get("tunelake_version") == __version__
        and last.get("chain") == [stage.describe() for stage in chain]
        and [(i["path"], i["sha256"]) for i in last["inputs"]] == [(p, run.shas[p]) for f in run.files for p in f]
        and all(p in run.keys and run.cache.has(run.keys[p]) for f in run.files for p in f)
    )


def _ingest_tasks(run: _Run, pass_: Pass, segment: Segment) -> Iterator[CanonicalizeTask | ReuseTask]:
    """A task per chunk, in input order: reuse where the ingest cache holds the file, else read it."""
    in_bronze = run.previous.get("bronze_files", {})
    seq = 0
    for i, source in enumerate(run.recipe.sources):
        for file_index, path in enumerate(run.files[i]):
            sha, key = run.shas[path], run.keys.get(path)
            entry = run.cache.get(key) if key else None
            if entry is not None:
                run.reused.add(path)
                run.reports[path] = FileReport(**{k: v for k, v in entry.report.items() if k != "format"})
                run.reports[path].issues = [(Reason(r), d) for r, d in run.reports[path].issues]
                run.formats[path] = entry.report["format"]
                for chunk in entry.chunks:
                    name = part_name(run.run_id, STEP_CANONICALIZE, seq)
                    columns = columns_table(run.run_id, 0) if segment.steps else None
                    yield ReuseTask(
                        run.lake.root,
                        run.cache.root / key,
                        chunk,
                        source.name,
                        i,
                        file_index,
                        path,
                        candidates_table(run.run_id, 0),
                        columns,
                        name,
                    )
                    seq += 1
                continue
            bronze = sha not in in_bronze.get(source.name, ())
            for chunk, plan in _chunks(run, i, source, file_index, path):
                yield CanonicalizeTask(run.lake.root, run.run_id, seq, chunk, plan, pass_, bronze)
                seq += 1


def _run_ingest(task: CanonicalizeTask | ReuseTask) -> CanonicalizeDone:
    if isinstance(task, CanonicalizeTask):
        return run_canonicalize(task)
    return run_reuse(task)


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
            write_part(run.lake.root, tables.QUARANTINED, name, quarantine),
            write_part(run.lake.root, tables.LEDGER_NAME, name, ledger),
        ]
    )


@dataclass
class StepDone:
    """What a global step sends back to the parent: the parts it wrote, its counts, the ordinals it removed (sorted)
    and the file of its annotations (if any); never its decisions, which grow with the input."""

    parts: list[Part]
    count: StageCount
    per_source: Counter
    removed: np.ndarray
    annotations: tuple[str, ...]


def _run_step(step: GlobalStage, rows: StagedRows, root: Path, run_id: str, name: str, count: StageCount) -> StepDone:
    """A global step, where it runs (on the pool when there is one, alone when large: its working memory never joins
    the parent's): its decisions become ledger and quarantine parts (named `name`) and its annotations a part, written
    here."""
    decided = step.run(rows, GLOBAL_MEMORY) if rows.files else Decisions(DECISIONS.empty_table())
    give_back_memory()  # what the step's work took, before its verdicts are made
    verdicts = global_verdicts(step, decided, rows.addresses, run_id, count)
    quarantine, ledger = verdicts.tables()
    written = [write_part(root, tables.QUARANTINED, name, quarantine)]
    written.append(write_part(root, tables.LEDGER_NAME, name, ledger))
    annotations = ()
    if decided.annotations is not None and decided.annotations.num_rows:
        notes = decided.annotations.sort_by("_ord")
        part = write_part(root, annotations_table(run_id, step), "annotations.parquet", notes, 65_536)
        annotations = (str(root / part.table / part.name),)
    removed = np.sort(decided.decisions["_ord"].to_numpy())
    return StepDone([p for p in written if p], count, verdicts.per_source, removed, annotations)


def _global_steps(
    run: _Run, engine: Engine, index: int, steps: tuple[GlobalStage, ...], staged: list[Staged]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """A segment's global steps, one after another over the columns staged for them, each without the candidates
    the ones before removed; returns the sorted ordinals they removed and the files of their annotations."""
    removed, annotations = np.empty(0, np.int64), ()
    for position, step in enumerate(steps):
        decided, notes = _global(run, engine, index, position, step, staged, removed)
        removed, annotations = np.union1d(removed, decided), annotations + notes
    return removed, annotations


# A global step over at least this many records runs alone (Engine.run): at 1M records its peak beside two idle
# workers' ~200 MiB each was over the build's 1 GiB; on small inputs the ~2 s of fresh processes would be most of it.
ALONE_ROWS = 250_000


def _global(
    run: _Run,
    engine: Engine,
    index: int,
    position: int,
    step: GlobalStage,
    staged: list[Staged],
    removed: np.ndarray,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """One global step over the columns staged for it: its decisions go to the ledger and quarantine; returns the
    sorted ordinals it removed and the file of its annotations (if any)."""
    started = time.perf_counter()
    files = [str(run.lake.root / s.columns.table / s.columns.name) for s in staged]
    read = {t: run.lake.files(t, run.read_tables[t]) for t in step.reads_tables if t in run.read_tables}
    scratch = str(run.lake.root / tables.staged(run.run_id, f"scratch-{step.name}"))
    rows = StagedRows(files, run.addresses, step.name, removed, read, scratch)
    count = count_of(step)
    count.records_in = sum(s.part.rows for s in staged) - len(removed)
    name = part_name(run.run_id, global_step(index), position)
    args = (step, rows, run.lake.root, run.run_id, name, count)
    alone = count.records_in >= ALONE_ROWS
    done = engine.run(_run_step, *args, alone=alone) if rows.files else _run_step(*args)
    run.add(done.parts)
    done.count.seconds = time.perf_counter() - started
    run.tally(PassDone([], None, [done.count], done.per_source))
    run.timed(step.name, count.records_in, started)
    return done.removed, done.annotations


def _windows(run: _Run, staged: list[Staged], decided: np.ndarray, annotations: tuple[str, ...]) -> list[Window]:
    """The staged parts in windows (see group_parts), each with its slice of the decisions."""
    sizes = [(run.lake.root / s.part.table / s.part.name).stat().st_size for s in staged]
    windows = []
    for group in group_parts(staged, sizes, PUBLISH_ROWS, PUBLISH_CHUNKS * run.recipe.engine.chunk_bytes):
        # Parts hold increasing ordinals, so a window's decisions are one slice of the sorted array.
        lo = np.searchsorted(decided, group[0].first)
        hi = np.searchsorted(decided, group[-1].last, side="right")
        windows.append(Window(group, decided[lo:hi], annotations))
    return windows


def group_parts(staged: list[Staged], sizes: list[int], max_rows: int, max_bytes: int) -> list[tuple[Staged, ...]]:
    """Consecutive staged parts, grouped up to max_rows candidates and max_bytes of staged Arrow a group (a part
    over either limit is a group alone). A group spans two sources only where each fits in one group whole: a
    source added or changed then leaves the groups of every source too large for that as they were (and their
    publish cached), and small sources still share groups."""
    sources = [part.first >> SOURCE_SHIFT for part in staged]
    rows_in, bytes_in = Counter(), Counter()
    for source, part, nbytes in zip(sources, staged, sizes, strict=True):
        rows_in[source] += part.part.rows
        bytes_in[source] += nbytes
    small = {source for source in rows_in if rows_in[source] <= max_rows and bytes_in[source] <= max_bytes}
    groups: list[list[Staged]] = []
    rows, size = max_rows, max_bytes  # as if a full group were open, so the first part opens one
    for i, (part, nbytes) in enumerate(zip(staged, sizes, strict=True)):
        apart = i > 0 and sources[i] != sources[i - 1] and not {sources[i], sources[i - 1]} <= small
        if apart or rows + part.part.rows > max_rows or size + nbytes > max_bytes:
            groups.append([])
            rows = size = 0
        groups[-1].append(part)
        rows += part.part.rows
        size += nbytes
    return [tuple(g) for g in groups]


def _restage(run: _Run, engine: Engine, index: int, segment: Segment, windows: list[Window]) -> list[Staged]:
    """A segment between two global steps: the staged candidates, minus what the step before removed, through its
    row-local stages, staged again with the columns the next step reads."""
    started = time.perf_counter()
    pass_ = Pass(index, segment.rows, segment.steps, run.addresses)
    tasks = (
        RestageTask(run.lake.root, run.run_id, seq, window, pass_, pass_step(index))
        for seq, window in enumerate(windows)
    )
    staged = []
    for done in engine.map(run_restage, tasks):
        run.tally(done)
        staged += [done.staged] if done.staged else []
    run.timed(f"pass {index}", sum(s.part.rows for s in staged), started)
    return staged


def _publish(run: _Run, engine: Engine, windows: list[Window], segs: list[Segment], chain: list) -> None:
    started = time.perf_counter()
    run.progress.start("publish", sum(s.part.rows for w in windows for s in w.staged))
    index = len(segs) - 1
    # The last segment's row-local stages, unless the ingest pass ran them (a chain with no global step).
    rows = segs[-1].rows if index else ()
    pass_ = Pass(index, rows, (), run.addresses)
    silver = silver_schema(chain)
    stage_gold = bool(run.recipe.gold.export)
    gold = {regime: gold_schema(regime, chain) for regime in Regime}
    settings = publish_settings(silver, gold, run.recipe.gold.split, rows, stage_gold)
    tasks = (
        CachedPublish(
            PublishTask(
                run.lake.root,
                run.run_id,
                seq,
                publish_step(len(segs)),
                w,
                pass_,
                silver,
                gold,
                run.recipe.gold.split,
                stage_gold,
            ),
            window_key(settings, [run.identities.get(s.part.name) for s in w.staged], w.decided),
        )
        for seq, w in enumerate(windows)
    )
    for done in engine.map(run_cached_publish, tasks):
        run.windows.append(done)
        run.tally(done)
        for source, n in done.silver.items():
            run.counts[source]["silver"] += n
        run.progress.advance(sum(done.silver.values()))
    run.progress.finish()
    _reconcile(run)
    run.will_commit(tables.RECORDS, silver)
    for regime, _split, table in tables.gold_tables():
        run.gold[table] = sum(p.rows for p in run.parts.get(table, []))
        run.will_commit(table, gold_schema(regime, chain))
    run.timed("publish", sum(run.counts[s.name]["silver"] for s in run.recipe.sources), started)
    run.passes["publish"].update(windows=len(windows), reused_windows=sum(done.reused for done in run.windows))


def silver_schema(chain: list) -> pa.Schema:
    """The canonical schema, then the columns the chain's stages add, in chain order."""
    schema = RECORD
    for stage in chain:
        for added in stage.adds:
            schema = schema.append(added)
    return schema


def _plan_tokenize(recipe: Recipe) -> TokenizePlan | None:
    if recipe.gold.tokenize is None:
        return None
    try:
        return plan_tokenize(recipe.gold.tokenize)
    except (TemplateError, jinja2.TemplateError) as e:  # a bad tokenizer folder, or a template that raises
        raise RecipeError(f"gold.tokenize: cannot use {recipe.gold.tokenize.tokenizer}: {e}") from None


def _tokenize(run: _Run, engine: Engine, plan: TokenizePlan, after: int) -> None:
    """Every gold table -> gold/tokenized/<fingerprint>/<regime>/<split>, one task per row group of a gold part;
    then packing."""
    started = time.perf_counter()
    gold_files = [
        (regime, split, file, row_group)
        for regime, split, table in tables.gold_tables()
        for file in run.staged_files(table)
        for row_group in range(pq.ParquetFile(file).metadata.num_row_groups)
    ]
    # seq runs over all tasks: their quarantine and ledger parts share two tables and must not share names.
    tasks = [
        TokenizeTask(
            run.lake.root,
            run.run_id,
            after + 1,
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
        run.tokenized["packing"] = _pack(run, engine, plan, after + 2)
    run.timed("tokenize", sum(c["examples"] + c["rejected"] for c in counts.values()), started)


def _pack(run: _Run, engine: Engine, plan: TokenizePlan, step: int) -> dict:
    """gold/tokenized/<fp>/sft_packed/<split>: each split's examples packed in windows of consecutive parts."""
    tasks = []
    for split in SPLITS:
        files = run.staged_files(plan.table(Regime.sft, split))
        for window in pack_windows([part_size(f) for f in files]):
            files_in = [files[i] for i in window]
            tasks.append(
                PackTask(
                    run.lake.root,
                    run.run_id,
                    step,
                    len(tasks),
                    files_in,
                    plan.packed_table(split),
                    plan.settings.max_length,
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


def _stage_reports(run: _Run, chain: list) -> None:
    """Each reporting stage's summary of its own ledger rows and tally in this build (reused files' included)."""
    reporting = [stage for stage in chain if type(stage).report is not Stage.report]
    if not reporting:
        return
    ledger = ds.dataset(run.staged_files(tables.LEDGER_NAME), schema=LEDGER, format="parquet")
    for stage in reporting:
        count = run.stage_counts.get(stage.name)
        tally = count.tally if count is not None else Counter()
        report = stage.report(ledger.to_table(filter=pc.field("stage") == stage.name), tally)
        if report is not None:
            run.stage_reports[stage.name] = report


def _audits(run: _Run) -> None:
    """The audits over what this build publishes (its staged parts); lengths in tokens where it tokenizes."""
    started = time.perf_counter()
    tokenize = run.recipe.gold.tokenize
    run.audits = run_audits(run.staged_files, run.recipe.audits, tokenize.tokenizer if tokenize else None)
    run.timed("audits", sum(c["silver"] for c in run.counts.values()), started)


def _reconcile(run: _Run) -> None:
    """Every bronze row (and every further record a row gave) is in silver, quarantined or dropped with a reason,
    and every stage's rows are kept, dropped or quarantined; else nothing is published."""
    for source in run.recipe.sources:
        c = run.counts[source.name]
        if c["bronze"] + c["siblings"] != c["silver"] + c["quarantined"] + c["dropped"]:
            raise RuntimeError(f"counts do not reconcile for source {source.name}: {dict(c)}; nothing was published")
    kept = None
    for count in run.stage_counts.values():
        if not count.reconciles() or (kept is not None and count.records_in != kept):
            raise RuntimeError(
                f"stage counts do not reconcile at {count.name}: {count.report()}; nothing was published"
            )
        kept = count.kept


def _check_quarantine_rates(run: _Run) -> None:
    """A source that lost more than silver.max_quarantine_rate of its records to quarantine fails the build. Records,
    not rows: a row that gives several records (rated completions' pairs) may lose one of them alone."""
    limit = run.recipe.silver.max_quarantine_rate
    for source in run.recipe.sources:
        c = run.counts[source.name]
        made = c["bronze"] + c["siblings"]
        if made and c["quarantined"] / made > limit:
            top = _top_reasons(run, source.name)
            raise QuarantineRateExceeded(
                f"source {source.name!r}: {c['quarantined']} of {made} records quarantined "
                f"({c['quarantined'] / made:.0%}, above silver.max_quarantine_rate = {limit:g}); top reasons: "
                f"{top}. Nothing was published. Fix the source or its format, or raise the limit in the recipe."
            )


def _top_reasons(run: _Run, source: str, n: int = 3) -> str:
    """The source's most frequent quarantine reasons, read back from this build's quarantine parts."""
    found: Counter = Counter()
    for file in run.staged_files(tables.QUARANTINED):
        rows = pq.read_table(file, columns=["source", "reason"], filters=[("source", "=", source)])
        found.update(rows["reason"].to_pylist())
    return ", ".join(f"{reason} ({count})" for reason, count in found.most_common(n))


def _export(run: _Run, engine: Engine, chain: list) -> Path:
    """Every gold table exported into staging; they replace the lake's exports once all commits are done."""
    started = time.perf_counter()
    staging = run.lake.root / tables.staged(run.run_id, "exports")
    # Largest tables first, so the last task to finish is a small one.
    gold = sorted(tables.gold_tables(), key=lambda t: -run.gold[t[2]])
    tasks = [
        ExportTask(
            run.staged_files(gold_staging(run.run_id, table)),
            gold_schema(regime, chain),
            regime,
            split,
            staging,
            fmt,
        )
        for regime, split, table in gold
        for fmt in run.recipe.gold.export
    ]
    for _ in engine.map(run_export, tasks):
        pass
    run.timed("export", sum(run.gold.values()), started)
    return staging


def _bronze_files(run: _Run) -> dict[str, list[str]]:
    """The sha256 of every file each bronze table holds (bronze is append-only: the last build's, and this one's)."""
    held = {source: set(shas) for source, shas in run.previous.get("bronze_files", {}).items()}
    for i, source in enumerate(run.recipe.sources):
        held.setdefault(source.name, set()).update(
            run.reports[p].sha256 for p in run.files[i] if run.reports[p].sha256
        )
    return {source: sorted(shas) for source, shas in sorted(held.items())}


def _manifest(run: _Run, recipe_sha256: str, started_at: str, chain: list) -> dict:
    counts = {}
    for source in run.recipe.sources:
        c = run.counts[source.name]
        counts[source.name] = {
            k: c[k] for k in ("bronze", "siblings", "silver", "quarantined", "dropped", "file_issues")
        }
    inputs = [
        {
            "source": s.name,
            "path": p,
            "sha256": run.reports[p].sha256,
            "bytes": run.reports[p].bytes,
            "rows": run.reports[p].rows,
            "format": run.formats.get(p),
            "issues": [{"reason": r.value, "detail": d} for r, d in run.reports[p].issues],
            "notes": run.reports[p].notes,
            "reused": p in run.reused,
        }
        for i, s in enumerate(run.recipe.sources)
        for p in run.files[i]
    ]
    stages, warnings = {name: count.report() for name, count in run.stage_counts.items()}, []
    for name, count in run.stage_counts.items():
        if count.profile:
            stages[name]["shift"] = shift.findings(count.profile, run.recipe.silver.over_filter)
            warnings += [f"stage {name}: {w}" for w in stages[name]["shift"]["warnings"]]
    return {
        "run_id": run.run_id,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(),
        "tunelake_version": __version__,
        "recipe_sha256": recipe_sha256,
        "recipe": run.recipe.model_dump(mode="json"),
        "inputs": inputs,
        "tables": dict(sorted(run.tables.items())),
        "bronze_files": _bronze_files(run),
        "counts": counts,
        "gold": dict(sorted(run.gold.items())),
        "chain": [stage.describe() for stage in chain],
        "read_tables": run.read_tables,
        "stages": stages,
        "warnings": warnings,
        "reports": run.stage_reports,
        "audits": run.audits,
        "passes": run.passes,
        "tokenized": run.tokenized,
        "peak_rss_mb": peak_rss_mb(),
    }
