"""`tunelake freeze`: pin a published eval split as a named, frozen set that later builds keep out of train.

A frozen set is the rows of the lake's append-only `frozen` table that carry its name: each record of the gold
table at its published version, with its prompt as the splits see it. Later builds join those prompts to their
prompt groups (silver/prompt_groups.py): a frozen prompt keeps its split, and so do its near-duplicates. A set is
never replaced or changed; a new version is a new name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tunelake import tables
from tunelake.engine.parts import part_name, write_part
from tunelake.lake import Lake, new_run_id
from tunelake.schema import FROZEN, table_of
from tunelake.silver.prompt_groups import gold_prompt_texts, prompt_column
from tunelake.stage import BuildRefused, Stage

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class FreezeError(ValueError):
    """A freeze that cannot be done: the message says why."""


def freeze(lake: Lake, table: str, name: str) -> int:
    """Pin the published rows of gold `table` as the frozen set `name`; returns how many records it holds."""
    placed = tables.gold_of(table)
    if placed is None:
        raise FreezeError(f"{table!r} is not a gold table: name one as gold/<regime>/<split>, e.g. gold/sft/test")
    regime, split = placed
    if split == "train":
        raise FreezeError(f"{table} is a train split: freeze an eval split (validation or test)")
    if not NAME.fullmatch(name):
        raise FreezeError(f"frozen set name {name!r}: use a letter or digit, then letters, digits, '_', '.', '-'")
    if not lake.manifests():  # checked before the lock, which would make the folder
        raise FreezeError(f"no build in {lake.root}: nothing to freeze")
    with lake.lock():
        if not lake.exists(table):
            raise FreezeError(f"no build of {lake.root} has published {table}")
        if lake.exists(tables.FROZEN_NAME) and name in set(
            lake.read(tables.FROZEN_NAME, ["name"])["name"].to_pylist()
        ):
            raise FreezeError(f"a frozen set named {name!r} exists and is never replaced: freeze under a new name")
        version = lake.version(table)
        rows = lake.read(table, ["id", "prompt_id", prompt_column(regime)], version)
        if not rows.num_rows:
            raise FreezeError(f"{table} (version {version}) has no records to freeze")
        frozen = table_of(
            FROZEN,
            rows.num_rows,
            name=name,
            table=table,
            version=version,
            split=split,
            id=rows["id"],
            prompt_id=rows["prompt_id"],
            prompt_text=gold_prompt_texts(rows, regime),
            frozen_at=datetime.now(UTC).isoformat(),
        )
        run_id = new_run_id()
        part = write_part(lake.root, tables.FROZEN_NAME, part_name(run_id, 0, 0), frozen)
        lake.commit(tables.FROZEN_NAME, FROZEN, [part], run_id, append=True)
    return rows.num_rows


def refuse_unkept_frozen_sets(lake: Lake, chain: list[Stage]) -> None:
    """Raise BuildRefused when the lake holds frozen sets and no stage of the chain reads them (prompt_groups
    keeps them out of train): without it, their prompts would move silently."""
    if lake.exists(tables.FROZEN_NAME) and not any(tables.FROZEN_NAME in s.reads_tables for s in chain):
        names = sorted(set(lake.read(tables.FROZEN_NAME, ["name"])["name"].to_pylist()))
        raise BuildRefused(
            f"the lake holds frozen eval sets ({', '.join(names)}), which the prompt_groups stage keeps out of "
            "train; this recipe turns it off: turn it back on (silver.prompt_groups), or build into another lake"
        )
