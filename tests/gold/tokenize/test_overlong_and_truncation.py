"""The overlong policies: drop, truncate_left (keeps the last trained turn whole), truncate_right; a cut that leaves
nothing trained rejects the record (labels_lost_to_truncation), so no example is ever emitted all -100."""

from __future__ import annotations

import numpy as np
import pytest

from tests.gold.tokenize.support import LLAMA, QWEN, assistant, real_sft, rejection, sft, trained_runs, user
from tunelake.gold.tokenize.masks import IGNORE
from tunelake.schema import Reason, Rejected

LONG_PROMPT = [user("Summarise this: " + "lorem ipsum dolor sit amet " * 40), assistant("It is filler text.")]


def test_overlong_drop_rejects_the_record():
    full, _ = sft(QWEN, LONG_PROMPT)
    error = rejection(QWEN, LONG_PROMPT, max_length=len(full) - 1)
    assert error.reason == Reason.overlong
    assert str(len(full)) in error.detail
    ids, _ = sft(QWEN, LONG_PROMPT, max_length=len(full))  # exactly max_length fits
    assert len(ids) == len(full)


def test_truncate_right_that_cuts_every_trained_token_rejects_the_record():
    full, labels = sft(QWEN, LONG_PROMPT)
    first_trained = int(np.flatnonzero(labels != IGNORE)[0])
    error = rejection(QWEN, LONG_PROMPT, max_length=first_trained, overlong="truncate_right")
    assert error.reason == Reason.labels_lost_to_truncation
    ids, cut = sft(QWEN, LONG_PROMPT, max_length=first_trained + 1, overlong="truncate_right")
    assert np.array_equal(ids, full[: first_trained + 1]) and (cut != IGNORE).sum() == 1


def test_truncate_left_keeps_the_last_assistant_turn_whole():
    record = real_sft("fastchat-6-turns")
    full, labels = sft(LLAMA, record["messages"])
    last = trained_runs(LLAMA, full, labels)[-1]
    ids, cut = sft(LLAMA, record["messages"], max_length=len(full) // 2, overlong="truncate_left")
    assert np.array_equal(ids, full[-(len(full) // 2) :]) and np.array_equal(cut, labels[-(len(full) // 2) :])
    assert trained_runs(LLAMA, ids, cut)[-1] == last == record["messages"][-1]["content"] + "<|eot_id|>"


def test_truncate_left_rejects_when_the_last_turn_alone_is_longer_than_max_length():
    messages = [user("Count."), assistant(" ".join(str(i) for i in range(200)))]
    full, labels = sft(QWEN, messages)
    turn = int((labels != IGNORE).sum())
    error = rejection(QWEN, messages, max_length=turn - 1, overlong="truncate_left")
    assert error.reason == Reason.labels_lost_to_truncation
    ids, cut = sft(QWEN, messages, max_length=turn + 1, overlong="truncate_left")
    assert (cut != IGNORE).sum() == turn


@pytest.mark.parametrize("overlong", ["truncate_left", "truncate_right"])
def test_no_cut_length_emits_an_example_without_trained_tokens(overlong):
    record = real_sft("fastchat-4-turns")
    full, _ = sft(QWEN, record["messages"])
    for max_length in range(1, len(full) + 1):
        try:
            ids, labels = sft(QWEN, record["messages"], max_length=max_length, overlong=overlong)
        except Rejected as e:  # the only rejection a cut may cause
            assert e.reason == Reason.labels_lost_to_truncation, e
            continue
        assert len(ids) <= max_length and (labels != IGNORE).any()
