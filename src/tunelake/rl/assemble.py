"""R1-style multi-stage assembly: an RL run's rollouts turned into SFT and preference data.

- Rejection sampling: per prompt, the best verified completion (status ok, highest reward; ties go to the earliest
  sampled: lowest step, group, rollout) becomes an SFT example, the prompt's messages plus the completion as the
  assistant's turn.
- Preference pairs: per prompt, that completion against its worst failed one (status wrong or unparsable, lowest
  reward, ties to the earliest), when the verified one scored higher; the margin is the reward difference.

Every verified completion is eligible, whether or not its group was admitted: admission is about the policy
gradient (an all-right group teaches the policy nothing), not about whether the answer is right. A completion the
endpoint cut at its token limit (finish_reason 'length') is never used, on either side; nor is one the verifier gave
no verdict on (timeout, infra_error).

The files are JSONL in formats tunelake's own adapters read (`openai` messages; `trl_preference` prompt / chosen /
rejected with score_chosen / score_rejected), with the run's facts as extra fields, which land in each record's meta
(rl_run_id, rl_prompt_id, rl_policy_version, rl_verifier, ...): a recipe source for each file lets `tunelake build`
curate them like any other data (dedup, quality gates, the ledger).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from tunelake import tables
from tunelake.lake import Lake

# One row per prompt: its best verified completion (the CTE `best`) and its worst failed one (`worst`).
_PICKS = """
with usable as (
    select * from rollouts where run_id = $run and finish_reason is distinct from 'length' and reward is not null
),
best as (
    select * from usable where status = 'ok'
    qualify row_number() over (partition by prompt_id order by reward desc, step, group_index, rollout_index) = 1
),
worst as (
    select * from usable where status in ('wrong', 'unparsable')
    qualify row_number() over (partition by prompt_id order by reward, step, group_index, rollout_index) = 1
)
"""
_SFT = (
    _PICKS
    + """
select prompt_id, prompt, completion_text, reward, policy_version, verifier, verifier_version, step
from best order by prompt_id
"""
)
_PAIRS = (
    _PICKS
    + """
select b.prompt_id, b.prompt, b.completion_text as chosen, w.completion_text as rejected,
    b.reward as score_chosen, w.reward as score_rejected, b.status as status_chosen, w.status as status_rejected,
    b.policy_version as policy_version_chosen, w.policy_version as policy_version_rejected,
    b.verifier, b.verifier_version
from best b join worst w using (prompt_id)
where b.reward > w.reward
order by b.prompt_id
"""
)
_BATCH = 1024  # rows per batch streamed out of DuckDB: memory stays flat however long the run


@dataclass(frozen=True)
class Assembly:
    """What assemble() wrote: the two JSONL files and how many rows each holds."""

    sft: Path
    preference: Path
    examples: int
    pairs: int


def _batches(lake: Lake, sql: str, run_id: str) -> Iterator[pa.RecordBatch]:
    """The query's rows over the published rollouts table, streamed in batches."""
    con = duckdb.connect()
    con.read_parquet(lake.files(tables.ROLLOUTS_NAME)).create_view("rollouts")
    yield from con.sql(sql, params={"run": run_id}).to_arrow_reader(_BATCH)


def _sft_line(row: dict, run_id: str) -> dict:
    return {
        "messages": [*orjson.loads(row["prompt"]), {"role": "assistant", "content": row["completion_text"]}],
        "rl_run_id": run_id,
        "rl_prompt_id": row["prompt_id"],
        "rl_step": row["step"],
        "rl_policy_version": row["policy_version"],
        "rl_verifier": row["verifier"],
        "rl_verifier_version": row["verifier_version"],
        "rl_reward": row["reward"],
    }


def _pair_line(row: dict, run_id: str) -> dict:
    return {
        "prompt": orjson.loads(row["prompt"]),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
        "score_chosen": row["score_chosen"],
        "score_rejected": row["score_rejected"],
        "rl_margin": row["score_chosen"] - row["score_rejected"],
        "rl_status_chosen": row["status_chosen"],
        "rl_status_rejected": row["status_rejected"],
        "rl_run_id": run_id,
        "rl_prompt_id": row["prompt_id"],
        "rl_policy_version_chosen": row["policy_version_chosen"],
        "rl_policy_version_rejected": row["policy_version_rejected"],
        "rl_verifier": row["verifier"],
        "rl_verifier_version": row["verifier_version"],
    }


def _write(path: Path, lines: Iterator[dict]) -> int:
    """Write the lines as JSONL, whole or not at all (a reader never sees half a file); how many."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "wb") as f:
        for line in lines:
            f.write(orjson.dumps(line) + b"\n")
            count += 1
    os.replace(tmp, path)
    return count


def assemble(lake: Lake, run_id: str, out: Path) -> Assembly:
    """Write run_id's rejection-sampled SFT examples to out/sft.jsonl and its preference pairs to
    out/preference.jsonl (one of each per prompt at most, sorted by prompt id)."""
    if not lake.exists(tables.ROLLOUTS_NAME):
        raise FileNotFoundError(f"no {tables.ROLLOUTS_NAME} table in lake {lake.root}: no RL run has appended to it")
    if not lake.query("select 1 from r where run_id = $run limit 1", {"run": run_id}, r=tables.ROLLOUTS_NAME):
        raise ValueError(f"no rollouts of run {run_id!r} in {lake.root}/{tables.ROLLOUTS_NAME}")
    out.mkdir(parents=True, exist_ok=True)

    def lines(sql: str, shape) -> Iterator[dict]:
        for batch in _batches(lake, sql, run_id):
            for row in batch.to_pylist():
                yield shape(row, run_id)

    sft = _write(out / "sft.jsonl", lines(_SFT, _sft_line))
    pairs = _write(out / "preference.jsonl", lines(_PAIRS, _pair_line))
    return Assembly(out / "sft.jsonl", out / "preference.jsonl", sft, pairs)
