"""The TRL reward function through TRL 1.16's own reward step (GRPOTrainer._calculate_rewards, called on a stand-in
for the trainer's state): the RL export of real GSM8K rows, as TRL loads it, scored by the records' verifiers through
the reward cache; a repeated step is all cache hits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tunelake.cli import app
from tunelake.rl.trainers import Rewards

trl = pytest.importorskip("trl")


def _grpo_rewards(reward_func, inputs: list[dict], completions: list) -> list[float]:
    """TRL's own reward step over these rows and completions (one completion per row)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device="cpu", is_main_process=True),
        reward_funcs=[reward_func],
        reward_processing_classes=[None],
        reward_func_names=[reward_func.__name__],
        state=SimpleNamespace(global_step=0),
        args=SimpleNamespace(report_to=[]),
        _log_completion_extra=lambda *a, **k: None,
        _log_metric=lambda *a, **k: None,
        environments=None,
    )
    prompts = [row["prompt"] for row in inputs]
    ids = [[0] for _ in inputs]
    return GRPOTrainer._calculate_rewards(trainer, inputs, prompts, completions, ids)[:, 0].tolist()


def test_trl_scores_the_rl_export_through_the_verifiers_and_the_cache(tmp_path, gsm8k_rl_export):
    inputs = gsm8k_rl_export
    answers = [row["extra_info"]["answer"] for row in inputs]
    right = [[{"role": "assistant", "content": f"Step by step... #### {a}"}] for a in answers]
    wrong = [[{"role": "assistant", "content": f"The answer is {int(a) + 1}."}] for a in answers]
    rewards = Rewards(tmp_path / "lake", workers=1)
    try:
        function = rewards.trl()
        assert _grpo_rewards(function, inputs, right) == [1.0] * len(inputs)
        assert _grpo_rewards(function, inputs, wrong) == [0.0] * len(inputs)
        before = rewards.cache.figures()["hits"]
        assert _grpo_rewards(function, inputs, right) == [1.0] * len(inputs)
        assert rewards.cache.figures()["hits"] - before == len(inputs)  # a repeated step never runs a verifier
    finally:
        rewards.close()


def test_a_worker_that_dies_gives_trl_no_reward_rather_than_0_and_is_not_cached(tmp_path):
    rewards = Rewards(tmp_path / "lake", workers=1, plugins=["tests.rl.worker_plugins"])
    try:
        info = {"id": "0" * 32, "verifier": "test_exits_worker", "answer": "1", "verifier_config": None}
        assert rewards.trl()(prompts=["q"], completions=["1"], completion_ids=[[0]], extra_info=[info]) == [None]
        assert rewards.cache.figures()["refused"] == 1 and rewards.cache.figures()["stored"] == 0
    finally:
        rewards.close()


def test_rescore_scores_an_older_versions_completions_again_from_the_cache_alone(tmp_path):
    from tunelake.rl.reward_cache import Reward, RewardCache, RewardInputs, reward_key

    # Rewards an older `numeric` gave (one of them wrongly), as the cache keeps them: no model, no dataset needed.
    kept = [("a" * 32, "#### 18", "18", 1.0), ("b" * 32, "#### 3", "3", 0.0), ("c" * 32, "#### 7", "8", 0.0)]
    with RewardCache.of_lake(tmp_path / "lake") as cache:
        for prompt_id, completion, gold, score in kept:
            inputs = RewardInputs(completion, gold, "{}")
            status = "ok" if score else "wrong"
            cache.put(reward_key(prompt_id, "numeric", "0", inputs), Reward(score, status, "old"), inputs)
    result = CliRunner().invoke(
        app, ["rl", "rescore", "--lake", str(tmp_path / "lake"), "--verifier", "numeric", "--from-version", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "3 rescored, 0 already scored, 1 changed, 0 infra_error" in result.output
    again = CliRunner().invoke(
        app, ["rl", "rescore", "--lake", str(tmp_path / "lake"), "--verifier", "numeric", "--from-version", "0"]
    )
    assert "0 rescored, 3 already scored" in again.output
    same = CliRunner().invoke(
        app, ["rl", "rescore", "--lake", str(tmp_path / "lake"), "--verifier", "numeric", "--from-version", "1"]
    )
    assert same.exit_code == 2 and "nothing to score again" in same.output
