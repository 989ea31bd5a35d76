"""Redis Cluster and Redis Sentinel, our own instances on free ports.

* A 3-primary Redis Cluster (one replica each): topics spread over every
  shard reach every subscriber, exact and by prefix, once, whether published
  through any node's HTTP endpoint or by the CLI on the cluster URL; then the
  primary of a topic's shard is killed under load and its replica takes over.
* A primary, a replica and three Sentinels: the primary is killed under load
  and the Sentinels promote the replica.

Verdicts come from accounting (verdicts.py): no acknowledged event lost for a
subscriber whose node was ready, nothing twice, order kept. The outage
figures are recorded, never asserted."""

from __future__ import annotations

import time

import pytest

from brokers import RedisCluster, RedisSentinels, redis_cli
from load import CliPublisher, HttpPublisher, fence, run_cli_stdin, wait_until
from test_history import HISTORY
from test_rabbitmq_cluster import payload_fence
from verdicts import cli_figures, http_figures, judge
from wampclient import Subscriber

HOST = "127.0.0.1"
SUBS_PER_NODE = 6
#: Redis replicates asynchronously: what a primary acknowledged in its last
#: moments may never reach the replica that replaces it.
REPLICATION_WINDOW = 1.0


def judge_history(subs: list, http_pubs: list, clis: list, t_kill: float) -> dict:
    """History topics: subscribers connected throughout get every acknowledged
    event (the node fills what it missed while not ready from the store),
    once, in order per stream, judged by payload (stream, seq). An event that
    reached no subscriber at all and was answered within REPLICATION_WINDOW
    before the kill is counted apart: the killed primary took it and died
    before its replica had it (Redis replicates asynchronously)."""
    acked = [(r.stream, r.seq, r.t1) for p in http_pubs for r in p.records if r.acked]
    acked += [(c.stream, seq, b.t1) for c in clis for b in c.batches if b.status == 0 for seq in b.seqs]
    got = {s.name: [(e[0], e[1]) for e in s.events if e[0] != "fence"] for s in subs}
    have = {name: set(g) for name, g in got.items()}
    fig = {"acked_events": len(acked), "lost_by_replication": 0, "missed": 0, "duplicates": 0, "reorderings": 0,
           "violations": []}
    for st, sq, t1 in acked:
        holders = [name for name, h in have.items() if (st, sq) in h]
        if len(holders) == len(subs):
            continue
        if not holders and t_kill - REPLICATION_WINDOW <= t1 <= t_kill:
            fig["lost_by_replication"] += 1
            continue
        fig["missed"] += 1
        if len(fig["violations"]) < 10:
            fig["violations"].append(f"({st}, {sq}) answered {t1 - t_kill:+.3f}s from the kill reached {len(holders)}/{len(subs)}")
    for name, g in got.items():
        dups = len(g) - len(set(g))
        seqs = {stream: [sq for st, sq in g if st == stream] for stream in ("http", "cli")}
        reorder = sum(1 for xs in seqs.values() for a, b in zip(xs, xs[1:]) if b < a)
        fig["duplicates"] += dups
        fig["reorderings"] += reorder
        if dups or reorder:
            fig["violations"].append(f"{name}: {dups} duplicates, {reorder} reorderings")
    return fig


def rel(t, t_ref):
    return None if t is None or t_ref is None else round(t - t_ref, 3)


@pytest.fixture
def redis_cluster(workdir):
    c = RedisCluster(workdir, primaries=3, replicas=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def sentinels(workdir):
    s = RedisSentinels(workdir, name="telegraphy", count=3)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_topics_on_every_shard_reach_every_subscriber_once(uid, redis_cluster, gateway_factory, reactor):
    prefix = f"tg{uid}:"
    # Topics until every shard holds at least two of them.
    topics, shards = [], {}
    i = 0
    while len(topics) < 12 or min(shards.values(), default=0) < 2 or len(shards) < 3:
        t = f"chaos.{uid}.t{i}"
        port = redis_cluster.primary_for(f"{prefix}{{realm1:{t}}}").port
        shards[port] = shards.get(port, 0) + 1
        topics.append(t)
        i += 1
    nodes = {n: gateway_factory(n, redis_cluster.url(), prefix=prefix) for n in "ABC"}
    exact = {n: Subscriber(f"{n}-exact", HOST, g.port, topics) for n, g in nodes.items()}
    by_prefix = {n: Subscriber(f"{n}-prefix", HOST, g.port, f"chaos.{uid}.", match="prefix") for n, g in nodes.items()}
    wildcard = {n: Subscriber(f"{n}-wildcard", HOST, g.port, f"chaos..t3", match="wildcard") for n, g in nodes.items()}
    reactor.start([*exact.values(), *by_prefix.values(), *wildcard.values()])

    acked: dict[str, set] = {t: set() for t in topics}
    order = list(nodes.values())
    for k in range(5):
        for j, t in enumerate(topics):
            gw = order[(j + k) % 3]
            status, data = gw.publish(t, args=[t, k])
            assert status == 200, (status, data)
            acked[t].add((t, k))
    lines = [f'{{"topic": "{t}", "args": ["{t}", {k}]}}' for k in range(5, 8) for t in topics]
    status, out, err, _, _ = run_cli_stdin(redis_cluster.url(), lines, prefix=prefix)
    assert status == 0, err
    for k in range(5, 8):
        for t in topics:
            acked[t].add((t, k))
    every = set().union(*acked.values())
    assert wait_until(lambda: all(len(s.events) >= len(every) for s in [*exact.values(), *by_prefix.values()]), 30), \
        {s.name: len(s.events) for s in [*exact.values(), *by_prefix.values()]}
    time.sleep(0.5)  # anything extra (a copy) would arrive now
    for s in [*exact.values(), *by_prefix.values()]:
        got = [(e[0], e[1]) for e in s.events]
        assert sorted(got) == sorted(every), f"{s.name}: {len(got)} events, {len(set(got))} distinct, {len(every)} expected"
        for t in topics:
            seqs = [k for st, k in got if st == t]
            assert seqs == sorted(seqs), f"{s.name}: {t} out of order: {seqs}"
    # A wildcard pattern: only its topic (t3), from every node.
    for s in wildcard.values():
        assert sorted((e[0], e[1]) for e in s.events) == sorted(acked[f"chaos.{uid}.t3"]), s.name
    # Patterns go through classic pub/sub: every node's entry in the registry names both.
    port = redis_cluster.nodes[0].port
    registry = redis_cli(port, "-c", "hgetall", f"{prefix}patterns")
    assert redis_cli(port, "-c", "hlen", f"{prefix}patterns") == "3", registry
    assert registry.count(f"prefix\tchaos.{uid}.") == 3 and registry.count("wildcard\tchaos..t3") == 3, registry


@pytest.mark.parametrize("history", [False, True], ids=["live", "history"])
@pytest.mark.parametrize("bus", ["cluster", "sentinel"])
def test_redis_primary_killed_under_load(bus, history, uid, request, gateway_factory, reactor, poller_factory, bg, record):
    engine = request.getfixturevalue("redis_cluster" if bus == "cluster" else "sentinels")
    prefix = f"tg{uid}:"
    topic = f"chaos.{uid}.failover"
    url = engine.url()
    env = {**HISTORY, "TELEGRAPHY_HISTORY__TOPICS": f"chaos.{uid}.*"} if history else {}
    nodes = {n: gateway_factory(n, url, prefix=prefix, env=env) for n in "ABC"}
    subs = {n: [Subscriber(f"{n}{i}", HOST, g.port, topic) for i in range(SUBS_PER_NODE)] for n, g in nodes.items()}
    # One prefix subscriber per node: patterns go through classic pub/sub on a cluster.
    pattern_subs = {n: [Subscriber(f"{n}-prefix", HOST, g.port, f"chaos.{uid}.", match="prefix")] for n, g in nodes.items()}
    reactor.start([s for ss in [*subs.values(), *pattern_subs.values()] for s in ss])
    pollers = {n: poller_factory(g) for n, g in nodes.items()}

    http = HttpPublisher(nodes["B"], topic, "http", rate=150)
    cli = CliPublisher(url, topic, "cli", prefix=prefix, batch=10, pause=0.05)
    bg.extend([http, cli])
    http.start()
    cli.start()
    assert wait_until(lambda: len(http.acked()) >= 200 and len(cli.acked_ids()) >= 20, 60), \
        f"publishing did not start: http {http_figures(http)}, cli {cli_figures(cli)}"

    if bus == "cluster":
        victim = engine.primary_for(f"{prefix}{{realm1:{topic}}}")
        slot = engine.slot(f"{prefix}{{realm1:{topic}}}")
    else:
        victim = engine.primary
    t_kill = victim.kill9()

    def promoted() -> bool:
        if bus == "cluster":
            ranges = sorted(engine.slot_primaries().items())
            owner = [p for first, p in ranges if first <= slot]
            return bool(owner) and owner[-1] != victim.port
        return engine.current_primary_port() not in (None, victim.port)

    assert wait_until(promoted, 60, 0.05), "no replica took over"
    t_promoted = time.monotonic()
    back = wait_until(lambda: all(p.first_ready_after(t_kill) for p in pollers.values()) and
                      all(p.samples and p.samples[-1][2] == 200 for p in pollers.values()), 120, 0.05)
    n_after, c_after = len(http.records), len(cli.acked_ids())
    wait_until(lambda: len(http.records) >= n_after + 200 and len(cli.acked_ids()) >= c_after + 20, 60)
    t_end = time.monotonic()
    http.stop()
    cli.stop()
    everyone = [s for ss in [*subs.values(), *pattern_subs.values()] for s in ss]
    if history:
        # Positions are publication ids on history topics: judged by payload.
        fenced = payload_fence(nodes["B"], topic, everyone)
        fig = judge_history([s for ss in subs.values() for s in ss], [http], [cli], t_kill)
        fig_patterns = judge_history([s for ss in pattern_subs.values() for s in ss], [http], [cli], t_kill)
    else:
        fenced = fence(nodes["B"], topic, everyone, timeout=60)
        fig = judge(subs, pollers, [(http, "B")], [cli], kills=[t_kill])
        fig_patterns = judge(pattern_subs, pollers, [(http, "B")], [cli], kills=[t_kill])
    hf = http_figures(http, pollers["B"])
    timings = {
        "kill_to_promoted_s": rel(t_promoted, t_kill),
        "kill_to_not_ready_s": {n: rel(p.first_not_ready_after(t_kill), t_kill) for n, p in pollers.items()},
        "kill_to_ready_again_s": {n: rel(p.first_ready_after(t_kill), t_kill) for n, p in pollers.items()},
    }
    metrics = {n: g.metrics() for n, g in nodes.items()}
    record(bus=f"redis {bus}", history=history, http=hf, cli=cli_figures(cli), delivery=fig, by_prefix=fig_patterns, timings=timings,
           fenced=fenced, all_ready_again=back,
           reconnects={n: m.get("telegraphy_bus_reconnects_total") for n, m in metrics.items()},
           subscribers_closed=[s.name for s in everyone if s.done.is_set()])

    assert back, "the gateways did not turn ready again after the failover"
    assert all((m.get("telegraphy_bus_reconnects_total") or 0) >= 1 for m in metrics.values()), "a node did not reconnect"
    assert hf["refused_other"] == 0, f"refusals other than 503 bus_unavailable: {hf['refused_other_examples']}"
    assert hf["no_answer"] == 0, f"HTTP publishes without an answer: {hf['no_answer_examples']}"
    assert not [s.name for s in everyone if s.done.is_set()], "subscribers were disconnected by the failover"
    assert fig["violations"] == [], fig["violations"][:10]
    assert fig_patterns["violations"] == [], fig_patterns["violations"][:10]
    assert fenced, "the fence event did not reach every subscriber"


def test_a_store_that_went_back_does_not_swallow_new_events(uid, redis_factory, gateway_factory, reactor, record):
    """What a failover to a lagging replica does to a history topic, on one
    Redis of our own: the topic's log is put back (RESTORE of a DUMP taken
    three events earlier) and the node's connections are cut. The next events
    get offsets the node already delivered; they must reach the subscriber
    (the node counts from the store's end again), not be dropped as copies."""
    r = redis_factory()
    prefix = f"tg{uid}:"
    topic = f"chaos.{uid}.back"
    gw = gateway_factory("A", r.url(), prefix=prefix, env={**HISTORY, "TELEGRAPHY_HISTORY__TOPICS": f"chaos.{uid}.*"})
    sub = Subscriber("S", HOST, gw.port, topic)
    reactor.start([sub])
    keys = [f"{prefix}h:realm1:{topic}", f"{prefix}hm:realm1:{topic}"]

    def send(stream: str, n: int) -> list[int]:
        ids = []
        for k in range(n):
            status, data = gw.publish(topic, args=[stream, k])
            assert status == 200, (status, data)
            ids.append(data["id"])
        return ids

    send("before", 3)
    dumps = {}
    for key in keys:
        out = procs_run(["redis-cli", "-p", str(r.port), "--no-raw", "dump", key])
        dumps[key] = out
    send("lost", 3)
    assert wait_until(lambda: len(sub.streams("lost")) == 3, 10), sub.events
    for key in keys:
        restore(r.port, key, dumps[key])
    assert redis_cli(r.port, "hget", keys[1], "head") == "3"
    # Every connection of the node at once (two kills could cut the new ones).
    redis_cli(r.port, "client", "kill", "laddr", f"127.0.0.1:{r.port}")
    assert wait_until(lambda: gw.metrics().get("telegraphy_bus_reconnects_total") == 1.0 and gw.readyz()[0] == 200, 20)
    again = send("after", 3)
    got = wait_until(lambda: len(sub.streams("after")) == 3, 10)
    record(ids_after=again, received_after=sub.streams("after"), log_says_rewound="counting from the store's end again" in gw.log.read_text())
    assert got, f"events numbered again after the store went back were dropped: got {sub.streams('after')}"
    assert "counting from the store's end again" in gw.log.read_text()


def procs_run(cmd: list[str]) -> str:
    import procs
    from brokers import _clean_env
    return procs.run(cmd, env=_clean_env(), timeout=10).stdout.strip()


def restore(port: int, key: str, dump_literal: str) -> None:
    """RESTORE `key` from redis-cli's quoted DUMP output (REPLACE, no expiry)."""
    import ast
    import socket
    payload = ast.literal_eval(dump_literal).encode("latin-1") if dump_literal.startswith('"') else dump_literal.encode()
    parts = [b"RESTORE", key.encode(), b"0", payload, b"REPLACE"]
    msg = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(msg)
        answer = s.recv(256)
    assert answer.startswith(b"+OK"), answer


def migrate_slot(cluster: RedisCluster, slot: int, to_port: int) -> None:
    """Moves `slot` (and its keys) to the primary on `to_port`, the way
    `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, MIGRATE, NODE."""
    owner_port = [p for first, p in sorted(cluster.slot_primaries().items()) if first <= slot][-1]
    ids = {int(line.split()[1].split(":")[1].split("@")[0]): line.split()[0]
           for line in redis_cli(owner_port, "cluster", "nodes").splitlines()}
    src, dst = ids[owner_port], ids[to_port]
    assert redis_cli(to_port, "cluster", "setslot", str(slot), "importing", src) == "OK"
    assert redis_cli(owner_port, "cluster", "setslot", str(slot), "migrating", dst) == "OK"
    while True:
        keys = redis_cli(owner_port, "cluster", "getkeysinslot", str(slot), "100").split()
        if not keys:
            break
        out = redis_cli(owner_port, "migrate", "127.0.0.1", str(to_port), "", "0", "5000", "keys", *keys)
        assert out in ("OK", "NOKEY"), out
    for port in {n.port for n in cluster.alive()}:
        redis_cli(port, "cluster", "setslot", str(slot), "node", dst)


def test_a_slot_moved_to_another_primary_under_subscribers(uid, gateway_factory, reactor, workdir, record):
    """Resharding: the slot of a topic's shard channel (and of its history
    keys) moves to another primary while a node is subscribed. Redis ends
    the node's sharded subscription (sunsubscribe); the node subscribes again
    on the new primary; publishers follow MOVED. Events before and after
    reach the subscriber once, in order; the history log moved along."""
    cluster = RedisCluster(workdir, primaries=3, replicas=0)
    try:
        cluster.start()
        prefix = f"tg{uid}:"
        topic = f"chaos.{uid}.moving"
        env = {**HISTORY, "TELEGRAPHY_HISTORY__TOPICS": f"chaos.{uid}.*"}
        gw = gateway_factory("A", cluster.url(), prefix=prefix, env=env)
        sub = Subscriber("S", HOST, gw.port, topic)
        reactor.start([sub])
        key = f"{prefix}{{realm1:{topic}}}"
        for k in range(3):
            assert gw.publish(topic, args=["before", k])[0] == 200
        assert wait_until(lambda: len(sub.streams("before")) == 3, 10)
        slot = cluster.slot(key)
        old = cluster.primary_for(key).port
        new = next(n.port for n in cluster.nodes if n.port != old)
        t_move = time.monotonic()
        migrate_slot(cluster, slot, new)
        assert cluster.primary_for(key).port == new
        # Publishes succeed again once the node is subscribed on the new primary.
        k = 0
        deadline = time.monotonic() + 30
        while k < 3 and time.monotonic() < deadline:
            if gw.publish(topic, args=["after", k])[0] == 200:
                k += 1
            else:
                time.sleep(0.05)
        status, out, err, _, _ = run_cli_stdin(cluster.url(), [f'{{"topic": "{topic}", "args": ["cli", 0]}}'], prefix=prefix)
        assert status == 0, err
        got = wait_until(lambda: len(sub.streams("after")) == 3 and len(sub.streams("cli")) == 1, 15)
        log = gw.log.read_text()
        record(moved_slot=slot, from_port=old, to_port=new, seconds_to_first_publish_after=round(time.monotonic() - t_move, 3),
               received={s: sub.streams(s) for s in ("before", "after", "cli")},
               noticed="its slot moved" in log or "served by another primary" in log)
        assert got, {s: sub.streams(s) for s in ("before", "after", "cli")}
        assert sub.streams("before") == [0, 1, 2] and sub.streams("after") == [0, 1, 2]
        # History moved with the slot: the log continues (offsets 1..7, one epoch).
        pubs = [e[2] for e in sub.events]
        assert [p >> 16 for p in pubs] == list(range(1, len(pubs) + 1)) and len({p & 0xFFFF for p in pubs}) == 1, pubs
        assert "its slot moved" in log or "served by another primary" in log
    finally:
        cluster.stop()


def test_sentinels_and_primary_with_a_password(uid, workdir, gateway_factory, reactor, record):
    """Sentinels that require the primary's password (as the common Helm
    charts set them up): two gateways and the CLI on
    `redis+sentinel://:PASSWORD@...` deliver once each; a wrong password is
    refused naming the credentials."""
    sentinels = RedisSentinels(workdir, count=1, password="s3cret-pw")
    try:
        sentinels.start()
        prefix = f"tg{uid}:"
        topic = f"chaos.{uid}.auth"
        nodes = [gateway_factory(n, sentinels.url(), prefix=prefix) for n in "AB"]
        subs = [Subscriber(f"S{n}", HOST, g.port, topic) for n, g in zip("AB", nodes)]
        reactor.start(subs)
        status, out, err, _, _ = run_cli_stdin(sentinels.url(), [f'{{"topic": "{topic}", "args": ["cli", 0]}}'], prefix=prefix)
        assert status == 0, err
        assert wait_until(lambda: all(s.streams("cli") == [0] for s in subs), 10), [s.events for s in subs]
        wrong = sentinels.url().replace("s3cret-pw", "wrong")
        status, out, err, _, _ = run_cli_stdin(wrong, [f'{{"topic": "{topic}", "args": ["cli", 1]}}'], prefix=prefix)
        record(wrong_password=err.strip().splitlines()[-1][:200] if err.strip() else "")
        assert status != 0 and ("credentials" in err or "password" in err.lower()), err
    finally:
        sentinels.stop()
