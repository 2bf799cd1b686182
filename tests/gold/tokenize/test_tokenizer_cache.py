"""Loaded tokenizers and templates are cached per process by the contents of their files, not by their folder."""

from __future__ import annotations

import shutil

import numpy as np

from tests.conftest import TOKENIZERS
from tests.gold.tokenize.support import LLAMA, QWEN, TEMPLATE_DATE, assistant, settings, sft_part, user
from tunelake.gold.tokenize.stage import TokenizerSpec, tokenize_rows
from tunelake.schema import Regime

PART = sft_part([("a", [user("What is 2 + 2?"), assistant("4.")], None)])


def _tokenized(folder, chat_template: str = "auto") -> dict:
    table, rejects = tokenize_rows(PART, Regime.sft, TokenizerSpec(folder, chat_template, TEMPLATE_DATE), settings())
    assert rejects == []
    return table.to_pylist()[0]


def test_tokenizers_copied_one_after_another_into_one_folder_each_tokenize_as_themselves(tmp_path):
    folder = tmp_path / "tokenizer"
    for name in (QWEN, LLAMA, QWEN):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(TOKENIZERS / name, folder)
        assert _tokenized(folder) == _tokenized(TOKENIZERS / name), name


def test_a_chat_template_file_rewritten_in_place_renders_its_new_text(tmp_path):
    template = tmp_path / "chat.jinja"
    for marker in ("A", "B"):
        template.write_text(
            "{%- for m in messages %}{{ '" + marker + "<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{ '" + marker + "<|im_start|>assistant\\n' }}{%- endif %}"
        )
        ids = _tokenized(TOKENIZERS / QWEN, str(template))["input_ids"]
        spec = TokenizerSpec(TOKENIZERS / QWEN, str(template), TEMPLATE_DATE)
        chat, tok = spec.load()
        assert tok.decode(np.asarray(ids)).startswith(f"{marker}<|im_start|>user"), marker
        assert chat.text == template.read_text()
