"""Shared helpers for the AutobahnPython interop tests: start/stop the Telegraphy
gateway (with the shared interop config or a config of the test's own), open
asyncio WAMP sessions with a given serializer (anonymous, or with ticket auth),
collect events with timeouts, and publish over the gateway's HTTP API (urllib only)."""

import asyncio
import json
import os
import random
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
from autobahn.wamp.exception import ApplicationError
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


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the kernel's
    ephemeral range: a port from bind(0) is an ephemeral one, which any outgoing
    connection may take before the server we start binds it."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randint(max(1024, low // 2), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port
    raise RuntimeError("no free TCP port below the ephemeral range")


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


INTEROP_CONFIG = Path(__file__).resolve().parent.parent / "gateway.toml"


class Gateway:
    """The gateway process, started on two free loopback ports.

    By default it reads the shared interop config (anonymous sessions with every
    right). `config` (TOML text) replaces it with a temporary file of the test's
    own; `env` adds environment variables (e.g. TELEGRAPHY_JWT_SECRET); `args`
    adds command-line flags."""

    def __init__(self, config=None, env=None, args=(), api_key=API_KEY):
        if not os.path.exists(GATEWAY_BIN):
            raise RuntimeError(f"gateway binary not found: {GATEWAY_BIN}")
        self.api_key = api_key
        self.config_file = None
        if config is None:
            config_path = str(INTEROP_CONFIG)
        else:
            self.config_file = tempfile.NamedTemporaryFile("w", prefix="telegraphy-", suffix=".toml", delete=False)
            self.config_file.write(config)
            self.config_file.close()
            config_path = self.config_file.name
        # A port found free can be taken by another process before the gateway
        # binds it (parallel runs): then start again on other ports.
        for attempt in range(3):
            if self._start(config_path, env, args):
                return
        self._remove_config()
        raise RuntimeError(f"gateway could not bind free ports in 3 attempts:\n{self.output()}")

    def _start(self, config_path, env, args) -> bool:
        """Starts the process; False when a port was taken meanwhile."""
        self.port, self.admin_port = free_port(), free_port()
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [GATEWAY_BIN, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", "--api-keys", self.api_key,
             "--config", config_path, *args],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                if "Address already in use" in self.output():
                    return False
                self._remove_config()
                raise RuntimeError(f"gateway exited during startup ({self.proc.returncode}):\n{self.output()}")
            try:
                # Still running after a ready answer: the answer was ours.
                if http_request(f"http://127.0.0.1:{self.admin_port}/readyz")[0] == 200 and self.proc.poll() is None:
                    return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway not ready within 10 s:\n{self.output()}")
            time.sleep(0.1)

    def _remove_config(self):
        if self.config_file is not None:
            try:
                os.unlink(self.config_file.name)
            except FileNotFoundError:
                pass

    def metric(self, name: str) -> float:
        """The value of one Prometheus sample (`name{labels}` exactly), 0 when absent."""
        status, text = http_request(f"http://127.0.0.1:{self.admin_port}/metrics")
        assert status == 200, (status, text)
        for line in str(text).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-8000:]

    def stop(self):
        """SIGTERM, then SIGKILL after 10 s; returns the exit code."""
        self._remove_config()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("gateway did not exit within 10 s of SIGTERM (killed)")
        return self.proc.returncode


class Refused(RuntimeError):
    """The router ended the session before WELCOME: ABORT reason and message,
    and the WebSocket close code the router sent (None when it sent none)."""

    def __init__(self, reason, message):
        super().__init__(f"session aborted: {reason}: {message}")
        self.reason, self.message, self.close_code = reason, message, None


class Client(ApplicationSession):
    """A session exposing join / leave / disconnect as futures.

    With `authmethods` set it joins offering those methods (and `authid`), and
    answers a ticket CHALLENGE with `ticket`.

    AutobahnPython closes the WebSocket itself as soon as it gets an ABORT or
    the router's GOODBYE; with `router_closes` it waits for the router to close
    instead, so that `close_code` is the code the router chose."""

    def __init__(self, config, authmethods=None, authid=None, ticket=None, router_closes=False):
        super().__init__(config)
        loop = asyncio.get_running_loop()
        self.joined, self.left, self.disconnected = (loop.create_future() for _ in range(3))
        self.hello_authmethods, self.hello_authid, self.ticket = authmethods, authid, ticket
        self.router_closes = router_closes
        self.challenges = []
        self.ws = None

    def onConnect(self):
        self.ws = self._transport  # kept for the close code after disconnect
        if self.hello_authmethods is None and self.hello_authid is None:
            return super().onConnect()
        self.join(self.config.realm, authmethods=self.hello_authmethods, authid=self.hello_authid)

    def onChallenge(self, challenge):
        self.challenges.append(challenge)
        if challenge.method != "ticket" or self.ticket is None:
            raise RuntimeError(f"unexpected CHALLENGE {challenge.method}")
        return self.ticket

    def onJoin(self, details):
        self.joined.set_result(details)

    def onLeave(self, details):
        if not self.left.done():
            self.left.set_result(details)
        if not self.joined.done():
            self.joined.set_exception(Refused(details.reason, details.message))
        if self.router_closes and details.reason != "wamp.close.goodbye_and_out":
            # What ApplicationSession.onLeave does, less closing the transport.
            return self._errback_outstanding_requests(ApplicationError(details.reason, details.message))
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

    @property
    def close_code(self):
        """The close code the router sent, once the WebSocket is closed."""
        return self.ws.remoteCloseCode if self.ws is not None else None


async def connect(gateway: Gateway, serializer: str, authmethods=None, authid=None, ticket=None,
                  router_closes=False) -> Client:
    """Opens a WebSocket with one WAMP serializer and joins realm1 (anonymously,
    or offering `authmethods`). Raises Refused (with the close code) on ABORT."""
    session = Client(ComponentConfig(realm=REALM), authmethods=authmethods, authid=authid, ticket=ticket,
                     router_closes=router_closes)
    factory = WampWebSocketClientFactory(
        lambda: session, url=gateway.ws_url, serializers=[SERIALIZERS[serializer]()]
    )
    await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", gateway.port)
    try:
        session.welcome = await asyncio.wait_for(session.joined, WAIT)  # SessionDetails
    except Refused as refused:
        await asyncio.wait_for(session.disconnected, WAIT)
        refused.close_code = session.close_code
        raise
    return session


async def join_ticket(gateway: Gateway, serializer: str, ticket, authid=None, router_closes=True) -> Client:
    """Joins with ticket auth: HELLO authmethods ["ticket"], AUTHENTICATE with `ticket`."""
    return await connect(gateway, serializer, authmethods=["ticket"], authid=authid, ticket=ticket,
                         router_closes=router_closes)


async def close_sessions(sessions):
    """Leaves every attached session and waits (bounded) for the sockets to close."""
    for s in sessions:
        if s.is_attached():
            s.leave()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.disconnected for s in sessions)), 5)
    except asyncio.TimeoutError:  # gateway did not close after GOODBYE: drop the sockets
        for s in sessions:
            if s._transport:
                s.disconnect()


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


_GATEWAY_KEY = object()


async def http_publish(gateway, payload, key=_GATEWAY_KEY):
    """POST /publish with the gateway's API key (or `key`; None sends no header)."""
    if key is _GATEWAY_KEY:
        key = gateway.api_key
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return await asyncio.to_thread(http_request, f"{gateway.http_url}/publish", "POST", body, headers)
