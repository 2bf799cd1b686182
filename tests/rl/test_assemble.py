"""R1-style assembly from a handmade rollouts table over real GSM8K prompts, scored by the real numeric verifier:
rejection-sampled SFT examples and preference pairs, then a build that curates both into gold."""

from __future__ import annotations

import json
import re

import orjson
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tests.rl.completions import Completion
from tunelake.lake import Lake
from tunelake.rl.assemble import assemble
from tunelake.rl.groups import Group, GroupConfig, Rollout, judge
from tunelake.rl.rollouts import append_rollouts, read_rollouts
from tunelake.rl.verifiers import VERIFIERS, check

ROWS = [json.loads(line) for line in (FIXTURES / "real" / "gsm8k_test_sample.jsonl").read_text().splitlines()[:5]]
GOLD = [row["answer"].rpartition("####")[2].strip() for row in ROWS]


def _solution(i: int, final: str | None = None) -> str:
    """Row i's worked solution as a model would write it (no calculator marks), ending in `final` (default: gold)."""
    steps = re.sub(r"<<[^>]*>>", "", ROWS[i]["answer"].rpartition("####")[0]).strip()
    return f"{steps}\nThe answer is {GOLD[i] if final is None else final}."


def _rollout(i: int, text: str, finish_reason: str = "stop") -> Rollout:
    verdict = check("numeric", GOLD[i], text)
    ids = tuple(range(1000, 1000 + len(text.split())))
    completion = Completion(text, finish_reason, (1, 2), ids, tuple(-0.25 for _ in ids), "tiny-policy")
    return Rollout(completion, verdict.score, verdict.status.value, verdict.reason)


def _group(i: int, rollouts: list[Rollout], step: int = 1, policy_version: int = 1) -> Group:
    prompt = [{"role": "user", "content": ROWS[i]["question"]}]
    return Group(f"gsm8k-{i}", prompt, tuple(rollouts), policy_version, step)


def _run(lake: Lake) -> None:
    """Two steps of one run over five real prompts; each prompt shows one case of the assembly's rules."""
    step1 = [
        # 0: two right (the first sampled wins the tie) and one wrong: an example and a pair
        _group(
            0, [_rollout(0, _solution(0)), _rollout(0, f"The answer is {GOLD[0]}."), _rollout(0, _solution(0, "7"))]
        ),
        # 1: all wrong: nothing (the group is dropped as zero_variance)
        _group(1, [_rollout(1, _solution(1, "11")), _rollout(1, _solution(1, "12"))]),
        # 2: all right: an example even though the group was dropped (zero_variance), no pair
        _group(2, [_rollout(2, _solution(2)), _rollout(2, _solution(2))]),
        # 3: the only right one was cut at the token limit: neither an example nor a pair
        _group(3, [_rollout(3, _solution(3), finish_reason="length"), _rollout(3, _solution(3, "1"))]),
        # 4: no number at all at step 1 ...
        _group(4, [_rollout(4, "I am not sure how to solve this."), _rollout(4, "Let me think.")]),
    ]
    # ... and right at step 2, from the next policy
    step2 = [_group(4, [_rollout(4, _solution(4)), _rollout(4, "Let me think again.")], step=2, policy_version=2)]
    verifiers = {f"gsm8k-{i}": ("numeric", VERIFIERS["numeric"].version) for i in range(5)}
    config = GroupConfig(estimator="rloo")
    append_rollouts(lake, "run-1", judge(step1, config, current_version=1), verifiers)
    append_rollouts(lake, "run-1", judge(step2, config, current_version=2), verifiers)


def test_rejection_sampling_and_pairs_follow_the_verdicts(tmp_path):
    lake = Lake(tmp_path / "lake")
    _run(lake)
    made = assemble(lake, "run-1", tmp_path / "assembled")
    assert (made.examples, made.pairs) == (3, 2)
    sft = [orjson.loads(line) for line in made.sft.read_bytes().splitlines()]
    assert [row["rl_prompt_id"] for row in sft] == ["gsm8k-0", "gsm8k-2", "gsm8k-4"]
    assert sft[0]["messages"] == [
        {"role": "user", "content": ROWS[0]["question"]},
        {"role": "assistant", "content": _solution(0)},  # the tie went to the first sampled
    ]
    assert (sft[2]["rl_step"], sft[2]["rl_policy_version"], sft[2]["rl_reward"]) == (2, 2, 1.0)
    assert (sft[0]["rl_run_id"], sft[0]["rl_verifier"], sft[0]["rl_verifier_version"]) == ("run-1", "numeric", "1")
    pairs = [orjson.loads(line) for line in made.preference.read_bytes().splitlines()]
    assert [row["rl_prompt_id"] for row in pairs] == ["gsm8k-0", "gsm8k-4"]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": _solution(0)}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": _solution(0, "7")}]
    assert (pairs[0]["score_chosen"], pairs[0]["score_rejected"], pairs[0]["rl_margin"]) == (1.0, 0.0, 1.0)
    assert (pairs[1]["rl_status_chosen"], pairs[1]["rl_status_rejected"]) == ("ok", "unparsable")
    # the worst failed one of prompt 4: both step-1 rollouts are unparsable, the first sampled is taken
    assert pairs[1]["rejected"][0]["content"] == "I am not sure how to solve this."
    assert (pairs[1]["rl_policy_version_chosen"], pairs[1]["rl_policy_version_rejected"]) == (2, 1)


def test_a_build_curates_the_assembled_files_into_gold(tmp_path):
    lake = Lake(tmp_path / "lake")
    _run(lake)
    made = assemble(lake, "run-1", tmp_path / "assembled")
    sources = [
        {"name": "rl_sft", "path": str(made.sft), "license": "mit", "origin": "synthetic"},
        {"name": "rl_pairs", "path": str(made.preference), "license": "mit", "origin": "synthetic"},
    ]
    manifest, lake = run_build(write_recipe(tmp_path, sources))  # the same lake the rollouts live in

    def gold(regime: str, columns: list[str]) -> list[dict]:
        rows = [r for split in ("train", "validation", "test") for r in _gold_rows(lake, regime, split, columns)]
        return sorted(rows, key=lambda r: json.loads(r["meta"])["rl_prompt_id"])

    sft = gold("sft", ["source", "messages", "meta"])
    assert [json.loads(r["meta"])["rl_prompt_id"] for r in sft] == ["gsm8k-0", "gsm8k-2", "gsm8k-4"]
    assert {r["source"] for r in sft} == {"rl_sft"}
    assert sft[0]["messages"][1]["content"] == _solution(0)
    meta = json.loads(sft[2]["meta"])
    assert (meta["rl_run_id"], meta["rl_policy_version"], meta["rl_verifier"]) == ("run-1", 2, "numeric")
    pairs = gold("preference", ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "meta"])
    assert [(r["score_chosen"], r["score_rejected"]) for r in pairs] == [(1.0, 0.0), (1.0, 0.0)]
    assert pairs[1]["prompt"][0]["content"] == ROWS[4]["question"]
    assert json.loads(pairs[1]["meta"])["rl_margin"] == 1.0
    # the build left the rollouts alone: both appends are still there, unchanged
    assert read_rollouts(lake, ["step"])["step"].to_pylist() == [1] * 11 + [2] * 2


def _gold_rows(lake: Lake, regime: str, split: str, columns: list[str]) -> list[dict]:
    table = f"gold/{regime}/{split}"
    return lake.read(table, columns).to_pylist() if lake.exists(table) else []


def test_an_unknown_run_is_refused_by_name(tmp_path):
    lake = Lake(tmp_path / "lake")
    _run(lake)
    with pytest.raises(ValueError, match="no rollouts of run 'run-2'"):
        assemble(lake, "run-2", tmp_path / "assembled")
