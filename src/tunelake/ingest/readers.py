"""Readers: files -> chunks of raw rows (JSON text, one per line), hashed as they are read.

Every format becomes the same thing, newline-separated JSON rows, so one row-local stage handles them all.
JSON Lines rows stay byte-for-byte as in the file; parquet, csv and JSON-array rows are serialised to JSON.
Problems with a whole file (empty, truncated, unreadable) are recorded on its FileReport, never raised.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from tunelake.schema import Reason

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_BOM = b"\xef\xbb\xbf"


@dataclass
class FileReport:
    path: str
    sha256: str = ""
    bytes: int = 0
    rows: int = 0  # rows handed on (blank lines are not rows)
    issues: list[tuple[Reason, str]] = field(default_factory=list)


@dataclass
class RawChunk:
    """Whole lines of raw rows; `first_row` is the 1-based number of the first line."""

    file: str
    first_row: int
    data: bytes


def expand(pattern: str) -> list[str]:
    """Files matching a path or glob, sorted so the build order never depends on the filesystem."""
    return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


class _Hashing:
    """A binary file wrapper that hashes every byte read through it."""

    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _text_kind(path: str) -> tuple[str, str]:
    """(container, compression) from the file name, e.g. ('jsonl', 'gz')."""
    name = path.lower()
    compression = next((c for c in ("gz", "zst") if name.endswith("." + c)), "")
    base = name.removesuffix("." + compression) if compression else name
    kind = next((s.lstrip(".") for s in SUFFIXES if base.endswith(s)), "jsonl")
    return kind, compression


def read_chunks(path: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    kind, compression = _text_kind(path)
    if kind in ("parquet", "csv") and not compression:
        yield from _table_chunks(path, kind, report, chunk_bytes)
    else:
        yield from _text_chunks(path, compression, report, chunk_bytes)
    if report.rows == 0 and not report.issues:
        report.issues.append((Reason.empty_file, "the file holds no rows"))


def _text_chunks(path: str, compression: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    with open(path, "rb") as f:
        hashing = _Hashing(f)
        stream = {
            "gz": lambda: gzip.GzipFile(fileobj=hashing),
            "zst": lambda: zstandard.ZstdDecompressor().stream_reader(hashing),
            "": lambda: hashing,
        }[compression]()
        pending, row, first = b"", 1, True
        try:
            while block := stream.read(chunk_bytes):
                if first:
                    first = False
                    if block.removeprefix(_BOM).lstrip()[:1] == b"[":
                        yield from _json_array(block + stream.read(), path, report, chunk_bytes)
                        return
                data = pending + block
                cut = data.rfind(b"\n") + 1
                if cut:
                    chunk, pending = data[:cut], data[cut:]
                    yield RawChunk(path, row, chunk)
                    report.rows += chunk.count(b"\n")
                    row += chunk.count(b"\n")
                else:
                    pending = data
        except EOFError as e:
            report.issues.append((Reason.truncated_file, f"the compressed stream ends early after row {row - 1}: {e}"))
        except (OSError, zlib.error, zstandard.ZstdError) as e:
            report.issues.append((Reason.unreadable_file, f"cannot decompress after row {row - 1}: {e}"))
        finally:
            hashing.drain()
            report.sha256, report.bytes = hashing.sha.hexdigest(), hashing.size
        if pending:
            yield RawChunk(path, row, pending)
            report.rows += 1


def _json_array(document: bytes, path: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    """A JSON document holding an array of rows; it is parsed whole, so its size bounds memory."""
    try:
        rows = orjson.loads(document.removeprefix(_BOM))
    except orjson.JSONDecodeError as e:
        report.issues.append((Reason.invalid_json, f"the JSON array does not parse: {e}"))
        return
    yield from _serialised(path, iter(rows), report, chunk_bytes)


def _serialised(path: str, rows: Iterator[object], report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    lines, size, first_row = [], 0, report.rows + 1
    for row in rows:
        line = orjson.dumps(row, default=str)
        lines.append(line)
        size += len(line) + 1
        report.rows += 1
        if size >= chunk_bytes:
            yield RawChunk(path, first_row, b"\n".join(lines) + b"\n")
            lines, size, first_row = [], 0, report.rows + 1
    if lines:
        yield RawChunk(path, first_row, b"\n".join(lines) + b"\n")


def _table_chunks(path: str, kind: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    report.sha256, report.bytes = sha.hexdigest(), Path(path).stat().st_size
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096) if kind == "parquet" else pacsv.open_csv(path)
        rows = (row for batch in batches for row in batch.to_pylist())
        yield from _serialised(path, rows, report, chunk_bytes)
    except Exception as e:  # noqa: BLE001 - any reader failure is a property of this file, not of the build
        report.issues.append((Reason.unreadable_file, f"cannot read {kind} after row {report.rows}: {e}"))
