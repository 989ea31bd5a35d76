"""Behind a real load balancer (HAProxy, Debian's package): two gateway nodes
behind HAProxy in HTTP mode (`option forwardfor`: X-Forwarded-For), two
behind HAProxy in TCP mode (`send-proxy-v2`: the PROXY protocol), all four on
one private Redis. The gateways trust 127.0.0.1 (HAProxy's side) and allow
one WebSocket per client address; the clients come from other loopback
addresses (127.0.0.2 ...). So:

* per-address limits count each client, not the balancer: five clients hold
  a WebSocket each on two nodes, and a client's second one is refused (429);
* a client that forges X-Forwarded-For through HAProxy, or straight to a
  node (an untrusted peer), changes nothing: its own address still counts;
* a trusted peer that does not open with a PROXY header is closed;
* an event published through HAProxy reaches every session exactly once.

HAProxy balances by source address, so that a client's connections land on
one node, as the per-node limit needs to show anything.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import time
from pathlib import Path

import procs
from gateway import API_KEY
from wampclient import AsyncWebSocket, ConnectionEnded, HandshakeError, events_within, session

HAPROXY_CONFIG = """\
global
    maxconn 2000
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend http_in
    mode http
    bind 127.0.0.1:{http_port}
    option forwardfor
    default_backend xff_nodes
backend xff_nodes
    mode http
    balance source
    server a 127.0.0.1:{a}
    server b 127.0.0.1:{b}
frontend tcp_in
    mode tcp
    bind 127.0.0.1:{tcp_port}
    default_backend proxy_protocol_nodes
backend proxy_protocol_nodes
    mode tcp
    balance source
    server c 127.0.0.1:{c} send-proxy-v2
    server d 127.0.0.1:{d} send-proxy-v2
"""


class HAProxy:
    """An haproxy process in the foreground (-db), stopped by PID."""

    def __init__(self, workdir: Path, **ports):
        self.http_port, self.tcp_port = procs.free_port(), procs.free_port()
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(HAPROXY_CONFIG.format(http_port=self.http_port, tcp_port=self.tcp_port, **ports))
        self.log = workdir / "haproxy.log"
        self.proc = None

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which("haproxy")
        assert binary, "haproxy is not installed (tests/chaos/run.sh installs Debian's package)"
        check = procs.run([binary, "-c", "-f", str(self.config)], env={"PATH": "/usr/sbin:/usr/bin:/bin"}, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = procs.spawn([binary, "-db", "-f", str(self.config)], env={"PATH": "/usr/sbin:/usr/bin:/bin"},
                                log_path=self.log, description="haproxy")
        deadline = time.monotonic() + timeout
        for port in (self.http_port, self.tcp_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"haproxy did not listen on {port}: {self.log.read_text()[-2000:]}")
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_tree(self.proc)
            self.proc = None


async def refused_with(port: int, client: str, headers: dict[str, str] | None = None) -> int | None:
    """The HTTP status a WebSocket upgrade from `client` is refused with
    (None: accepted, then closed by us; 0: closed without an answer)."""
    try:
        ws = await asyncio.wait_for(AsyncWebSocket.connect("127.0.0.1", port, local_addr=client, headers=headers), 10)
    except HandshakeError as e:
        return e.status
    except (asyncio.IncompleteReadError, ConnectionResetError, ConnectionEnded):
        return 0
    ws.abort()
    return None


def publish(port: int, topic: str, n: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/publish", body=json.dumps({"topic": topic, "args": [n]}),
              headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    c.close()


def test_clients_behind_haproxy_are_counted_by_their_own_address(redis_factory, gateway_factory, workdir, uid, record):
    redis = redis_factory()
    common = {"TELEGRAPHY_PROXIES__TRUSTED": "127.0.0.1", "TELEGRAPHY_LIMITS__MAX_CONNECTIONS_PER_IP": "1"}
    xff = [gateway_factory(n, redis.url(), prefix=f"lb{uid}:", env=common) for n in ("a", "b")]
    pp_env = dict(common, TELEGRAPHY_PROXIES__PROXY_PROTOCOL="true", TELEGRAPHY_PROXIES__HEADER="none")
    pp = [gateway_factory(n, redis.url(), prefix=f"lb{uid}:", env=pp_env) for n in ("c", "d")]
    lb = HAProxy(workdir, a=xff[0].port, b=xff[1].port, c=pp[0].port, d=pp[1].port)
    lb.start()
    topic = f"lb.{uid}"
    clients = [f"127.0.0.{i}" for i in range(2, 7)]
    try:
        async def scenario():
            figures = {}
            # X-Forwarded-For through HAProxy: one session per client address.
            held = [await session(lb.http_port, c, topic) for c in clients]
            per_node = [g.metrics().total("telegraphy_connections") for g in xff]
            figures["xff_sessions_per_node"] = per_node
            assert sum(per_node) == len(clients) and min(per_node) >= 1, per_node
            assert await refused_with(lb.http_port, clients[0]) == 429, "a client's second WebSocket is its own second"
            # A forged header through HAProxy: HAProxy appends the real address, which counts.
            assert await refused_with(lb.http_port, clients[1], {"X-Forwarded-For": "10.9.9.9"}) == 429
            # Straight to a node, from an untrusted peer, with a forged header: the peer counts.
            held.append(await session(xff[0].port, "127.0.0.8", topic, {"X-Forwarded-For": "10.1.1.1"}))
            assert await refused_with(xff[0].port, "127.0.0.8", {"X-Forwarded-For": "10.1.1.2"}) == 429

            # The PROXY protocol through HAProxy's TCP mode.
            proxied = [await session(lb.tcp_port, c, topic) for c in clients]
            per_node = [g.metrics().total("telegraphy_connections") for g in pp]
            figures["proxy_protocol_sessions_per_node"] = per_node
            assert sum(per_node) == len(clients) and min(per_node) >= 1, per_node
            assert await refused_with(lb.tcp_port, clients[0]) == 429
            # A trusted peer (127.0.0.1) that sends no PROXY header is closed without an answer.
            assert await refused_with(pp[0].port, "127.0.0.1") == 0
            assert pp[0].metrics().get("telegraphy_connections_refused_total", reason="proxy_protocol") == 1

            # One event through HAProxy reaches every session exactly once.
            await asyncio.get_running_loop().run_in_executor(None, publish, lb.http_port, topic, 7)
            everyone = held + proxied
            got = await asyncio.gather(*(events_within(ws, 3.0) for ws in everyone))
            figures["sessions"] = len(everyone)
            figures["events_per_session"] = sorted({len(g) for g in got})
            assert all(g == [7] for g in got), got
            refused = {g.name: g.metrics().total("telegraphy_connections_refused_total") for g in xff + pp}
            figures["refused_per_node"] = refused
            for ws in everyone:
                ws.abort()
            return figures

        record(**asyncio.run(scenario()))
    finally:
        lb.stop()
