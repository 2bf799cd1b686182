"""The chat server RL tests talk to: one process per test session, its controls and counts reset per test."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.conftest import FIXTURES, run_build, write_recipe
from tests.rl.chat_server import ChatServer


@pytest.fixture(scope="session")
def chat_server_process():
    server = ChatServer()
    yield server
    server.stop()


@pytest.fixture
def chat_server(chat_server_process: ChatServer) -> ChatServer:
    """The session's chat server with no faults queued, token ids on, no delay and its counts at zero."""
    chat_server_process.control(faults=[], token_ids=True, delay_s=0.0, reset_stats=True)
    return chat_server_process


@pytest.fixture
def gsm8k_rl_export(tmp_path) -> list[dict]:
    """The RL export (verl's layout, as TRL and verl load it) of real GSM8K rows, built into tmp_path/lake."""
    source = {
        "name": "gsm8k",
        "path": str(FIXTURES / "real" / "gsm8k_test_sample.jsonl"),
        "format": "gsm8k",
        "license": "mit",
        "origin": "human",
    }
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": ["parquet"]}
    run_build(write_recipe(tmp_path, [source], gold=gold))
    return pq.read_table(tmp_path / "lake/exports/rl/train.parquet").to_pylist()
