"""Scenarios 3 and 4: one of two gateway nodes dies (SIGKILL) or drains
(SIGTERM) while events flow; the other node's subscribers lose nothing."""

from __future__ import annotations

import time

import pytest

from load import CliPublisher, HttpPublisher, fence, wait_until
from verdicts import cli_figures, http_figures, judge
from wampclient import Subscriber

HOST = "127.0.0.1"
SUBS_PER_NODE = 20


def setup_two_nodes(uid, redis_factory, gateway_factory, reactor, poller_factory, bg):
    redis = redis_factory()
    names = {"prefix": f"chaos-{uid}:"}
    A = gateway_factory("A", redis.url(), **names)
    B = gateway_factory("B", redis.url(), **names)
    topic = f"chaos.{uid}.events"
    subs = {
        "A": [Subscriber(f"A{i}", HOST, A.port, topic) for i in range(SUBS_PER_NODE)],
        "B": [Subscriber(f"B{i}", HOST, B.port, topic) for i in range(SUBS_PER_NODE)],
    }
    reactor.start(subs["A"] + subs["B"])
    pollers = {"A": poller_factory(A), "B": poller_factory(B)}
    http = HttpPublisher(A, topic, "http", rate=150)
    cli = CliPublisher(redis.url(), topic, "cli", batch=10, pause=0.05, **names)
    bg.extend([http, cli])
    http.start()
    cli.start()
    assert wait_until(lambda: len(http.acked()) >= 200 and len(cli.acked_ids()) >= 20, 60), \
        f"publishing did not start: http {http_figures(http)}, cli {cli_figures(cli)}"
    return A, B, topic, subs, pollers, http, cli


def finish(A, topic, subs, pollers, http, cli):
    n = len(http.records)
    wait_until(lambda: len(http.records) >= n + 300, 60)
    http.stop()
    cli.stop()
    fenced = fence(A, topic, subs["A"], timeout=60)
    fig = judge(subs, pollers, [(http, "A")], [cli], judged_nodes=["A"])
    return fenced, fig


def test_node_sigkill(uid, redis_factory, gateway_factory, reactor, poller_factory, bg, record):
    A, B, topic, subs, pollers, http, cli = setup_two_nodes(uid, redis_factory, gateway_factory, reactor, poller_factory, bg)
    t_kill = time.monotonic()
    B.sigkill()
    all_b_ended = wait_until(lambda: all(s.done.is_set() for s in subs["B"]), 30)
    fenced, fig = finish(A, topic, subs, pollers, http, cli)
    hf = http_figures(http, pollers["A"])
    a_not_ready = pollers["A"].count(503)
    record(http=hf, cli=cli_figures(cli), delivery=fig, fenced=fenced,
           node_b_subscribers_close_codes=sorted({str(s.seen_code) for s in subs["B"]}),
           node_b_received_per_subscriber=[len(s.events) for s in subs["B"]][:5],
           node_a_readyz_not_ready_samples=a_not_ready, node_a_readyz_unanswered_samples=pollers["A"].count(None),
           kill_to_all_b_subscribers_ended_s=round(time.monotonic() - t_kill, 3) if all_b_ended else None)

    assert fig["violations"] == [], fig["violations"][:10]
    assert fig["nodes"]["A"]["acked_then_lost"] == 0
    assert fenced, "the fence did not reach node A's subscribers"
    assert hf["refused_other"] == 0 and hf["no_answer"] == 0 and hf["refused_503_bus_unavailable"] == 0, hf
    assert a_not_ready == 0, "node A turned not ready when node B died"
    assert all_b_ended and all(s.seen_code == 1006 for s in subs["B"]), "node B's subscribers should see the connection drop"
    assert not any(s.done.is_set() for s in subs["A"]), "node A's subscribers were disconnected"


def test_node_sigterm_drain(uid, redis_factory, gateway_factory, reactor, poller_factory, bg, record):
    A, B, topic, subs, pollers, http, cli = setup_two_nodes(uid, redis_factory, gateway_factory, reactor, poller_factory, bg)
    t_term = time.monotonic()
    B.sigterm()
    rc = B.wait_exit(timeout=60)
    t_exit = time.monotonic()
    all_b_ended = wait_until(lambda: all(s.done.is_set() for s in subs["B"]), 30)
    fenced, fig = finish(A, topic, subs, pollers, http, cli)
    hf = http_figures(http, pollers["A"])
    codes = {}
    for s in subs["B"]:
        codes[str(s.seen_code)] = codes.get(str(s.seen_code), 0) + 1
    # Events node A acknowledged before the SIGTERM that node B's subscribers did not get (reported only).
    acked_before = [r for r in http.acked() if r.t1 < t_term]
    b_missed_before_term = sum(1 for s in subs["B"] for r in acked_before if r.pubid not in s.pubids)
    record(http=hf, cli=cli_figures(cli), delivery=fig, fenced=fenced, node_b_exit_status=rc,
           sigterm_to_exit_s=round(t_exit - t_term, 3) if rc is not None else None,
           node_b_close_codes=codes, node_b_goodbye_reasons=sorted({str(s.goodbye) for s in subs["B"]}),
           node_b_close_reasons=sorted({str(s.close_reason) for s in subs["B"]}),
           node_b_missed_events_acked_before_sigterm=b_missed_before_term,
           node_b_readyz_saw_503_draining=pollers["B"].count(503) > 0)

    assert rc is not None, "node B did not exit by itself after SIGTERM"
    assert rc == 0, f"node B exited with {rc} after a drain"
    assert all_b_ended
    assert codes == {"1012": SUBS_PER_NODE}, f"node B's subscribers should get close code 1012, got {codes}"
    assert fig["violations"] == [], fig["violations"][:10]
    assert fig["nodes"]["A"]["acked_then_lost"] == 0
    assert fenced
    assert hf["refused_other"] == 0 and hf["no_answer"] == 0 and hf["refused_503_bus_unavailable"] == 0, hf
    assert not any(s.done.is_set() for s in subs["A"]), "node A's subscribers were disconnected"
