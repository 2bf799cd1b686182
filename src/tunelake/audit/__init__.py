"""Audits: read-only summaries of what a lake holds, each a figure set with warnings.

An audit is a name, a config model (the recipe's `audits.<name>`) and a function of the lake's tables (where a
table's Parquet files are) that gives a JSON-able dict, or None when the lake holds nothing it audits. A build
runs every audit over what it publishes and keeps the results in its manifest's `audits`; `tunelake audit <name>`
runs one over the published lake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from tunelake.audit.preference import PreferenceAuditConfig, TableFiles, audit_preference


@dataclass(frozen=True)
class Audit:
    name: str
    Config: type[BaseModel]
    run: Callable[[TableFiles, BaseModel, Path | None], dict | None]  # (files, config, tokenizer folder or None)
    about: str


AUDITS = (
    Audit(
        "preference",
        PreferenceAuditConfig,
        audit_preference,
        "The preference audit: ties, length bias, reviewer agreement, position bias, margins, weak pairs.",
    ),
)


def run_audits(files: TableFiles, configs: BaseModel, tokenizer: Path | None) -> dict[str, dict]:
    """Every audit that finds something to audit, by name; `configs` holds each one's config as an attribute."""
    found = {audit.name: audit.run(files, getattr(configs, audit.name), tokenizer) for audit in AUDITS}
    return {name: report for name, report in found.items() if report is not None}
