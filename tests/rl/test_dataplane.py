"""The RL data plane's loop on banks built from real GSM8K, MATH, HumanEval and MBPP rows: groups, admission,
rollouts kept token-exact, resume without paying or scoring twice, endpoint faults, calibration and its window,
staleness, and the reward-hacking alarm."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.ingest.adapters.rl import gsm8k_answer
from tunelake.lake import Lake
from tunelake.rl.alarm import AlarmConfig
from tunelake.rl.calibrate import calibrate
from tunelake.rl.completion import Completion, Sampling
from tunelake.rl.curriculum import EmptyWindow
from tunelake.rl.dataplane import DataPlane, LoopConfig, RewardHacking, SamplingConfig
from tunelake.rl.endpoint import Endpoint, EndpointError, RequestCache
from tunelake.rl.groups import GroupConfig
from tunelake.rl.rollouts import read_rollouts
from tunelake.rl.serve import Service, Stopped
from tunelake.rl.trainers import Rewards

REAL = FIXTURES / "real"
BANKS = {"gsm8k": "gsm8k_test_sample.jsonl", "math": "math_test_sample.jsonl", "mbpp": "mbpp_sample.jsonl"}
BANKS |= {"humaneval": "humaneval_sample.jsonl"}


def build_bank(tmp_path, names=("gsm8k",), validation: float = 0.0) -> Lake:
    sources = [
        {"name": n, "path": str(REAL / BANKS[n]), "format": n, "license": "mit", "origin": "human"} for n in names
    ]
    gold = {"split": {"validation": validation, "test": 0.0}, "export": []}
    return run_build(write_recipe(tmp_path, sources, gold=gold))[1]


class Student:
    """A policy in the test's process: for each prompt, `right` of its k completions carry the gold answer (the
    bank's own, found by the prompt's text), the rest a wrong one; `think` of them open with a reasoning block."""

    def __init__(self, lake: Lake, split: str = "train", right: int = 3, think: int = 0):
        gold = lake.read(f"gold/rl/{split}", ["prompt", "answer", "verifier"]).to_pylist()
        self.gold = {row["prompt"][-1]["content"]: (row["answer"], row["verifier"]) for row in gold}
        self.right, self.think, self.calls = right, think, 0
        self.__name__ = "student"

    def __call__(self, messages: list[dict], sampling: Sampling, k: int) -> list[Completion]:
        self.calls += 1
        answer, verifier = self.gold[messages[-1]["content"]]
        texts = [self._text(answer, verifier, i < self.right) for i in range(k)]
        texts = [("<think>Let me see.</think> " if i < self.think else "") + t for i, t in enumerate(texts)]
        return [
            Completion(t, "stop", (1, 2, 3), tuple(range(10, 10 + len(t) % 7 + 1)), None, "student") for t in texts
        ]

    def _text(self, answer: str, verifier: str, right: bool) -> str:
        if verifier == "python_tests":  # the canonical solution, or one that returns nothing
            return f"```python\n{answer}\n```" if right else "```python\ndef nothing():\n    return None\n```"
        if verifier == "math":
            return f"So the answer is $\\boxed{{{answer if right else answer + '+1'}}}$."
        return f"#### {answer if right else answer + '1'}"  # 18 -> 181: the wrong number


def test_a_step_emits_grpo_groups_drops_the_ones_with_nothing_to_learn_and_keeps_every_rollout(tmp_path):
    lake = build_bank(tmp_path, ("gsm8k", "math", "humaneval", "mbpp"))
    config = LoopConfig(k=4, prompts_per_step=6, curriculum={"seed": 1})
    plane = DataPlane(lake, Student(lake, right=2), config, run_id="r1")
    step = plane.step(policy_version=0)
    assert len(step.judged) == 6 and len(step.admitted) == 6  # 2 right, 2 wrong: every group has a signal
    for judged in step.admitted:
        rewards = [r.reward for r in judged.group.rollouts]
        assert rewards == [1.0, 1.0, 0.0, 0.0]
        assert judged.advantages == pytest.approx([0.866, 0.866, -0.866, -0.866], abs=1e-3)  # GRPO, std over k-1
    rows = read_rollouts(lake, run_id="r1").to_pylist()
    assert len(rows) == 24 and {r["verifier"] for r in rows} >= {"numeric", "math", "python_tests"} & {
        r["verifier"] for r in rows
    }
    assert all(r["completion_token_ids"] and r["prompt_token_ids"] == [1, 2, 3] for r in rows)
    # All right (or all wrong): the whole group goes, with its reason, never 4 rollouts with advantage 0.
    step = DataPlane(lake, Student(lake, right=4), config, run_id="r2").step()
    assert step.admitted == [] and step.dropped == {"zero_variance": 6}
    dropped = read_rollouts(lake, ["admitted", "drop_reason", "advantage"], run_id="r2").to_pylist()
    assert all(not r["admitted"] and r["drop_reason"] == "zero_variance" and r["advantage"] is None for r in dropped)
    log = [orjson.loads(line) for line in (lake.root / "_rl/runs/r2.jsonl").read_bytes().splitlines()]
    assert log[0]["dropped"] == {"zero_variance": 6} and log[0]["training_reward"] == 1.0


def test_a_run_resumed_after_a_kill_asks_the_same_prompts_and_never_appends_a_step_twice(tmp_path):
    lake = build_bank(tmp_path)
    config = LoopConfig(k=4, prompts_per_step=2)
    whole = [
        [j.group.prompt_id for j in step.judged]
        for step in DataPlane(lake, Student(lake), config, run_id="whole").run(4)
    ]
    first = DataPlane(lake, Student(lake), config, run_id="cut")
    seen = [[j.group.prompt_id for j in first.step().judged] for _ in range(2)]

    class Killed(Exception):
        pass

    def killed(step):  # the kill lands after the step's rollouts were appended, before its state was saved
        raise Killed

    first._save = killed
    with pytest.raises(Killed):
        first.step()
    again = DataPlane(lake, Student(lake), config, run_id="cut")
    seen += [[j.group.prompt_id for j in again.step().judged] for _ in range(2)]
    assert seen == whole  # the same prompts, step by step, as a run that was never killed
    steps = read_rollouts(lake, ["step"], run_id="cut")["step"].to_pylist()
    assert sorted(set(steps)) == [0, 1, 2, 3] and len(steps) == 4 * 2 * 4  # step 2 appended once
    with pytest.raises(ValueError, match="another loop config"):
        DataPlane(lake, Student(lake), LoopConfig(k=8), run_id="cut")


def test_through_a_real_endpoint_rollouts_are_token_exact_and_a_resume_pays_and_scores_nothing_twice(
    tmp_path, chat_server
):
    lake = build_bank(tmp_path)
    config = LoopConfig(k=4, prompts_per_step=3, sampling=SamplingConfig(max_tokens=8, seed=3))

    def plane() -> DataPlane:
        endpoint = Endpoint(chat_server.base_url, chat_server.model, cache=RequestCache.of_lake(lake.root))
        return DataPlane(lake, endpoint, config, run_id="live", rewards=Rewards(lake.root, workers=1))

    live = plane()
    step = live.step(policy_version=0)
    assert chat_server.stats()["served"] == 3
    rows = read_rollouts(lake, run_id="live").to_pylist()
    by_text = {(r["prompt_id"], r["rollout_index"]): r for r in rows}
    for judged in step.judged:
        for i, rollout in enumerate(judged.group.rollouts):
            row = by_text[(judged.group.prompt_id, i)]
            assert tuple(row["completion_token_ids"]) == rollout.completion.completion_token_ids  # as sampled
            assert tuple(row["prompt_token_ids"]) == rollout.completion.prompt_token_ids
            assert row["logprobs"] == pytest.approx(rollout.completion.logprobs, abs=1e-6)
            assert row["finish_reason"] == rollout.completion.finish_reason
    # A tiny random model never answers a GSM8K question: every group is all wrong (or cut) and is dropped.
    assert all(j.decision.reason.value in {"zero_variance", "over_length"} for j in step.judged)

    live._save = lambda step: (_ for _ in ()).throw(KeyboardInterrupt())  # killed before its state was saved
    with pytest.raises(KeyboardInterrupt):
        live.step(policy_version=0)
    paid = chat_server.stats()["served"]
    resumed = plane()
    resumed.step(policy_version=0)
    assert chat_server.stats()["served"] == paid  # the killed step's asks were answered from the request cache
    assert resumed.rewards.cache.figures()["misses"] == 0  # and its verdicts from the reward cache


def test_endpoint_faults_are_retried_and_a_persistent_one_stops_the_step_with_nothing_lost(tmp_path, chat_server):
    lake = build_bank(tmp_path)
    config = LoopConfig(k=2, prompts_per_step=2, sampling=SamplingConfig(max_tokens=4))
    endpoint = Endpoint(chat_server.base_url, chat_server.model, retries=3, backoff_s=0.01, timeout_s=5)
    plane = DataPlane(lake, endpoint, config, run_id="faults", rewards=Rewards(lake.root, workers=1))
    chat_server.control(faults=[{"status": 500}, {"status": 429, "retry_after": 0}, {"drop": True}])
    assert len(plane.step().judged) == 2
    chat_server.control(faults=[{"status": 503}] * 20)
    with pytest.raises(EndpointError, match="failed 4 times"):
        plane.step()
    chat_server.control(faults=[])
    assert plane.step().number == 1  # the failed step is asked again, not skipped
    plane.step()
    with pytest.raises(EndpointError):  # killed by a persistent fault while asking step 3 ...
        chat_server.control(faults=[{"status": 503}] * 20)
        plane.step()
    chat_server.control(faults=[])
    resumed = DataPlane(lake, endpoint, config, run_id="faults", rewards=Rewards(lake.root, workers=1))
    assert resumed.step().number == 3  # ... a resumed run asks it first, then goes on
    assert resumed.step().number == 4


def test_calibration_writes_pass_rates_and_the_window_keeps_the_prompts_worth_training_on(tmp_path):
    lake = build_bank(tmp_path)
    rewards = Rewards(lake.root, workers=1)
    student = Student(lake, right=3)
    calibration = calibrate(lake, student, rewards, k=4, sampling=Sampling(max_tokens=64))
    assert (calibration.prompts, calibration.mean_pass_rate) == (5, 0.75)
    rows = lake.read("rl/calibration").to_pylist()
    assert {(r["pass_rate"], r["difficulty"], r["k"], r["model"]) for r in rows} == {(0.75, 0.25, 4, "student")}
    assert json.loads(rows[0]["sampling"])["max_tokens"] == 64
    plane = DataPlane(lake, student, LoopConfig(k=4, prompts_per_step=2), rewards=rewards)
    assert plane.curriculum.pass_rate(plane.bank.ids[0]) == 0.75  # the calibration seeds the curriculum
    # A policy that solves everything leaves nothing inside 0 < p < 1: a clear stop, never a crash mid-run.
    solved = Student(lake, right=4)
    calibrate(lake, solved, rewards, k=4)
    with pytest.raises(EmptyWindow, match="of 5 measured, 0 at or below 0 .* and 5 at or above 1"):
        DataPlane(lake, solved, LoopConfig(k=4), rewards=rewards)


def test_groups_generated_by_a_policy_too_old_are_dropped_as_stale(tmp_path):
    lake = build_bank(tmp_path)
    config = LoopConfig(k=4, prompts_per_step=2, groups=GroupConfig(max_staleness=1))
    plane = DataPlane(lake, Student(lake, right=2), config, run_id="async")
    number, groups, seconds = plane.sample(policy_version=0)  # generated ahead, while the trainer moved on
    step = plane.admit(number, groups, current_version=2, seconds=seconds)
    assert step.dropped == {"stale": 2}
    fresh = plane.step(policy_version=2)
    assert len(fresh.admitted) == 2


FORMAT = {"pattern": r"<think>[\s\S]+</think>[\s\S]*", "extract": False}  # reasoning before the answer


def composite_bank(tmp_path, parts: list[dict]) -> Lake:
    """Real GSM8K questions whose reward is a composite of `parts`."""
    rows = [json.loads(line) for line in (REAL / BANKS["gsm8k"]).read_text().splitlines()]
    config = json.dumps({"parts": parts})
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        "".join(
            json.dumps({"prompt": r["question"], "answer": gsm8k_answer(r["answer"]), "verifier": "composite",
                        "verifier_config": config}) + "\n"
            for r in rows
        )
    )  # fmt: skip
    source = {"name": "bank", "path": str(bank), "format": "rl", "license": "mit", "origin": "human"}
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": []}
    return run_build(write_recipe(tmp_path, [source], gold=gold))[1]


class Hacker(Student):
    """Learns the format step by step, never the answers: 1 right of 4 throughout."""

    def __call__(self, messages, sampling, k):
        self.think = min(self.calls // 5, k)
        return super().__call__(messages, sampling, k)


HACKABLE = [{"name": "correct", "verifier": "numeric"}, {"name": "format", "verifier": "regex", "config": FORMAT,
            "prove": False}]  # fmt: skip
ALARM = AlarmConfig(every=1, window=4, min_rise=0.1, stop=True)


@pytest.mark.parametrize("normalize", [{}, {"format": "group"}], ids=["format as it is", "format over the group"])
def test_the_alarm_goes_off_when_the_reward_rises_and_held_out_accuracy_does_not(tmp_path, normalize):
    lake = composite_bank(tmp_path, HACKABLE)
    config = LoopConfig(k=4, prompts_per_step=5, alarm=ALARM, held_out_split="train", held_out_prompts=2)
    rewards = Rewards(lake.root, workers=1, normalize=normalize)
    plane = DataPlane(lake, Hacker(lake, right=1), config, run_id="hack", rewards=rewards)
    with pytest.raises(RewardHacking, match="training reward rose .* while the held-out verifier-only reward"):
        for _ in range(10):
            plane.step()
    log = [orjson.loads(line) for line in (lake.root / "_rl/runs/hack.jsonl").read_bytes().splitlines()]
    assert log[-1]["alarm"] and all(entry["held_out"] == 0.25 for entry in log)  # the two curves, in the log
    # The curve is the reward before normalisation: a dimension centred on 0 in every group would never rise.
    assert log[-1]["training_reward"] > log[0]["training_reward"]
    # Served, the alarm stops the service: this pull and every later one are refused with its message.
    service = Service(DataPlane(lake, Hacker(lake, right=1), config, run_id="served", rewards=rewards), ahead=1)
    try:
        with pytest.raises(Stopped, match="reward hacking suspected"):
            for _ in range(10):
                service.batch(policy_version=0)
        with pytest.raises(Stopped, match="reward hacking suspected"):
            service.batch(policy_version=0)
    finally:
        service.close()


def test_a_verifier_that_cannot_score_leaves_no_reward_and_drops_its_group_never_a_0(tmp_path):
    lake = composite_bank(tmp_path, [{"verifier": "numeric"}, {"name": "dies", "verifier": "test_exits_worker"}])
    rewards = Rewards(lake.root, workers=1, plugins=["tests.rl.worker_plugins"], normalize={})
    plane = DataPlane(
        lake, Student(lake, right=1), LoopConfig(k=2, prompts_per_step=1), run_id="down", rewards=rewards
    )
    step = plane.step()
    (judged,) = step.judged
    assert [r.reward for r in judged.group.rollouts] == [None, None]
    assert judged.decision.reason.value == "infra_error" and "re-verify" in judged.decision.detail
    rows = read_rollouts(lake, ["reward", "status", "admitted"], run_id="down").to_pylist()
    assert rows == [{"reward": None, "status": "infra_error", "admitted": False}] * 2
    assert plane.curriculum.pass_rate(judged.group.prompt_id) is None  # no verdict is no measurement
    assert rewards.cache.figures()["refused"] == 2  # and nothing of it was cached
