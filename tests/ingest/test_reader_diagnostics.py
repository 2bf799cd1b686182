"""What the reader makes of files that are damaged, misnamed or oddly encoded: it keeps every row it can read,
hands a row it cannot make sense of on to be quarantined at its row number, and names a whole-file problem once."""

from __future__ import annotations

import codecs
import gzip
import json
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.ingest import readers
from tunelake.ingest.readers import FileReport, read_chunks

ALPACA = [json.loads(line) for line in (FIXTURES / "bad" / "alpaca_30.jsonl").open()]
LINES = [json.dumps(row) for row in ALPACA[:6]]
JSONL = "".join(line + "\n" for line in LINES).encode()


def read(path, **options) -> tuple[list[bytes], FileReport]:
    """Every line the reader hands on (blank ones too: they hold a row number), and the file's report."""
    report = FileReport(str(path))
    chunks = list(read_chunks(str(path), report, 1 << 12, **options))
    lines = [line for chunk in chunks for line in chunk.data.removesuffix(b"\n").split(b"\n")]
    numbers = [1 + sum(c.data.count(b"\n") for c in chunks[:i]) for i in range(len(chunks))]
    assert [c.first_row for c in chunks] == numbers
    return lines, report


def test_zstd_with_junk_after_its_last_frame_keeps_the_frame_and_names_the_offset(tmp_path):
    frame = zstandard.ZstdCompressor().compress(JSONL)
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(frame + b"trailing junk, not a frame")
    lines, report = read(path)
    assert lines == JSONL.splitlines() and report.rows == 6
    [(reason, detail)] = report.issues
    assert reason == "unreadable_file" and f"offset {len(frame)}" in detail


def test_a_damaged_zstd_frame_keeps_the_frames_before_it(tmp_path):
    frames = [zstandard.ZstdCompressor().compress(JSONL[i : i + 400]) for i in range(0, len(JSONL), 400)]
    damaged = frames[-1][:10] + b"\xff" * (len(frames[-1]) - 10)  # its header, then junk
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(b"".join(frames[:-1]) + damaged)
    lines, report = read(path)
    assert lines == JSONL[: 400 * (len(frames) - 1)].split(b"\n")  # the last one cut where its frame ended
    [(reason, detail)] = report.issues
    assert reason == "unreadable_file" and f"offset {sum(map(len, frames[:-1]))}" in detail


def test_bad_csv_rows_are_quarantined_at_their_row_numbers_and_the_rest_kept(tmp_path):
    header = "instruction,input,output"
    good = [",".join(json.dumps(r[k]) for k in ("instruction", "input", "output")) for r in ALPACA[:5]]
    bad = {
        2: "an extra,field,in,this row",
        4: "two,fields",
        7: '"a quote that never ends, so this row runs on to the end of the file',
    }
    rows = [good[0], bad[2], good[1], bad[4], good[2], good[3], bad[7]]
    path = tmp_path / "alpaca.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    source = {"name": "alpaca", "path": str(path), "license": "mit", "origin": "human"}
    manifest, lake = run_build(write_recipe(tmp_path, [source], engine={"workers": 1}))
    got = lake.query("select row, reason, raw from q order by row", q="silver/quarantine")
    assert [(row, reason) for row, reason, _ in got] == [(2, "wrong_type"), (4, "wrong_type"), (7, "wrong_type")]
    assert [orjson.loads(raw) for *_, raw in got] == [bad[2], bad[4], bad[7]]
    kept = lake.query("select row from l where stage = 'canonicalize' and action = 'keep' order by row", l="ledger")
    assert [r for (r,) in kept] == [1, 3, 5, 6]
    assert manifest["counts"]["alpaca"]["file_issues"] == 0


@pytest.mark.parametrize(
    ("arrow_type", "value", "text"),
    [
        (pa.timestamp("ns"), 1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789"),
        (pa.timestamp("ns", tz="UTC"), 1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789+00:00"),
        (pa.timestamp("ns", tz="Europe/Paris"), 1_700_000_000_000_000_001, "2023-11-14T23:13:20.000000001+01:00"),
        (pa.time64("ns"), 1_123_456_789, "00:00:01.123456789"),
        (pa.duration("ns"), 1_123_456_789, 1_123_456_789),
    ],
)
def test_nanosecond_times_in_parquet_are_kept_exactly(tmp_path, arrow_type, value, text):
    path = tmp_path / "alpaca.parquet"
    table = pa.Table.from_pylist(ALPACA[:2]).append_column("created_at", pa.array([value, None], arrow_type))
    pq.write_table(table, path)
    lines, report = read(path)
    assert [orjson.loads(line) for line in lines] == [
        {**ALPACA[0], "created_at": text},
        {**ALPACA[1], "created_at": None},
    ]
    assert not report.issues


def test_a_parquet_date_python_cannot_hold_makes_the_file_unreadable_not_a_crash(tmp_path):
    path = tmp_path / "alpaca.parquet"
    far_future = pa.array([2**31 - 1], pa.date32())  # days after 1970: past datetime's year 9999
    pq.write_table(pa.Table.from_pylist(ALPACA[:1]).append_column("created_at", far_future), path)
    lines, report = read(path)
    assert lines == [] and [reason for reason, _ in report.issues] == ["unreadable_file"]


@pytest.mark.parametrize(
    ("encoding", "bom", "name"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16LE (with a byte-order mark)"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16BE (with a byte-order mark)"),
        ("utf-16-le", b"", "UTF-16LE"),
        ("utf-16-be", b"", "UTF-16BE"),
        ("utf-32-le", b"", "UTF-32LE"),
    ],
)
def test_utf16_text_is_one_file_issue_naming_the_encoding(tmp_path, encoding, bom, name):
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(bom + JSONL.decode().encode(encoding))
    lines, report = read(path)
    assert lines == [] and report.rows == 0
    assert report.issues == [
        ("invalid_utf8", f"the file is {name} text, not UTF-8: convert it (e.g. iconv -f {name.split()[0]} -t UTF-8)")
    ]


def test_gzip_bytes_in_a_file_named_jsonl_are_read_as_gzip_with_a_note(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(gzip.compress(JSONL))
    lines, report = read(path)
    assert lines == JSONL.splitlines() and not report.issues
    assert report.notes == ["read as gz: its first bytes are gz's, whatever its name says"]


def test_a_pretty_printed_json_object_is_one_row(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ALPACA[0], indent=2) + "\n")
    lines, report = read(path)
    assert [orjson.loads(line) for line in lines] == [ALPACA[0]] and report.rows == 1 and not report.issues


def test_a_json_file_of_lines_with_a_broken_first_row_is_still_read_line_by_line(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_bytes(b'{"instruction": "cut\n' + JSONL)
    lines, report = read(path)
    assert lines == [b'{"instruction": "cut', *JSONL.splitlines()] and report.rows == 7


def test_lines_ended_by_cr_alone_are_rows(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(JSONL.replace(b"\n", b"\r"))
    lines, report = read(path)
    assert lines == JSONL.splitlines() and report.rows == 6 and not report.issues


def test_a_row_over_the_limit_is_reported_as_too_long_and_its_number_kept(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    long_row = json.dumps({**ALPACA[0], "output": "x" * 10_000}).encode()
    path.write_bytes(b"\n".join([LINES[0].encode(), long_row, LINES[1].encode(), long_row]))  # the last, unended
    lines, report = read(path, max_row_bytes=5_000)
    assert lines == [LINES[0].encode(), b"", LINES[1].encode()] and report.rows == 2
    assert [reason for reason, _ in report.issues] == ["too_long", "too_long"]
    assert report.issues[0][1].startswith(f"row 2 is {len(long_row)} bytes, over the 5000")
    assert report.issues[1][1].startswith(f"row 4 is {len(long_row)} bytes")


PEAK = """
import resource, sys
from tunelake.ingest.readers import FileReport, read_chunks
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = FileReport(sys.argv[1])
lines = sum(c.data.count(b"\\n") for c in read_chunks(sys.argv[1], report, 1 << 20, max_row_bytes=1 << 20))
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(lines, report.rows, [r.value for r, _ in report.issues], grew // 1024)
"""


def test_an_over_long_row_is_never_held_in_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.write(LINES[0].encode() + b"\n" + b'{"instruction": "' + b"x" * (64 << 20) + b'"}\n' + LINES[1].encode())
    out = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True).stdout
    lines, rows, issues, grew_mib = out.split(" ", 3)
    assert (lines, rows, issues) == ("2", "2", "['too_long']")
    assert int(grew_mib) < 16  # a 64 MiB line, read 1 MiB at a time with a 1 MiB limit


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_a_reader_bug_raises_instead_of_passing_for_an_unreadable_file(tmp_path, monkeypatch, kind):
    path = tmp_path / f"alpaca.{kind}"
    table = pa.Table.from_pylist(ALPACA[:3])
    pq.write_table(table, path) if kind == "parquet" else pa.csv.write_csv(table, path)

    def bug(*args):
        raise TypeError("a bug in the reader")

    monkeypatch.setattr(readers, "_serialised", bug)
    with pytest.raises(TypeError, match="a bug in the reader"):
        read(path)
