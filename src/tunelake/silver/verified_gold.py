"""Gold that proves itself: every RL record's reference answer must pass its own verifier; a row-local stage.

What is checked is what the source gives as the worked answer, against the gold: a GSM8K or MATH record's
solution (`meta.solution`, which the adapters keep) against its extracted answer, a code record's canonical
solution (its `answer`) against its tests. A record whose gold does not pass is quarantined as
`unverifiable_gold` with the verifier's status and reason: a prompt whose gold its verifier rejects would score
every correct rollout 0. Each check runs in the verifiers' pool of killable workers (rl/verifier_pool.py), under
`timeout_s`.

`infra_error` (a worker that died) is never a verdict on the gold: the check is tried again, and a verifier that
keeps failing so stops the build. A share of the records (`twice`, chosen by id, the same in every build) is
checked a second time; a verifier that disagrees with itself stops the build, as its rewards would be noise.
"""

from __future__ import annotations

import atexit
from dataclasses import replace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tunelake.gold.split import unit
from tunelake.rl.composite import Dimension, dimensions
from tunelake.rl.verdict import Status, Verdict
from tunelake.rl.verifier_pool import VerifierPool
from tunelake.rl.verifiers import ConfigError
from tunelake.schema import Reason, Regime
from tunelake.stage import Outcome, RowLocalStage, StageConfig

GOLD_CHECK = pa.field("gold_check", pa.struct([("status", pa.string()), ("reason", pa.string())]))
RETRIES = 2  # further tries of a check whose worker died, before the build stops


class VerifierUnreliable(RuntimeError):
    """A verifier that cannot be trusted with rewards: it disagrees with itself, or its workers keep dying."""


class VerifiedGoldConfig(StageConfig):
    """Quarantines RL records whose gold does not pass their own verifier (`unverifiable_gold`)."""

    timeout_s: float = Field(10.0, gt=0, description="The most one check may take; past it, the gold is unverifiable.")
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules that register further verifiers (tunelake.rl.verifiers.register), imported in the "
        "verifier workers.",
    )
    twice: float = Field(
        0.05,
        ge=0,
        le=1,
        description="The share of records (chosen by id) checked a second time: a verifier that disagrees with "
        "itself stops the build.",
    )


class VerifiedGold(RowLocalStage):
    name = "verified_gold"
    Config = VerifiedGoldConfig
    reads = ("id", "regime", "answer", "verifier", "verifier_config", "meta")
    adds = (GOLD_CHECK,)

    def process(self, batch: pa.RecordBatch) -> Outcome:
        rl = np.flatnonzero(pc.equal(batch["regime"], Regime.rl.value).fill_null(False).to_numpy(zero_copy_only=False))
        status, reason = [None] * batch.num_rows, [None] * batch.num_rows
        bad: dict[int, str] = {}  # rows whose verifier_config their verifier does not accept
        if len(rl):
            _pool(self.config.timeout_s, tuple(self.config.plugins))  # imports the plugins: their configs validate
            again = unit(batch["id"].take(pa.array(rl)), 0) < self.config.twice
            rows = batch.take(pa.array(rl)).select(["id", "answer", "verifier", "verifier_config", "meta"])
            for k, row, twice in zip(rl, rows.to_pylist(), again, strict=True):
                try:
                    dims = dimensions(row["verifier"], row["answer"], row["verifier_config"])
                except ConfigError as error:
                    bad[k] = str(error)
                    continue
                verdict = self._check(row, dims)
                if twice and (second := self._check(row, dims)) != verdict:
                    raise VerifierUnreliable(
                        f"verifier {row['verifier']!r} gave two verdicts on the gold of record {row['id']}: "
                        f"{verdict} then {second}; its rewards would be noise"
                    )
                status[k], reason[k] = verdict.status.value, verdict.reason
        checks = pa.StructArray.from_arrays(
            [pa.array(status, pa.string()), pa.array(reason, pa.string())], fields=list(GOLD_CHECK.type)
        )
        failed = np.array([s is not None and s != Status.ok.value for s in status], bool)
        code = np.where(failed, Reason.unverifiable_gold.value, None)
        field = np.where(failed, "answer", None)
        verifiers = batch["verifier"].to_pylist()
        detail = [f"{verifiers[k]}: {status[k]}: {reason[k]}" if failed[k] else None for k in range(batch.num_rows)]
        for k, problem in bad.items():
            code[k], field[k], detail[k] = Reason.bad_verifier_config.value, "verifier_config", problem
        return Outcome(
            batch.append_column(GOLD_CHECK, checks),
            quarantine=pa.array(code, pa.string()),
            field=pa.array(field, pa.string()),
            detail=pa.array(detail, pa.string()),
        )

    def _check(self, row: dict, dims: list[Dimension]) -> Verdict:
        """The verdict on the record's worked answer: ok where it passes every dimension it is proved against
        (a single verifier's gold, a composite's parts but those with `prove: false`), else the first that fails."""
        meta = orjson.loads(row["meta"]) if row["meta"] else {}
        worked = meta.get("solution") if isinstance(meta.get("solution"), str) else row["answer"]
        verdict = Verdict(1.0, Status.ok, "no dimension to prove")
        for dim in (d for d in dims if d.prove):
            verdict = self._verify(row["id"], dim, worked)
            if verdict.status != Status.ok:
                return verdict if len(dims) == 1 else replace(verdict, reason=f"{dim.name}: {verdict.reason}")
        return verdict

    def _verify(self, record_id: str, dim: Dimension, worked: str) -> Verdict:
        """One dimension's verdict on the worked answer, tried again while its worker dies."""
        for _ in range(1 + RETRIES):
            verdict = _pool(self.config.timeout_s, tuple(self.config.plugins)).verify(
                dim.verifier, dim.answer or "", worked, dim.config
            )
            if verdict.status != Status.infra_error:
                return verdict
        raise VerifierUnreliable(
            f"verifier {dim.verifier!r} could not check the gold of record {record_id}: {verdict.reason} "
            f"({1 + RETRIES} tries); nothing is scored 0 for it"
        )


_POOLS: dict[tuple, VerifierPool] = {}


def _pool(timeout_s: float, plugins: tuple[str, ...]) -> VerifierPool:
    """One verifier worker per process that runs this stage, started at its first RL record."""
    key = (timeout_s, plugins)
    if key not in _POOLS:
        _POOLS[key] = VerifierPool(workers=1, timeout_s=timeout_s, plugins=plugins)
        atexit.register(_POOLS[key].close)
    return _POOLS[key]
