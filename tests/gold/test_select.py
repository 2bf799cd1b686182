"""gold.select through real builds: real Alpaca prompts (examples/data) beside planted families of near copies (one
long real prompt, one word substituted per copy). k-center keeps one record of each family before any near copy,
covers the corpus better than a random sample of the same size, and selects the same records with 1 and 2
workers; every record it leaves out is in the ledger as not_selected with its distance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_build, write_recipe
from tests.silver.test_diversity import NOUNS, _alpaca

FAMILIES, COPIES, SINGLES = 5, 6, 100


def _corpus(tmp_path: Path) -> tuple[list[dict], list[int | None]]:
    """Alpaca rows and planted families (rows, and each row's family: None for a real row of its own)."""
    real = _alpaca()
    long = [r for r in real if len(f"{r['instruction']} {r['input']}".split()) >= 30][:FAMILIES]
    singles = [r for r in real if r not in long][:SINGLES]
    rows, family = list(singles), [None] * len(singles)
    for f, base in enumerate(long):
        words = base["input"].split()
        for k in range(COPIES):
            copy = list(words)
            copy[len(words) // 2] = NOUNS[k]
            rows.append({"instruction": base["instruction"], "input": " ".join(copy), "output": f"Answer {f}.{k}."})
            family.append(f)
    return rows, family


def _build(tmp_path: Path, rows: list[dict], workers: int, size: int) -> tuple[dict, object]:
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "alpaca", "path": str(path), "format": "alpaca", "license": "cc-by-nc-4.0", "origin": "human"}
    recipe = write_recipe(
        tmp_path, [source], gold={"select": {"size": size, "by": "prompt"}}, engine={"workers": workers}
    )
    return run_build(recipe)


def _kept(lake) -> list[int]:
    return sorted(row for (row,) in lake.query("select row from l where stage = 'split'", l="ledger"))


def test_k_center_keeps_one_of_each_family_and_covers_better_than_a_random_sample(tmp_path):
    rows, family = _corpus(tmp_path)
    size = SINGLES + FAMILIES  # one record per family and every other prompt: nothing closer is left out
    manifest, lake = _build(tmp_path, rows, 1, size)
    kept = _kept(lake)
    assert len(kept) == size
    picked = [family[row - 1] for row in kept]
    assert sorted(f for f in picked if f is not None) == list(range(FAMILIES))  # one of each family
    assert picked.count(None) == SINGLES

    report = manifest["reports"]["select"]
    assert report["records"] == len(rows) and report["selected"] == size
    assert report["coverage"]["radius"] <= report["random_sample"]["radius"]
    assert report["coverage"]["mean_distance"] <= report["random_sample"]["mean_distance"]
    assert report["coverage"]["radius"] < 0.5  # what is left out are near copies of a kept record

    left_out = lake.query("select row, reason, detail from l where stage = 'select' order by row", l="ledger")
    assert [row for row, _, _ in left_out] == sorted(set(range(1, len(rows) + 1)) - set(kept))
    assert {reason for _, reason, _ in left_out} == {"not_selected"}
    detail = re.compile(r"k_center by prompt \(size 105\): distance (\S+) to the nearest selected record")
    distances = [float(detail.fullmatch(d)[1]) for *_, d in left_out]
    assert max(distances) == pytest.approx(report["coverage"]["radius"], abs=1e-3)
    assert manifest["stages"]["select"]["dropped"] == {"not_selected": len(rows) - size}


def test_the_selection_is_the_same_with_one_and_two_workers(tmp_path):
    rows, _ = _corpus(tmp_path)
    selections = []
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        manifest, lake = _build(tmp_path / str(workers), rows, workers, 40)
        selections.append((_kept(lake), manifest["reports"]["select"]))
    assert selections[0] == selections[1]
