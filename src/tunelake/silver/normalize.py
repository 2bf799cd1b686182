"""Normalisation that never changes meaning: Unicode NFC, whitespace at turn edges, role aliases."""

from __future__ import annotations

import unicodedata

from tunelake.schema import ROLE_ALIASES

MESSAGE_LISTS = ("messages", "prompt", "chosen", "rejected")


def normalize_text(text: str, changes: set[str], strip: bool = True) -> str:
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
        changes.add("nfc")
    if not strip:
        return text
    stripped = text.strip()
    if stripped != text:
        changes.add("strip")
    return stripped


def normalize_record(record: dict) -> set[str]:
    """Normalise a canonical record in place; returns what changed ("nfc", "strip", "role")."""
    changes: set[str] = set()
    for key in MESSAGE_LISTS:
        for msg in record.get(key) or ():
            role = msg["role"].strip().lower()
            role = ROLE_ALIASES.get(role, role)  # an unknown role stays as it is, for validation to name
            if role != msg["role"]:
                changes.add("role")
                msg["role"] = role
            for field in ("content", "reasoning_content"):
                if msg[field] is not None:
                    msg[field] = normalize_text(msg[field], changes)
    if record.get("answer") is not None:
        # A code answer's leading indentation is code: it continues the prompt's function body.
        strip = record.get("verifier") != "python_tests"
        record["answer"] = normalize_text(record["answer"], changes, strip=strip)
    return changes
