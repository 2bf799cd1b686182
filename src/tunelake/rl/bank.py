"""The RL prompt bank as the data plane reads it: one split of gold/rl, and the pass rates calibrations measured.

A calibration (`tunelake rl calibrate`) is one commit of `rl/calibration`, outside builds: a rebuild republishes
gold from the recipe, so pass rates written into gold would vanish with it. The bank's newest calibration of each
prompt (optionally: by one policy) is its pass rate; `difficulty` is 1 - pass rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from tunelake import tables
from tunelake.lake import Lake
from tunelake.schema import Regime


class BankError(ValueError):
    """No bank to read: the message says which table and how to make it."""


@dataclass(frozen=True)
class Prompt:
    """One bank record: what the policy is asked and what scores its answer."""

    id: str
    messages: list[dict]  # {role, content}: what the endpoint is sent
    answer: str | None
    verifier: str
    verifier_config: str | None

    @property
    def record(self) -> tuple[str, str, str | None, str | None]:
        """(id, verifier, answer, verifier_config): how Rewards names a record."""
        return self.id, self.verifier, self.answer, self.verifier_config


class Bank:
    """The prompts of one split of gold/rl, held as one Arrow table (a bank of 100k prompts is a few hundred MB
    less than the records' Python objects would take)."""

    def __init__(self, lake: Lake, split: str = "train"):
        self.lake, self.split = lake, split
        name = tables.gold(Regime.rl, split)
        if not lake.exists(name) or not lake.read(name, ["id"]).num_rows:
            raise BankError(
                f"{lake.root}: no RL prompts in {name}; build a recipe with an RL source (e.g. format: gsm8k) first"
            )
        self._table = lake.read(name, ["id", "prompt", "answer", "verifier", "verifier_config"])
        self.ids: list[str] = self._table["id"].to_pylist()
        self._row = {prompt_id: i for i, prompt_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def prompt(self, prompt_id: str) -> Prompt:
        row = self._table.slice(self._row[prompt_id], 1).to_pylist()[0]
        messages = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        return Prompt(row["id"], messages, row["answer"], row["verifier"], row["verifier_config"])

    def pass_rates(self, model: str | None = None) -> dict[str, float]:
        """Each calibrated prompt's pass rate from its newest calibration (of `model`, if given), in bank order."""
        if not self.lake.exists(tables.CALIBRATION_NAME):
            return {}
        measured = self.lake.read(tables.CALIBRATION_NAME, ["prompt_id", "model", "pass_rate", "measured_at"])
        mask = pc.and_(pc.is_in(measured["prompt_id"], pa.array(self.ids)), pc.is_valid(measured["pass_rate"]))
        if model is not None:
            mask = pc.and_(mask, pc.equal(measured["model"], model))
        newest: dict[str, tuple[str, float]] = {}
        for row in measured.filter(mask).to_pylist():
            if row["prompt_id"] not in newest or row["measured_at"] >= newest[row["prompt_id"]][0]:
                newest[row["prompt_id"]] = (row["measured_at"], row["pass_rate"])
        return {prompt_id: newest[prompt_id][1] for prompt_id in self.ids if prompt_id in newest}
