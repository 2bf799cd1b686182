"""A composite reward: several (verifier, gold, weight) dimensions per prompt, each normalised as the recipe's
`rl.normalize` declares; on real GSM8K prompts, through the reward cache, TRL's own reward step and verified_gold."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tests.rl.test_trainers import _grpo_rewards
from tunelake.ingest.adapters.rl import gsm8k_answer
from tunelake.rl.composite import Dimension, combine, dimensions
from tunelake.rl.trainers import Rewards, declared_normalize
from tunelake.rl.verifiers import ConfigError

GSM8K = [json.loads(line) for line in (FIXTURES / "real" / "gsm8k_test_sample.jsonl").read_text().splitlines()]
FORMAT = {"pattern": r"<think>[\s\S]+</think>[\s\S]*", "extract": False}  # reasoning before the answer
THINK = {"name": "format", "verifier": "regex", "config": FORMAT, "weight": 0.5, "prove": False}
COMPOSITE = json.dumps({"parts": [{"name": "correct", "verifier": "numeric"}, THINK]})


def test_a_records_dimensions_default_to_its_own_gold_and_name_what_is_wrong():
    single = dimensions("numeric", "18", None)
    assert single == (Dimension("numeric", "numeric", "18", "{}", 1.0, True),)
    correct, think = dimensions("composite", "18", COMPOSITE)
    assert (correct.name, correct.answer, correct.weight, correct.prove) == ("correct", "18", 1.0, True)
    assert (think.name, think.verifier, think.answer, think.weight, think.prove) == (
        "format",
        "regex",
        "18",
        0.5,
        False,
    )
    assert json.loads(think.config) == FORMAT
    bad = [
        ({"parts": []}, "parts"),
        ({"parts": [{"verifier": "nope"}]}, "unknown verifier 'nope'"),
        ({"parts": [{"verifier": "numeric"}, {"verifier": "numeric"}]}, "numeric named twice"),
        ({"parts": [{"verifier": "composite"}]}, "cannot be a composite"),
        ({"parts": [{"verifier": "numeric", "weight": 0}]}, "weight"),
        ({"parts": [{"verifier": "numeric", "config": {"tolerance": "x"}}]}, "tolerance"),
        ({"parts": [{"verifier": "numeric", "prove": False}]}, "every part has prove: false"),
    ]
    for config, expected in bad:
        with pytest.raises(ConfigError, match=expected):
            dimensions("composite", "18", json.dumps(config))


def test_none_is_the_weighted_mean_and_group_normalises_each_dimension_over_the_group():
    dims = dimensions("composite", "18", COMPOSITE)
    scores = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], float)
    assert combine(scores, dims, {}).tolist() == pytest.approx([1.0, 2 / 3, 0.0, 1 / 3])
    # format over the group: mean 0.5, std 0.5, so +1 / -1; correct as it is.
    grouped = combine(scores, dims, {"format": "group"})
    assert grouped.tolist() == pytest.approx([(1 + 0.5) / 1.5, (1 - 0.5) / 1.5, -0.5 / 1.5, 0.5 / 1.5])
    # A dimension on which the group agrees carries no signal: 0, never a division by zero.
    agreed = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], float)
    assert combine(agreed, dims, {"format": "group"}).tolist() == pytest.approx([2 / 3, 2 / 3, 0, 0])


def _completions(answer: str) -> list[str]:
    return [
        f"<think>Add them up.</think> #### {answer}",  # right, formatted
        f"#### {answer}",  # right, unformatted
        f"<think>Off by one.</think> #### {int(answer) + 1}",  # wrong, formatted
        "I do not know.",  # wrong, unformatted
    ]


def test_rewards_score_each_dimension_through_the_cache_and_combine_them(tmp_path):
    row = GSM8K[0]
    answer = gsm8k_answer(row["answer"])
    rewards = Rewards(tmp_path / "lake", workers=1, normalize={"format": "group"})
    try:
        scored = rewards.group("a" * 32, "composite", answer, COMPOSITE, _completions(answer))
        assert [r.score for r in scored] == pytest.approx([1.0, 1 / 3, 1 / 3, -1 / 3])
        assert [r.status for r in scored] == ["ok", "wrong", "wrong", "unparsable"]  # the first not ok
        assert scored[1].reason.startswith("correct: ok; format: wrong (")
        figures = rewards.cache.figures()
        assert figures["stored"] == 8  # one reward per dimension and completion: a version bump rescores one
        assert rewards.group("a" * 32, "composite", answer, COMPOSITE, _completions(answer)) == scored
        assert rewards.cache.figures()["hits"] - figures["hits"] == 8
        with pytest.raises(ValueError, match="format normalised over the group"):
            rewards.reward("a" * 32, "composite", answer, COMPOSITE, "#### 18")
        # Without group normalisation a completion has a reward alone: the weighted mean.
        plain = Rewards(tmp_path / "lake", workers=1, normalize={})
        try:
            assert plain.reward("a" * 32, "composite", answer, COMPOSITE, f"#### {answer}").score == pytest.approx(
                2 / 3
            )
        finally:
            plain.close()
    finally:
        rewards.close()


def test_a_dimension_that_cannot_score_leaves_its_completion_out_of_the_group_rather_than_scoring_it_0(tmp_path):
    parts = {"parts": [{"verifier": "numeric"}, {"name": "dies", "verifier": "test_exits_worker", "weight": 1}]}
    rewards = Rewards(tmp_path / "lake", workers=1, plugins=["tests.rl.worker_plugins"], normalize={})
    try:
        (reward,) = rewards.group("b" * 32, "composite", "3", json.dumps(parts), ["#### 3"])
        assert reward.status == "infra_error" and reward.reason.startswith("dies: the verifier worker died")
    finally:
        rewards.close()


def test_trl_normalises_a_composite_over_whole_groups_and_refuses_a_split_one(tmp_path):
    rows = _rl_rows(GSM8K[:2])
    path = tmp_path / "bank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "bank", "path": str(path), "format": "rl", "license": "mit", "origin": "human"}
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": ["parquet"]}
    run_build(write_recipe(tmp_path, [source], gold=gold, rl={"normalize": {"format": "group"}}))
    assert declared_normalize(tmp_path / "lake") == {"format": "group"}
    bank = pq.read_table(tmp_path / "lake/exports/rl/train.parquet").to_pylist()
    inputs = [row for row in bank for _ in range(4)]  # TRL repeats each prompt num_generations times
    completions = [
        [{"role": "assistant", "content": c}] for row in bank for c in _completions(row["extra_info"]["answer"])
    ]
    rewards = Rewards(tmp_path / "lake", workers=1)
    try:
        scored = _grpo_rewards(rewards.trl(num_generations=4), inputs, completions)
        assert scored == pytest.approx([1.0, 1 / 3, 1 / 3, -1 / 3] * 2)
        with pytest.raises(ValueError, match="num_generations=4 are needed"):
            _grpo_rewards(rewards.trl(num_generations=4), inputs[:6], completions[:6])  # a group split in two
    finally:
        rewards.close()


def _rl_rows(rows: list[dict], config: str = COMPOSITE) -> list[dict]:
    """Real GSM8K problems as generic RL rows with a composite reward; the worked solution kept for verified_gold."""
    return [
        {
            "prompt": r["question"],
            "answer": gsm8k_answer(r["answer"]),
            "solution": r["answer"],
            "verifier": "composite",
            "verifier_config": config,
        }
        for r in rows
    ]


def test_verified_gold_proves_a_composites_dimensions_and_quarantines_a_config_no_verifier_accepts(tmp_path):
    proved = json.dumps({"parts": [{"name": "correct", "verifier": "numeric"}, {**THINK, "prove": True}]})
    bad = json.dumps({"parts": [{"verifier": "numeric", "config": {"tolerance": "close"}}]})
    rows = [*_rl_rows(GSM8K[:2]), *_rl_rows(GSM8K[2:3], proved), *_rl_rows(GSM8K[3:4], bad)]
    path = tmp_path / "bank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = {"name": "bank", "path": str(path), "format": "rl", "license": "mit", "origin": "human"}
    silver = {"verified_gold": {"twice": 1.0}, "max_quarantine_rate": 1.0}
    manifest, lake = run_build(write_recipe(tmp_path, [source], silver=silver))
    kept = lake.read("silver/records", ["gold_check"]).to_pylist()
    assert [r["gold_check"]["status"] for r in kept] == ["ok", "ok"]  # the unproved format dimension is not asked
    quarantined = lake.query(
        "select reason, field, detail from q where stage = 'verified_gold' order by reason", q="silver/quarantine"
    )
    assert [(reason, field) for reason, field, _ in quarantined] == [
        ("bad_verifier_config", "verifier_config"),
        ("unverifiable_gold", "answer"),
    ]
    assert "tolerance" in quarantined[0][2]
    assert quarantined[1][2].startswith("composite: wrong: format: ")
