"""LLaMA-Factory's v1_dpo (tests/fixtures/real/v1_dpo_demo_sample.jsonl, all 10 rows of the demo file): whole
conversations with typed content -> a plain pair, the shared prefix as the prompt, loss_weight kept in meta."""

from __future__ import annotations

from tests.ingest.pairs_support import made, real_rows, text

ROWS = real_rows("v1_dpo_demo_sample.jsonl")


def test_every_row_is_a_pair_with_the_shared_prefix_as_prompt():
    for row in ROWS:
        (pair,) = made(row, "llamafactory_v1_dpo")
        chosen, rejected = row["chosen_messages"], row["rejected_messages"]
        n = len(pair["prompt"])
        assert chosen[:n] == rejected[:n] and chosen[n] != rejected[n]
        assert pair["chosen"][0]["role"] == "assistant" and pair["rejected"][0]["role"] == "assistant"
        assert text(pair["chosen"]) == "".join(p["value"] for m in chosen[n:] for p in m["content"])
        assert "pair" not in pair["meta"]  # a plain pair: the source says nothing but which side is chosen


def test_first_row_read_off_the_file():
    (pair,) = made(ROWS[0], "llamafactory_v1_dpo")
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert text(pair["chosen"]).startswith("Abdulah Hasanagic is the proud owner of AS Company in Gorazde")
    assert text(pair["rejected"]).startswith(" Abdulah Hasanagic is the proud owner of AS Company, a small town")
    assert pair["meta"]["message_fields"] == {
        "prompt[0]": {"loss_weight": 0.0},
        "prompt[1]": {"loss_weight": 0.0},
        "chosen[0]": {"loss_weight": 1.0},
        "rejected[0]": {"loss_weight": 1.0},
    }
