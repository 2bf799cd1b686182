"""The near_dedup stage through real builds: planted near-duplicates of real records (GSM8K train, HH-RLHF
harmless test, from examples/data) are dropped naming the kept record and their Jaccard; a preference pair is a
duplicate only when all three parts are; the kept member follows the policy whatever the workers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES, run_build, write_recipe
from tests.test_build import gold_digest
from tests.test_incremental import LEDGER
from tunelake.cli import app
from tunelake.recipe import RecipeError, load_recipe

GSM8K = EXAMPLES / "data" / "gsm8k_train_300.jsonl.gz"
HH = EXAMPLES / "data" / "hh_rlhf_harmless_test_300.jsonl.gz"


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _source(name: str, path: str, **extra) -> dict:
    return {"name": name, "path": path, "license": "mit", "origin": "human", **extra}


def _reformatted(text: str) -> str:
    """The same words, other case, punctuation and spacing: Jaccard 1 after normalising, a different record."""
    return "  " + text.upper().replace(",", " ,").replace("?", " ??") + " "


def _respaced(text: str) -> str:
    """The same words and case with other punctuation spacing (HH transcripts keep their turn markers)."""
    return text.replace(", ", " ,  ").replace(". ", " .  ").replace("?", " ?!")


def _ledger(lake, stage: str) -> list[dict]:
    rows = lake.query(f"select source, row, reason, detail from l where stage = '{stage}' order by 1, 2", l="ledger")
    return [dict(zip(("source", "row", "reason", "detail"), r, strict=True)) for r in rows]


def test_planted_near_duplicates_of_real_records_are_dropped_naming_the_kept_record(tmp_path):
    real = _rows(GSM8K)[:120]
    planted = [{**r, "question": _reformatted(r["question"])} for r in real[:40]]
    planted += [{**r, "question": r["question"] + " Show your work."} for r in real[40:60]]
    sources = [
        _source("gsm8k", _write(tmp_path / "real.jsonl", real), format="gsm8k"),
        _source("copies", _write(tmp_path / "copies.jsonl", planted), format="gsm8k"),
    ]
    manifest, lake = run_build(write_recipe(tmp_path, sources, silver={"near_dedup": {}}))

    drops = _ledger(lake, "near_dedup")
    assert {d["source"] for d in drops} == {"copies"} and len(drops) == 60
    ids = dict(lake.query("select row, id from l where source = 'gsm8k' and stage = 'split'", l="ledger"))
    for d in drops:  # copy row i is a copy of real row i: the earlier source is kept
        assert d["reason"] == f"near_duplicate_of:{ids[d['row']]}"
        jaccard = float(d["detail"].split()[1])
        assert jaccard == 1.0 if d["row"] <= 40 else 0.8 <= jaccard < 1.0
        assert d["detail"].endswith(f"with the kept gsm8k:{tmp_path / 'real.jsonl'}:{d['row']}")
    assert manifest["stages"]["near_dedup"]["dropped"] == {"near_duplicate_of": 60}
    silver = lake.read("silver/records", ["id", "cluster_id"])
    assert silver.num_rows == 120
    clustered = pc.sum(pc.not_equal(silver["id"], silver["cluster_id"])).as_py() or 0
    assert clustered == 0  # every kept record here is its own cluster's kept member


def test_a_preference_pair_is_a_near_duplicate_only_when_prompt_chosen_and_rejected_all_are(tmp_path):
    real = _rows(HH)[:50]
    same_pair = [_reformatted_pair(r) for r in real[:10]]
    other_rejected = [
        _reformatted_pair({**r, "rejected": _with_last_answer(r["rejected"], real[-1 - i]["rejected"])})
        for i, r in enumerate(real[10:20])
    ]
    sources = [
        _source("hh", _write(tmp_path / "hh.jsonl", real)),
        _source("copies", _write(tmp_path / "copies.jsonl", same_pair + other_rejected)),
    ]
    _, lake = run_build(write_recipe(tmp_path, sources, silver={"near_dedup": {}}))
    dropped_rows = {d["row"] for d in _ledger(lake, "near_dedup")}
    assert dropped_rows == set(range(1, 11))  # whole pairs; a pair with another rejected response is kept
    kept = lake.query("select count(*) from l where source = 'copies'", l="silver/records")[0][0]
    assert kept == 10


def _with_last_answer(transcript: str, other: str) -> str:
    """The transcript with its last assistant turn taken from another transcript."""
    return transcript.rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:" + other.rsplit("\n\nAssistant:", 1)[1]


def _reformatted_pair(row: dict) -> dict:
    return {k: _respaced(v) if isinstance(v, str) else v for k, v in row.items()}


def test_the_kept_record_follows_the_policy_whatever_the_workers(tmp_path):
    """Highest score first, then the earliest source, then the smallest id; the same with 1 or 2 workers and
    chunks of a few rows."""
    real = _rows(HH)[:30]
    rows_a = [{**_pair(r), "score_chosen": 1.0} for r in real]
    rows_b = [{**_pair(r), "score_chosen": 5.0} for r in real]  # later source, higher score: kept
    results = []
    for workers in (1, 2):
        folder = tmp_path / f"w{workers}"
        folder.mkdir()
        sources = [
            _source("a", _write(folder / "a.jsonl", rows_a), format="trl_preference"),
            _source("b", _write(folder / "b.jsonl", [_reformatted_pair(r) | {"score_chosen": 5.0} for r in rows_b])),
        ]
        engine = {"workers": workers, "chunk_bytes": 4096}
        _, lake = run_build(write_recipe(folder, sources, silver={"near_dedup": {}}, engine=engine))
        results.append(sorted(lake.read("silver/records", ["id"])["id"].to_pylist()))
        assert {d["source"] for d in _ledger(lake, "near_dedup")} == {"a"}
    assert results[0] == results[1]


def _pair(row: dict) -> dict:
    prompt, chosen = row["chosen"].rsplit("\n\nAssistant:", 1)
    rejected = row["rejected"].rsplit("\n\nAssistant:", 1)[1]
    return {"prompt": prompt.replace("\n\nHuman:", "").strip(), "chosen": chosen.strip(), "rejected": rejected.strip()}


def test_banding_must_fit_the_permutations(tmp_path):
    sources = [_source("gsm8k", str(GSM8K))]
    bad = write_recipe(tmp_path, sources, silver={"near_dedup": {"bands": 20, "rows": 8}})
    with pytest.raises(RecipeError, match="bands x rows = 160 is more than num_perm = 128"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="give both `bands` and `rows`"):
        load_recipe(write_recipe(tmp_path, sources, silver={"near_dedup": {"bands": 20}}))


def test_near_dedup_shares_the_ingest_pass_and_a_rebuild_equals_a_clean_build(tmp_path):
    """Exact and near dedup run back to back over columns staged in one pass (no pass between them), so the
    signatures are cached with each file's ingest outputs; a rebuild after adding a file equals a clean build."""
    real = _rows(GSM8K)[:100]
    (tmp_path / "copies").mkdir()
    _write(tmp_path / "copies" / "a.jsonl", [{**r, "question": _reformatted(r["question"])} for r in real[:30]])
    sources = [
        _source("gsm8k", _write(tmp_path / "real.jsonl", real), format="gsm8k"),
        _source("copies", str(tmp_path / "copies" / "*.jsonl"), format="gsm8k"),
    ]
    (tmp_path / "lake").mkdir()
    recipe = write_recipe(tmp_path / "lake", sources, silver={"near_dedup": {}})
    first, lake = run_build(recipe)
    assert [p for p in first["passes"] if p.startswith("pass")] == []
    stages = first["stages"]
    assert stages["near_dedup"]["in"] == stages["exact_dedup"]["kept"] and stages["near_dedup"]["kept"] == 100

    _write(tmp_path / "copies" / "b.jsonl", [{**r, "question": _reformatted(r["question"])} for r in real[30:60]])
    rebuilt, _ = run_build(recipe)
    assert {Path(i["path"]).name: i["reused"] for i in rebuilt["inputs"]} == {
        "real.jsonl": True,
        "a.jsonl": True,
        "b.jsonl": False,
    }
    (tmp_path / "clean").mkdir()
    _, clean = run_build(write_recipe(tmp_path / "clean", sources, silver={"near_dedup": {}}))
    assert gold_digest(lake) == gold_digest(clean)
    assert lake.read("silver/records").equals(clean.read("silver/records"))
    assert lake.read("ledger", LEDGER).equals(clean.read("ledger", LEDGER))
    assert rebuilt["stages"]["near_dedup"]["dropped"] == {"near_duplicate_of": 60}


def test_explain_shows_a_record_s_near_duplicate_cluster(tmp_path):
    real = _rows(GSM8K)[:20]
    copies = [{**r, "question": _reformatted(r["question"])} for r in real[:1]]
    copies += [{**r, "question": r["question"] + " Show your work."} for r in real[:1]]
    sources = [
        _source("gsm8k", _write(tmp_path / "real.jsonl", real), format="gsm8k"),
        _source("copies", _write(tmp_path / "copies.jsonl", copies), format="gsm8k"),
    ]
    _, lake = run_build(write_recipe(tmp_path, sources, silver={"near_dedup": {}}))
    kept = lake.query("select id from l where source = 'gsm8k' and row = 1 and stage = 'split'", l="ledger")[0][0]
    dropped = lake.query("select id from l where source = 'copies' and row = 2", l="ledger")[0][0]
    for record in (kept, dropped, "copies:2"):
        output = CliRunner().invoke(app, ["explain", "--lake", str(lake.root), record]).output
        assert f"near-duplicate cluster {kept}: kept {kept}, dropped 2" in output, output
        assert "copies row 1  jaccard 1 with the kept gsm8k:" in output and "copies row 2  jaccard 0.9" in output
    alone = lake.query("select id from l where source = 'gsm8k' and row = 2 and stage = 'split'", l="ledger")[0][0]
    assert "cluster" not in CliRunner().invoke(app, ["explain", "--lake", str(lake.root), alone]).output


def test_a_group_of_more_near_identical_records_than_a_small_bucket_keeps_one(tmp_path):
    """Two hundred copies of one question, each in its own mix of upper and lower case (distinct records, Jaccard 1
    with one another): one bucket per band larger than the all-pairs limit, and still one record is kept."""
    question = _rows(GSM8K)[0]["question"]
    letters = [i for i, c in enumerate(question) if c.isalpha()][:12]
    copies = []
    for k in range(200):
        chars = list(question)
        for bit, at in enumerate(letters):
            if k >> bit & 1:
                chars[at] = chars[at].swapcase()
        copies.append({"question": "".join(chars), "answer": f"#### {k}"})
    sources = [_source("copies", _write(tmp_path / "copies.jsonl", copies), format="gsm8k")]
    manifest, lake = run_build(write_recipe(tmp_path, sources, silver={"near_dedup": {}}))
    assert manifest["stages"]["exact_dedup"]["kept"] == 200
    assert manifest["stages"]["near_dedup"]["dropped"] == {"near_duplicate_of": 199}
    ids = [id_ for (id_,) in lake.query("select id from l where stage = 'canonicalize'", l="ledger")]
    assert lake.read("silver/records", ["id"])["id"].to_pylist() == [min(ids)]  # the policy: the smallest id


def test_salted_grams_put_each_record_s_parts_together_in_order():
    from tunelake.silver.near_dedup import _SALT, salted_grams
    from tunelake.silver.ngrams import mix, ngram_hashes

    prompts = pa.array(["one two three four", None, "five six seven", "eight"])
    chosen = pa.array(["alpha beta gamma", None, None, "delta epsilon"])
    rejected = pa.array(["zeta eta", None, None, None])
    parts = [ngram_hashes(p, 2) for p in (prompts, chosen, rejected)]
    got = salted_grams(parts)
    for i in range(4):
        expected = [parts[0].of(i), *(mix(parts[k].of(i) ^ _SALT[k - 1]) for k in (1, 2))]
        assert got.of(i).tolist() == np.concatenate(expected).tolist()
    none = ngram_hashes(pa.nulls(4, pa.string()), 2)
    alone = salted_grams([parts[0], none, none])
    assert np.array_equal(alone.hashes, parts[0].hashes) and np.array_equal(alone.offsets, parts[0].offsets)
