"""TLS to the bus: a private Redis (TLS only, client certificates required, an
ACL user limited to Telegraphy's prefix) and a private RabbitMQ (an AMQPS
listener requiring client certificates), with a CA made here by openssl.
Gateways (`rediss://`, `amqps://` with `[bus_tls]`) and the CLI publish and
deliver through them; a wrong CA, a name the certificate does not carry, a
missing client certificate and a wrong password are each refused with an
error that says so.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import procs
from gateway import publish_bin
from pki import broker_pki
from wampclient import events_within, session

PATH_ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
def certs(workdir):
    return broker_pki(workdir / "pki")


def tls_env(certs, ca_key: str = "ca", client: bool = True) -> dict[str, str]:
    env = {"TELEGRAPHY_BUS_TLS__CA_FILE": str(certs[ca_key])}
    if client:
        env.update(TELEGRAPHY_BUS_TLS__CERT_FILE=str(certs["client_cert"]), TELEGRAPHY_BUS_TLS__KEY_FILE=str(certs["client_key"]))
    return env


def cli(bus: str, topic: str, n: int, certs, *, ca_key: str = "ca", client: bool = True, extra: list[str] | None = None):
    args = [publish_bin(), "--bus", bus, "--bus-ca-file", str(certs[ca_key]), "--timeout", "5s"]
    if client:
        args += ["--bus-cert-file", str(certs["client_cert"]), "--bus-key-file", str(certs["client_key"])]
    return procs.run([*args, *(extra or []), topic, f"[{n}]"], env=PATH_ENV, timeout=60)


def wait_log(gw, needle: str, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = gw.log.read_text(errors="replace")
        if needle.lower() in text.lower():
            return text
        time.sleep(0.2)
    raise AssertionError(f"`{needle}` not in {gw.log}:\n{gw.log.read_text(errors='replace')[-3000:]}")


def deliver_through(gateways, publish) -> list[list[int]]:
    """Subscribes one session per gateway, runs `publish()` and returns what each got."""
    async def scenario():
        # SUBSCRIBED comes once the node's subscription is in force at the broker.
        subs = [await session(g.port, "127.0.0.1", "tls.topic") for g in gateways]
        await asyncio.get_running_loop().run_in_executor(None, publish)
        got = await asyncio.gather(*(events_within(ws, 3.0) for ws in subs))
        for ws in subs:
            ws.abort()
        return got
    return asyncio.run(scenario())


def tls_refusals(certs, url: str, by_ip: str, extra: list[str], wrong_ca_gateway) -> dict:
    """The CLI with a CA that did not sign the broker's certificate, and with
    a host (127.0.0.1) the certificate does not name, is refused naming the
    certificate; a node with that CA stays not ready and says why. Returns
    the messages, for the record."""
    figures = {}
    for what, bus, ca in (("wrong_ca_cli", url, "other_ca"), ("wrong_name_cli", by_ip, "ca")):
        r = cli(bus, "tls.topic", 2, certs, ca_key=ca, extra=extra)
        assert r.returncode != 0 and "certificate" in r.stderr.lower(), r.stderr
        figures[what] = r.stderr.strip().splitlines()[-1][:200]
    bad = wrong_ca_gateway(tls_env(certs, "other_ca"))
    figures["wrong_ca_gateway"] = _line(wait_log(bad, "certificate"), "certificate")
    assert bad.readyz()[0] == 503
    return figures


def test_redis_over_tls_with_client_certificates_and_an_acl_user(redis_factory, gateway_factory, certs, uid, record):
    prefix = f"tls{uid}:"
    redis = redis_factory(tls=certs, users=[
        "default off",
        f"telegraphy on >s3cret-pass ~{prefix}* &{prefix}* +@all -@dangerous",
    ])
    good = redis.url(user="telegraphy:s3cret-pass")
    nodes = [gateway_factory(n, good, prefix=prefix, env=tls_env(certs)) for n in ("a", "b")]
    got = deliver_through(nodes, lambda: _ok(cli(good, "tls.topic", 1, certs, extra=["--redis-key-prefix", prefix])))
    assert got == [[1], [1]], got
    figures = {"delivered_per_node": [len(g) for g in got]}

    figures.update(tls_refusals(certs, good, redis.url(user="telegraphy:s3cret-pass", host="127.0.0.1"), ["--redis-key-prefix", prefix],
                                lambda env: gateway_factory("wrong-ca", good, prefix=prefix, env=env, start_ready=False)))
    # No client certificate: the server ends the handshake.
    r = cli(good, "tls.topic", 4, certs, client=False, extra=["--redis-key-prefix", prefix])
    assert r.returncode != 0, r.stderr
    # A wrong password for the ACL user.
    r = cli(redis.url(user="telegraphy:wrong-pass"), "tls.topic", 5, certs, extra=["--redis-key-prefix", prefix])
    assert r.returncode != 0 and ("password" in r.stderr.lower() or "auth" in r.stderr.lower()), r.stderr
    figures["wrong_password_cli"] = r.stderr.strip().splitlines()[-1][:200]
    record(**figures)


def test_redis_cluster_over_tls(workdir, gateway_factory, certs, uid, record):
    """rediss+cluster://: a 3-primary Redis Cluster speaking only TLS (between
    its nodes too), client certificates required, nodes announced by the name
    in their certificate. Two gateways and the CLI on it; a wrong CA and a
    name the certificate lacks are refused as on one server."""
    from brokers import RedisCluster
    cluster = RedisCluster(workdir, primaries=3, replicas=0, tls=certs)
    try:
        cluster.start()
        prefix = f"tlsc{uid}:"
        good = cluster.url()
        nodes = [gateway_factory(n, good, prefix=prefix, env=tls_env(certs)) for n in ("a", "b")]
        got = deliver_through(nodes, lambda: _ok(cli(good, "tls.topic", 1, certs, extra=["--redis-key-prefix", prefix])))
        assert got == [[1], [1]], got
        figures = {"delivered_per_node": [len(g) for g in got]}
        figures.update(tls_refusals(certs, good, cluster.url(host="127.0.0.1"), ["--redis-key-prefix", prefix],
                                    lambda env: gateway_factory("wrong-ca", good, prefix=prefix, env=env, start_ready=False)))
        record(**figures)
    finally:
        cluster.stop()


def test_rabbitmq_over_tls_with_client_certificates(rabbit_factory, gateway_factory, certs, uid, record):
    rabbit = rabbit_factory(tls=certs)
    url = rabbit.tls_url()
    exchange = f"tls-{uid}"
    nodes = [gateway_factory(n, url, exchange=exchange, env=tls_env(certs)) for n in ("a", "b")]
    got = deliver_through(nodes, lambda: _ok(cli(url, "tls.topic", 1, certs, extra=["--amqp-exchange", exchange])))
    assert got == [[1], [1]], got
    figures = {"delivered_per_node": [len(g) for g in got]}
    figures.update(tls_refusals(certs, url, rabbit.tls_url(host="127.0.0.1"), ["--amqp-exchange", exchange],
                                lambda env: gateway_factory("wrong-ca", url, exchange=exchange, env=env, start_ready=False)))
    record(**figures)


def _ok(r):
    assert r.returncode == 0, r.stderr
    return r


def _line(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line.lower())[:300]
