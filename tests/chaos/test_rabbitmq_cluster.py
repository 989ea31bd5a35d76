"""A RabbitMQ cluster of three nodes (our own, on free ports, one Erlang
cookie), gateways given every address (`amqp://…@host1:port1,host2:port2,…/…`):
one node of the cluster is killed with SIGKILL while events flow. The
gateways connected to it reconnect to another; the one connected to a
survivor never notices. Verdicts come from accounting (verdicts.py for live
topics; `judge_by_payload` for history topics, whose events carry the stream
position as their publication id): no acknowledged event lost for a
subscriber whose node was ready, nothing twice, order kept. The outage
figures are recorded, never asserted."""

from __future__ import annotations

import time

import pytest

from load import CliPublisher, HttpPublisher, fence, wait_until
from verdicts import cli_figures, http_figures, judge
from wampclient import Subscriber

HOST = "127.0.0.1"
SUBS_PER_NODE = 10


def rel(t, t_ref):
    return None if t is None or t_ref is None else round(t - t_ref, 3)


def payload_fence(gw, topic: str, subs: list, timeout: float = 60.0) -> bool:
    """A fence judged by payload: published through `gw` until acknowledged, then
    awaited as an event whose first argument is "fence" at every subscriber."""
    deadline = time.monotonic() + timeout
    while gw.publish(topic, args=["fence", 0])[0] != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return wait_until(lambda: all(any(e[0] == "fence" for e in s.events) for s in subs), max(0.0, deadline - time.monotonic()) + 1)


def judge_by_payload(subs_by_node, pollers, http_pubs, clis, t_kill) -> dict:
    """Every acknowledged event (stream, seq) reaches every subscriber of a node
    that was ready from before it was sent until after it was answered, once;
    per stream, in order. Events sent while the node was not ready may be
    missed, never duplicated. Events answered within IN_FLIGHT before the kill
    that a node on the killed broker had not received yet are counted apart
    (`missed_in_flight_at_kill`, reported), as long as they are the tail of
    what that subscriber got before the kill."""
    acked = [(r.stream, r.seq, r.t0, r.t1) for p in http_pubs for r in p.records if r.acked]
    acked += [(c.stream, seq, b.t0, b.t1) for c in clis for b in c.batches if b.status == 0 for seq in b.seqs]
    figures = {"acked_events": len(acked), "nodes": {}, "violations": []}
    for node, subs in subs_by_node.items():
        poller = pollers[node]
        must = [(st, sq, t1) for st, sq, t0, t1 in acked if poller.ready_throughout(t0, t1) and not t0 <= t_kill <= t1]
        nf = {"expected_per_subscriber": len(must), "missed": 0, "missed_in_flight_at_kill": 0, "duplicates": 0, "reorderings": 0}
        for sub in subs:
            got = [(e[0], e[1]) for e in sub.events if e[0] != "fence"]
            have = set(got)
            missing = [(st, sq, t1) for st, sq, t1 in must if (st, sq) not in have]
            in_flight = [(st, sq) for st, sq, t1 in missing if t_kill - IN_FLIGHT <= t1 <= t_kill
                         and not any(st2 == st and sq2 > sq and t1b < t_kill for st2, sq2, t1b in must if (st2, sq2) in have)]
            lost = [(st, sq) for st, sq, _ in missing if (st, sq) not in in_flight]
            dups = len(got) - len(have)
            seqs = {stream: [sq for st, sq in got if st == stream] for stream in ("http", "cli")}
            reorder = sum(1 for xs in seqs.values() for a, b in zip(xs, xs[1:]) if b < a)
            nf["missed"] += len(lost)
            nf["missed_in_flight_at_kill"] += len(in_flight)
            nf["duplicates"] += dups
            nf["reorderings"] += reorder
            if lost or dups or reorder:
                figures["violations"].append(f"{sub.name} on {node}: {len(lost)} acknowledged events missing "
                                             f"(e.g. {sorted(lost)[:5]}), {dups} duplicates, {reorder} reorderings")
        figures["nodes"][node] = nf
    return figures


#: How long before the kill an acknowledged event may still be on its way to
#: a node reading from the killed broker.
IN_FLIGHT = 1.0


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
def test_a_rabbitmq_cluster_node_killed_under_load(history, uid, rabbit_factory, gateway_factory, reactor, poller_factory, bg,
                                                   record):
    # Three brokers: streams (history) and quorum queues need a majority of
    # their replicas to elect a new leader, which two nodes minus one lack.
    first = rabbit_factory()
    second = rabbit_factory(cookie=first.cookie)
    third = rabbit_factory(cookie=first.cookie)
    second.join(first)
    third.join(first)
    members = first.ctl("cluster_status", "--formatter", "json").stdout
    assert second.name in members and third.name in members, members
    ports = (first.port, second.port, third.port)
    urls = {
        "first-then-second": "amqp://guest:guest@" + ",".join(f"{HOST}:{p}" for p in ports) + "/%2f",
        "second-then-first": "amqp://guest:guest@" + ",".join(f"{HOST}:{p}" for p in (ports[1], ports[0], ports[2])) + "/%2f",
    }
    names = {"exchange": f"chaos-{uid}"}
    if history:
        # The history stream is replicated on both brokers: it outlives the one killed.
        names["env"] = {"TELEGRAPHY_HISTORY__TOPICS": "chaos.*"}
    # A and C start on the first node (the one killed), B on the second.
    nodes = {
        "A": gateway_factory("A", urls["first-then-second"], **names),
        "B": gateway_factory("B", urls["second-then-first"], **names),
        "C": gateway_factory("C", urls["first-then-second"], **names),
    }
    topic = f"chaos.{uid}.cluster"
    subs = {n: [Subscriber(f"{n}{i}", HOST, g.port, topic) for i in range(SUBS_PER_NODE)] for n, g in nodes.items()}
    reactor.start([s for ss in subs.values() for s in ss])
    pollers = {n: poller_factory(g) for n, g in nodes.items()}

    http = HttpPublisher(nodes["B"], topic, "http", rate=150)
    cli = CliPublisher(urls["first-then-second"], topic, "cli", batch=10, pause=0.05, exchange=names["exchange"])
    bg.extend([http, cli])
    http.start()
    cli.start()
    assert wait_until(lambda: len(http.acked()) >= 200 and len(cli.acked_ids()) >= 20, 60), \
        f"publishing did not start: http {http_figures(http)}, cli {cli_figures(cli)}"

    t_kill = first.kill9()
    back = wait_until(lambda: all(p.samples and p.samples[-1][2] == 200 for p in pollers.values()) and
                      all(p.first_ready_after(t_kill) for n, p in pollers.items() if n != "B"), 120, 0.05)
    n_after, c_after = len(http.records), len(cli.acked_ids())
    wait_until(lambda: len(http.records) >= n_after + 200 and len(cli.acked_ids()) >= c_after + 20, 60)
    t_end = time.monotonic()
    http.stop()
    cli.stop()
    everyone = [s for ss in subs.values() for s in ss]
    if history:
        # History topics' events reach subscribers with the stream position as
        # their publication id (not the id the publish was answered with), so
        # they are judged by their payload (stream, seq).
        fenced = payload_fence(nodes["B"], topic, everyone)
        fig = judge_by_payload(subs, pollers, [http], [cli], t_kill)
    else:
        fenced = fence(nodes["B"], topic, everyone, timeout=60)
        fig = judge(subs, pollers, [(http, "B")], [cli], kills=[t_kill])
    hf = http_figures(http, pollers["B"])
    timings = {
        "kill_to_not_ready_s": {n: rel(p.first_not_ready_after(t_kill), t_kill) for n, p in pollers.items()},
        "kill_to_ready_on_the_other_node_s": {n: rel(p.first_ready_after(t_kill), t_kill) for n, p in pollers.items() if n != "B"},
    }
    metrics = {n: g.metrics() for n, g in nodes.items()}
    record(bus="amqp cluster of 3", history=history, http=hf, cli=cli_figures(cli), delivery=fig, timings=timings, fenced=fenced, all_ready_again=back,
           reconnects={n: m.get("telegraphy_bus_reconnects_total") for n, m in metrics.items()},
           subscribers_closed=[s.name for ss in subs.values() for s in ss if s.done.is_set()])

    assert back, "the gateways on the killed node did not turn ready on the other one"
    assert all((metrics[n].get("telegraphy_bus_reconnects_total") or 0) >= 1 for n in ("A", "C")), "A and C did not reconnect"
    assert pollers["B"].ready_throughout(t_kill, t_end), "B, on the surviving node, turned not ready"
    assert hf["refused_other"] == 0, f"refusals other than 503 bus_unavailable: {hf['refused_other_examples']}"
    assert hf["no_answer"] == 0, f"HTTP publishes without an answer: {hf['no_answer_examples']}"
    assert not [s.name for ss in subs.values() for s in ss if s.done.is_set()], "subscribers were disconnected by a broker node's loss"
    assert fig["violations"] == [], fig["violations"][:10]
    assert fenced, "the fence event did not reach every subscriber"
