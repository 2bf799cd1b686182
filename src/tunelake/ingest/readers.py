"""Readers: files -> chunks of raw rows (JSON text, one per line), hashed as they are read.

Every format becomes the same thing, newline-separated JSON rows, so one row-local stage handles them all.
JSON Lines rows stay byte-for-byte as in the file; parquet, csv and JSON-document rows are serialised to JSON.
Problems with a whole file (empty, truncated, unreadable, not UTF-8, a row too long to hold) are recorded on its
FileReport, never raised; a CSV row that does not split into the header's fields is handed on as its text, which the
stage quarantines at its row number. Only errors that mean bad bytes are caught: any other is a bug, and raises.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import zstandard

from tunelake.schema import Reason

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_BOM = b"\xef\xbb\xbf"
# A row is held whole, several times over, on its way to silver (a build grows by about nine times its size): a
# longer one is reported as too_long and never held. A bound on memory; silver.max_chars decides what text is too long.
MAX_ROW_BYTES = 32 << 20
# The first bytes of compressed files: they decide how a file is read, whatever its name says.
_MAGIC = {b"\x1f\x8b": "gz", b"\x28\xb5\x2f\xfd": "zst"}
# Errors that mean a file's bytes are bad (gzip.BadGzipFile is an OSError); EOFError, a cut stream, is apart.
_UNREADABLE = (OSError, zlib.error, zstandard.ZstdError)
# For Parquet and CSV also Arrow's verdicts, and OverflowError: a date outside the years Python's datetime holds.
_UNREADABLE_TABLE = (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError)


def file_sha256(path: str) -> str:
    """A file's sha256, read in blocks: what names an input (and an eval file) in caches and manifests."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class FileReport:
    path: str
    sha256: str = ""
    bytes: int = 0
    rows: int = 0  # rows handed on (blank lines are not rows)
    issues: list[tuple[Reason, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the file was read, where that was not the obvious way


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


def read_chunks(
    path: str, report: FileReport, chunk_bytes: int, max_row_bytes: int = MAX_ROW_BYTES
) -> Iterator[RawChunk]:
    """The file's rows in chunks of about chunk_bytes. A JSON Lines row longer than max_row_bytes is not read: it
    is reported as too_long, and its row number stays taken."""
    kind, compression = _text_kind(path)
    if kind != "parquet":
        compression = _compression(path, compression, report)
    if kind in ("parquet", "csv"):
        yield from _table_chunks(path, kind, compression, report, chunk_bytes)
    else:
        yield from _text_chunks(path, kind, compression, report, chunk_bytes, max_row_bytes)
    if report.rows == 0 and not report.issues:
        report.issues.append((Reason.empty_file, "the file holds no rows"))


def grouped_chunks(
    chunks: Iterator[RawChunk], key_of: Callable[[bytes], bytes | None], max_run_bytes: int = MAX_ROW_BYTES
) -> Iterator[RawChunk]:
    """Chunks of a grouped format's file, cut only where the group key changes: each chunk's trailing run of rows
    with its last key is held back and starts the next chunk, so a run of consecutive rows with one key is always in
    one chunk. Only the lines of that run (and the one before it) are parsed, from the end (key_of: a line's key,
    None for a line with none: it stays with the run around it). A run longer than max_run_bytes is cut where the
    chunk ends, as it cannot be held: the build then finds its key twice and refuses the file."""
    held: RawChunk | None = None
    for chunk in chunks:
        if held is not None:
            chunk = RawChunk(chunk.file, held.first_row, held.data + chunk.data)
        cut = _last_run_start(chunk.data, key_of)
        if cut == 0 and len(chunk.data) <= max_run_bytes:
            held = chunk
            continue
        cut = cut or len(chunk.data)
        head, tail = chunk.data[:cut], chunk.data[cut:]
        held = RawChunk(chunk.file, chunk.first_row + head.count(b"\n"), tail) if tail else None
        yield RawChunk(chunk.file, chunk.first_row, head)
    if held is not None:
        yield held


def _last_run_start(data: bytes, key_of: Callable[[bytes], bytes | None]) -> int:
    """The offset of the first line of the data's trailing run of rows with one key (0: the whole data is one run);
    len(data) when no line has a key."""
    last, end = None, len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end - 1) + 1  # the line data[start:end], its newline included
        line = data[start:end].rstrip(b"\r\n")
        key = key_of(line) if line.strip() else None
        if key is not None:
            if last is not None and key != last:
                return end
            last = key
        end = start
    return 0 if last is not None else len(data)


def _compression(path: str, named: str, report: FileReport) -> str:
    """The compression the file's first bytes show (gzip bytes in a file named .jsonl are still gzip), else the
    one its name gives (a damaged .gz is then reported as such, not read as binary rows)."""
    with open(path, "rb") as f:
        head = f.read(4)
    found = next((c for magic, c in _MAGIC.items() if head.startswith(magic)), None)
    if found is None or found == named:
        return named
    report.notes.append(f"read as {found}: its first bytes are {found}'s, whatever its name says")
    return found


def _text_chunks(
    path: str, kind: str, compression: str, report: FileReport, chunk_bytes: int, max_row_bytes: int
) -> Iterator[RawChunk]:
    lines = _Lines(path, report, max_row_bytes)
    with open(path, "rb") as f:
        hashing = _Hashing(f)
        stream = {
            "gz": lambda: gzip.GzipFile(fileobj=hashing),
            "zst": lambda: _ZstdFrames(hashing),
            "": lambda: hashing,
        }[compression]()
        try:
            blocks = _blocks(stream, chunk_bytes)
            first = next(blocks, b"")
            if encoding := _wide_encoding(first):
                iconv = encoding.partition(" ")[0]
                detail = f"the file is {encoding} text, not UTF-8: convert it (e.g. iconv -f {iconv} -t UTF-8)"
                report.issues.append((Reason.invalid_utf8, detail))
            elif _is_document(first, kind):
                yield from _json_document(first + b"".join(blocks), lines, report, chunk_bytes)
            else:
                if b"\r" in first and b"\n" not in first:  # old Mac line ends: a CR alone ends each line
                    report.notes.append("lines end with CR alone: read as line ends")
                    first, blocks = first.replace(b"\r", b"\n"), (b.replace(b"\r", b"\n") for b in blocks)
                for block in itertools.chain([first], blocks):
                    yield from lines.feed(block)
        except EOFError as e:
            detail = f"the compressed stream ends early after row {lines.row - 1}: {e}"
            report.issues.append((Reason.truncated_file, detail))
        except _UNREADABLE as e:
            report.issues.append((Reason.unreadable_file, f"cannot decompress after row {lines.row - 1}: {e}"))
        finally:
            hashing.drain()
            report.sha256, report.bytes = hashing.sha.hexdigest(), hashing.size
    yield from lines.close()


class _Lines:
    """Cuts text blocks into chunks of whole lines, numbered from 1.

    A line longer than max_row_bytes is never held: its bytes are counted and let go as they arrive, an empty line
    (not a row) takes its place, so the rows after it keep their numbers, and it is reported as too_long.
    """

    def __init__(self, path: str, report: FileReport, max_row_bytes: int):
        self.path, self.report, self.limit = path, report, max_row_bytes
        self.row = 1  # the number of the next line to hand on
        self.pending = b""  # the start of a line whose end has not come yet
        self.dropping = 0  # bytes so far of an over-long line being let go; 0 when there is none

    def feed(self, block: bytes) -> Iterator[RawChunk]:
        if self.dropping:
            end = block.find(b"\n")
            if end < 0:
                self.dropping += len(block)
                return
            self._too_long(self.row, self.dropping + end)
            self.dropping, block = 0, block[end:]  # its newline stays: the empty line in its place
        data = self.pending + block
        cut = data.rfind(b"\n") + 1
        chunk, self.pending = data[:cut], data[cut:]
        if len(self.pending) > self.limit:
            self.dropping, self.pending = len(self.pending), b""
        if chunk:
            yield self._chunk(chunk)

    def close(self) -> Iterator[RawChunk]:
        if self.dropping:
            self._too_long(self.row, self.dropping)
        elif self.pending:
            yield self._chunk(self.pending)

    def _chunk(self, data: bytes) -> RawChunk:
        if len(data) > self.limit:  # it may hold a whole over-long line
            lines = data.split(b"\n")
            for i, line in enumerate(lines):
                if len(line) > self.limit:
                    self._too_long(self.row + i, len(line))
                    lines[i] = b""
            data = b"\n".join(lines)
        chunk = RawChunk(self.path, self.row, data)
        self.report.rows += _rows(data)
        self.row += data.count(b"\n")
        return chunk

    def _too_long(self, row: int, size: int) -> None:
        detail = f"row {row} is {size} bytes, over the {self.limit} a row may have (it would be held whole): not read"
        self.report.issues.append((Reason.too_long, detail))


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
    except (EOFError, *_UNREADABLE):
        if parts:
            yield b"".join(parts)
        raise
    if parts:
        yield b"".join(parts)


class _ZstdFrames:
    """The decompressed bytes of every frame of a zstd file; EOFError if the file ends inside a frame.

    zstandard's stream_reader returns a frame cut short as a clean end of file: a truncated file lost its last
    rows silently (or, cut inside its first block, passed for an empty file). Bytes that do not decompress (junk
    after the last frame, a damaged frame) raise ZstdError naming their offset, once the frames before them are
    given back.
    """

    STEP = 1 << 16  # compressed bytes per step, so one step's output stays small for text

    def __init__(self, raw: _Hashing):
        self.raw = raw
        self.frame = None  # the decompressor of the frame being read; None between frames
        self.start = 0  # the offset in the file of that frame
        self.error: zstandard.ZstdError | None = None  # raised once the bytes before it are given back

    def read1(self, n: int = -1) -> bytes:
        if self.error:
            raise self.error
        while data := self.raw.read(self.STEP):
            out = []
            try:
                while data:
                    if self.frame is None:
                        self.frame = zstandard.ZstdDecompressor().decompressobj()
                        self.start = self.raw.size - len(data)
                    out.append(self.frame.decompress(data))
                    data = b""
                    if self.frame.eof:
                        data, self.frame = self.frame.unused_data, None
            except zstandard.ZstdError as e:
                self.error = zstandard.ZstdError(f"the zstd data from offset {self.start} does not decompress ({e})")
                if not out:
                    raise self.error from e
            if out := b"".join(out):
                return out
        if self.frame is not None:
            raise EOFError("the file ends inside a zstd frame")
        return b""


# Text in UTF-16 or UTF-32: a byte-order mark, or the NUL bytes of a first two ASCII characters such as '{"'.
_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32LE",
    b"\x00\x00\xfe\xff": "UTF-32BE",
    b"\xff\xfe": "UTF-16LE",
    b"\xfe\xff": "UTF-16BE",
}
_WIDE_NULS = {
    (False, True, True, True): "UTF-32LE",
    (True, True, True, False): "UTF-32BE",
    (False, True, False, True): "UTF-16LE",
    (True, False, True, False): "UTF-16BE",
}


def _wide_encoding(first: bytes) -> str | None:
    """The UTF-16 or UTF-32 encoding the file's first bytes show, if any (read as UTF-8, each row would be
    quarantined alone as 'byte 0 is not UTF-8')."""
    bom = next((name for bom, name in _WIDE_BOMS.items() if first.startswith(bom)), None)
    if bom:
        return f"{bom} (with a byte-order mark)"
    return _WIDE_NULS.get(tuple(b == 0 for b in first[:4])) if len(first) >= 4 else None


_FIRST_LINE = re.compile(rb"[^\r\n]*[\r\n]")


def _is_document(first: bytes, kind: str) -> bool:
    """Whether the text is one JSON document rather than JSON Lines: an array, or, in a .json file, an object
    whose first line is not a whole row (pretty-printed; read line by line, each line was one invalid_json)."""
    text = first.removeprefix(_BOM).lstrip()
    if text[:1] == b"[":
        return True
    line = _FIRST_LINE.match(text) if kind == "json" and text[:1] == b"{" else None
    if line is None:  # not a .json object, or a first line longer than the block: JSON Lines
        return False
    try:
        orjson.loads(line.group())
    except orjson.JSONDecodeError:
        return True
    return False


def _json_document(document: bytes, lines: _Lines, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    """A JSON document: an array of rows, or an object, one row. It is parsed whole, so its size bounds memory."""
    try:
        value = orjson.loads(document.removeprefix(_BOM))
    except orjson.JSONDecodeError as e:
        if document.removeprefix(_BOM).lstrip()[:1] == b"[":
            report.issues.append((Reason.invalid_json, f"the JSON array does not parse: {e}"))
        else:  # JSON Lines after all, with a first row that does not parse: each row is quarantined alone
            yield from lines.feed(document)
        return
    yield from _serialised(lines.path, iter(value if isinstance(value, list) else [value]), report, chunk_bytes)


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


def _table_chunks(path: str, kind: str, compression: str, report: FileReport, chunk_bytes: int) -> Iterator[RawChunk]:
    report.sha256, report.bytes = file_sha256(path), Path(path).stat().st_size
    if report.bytes == 0:
        return  # an empty file, not an unreadable one (pyarrow refuses a 0-byte CSV or Parquet file)
    try:
        if kind == "parquet":
            rows = _parquet_rows(path)
        else:
            rows = _csv_rows(path, {"gz": "gzip", "zst": "zstd"}.get(compression))
        yield from _serialised(path, rows, report, chunk_bytes)
    except _UNREADABLE_TABLE as e:
        report.issues.append((Reason.unreadable_file, f"cannot read {kind} after row {report.rows}: {e}"))


def _parquet_rows(path: str) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from pa.RecordBatch.from_arrays(
            [_exact(column) for column in batch.columns], names=batch.schema.names
        ).to_pylist()


def _exact(column: pa.Array) -> pa.Array:
    """A column with nanosecond times in forms Python holds exactly. datetime stops at microseconds: to_pylist
    fails on them (with pandas installed it gives pandas objects instead, and truncates a time64[ns]). Timestamps
    and times become ISO 8601 text (offsets written +01:00, as orjson writes them), durations their nanoseconds."""
    kind = column.type
    if getattr(kind, "unit", None) != "ns":
        return column
    if pa.types.is_duration(kind):
        return pc.cast(column, pa.int64())
    if not pa.types.is_timestamp(kind):
        return pc.cast(column, pa.string())
    if kind.tz is None:
        return pc.strftime(column, "%Y-%m-%dT%H:%M:%S")
    return pc.replace_substring_regex(pc.strftime(column, "%Y-%m-%dT%H:%M:%S%z"), r"(\d\d)(\d\d)$", r"\1:\2")


def _csv_rows(path: str, codec: str | None) -> Iterator[object]:
    """A CSV file's rows, every value read as text: type guessing would turn "007" into 7 and "1.50" into 1.5, and
    fail on a column whose values change type after the first block.

    A row with another number of fields than the header (a stray comma, an unterminated quote that runs on) is
    handed on as its own text: a JSON string, not an object, so the stage quarantines it (wrong_type) at its row
    number, and the rows around it are kept.
    """
    skipped: deque[pacsv.InvalidRow] = deque()  # in file order; row 1 is the header

    def skip(row: pacsv.InvalidRow) -> str:
        skipped.append(row)
        return "skip"

    any_rows = pacsv.ParseOptions(invalid_row_handler=lambda r: "skip")  # the header is all this reader is for
    header = pacsv.open_csv(pa.input_stream(path, compression=codec), parse_options=any_rows)
    reader = pacsv.open_csv(
        pa.input_stream(path, compression=codec),
        read_options=pacsv.ReadOptions(use_threads=False),  # threads leave the skipped rows' numbers unknown
        parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(header.schema.names, pa.string())),
    )
    row = 1
    for batch in reader:
        for values in batch.to_pylist():
            while skipped and skipped[0].number - 1 <= row:
                yield skipped.popleft().text
                row += 1
            yield values
            row += 1
    yield from (r.text for r in skipped)
