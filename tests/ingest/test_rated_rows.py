"""Rated responses in the long form (rated_rows): the rows of one prompt are one group, whatever the chunking, and
give the very pairs the wide form (rated_completions) gives for the same prompts, responses and ratings.

The long fixture is the wide fixture's ratings, one row per (response, aspect) or (response, reviewer) (see
tests/fixtures/real/SOURCES.md); the edge cases are tiny files named for the edge they cover.
"""

from __future__ import annotations

import json

import orjson
import pytest
from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.cli import app
from tunelake.ingest.adapters import ADAPTERS, line_group_key
from tunelake.ingest.readers import RawChunk, grouped_chunks
from tunelake.silver.canonicalize import UnsortedGroups

REAL = FIXTURES / "real"
WIDE, LONG = REAL / "ultrafeedback_shape_sample.jsonl", REAL / "ultrafeedback_long_form_sample.jsonl"
ANY_RATE = {"max_quarantine_rate": 1}


def _build(tmp_path, files: dict[str, object], **engine):
    tmp_path.mkdir(exist_ok=True)
    sources = [{"name": n, "path": str(p), "license": "mit", "origin": "human"} for n, p in files.items()]
    return run_build(write_recipe(tmp_path, sources, engine={"workers": 1, **engine}, silver=ANY_RATE))


def _pairs(lake, source: str) -> list[dict]:
    """A source's silver records as the pair's content and facts, in input order."""
    rows = lake.query(
        "select prompt, chosen, rejected, score_chosen, score_rejected, meta from s where source = $s order by id",
        {"s": source},
        s="silver/records",
    )
    out = []
    for prompt, chosen, rejected, sc, sr, meta in rows:
        meta = json.loads(meta)
        out.append({"sides": (prompt, chosen, rejected), "scores": (sc, sr), "meta": meta})
    return sorted(out, key=lambda p: orjson.dumps(p["sides"], default=str))


def _write(path, rows: list[dict]):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def _rows(prompt_id: str, scores: list[float], **extra) -> list[dict]:
    return [
        {"prompt_id": prompt_id, "prompt": f"question {prompt_id}", "response": f"answer {i}", "score": s, **extra}
        for i, s in enumerate(scores)
    ]


def test_the_long_form_gives_the_wide_forms_pairs_orientation_scores_and_facts(tmp_path):
    # Two builds: in one, every long pair would be an exact duplicate of its wide pair.
    manifest, lake = _build(tmp_path / "long", {"long": LONG})
    _, wide_lake = _build(tmp_path / "wide", {"wide": WIDE})
    assert manifest["inputs"][0]["format"] == "rated_rows"
    wide, long = _pairs(wide_lake, "wide"), _pairs(lake, "long")
    assert len(wide) == len(long) == 9
    for w, g in zip(wide, long, strict=True):
        assert (g["sides"], g["scores"]) == (w["sides"], w["scores"])
        # The long rows name their reviewers (the wide row nests them in its ratings); every other fact is the same.
        assert g["meta"]["pair"] == w["meta"]["pair"] | {"reviewers": g["meta"]["pair"]["reviewers"]}
        assert {k: v for k, v in g["meta"].items() if k not in ("prompt_id", "pair")} == {
            k: v for k, v in w["meta"].items() if k != "pair"
        }
        assert g["meta"]["prompt_id"].startswith("uf-")
    reviewed = [g["meta"]["pair"]["reviewers"] for g in long if g["meta"]["prompt_id"] == "uf-5"]
    assert reviewed == [["alice", "bob"]]
    assert all(g["meta"]["pair"]["reviewers"] == [] for g in long if g["meta"]["prompt_id"] != "uf-5")


def test_counts_reconcile_and_each_grouped_row_is_dropped_into_its_group(tmp_path):
    manifest, lake = _build(tmp_path, {"long": LONG})
    c = manifest["counts"]["long"]
    assert c["bronze"] + c["siblings"] == c["silver"] + c["quarantined"] + c["dropped"]
    # 44 rows in 5 groups (rows 1, 17, 29, 37, 41): 39 dropped into their group; 11 records, 3 quarantined as wide.
    assert (c["bronze"], c["silver"], c["quarantined"], c["dropped"]) == (44, 9, 3, 39)
    assert manifest["stages"]["canonicalize"]["dropped"] == {"grouped_into": 39}
    quarantined = lake.query("select row, sub, reason, field from q order by row, sub", q="silver/quarantine")
    assert quarantined == [
        (17, 0, "missing_rating", "rows[21].ratings"),  # uf-2's second response (rows 21-24): all "N/A"
        (17, 2, "missing_rating", "rows[21].ratings"),
        (37, None, "no_pair", "rows"),  # uf-4: one response
    ]
    dropped = lake.query("select row, reason from l where action = 'drop' order by row", l="ledger")
    assert dropped[:3] == [(2, "grouped_into:1"), (3, "grouped_into:1"), (4, "grouped_into:1")]
    assert (16, "grouped_into:1") in dropped and (18, "grouped_into:17") in dropped


def test_explain_on_a_grouped_row_names_its_group_and_the_pairs_made_there(tmp_path):
    _build(tmp_path, {"long": LONG})
    explained = CliRunner().invoke(app, ["explain", "--lake", str(tmp_path / "lake"), "long:3"])
    assert explained.exit_code == 0, explained.output
    out = " ".join(explained.output.split())
    assert "grouped_into:1" in out and 'prompt_id "uf-1": rows 1-16 are one group' in out
    # It goes on to the group's first row, where its six pairs are.
    assert "row 1 record 5" in out and "keep" in out


def test_a_group_across_a_chunk_boundary_is_still_one_group(tmp_path):
    # Chunks of 600 bytes: each ~300-byte row of the fixture would cut every group in pieces.
    manifest, lake = _build(tmp_path / "small", {"long": LONG}, chunk_bytes=600)
    _, whole = _build(tmp_path / "whole", {"long": LONG})
    assert _pairs(lake, "long") == _pairs(whole, "long")
    assert manifest["counts"]["long"]["dropped"] == 39


def test_the_reader_cuts_a_grouped_file_only_where_the_key_changes():
    adapter = ADAPTERS["rated_rows"]
    lines = [orjson.dumps(r) for r in _rows("a", [1, 2, 3]) + _rows("b", [4]) + _rows("c", [1, 2])]
    lines.insert(2, b"not json")  # a line with no key stays with the run around it
    # Lines: a a (no key) | a b | c c, the last line with no newline.
    chunks = [RawChunk("f", 1, b"\n".join(lines[:3]) + b"\n"), RawChunk("f", 4, b"\n".join(lines[3:5]) + b"\n")]
    chunks.append(RawChunk("f", 6, lines[5] + b"\n" + lines[6]))
    cut = list(grouped_chunks(iter(chunks), lambda line: line_group_key(adapter, line)))
    assert [(c.first_row, len(c.data.splitlines())) for c in cut] == [(1, 4), (5, 1), (6, 2)]
    assert b"".join(c.data for c in cut) == b"".join(c.data for c in chunks)


def test_an_unsorted_file_fails_the_build_naming_the_rows_and_asking_to_sort_it(tmp_path):
    path = _write(tmp_path / "unsorted.jsonl", _rows("a", [1, 2]) + _rows("b", [3, 4]) + _rows("a", [5]))
    with pytest.raises(UnsortedGroups, match=r"not sorted by prompt_id.*\"a\" in rows 1-2, 5-5.*Sort the file"):
        _build(tmp_path, {"unsorted": path})
    assert not (tmp_path / "lake" / "manifests").exists() or not list((tmp_path / "lake" / "manifests").iterdir())


def test_several_workers_give_the_same_lake_as_one(tmp_path):
    rows = [r for i in range(40) for r in _rows(f"p{i}", [i % 3, 1, 2.5], reviewer=f"r{i % 2}")]
    path = _write(tmp_path / "many.jsonl", rows)
    one, lake1 = _build(tmp_path / "one", {"many": path}, chunk_bytes=1000)
    two, lake2 = _build(tmp_path / "two", {"many": path}, chunk_bytes=1000, workers=2)
    assert one["counts"] == two["counts"] and one["counts"]["many"]["dropped"] == 80
    ledger = "select row, sub, stage, action, reason, detail, id from l order by row, sub, stage"
    assert lake1.query(ledger, l="ledger") == lake2.query(ledger, l="ledger")
    assert _pairs(lake1, "many") == _pairs(lake2, "many")


def test_a_group_without_prompt_id_is_grouped_by_its_prompt_and_a_score_column_is_its_rating(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "prompt_id"} for r in _rows("x", [2, 7]) + _rows("y", [3, 3])]
    _, lake = _build(tmp_path, {"plain": _write(tmp_path / "plain.jsonl", rows)})
    pairs = _pairs(lake, "plain")
    assert [(p["scores"], p["meta"]["pair"]["tie"]) for p in pairs] == [((7.0, 2.0), False), ((3.0, 3.0), True)]
    assert pairs[0]["meta"]["pair"]["ratings"] == {"chosen": 7, "rejected": 2}


def test_a_group_over_64_pairs_is_quarantined_loudly(tmp_path):
    path = _write(tmp_path / "big.jsonl", _rows("a", list(range(12))) + _rows("b", [1, 2]))  # C(12, 2) = 66
    manifest, lake = _build(tmp_path, {"big": path})
    (row,) = lake.query("select row, reason, detail from q", q="silver/quarantine")
    assert row[:2] == (1, "wrong_type") and "66 records" in row[2]
    assert manifest["counts"]["big"]["silver"] == 1


def test_a_bad_row_quarantines_its_group_at_its_first_row_naming_the_row_and_field(tmp_path):
    rows = _rows("a", [1, 2]) + _rows("b", [3, 4]) + _rows("c", [5, 6])
    del rows[3]["response"]  # row 4, in group b (rows 3-4)
    rows[4]["model"] = ["not", "text"]  # row 5, in group c (rows 5-6)
    manifest, lake = _build(tmp_path, {"bad": _write(tmp_path / "bad.jsonl", rows)})
    quarantined = lake.query("select row, sub, reason, field from q order by row", q="silver/quarantine")
    assert quarantined == [(3, None, "missing_field", "rows[4].response"), (5, None, "wrong_type", "rows[5].model")]
    c = manifest["counts"]["bad"]
    assert (c["silver"], c["quarantined"], c["dropped"]) == (1, 2, 3)
