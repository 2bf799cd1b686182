"""The bad-input corpus: every broken file or row is quarantined with its reason code and address, the good rows
around it still reach silver, and the build never crashes.

The good rows are real (tests/fixtures/bad/SOURCES.md); the damage is done here, in a tmp dir, so nothing broken
(and no 10 MB file) is committed. One build runs the whole corpus; each test checks one kind of damage.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.lake import Lake

BAD = FIXTURES / "bad"
GSM8K = (BAD / "gsm8k_train_40.jsonl").read_bytes().splitlines()  # JSONL lines, without their newline
ALPACA = [json.loads(line) for line in (BAD / "alpaca_30.jsonl").read_bytes().splitlines()]

BOM = b"\xef\xbb\xbf"
JUNK = bytes(range(256)).replace(b"\n", b"")  # every byte value but the newline: NULs, control bytes, invalid UTF-8
TEN_MB = 10 * 1024 * 1024


def dump(row: object) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode()


def jsonl(lines: list[bytes], eol: bytes = b"\n") -> bytes:
    return b"".join(line + eol for line in lines)


def chat(row: dict, user_role: str = "user", assistant_role: str = "assistant") -> dict:
    """An alpaca row as OpenAI messages, with the roles given."""
    return {
        "messages": [
            {"role": user_role, "content": row["instruction"]},
            {"role": assistant_role, "content": row["output"]},
        ]
    }


def user_text(row: dict) -> str:
    """What the alpaca adapter makes of a row's instruction and input."""
    return f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]


def raw_lines(path: Path) -> list[bytes]:
    """A written file's lines as the reader sees them (split on b"\\n" only: junk may hold \\r and other breaks)."""
    return path.read_bytes().split(b"\n")


def gz_recoverable(data: bytes) -> bytes:
    """The bytes a gzip decoder can give back from a (possibly cut) gzip file."""
    return zlib.decompressobj(wbits=31).decompress(data)


@dataclass
class Corpus:
    manifest: dict
    lake: Lake
    files: dict[str, Path]  # source name -> the file written for it (or its folder, for a glob)
    alpaca: dict[str, list[dict]]  # source name -> the alpaca rows its file was made from


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """One build over every kind of damage, one source each. Each source takes its own real rows, so no good row
    is an exact duplicate of another source's (dedup would drop it, and hide whether it reached silver)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    gsm8k_lines, alpaca_rows = iter(GSM8K), iter(ALPACA)
    files: dict[str, Path] = {}
    alpaca: dict[str, list[dict]] = {}
    sources: list[dict] = []

    def gsm8k(n: int) -> list[bytes]:
        return [next(gsm8k_lines) for _ in range(n)]

    def add(name: str, filename: str, content: bytes, **source) -> None:
        path = root / name / filename
        path.parent.mkdir()
        path.write_bytes(content)
        files[name] = path
        sources.append({"name": name, "path": str(path), "license": "mit", "origin": "human", **source})

    def take_alpaca(name: str, n: int) -> list[dict]:
        alpaca[name] = [next(alpaca_rows) for _ in range(n)]
        return alpaca[name]

    gz = gzip.compress(jsonl(gsm8k(6)), mtime=0)
    add("truncated_gz", "train.jsonl.gz", gz[: len(gz) // 2])
    gz = gzip.compress(jsonl(gsm8k(6)), mtime=0)
    add("gz_trailer_cut", "train.jsonl.gz", gz[:-8])  # every deflate byte is there; the CRC and size are lost
    lines = gsm8k(6)
    frames = [zstandard.ZstdCompressor().compress(jsonl(lines[i : i + 2])) for i in range(0, 6, 2)]
    add("truncated_zst", "train.jsonl.zst", frames[0] + frames[1] + frames[2][: len(frames[2]) // 2])

    g = gsm8k(5)
    add(
        "junk",
        "train.jsonl",
        jsonl([g[0], g[1], JUNK, g[2], b"<html><body>502 Bad Gateway</body></html>", g[3][:60], g[4]]),
    )

    g = gsm8k(8)
    rows = [json.loads(line) for line in g]
    wrong = [
        g[0],
        dump({"question": 42, "answer": rows[1]["answer"]}),
        dump({"question": rows[2]["question"], "answer": [rows[2]["answer"]]}),
        dump([rows[3]["question"], rows[3]["answer"]]),
        dump(rows[4]["question"]),
        dump({"question": None, "answer": rows[5]["answer"]}),
        dump({"question": rows[6]["question"]}),
        g[7],
    ]
    add("wrong_types", "train.jsonl", jsonl(wrong))
    a = take_alpaca("wrong_types_chat", 5)
    chat_wrong = [
        dump(chat(a[0])),
        dump({"messages": [{"role": 1, "content": a[1]["instruction"]}]}),
        dump({"messages": [{"role": "user", "content": a[2]["instruction"]}, {"role": "assistant", "content": 42}]}),
        dump({"messages": a[3]["output"]}),
        dump({"messages": [a[4]["instruction"], a[4]["output"]]}),
    ]
    add("wrong_types_chat", "chat.jsonl", jsonl(chat_wrong), format="openai")
    # Values an adapter once passed through unchecked: an int here used to reach the Arrow writer and end the build.
    rows = [json.loads(line) for line in gsm8k(2)]
    rl_domain = [
        {"prompt": r["question"], "answer": r["answer"].rpartition("####")[2].strip(), "verifier": "numeric"}
        for r in rows
    ]
    add("wrong_type_domain", "rl.jsonl", jsonl([dump({**rl_domain[0], "domain": 7}), dump(rl_domain[1])]), format="rl")
    a = take_alpaca("wrong_type_category", 2)
    dolly = [{"instruction": r["instruction"], "context": r["input"], "response": r["output"]} for r in a]
    add(
        "wrong_type_category",
        "dolly.jsonl",
        jsonl([dump({**dolly[0], "category": 3}), dump(dolly[1])]),
        format="dolly",
    )

    g = gsm8k(3)
    q = json.loads(g[1])
    big = dump({"question": (q["question"] + " ") * (TEN_MB // (len(q["question"]) + 1) + 1), "answer": q["answer"]})
    add("big_record", "train.jsonl", jsonl([g[0], big, g[2]]))

    empty = root / "empty"
    empty.mkdir()
    (empty / "a_empty.jsonl").write_bytes(b"")
    (empty / "b_empty.jsonl.gz").write_bytes(gzip.compress(b"", mtime=0))
    (empty / "c_blank_lines.jsonl").write_bytes(b"\n  \r\n\n")
    (empty / "d_empty_array.json").write_bytes(b"[]\n")
    (empty / "e_empty.csv").write_bytes(b"")
    (empty / "f_header_only.csv").write_bytes(b"instruction,input,output\r\n")
    (empty / "g_empty.parquet").write_bytes(b"")
    files["empty"] = empty
    sources.append({"name": "empty", "path": str(empty / "*"), "license": "mit", "origin": "human"})

    a = take_alpaca("no_license", 5)
    licensed = [
        dump({**a[0], "license": "cc-by-nc-4.0"}),
        dump(a[1]),
        dump({**a[2], "license": "cc-by-nc-4.0"}),
        dump({**a[3], "license": None}),
        dump({**a[4], "license": 5}),
    ]
    add("no_license", "alpaca.jsonl", jsonl(licensed), license=None)

    a = take_alpaca("unknown_roles", 5)
    roles = [
        dump(chat(a[0])),
        dump(chat(a[1], user_role="narrator")),
        dump(chat(a[2], assistant_role="robot")),
        dump(chat(a[3], user_role=" Human", assistant_role="GPT")),  # aliases, in any case: kept
        dump(chat(a[4], user_role="")),
    ]
    add("unknown_roles", "chat.jsonl", jsonl(roles))

    add("bom", "alpaca.jsonl", BOM + jsonl([dump(r) for r in take_alpaca("bom", 2)]))
    add("crlf", "alpaca.jsonl", jsonl([dump(r) for r in take_alpaca("crlf", 2)], eol=b"\r\n"))
    array = json.dumps(take_alpaca("bom_crlf_array", 2), indent=4, ensure_ascii=False).replace("\n", "\r\n")
    add("bom_crlf_array", "alpaca.json", BOM + array.encode() + b"\r\n")
    # A spreadsheet's "CSV UTF-8" export: a BOM, CRLF after each row, multi-line cells quoted. (A CRLF inside a
    # cell is the cell's text, kept as it is, like the CRLFs in MBPP's code.)
    out = io.StringIO()
    writer = csv.DictWriter(out, ["instruction", "input", "output"], lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(take_alpaca("bom_crlf_csv", 3))
    add("bom_crlf_csv", "alpaca.csv", BOM + out.getvalue().encode())

    # Whole sources of bad rows: the quarantine-rate gate (tested on its own) would stop the build.
    recipe = write_recipe(root, sources, engine={"workers": 2}, silver={"max_quarantine_rate": 1})
    manifest, lake = run_build(recipe)
    return Corpus(manifest, lake, files, alpaca)


def quarantined(corpus: Corpus, source: str) -> dict[int | None, dict]:
    """Quarantine rows of one source by row number (None for the file-level ones; one file per source)."""
    rows = corpus.lake.query(
        "select file, row, stage, reason, field, detail, raw from q where source = $source",
        {"source": source},
        q="silver/quarantine",
    )
    out = {}
    for file, row, stage, reason, field, detail, raw in rows:
        assert row not in out, f"{source}: two quarantine rows for row {row}"
        out[row] = {"file": file, "stage": stage, "reason": reason, "field": field, "detail": detail, "raw": raw}
    return out


def kept_rows(corpus: Corpus, source: str) -> list[int]:
    """Row numbers of the source's rows that reached silver/records."""
    rows = corpus.lake.query(
        "select l.row from l join s on l.id = s.id where l.source = $source and l.stage = 'split' order by l.row",
        {"source": source},
        l="ledger",
        s="silver/records",
    )
    return [r for (r,) in rows]


def assert_row_quarantined(corpus: Corpus, source: str, row: int, reason: str, field: str | None, raw: bytes) -> None:
    got = quarantined(corpus, source)[row]
    assert (got["reason"], got["field"], got["stage"]) == (reason, field, "canonicalize"), got["detail"]
    assert got["file"] == str(corpus.files[source])
    assert got["raw"] == raw


def test_build_completes_and_counts_reconcile(corpus):
    lake = corpus.lake
    for source, c in corpus.manifest["counts"].items():
        assert c["bronze"] == c["silver"] + c["quarantined"] + c["dropped"], source
        assert c["dropped"] == 0, f"{source}: the corpus should hold no duplicates"
        assert lake.query("select count(*) from b", b=f"bronze/{source}")[0][0] == c["bronze"], source
        in_quarantine = lake.query(
            "select count(row), count(*) - count(row) from q where source = $s", {"s": source}, q="silver/quarantine"
        )
        assert in_quarantine[0] == (c["quarantined"], c["file_issues"]), source


def test_every_quarantine_row_has_its_ledger_row(corpus):
    lake = corpus.lake
    quarantine = lake.query("select source, file, row, stage, reason from q", q="silver/quarantine")
    ledger = lake.query("select source, file, row, stage, reason from l where action = 'quarantine'", l="ledger")
    assert sorted(quarantine, key=repr) == sorted(ledger, key=repr)
    assert lake.query("select count(*) from l where action = 'quarantine' and id is not null", l="ledger") == [(0,)]


def test_truncated_gzip_keeps_the_rows_before_the_cut(corpus):
    recovered = gz_recoverable(corpus.files["truncated_gz"].read_bytes())
    complete, _, partial = recovered.rpartition(b"\n")
    n = complete.count(b"\n") + 1 if complete else 0
    assert 1 <= n < 6, "the cut should fall after some rows and before the last"
    assert kept_rows(corpus, "truncated_gz") == list(range(1, n + 1))
    q = quarantined(corpus, "truncated_gz")
    assert q[None]["reason"] == "truncated_file" and q[None]["stage"] == "read"
    assert (q[None]["field"], q[None]["raw"]) == (None, None)
    if partial:  # the row the cut went through is there in part: it is quarantined, not silently lost
        assert_row_quarantined(corpus, "truncated_gz", n + 1, "invalid_json", None, partial)
    assert set(q) == {None, n + 1} if partial else {None}


def test_gzip_without_its_trailer_keeps_every_row(corpus):
    assert kept_rows(corpus, "gz_trailer_cut") == [1, 2, 3, 4, 5, 6]
    q = quarantined(corpus, "gz_trailer_cut")
    assert list(q) == [None] and q[None]["reason"] == "truncated_file"
    inputs = {i["source"]: i for i in corpus.manifest["inputs"]}
    assert inputs["gz_trailer_cut"]["rows"] == 6
    assert [i["reason"] for i in inputs["gz_trailer_cut"]["issues"]] == ["truncated_file"]


def test_truncated_zstd_is_reported_and_keeps_its_whole_frames(corpus):
    assert kept_rows(corpus, "truncated_zst") == [1, 2, 3, 4]
    q = quarantined(corpus, "truncated_zst")
    assert list(q) == [None]
    assert q[None]["reason"] == "truncated_file"  # not empty_file, and not a clean end of file


def test_binary_junk_and_broken_lines_are_quarantined_between_good_rows(corpus):
    q = quarantined(corpus, "junk")
    assert set(q) == {3, 5, 6}
    assert_row_quarantined(corpus, "junk", 3, "invalid_utf8", None, JUNK)
    assert_row_quarantined(corpus, "junk", 5, "invalid_json", None, b"<html><body>502 Bad Gateway</body></html>")
    assert_row_quarantined(corpus, "junk", 6, "invalid_json", None, raw_lines(corpus.files["junk"])[5])
    assert len(quarantined(corpus, "junk")[6]["raw"]) == 60
    assert kept_rows(corpus, "junk") == [1, 2, 4, 7]


@pytest.mark.parametrize(
    ("row", "reason", "field"),
    [
        (2, "wrong_type", "question"),
        (3, "wrong_type", "answer"),
        (4, "wrong_type", None),  # a JSON array where an object was expected
        (5, "wrong_type", None),  # a JSON string
        (6, "missing_field", "question"),  # null
        (7, "missing_field", "answer"),  # absent
    ],
)
def test_wrong_types_in_gsm8k_rows(corpus, row, reason, field):
    raw = raw_lines(corpus.files["wrong_types"])[row - 1]
    assert_row_quarantined(corpus, "wrong_types", row, reason, field, raw)


def test_wrong_types_leave_the_good_gsm8k_rows(corpus):
    assert set(quarantined(corpus, "wrong_types")) == {2, 3, 4, 5, 6, 7}
    assert kept_rows(corpus, "wrong_types") == [1, 8]
    assert {i["source"]: i["format"] for i in corpus.manifest["inputs"]}["wrong_types"] == "gsm8k"


@pytest.mark.parametrize(
    ("row", "field"),
    [(2, "messages[0].role"), (3, "messages[1].content"), (4, "messages"), (5, "messages[0]")],
)
def test_wrong_types_in_chat_messages(corpus, row, field):
    raw = raw_lines(corpus.files["wrong_types_chat"])[row - 1]
    assert_row_quarantined(corpus, "wrong_types_chat", row, "wrong_type", field, raw)
    assert kept_rows(corpus, "wrong_types_chat") == [1]


@pytest.mark.parametrize(("source", "field"), [("wrong_type_domain", "domain"), ("wrong_type_category", "category")])
def test_a_non_string_domain_is_quarantined_not_a_crash(corpus, source, field):
    raw = raw_lines(corpus.files[source])[0]
    assert_row_quarantined(corpus, source, 1, "wrong_type", field, raw)
    assert kept_rows(corpus, source) == [2]


def test_ten_megabyte_record_is_quarantined_as_too_long_with_its_bytes(corpus):
    raw = raw_lines(corpus.files["big_record"])[1]
    assert len(raw) > TEN_MB
    assert_row_quarantined(corpus, "big_record", 2, "too_long", None, raw)
    assert "silver.max_chars" in quarantined(corpus, "big_record")[2]["detail"]
    assert kept_rows(corpus, "big_record") == [1, 3]


def test_empty_files_are_reported_as_empty_file_with_a_null_row(corpus):
    rows = corpus.lake.query(
        "select file, row, stage, field, raw from q where source = 'empty' and reason = 'empty_file' order by file",
        q="silver/quarantine",
    )
    names = [
        "a_empty.jsonl",
        "b_empty.jsonl.gz",
        "c_blank_lines.jsonl",
        "d_empty_array.json",
        "e_empty.csv",
        "f_header_only.csv",
        "g_empty.parquet",
    ]
    assert rows == [(str(corpus.files["empty"] / n), None, "read", None, None) for n in names]
    assert corpus.manifest["counts"]["empty"] == {
        "bronze": 0,
        "siblings": 0,
        "silver": 0,
        "quarantined": 0,
        "dropped": 0,
        "file_issues": len(names),
    }
    assert all(i["rows"] == 0 for i in corpus.manifest["inputs"] if i["source"] == "empty")


def test_missing_license_is_quarantined_when_neither_recipe_nor_row_gives_one(corpus):
    raws = raw_lines(corpus.files["no_license"])
    q = quarantined(corpus, "no_license")
    assert set(q) == {2, 4, 5}
    for row in (2, 4):  # absent, null
        assert_row_quarantined(corpus, "no_license", row, "missing_license", "license", raws[row - 1])
    assert_row_quarantined(corpus, "no_license", 5, "wrong_type", "license", raws[4])  # a number is not a license
    assert kept_rows(corpus, "no_license") == [1, 3]
    licenses = corpus.lake.query("select distinct license from s where source = 'no_license'", s="silver/records")
    assert licenses == [("cc-by-nc-4.0",)]


def test_unknown_roles_are_quarantined_and_known_aliases_kept(corpus):
    raws = raw_lines(corpus.files["unknown_roles"])
    assert set(quarantined(corpus, "unknown_roles")) == {2, 3, 5}
    assert_row_quarantined(corpus, "unknown_roles", 2, "unknown_role", "messages[0].role", raws[1])
    assert_row_quarantined(corpus, "unknown_roles", 3, "unknown_role", "messages[1].role", raws[2])
    assert_row_quarantined(corpus, "unknown_roles", 5, "unknown_role", "messages[0].role", raws[4])
    assert "'narrator'" in quarantined(corpus, "unknown_roles")[2]["detail"]
    assert kept_rows(corpus, "unknown_roles") == [1, 4]
    records = corpus.lake.query("select messages from s where source = 'unknown_roles'", s="silver/records")
    assert [[m["role"] for m in messages] for (messages,) in records] == [["user", "assistant"]] * 2


@pytest.mark.parametrize("source", ["bom", "crlf", "bom_crlf_array", "bom_crlf_csv"])
def test_bom_and_crlf_rows_are_accepted_with_clean_content(corpus, source):
    assert quarantined(corpus, source) == {}
    assert kept_rows(corpus, source) == list(range(1, len(corpus.alpaca[source]) + 1))
    records = corpus.lake.query("select messages from s where source = $s", {"s": source}, s="silver/records")
    contents = sorted([m["content"] for m in messages] for (messages,) in records)
    assert contents == sorted([user_text(r), r["output"].strip()] for r in corpus.alpaca[source])
    assert not any("\r" in c or "\ufeff" in c for c in sum(contents, []))


def test_bom_and_crlf_are_kept_verbatim_in_bronze(corpus):
    (first,) = corpus.lake.query("select raw from b where row = 1", b="bronze/bom")[0]
    assert first.startswith(BOM)
    raws = corpus.lake.query("select raw from b order by row", b="bronze/crlf")
    assert [r for (r,) in raws] == [dump(r) + b"\r" for r in corpus.alpaca["crlf"]]


def test_bom_and_crlf_give_the_same_ids_as_clean_rows(corpus, tmp_path):
    clean = tmp_path / "alpaca.jsonl"
    sources = ("bom", "crlf", "bom_crlf_array", "bom_crlf_csv")
    clean.write_bytes(jsonl([dump(r) for s in sources for r in corpus.alpaca[s]]))
    _, lake = run_build(
        write_recipe(
            tmp_path,
            [{"name": "clean", "path": str(clean), "license": "mit", "origin": "human"}],
            engine={"workers": 1},
        )
    )
    clean_ids = {i for (i,) in lake.query("select id from s", s="silver/records")}
    dirty = corpus.lake.query(
        "select id from s where source in ('bom', 'crlf', 'bom_crlf_array', 'bom_crlf_csv')", s="silver/records"
    )
    assert {i for (i,) in dirty} == clean_ids


def test_truncated_gzip_read_in_small_chunks_loses_no_row_before_the_cut(tmp_path):
    data = jsonl(GSM8K)
    gz = gzip.compress(data, mtime=0)
    cut = gz[: len(gz) * 3 // 4]
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(cut)
    source = {"name": "gsm8k", "path": str(path), "license": "mit", "origin": "human"}
    manifest, lake = run_build(write_recipe(tmp_path, [source], engine={"workers": 1, "chunk_bytes": 1000}))
    complete, _, partial = gz_recoverable(cut).rpartition(b"\n")
    n = complete.count(b"\n") + 1
    assert partial and n > 10
    assert manifest["counts"]["gsm8k"]["silver"] == n
    got = lake.query("select row, reason from q order by row nulls first", q="silver/quarantine")
    assert got == [(None, "truncated_file"), (n + 1, "invalid_json")]


def test_zstd_with_several_frames_is_read_whole(tmp_path):
    frames = [zstandard.ZstdCompressor().compress(jsonl(GSM8K[i : i + 7])) for i in range(0, 40, 7)]
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(b"".join(frames))
    source = {"name": "gsm8k", "path": str(path), "license": "mit", "origin": "human"}
    manifest, lake = run_build(write_recipe(tmp_path, [source], engine={"workers": 1, "chunk_bytes": 1000}))
    assert manifest["counts"]["gsm8k"] == {
        "bronze": 40,
        "siblings": 0,
        "silver": 40,
        "quarantined": 0,
        "dropped": 0,
        "file_issues": 0,
    }
