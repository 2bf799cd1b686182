"""Over-filter warnings: a row-local stage's records in and kept, by facet, and the warnings when its cut shifts a
distribution; checked against statistics computed here from the records themselves."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner

from tests.conftest import run_build, write_recipe
from tunelake.cli import app
from tunelake.schema import RECORD
from tunelake.shift import Facets, OverFilter, findings

COLUMNS = ("regime", "messages", "prompt", "chosen", "rejected", "answer")


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample KS statistic, computed directly on the samples."""
    points = np.union1d(a, b)
    cdf = [np.searchsorted(np.sort(x), points, side="right") / len(x) for x in (a, b)]
    return float(np.abs(cdf[0] - cdf[1]).max())


def test_facets_count_each_record_s_text_and_trained_turns():
    def turns(*contents: str) -> list[dict]:
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(contents)]

    rows = [
        {"regime": "sft", "source": "a", "messages": turns("hi", "hello there", "bye", "ok")},
        {
            "regime": "preference",
            "source": "b",
            "prompt": turns("q?"),
            "chosen": turns("x", "yes")[1:],
            "rejected": turns("x", "no!!")[1:],
            "domain": "chat",
        },
        {"regime": "rl", "source": "a", "prompt": turns("2+2?"), "answer": "4", "lang": "en"},
    ]
    table = pa.Table.from_pylist(
        rows, schema=pa.schema([RECORD.field(c) for c in (*COLUMNS, "source", "domain", "lang")])
    )
    facets = Facets(table.to_batches()[0])
    chars = np.array([2 + 11 + 3 + 2, 2 + 3 + 4, 4 + 1])
    assert facets.bins["length"].tolist() == np.floor(2 * np.log2(chars + 1)).astype(int).tolist()
    assert facets.bins["turns"].tolist() == [4, 2, 1]
    tally = facets.tally(np.array([0, 2]), "kept")
    assert tally[("kept", "source", "a")] == 2 and tally[("kept", "domain", "unknown")] == 2
    assert tally[("kept", "lang", "en")] == 1 and ("kept", "source", "b") not in tally


def test_findings_give_the_ks_of_turns_and_the_share_each_source_lost():
    rng = np.random.default_rng(3)
    turns = rng.integers(1, 9, size=2000)
    source = rng.choice(["a", "b", "c"], size=2000)
    kept = (turns < 6) & (source != "c") | (rng.random(2000) < 0.1)  # long conversations and source c cut
    profile = Counter()
    for side, rows in (("in", np.ones(2000, bool)), ("kept", kept)):
        profile.update((side, "turns", str(v)) for v in turns[rows])
        profile.update((side, "source", str(v)) for v in source[rows])
    found = findings(profile, OverFilter())
    assert found["turns_ks"] == round(_ks(turns, turns[kept]), 4) > 0.2
    lost_c = 1 - kept[source == "c"].sum() / (source == "c").sum()
    assert found["source_most_lost"] == {"value": "c", "share": round(lost_c, 4), "of": int((source == "c").sum())}
    assert [w.split(":")[0] for w in found["warnings"]] == ["turns", "source 'c'"]
    assert findings(profile, OverFilter(max_ks=0.9, max_loss=0.95))["warnings"] == []
    assert "source_most_lost" not in findings(profile, OverFilter(min_records=5000))


def test_a_gate_that_takes_the_long_answers_is_warned_about_in_the_manifest_and_the_output(tmp_path, example_sources):
    # Only SFT and preference responses are judged, so the RL sources dilute the length shift: a lower limit.
    gate = {"quality": {"heuristics": {"max_response_chars": 150}}, "over_filter": {"max_ks": 0.1}}
    recipe = write_recipe(tmp_path, example_sources, silver=gate)
    manifest, lake = run_build(recipe)
    shift = manifest["stages"]["heuristics"]["shift"]

    # The same statistics from the records themselves: the gate kept what is in silver and what exact_dedup (the
    # only stage after it) dropped; it dropped its own ledger rows.
    def ledger_sources(stage: str) -> Counter:
        return Counter(s for (s,) in lake.query(f"select source from l where stage = '{stage}'", l="ledger"))

    kept_sources = Counter(lake.read("silver/records", ["source"])["source"].to_pylist()) + ledger_sources(
        "exact_dedup"
    )
    dropped_sources = ledger_sources("heuristics")
    took = kept_sources + dropped_sources
    lost = {s: dropped_sources[s] / n for s, n in took.items() if n >= 50}
    worst = max(sorted(lost), key=lost.get)
    assert shift["source_most_lost"] == {"value": worst, "share": round(lost[worst], 4), "of": took[worst]}
    assert lost[worst] > 0.5
    warnings = [w for w in manifest["warnings"] if w.startswith("stage heuristics: source")]
    assert warnings == [
        f"stage heuristics: source {s!r}: {share:.0%} of its {took[s]} records removed (limit 50%)"
        for s, share in sorted(lost.items())
        if share > 0.5
    ]
    # Long answers went: the length distribution moved.
    assert shift["length_ks"] > 0.1 and any(w.startswith("stage heuristics: length: KS") for w in manifest["warnings"])
    assert "shift" not in manifest["stages"]["exact_dedup"]  # a global step is not profiled

    # A rebuild from the ingest cache (other workers) reports the same; the build output prints the warnings.
    again = write_recipe(tmp_path, example_sources, silver=gate, engine={"workers": 1})
    result = CliRunner().invoke(app, ["build", str(again)])
    assert result.exit_code == 0, result.output
    rebuilt = lake.manifests()[-1]
    assert all(i["reused"] for i in rebuilt["inputs"])
    assert rebuilt["stages"]["heuristics"]["shift"] == shift and rebuilt["warnings"] == manifest["warnings"]
    for warning in manifest["warnings"]:
        assert f"over-filter warning: {warning}" in " ".join(result.output.split())


def test_a_build_whose_stages_cut_nothing_has_no_warnings(tmp_path, example_sources):
    manifest, _ = run_build(write_recipe(tmp_path, example_sources, silver={"quality": {"heuristics": {}}}))
    shift = manifest["stages"]["heuristics"]["shift"]
    assert manifest["warnings"] == [] and shift["warnings"] == []
    assert shift["length_ks"] < 0.05 and shift["turns_ks"] < 0.05
