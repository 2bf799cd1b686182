"""A template that refuses a record quarantines it as template_error; a bug anywhere else fails the tokenize step
with its traceback, instead of turning every record into a template_error."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import (
    MISTRAL,
    QWEN,
    TEMPLATE_DATE,
    assistant,
    canonical_messages,
    settings,
    sft_part,
    system,
    user,
)
from tunelake.gold.tokenize import masks, stage
from tunelake.gold.tokenize.template import ChatTemplate, TextTokenizer
from tunelake.schema import RECORD, Reason, Regime

CHAT = [user("What is 2 + 2?"), assistant("4.")]


def _part(regime: Regime) -> pa.Table:
    if regime == Regime.sft:
        return sft_part([("a", CHAT, None)])
    if regime == Regime.preference:
        names = ["id", "prompt", "chosen", "rejected"]
        row = {"id": "a", "prompt": CHAT[:1], "chosen": [assistant("4.")], "rejected": [assistant("5.")]}
    else:
        names = ["id", "prompt", "answer", "verifier", "verifier_config"]
        row = {"id": "a", "prompt": CHAT[:1], "answer": "4", "verifier": "numeric", "verifier_config": None}
    row = {k: canonical_messages(v) if isinstance(v, list) else v for k, v in row.items()}
    return pa.Table.from_pylist([row], schema=pa.schema([RECORD.field(n) for n in names]))


def _bug(*_, **__):
    raise ZeroDivisionError("a bug in tunelake")


BUGS = {  # where a bug is planted: (module or class, attribute)
    "render": (ChatTemplate, "render"),
    "sft header search": (masks, "_after_header"),
    "sft audit": (masks, "find_control_text"),
    "sft length policy": (stage, "fit_length"),
    "encode": (TextTokenizer, "encode"),
}
CASES = [
    (Regime.sft, "render"),
    (Regime.sft, "sft header search"),
    (Regime.sft, "sft audit"),
    (Regime.sft, "sft length policy"),
    (Regime.preference, "render"),
    (Regime.preference, "encode"),
    (Regime.rl, "render"),
    (Regime.rl, "encode"),
]


@pytest.mark.parametrize(("regime", "bug"), CASES, ids=[f"{r.value}-{b}" for r, b in CASES])
def test_a_bug_in_tokenization_fails_loudly_instead_of_quarantining_records(monkeypatch, regime, bug):
    spec = stage.TokenizerSpec(TOKENIZERS / QWEN, "auto", TEMPLATE_DATE)
    spec.load()  # loaded and probed before the bug is planted: the bug must hit the records, not the probes
    monkeypatch.setattr(*BUGS[bug], _bug)
    with pytest.raises(ZeroDivisionError, match="a bug in tunelake"):
        stage.tokenize_rows(_part(regime), regime, spec, settings())


def test_mistral_refusing_a_system_message_quarantines_that_record_as_template_error():
    spec = stage.TokenizerSpec(TOKENIZERS / MISTRAL, "auto", TEMPLATE_DATE)
    part = sft_part([("with-system", [system("Answer briefly."), *CHAT], None), ("plain", CHAT, None)])
    table, rejects = stage.tokenize_rows(part, Regime.sft, spec, settings())
    assert table.column("id").to_pylist() == ["plain"]
    [(id_, rejected)] = rejects
    assert (id_, rejected.reason) == ("with-system", Reason.template_error)
    assert "Conversation roles must alternate" in rejected.detail
