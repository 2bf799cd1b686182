"""silver.verified_gold through real builds: real GSM8K, MATH, HumanEval and MBPP gold passes its own verifier (code
in the sandbox); real MATH solutions that box two answers, and a wrong MBPP solution, are quarantined as
unverifiable_gold; a verifier that disagrees with itself, or whose workers keep dying, stops the build."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.schema import RECORD
from tunelake.silver.verified_gold import VerifiedGold, VerifiedGoldConfig, VerifierUnreliable

REAL = FIXTURES / "real"
ROOT = FIXTURES.parents[1]  # the repository: the child process imports tests.rl.* from it
SOURCES = [
    ("gsm8k", "gsm8k_test_sample.jsonl", "gsm8k"),
    ("math", "math_test_sample.jsonl", "math"),
    ("humaneval", "humaneval_sample.jsonl", "humaneval"),
    ("mbpp", "mbpp_sample.jsonl", "mbpp"),
]


def _sources(extra: list[tuple[str, str, str]] = ()) -> list[dict]:
    return [
        {
            "name": name,
            "path": str(path if "/" in str(path) else REAL / path),
            "format": fmt,
            "license": "mit",
            "origin": "human",
        }
        for name, path, fmt in [*SOURCES, *extra]
    ]


def test_real_gold_passes_its_own_verifier_and_bad_gold_is_quarantined(tmp_path):
    mbpp = json.loads((REAL / "mbpp_sample.jsonl").read_text().splitlines()[0])
    wrong = tmp_path / "mbpp_wrong.jsonl"  # the first real MBPP task with its solution broken
    wrong.write_text(json.dumps({**mbpp, "code": mbpp["code"] + "\n    return None"}) + "\n")
    extra = [("several_boxed", "math_several_boxed_sample.jsonl", "math"), ("mbpp_wrong", str(wrong), "mbpp")]
    silver = {"verified_gold": {"twice": 1.0}, "max_quarantine_rate": 1.0}
    manifest, lake = run_build(write_recipe(tmp_path, _sources(extra), silver=silver))
    checks = lake.read("silver/records", ["source", "gold_check"]).to_pylist()
    assert {r["source"] for r in checks} == {"gsm8k", "math", "humaneval", "mbpp"}
    assert len(checks) == 15 and all(r["gold_check"]["status"] == "ok" for r in checks)
    quarantined = lake.query(
        "select source, reason, field, detail from q where stage = 'verified_gold'", q="silver/quarantine"
    )
    by_source = {source: (reason, field, detail) for source, reason, field, detail in quarantined}
    assert len(quarantined) == 3 and set(by_source) == {"several_boxed", "mbpp_wrong"}
    reason, field, detail = by_source["mbpp_wrong"]
    assert (reason, field) == ("unverifiable_gold", "answer") and detail.startswith("python_tests: wrong:")
    assert all(
        r == "unverifiable_gold" and d.startswith("math: wrong") for s, r, _, d in quarantined if s != "mbpp_wrong"
    )
    assert manifest["stages"]["verified_gold"]["quarantined"] == {"unverifiable_gold": 3}


def _rl_batch(verifier: str, n: int = 3) -> pa.RecordBatch:
    rows = [
        {
            "id": f"{i:032x}",
            "regime": "rl",
            "source": "s",
            "origin": "human",
            "license": "mit",
            "prompt_id": f"{i:032x}",
            "prompt": [{"role": "user", "content": "q"}],
            "answer": "1",
            "verifier": verifier,
        }
        for i in range(n)
    ]
    return pa.RecordBatch.from_pylist(rows, schema=RECORD)


def test_a_verifier_that_disagrees_with_itself_stops_the_build():
    stage = VerifiedGold(VerifiedGoldConfig(twice=1.0, plugins=["tests.rl.worker_plugins"]))
    with pytest.raises(VerifierUnreliable, match="two verdicts"):
        stage.process(_rl_batch("test_flaky"))


def test_a_verifier_whose_workers_keep_dying_stops_the_build_and_scores_nothing_0():
    stage = VerifiedGold(VerifiedGoldConfig(twice=0.0, plugins=["tests.rl.worker_plugins"]))
    with pytest.raises(VerifierUnreliable, match="could not check the gold"):
        stage.process(_rl_batch("test_exits_worker", 1))


def test_a_composites_plugin_part_is_known_from_the_first_record_a_fresh_process_checks():
    # In a fresh interpreter, where no test has imported the plugin module: the stage imports it before it reads the
    # first record's config, so a part naming a plugin verifier is checked, not refused as unknown.
    program = """
import orjson, pyarrow as pa
from tests.rl.test_verified_gold import _rl_batch
from tunelake.silver.verified_gold import VerifiedGold, VerifiedGoldConfig
batch = _rl_batch("composite", 1)
config = orjson.dumps({"parts": [{"verifier": "exact_match"}, {"name": "p", "verifier": "test_flaky"}]}).decode()
batch = batch.set_column(batch.schema.get_field_index("verifier_config"), "verifier_config", pa.array([config]))
batch = batch.set_column(batch.schema.get_field_index("meta"), "meta", pa.array(['{"solution": "1"}']))
outcome = VerifiedGold(VerifiedGoldConfig(twice=0.0, plugins=["tests.rl.worker_plugins"])).process(batch)
print(outcome.quarantine.to_pylist(), outcome.rows["gold_check"].to_pylist())
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None] [{'status': 'ok', 'reason': 'matches the gold answer'}]"
