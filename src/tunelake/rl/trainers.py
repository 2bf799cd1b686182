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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tunelake.lake import Lake
from tunelake.rl.composite import Dimension, combine, dimensions, needs_group
from tunelake.rl.reward_cache import INFRA_ERROR, Reward, RewardCache, RewardInputs, RewardKey, reward_key
from tunelake.rl.verifier_pool import VerifierPool
from tunelake.rl.verifiers import VERIFIERS


class Rewards:
    """Cached verifier rewards for one process (its threads may share it)."""

    def __init__(
        self,
        lake: str | Path,
        workers: int = 2,
        timeout_s: float = 10.0,
        plugins: Sequence[str] = (),
        normalize: dict[str, str] | None = None,
    ):
        """`plugins`: modules that register further verifiers (see VerifierPool). `normalize`: each composite
        dimension's normalisation (rl/composite.py); by default the recipe's `rl.normalize` of the lake's last
        build."""
        self.pool = VerifierPool(workers=workers, timeout_s=timeout_s, plugins=plugins)
        self._threads = ThreadPoolExecutor(workers)  # one waiting call per worker: misses are scored side by side
        self.cache = RewardCache.of_lake(lake)
        self.normalize = declared_normalize(lake) if normalize is None else normalize

    def group(
        self,
        record_id: str,
        verifier: str,
        answer: str | None,
        config: str | None,
        completions: Sequence[str],
        normalize: dict[str, str] | None = None,
    ) -> list[Reward]:
        """The rewards of a prompt's completions (sampled in one step, for dimensions normalised over the group):
        each dimension from the cache or scored now (and kept), then combined. A completion that a dimension could
        not score (infra_error) has no reward and is left out of the group's normalisation. `normalize` overrides
        the recipe's ({} gives the plain weighted mean of the scores)."""
        dims = dimensions(verifier, answer, config)
        return self._group(record_id, dims, completions, self.normalize if normalize is None else normalize)

    def reward(self, record_id: str, verifier: str, answer: str | None, config: str | None, completion: str) -> Reward:
        """The reward of one completion; refused for a record with a dimension normalised over the group."""
        if needs_group(dims := dimensions(verifier, answer, config), self.normalize):
            grouped = ", ".join(d.name for d in dims if self.normalize.get(d.name) == "group")
            raise ValueError(
                f"record {record_id}: {grouped} normalised over the group (rl.normalize): a completion has no "
                "reward alone, score the prompt's completions together (Rewards.group)"
            )
        return self._group(record_id, dims, [completion], self.normalize)[0]

    def passes(
        self, record_id: str, verifier: str, answer: str | None, config: str | None, completions: Sequence[str]
    ) -> list[bool | None]:
        """Whether each completion passes its verifier alone: every dimension its gold is proved against, none of a
        composite's `prove: false` ones (a format, a length). None where a dimension could not score."""
        dims = dimensions(verifier, answer, config)
        proved = [dim for dim in dims if dim.prove]  # a composite has one at least (CompositeConfig)
        flat = self._dimensions(record_id, [(dim, completion) for completion in completions for dim in proved])
        rows = [flat[k : k + len(proved)] for k in range(0, len(flat), len(proved))]
        return [
            None if any(r.status == INFRA_ERROR for r in row) else all(r.status == "ok" for r in row) for row in rows
        ]

    def _group(
        self, record_id: str, dims: Sequence[Dimension], completions: Sequence[str], normalize: dict[str, str]
    ) -> list[Reward]:
        flat = self._dimensions(record_id, [(dim, completion) for completion in completions for dim in dims])
        scored = [flat[k : k + len(dims)] for k in range(0, len(flat), len(dims))]
        whole = [k for k, row in enumerate(scored) if all(r.status != INFRA_ERROR for r in row)]
        combined = combine([[r.score for r in scored[k]] for k in whole], dims, normalize)
        summed = {k: _summed(dims, scored[k], float(score)) for k, score in zip(whole, combined, strict=True)}
        return [summed[k] if k in summed else _failed(dims, row) for k, row in enumerate(scored)]

    def _dimensions(self, record_id: str, asks: list[tuple[Dimension, str]]) -> list[Reward]:
        """Each (dimension, completion)'s reward: the cache's in one lookup, the rest scored now side by side on
        the pool's workers and stored in one transaction."""
        inputs = [RewardInputs(completion, dim.answer, dim.config) for dim, completion in asks]
        keys = [
            reward_key(record_id, dim.verifier, VERIFIERS[dim.verifier].version, i)
            for (dim, _), i in zip(asks, inputs, strict=True)
        ]
        found = self.cache.get_many(keys)
        first: dict[RewardKey, int] = {}  # a completion a group holds twice is scored once
        for k, reward in enumerate(found):
            if reward is None:
                first.setdefault(keys[k], k)
        missing = list(first.values())
        if not missing:
            return found

        def verdict(k: int) -> Reward:
            dim = asks[k][0]
            v = self.pool.verify(dim.verifier, dim.answer or "", inputs[k].completion, dim.config)
            return Reward(float(v.score), str(v.status), v.reason)

        scored = list(self._threads.map(verdict, missing)) if len(missing) > 1 else [verdict(k) for k in missing]
        stored = self.cache.put_many((keys[k], reward, inputs[k]) for k, reward in zip(missing, scored, strict=True))
        held = dict(zip([keys[k] for k in missing], stored, strict=True))
        return [held[key] if reward is None else reward for key, reward in zip(keys, found, strict=True)]

    def trl(self, num_generations: int | None = None) -> Callable[..., list[float | None]]:
        """A reward function with TRL's signature: (prompts, completions, completion_ids, **dataset columns).

        `num_generations` (GRPOConfig's) is needed where a dimension is normalised over the group: TRL hands a
        prompt's completions over as a run of that many rows, and a run of another length (a group split across
        processes) stops the step rather than normalise over part of a group."""

        def tunelake_verifier(prompts: list, completions: list, extra_info: list[dict], **_: object) -> list:
            texts = [_text(completion) for completion in completions]
            rewards: list[float | None] = []
            for start, end in _runs([info["id"] for info in extra_info]):
                info = extra_info[start]
                record = (info["id"], info["verifier"], info["answer"], info["verifier_config"])
                size = self._group_size(record, end - start, num_generations)
                for first in range(start, end, size):
                    scored = self.group(*record, texts[first : first + size])
                    rewards += [None if reward.status == INFRA_ERROR else reward.score for reward in scored]
            return rewards

        return tunelake_verifier

    def _group_size(self, record: tuple, run: int, num_generations: int | None) -> int:
        """How many of a run of one record's completions are scored together: one group each where a dimension is
        normalised over the group, else the whole run (each completion's reward is its own)."""
        if not needs_group(dimensions(*record[1:]), self.normalize):
            return run
        if num_generations is None or run % num_generations:
            raise ValueError(
                f"record {record[0]}: {run} completions in one run where whole groups of "
                f"num_generations={num_generations} are needed (a dimension is normalised over the group): pass "
                "Rewards.trl(num_generations=...) and keep a prompt's generations in one process "
                "(per_device_train_batch_size a multiple of num_generations)"
            )
        return num_generations

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
                dim = Dimension(verifier, verifier, inputs.answer, inputs.verifier_config, 1.0, True)
                (after,) = self._dimensions(key.prompt_id, [(dim, inputs.completion)])
                counts["already" if self.cache.hits > hits else "rescored"] += 1
                counts["changed"] += int(after.status != INFRA_ERROR and after.score != before.score)
                counts["infra_error"] += int(after.status == INFRA_ERROR)
        return counts

    def close(self) -> None:
        self._threads.shutdown()
        self.pool.close()
        self.cache.close()


def _text(completion: str | list[dict]) -> str:
    """A completion as text: as it is, or a conversational completion's assistant contents."""
    if isinstance(completion, str):
        return completion
    return "\n".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


def _runs(keys: list[str]) -> list[tuple[int, int]]:
    """The [start, end) of each run of equal consecutive keys."""
    bounds = [k for k in range(1, len(keys)) if keys[k] != keys[k - 1]]
    return list(zip([0, *bounds], [*bounds, len(keys)], strict=True))


def _summed(dims: Sequence[Dimension], scored: list[Reward], score: float) -> Reward:
    """A completion's reward from its dimensions' rewards: a single verifier's as it is, a composite's status ok
    where every dimension is ok (else the first other status), its reason each dimension's."""
    if len(dims) == 1:
        return Reward(score, scored[0].status, scored[0].reason)
    off = [r.status for r in scored if r.status != "ok"]
    said = [
        f"{d.name}: {r.status}" + ("" if r.status == "ok" else f" ({r.reason})")
        for d, r in zip(dims, scored, strict=True)
    ]
    reason = "; ".join(said)
    return Reward(score, off[0] if off else "ok", reason)


def _failed(dims: Sequence[Dimension], scored: list[Reward]) -> Reward:
    """The reward of a completion a dimension could not score: infra_error, naming a composite's dimensions."""
    failed = [(d, r) for d, r in zip(dims, scored, strict=True) if r.status == INFRA_ERROR]
    if len(dims) == 1:
        return failed[0][1]
    return Reward(0.0, INFRA_ERROR, "; ".join(f"{d.name}: {r.reason}" for d, r in failed))


def declared_normalize(lake: str | Path) -> dict[str, str]:
    """The composite dimensions' normalisations the recipe of the lake's last build declared (`rl.normalize`)."""
    manifests = Lake(lake).manifests()
    return dict(manifests[-1]["recipe"].get("rl", {}).get("normalize", {})) if manifests else {}
