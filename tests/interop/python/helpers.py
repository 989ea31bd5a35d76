"""Shared helpers for the AutobahnPython interop tests: start/stop the Telegraphy
gateway, open asyncio WAMP sessions with a given serializer, collect events with
timeouts, and publish over the gateway's HTTP API (urllib only)."""

import asyncio
import json
import os
import signal
import socket
import pathlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp import message
from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import ComponentConfig, PublishOptions, SubscribeOptions

REPO_ROOT = Path(__file__).resolve().parents[3]
GATEWAY_BIN = os.environ.get("TELEGRAPHY_GATEWAY_BIN") or str(
    REPO_ROOT / "target" / "debug" / "telegraphy-gateway"
)
API_KEY = "test-key"
REALM = "realm1"
WAIT = 3.0
SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgPackSerializer}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(url, method="GET", body=None, headers=None):
    """Returns (status, parsed JSON body or raw text)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as res:
            status, raw = res.status, res.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Gateway:
    """The gateway process, started on two free loopback ports."""

    def __init__(self):
        if not os.path.exists(GATEWAY_BIN):
            raise RuntimeError(f"gateway binary not found: {GATEWAY_BIN}")
        self.port, self.admin_port = free_port(), free_port()
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [GATEWAY_BIN, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", "--api-keys", API_KEY,
             "--config", str(pathlib.Path(__file__).resolve().parent.parent / "gateway.toml")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited during startup ({self.proc.returncode}):\n{self.output()}")
            try:
                if http_request(f"http://127.0.0.1:{self.admin_port}/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway not ready within 10 s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-8000:]

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("gateway did not exit within 10 s of SIGTERM (killed)")
        return self.proc.returncode


class Client(ApplicationSession):
    """A session exposing join / leave / disconnect as futures."""

    def __init__(self, config):
        super().__init__(config)
        loop = asyncio.get_running_loop()
        self.joined, self.left, self.disconnected = (loop.create_future() for _ in range(3))

    def onJoin(self, details):
        self.joined.set_result(details)

    def onLeave(self, details):
        if not self.left.done():
            self.left.set_result(details)
        if not self.joined.done():
            self.joined.set_exception(RuntimeError(f"session aborted: {details}"))
        return super().onLeave(details)

    def onDisconnect(self):
        if not self.disconnected.done():
            self.disconnected.set_result(True)
        if not self.joined.done():
            self.joined.set_exception(RuntimeError("transport closed before WELCOME"))
        return super().onDisconnect()

    @property
    def protocol(self):
        return self._transport.websocket_protocol_in_use


async def connect(gateway: Gateway, serializer: str) -> Client:
    """Opens a WebSocket with one WAMP serializer and joins realm1."""
    session = Client(ComponentConfig(realm=REALM))
    factory = WampWebSocketClientFactory(
        lambda: session, url=gateway.ws_url, serializers=[SERIALIZERS[serializer]()]
    )
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", gateway.port)
    session.welcome = await asyncio.wait_for(session.joined, WAIT)  # SessionDetails
    return session


@dataclass
class Event:
    tag: str
    args: list
    kwargs: dict
    details: object


class Inbox:
    def __init__(self):
        self.queue = asyncio.Queue()

    async def next(self, timeout=WAIT) -> Event:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def listen(session, topic, match=None, inbox=None, tag=None):
    """Subscribes; events land in the inbox. Returns (subscription, inbox)."""
    inbox = inbox or Inbox()

    def on_event(*args, details=None, **kwargs):
        inbox.queue.put_nowait(Event(tag or topic, list(args), kwargs, details))

    sub = await session.subscribe(on_event, topic, options=SubscribeOptions(match=match, details=True))
    return sub, inbox


async def publish_acked(session, topic, *args, options=None, **kwargs) -> int:
    """Publishes with acknowledge=True; returns the publication id."""
    opts = dict(options or {}, acknowledge=True)
    pub = await asyncio.wait_for(session.publish(topic, *args, options=PublishOptions(**opts), **kwargs), WAIT)
    return pub.id


class _DisclosingPublish(message.Publish):
    """PUBLISH with options.disclose_me = true (AutobahnPython has no such option)."""

    def marshal_options(self):
        return dict(super().marshal_options(), disclose_me=True)


def publish_disclosed(session, topic, *args, **kwargs):
    """Sends an unacknowledged PUBLISH carrying disclose_me: true."""
    request = session._request_id_gen.next()
    session._transport.send(_DisclosingPublish(request, topic, args=list(args), kwargs=kwargs))


async def http_publish(gateway, payload, key=API_KEY):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return await asyncio.to_thread(http_request, f"{gateway.http_url}/publish", "POST", body, headers)
