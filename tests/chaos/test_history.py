"""Scenario 7: history topics under faults. A node dies (SIGKILL) or drains
(SIGTERM) and its subscribers resume on the other node with
`_after_publication`, as the telegraphy JS client does; or the broker is
killed with SIGKILL and restarted under connected subscribers. With history,
no acknowledged event may be missing: not even one in flight at the fault
(the store keeps it), and none may come twice.

Verdicts count events by their arguments `[stream, seq]` (on RabbitMQ the
publication id a publisher is answered differs from the one subscribers see
on a history topic: docs/bus.md)."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from load import CliPublisher, HttpPublisher, wait_until
from test_broker_restart import restart
from verdicts import cli_figures, http_figures
from wampclient import HELLO_DETAILS, AsyncWebSocket, Subscriber

HOST = "127.0.0.1"
SUBS = 5
HISTORY = {"TELEGRAPHY_HISTORY__SIZE": "100000", "TELEGRAPHY_HISTORY__MAX_REPLAY": "100000", "TELEGRAPHY_HISTORY__TTL": "5m"}


class ResumingSubscriber(Subscriber):
    """Subscribes on one node and records every EVENT; when that connection
    ends, subscribes on `fallback` with `_after_publication` = the last
    publication it got, and records on. `recovered` holds the `_recovered`
    answers."""

    def __init__(self, name: str, port: int, topic: str, fallback: int):
        super().__init__(name, HOST, port, topic)
        self.fallback = fallback
        self.last_pub: int | None = None
        self.recovered: list[bool] = []
        self.first_close: int | None = None
        self.resumed = threading.Event()
        self.resume_error: str | None = None

    def _handle(self, msg) -> None:
        if msg[0] == 36 and len(msg) > 3 and isinstance(msg[3], dict) and ("_recovered" in msg[3] or "_position" in msg[3]):
            if "_recovered" in msg[3]:
                self.recovered.append(msg[3]["_recovered"])
                self.resumed.set()
            return
        super()._handle(msg)
        if msg[0] == 36:
            self.last_pub = msg[2]

    async def run(self) -> None:
        await super().run()
        self.first_close = self.seen_code
        await asyncio.sleep(random.uniform(0.05, 0.3))  # a client's reconnect jitter
        try:
            ws = await AsyncWebSocket.connect(self.host, self.fallback)
            await ws.send_json([1, self.realm, HELLO_DETAILS])
            msg = await self._next(ws)
            if msg is None or msg[0] != 2:
                raise RuntimeError(f"expected WELCOME, got {msg!r}")
            await ws.send_json([32, 1, {"_after_publication": self.last_pub}, self.topics[0]])
            while True:
                msg = await self._next(ws)
                if msg is None:
                    break
                if msg[0] == 8:
                    raise RuntimeError(f"SUBSCRIBE refused: {msg!r}")
                if msg[0] != 33:
                    self._handle(msg)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # noqa: BLE001
            self.resume_error = f"{type(e).__name__}: {e}"
            self.resumed.set()


def start_bus(kind, uid, redis_factory, shared_rabbit, *, persistent=False):
    if kind == "redis":
        r = redis_factory(appendonly=persistent)
        return r, r.url(), {"prefix": f"chaos-{uid}:"}
    return shared_rabbit, shared_rabbit.url(), {"exchange": f"chaos-{uid}"}


def acknowledged(http: HttpPublisher | None, cli: CliPublisher) -> dict[str, list[int]]:
    """The sequence numbers each stream's publisher was told were taken. A CLI
    run that did not exit 0 may have published part of its lines: none of
    them is counted (they may or may not arrive)."""
    acked = {"cli": sorted(s for b in cli.batches if b.status == 0 for s in b.seqs)}
    if http is not None:
        acked["http"] = sorted(r.seq for r in http.acked())
    return acked


def verdict(sub: Subscriber, acked: dict[str, list[int]]) -> dict:
    fig = {}
    for stream, seqs in acked.items():
        got = sub.streams(stream)
        fig[stream] = {
            "acked": len(seqs),
            "missing": sorted(set(seqs) - set(got))[:10],
            "missing_count": len(set(seqs) - set(got)),
            "received": len(got),
            "received_range": [min(got), max(got)] if got else None,
            "duplicates": len(got) - len(set(got)),
            "out_of_order": sum(1 for a, b in zip(got, got[1:]) if b <= a),
        }
    return fig


def fence_by_args(gw, topic: str, subs: list[Subscriber], timeout: float = 60.0) -> bool:
    """Publishes `["fence", n]` through `gw` until taken and waits until every
    subscriber got it (matched by its arguments, not its publication id)."""
    deadline = time.monotonic() + timeout
    n = None
    i = 0
    while n is None and time.monotonic() < deadline:
        status, _ = gw.publish(topic, args=["fence", i])
        if status == 200:
            n = i
        else:
            i += 1
            time.sleep(0.1)
    if n is None:
        return False
    return wait_until(lambda: all(n in s.streams("fence") for s in subs), max(0.0, deadline - time.monotonic()) + 1)


@pytest.mark.parametrize("fault", ["sigkill", "drain"])
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_subscribers_of_a_lost_node_resume_on_the_other_without_a_gap(kind, fault, uid, redis_factory, shared_rabbit, gateway_factory,
                                                                     reactor, bg, record):
    _, bus, names = start_bus(kind, uid, redis_factory, shared_rabbit)
    topic = f"chaos.{uid}.events"
    env = {**HISTORY, "TELEGRAPHY_HISTORY__TOPICS": f"chaos.{uid}.*"}
    A = gateway_factory("A", bus, env=env, **names)
    B = gateway_factory("B", bus, env=env, **names)
    subs = [ResumingSubscriber(f"A{i}", A.port, topic, B.port) for i in range(SUBS)]
    reactor.start(subs)
    http = HttpPublisher(B, topic, "http", rate=150)
    cli = CliPublisher(bus, topic, "cli", batch=10, pause=0.05, **names)
    bg.extend([http, cli])
    http.start()
    cli.start()
    assert wait_until(lambda: len(http.acked()) >= 100 and len(cli.acked_ids()) >= 20, 60), \
        f"publishing did not start: http {http_figures(http)}, cli {cli_figures(cli)}"

    t_fault = time.monotonic()
    if fault == "sigkill":
        A.sigkill()
    else:
        A.sigterm()
    resumed = wait_until(lambda: all(s.resumed.is_set() for s in subs), 60)
    t_resumed = time.monotonic()
    n = len(http.records)
    wait_until(lambda: len(http.records) >= n + 150, 60)
    http.stop()
    cli.stop()
    fenced = fence_by_args(B, topic, subs)
    acked = acknowledged(http, cli)
    figs = {s.name: verdict(s, acked) for s in subs}
    record(bus=kind, fault=fault, http=http_figures(http), cli=cli_figures(cli), fenced=fenced,
           first_close_codes=sorted({str(s.first_close) for s in subs}), recovered=[s.recovered for s in subs],
           fault_to_all_resumed_s=round(t_resumed - t_fault, 3) if resumed else None,
           per_subscriber=figs[subs[0].name], resume_errors=[s.resume_error for s in subs if s.resume_error])

    assert resumed and not [s.resume_error for s in subs if s.resume_error], "every subscriber resumed on node B"
    assert all(s.first_close == (1006 if fault == "sigkill" else 1012) for s in subs), [s.first_close for s in subs]
    assert all(s.recovered == [True] for s in subs), f"every resume recovered: {[s.recovered for s in subs]}"
    assert fenced, "the fence did not reach the resumed subscribers"
    for name, fig in figs.items():
        for stream, f in fig.items():
            assert f["missing"] == [] and f["duplicates"] == 0 and f["out_of_order"] == 0, f"{name} {stream}: {f}"


def test_a_redis_kill9_loses_nothing_the_history_kept(uid, redis_factory, gateway_factory, reactor, bg, record):
    """Unlike live-only topics (test_broker_restart: the events in flight at the
    kill may be lost), a history topic's subscribers, connected throughout,
    get every event Redis acknowledged: its append-only file (fsync always)
    keeps the history, and the node fills the gap from it."""
    broker = redis_factory(appendonly=True)
    names = {"prefix": f"chaos-{uid}:"}
    A, subs, cli, t_kill, t_ready = kill9_under_history(broker, "redis", names, uid, gateway_factory, reactor, bg)
    fenced = fence_by_args(A, f"chaos.{uid}.events", subs)
    figs = {s.name: verdict(s, acknowledged(None, cli)) for s in subs}
    record(bus="redis", cli=cli_figures(cli), fenced=fenced, ready_again=t_ready is not None, per_subscriber=figs[subs[0].name],
           gap_fills=A.metrics().get("telegraphy_history_gap_fills_total"))

    assert t_ready is not None, "node A did not turn ready again"
    assert not [s.name for s in subs if s.done.is_set()], "subscribers were disconnected by a broker outage"
    assert any(b.status != 0 for b in cli.batches), "no CLI run failed: the outage was not observed"
    assert fenced
    for name, fig in figs.items():
        f = fig["cli"]
        assert f["missing"] == [] and f["duplicates"] == 0 and f["out_of_order"] == 0, f"{name}: {f}"


def test_a_rabbitmq_kill9_keeps_history_topics_live(uid, rabbit_factory, gateway_factory, reactor, bg, record):
    """RabbitMQ 3.10 does not always restart a stream after the broker was
    killed with SIGKILL ("home node ... of durable queue ... is down or
    inaccessible" for minutes), and meanwhile confirms events it cannot put
    in it. The node must not stay down with it: it turns ready again, takes
    history topics live on its own queue until the stream is back, and every
    event acknowledged before the kill or after the node is ready again
    arrives, once, in order. Whether the stream came back is reported."""
    broker = rabbit_factory()
    names = {"exchange": f"chaos-{uid}"}
    A, subs, cli, t_kill, t_ready = kill9_under_history(broker, "amqp", names, uid, gateway_factory, reactor, bg)
    fenced = fence_by_args(A, f"chaos.{uid}.events", subs)
    acked = acknowledged(None, cli)
    # Runs that overlapped the outage (from the kill to node A's readiness) may have lost events with it.
    overlapped = {s for b in cli.batches if b.status == 0 and b.t1 >= t_kill and (t_ready is None or b.t0 <= t_ready) for s in b.seqs}
    figs = {s.name: verdict(s, acked) for s in subs}
    lost_outside = {s.name: sorted(set(acked["cli"]) - set(s.streams("cli")) - overlapped)[:10] for s in subs}
    log = A.log.read_text(errors="replace")
    record(bus="amqp", cli=cli_figures(cli), fenced=fenced, ready_again=t_ready is not None,
           kill_to_ready_s=round(t_ready - t_kill, 3) if t_ready else None, per_subscriber=figs[subs[0].name],
           acked_during_outage=len(overlapped), lost_outside_the_outage=lost_outside[subs[0].name],
           stream_unavailable_logged="history stream in RabbitMQ is unavailable" in log,
           stream_back_logged="history stream is available again" in log)

    assert t_ready is not None, "node A did not turn ready again"
    assert not [s.name for s in subs if s.done.is_set()], "subscribers were disconnected by a broker outage"
    assert fenced, "the fence did not arrive: history topics are not delivered after the outage"
    for name, fig in figs.items():
        f = fig["cli"]
        assert f["duplicates"] == 0 and f["out_of_order"] == 0, f"{name}: {f}"
        assert lost_outside[name] == [], f"{name}: acknowledged outside the outage and lost: {lost_outside[name]}"


def kill9_under_history(broker, kind, names, uid, gateway_factory, reactor, bg):
    """One node with subscribers on a history topic, the CLI publishing
    straight onto the bus; the broker killed (SIGKILL) and restarted; more
    publishing once the node is ready again. Returns the node, subscribers,
    publisher, the kill's time and when the node was ready again (or None)."""
    bus = broker.url()
    topic = f"chaos.{uid}.events"
    env = {**HISTORY, "TELEGRAPHY_HISTORY__TOPICS": f"chaos.{uid}.*"}
    A = gateway_factory("A", bus, env=env, **names)
    subs = [Subscriber(f"A{i}", HOST, A.port, topic) for i in range(SUBS)]
    reactor.start(subs)
    cli = CliPublisher(bus, topic, "cli", batch=10, pause=0.02, **names)
    bg.append(cli)
    cli.start()
    assert wait_until(lambda: len(cli.acked_ids()) >= 50, 60), f"publishing did not start: {cli_figures(cli)}"
    t_kill = broker.kill9()
    time.sleep(1.0)
    restart(kind, broker)
    t_ready = time.monotonic() if wait_until(lambda: A.readyz()[0] == 200, 120) else None
    n = len(cli.batches)
    wait_until(lambda: len(cli.batches) >= n + 20, 60)
    cli.stop()
    return A, subs, cli, t_kill, t_ready
