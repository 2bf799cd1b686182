"""The chat server RL tests talk to: one process per test session, its controls and counts reset per test."""

from __future__ import annotations

import pytest

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
