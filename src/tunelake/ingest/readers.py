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
import pyarrow as pa
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

    def sample(self, limit: int) -> list[dict]:
        """The JSON objects among the first `limit` lines (what format detection looks at)."""
        rows = []
        for line in self.data.split(b"\n", limit)[:limit]:
            try:
                obj = orjson.loads(line.removeprefix(_BOM))
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
        return rows


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
    if kind in ("parquet", "csv"):
        yield from _table_chunks(path, kind, compression, report, chunk_bytes)
    else:
        yield from _text_chunks(path, compression, report, chunk_bytes)
    if report.rows == 0 and not report.issues:
        report.issues.append((Reason.empty_file, "the file holds no rows"))


def _text_chunks(path: str, compression: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    with open(path, "rb") as f:
        hashing = _Hashing(f)
        stream = {
            "gz": lambda: gzip.GzipFile(fileobj=hashing),
            "zst": lambda: _ZstdFrames(hashing),
            "": lambda: hashing,
        }[compression]()
        blocks = _blocks(stream, chunk_bytes)
        pending, row, first = b"", 1, True
        try:
            for block in blocks:
                if first:
                    first = False
                    if block.removeprefix(_BOM).lstrip()[:1] == b"[":
                        yield from _json_array(block + b"".join(blocks), path, report, chunk_bytes)
                        return
                data = pending + block
                cut = data.rfind(b"\n") + 1
                if cut:
                    chunk, pending = data[:cut], data[cut:]
                    yield RawChunk(path, row, chunk)
                    report.rows += _rows(chunk)
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
            report.rows += _rows(pending)


def _rows(data: bytes) -> int:
    """Rows in whole lines of text: lines that are not blank (a blank line is not a row, see canonicalize)."""
    return sum(1 for line in data.split(b"\n") if line.strip())


def _blocks(stream, chunk_bytes: int) -> Iterator[bytes]:
    """The decompressed stream in blocks of about chunk_bytes.

    Reads with read1 (one decompression step at a time) where the stream has it: when a file is cut short, the
    error comes only after every byte before the cut was given back. A plain read(n) raises with the bytes it had
    gathered in that call, so a truncated file smaller than a chunk lost every row.
    """
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    parts, size = [], 0
    try:
        while part := read(chunk_bytes - size):
            parts.append(part)
            size += len(part)
            if size >= chunk_bytes:
                yield b"".join(parts)
                parts, size = [], 0
    except Exception:
        if parts:
            yield b"".join(parts)
        raise
    if parts:
        yield b"".join(parts)


class _ZstdFrames:
    """The decompressed bytes of every frame of a zstd file; EOFError if the file ends inside a frame.

    zstandard's stream_reader returns a frame cut short as a clean end of file: a truncated file lost its last
    rows silently (or, cut inside its first block, passed for an empty file).
    """

    STEP = 1 << 16  # compressed bytes per step, so one step's output stays small for text

    def __init__(self, raw: _Hashing):
        self.raw = raw
        self.frame = None  # the decompressor of the frame being read; None between frames

    def read1(self, n: int = -1) -> bytes:
        while data := self.raw.read(self.STEP):
            out = []
            while data:
                if self.frame is None:
                    self.frame = zstandard.ZstdDecompressor().decompressobj()
                out.append(self.frame.decompress(data))
                data = b""
                if self.frame.eof:
                    data, self.frame = self.frame.unused_data, None
            if out := b"".join(out):
                return out
        if self.frame is not None:
            raise EOFError("the file ends inside a zstd frame")
        return b""


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


def _csv_as_text(path: str, codec: str | None) -> pacsv.CSVStreamingReader:
    """Every CSV column read as text: type guessing would turn "007" into 7 and "1.50" into 1.5, and fail on a
    column whose values change type after the first block."""
    names = pacsv.open_csv(pa.input_stream(path, compression=codec)).schema.names
    options = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    return pacsv.open_csv(pa.input_stream(path, compression=codec), convert_options=options)


def _table_chunks(path: str, kind: str, compression: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    report.sha256, report.bytes = sha.hexdigest(), Path(path).stat().st_size
    if report.bytes == 0:
        return  # an empty file, not an unreadable one (pyarrow refuses a 0-byte CSV or Parquet file)
    try:
        if kind == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        else:
            batches = _csv_as_text(path, {"gz": "gzip", "zst": "zstd"}.get(compression))
        rows = (row for batch in batches for row in batch.to_pylist())
        yield from _serialised(path, rows, report, chunk_bytes)
    except Exception as e:  # noqa: BLE001 - any reader failure is a property of this file, not of the build
        report.issues.append((Reason.unreadable_file, f"cannot read {kind} after row {report.rows}: {e}"))
