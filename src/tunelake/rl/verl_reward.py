"""verl's custom reward function: `compute_score` scores a response with its record's verifier through the cache.

verl loads it by file path and calls it once per response, from a thread pool, with keywords (verl 0.9's reward
loop, `verl/experimental/reward_loop/reward_manager/naive.py`): `data_source`, `solution_str`, `ground_truth`,
`extra_info`, plus the recipe's `reward_kwargs`. The RL export's `extra_info` carries what the verifier needs (the
record's id, verifier, gold answer and config); `lake` comes from `reward_kwargs`:

    custom_reward_function:
      path: <python -c 'import tunelake.rl.verl_reward as m; print(m.__file__)'>
      name: compute_score
      reward_kwargs: {lake: /data/lake}

verl wants a number for every response, so an `infra_error` (a verifier worker that died) is retried and, if it
persists, raised: a 0 would train the policy on noise. A record with a dimension normalised over the group
(`rl.normalize`) is refused: verl scores one response at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tunelake.rl.reward_cache import INFRA_ERROR
from tunelake.rl.trainers import Rewards

RETRIES = 2  # further tries of a response whose verifier worker died, before the step is stopped
_REWARDS: dict[tuple, Rewards] = {}
_LOCK = threading.Lock()


class RewardUnavailable(RuntimeError):
    """A response no verifier could score: never given to verl as a 0."""


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str | None,
    extra_info: dict | None = None,
    *,
    lake: str,
    workers: int = 2,
    timeout_s: float = 10.0,
    plugins: Sequence[str] = (),
    **_: object,
) -> dict[str, float]:
    """The response's reward (`score`) and whether its verifier accepted it (`acc`), as verl reads a dict."""
    if not extra_info or "verifier" not in extra_info:
        raise ValueError(
            f"data_source {data_source!r}: expected the RL export's extra_info (id, verifier, answer, "
            f"verifier_config), got {sorted(extra_info or {})}"
        )
    rewards = _rewards(lake, workers, timeout_s, tuple(plugins))
    record = (extra_info["id"], extra_info["verifier"], extra_info["answer"], extra_info["verifier_config"])
    for _ in range(1 + RETRIES):
        reward = rewards.reward(*record, solution_str)
        if reward.status != INFRA_ERROR:
            return {"score": reward.score, "acc": float(reward.status == "ok")}
    raise RewardUnavailable(f"record {record[0]}: {record[1]} could not score the response: {reward.reason}")


def _rewards(lake: str, workers: int, timeout_s: float, plugins: tuple[str, ...]) -> Rewards:
    """One Rewards per process and settings, shared by verl's threads."""
    key = (str(lake), workers, timeout_s, plugins)
    with _LOCK:
        if key not in _REWARDS:
            _REWARDS[key] = Rewards(lake, workers=workers, timeout_s=timeout_s, plugins=plugins)
        return _REWARDS[key]
