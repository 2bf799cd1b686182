"""Each assistant content is located after its own assistant header, not at the first match after the previous
message: a short content also occurs in headers and in injected text. An earlier version rejected a one-letter
answer that the header spells (mask_overruns_turn), and trained a user turn instead of the assistant's when the
user's text also occurs in the injected system prompt (all audits passed: they check the spans, not whose they are).
"""

from __future__ import annotations

import pytest

from tests.gold.tokenize.support import LLAMA, MISTRAL, QWEN, assistant, rejection, sft, trained_runs, user
from tunelake.gold.tokenize.masks import IGNORE
from tunelake.schema import Reason


@pytest.mark.parametrize(("tokenizer", "answer", "eot"), [(QWEN, "a", "<|im_end|>"), (LLAMA, "d", "<|eot_id|>")])
def test_one_letter_answer_that_the_assistant_header_spells_is_trained(tokenizer, answer, eot):
    ids, labels = sft(tokenizer, [user("Pick a letter from a to e."), assistant(answer)])
    assert trained_runs(tokenizer, ids, labels) == [answer + eot]


def test_user_text_found_in_the_default_system_prompt_does_not_shift_the_assistant_span():
    # "Cloud" first occurs in Qwen2.5's injected "... created by Alibaba Cloud. ...": searching the assistant's
    # "Cloud" from there found the user's "Cloud" (followed by <|im_end|>) and trained the user turn.
    ids, labels = sft(QWEN, [user("Cloud"), assistant("Cloud")])
    assert trained_runs(QWEN, ids, labels) == ["Cloud<|im_end|>"]
    trained = labels != IGNORE
    assert trained[-3:].tolist() == [True, True, False]  # the assistant's "Cloud", <|im_end|>, then "\n"


def test_mistral_has_no_assistant_header_so_a_one_letter_answer_inside_inst_is_rejected_not_mistrained():
    # Mistral v0.1's assistant text directly follows " [/INST]": with no header to anchor on, an answer "I" is first
    # found inside "[/INST]". Fail-closed limitation, pinned: the record is rejected, never trained wrongly.
    error = rejection(MISTRAL, [user("Who am I talking to? Answer with one letter."), assistant("I")])
    assert error.reason == Reason.mask_overruns_turn
