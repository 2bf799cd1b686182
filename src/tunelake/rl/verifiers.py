"""The verifier registry: a record's `verifier` names one, its `verifier_config` (JSON) configures it.

Call them through `tunelake.rl.verifier_pool.VerifierPool`, which runs each check in a killable worker process under
a hard timeout; `check` here runs one in the calling process, with no timeout.
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ValidationError

from tunelake.rl.code_verifier import PYTHON_TESTS
from tunelake.rl.math_verifier import MATH
from tunelake.rl.text_verifiers import TEXT_VERIFIERS
from tunelake.rl.verdict import Status, Verdict, Verifier

__all__ = ["VERIFIERS", "ConfigError", "Status", "Verdict", "Verifier", "check", "config_of", "register"]

VERIFIERS: dict[str, Verifier] = {verifier.name: verifier for verifier in (*TEXT_VERIFIERS, MATH, PYTHON_TESTS)}


def register(verifier: Verifier) -> None:
    """Adds a verifier (from a plugin module a VerifierPool's workers import); a name is never redefined."""
    if verifier.name in VERIFIERS:
        known = VERIFIERS[verifier.name]
        raise ValueError(f"verifier {verifier.name!r} is already registered (version {known.version})")
    VERIFIERS[verifier.name] = verifier


class ConfigError(ValueError):
    """A record's verifier name or verifier_config that no verifier accepts: bad data, not a verdict."""


def config_of(name: str, config: str | dict | None) -> BaseModel:
    """The verifier's validated config from a record's verifier_config (JSON text, a dict, or None for defaults)."""
    if name not in VERIFIERS:
        raise ConfigError(f"unknown verifier {name!r}: expected one of {', '.join(sorted(VERIFIERS))}")
    try:
        fields = orjson.loads(config) if isinstance(config, str) and config.strip() else config or {}
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{name}: verifier_config is not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{name}: expected verifier_config to be a JSON object, got {type(fields).__name__}")
    try:
        return VERIFIERS[name].config.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"{name}: verifier_config {problems}") from None


def check(name: str, gold: str, completion: str, config: str | dict | None = None) -> Verdict:
    """The verdict of one verifier on one completion, computed here (no timeout: see VerifierPool)."""
    return VERIFIERS[name].check(gold, completion, config_of(name, config))
