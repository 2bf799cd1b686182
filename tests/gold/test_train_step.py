"""One real training step on packed rows: the packed loss and gradients equal those of the examples trained apart.

What is compared, precisely: a causal LM's targets in an example are the positions t >= 1 whose label is not -100
(token t is predicted from tokens < t; the first label is never a target). Each example alone gives loss_i, the
mean cross-entropy over its n_i targets. Their token-weighted mean, sum(loss_i * n_i) / sum(n_i), must equal the
per-token mean cross-entropy over all targets of the packed batch (transformers' default causal-LM loss), and also
that of an ordinary right-padded batch of the same examples.

Isolation on CPU: transformers (sdpa and eager) builds a block-diagonal causal mask from position_ids that restart
at 0, but only when no 2-D attention_mask is passed AND no KV cache exists. `use_cache` defaults to the config's
True even in train mode, and then the packed-sequence detection is skipped silently and attention crosses
examples; so these calls pass use_cache=False, as a training loop must.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tunelake.gold.tokenize.masks import IGNORE as IGNORE_INDEX
from tunelake.gold.tokenize.pack import pack

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 1000
LENGTHS = [23, 9, 31, 5, 14, 40, 7, 18]
MAX_LENGTH = 64
PAD = 0


def _model(attn_implementation: str):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_LENGTH,
        # Larger than the 0.02 default so attention is sharp and a leak across examples moves the loss visibly.
        initializer_range=0.2,
        attention_dropout=0.0,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).train()


@pytest.fixture(scope="module")
def examples() -> pa.Table:
    """Random-token examples whose prompt prefix is masked with -100, as the tokenizer emits them.

    Every third example has no prompt (its first label is a real token), so a packed row that kept that label
    would train the previous example's last token to predict it and break the equality."""
    rng = np.random.default_rng(0)
    input_ids, labels = [], []
    for i, n in enumerate(LENGTHS):
        ids = rng.integers(1, VOCAB, n).tolist()
        prompt = 0 if i % 3 == 0 else int(rng.integers(1, n // 2 + 1))
        input_ids.append(ids)
        labels.append([IGNORE_INDEX] * prompt + ids[prompt:])
    return pa.table(
        {
            "id": [f"ex{i}" for i in range(len(LENGTHS))],
            "input_ids": pa.array(input_ids, pa.list_(pa.int32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
        }
    )


def _right_padded(rows: list[dict], columns: dict[str, int]) -> dict:
    """Tensors of `rows` padded on the right to the longest row, each column with its own pad value."""
    width = max(len(r["input_ids"]) for r in rows)
    return {
        name: torch.tensor([r[name] + [pad] * (width - len(r[name])) for r in rows], dtype=torch.long)
        for name, pad in columns.items()
    }


def _packed_batch(packed: pa.Table) -> dict:
    """The packed rows as one batch. Padding is its own segment (positions restart at 0, labels -100), so it is
    isolated like any example and, coming last, is never attended to by real tokens."""
    rows = packed.to_pylist()
    width = max(len(r["input_ids"]) for r in rows)
    for r in rows:
        r["position_ids"] = r["position_ids"] + list(range(width - len(r["input_ids"])))
    return _right_padded(rows, {"input_ids": PAD, "labels": IGNORE_INDEX, "position_ids": 0})


def _unpacked_batch(examples: pa.Table) -> dict:
    rows = [{**r, "attention_mask": [1] * len(r["input_ids"])} for r in examples.to_pylist()]
    return _right_padded(rows, {"input_ids": PAD, "labels": IGNORE_INDEX, "attention_mask": 0})


def _token_weighted_mean_of_separate_losses(model, examples: pa.Table) -> float:
    total, targets = 0.0, 0
    with torch.no_grad():
        for r in examples.to_pylist():
            n = sum(label != IGNORE_INDEX for label in r["labels"][1:])
            loss = model(
                input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]), use_cache=False
            ).loss
            total += loss.item() * n
            targets += n
    return total / targets


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_token_weighted_mean_of_separate_losses(examples, attn_implementation):
    model = _model(attn_implementation)
    packed, stats = pack(examples, MAX_LENGTH)
    assert 1 < stats.bins < len(LENGTHS)  # several rows, several examples in some of them
    separate = _token_weighted_mean_of_separate_losses(model, examples)
    with torch.no_grad():
        packed_loss = model(**_packed_batch(packed), use_cache=False).loss.item()
        unpacked_loss = model(**_unpacked_batch(examples), use_cache=False).loss.item()
        # Control: the same rows with positions that do not restart attend across examples and lose the equality.
        leaky = _packed_batch(packed)
        del leaky["position_ids"]
        leaky_loss = model(**leaky, use_cache=False).loss.item()
    assert np.isfinite(packed_loss) and np.isfinite(unpacked_loss)
    assert packed_loss == pytest.approx(separate, rel=1e-5)
    assert unpacked_loss == pytest.approx(separate, rel=1e-5)
    assert abs(leaky_loss - separate) > 1e-2


def test_one_training_step_on_a_packed_batch_matches_the_unpacked_step(examples):
    packed, _ = pack(examples, MAX_LENGTH)
    gradients = {}
    for name, batch in (("packed", _packed_batch(packed)), ("unpacked", _unpacked_batch(examples))):
        model = _model("sdpa")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        gradients[name] = {p: w.grad.clone() for p, w in model.named_parameters()}
        assert all(torch.isfinite(g).all() for g in gradients[name].values())
        optimizer.step()
        with torch.no_grad():
            after = model(**batch, use_cache=False).loss
        assert torch.isfinite(after) and after < loss
    for p, g in gradients["packed"].items():
        torch.testing.assert_close(g, gradients["unpacked"][p], rtol=1e-4, atol=1e-6, msg=p)
