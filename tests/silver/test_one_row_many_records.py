"""An adapter may make several records of one row (rated completions become several pairs): each gets its own
address (source, file, row, sub), and the ledger, dedup and quarantine tell the siblings apart."""

from __future__ import annotations

import json

from tests.conftest import run_build, write_recipe
from tunelake.ingest.adapters import ADAPTERS, Adapter
from tunelake.schema import Regime


def _pairs(row: dict, regime: Regime) -> list[dict]:
    """UltraFeedback-style: the best-rated completion against each lower-rated one."""
    ranked = sorted(row["completions"], key=lambda c: -c["rating"])
    prompt = [{"role": "user", "content": row["prompt"]}]
    return [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": ranked[0]["response"]}],
            "rejected": [{"role": "assistant", "content": worse["response"]}],
            "score_chosen": float(ranked[0]["rating"]),
            "score_rejected": float(worse["rating"]),
        }
        for worse in ranked[1:]
    ]


RATED = Adapter(
    "rated_pairs",
    (Regime.preference,),
    frozenset({"prompt", "completions"}),
    _pairs,
    frozenset({"prompt", "completions"}),
)


def test_each_record_of_a_row_has_its_own_address_and_ledger_entries(tmp_path, monkeypatch):
    monkeypatch.setitem(ADAPTERS, RATED.name, RATED)
    rows = [
        {
            "prompt": "Name a prime.",
            "completions": [
                {"response": "7", "rating": 5},
                {"response": "8", "rating": 1},
                {"response": "", "rating": 2},
            ],
        },
        {
            "prompt": "Name a colour.",
            "completions": [{"response": "Red", "rating": 4}, {"response": "Up", "rating": 1}],
        },
        # The same prompt and completions again: both of its pairs duplicate the first row's.
        {
            "prompt": "Name a prime.",
            "completions": [
                {"response": "7", "rating": 5},
                {"response": "8", "rating": 1},
                {"response": "", "rating": 2},
            ],
        },
    ]
    data = tmp_path / "rated.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "rated", "path": str(data), "format": "rated_pairs", "license": "mit", "origin": "human"}
    recipe = write_recipe(tmp_path, [source], engine={"workers": 1}, silver={"max_quarantine_rate": 1})
    manifest, lake = run_build(recipe)

    # Row 1 gives 2 pairs (one with an empty rejected response: quarantined), row 2 one, row 3 two duplicates.
    kept = lake.query(
        "select row, sub, action, reason from l where stage = 'canonicalize' order by row, sub", l="ledger"
    )
    # Row 1's pairs: sub 0 is 7 against "" (quarantined), sub 1 is 7 against 8: the ledger and the quarantine
    # both say which sibling each entry is about.
    assert kept == [
        (1, 0, "quarantine", "empty_response"),
        (1, 1, "keep", None),
        (2, 0, "keep", None),
        (3, 0, "quarantine", "empty_response"),
        (3, 1, "keep", None),
    ]
    assert lake.query("select row, sub, reason from q order by row", q="silver/quarantine") == [
        (1, 0, "empty_response"),
        (3, 0, "empty_response"),
    ]
    drops = lake.query("select row, sub, reason, detail from l where stage = 'exact_dedup'", l="ledger")
    assert [(r, s) for r, s, *_ in drops] == [(3, 1)]
    assert drops[0][3] == f"kept rated:{data}:1:1"  # the kept sibling's address, sub included
    silver = lake.read("silver/records", ["prompt", "chosen", "rejected", "score_rejected"]).to_pylist()
    assert [(r["rejected"][0]["content"], r["score_rejected"]) for r in silver] == [("8", 1.0), ("Up", 1.0)]
    c = manifest["counts"]["rated"]
    assert (c["bronze"], c["siblings"], c["silver"], c["quarantined"], c["dropped"]) == (3, 2, 2, 2, 1)
