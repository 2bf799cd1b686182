"""Pass rates and difficulty: the window of prompts worth training on, and a curriculum that samples them.

A prompt's pass rate p is the share of its rollouts the verifier passed (status ok). A group's learning signal is
highest at intermediate p: at p = 0 or 1 every rollout gets the same reward and the group is dropped as
zero_variance. So the curriculum weights each prompt by p(1 - p) (the variance of a pass/fail reward), with a floor
so that no prompt is starved for good (its pass rate can drift as the policy learns), and assumes p = 0.5 (the
highest weight) for a prompt not measured yet, so that unseen prompts are tried early.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tunelake.rl.groups import Group

STATE_VERSION = 1  # of Curriculum.state()'s layout


class EmptyWindow(ValueError):
    """No prompt's pass rate is inside the window: the message gives the counts on each side."""


class PassRateWindow(BaseModel):
    """The prompts worth training on: pass rate strictly between low and high (by default 0 < p < 1)."""

    low: float = Field(0.0, ge=0.0, le=1.0, description="Keep prompts whose pass rate is above this.")
    high: float = Field(1.0, ge=0.0, le=1.0, description="Keep prompts whose pass rate is below this.")

    def keep(self, pass_rates: Mapping[str, float]) -> list[str]:
        """The ids of the measured prompts inside the window, in the mapping's order; raises EmptyWindow if none."""
        ids = list(pass_rates)
        rates = np.fromiter(pass_rates.values(), dtype=np.float64, count=len(ids))
        inside = (rates > self.low) & (rates < self.high)
        if not inside.any():
            below, above = int((rates <= self.low).sum()), int((rates >= self.high).sum())
            raise EmptyWindow(
                f"no prompt has a pass rate inside ({self.low:g}, {self.high:g}): of {len(ids)} measured, {below} "
                f"at or below {self.low:g} (too hard) and {above} at or above {self.high:g} (too easy); widen the "
                "window, or calibrate against a policy that solves some but not all of these prompts"
            )
        return [ids[i] for i in np.flatnonzero(inside)]


class CurriculumConfig(BaseModel):
    """How the curriculum samples prompts and tracks their pass rates."""

    seed: int = Field(0, description="Seed of the sampler: the same seed and pass rates give the same batches.")
    ema: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="Weight of a new group's pass rate in the prompt's moving average (1: only the latest counts).",
    )
    floor: float = Field(
        0.01,
        gt=0.0,
        le=0.25,
        description="Least sampling weight of a prompt (p(1 - p) is at most 0.25), so that a prompt at p = 0 or 1 "
        "is still tried now and then.",
    )
    prior: float = Field(
        0.5, ge=0.0, le=1.0, description="Pass rate assumed for a prompt not measured yet (0.5: the highest weight)."
    )


def pass_rate(group: Group) -> float | None:
    """The share of a group's scored rollouts that passed (status ok); None when none was scored (infra_error)."""
    scored = [r.status == "ok" for r in group.rollouts if r.reward is not None]
    return sum(scored) / len(scored) if scored else None


class Curriculum:
    """Samples batches of prompts weighted by max(p(1 - p), floor); seeded, and resumable from state()."""

    def __init__(
        self, prompt_ids: Sequence[str], config: CurriculumConfig, pass_rates: Mapping[str, float] | None = None
    ):
        if not prompt_ids:
            raise ValueError("a curriculum needs at least one prompt")
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self._index = {p: i for i, p in enumerate(self.prompt_ids)}
        if len(self._index) != len(self.prompt_ids):
            raise ValueError("prompt ids repeat: a curriculum samples each prompt id once per batch")
        self._rates = np.full(len(self.prompt_ids), np.nan)  # NaN: not measured
        for prompt_id, rate in (pass_rates or {}).items():
            self._rates[self._position(prompt_id)] = rate
        self._rng = np.random.default_rng(config.seed)
        self.step = 0  # batches sampled so far

    def _position(self, prompt_id: str) -> int:
        if prompt_id not in self._index:
            raise KeyError(f"prompt {prompt_id!r} is not in this curriculum ({len(self.prompt_ids)} prompts)")
        return self._index[prompt_id]

    def weights(self) -> np.ndarray:
        """Each prompt's sampling weight, in prompt order (not normalised)."""
        rates = np.where(np.isnan(self._rates), self.config.prior, self._rates)
        return np.maximum(rates * (1.0 - rates), self.config.floor)

    def sample(self, n: int) -> list[str]:
        """The next batch: n distinct prompt ids drawn by weight."""
        if not 0 < n <= len(self.prompt_ids):
            raise ValueError(f"a batch of {n} prompts: expected 1 to {len(self.prompt_ids)} (the curriculum's size)")
        weights = self.weights()
        picked = self._rng.choice(len(self.prompt_ids), size=n, replace=False, p=weights / weights.sum())
        self.step += 1
        return [self.prompt_ids[i] for i in picked]

    def pass_rate(self, prompt_id: str) -> float | None:
        """The prompt's current pass rate; None if not measured yet."""
        rate = self._rates[self._position(prompt_id)]
        return None if np.isnan(rate) else float(rate)

    def update(self, prompt_id: str, rate: float) -> None:
        """Move the prompt's pass rate towards a new measurement (the first measurement replaces the prior)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"pass rate {rate!r} of prompt {prompt_id!r}: expected a share between 0 and 1")
        i = self._position(prompt_id)
        old = self._rates[i]
        self._rates[i] = rate if np.isnan(old) else (1.0 - self.config.ema) * old + self.config.ema * rate

    def observe(self, group: Group) -> None:
        """Update the group's prompt from the group's pass rate (a group with no scored rollout changes nothing)."""
        rate = pass_rate(group)
        if rate is not None:
            self.update(group.prompt_id, rate)

    def state(self) -> dict:
        """Everything the next batches depend on, as JSON-ready data: restore() continues exactly from here."""
        measured = ~np.isnan(self._rates)
        return {
            "version": STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "prompt_ids": self.prompt_ids,
            "pass_rates": {self.prompt_ids[i]: float(self._rates[i]) for i in np.flatnonzero(measured)},
            "rng": self._rng.bit_generator.state,
            "step": self.step,
        }

    @classmethod
    def restore(cls, state: dict) -> Curriculum:
        """The curriculum that state() described, ready to sample the batch after it."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"curriculum state version {state.get('version')!r}: expected {STATE_VERSION} (written by another "
                "tunelake)"
            )
        curriculum = cls(state["prompt_ids"], CurriculumConfig.model_validate(state["config"]), state["pass_rates"])
        curriculum._rng.bit_generator.state = state["rng"]
        curriculum.step = state["step"]
        return curriculum
