"""A tokenized record as a person should see it: every token boundary visible, trained tokens highlighted."""

from __future__ import annotations

from rich.text import Text
from tokenizers import Tokenizer

from tunelake.gold.tokenize.masks import IGNORE

# Alternating shades mark where one token ends and the next begins.
TRAINED = ("bold black on green3", "bold black on green4")
CONTEXT = ("grey70 on grey15", "grey70 on grey23")


def token_text(ids: list[int], labels: list[int], tokenizer: Tokenizer) -> Text:
    """Each token decoded on its own, shaded by token; trained ones (label != -100) in green."""
    text = Text()
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        piece = tokenizer.decode([token], skip_special_tokens=False)
        style = (TRAINED if label != IGNORE else CONTEXT)[i % 2]
        text.append(piece.replace("\n", "↵\n"), style=style)
    return text


def legend(ids: list[int], labels: list[int]) -> str:
    trained = sum(label != IGNORE for label in labels)
    return f"{len(ids)} tokens, {trained} trained (green); shading alternates at each token boundary; ↵ is a newline"
