"""Every table of the lake, named once: its path, its schema and its mode.

A table's path is built here and nowhere else. Modes:
- overwrite: each build publishes a whole new version (bronze, silver, gold, the ledger);
- append: versions only ever add rows, and no build or cleanup removes them (caches, frozen eval sets, rollouts);
- staging: a build's scratch under `_staging/<run_id>/`, removed when the build ends (or by the next build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from tunelake.schema import BRONZE, CALIBRATION, FROZEN, LEDGER, QUARANTINE, ROLLOUTS, TOKENIZE_QUARANTINE, Regime

SPLITS = ("train", "validation", "test")


class Mode(StrEnum):
    overwrite = "overwrite"
    append = "append"
    staging = "staging"


@dataclass(frozen=True)
class Table:
    """One family of tables: `path` is a pattern over the table's parameters (a source, a regime and split, ...)."""

    path: str
    mode: Mode
    schema: pa.Schema | None  # None where the schema depends on the build (silver's added columns, gold's regime)
    about: str

    def name(self, **params: str) -> str:
        return self.path.format(**params)


BRONZE_TABLE = Table("bronze/{source}", Mode.append, BRONZE, "raw rows of one source, verbatim; a file once")
SILVER_RECORDS = Table("silver/records", Mode.overwrite, None, "canonical records, one table for all regimes")
SILVER_QUARANTINE = Table("silver/quarantine", Mode.overwrite, QUARANTINE, "rejected rows with their reason code")
LEDGER_TABLE = Table("ledger", Mode.overwrite, LEDGER, "every decision about every input row")
GOLD = Table("gold/{regime}/{split}", Mode.overwrite, None, "one regime's records in one split")
TOKENIZED_TABLE = Table("gold/tokenized/{fingerprint}/{regime}/{split}", Mode.overwrite, None, "input_ids + labels")
PACKED_TABLE = Table("gold/tokenized/{fingerprint}/sft_packed/{split}", Mode.overwrite, None, "packed SFT rows")
TOKENIZE_QUARANTINED = Table(
    "gold/tokenized/{fingerprint}/quarantine", Mode.overwrite, TOKENIZE_QUARANTINE, "records that cannot be trained on"
)
# Written by `tunelake freeze` (each set in one commit, under the lake's lock), never by a build: published as
# soon as it is committed.
FROZEN_SETS = Table("frozen", Mode.append, FROZEN, "eval sets pinned by `tunelake freeze`; kept out of train")
# Appended by the RL data plane (Lake.append: one commit per batch of groups or per calibration), never by a build.
CALIBRATION_TABLE = Table(
    "rl/calibration", Mode.append, CALIBRATION, "prompts' pass rates under a policy, one commit per calibration"
)
ROLLOUTS_TABLE = Table("rl/rollouts", Mode.append, ROLLOUTS, "every scored rollout of an RL run and its group's fate")
STAGING = "_staging"  # the folder of every build's scratch
STAGED = Table(STAGING + "/{run_id}/{name}", Mode.staging, None, "a build's scratch, read back in the same build")
TABLES = (
    BRONZE_TABLE,
    SILVER_RECORDS,
    SILVER_QUARANTINE,
    LEDGER_TABLE,
    GOLD,
    TOKENIZED_TABLE,
    PACKED_TABLE,
    TOKENIZE_QUARANTINED,
    FROZEN_SETS,
    ROLLOUTS_TABLE,
    CALIBRATION_TABLE,
    STAGED,
)

# The tables the spine writes, as plain names.
RECORDS = SILVER_RECORDS.name()
QUARANTINED = SILVER_QUARANTINE.name()
LEDGER_NAME = LEDGER_TABLE.name()
FROZEN_NAME = FROZEN_SETS.name()
ROLLOUTS_NAME = ROLLOUTS_TABLE.name()
CALIBRATION_NAME = CALIBRATION_TABLE.name()
# Tables committed outside any build: each one's newest commit is published as soon as it is made.
OUTSIDE_BUILDS = (FROZEN_NAME, ROLLOUTS_NAME, CALIBRATION_NAME)


def bronze(source: str) -> str:
    return BRONZE_TABLE.name(source=source)


def gold(regime: Regime, split: str) -> str:
    return GOLD.name(regime=regime.value, split=split)


def gold_tables() -> list[tuple[Regime, str, str]]:
    """(regime, split, table) for every gold table, in the order builds write and report them."""
    return [(regime, split, gold(regime, split)) for regime in Regime for split in SPLITS]


def gold_of(name: str) -> tuple[Regime, str] | None:
    """(regime, split) of a gold table's name; None for any other name."""
    for regime, split, table in gold_tables():
        if table == name:
            return regime, split
    return None


def staged(run_id: str, name: str) -> str:
    return STAGED.name(run_id=run_id, name=name)


def mode_of(name: str) -> Mode:
    """The mode of a table, by which pattern its name fits."""
    for table in TABLES:
        if re.fullmatch(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(table.path)), name):
            return table.mode
    raise ValueError(f"{name!r} is not a table of the registry (tables.TABLES)")
