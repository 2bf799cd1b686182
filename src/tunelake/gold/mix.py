"""The mix: gold holds each group of records (by source, domain or category) in the share the recipe asks for; a
global stage, the last of the chain.

A group over its quota keeps the records that come first by a seeded hash of their id (so the choice depends on
the seed and the data, never on input order or workers); the rest are dropped as `mix_sampled_out:<group>`. A
group under its quota keeps all it has and, where `upsample` allows, repeats them: every record `quota // n`
times and the first `quota % n` by the hash once more. The count is the annotation `mix_copies` of every record kept,
kept in silver, where a record stays one row; publish repeats the row in its gold table, so the copies share the
record's split and the exports and tokenization see them. Records of a group the ratios do not name are dropped
as `mix_unlisted:<group>`.

The target is in records: tokens exist only once gold is tokenized, after publish, with the tokenizer the recipe
names (if any), and a character count is no token count.
"""

from __future__ import annotations

import math
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, StrictFloat, StrictInt, model_validator

from tunelake.gold.split import unit
from tunelake.schema import Reason, Regime
from tunelake.silver.turns import Turns
from tunelake.stage import MIX_COPIES, Decisions, GlobalStage, StageConfig, StagedRows, Tally, drops

# The group of a record with no domain (by: domain) or no `category` in its meta (by: category).
UNSET = "(unset)"
# Turns per record (user turns: exchanges) are reported in these buckets: label -> (least, most).
TURN_BUCKETS = {"0": (0, 0), "1": (1, 1), "2": (2, 2), "3-4": (3, 4), "5-8": (5, 8), "9+": (9, None)}
# A reasoning trace in a content: a <think> block holding some text (as Qwen3, DeepSeek-R1 and their distills write).
THINK_BLOCK = r"(?s)<think>\s*\S"
SHARE_TOLERANCE = 1e-6


class MixConfig(StageConfig):
    """Gold holds each group (source, domain or meta category) in the given shares of a target size, or counts;
    seeded down-sampling (and up-sampling where allowed), reported against the target."""

    by: Literal["source", "domain", "category"] = Field(
        "source",
        description="What groups records: their `source`, their canonical `domain`, or the `category` key of their "
        f"meta (set it per source with `meta: {{category: math}}`). A record with none is in the group {UNSET!r}.",
    )
    ratios: dict[str, StrictFloat | StrictInt] = Field(
        min_length=1,
        description="Group -> its share of the target (numbers with a decimal point, summing to 1) or its count "
        "of records (integers). Records of groups not named here are dropped as mix_unlisted.",
    )
    size: int | None = Field(
        None,
        gt=0,
        description="Target records with shares; omitted: the largest the shares allow without repeating records "
        "(groups absent from the data aside). Not given with counts, which make their own total.",
    )
    upsample: bool = Field(
        False, description="Repeat the records of a group short of its quota to meet it (else it keeps what it has)."
    )
    seed: int = Field(0, description="Changes which records a group over its quota keeps (and repeats once more).")
    general: list[str] = Field(
        default_factory=list,
        description="The groups that are general-purpose data; the report warns when together they are under "
        "general_floor of the achieved mix.",
    )
    general_floor: float = Field(
        0.2, ge=0, le=1, description="The least share of general-purpose groups before the report warns."
    )

    def check_sources(self, sources: list[str]) -> None:
        unknown = sorted(set(self.ratios) - set(sources)) if self.by == "source" else []
        if unknown:
            raise ValueError(
                f"ratios name sources the recipe does not have: {', '.join(unknown)} "
                f"(its sources: {', '.join(sources)})"
            )

    @model_validator(mode="after")
    def _ratios_make_a_mix(self) -> MixConfig:
        kinds = {type(value) for value in self.ratios.values()}
        if kinds == {int, float}:
            raise ValueError(
                f"ratios mix shares (numbers with a decimal point) and counts (integers); give one kind: {self.ratios}"
            )
        if any(value < 0 for value in self.ratios.values()):
            raise ValueError(f"ratios must not be negative: {self.ratios}")
        if kinds == {float}:
            total = math.fsum(self.ratios.values())
            if abs(total - 1) > SHARE_TOLERANCE:
                raise ValueError(
                    f"the shares in ratios sum to {total:.6g}; they must sum to 1 (or give each group a count of "
                    "records, an integer)"
                )
        elif self.size is not None:
            raise ValueError(f"size {self.size} is given with counts in ratios, which make their own total; drop one")
        unknown = sorted(set(self.general) - set(self.ratios))
        if unknown:
            raise ValueError(f"general names groups that ratios does not: {', '.join(unknown)}")
        return self

    @property
    def counts(self) -> bool:
        return all(isinstance(value, int) for value in self.ratios.values())


class Mix(GlobalStage):
    name = "mix"
    Config = MixConfig
    reads = ("regime", "source", "domain", "meta", "messages", "prompt", "chosen")
    adds = (MIX_COPIES,)

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        return {
            "group": group_of(batch, self.config.by),
            "place": pa.array(unit(batch["id"], self.config.seed)),
            "turns": pa.array(user_turns(batch)),
            "reasoning": pa.array(has_reasoning(batch)),
        }

    def columns_key(self) -> dict:
        return {"name": self.name, "version": self.version, "by": self.config.by, "seed": self.config.seed}

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        with rows.connect(memory_limit) as con:
            available = dict(con.sql('select "group", count(*) from staged group by all').fetchall())
            quotas = quotas_of(self.config, available)
            con.register("quotas", pa.table({"grp": list(quotas), "quota": list(quotas.values())}, _QUOTAS))
            con.execute(_PLACED.format(upsample=self.config.upsample))
            dropped = con.sql(_DROPPED.format(**_codes(self.config))).to_arrow_table()
            copies = con.sql("select _ord, copies from placed where copies > 0 order by _ord").to_arrow_table()
            tally = Tally({(key, grp): n for key, grp, n in con.sql(_GROUP_TALLY).fetchall()})
            tally.update({("turns", bucket): n for bucket, n in con.sql(_turns_tally()).fetchall()})
            [(reasoning,)] = con.sql("select coalesce(sum(copies), 0) from placed where reasoning").fetchall()
            tally["reasoning", ""] = reasoning
        tally.update({("available", grp): n for grp, n in available.items()})
        tally.update({("quota", grp): n for grp, n in quotas.items()})
        decisions = drops(dropped["_ord"], dropped["id"], dropped["reason"], dropped["detail"])
        notes = pa.table({"_ord": copies["_ord"], MIX_COPIES.name: copies["copies"].cast(pa.int32())})
        return Decisions(decisions, notes, Tally({k: v for k, v in tally.items() if v}))

    def report(self, ledger: pa.Table, tally: Tally) -> dict:
        """The achieved mix against the target, per group; turn depth and reasoning share of what gold holds; and
        the warnings: groups absent or short of their quota, general-purpose data under its floor."""
        return mix_report(self.config, tally)


_QUOTAS = pa.schema([("grp", pa.string()), ("quota", pa.int64())])
# Each record's rank in its group by the seeded hash (ties by ordinal, one way), and how many times gold holds it:
# 0 beyond the quota (or in a group with none), else once, or more where the group is short and upsample is on.
_PLACED = """
create temp table placed as
with ranked as (
    select s._ord, s.id, s."group" as grp, s.turns, s.reasoning, q.quota,
           row_number() over (partition by s."group" order by s.place, s._ord) - 1 as rank,
           count(*) over (partition by s."group") as n
    from staged s left join quotas q on q.grp = s."group"
)
select *, case
    when quota is null or rank >= quota then 0
    when {upsample} and quota > n then quota // n + (rank < quota % n)::int
    else 1 end as copies
from ranked
"""
_DROPPED = """
select _ord, id,
       case when quota is null then '{unlisted}:' || grp else '{sampled_out}:' || grp end as reason,
       case when quota is null then 'gold.mix.ratios names no share for the {by} ' || grp || ' (it names {named})'
            else 'beyond the quota of ' || quota || ' records of ' || grp || ' (' || n || ' available); kept are '
                 || 'the first by a hash of the id with seed {seed}' end as detail
from placed where copies = 0 order by _ord
"""
_GROUP_TALLY = """
select 'achieved', grp, sum(copies) from placed group by grp
union all select 'copies', grp, sum(greatest(copies - 1, 0)) from placed group by grp
union all select 'sampled_out', grp, count(*) from placed where copies = 0 and quota is not null group by grp
union all select 'unlisted', grp, count(*) from placed where quota is null group by grp
"""


def _codes(config: MixConfig) -> dict[str, str]:
    named = ", ".join(sorted(config.ratios)).replace("'", "''")
    return {
        "unlisted": Reason.mix_unlisted.value,
        "sampled_out": Reason.mix_sampled_out.value,
        "by": config.by,
        "named": named,
        "seed": str(config.seed),
    }


def _turns_tally() -> str:
    cases = " ".join(
        f"when turns >= {least}" + (f" and turns <= {most}" if most is not None else "") + f" then '{label}'"
        for label, (least, most) in TURN_BUCKETS.items()
    )
    return f"select case {cases} end as bucket, sum(copies) from placed where copies > 0 group by bucket"


def group_of(batch: pa.RecordBatch, by: str) -> pa.Array:
    """Each record's group: its source, domain or meta `category` ({UNSET} where it has none)."""
    if by == "source":
        return batch["source"]
    if by == "domain":
        return pc.fill_null(batch["domain"], UNSET)
    with duckdb.connect() as con:  # meta is JSON text: DuckDB reads the key without a Python loop per row
        con.register("records", pa.table({"meta": batch["meta"]}))
        category = con.sql("select json_extract_string(meta, '$.category') as c from records").to_arrow_table()["c"]
    return pc.fill_null(category.combine_chunks().cast(pa.string()), UNSET)


def user_turns(batch: pa.RecordBatch) -> np.ndarray:
    """Each record's exchanges: the user turns of its conversation (`messages` for SFT, else the `prompt`)."""
    counts = {}
    for column in ("messages", "prompt"):
        turns = Turns.of(batch[column])
        user = pc.equal(turns.fields["role"], "user").fill_null(False).to_numpy(zero_copy_only=False)
        counts[column] = np.bincount(turns.record[user], minlength=turns.records)
    sft = pc.equal(batch["regime"], Regime.sft.value).to_numpy(zero_copy_only=False)
    return np.where(sft, counts["messages"], counts["prompt"])


def has_reasoning(batch: pa.RecordBatch) -> np.ndarray:
    """Whether a record's response shows a reasoning trace: an assistant turn (of `messages` for SFT, `chosen` for
    preference; an RL prompt has none) with a non-blank `reasoning_content`, or a <think> block with text in its
    content."""
    regime = batch["regime"]
    found = np.zeros(batch.num_rows, bool)
    for column, in_regime in (("messages", Regime.sft), ("chosen", Regime.preference)):
        turns = Turns.of(batch[column])
        assistant = pc.equal(turns.fields["role"], "assistant").fill_null(False)
        traced = pc.or_(
            pc.match_substring_regex(turns.fields["reasoning_content"], r"\S").fill_null(False),
            pc.match_substring_regex(turns.fields["content"], THINK_BLOCK).fill_null(False),
        )
        hits = pc.and_(assistant, traced).to_numpy(zero_copy_only=False)
        per_record = np.bincount(turns.record[hits], minlength=turns.records) > 0
        found |= per_record & pc.equal(regime, in_regime.value).to_numpy(zero_copy_only=False)
    return found


def quotas_of(config: MixConfig, available: dict[str, int]) -> dict[str, int]:
    """Each named group's quota of records: its count, or its share of the size by largest remainders (so the
    quotas sum to the size exactly; ties to the group named first)."""
    if config.counts:
        return dict(config.ratios)
    size = config.size if config.size is not None else largest_size(config.ratios, available)
    exact = {grp: share * size for grp, share in config.ratios.items()}
    quotas = {grp: math.floor(value) for grp, value in exact.items()}
    by_remainder = sorted(exact, key=lambda grp: quotas[grp] - exact[grp])  # stable: ties keep the recipe's order
    for grp in by_remainder[: size - sum(quotas.values())]:
        quotas[grp] += 1
    return quotas


def largest_size(shares: dict[str, float], available: dict[str, int]) -> int:
    """The largest size whose quotas no group present in the data exceeds (groups absent would give 0)."""
    present = {grp: share for grp, share in shares.items() if share > 0 and available.get(grp, 0)}
    if not present:
        return 0
    size = math.floor(min(available[grp] / share for grp, share in present.items()) + SHARE_TOLERANCE)
    while any(math.floor(share * size) > available[grp] for grp, share in present.items()):
        size -= 1  # only where floating point rounded the bound up
    return size


def mix_report(config: MixConfig, tally: Tally) -> dict:
    """manifest["reports"]["mix"]: see Mix.report."""
    figures: dict[str, dict[str, int]] = {}
    for (key, grp), n in tally.items():
        figures.setdefault(key, {})[grp] = n
    achieved = figures.get("achieved", {})
    total = sum(achieved.values())
    quotas = figures.get("quota", {})
    target = sum(quotas.values())
    groups, warnings = {}, []
    for grp in config.ratios:
        got, quota, available = achieved.get(grp, 0), quotas.get(grp, 0), figures.get("available", {}).get(grp, 0)
        groups[grp] = {
            "available": available,
            "target_share": round(quota / target, 6) if target else 0.0,
            "target": quota,
            "achieved": got,
            "achieved_share": round(got / total, 6) if total else 0.0,
            "sampled_out": figures.get("sampled_out", {}).get(grp, 0),
            "copies": figures.get("copies", {}).get(grp, 0),
        }
        if not available and quota:
            warnings.append(f"group {grp!r} ({config.by}) is absent from the data: 0 of its {quota} records")
        elif got < quota:
            warnings.append(
                f"group {grp!r} ({config.by}) has {available} records, short of its quota of {quota} "
                "(`upsample: true` repeats them)"
            )
    general = sum(achieved.get(grp, 0) for grp in config.general)
    general_share = general / total if total else 0.0
    if config.general and general_share < config.general_floor:
        warnings.append(
            f"general-purpose data ({', '.join(config.general)}) is {general_share:.1%} of the mix, under the floor "
            f"of {config.general_floor:.0%}"
        )
    turns = figures.get("turns", {})
    return {
        "by": config.by,
        "target_records": target,
        "achieved_records": total,
        "groups": groups,
        "unlisted": figures.get("unlisted", {}),
        "general_share": round(general_share, 6) if config.general else None,
        "turns": {label: turns.get(label, 0) for label in TURN_BUCKETS},
        "reasoning_records": figures.get("reasoning", {}).get("", 0),
        "reasoning_share": round(figures.get("reasoning", {}).get("", 0) / total, 6) if total else 0.0,
        "warnings": warnings,
    }
