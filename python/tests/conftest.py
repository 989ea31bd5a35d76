"""Shared fixtures: real gateway processes (memory, Redis, RabbitMQ buses),
unique Redis key prefixes and RabbitMQ exchanges, Django settings pointing
at a gateway, and WAMP clients that are closed after each test."""

from __future__ import annotations

import uuid

import pytest

from tests.support.gateway import AMQP_URL, API_KEY, REDIS_URL, SECRET, Gateway
from tests.support.wamp import Wamp


@pytest.fixture(scope="session")
def gateway():
    """A gateway on the embedded bus: tickets (HS256, SECRET), the API key,
    and anonymous sessions (for tests of the plain publisher)."""
    gw = Gateway("[auth]\nallow_anonymous = true\n")
    yield gw
    gw.stop()


def redis_config(prefix: str) -> str:
    return f'bus = "{REDIS_URL}"\n[auth]\nallow_anonymous = true\n[redis]\nkey_prefix = "{prefix}"\n'


def amqp_config(exchange: str) -> str:
    return f'bus = "{AMQP_URL}"\n[auth]\nallow_anonymous = true\n[amqp]\nexchange = "{exchange}"\n'


@pytest.fixture(scope="module")
def redis_prefix():
    return f"telegraphy-pytest-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def redis_gateway(redis_prefix):
    gw = Gateway(redis_config(redis_prefix))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def amqp_exchange():
    name = f"telegraphy-pytest-{uuid.uuid4().hex[:8]}"
    yield name
    delete_exchange(name)


def delete_exchange(name: str):
    import pika

    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        # Gateway nodes declare the control exchange beside it.
        for exchange in (name, f"{name}.control"):
            connection.channel().exchange_delete(exchange)
        connection.close()
    except Exception:
        pass


@pytest.fixture(scope="module")
def amqp_gateway(amqp_exchange):
    gw = Gateway(amqp_config(amqp_exchange))
    yield gw
    gw.stop()


@pytest.fixture
def wamp():
    """wamp(gateway_or_url, token=None) → a joined client, closed after the test."""
    clients = []

    def open_client(target, token=None, realm="realm1"):
        url = target if isinstance(target, str) else target.ws_url
        client = Wamp(url, token=token, realm=realm)
        clients.append(client)
        return client

    yield open_client
    for c in clients:
        c.close()


@pytest.fixture
def telegraphy_settings(settings, gateway):
    """settings.TELEGRAPHY for the memory-bus gateway (publishing over HTTP)."""
    settings.TELEGRAPHY = {
        "GATEWAY_URL": gateway.ws_url,
        "PUBLISH_URL": gateway.http_url,
        "API_KEY": API_KEY,
        "SECRET": SECRET,
        "TOPIC_PREFIX": "tests",
        "FAIL_SILENTLY": False,
    }
    return settings.TELEGRAPHY


CHROMIUM = __import__("os").environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    import os

    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM_BIN)")
    # Playwright's sync API runs an event loop in this thread; Django's ORM
    # calls in these tests are plain synchronous code all the same.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
