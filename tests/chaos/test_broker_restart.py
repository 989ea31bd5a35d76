"""Scenarios 1 and 2: the broker is killed with SIGKILL and restarted while
events flow. Verdicts come from accounting (see verdicts.py); the timings
are reported, never asserted."""

from __future__ import annotations

import time

import pytest

import procs
from brokers import start_in_thread
from load import CliPublisher, HttpPublisher, fence, wait_until
from verdicts import cli_figures, http_figures, judge
from wampclient import Subscriber

HOST = "127.0.0.1"
SUBS_PER_NODE = 20


def start_broker(kind, uid, redis_factory, rabbit_factory):
    if kind == "redis":
        b = redis_factory()
        names = {"prefix": f"chaos-{uid}:"}
    else:
        b = rabbit_factory()
        names = {"exchange": f"chaos-{uid}"}
    return b, b.url(), names


def restart(kind, broker) -> dict:
    """Starts the killed broker again (same port; RabbitMQ: same node name and data).
    Returns monotonic times: spawned, accepting TCP, and (RabbitMQ) booted."""
    t_spawn = time.monotonic()
    th, out = start_in_thread(procs.wait_tcp, HOST, broker.port, 120)
    t_booted = None
    if kind == "redis":
        broker.start()
    else:
        broker.spawn()
        t_booted = broker.await_startup()
    th.join(130)
    return {"t_spawn": t_spawn, "t_tcp": out.get("result"), "t_booted": t_booted}


def all_ready(pollers) -> bool:
    return all(p.samples and p.samples[-1][2] == 200 for p in pollers)


def rel(t, t_ref):
    return None if t is None or t_ref is None else round(t - t_ref, 3)


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_broker_kill9_and_restart(kind, uid, redis_factory, rabbit_factory, gateway_factory, reactor, poller_factory, bg,
                                  record):
    broker, bus, names = start_broker(kind, uid, redis_factory, rabbit_factory)
    A = gateway_factory("A", bus, **names)
    B = gateway_factory("B", bus, **names)
    topic = f"chaos.{uid}.events"
    subs = {
        "A": [Subscriber(f"A{i}", HOST, A.port, topic) for i in range(SUBS_PER_NODE)],
        "B": [Subscriber(f"B{i}", HOST, B.port, topic) for i in range(SUBS_PER_NODE)],
    }
    reactor.start(subs["A"] + subs["B"])
    pollers = {"A": poller_factory(A), "B": poller_factory(B)}

    http = HttpPublisher(A, topic, "http", rate=150)
    cli = CliPublisher(bus, topic, "cli", batch=10, pause=0.05, **names)
    bg.extend([http, cli])
    http.start()
    cli.start()
    assert wait_until(lambda: len(http.acked()) >= 200 and len(cli.acked_ids()) >= 20, 60), \
        f"publishing did not start: http {http_figures(http)}, cli {cli_figures(cli)}"

    t_kill = broker.kill9()  # the time SIGKILL was sent: events sent before it may be in flight
    time.sleep(1.5)  # the outage
    times = restart(kind, broker)
    back = wait_until(lambda: all_ready(pollers.values()), 120, 0.05)
    # Keep publishing a while after both nodes are ready, then stop and fence.
    n_after = len(http.records)
    wait_until(lambda: len(http.records) >= n_after + 200, 60)
    http.stop()
    cli.stop()
    fenced = fence(A, topic, subs["A"] + subs["B"], timeout=60)

    fig = judge(subs, pollers, [(http, "A")], [cli], kills=[t_kill])
    hf = http_figures(http, pollers["A"])
    t_tcp = times["t_tcp"]
    ready = {n: p.first_ready_after(t_kill) for n, p in pollers.items()}
    timings = {
        "outage_kill_to_tcp_accepting_s": rel(t_tcp, t_kill),
        "kill_to_node_not_ready_s": {n: rel(p.first_not_ready_after(t_kill), t_kill) for n, p in pollers.items()},
        "tcp_accepting_to_ready_s": {n: rel(t, t_tcp) for n, t in ready.items()},
    }
    if kind == "amqp":
        timings["rabbitmq_spawn_to_booted_s"] = rel(times["t_booted"], times["t_spawn"])
        timings["await_startup_done_to_ready_s"] = {n: rel(t, times["t_booted"]) for n, t in ready.items()}
    metrics = {n: g.metrics() for n, g in (("A", A), ("B", B))}
    record(bus=kind, http=hf, cli=cli_figures(cli), delivery=fig, timings=timings, fenced=fenced, both_ready_again=back,
           reconnects={n: m.get("telegraphy_bus_reconnects_total") for n, m in metrics.items()},
           subscribers_closed=[s.name for ss in subs.values() for s in ss if s.done.is_set()])

    assert back, "the nodes did not turn ready again after the broker came back"
    assert all((m.get("telegraphy_bus_reconnects_total") or 0) >= 1 for m in metrics.values()), "a reconnect was not counted"
    assert hf["refused_503_bus_unavailable"] > 0, "no publish was refused: the outage was not observed"
    assert hf["refused_other"] == 0, f"refusals other than 503 bus_unavailable: {hf['refused_other_examples']}"
    assert hf["no_answer"] == 0, f"HTTP publishes without an answer: {hf['no_answer_examples']}"
    assert hf["acked_while_not_ready"] == 0, "node A acknowledged publishes while its /readyz said 503"
    assert not [s.name for ss in subs.values() for s in ss if s.done.is_set()], "subscribers were disconnected by a broker outage"
    assert fig["violations"] == [], fig["violations"][:10]
    assert fenced, "the fence event did not reach every subscriber"


@pytest.mark.parametrize("kind,cycles", [("redis", 3), ("amqp", 1)])
def test_single_node_restart_many_subscriptions(kind, cycles, uid, redis_factory, rabbit_factory, gateway_factory, reactor,
                                                poller_factory, bg, record):
    """The original finding: with hundreds of subscriptions to restore, a node
    must not acknowledge publishes before the numbered-event topic is routed again."""
    broker, bus, names = start_broker(kind, uid, redis_factory, rabbit_factory)
    A = gateway_factory("A", bus, **names)
    topic = f"chaos.{uid}.events"
    bulk = Subscriber("bulk", HOST, A.port, [f"chaos.{uid}.bulk.t{i}" for i in range(300)])
    subs = [Subscriber(f"S{i}", HOST, A.port, topic) for i in range(5)]
    reactor.start([bulk] + subs)
    m0 = A.metrics()
    poller = poller_factory(A)
    http = HttpPublisher(A, topic, "http", rate=None)  # as fast as one connection goes
    bg.append(http)
    http.start()
    assert wait_until(lambda: len(http.acked()) >= 200, 60)

    kills, cycle_timings = [], []
    for _ in range(cycles):
        t_kill = broker.kill9()
        kills.append(t_kill)
        time.sleep(1.0)
        times = restart(kind, broker)
        back = wait_until(lambda: all_ready([poller]), 120, 0.05)
        t_ready = poller.first_ready_after(t_kill)
        cycle_timings.append({"tcp_accepting_to_ready_s": rel(t_ready, times["t_tcp"]),
                              "await_startup_done_to_ready_s": rel(t_ready, times["t_booted"]), "ready_again": back})
        n = len(http.records)
        wait_until(lambda: len(http.records) >= n + 300, 60)
    http.stop()
    fenced = fence(A, topic, subs, timeout=60)
    fig = judge({"A": subs}, {"A": poller}, [(http, "A")], [], kills=kills)
    hf = http_figures(http, poller)
    record(bus=kind, cycles=cycles, topics_on_node=m0.get("telegraphy_topics"),
           bus_interests=m0.get("telegraphy_bus_interests"), http=hf, delivery=fig, timings=cycle_timings, fenced=fenced)

    assert all(c["ready_again"] for c in cycle_timings)
    assert hf["refused_other"] == 0 and hf["no_answer"] == 0, hf
    assert hf["acked_while_not_ready"] == 0, "the node acknowledged publishes while its /readyz said 503"
    assert fig["violations"] == [], fig["violations"][:10]
    assert fenced
