"""Rewards for trainers: a record's verifier scores a completion, through the reward cache, in killable workers.

`Rewards(lake)` is one per training process: a VerifierPool (rl/verifier_pool.py) and the lake's RewardCache
(rl/reward_cache.py), so a (record, completion, verifier version, config) is scored once, whatever the number of
epochs or runs. `Rewards.trl()` is a reward function for TRL's GRPOTrainer over the RL export (verl's layout, which
TRL loads as a dataset: the record's verifier, config, gold and id are in `extra_info`). An `infra_error` is never
a reward of 0: it is given to TRL as None, which TRL leaves out of the step (NaN), and it is not cached.
`Rewards.rescore` scores again, from the inputs the cache kept, what an older version of a verifier scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from tunelake.rl.reward_cache import INFRA_ERROR, Reward, RewardCache, RewardInputs, score_through
from tunelake.rl.verifier_pool import VerifierPool
from tunelake.rl.verifiers import VERIFIERS


class Rewards:
    """Cached verifier rewards for one process."""

    def __init__(self, lake: str | Path, workers: int = 2, timeout_s: float = 10.0, plugins: Sequence[str] = ()):
        """`plugins`: modules that register further verifiers (see VerifierPool)."""
        self.pool = VerifierPool(workers=workers, timeout_s=timeout_s, plugins=plugins)
        self.cache = RewardCache.of_lake(lake)

    def reward(self, record_id: str, verifier: str, answer: str | None, config: str | None, completion: str) -> Reward:
        """The reward of `completion` for the record, from the cache or scored now (and kept)."""
        inputs = RewardInputs(completion, answer, config or "{}")
        version = VERIFIERS[verifier].version
        return score_through(
            self.cache,
            record_id,
            verifier,
            version,
            inputs,
            lambda i: self.pool.verify(verifier, answer or "", i.completion, config),
        )

    def trl(self) -> Callable[..., list[float | None]]:
        """A reward function with TRL's signature: (prompts, completions, completion_ids, **dataset columns)."""

        def tunelake_verifier(prompts: list, completions: list, extra_info: list[dict], **_: object) -> list:
            rewards = []
            for completion, info in zip(completions, extra_info, strict=True):
                reward = self.reward(
                    info["id"], info["verifier"], info["answer"], info["verifier_config"], _text(completion)
                )
                rewards.append(None if reward.status == INFRA_ERROR else reward.score)
            return rewards

        return tunelake_verifier

    def rescore(self, verifier: str, from_version: str) -> Counter:
        """Every completion an older version of `verifier` scored, scored again by its current version from the
        inputs the cache kept (no model call, no dataset): counts of rescored, already scored (a hit), changed
        (another score than before) and infra_error (left to a later rescore)."""
        current = VERIFIERS[verifier].version
        if from_version == current:
            raise ValueError(f"{verifier} is at version {current} already: nothing to score again")
        counts = Counter()
        for batch in self.cache.scored_inputs(verifier, from_version):
            for key, before, inputs in batch:
                hits = self.cache.hits
                after = self.reward(key.prompt_id, verifier, inputs.answer, inputs.verifier_config, inputs.completion)
                counts["already" if self.cache.hits > hits else "rescored"] += 1
                counts["changed"] += int(after.status != INFRA_ERROR and after.score != before.score)
                counts["infra_error"] += int(after.status == INFRA_ERROR)
        return counts

    def close(self) -> None:
        self.pool.close()
        self.cache.close()


def _text(completion: str | list[dict]) -> str:
    """A completion as text: as it is, or a conversational completion's assistant contents."""
    if isinstance(completion, str):
        return completion
    return "\n".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")
