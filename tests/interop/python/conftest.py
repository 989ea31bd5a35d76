"""Fixtures for the AutobahnPython interop tests: one gateway process per test
module, and a `connect` factory whose sessions are closed after each test."""

import asyncio

import pytest

from helpers import Gateway, connect as _connect


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
    for s in sessions:
        if s.is_attached():
            s.leave()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.disconnected for s in sessions)), 5)
    except asyncio.TimeoutError:  # gateway did not close after GOODBYE: drop the sockets
        for s in sessions:
            if s._transport:
                s.disconnect()
