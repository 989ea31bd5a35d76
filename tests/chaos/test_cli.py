"""Scenarios 7 and 8: the CLI's --stdin batch (confirms pipelined) and the
"require a subscriber" publish option, on each bus."""

from __future__ import annotations

import json
import time

import pytest

import procs
from gateway import base_env, publish_bin
from load import cli_cmd, run_cli_stdin, wait_until
from wampclient import Subscriber

HOST = "127.0.0.1"


def bus_for(kind, uid, redis_factory, shared_rabbit):
    if kind == "redis":
        r = redis_factory()
        return r.url(), {"prefix": f"chaos-{uid}:"}
    return shared_rabbit.url(), {"exchange": f"chaos-{uid}"}


@pytest.mark.parametrize("kind", ["amqp", "redis"])
def test_cli_stdin_batch(kind, uid, request, redis_factory, gateway_factory, reactor, record):
    shared_rabbit = request.getfixturevalue("shared_rabbit") if kind == "amqp" else None
    bus, names = bus_for(kind, uid, redis_factory, shared_rabbit)
    A = gateway_factory("A", bus, **names)
    B = gateway_factory("B", bus, **names)
    topic = f"chaos.{uid}.batch"
    subs = reactor.start([Subscriber("A0", HOST, A.port, topic), Subscriber("B0", HOST, B.port, topic)])
    n = 3000
    lines = [json.dumps({"topic": topic, "args": ["cli", i], "kwargs": {"n": i}}) for i in range(n)]
    status, out, err, t0, t1 = run_cli_stdin(bus, lines, timeout=240, **names)
    ids = [int(x) for x in out if x.isdigit()]
    got_all = wait_until(lambda: all(len(s.events) >= n for s in subs), 60)
    per_sub = {}
    for s in subs:
        seqs = s.streams("cli")
        per_sub[s.name] = {"received": len(seqs), "in_order_complete": seqs == list(range(n)),
                           "ids_match_printed": s.pubids == set(ids)}
    window = "--window" in procs.run([publish_bin(), "--help"], env=base_env(), timeout=30).stdout
    record(bus=kind, lines=n, exit_status=status, ids_printed=len(ids), unique_ids=len(set(ids)),
           non_id_output=[x for x in out if not x.isdigit()][:5], seconds=round(t1 - t0, 3),
           events_per_second=round(n / (t1 - t0), 1) if t1 > t0 else None, subscribers=per_sub,
           cli_has_window_flag=window, stderr=err[-300:])

    assert status == 0, f"exit status {status}: {err[-500:]}"
    assert len(out) == n and len(ids) == n, f"{len(ids)} ids printed for {n} lines"
    assert len(set(ids)) == n, "a publication id was printed twice"
    assert got_all
    for name, f in per_sub.items():
        assert f["in_order_complete"], f"{name} did not get every event in order"
        assert f["ids_match_printed"], f"{name}: the publication ids received differ from the ids printed"


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_require_subscriber(kind, uid, request, redis_factory, gateway_factory, reactor, record):
    shared_rabbit = request.getfixturevalue("shared_rabbit") if kind == "amqp" else None
    bus, names = bus_for(kind, uid, redis_factory, shared_rabbit)
    A = gateway_factory("A", bus, **names)
    B = gateway_factory("B", bus, **names)
    topic = f"chaos.{uid}.required"

    def cli(*args):
        r = procs.run(cli_cmd(bus, extra=[*args, topic, '["cli"]'], **names), env=base_env(), timeout=60)
        return r.returncode, r.stdout.strip(), r.stderr.strip()

    figures: dict = {}
    # Nobody subscribed anywhere.
    figures["cli_no_subscriber"] = cli("--require-subscriber")
    figures["http_no_subscriber"] = A.publish(topic, args=["http"], require_subscriber=True)
    figures["http_no_subscriber_without_option"] = A.publish(topic, args=["plain"])
    # A subscriber on node B only: node A's HTTP publish and the CLI must see it.
    sub = reactor.start([Subscriber("B0", HOST, B.port, topic)])[0]
    figures["http_with_subscriber_on_other_node"] = A.publish(topic, args=["http", 1], require_subscriber=True)
    figures["cli_with_subscriber"] = cli("--require-subscriber")
    want = {p for p in (figures["http_with_subscriber_on_other_node"][1].get("id"),) if p}
    if figures["cli_with_subscriber"][0] == 0 and figures["cli_with_subscriber"][1].isdigit():
        want.add(int(figures["cli_with_subscriber"][1]))
    delivered = wait_until(lambda: want <= sub.pubids, 30)
    # The subscriber leaves: refused again once its node dropped the interest.
    reactor.close_one(sub)
    t_left = time.monotonic()
    refused_again = wait_until(lambda: A.publish(topic, args=["http", 2], require_subscriber=True)[0] == 409, 30, 0.1)
    figures["seconds_until_refused_after_unsubscribe"] = round(time.monotonic() - t_left, 3) if refused_again else None
    figures["delivered_to_subscriber"] = delivered
    record(bus=kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in figures.items()})

    code, out, err = figures["cli_no_subscriber"]
    assert code == 6, f"CLI --require-subscriber with no subscriber: exit {code} (want 6): {err[-300:]}"
    status, body = figures["http_no_subscriber"]
    assert status == 409 and body.get("error") == "no_subscriber" and "message" in body, (status, body)
    assert figures["http_no_subscriber_without_option"][0] == 200, "without the option an unrouted event is accepted"
    status, body = figures["http_with_subscriber_on_other_node"]
    assert status == 200 and "id" in body, (status, body)
    code, out, err = figures["cli_with_subscriber"]
    assert code == 0 and out.isdigit(), f"CLI --require-subscriber with a subscriber: exit {code}: {err[-300:]}"
    assert delivered, "the accepted events did not reach the subscriber"
    assert refused_again, "still accepted with require_subscriber after the last subscriber left"
