"""The accounting itself, on made-up timelines (no processes): a suite whose
judge could not see a loss would prove nothing."""

from __future__ import annotations

from types import SimpleNamespace

from gateway import ReadyPoller
from load import CliBatch, Pub
from verdicts import http_figures, judge


def poller(timeline):
    """timeline: [(t, status)], one 10 ms sample at each t."""
    p = ReadyPoller(SimpleNamespace(name="fake", admin_port=0))
    p.samples = [(t, t + 0.01, st) for t, st in timeline]
    return p


def sub(name, events):
    return SimpleNamespace(name=name, events=events, pubids={e[2] for e in events})


def http(records):
    return SimpleNamespace(records=records, stream="http")


def pub(seq, t0, status=200):
    return Pub("http", seq, t0, t0 + 0.005, status, None if status == 200 else "bus_unavailable",
               1000 + seq if status == 200 else None, None if status == 200 else {"error": "bus_unavailable", "message": "m"})


READY = [(t / 10, 200) for t in range(0, 100)]


def test_clean_run_has_no_violation():
    recs = [pub(i, 1.0 + i * 0.1) for i in range(10)]
    s = sub("A0", [("http", i, 1000 + i) for i in range(10)])
    fig = judge({"A": [s]}, {"A": poller(READY)}, [(http(recs), "A")], [])
    assert fig["violations"] == [] and fig["nodes"]["A"]["acked_then_lost"] == 0


def test_loss_after_restart_is_caught_but_tail_at_kill_is_allowed():
    # Kill at t=3.0. Before: seqs 0-9, of which 8 and 9 (the tail in flight) are lost.
    # After the restart (t>=5): seq 20-29 acked, 20 and 21 lost although 22+ arrived
    # (acknowledged before the subscriptions were back): the original finding.
    recs = [pub(i, 2.0 + i * 0.1) for i in range(10)] + [pub(i, 5.0 + i * 0.1) for i in range(20, 30)]
    got = [("http", i, 1000 + i) for i in range(8)] + [("http", i, 1000 + i) for i in range(22, 30)]
    fig = judge({"A": [sub("A0", got)]}, {"A": poller(READY)}, [(http(recs), "A")], [], kills=[3.0])
    n = fig["nodes"]["A"]
    assert n["lost_in_flight_at_kill"] == 2
    assert n["acked_then_lost"] == 2
    assert len(fig["violations"]) == 1 and "('http', 20)" in fig["violations"][0]


def test_loss_before_the_kill_that_is_not_a_tail_is_caught():
    recs = [pub(i, 2.0 + i * 0.1) for i in range(10)]
    got = [("http", i, 1000 + i) for i in range(10) if i != 4]
    fig = judge({"A": [sub("A0", got)]}, {"A": poller(READY)}, [(http(recs), "A")], [], kills=[3.5])
    assert fig["nodes"]["A"]["acked_then_lost"] == 1 and fig["violations"]


def test_other_node_not_ready_may_miss_cli_events_but_not_when_ready():
    timeline_b = [(t / 10, 503 if 30 <= t < 50 else 200) for t in range(0, 100)]
    cli = SimpleNamespace(stream="cli", batches=[
        CliBatch(3.2, 3.4, 0, [0, 1], [500, 501]),    # node B not ready: may be missed
        CliBatch(6.0, 6.2, 0, [2, 3], [502, 503]),    # node B ready: must arrive
    ])
    got = [("cli", 3, 503)]
    fig = judge({"B": [sub("B0", got)]}, {"B": poller(timeline_b)}, [], [cli])
    n = fig["nodes"]["B"]
    assert n["missed_while_not_ready"] == 2
    assert n["acked_then_lost"] == 1  # seq 2
    assert fig["violations"]


def test_duplicates_and_reordering_are_violations():
    recs = [pub(i, 1.0 + i * 0.1) for i in range(3)]
    s1 = sub("A0", [("http", 0, 1000), ("http", 1, 1001), ("http", 1, 1001), ("http", 2, 1002)])
    s2 = sub("A1", [("http", 0, 1000), ("http", 2, 1002), ("http", 1, 1001)])
    fig = judge({"A": [s1, s2]}, {"A": poller(READY)}, [(http(recs), "A")], [])
    assert fig["nodes"]["A"]["duplicates"] == 1 and fig["nodes"]["A"]["reorderings"] == 1
    assert len(fig["violations"]) == 2


def test_acked_while_not_ready_and_refusal_shape():
    timeline = [(t / 10, 503 if 30 <= t < 50 else 200) for t in range(0, 100)]
    # seq 1: sent and answered inside the 503 stretch; seq 4: sent while ready,
    # answered after the node turned not ready (in flight at the outage): allowed.
    recs = [pub(0, 1.0), pub(1, 4.0), pub(2, 4.2, status=503), pub(3, 6.0),
            Pub("http", 4, 2.95, 3.25, 200, None, 1004, None)]
    p = http(recs)
    fig = http_figures(p, poller(timeline))
    assert fig["acked_while_not_ready"] == 1
    assert fig["refused_503_bus_unavailable"] == 1 and fig["refused_other"] == 0
    recs.append(Pub("http", 4, 7.0, 7.1, 500, "internal", None, {"error": "internal"}))
    assert http_figures(p)["refused_other"] == 1
