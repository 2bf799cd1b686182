"""Every container gives the same rows: JSON lines, JSON arrays, parquet, csv, plain or compressed."""

from __future__ import annotations

import gzip
import json

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import zstandard

from tests.conftest import FIXTURES
from tunelake.ingest import readers
from tunelake.ingest.readers import FileReport, read_chunks

ALPACA = [json.loads(line) for line in (FIXTURES / "bad" / "alpaca_30.jsonl").open()]


def _rows(path) -> tuple[list[dict], FileReport]:
    report = FileReport(str(path))
    rows = [orjson.loads(line) for c in read_chunks(str(path), report, 1 << 12) for line in c.data.splitlines()]
    return rows, report


def _write(path, kind: str) -> None:
    table = pa.Table.from_pylist(ALPACA)
    if kind == "parquet":
        pq.write_table(table, path)
    elif kind.startswith("csv"):
        pacsv.write_csv(table, path.with_suffix("") if kind == "csv.gz" else path)
        if kind == "csv.gz":
            path.write_bytes(gzip.compress(path.with_suffix("").read_bytes()))
    elif kind == "json":
        path.write_text(json.dumps(ALPACA, indent=2))
    else:
        lines = "".join(json.dumps(r) + "\n" for r in ALPACA).encode()
        path.write_bytes({"jsonl": lines, "jsonl.gz": gzip.compress(lines)}.get(kind) or zstandard.compress(lines))


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "json", "parquet", "csv", "csv.gz"])
def test_each_container_gives_the_same_rows_and_a_file_hash(tmp_path, kind):
    path = tmp_path / f"alpaca.{kind}"
    _write(path, kind)
    rows, report = _rows(path)
    assert rows == ALPACA
    assert report.rows == len(ALPACA) and not report.issues
    assert len(report.sha256) == 64 and report.bytes == path.stat().st_size


def test_csv_values_are_read_as_text_not_guessed_numbers(tmp_path):
    path = tmp_path / "bank.csv"
    path.write_text("prompt,answer,verifier\nWhat is the code?,007,exact_match\nPrice?,1.50,numeric\n")
    rows, report = _rows(path)
    assert [r["answer"] for r in rows] == ["007", "1.50"] and not report.issues


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b"{}\n",
        b"{}\n{}\n",
        b"{}\n\n{}\n",
        b"  \n{}\n",
        b"{}\n \t\r\n{}",
        b"{}\r\n{}\r\n",
        b"{}\r\n\r\n",
        b"\n",
    ],
)
def test_rows_are_the_lines_that_are_not_blank(data):
    # Counting newlines is the fast path; a blank or whitespace-only line anywhere must still not count.
    assert readers._rows(data) == sum(1 for line in data.split(b"\n") if line.strip())
