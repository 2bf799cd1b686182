"""Advantage estimators against hand-computed values, and whole-group admission with each drop reason."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tests.rl.completions import group, rollout
from tunelake.rl.groups import (
    DropReason,
    Estimator,
    Group,
    GroupConfig,
    OverLength,
    admit,
    advantages,
    judge,
)


def test_grpo_divides_by_the_sample_std_plus_eps():
    # mean 0.5; sample std sqrt((4 * 0.25) / 3) = 0.57735
    got = advantages(np.array([1.0, 0.0, 0.0, 1.0]), Estimator.grpo)
    assert got == pytest.approx([0.86588, -0.86588, -0.86588, 0.86588], abs=1e-5)


def test_dr_grpo_subtracts_the_mean_only():
    assert advantages(np.array([1.0, 0.0, 0.0, 0.0]), Estimator.dr_grpo).tolist() == [0.75, -0.25, -0.25, -0.25]


def test_rloo_subtracts_the_mean_of_the_others():
    # 1 - mean(0, 0, 0) = 1; 0 - mean(1, 0, 0) = -1/3
    got = advantages(np.array([1.0, 0.0, 0.0, 0.0]), Estimator.rloo)
    assert got == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert advantages(np.array([0.2, 0.6]), Estimator.rloo) == pytest.approx([-0.4, 0.4])


def test_a_mixed_group_is_admitted_with_its_advantages_in_rollout_order():
    [judged] = judge([group([0.0, 1.0, 1.0, 0.0])], GroupConfig(estimator="dr_grpo"), current_version=3)
    assert judged.decision.admitted and judged.decision.reason is None
    assert judged.advantages == (-0.5, 0.5, 0.5, -0.5)


def test_seven_identical_winners_and_one_loser_are_kept_but_eight_winners_go_whole():
    config = GroupConfig()
    [kept, dropped] = judge([group([1.0] * 7 + [0.0]), group([1.0] * 8)], config, current_version=3)
    assert kept.decision.admitted and len(kept.advantages) == 8
    assert not dropped.decision.admitted and dropped.decision.reason is DropReason.zero_variance
    assert dropped.advantages is None  # none of the 8 rollouts is trained on, not 8 zero advantages
    assert "all 8 rewards are 1" in dropped.decision.detail


def test_all_wrong_is_zero_variance_too():
    assert admit(group([0.0] * 4), GroupConfig(), 3).reason is DropReason.zero_variance


def test_a_group_older_than_max_staleness_is_stale():
    config = GroupConfig(max_staleness=2)
    assert admit(group([1.0, 0.0], policy_version=8), config, current_version=10).admitted
    decision = admit(group([1.0, 0.0], policy_version=7), config, current_version=10)
    assert decision.reason is DropReason.stale and "older than 8" in decision.detail
    assert admit(group([1.0, 0.0], policy_version=0), GroupConfig(), current_version=10).admitted  # None: no limit


def test_one_missing_reward_drops_the_group_as_infra_error():
    decision = admit(group([1.0, None, 0.0]), GroupConfig(), 3)
    assert decision.reason is DropReason.infra_error and "[1]" in decision.detail


def test_one_truncated_rollout_drops_the_group_unless_told_to_keep_it():
    g = group([1.0, 0.0])
    cut = Group(g.prompt_id, g.prompt, (g.rollouts[0], rollout(reward=0.0, finish_reason="length")), 3, 7)
    assert admit(cut, GroupConfig(), 3).reason is DropReason.over_length
    assert admit(cut, GroupConfig(over_length=OverLength.keep), 3).admitted


def test_more_tokens_than_the_limit_is_over_length():
    g = Group("p", [], (rollout(reward=1.0, tokens=10), rollout(reward=0.0, tokens=11)), 3, 7)
    assert admit(g, GroupConfig(max_completion_tokens=11), 3).admitted
    decision = admit(g, GroupConfig(max_completion_tokens=10), 3)
    assert decision.reason is DropReason.over_length and "[1]" in decision.detail


def test_stale_comes_before_the_other_reasons():
    assert admit(group([None, None], policy_version=0), GroupConfig(max_staleness=1), 5).reason is DropReason.stale


def test_an_unknown_estimator_is_refused():
    with pytest.raises(ValidationError, match="grpo"):
        GroupConfig(estimator="ppo")
