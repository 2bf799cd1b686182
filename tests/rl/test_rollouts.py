"""The rl/rollouts table: appends keep every batch, rows read back token-exact, reads are projected and by run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tests.rl.completions import Completion, group
from tunelake import tables
from tunelake.lake import Lake
from tunelake.rl.groups import Group, GroupConfig, Rollout, judge
from tunelake.rl.rollouts import append_rollouts, read_rollouts
from tunelake.schema import ROLLOUTS

VERIFIERS = {"p0": ("numeric", "1"), "p1": ("math", "2")}


def _sampled(seed: int, reward: float) -> Rollout:
    """A rollout with ids over the whole int32 range and float32 logprobs, as a sampler returns them."""
    rng = np.random.default_rng(seed)
    ids = tuple(int(i) for i in rng.integers(0, 2**31 - 1, size=40))
    logprobs = tuple(float(x) for x in (-rng.exponential(2.0, size=40)).astype(np.float32))
    completion = Completion(f"sample {seed}", "stop", (151644, 872, 198), ids, logprobs, "tiny-policy")
    return Rollout(completion, reward, "ok" if reward == 1.0 else "wrong", "checked")


def test_rollouts_read_back_token_exact(tmp_path):
    rollouts = tuple(_sampled(seed, reward) for seed, reward in enumerate([1.0, 0.0, 0.0]))
    g = Group("p0", [{"role": "user", "content": "2 + 2?"}], rollouts, 4, 9)
    lake = Lake(tmp_path / "lake")
    append_rollouts(lake, "run-a", judge([g], GroupConfig(), current_version=4), VERIFIERS)
    back = read_rollouts(lake).to_pylist()
    assert [r["completion_token_ids"] for r in back] == [list(r.completion.completion_token_ids) for r in rollouts]
    assert [r["logprobs"] for r in back] == [list(r.completion.logprobs) for r in rollouts]  # exactly, not approx
    assert all(r["prompt_token_ids"] == [151644, 872, 198] for r in back)
    first = back[0]
    assert (first["run_id"], first["step"], first["policy_version"], first["verifier"]) == ("run-a", 9, 4, "numeric")
    assert (first["admitted"], first["estimator"], first["drop_reason"]) == (True, "grpo", None)
    assert tuple(r["advantage"] for r in back) == judge([g], GroupConfig(), 4)[0].advantages


def test_two_appends_keep_both_batches_with_each_group_decision(tmp_path):
    lake = Lake(tmp_path / "lake")
    config = GroupConfig(estimator="rloo")
    first = append_rollouts(
        lake, "run-a", judge([group([1.0, 0.0]), group([1.0, 1.0], prompt_id="p1")], config, 3), VERIFIERS
    )
    second = append_rollouts(lake, "run-b", judge([group([0.0, 1.0, 1.0], step=8)], config, 3), VERIFIERS)
    assert (first, second) == (0, 1)
    assert lake.version(tables.ROLLOUTS_NAME) == 1  # published at once, outside any build
    back = read_rollouts(lake, ["run_id", "prompt_id", "group_index", "admitted", "drop_reason", "advantage"])
    assert back.schema.names == ["run_id", "prompt_id", "group_index", "admitted", "drop_reason", "advantage"]
    assert back.to_pylist() == [
        {
            "run_id": "run-a",
            "prompt_id": "p0",
            "group_index": 0,
            "admitted": True,
            "drop_reason": None,
            "advantage": 1.0,
        },
        {
            "run_id": "run-a",
            "prompt_id": "p0",
            "group_index": 0,
            "admitted": True,
            "drop_reason": None,
            "advantage": -1.0,
        },
        {
            "run_id": "run-a",
            "prompt_id": "p1",
            "group_index": 1,
            "admitted": False,
            "drop_reason": "zero_variance",
            "advantage": None,
        },
        {
            "run_id": "run-a",
            "prompt_id": "p1",
            "group_index": 1,
            "admitted": False,
            "drop_reason": "zero_variance",
            "advantage": None,
        },
        {
            "run_id": "run-b",
            "prompt_id": "p0",
            "group_index": 0,
            "admitted": True,
            "drop_reason": None,
            "advantage": -1.0,
        },
        {
            "run_id": "run-b",
            "prompt_id": "p0",
            "group_index": 0,
            "admitted": True,
            "drop_reason": None,
            "advantage": 0.5,
        },
        {
            "run_id": "run-b",
            "prompt_id": "p0",
            "group_index": 0,
            "admitted": True,
            "drop_reason": None,
            "advantage": 0.5,
        },
    ]
    assert read_rollouts(lake, ["step"], run_id="run-b")["step"].to_pylist() == [8, 8, 8]


def test_an_infra_error_keeps_its_null_reward_and_the_group_reason(tmp_path):
    lake = Lake(tmp_path / "lake")
    append_rollouts(lake, "run-a", judge([group([1.0, None])], GroupConfig(), 3), VERIFIERS)
    back = read_rollouts(lake, ["reward", "status", "drop_reason", "drop_detail"]).to_pylist()
    assert [r["reward"] for r in back] == [1.0, None]
    assert back[1]["status"] == "infra_error" and back[1]["drop_reason"] == "infra_error"
    assert "re-verify" in back[1]["drop_detail"]


def test_a_lake_without_rollouts_reads_as_an_empty_table(tmp_path):
    table = read_rollouts(Lake(tmp_path / "lake"), ["run_id", "logprobs"])
    assert table.num_rows == 0 and table.schema == pa.schema([ROLLOUTS.field("run_id"), ROLLOUTS.field("logprobs")])
