"""The online RL data plane: each step samples prompts from the bank, asks the policy for K completions of each,
scores them through the reward cache, admits or drops whole groups, and appends every rollout to `rl/rollouts`.

    plane = DataPlane(lake, Endpoint(url, model, cache=RequestCache.of_lake(lake)), LoopConfig(k=8))
    step = plane.step(policy_version=3)      # step.judged: GRPO groups with advantages, or dropped with a reason

Resumable: the run's state (the curriculum's pass rates and RNG, the alarm's curves) is saved after each step in
`<lake>/_rl/runs/<run_id>.json`, and each step's asks are tagged with the run, the step and the policy version, so
a run killed mid-step and started again with the same run id asks the same prompts again, the request cache
answers what was paid for, the reward cache what was scored, and a step whose rollouts were already appended is not
appended twice. Each step's figures (admitted, dropped by reason, the training and held-out rewards, where the time
went) are one line of `<lake>/_rl/runs/<run_id>.jsonl`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from tunelake.lake import Lake, new_run_id
from tunelake.rl.alarm import AlarmConfig, HackingAlarm
from tunelake.rl.bank import Bank
from tunelake.rl.completion import Sampling
from tunelake.rl.composite import version_of
from tunelake.rl.curriculum import Curriculum, CurriculumConfig, PassRateWindow
from tunelake.rl.endpoint import Endpoint
from tunelake.rl.groups import Group, GroupConfig, Judged, Rollout, judge
from tunelake.rl.policy import Generate, ask_many, model_of
from tunelake.rl.reward_cache import INFRA_ERROR
from tunelake.rl.rollouts import append_rollouts, read_rollouts
from tunelake.rl.trainers import Rewards

RUNS = "_rl/runs"  # each run's state and log, in the lake


class RewardHacking(RuntimeError):
    """The alarm (with `alarm.stop`): the training reward rose while the held-out verifier-only reward did not."""


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling's probability mass.")
    max_tokens: int = Field(1024, gt=0, description="Tokens per completion; a completion cut here is over-length.")
    seed: int | None = Field(None, description="The endpoint's sampling seed, when it takes one.")

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, self.seed)


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = Field("train", description="The gold split whose RL prompts are the bank.")
    k: int = Field(8, ge=2, description="Completions per prompt: a GRPO group.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts sampled per step.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="How completions are sampled.")
    groups: GroupConfig = Field(default_factory=GroupConfig, description="Group admission and advantages.")
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig, description="How prompts are sampled.")
    window: PassRateWindow = Field(
        default_factory=PassRateWindow,
        description="Where the policy has been calibrated (`tunelake rl calibrate`), only prompts whose pass rate "
        "is inside the window are sampled.",
    )
    alarm: AlarmConfig | None = Field(None, description="The reward-hacking alarm; off unless given.")
    held_out_split: str = Field("validation", description="The split whose prompts the alarm scores.")
    held_out_prompts: int = Field(32, ge=1, description="Held-out prompts the alarm scores (the first by id).")


@dataclass
class Step:
    """One step's groups and figures."""

    number: int
    policy_version: int
    judged: list[Judged]
    seconds: dict[str, float]  # generate, score, write
    training_reward: float | None  # the mean reward of its scored rollouts, before normalisation over a group
    held_out: float | None = None  # the held-out verifier-only pass rate, on the steps the alarm measures
    alarm: str | None = None
    dropped: Counter = field(default_factory=Counter)

    @property
    def admitted(self) -> list[Judged]:
        return [j for j in self.judged if j.decision.admitted]


class DataPlane:
    """One RL run over a lake's bank. sample() may run on one thread while admit() runs on another (rl/serve.py);
    neither is called by two threads at once."""

    def __init__(
        self,
        lake: Lake | str | Path,
        policy: Endpoint | Generate,
        config: LoopConfig | None = None,
        run_id: str | None = None,
        rewards: Rewards | None = None,
    ):
        self.lake = lake if isinstance(lake, Lake) else Lake(lake)
        self.policy, self.config, self.model = policy, config or LoopConfig(), model_of(policy)
        self.bank = Bank(self.lake, self.config.split)
        self.rewards = rewards or Rewards(self.lake.root)
        self.run_id = run_id or new_run_id()
        runs = self.lake.root / RUNS
        runs.mkdir(parents=True, exist_ok=True)
        self._state_path, self._log_path = runs / f"{self.run_id}.json", runs / f"{self.run_id}.jsonl"
        self.alarm = HackingAlarm(self.config.alarm) if self.config.alarm else None
        self._written: set[int] = set()  # pending steps whose rollouts are appended already (a kill came between)
        # Steps drawn but not admitted yet: (prompt ids, policy version). Saved with the state, so a resumed run asks
        # them again (answered by the caches) before it draws anything new.
        self._pending: dict[int, tuple[list[str], int]] = {}
        self._taken: set[int] = set()  # pending steps this process is sampling already
        self._lock = threading.Lock()  # sample() may run ahead on another thread (rl/serve.py)
        self._verifiers: dict[str, tuple[str, str]] = {}  # prompt id -> (verifier, version), as rollouts record them
        if self._state_path.exists():
            self._resume(json.loads(self._state_path.read_text()))
        else:
            rates = self.bank.pass_rates(self.model)
            ids = self.config.window.keep(rates) if rates else self.bank.ids  # EmptyWindow: nothing to train on
            self.curriculum = Curriculum(ids, self.config.curriculum, {i: rates[i] for i in ids if i in rates})
        self._held_bank = Bank(self.lake, self.config.held_out_split) if self.alarm else None
        self.held_out = sorted(self._held_bank.ids)[: self.config.held_out_prompts] if self._held_bank else []

    def _resume(self, state: dict) -> None:
        if state["config"] != self.config.model_dump(mode="json"):
            raise ValueError(
                f"run {self.run_id} was started with another loop config ({self._state_path}); resume it with the "
                "same config, or start a new run"
            )
        self.curriculum = Curriculum.restore(state["curriculum"])
        self._pending = {int(n): (ids, version) for n, (ids, version) in state["pending"].items()}
        if self.alarm:
            self.alarm.curves = [tuple(point) for point in state["alarm"]]
        steps = read_rollouts(self.lake, ["step"], run_id=self.run_id)["step"].to_pylist()
        self._written = set(steps) & set(self._pending)

    def run(self, steps: int, policy_version: int = 0) -> Iterator[Step]:
        for _ in range(steps):
            yield self.step(policy_version)

    def step(self, policy_version: int = 0) -> Step:
        """Sample, score, judge and keep one step's groups, for a policy at `policy_version`."""
        number, groups, seconds = self.sample(policy_version)
        return self.admit(number, groups, policy_version, seconds)

    def sample(self, policy_version: int) -> tuple[int, list[Group], dict[str, float]]:
        """The next step's scored groups, generated by the policy at `policy_version` (not judged yet); a step a
        killed run drew and did not admit comes first, asked as it was then."""
        with self._lock:
            resumed = sorted(set(self._pending) - self._taken)
            if resumed:
                number = resumed[0]
                ids, policy_version = self._pending[number]
            else:
                number, ids = self.curriculum.step, self.curriculum.sample(self._batch())
                self._pending[number] = (ids, policy_version)
                self._save_state()
            self._taken.add(number)
        try:
            return self._scored(number, ids, policy_version)
        except BaseException:  # an endpoint that keeps failing, a kill: the step stays pending, to be asked again
            with self._lock:
                self._taken.discard(number)
            raise

    def _scored(self, number: int, ids: list[str], policy_version: int) -> tuple[int, list[Group], dict[str, float]]:
        prompts = [self.bank.prompt(i) for i in ids]
        sampling, tag = self.config.sampling.sampling(), f"{self.run_id}/{number}/{policy_version}"
        started = time.perf_counter()
        answers = ask_many(self.policy, [(p.messages, sampling, self.config.k, tag) for p in prompts])
        generated = time.perf_counter()
        groups = []
        for prompt, completions in zip(prompts, answers, strict=True):
            rewards = self.rewards.group(*prompt.record, [c.text for c in completions])
            rollouts = tuple(
                Rollout(c, None if r.status == INFRA_ERROR else r.score, r.status, r.reason)
                for c, r in zip(completions, rewards, strict=True)
            )
            groups.append(Group(prompt.id, prompt.messages, rollouts, policy_version, number))
            self._verifiers[prompt.id] = (prompt.verifier, version_of(prompt.verifier, prompt.verifier_config))
        return number, groups, {"generate": generated - started, "score": time.perf_counter() - generated}

    def admit(self, number: int, groups: list[Group], current_version: int, seconds: dict[str, float]) -> Step:
        """Judge the step's groups against the trainer's current policy version, append every rollout, learn the
        prompts' pass rates, and save the run's state."""
        judged = judge(groups, self.config.groups, current_version)
        dropped = Counter(j.decision.reason.value for j in judged if not j.decision.admitted)
        step = Step(number, current_version, judged, seconds, self._training_reward(groups), dropped=dropped)
        try:
            measure = self.alarm and number % self.alarm.config.every == 0 and step.training_reward is not None
            if measure:  # before the append: a fault here leaves the step to be admitted again, whole
                step.held_out = self._held_out_pass_rate(current_version, number)
            started = time.perf_counter()
            if number not in self._written:
                append_rollouts(self.lake, self.run_id, judged, self._verifiers)
                self._written.add(number)
            step.seconds = {**seconds, "write": time.perf_counter() - started}
        except BaseException:
            with self._lock:
                self._taken.discard(number)
            raise
        with self._lock:
            if step.held_out is not None:
                step.alarm = self.alarm.observe(number, step.training_reward, step.held_out)
            for group in groups:
                self.curriculum.observe(group)
            del self._pending[number]
            self._taken.discard(number)
            self._written.discard(number)
            self._save(step)
        if step.alarm and self.alarm.config.stop:
            raise RewardHacking(step.alarm)
        return step

    def _training_reward(self, groups: list[Group]) -> float | None:
        """The step's mean reward as the policy is paid it, before any normalisation over a group (which centres a
        dimension on 0 in every group, so its rise would not show)."""
        if not any(d != "none" for d in self.rewards.normalize.values()):
            rewards = [r.reward for g in groups for r in g.rollouts if r.reward is not None]
            return float(np.mean(rewards)) if rewards else None
        plain = [
            reward.score
            for group in groups
            for reward in self.rewards.group(
                *self.bank.prompt(group.prompt_id).record, [r.completion.text for r in group.rollouts], normalize={}
            )
            if reward.status != INFRA_ERROR
        ]
        return float(np.mean(plain)) if plain else None

    def _batch(self) -> int:
        return min(self.config.prompts_per_step, len(self.curriculum.prompt_ids))

    def _held_out_pass_rate(self, policy_version: int, number: int) -> float | None:
        """The share of held-out completions that pass their verifier alone (no soft dimension); None where none
        could be scored (a verifier's workers down is no measurement, least of all a 0)."""
        prompts = [self._held_bank.prompt(i) for i in self.held_out]
        tag = f"{self.run_id}/held_out/{number}/{policy_version}"
        sampling = self.config.sampling.sampling()
        answers = ask_many(self.policy, [(p.messages, sampling, self.config.k, tag) for p in prompts])
        verdicts = [
            passed
            for prompt, completions in zip(prompts, answers, strict=True)
            for passed in self.rewards.passes(*prompt.record, [c.text for c in completions])
            if passed is not None
        ]
        return float(np.mean(verdicts)) if verdicts else None

    def _save_state(self) -> None:
        state = {
            "config": self.config.model_dump(mode="json"),
            "curriculum": self.curriculum.state(),
            "pending": self._pending,
            "alarm": self.alarm.state() if self.alarm else [],
        }
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))  # json, not orjson: the RNG's state holds 128-bit integers
        tmp.replace(self._state_path)  # a reader (or a resume) never sees half a state

    def _save(self, step: Step) -> None:
        """The run's state, and the step's line in the run's log."""
        self._save_state()
        line = {
            "step": step.number,
            "policy_version": step.policy_version,
            "admitted": len(step.admitted),
            "dropped": dict(step.dropped),
            "training_reward": step.training_reward,
            "held_out": step.held_out,
            "alarm": step.alarm,
            "seconds": step.seconds,
        }
        with self._log_path.open("ab") as log:
            log.write(orjson.dumps(line) + b"\n")
