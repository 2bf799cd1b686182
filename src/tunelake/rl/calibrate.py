"""Difficulty from the policy itself: K completions per bank prompt, scored through the reward cache; each prompt's
pass rate (the share its verifier passed) and difficulty (1 - pass rate) appended to `rl/calibration` with the
policy and the sampling settings that measured them.

Asks are tagged with the calibration's id: a new calibration asks afresh (a new checkpoint served under the same
model name is measured, never its predecessor's cached answers), while one resumed by its id (after a crash) pays
only for what it had not asked yet, its verdicts from the reward cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import orjson
import pyarrow as pa

from tunelake import tables
from tunelake.lake import Lake, new_run_id
from tunelake.rl.bank import Bank
from tunelake.rl.completion import Sampling
from tunelake.rl.endpoint import Endpoint
from tunelake.rl.policy import Generate, ask_many, model_of
from tunelake.rl.reward_cache import INFRA_ERROR
from tunelake.rl.trainers import Rewards
from tunelake.schema import CALIBRATION


@dataclass(frozen=True)
class Calibration:
    calibration_id: str
    prompts: int
    unscored: int  # prompts none of whose completions got a verdict (infra_error): no pass rate
    solved: int  # pass rate 1: too easy for this policy
    unsolved: int  # pass rate 0: too hard
    mean_pass_rate: float | None


def calibrate(
    lake: Lake,
    policy: Endpoint | Generate,
    rewards: Rewards,
    k: int = 8,
    sampling: Sampling | None = None,
    split: str = "train",
    batch: int = 32,
    progress: Callable[[int], None] = lambda done: None,
    calibration_id: str | None = None,
) -> Calibration:
    """Measure every prompt of the split's bank; one commit of `rl/calibration` at the end. `calibration_id`
    resumes a calibration that did not finish (with the same policy and settings)."""
    bank, model, sampling = Bank(lake, split), model_of(policy), sampling or Sampling()
    calibration_id = calibration_id or new_run_id()
    tag = f"calibrate/{calibration_id}"
    settings = orjson.dumps(asdict(sampling), option=orjson.OPT_SORT_KEYS).decode()
    rows: dict[str, list] = {name: [] for name in CALIBRATION.names}
    for start in range(0, len(bank), batch):
        prompts = [bank.prompt(prompt_id) for prompt_id in bank.ids[start : start + batch]]
        answers = ask_many(policy, [(p.messages, sampling, k, tag) for p in prompts])
        for prompt, completions in zip(prompts, answers, strict=True):
            statuses = [r.status for r in rewards.group(*prompt.record, [c.text for c in completions])]
            scored = sum(status != INFRA_ERROR for status in statuses)
            passed = statuses.count("ok")
            rate = passed / scored if scored else None
            for name, value in (
                ("prompt_id", prompt.id),
                ("passed", passed),
                ("scored", scored),
                ("pass_rate", rate),
                ("difficulty", None if rate is None else 1.0 - rate),
            ):
                rows[name].append(value)
        progress(len(prompts))
    count = len(rows["prompt_id"])
    measured_at = datetime.now(UTC).isoformat()
    constants = {"calibration_id": calibration_id, "split": split, "model": model, "k": k, "sampling": settings}
    for name, value in {**constants, "measured_at": measured_at}.items():
        rows[name] = [value] * count
    lake.append(tables.CALIBRATION_NAME, CALIBRATION, pa.Table.from_pydict(rows, schema=CALIBRATION))
    rates = [rate for rate in rows["pass_rate"] if rate is not None]
    return Calibration(
        calibration_id,
        count,
        count - len(rates),
        sum(rate == 1.0 for rate in rates),
        sum(rate == 0.0 for rate in rates),
        sum(rates) / len(rates) if rates else None,
    )
