"""Fixtures for the AutobahnPython interop tests: one gateway process per test
module, and a `connect` factory whose sessions are closed after each test."""

import pytest

from helpers import Gateway, close_sessions, connect as _connect


@pytest.fixture(scope="module")
def gateway():
    gw = Gateway()
    yield gw
    gw.stop()


@pytest.fixture
async def connect(gateway):
    sessions = []

    async def open_session(serializer):
        session = await _connect(gateway, serializer)
        sessions.append(session)
        return session

    yield open_session
    await close_sessions(sessions)
