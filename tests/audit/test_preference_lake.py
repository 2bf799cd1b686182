"""The preference audit on built lakes: the manifest's `audits.preference` and `tunelake audit preference`, over
real HH-RLHF pairs and over trl_preference records that carry meta.pair (a lake without silver.preference)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.cli import app

runner = CliRunner()
HH = FIXTURES / "real" / "hh_rlhf_harmless_sample.jsonl"


def test_real_hh_rlhf_audit_in_the_manifest_and_the_command(tmp_path):
    manifest, lake = run_build(
        write_recipe(tmp_path, [{"name": "hh", "path": str(HH), "license": "mit", "origin": "human"}])
    )
    audit = manifest["audits"]["preference"]
    # 20 rows, 6 quarantined (4 bad_role_order, 2 empty_response); of the 14 pairs the chosen side is longer in 8.
    assert audit["pairs"] == 14 and audit["prompts"] == 14
    assert audit["length"]["overall"]["chosen_longer"] == 8 and audit["length"]["overall"]["rejected_longer"] == 6
    assert audit["ties"] == {"kept_soft": 0, "dropped": 0, "rate": 0.0}
    assert audit["length"]["overall"]["margin_correlation"] is None  # HH-RLHF has no scores
    assert audit["notes"][0].startswith("no pair_* columns")

    result = runner.invoke(app, ["audit", "preference", "--lake", str(lake.root)])
    assert result.exit_code == 0, result.output
    assert "preference audit: 14 pairs, 14 prompts" in result.output
    assert "chosen longer (words)" in result.output and "57.1%" in result.output
    assert "source hh" in result.output and "weak pairs" in result.output
    assert "note: no pair_* columns" in result.output

    result = runner.invoke(app, ["audit", "preference", "--lake", str(lake.root), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == audit  # the published lake's audit is the build's


def test_meta_pair_of_trl_preference_records_without_the_step(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a longer good answer", "rejected": "bad", "score_chosen": 8, "score_rejected": 5},
        {
            "prompt": "q2",
            "chosen": "b",
            "rejected": "b2",
            "pair": {"kind": "judged", "tie": False, "chosen_position": "b", "reviewers": ["gpt4"]},
        },
        {
            "prompt": "q3",
            "chosen": "c one",
            "rejected": "c two",
            "pair": {"kind": "rated", "tie": True, "margin": 0.0},
        },
        {"prompt": "q4", "chosen": "d one two", "rejected": "d", "pair": {"kind": "rated", "margin": 2.5}},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "syn", "path": str(data), "format": "trl_preference", "license": "mit", "origin": "synthetic"}
    manifest, _ = run_build(write_recipe(tmp_path, [source]))
    audit = manifest["audits"]["preference"]
    assert audit["pairs"] == 4
    assert audit["ties"]["kept_soft"] == 1
    # Margins: q1 from its scores (3), q4 from meta (2.5), q3 a tie (0); q2 is judged (none).
    assert audit["margin"]["pairs_with_margin"] == 3 and audit["margin"]["p100"] == 3.0
    assert audit["position"] == {"gpt4": {"picked_a": 0, "picked_b": 1, "ties": 0, "share_a": 0.0}}
    assert audit["agreement"]["units"] == 0 and audit["agreement"]["alpha"] is None


def test_a_lake_without_preference_records(tmp_path):
    rows = [{"instruction": "Say hi", "input": "", "output": "Hi!"}]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, lake = run_build(
        write_recipe(tmp_path, [{"name": "a", "path": str(data), "license": "mit", "origin": "human"}])
    )
    assert manifest["audits"] == {}
    result = runner.invoke(app, ["audit", "preference", "--lake", str(lake.root)])
    assert result.exit_code == 0 and "No preference records" in result.output
    result = runner.invoke(app, ["audit", "preference", "--lake", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "No build" in result.output
