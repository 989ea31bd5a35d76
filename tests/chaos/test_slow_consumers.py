"""Scenarios 5 and 6: a subscriber that stops reading is shed (close 4000)
without hurting anyone else, every message dropped for it is counted, and a
flood of publishers leaves the gateway's memory bounded."""

from __future__ import annotations

import json
import threading
import time

import pytest

import gateway as gwmod
from load import ExternalHttpPublisher, HttpPublisher, duplicate_pubids, fence, order_problems, run_cli_stdin, wait_until
from wampclient import StalledSubscriber, Subscriber

HOST = "127.0.0.1"
REASONS = ("queue_full", "discarded", "closing")


def shed_metrics(m: gwmod.Metrics) -> dict:
    """The slow-consumer figures of one /metrics scrape (None for a series the binary lacks)."""
    out = {
        "slow_consumer_closes": m.get("telegraphy_slow_consumer_closes_total"),
        "disconnects_4000": m.get("telegraphy_disconnects_total", code="4000"),
        "close_unsent_4000": m.get("telegraphy_close_unsent_total", code="4000"),
        "queue_drops_total_all": m.total("telegraphy_queue_drops_total") if m.has("telegraphy_queue_drops_total") else None,
        "sessions": m.get("telegraphy_sessions"),
        # EVENTs written or queued to sessions (what a session gets, unless
        # it is discarded at its close).
        "delivered": m.get("telegraphy_events_delivered_total"),
    }
    for r in REASONS:
        out[f"queue_drops_{r}"] = m.get("telegraphy_queue_drops_total", reason=r)
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: (None if after[k] is None or before[k] is None else after[k] - before[k]) for k in after if k != "sessions"}


def missing_features(m: gwmod.Metrics) -> list[str]:
    out = []
    reasons = m.label_values("telegraphy_queue_drops_total", "reason")
    for r in REASONS:
        if r not in reasons:
            out.append(f'telegraphy_queue_drops_total{{reason="{r}"}}')
    if not m.has("telegraphy_close_unsent_total"):
        out.append("telegraphy_close_unsent_total{code}")
    if not gwmod.supports_setting("limits.socket_send_buffer"):
        out.append("limits.socket_send_buffer (setting)")
    return out


def prefix_ok(seqs: list[int], acked_seqs: list[int]) -> bool:
    """The received seqs are exactly the first len(seqs) acknowledged ones, in order."""
    return seqs == acked_seqs[:len(seqs)]


@pytest.mark.parametrize("resume", ["soon", "after_gateway_gave_up"])
def test_stalled_reader_is_shed_and_accounted(resume, uid, redis_factory, gateway_factory, reactor, bg, record):
    """resume=soon: the reader resumes about half a second after being shed, within
    the gateway's wait for the close frame, and must see the 4000 close frame.
    resume=after_gateway_gave_up: it resumes only once the gateway has counted the
    close (written or not), so the unsent-close and discarded paths are exercised;
    the metrics must then agree with what the client saw."""
    redis = redis_factory()
    A = gateway_factory("A", redis.url(), prefix=f"chaos-{uid}:")
    topic = f"chaos.{uid}.events"
    normal = reactor.start([Subscriber(f"N{i}", HOST, A.port, topic) for i in range(10)])
    stalled = StalledSubscriber("stalled", HOST, A.port, topic, rcvbuf=4096)
    stalled.connect()
    m0 = A.metrics()
    features_missing = missing_features(m0)
    before = shed_metrics(m0)

    http = HttpPublisher(A, topic, "http", rate=300, pad=4000)  # ~4 KB events
    bg.append(http)
    http.start()
    shed = wait_until(lambda: (A.metrics().get("telegraphy_slow_consumer_closes_total") or 0) > before["slow_consumer_closes"],
                      90, 0.1)
    t_shed = time.monotonic()
    acked_at_shed = len(http.acked())
    # Events keep coming for the closing session for a moment, then the flood stops.
    time.sleep(0.5)
    http.stop()
    fence_ids: list[int] = []
    fenced = fence(A, topic, normal, timeout=60, acked=fence_ids)
    # Every acknowledged event (and the fence) has been fanned out now. Is the shed
    # session still there, waiting for its close frame to be taken?
    mid = shed_metrics(A.metrics())
    still_closing = (mid["disconnects_4000"] == before["disconnects_4000"]
                     and (mid["close_unsent_4000"] or 0) == (before["close_unsent_4000"] or 0))
    gave_up = None
    shed_to_close_counted = None
    if resume == "after_gateway_gave_up":
        gave_up = wait_until(lambda: (lambda d: (d["disconnects_4000"] or 0) + (d["close_unsent_4000"] or 0) >= 1)(
            delta(shed_metrics(A.metrics()), before)), 120, 0.1)
        shed_to_close_counted = round(time.monotonic() - t_shed, 2) if gave_up else None
    t_resume = time.monotonic()
    stalled.resume(timeout=60)
    t_end = time.monotonic()
    # The gateway counts the close once the connection is over.
    wait_until(lambda: (lambda d: (d["disconnects_4000"] or 0) + (d["close_unsent_4000"] or 0) >= 1)(
        delta(shed_metrics(A.metrics()), before)), 30, 0.1)
    after = shed_metrics(A.metrics())
    d = delta(after, before)

    acked = http.acked()
    acked_seqs = [r.seq for r in acked]
    n_attempted_max = len(acked) + len(fence_ids)  # the fence went to it too
    got = [seq for (s, seq, _) in stalled.events if s == "http"]
    received = len(stalled.events)  # http events and possibly the fence
    dropped = sum((d[f"queue_drops_{r}"] or 0) for r in REASONS) if not any(d[f"queue_drops_{r}"] is None for r in REASONS) \
        else d["queue_drops_total_all"]
    normal_lost = sum(1 for s in normal for r in acked if r.pubid not in s.pubids)
    normal_bad_order = sum(sum(order_problems(s.events, "http")) + duplicate_pubids(s.events) for s in normal)
    record(resume=resume, gateway_closed_before_resume=gave_up, shed_seen_to_close_counted_s=shed_to_close_counted, event_bytes=4000, acked=len(acked), acked_when_shed_seen=acked_at_shed, shed=shed,
           stalled_received=received, stalled_missed=n_attempted_max - received, dropped_for_it=dropped,
           received_plus_dropped=received + (dropped or 0), attempted_if_still_closing=n_attempted_max,
           session_still_closing_after_fanout=still_closing, drops_by_reason={r: d[f"queue_drops_{r}"] for r in REASONS},
           disconnects_4000=d["disconnects_4000"], close_unsent_4000=d["close_unsent_4000"],
           slow_consumer_closes=d["slow_consumer_closes"], saw_close_frame=stalled.saw_close_frame,
           close_code=stalled.seen_code, close_reason=stalled.close_reason, stalled_bytes_read=stalled.bytes_read,
           stalled_partial_frame_bytes_at_end=stalled.partial_frame_bytes,
           shed_seen_to_resume_s=round(t_resume - t_shed, 3), resume_to_end_s=round(t_end - t_resume, 3),
           normal_subscribers_lost=normal_lost, normal_subscribers_dup_or_reorder=normal_bad_order,
           features_missing_in_binary=features_missing,
           socket_send_buffer_setting=gwmod.setting_value("limits.socket_send_buffer"))

    # Nobody else suffers.
    assert shed, "the stalled reader was never shed"
    assert fenced and normal_lost == 0 and normal_bad_order == 0
    assert not any(s.done.is_set() for s in normal), "a reading subscriber was disconnected"
    assert all(r.status == 200 for r in http.records), "publishes failed during the flood"
    # What the stalled reader got is an unbroken prefix of what was published.
    assert prefix_ok(got, acked_seqs), "the stalled reader's events are not a prefix of the published ones"
    assert duplicate_pubids(stalled.events) == 0
    if resume == "soon":
        # It is told why: a close frame with code 4000.
        assert stalled.saw_close_frame and stalled.close_code == 4000, \
            f"the shed subscriber did not see a 4000 close frame (saw {stalled.seen_code}); missing in binary: {features_missing}"
    else:
        assert gave_up, "the gateway never ended the shed session while its reader stalled"
        if stalled.saw_close_frame:
            assert stalled.close_code == 4000
    # Metrics account for it.
    assert not features_missing, f"the gateway binary lacks: {features_missing}"
    assert d["slow_consumer_closes"] == 1
    assert d["queue_drops_queue_full"] == 1, "exactly one frame found the queue full"
    assert d["disconnects_4000"] + d["close_unsent_4000"] == 1, "the close is counted once"
    assert d["disconnects_4000"] == (1 if stalled.saw_close_frame else 0), \
        "disconnects_total{code=4000} must count the close frame exactly when the client got it (else close_unsent_total)"
    assert received + dropped <= n_attempted_max, "more dropped than could have been attempted"
    # Exact accounting: every EVENT written or queued for a session
    # (telegraphy_events_delivered_total) reached its client, or was counted
    # as discarded when the session closed. The reading subscribers got all
    # of theirs; the rest was the stalled reader's.
    normal_received = sum(len(s.events) for s in normal)
    to_stalled = d["delivered"] - normal_received
    cut = (f"; the connection ended {stalled.partial_frame_bytes} bytes into a frame" if stalled.partial_frame_bytes else "")
    assert received + d["queue_drops_discarded"] == to_stalled, (
        f"written or queued for the stalled reader {to_stalled} != received {received} + discarded "
        f"{d['queue_drops_discarded']}{cut}")


def test_publisher_flood_bounded_memory(uid, redis_factory, gateway_factory, reactor, bg, record):
    # Redis must not cut the node off under the flood (client-output-buffer-limit
    # pubsub, docs/bus.md): with the limit off, Redis buffers, the node takes events
    # at its own pace through its bounded bus queue, and no event is lost to a
    # reconnect, so non-shed subscribers can be held to "lose nothing".
    redis = redis_factory(pubsub_limit_off=True)
    qmsgs, qbytes, busq = 1024, 1048576, 8192  # the defaults
    A = gateway_factory("A", redis.url(), prefix=f"chaos-{uid}:", env={
        "TELEGRAPHY_LIMITS__OUTBOUND_QUEUE_MESSAGES": str(qmsgs),
        "TELEGRAPHY_LIMITS__OUTBOUND_QUEUE_BYTES": str(qbytes),
        "TELEGRAPHY_LIMITS__BUS_QUEUE": str(busq),
    })
    topic = f"chaos.{uid}.events"
    n_normal, n_slow = 45, 5
    normal = reactor.start([Subscriber(f"N{i}", HOST, A.port, topic) for i in range(n_normal)])
    slow = [StalledSubscriber(f"slow{i}", HOST, A.port, topic, rcvbuf=4096) for i in range(n_slow)]
    for s in slow:
        s.connect()
    m0 = A.metrics()
    before = shed_metrics(m0)
    features_missing = missing_features(m0)
    rss0 = A.rss_kb()

    samples: list[int] = []
    halt = threading.Event()

    def sample_rss():
        while not halt.is_set():
            v = A.rss_kb()
            if v:
                samples.append(v)
            halt.wait(0.05)
    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()

    pad, per_pub = 1000, 1000
    pubs = [ExternalHttpPublisher(A, topic, f"http{i}", count=per_pub, pad=pad) for i in range(3)]
    bg.extend(pubs)
    cli_out: dict = {}
    lines = [json.dumps({"topic": topic, "args": ["cli", i], "kwargs": {"pad": "y" * pad}}) for i in range(per_pub)]

    def cli_run():
        cli_out["r"] = run_cli_stdin(redis.url(), lines, prefix=f"chaos-{uid}:", timeout=240)
    cli_thread = threading.Thread(target=cli_run, daemon=True)
    t0 = time.monotonic()
    for p in pubs:
        p.start()
    cli_thread.start()
    for p in pubs:
        p.join(timeout=240)  # noqa
    cli_thread.join(timeout=240)
    t_flood = time.monotonic() - t0
    alive = [s for s in normal if not s.done.is_set()]
    fence_ids: list[int] = []
    fenced = fence(A, topic, alive, timeout=90, acked=fence_ids)
    halt.set()
    sampler.join(5)
    # Before the slow readers resume: are their sessions still closing (every
    # event, the fence included, was fanned out while they existed)?
    mid = delta(shed_metrics(A.metrics()), before)
    none_closed_yet = (mid["disconnects_4000"] or 0) + (mid["close_unsent_4000"] or 0) == 0
    for s in slow:
        s.resume(timeout=60)
    shed_normal = [s for s in normal if s.done.is_set()]
    n_shed = len(shed_normal) + sum(1 for s in slow if s.seen_code is not None)
    wait_until(lambda: (lambda d: (d["disconnects_4000"] or 0) + (d["close_unsent_4000"] or 0) >= n_shed)(
        delta(shed_metrics(A.metrics()), before)), 30, 0.1)
    d = delta(shed_metrics(A.metrics()), before)

    cli_status, cli_ids_out, cli_err, _, _ = cli_out.get("r", (None, [], "no result", 0, 0))
    cli_ids = [int(x) for x in cli_ids_out if x.isdigit()]
    acked_by_stream = {p.stream: [r for r in p.records if r.acked] for p in pubs}
    # The fence counts too: it was fanned out to sessions that were still closing.
    all_acked_ids = {r.pubid for rs in acked_by_stream.values() for r in rs} | set(cli_ids) | set(fence_ids)
    n_acked = len(all_acked_ids)
    rss_max = max(samples) if samples else None
    # The bound: what the limits let the gateway hold, twice over for allocator
    # overhead, plus 64 MiB of slack, above the RSS before the flood.
    event_bytes = pad + 100
    bound_kb = rss0 + 2 * (n_normal + n_slow) * qbytes // 1024 + 2 * busq * event_bytes // 1024 + 64 * 1024

    problems = []
    for s in normal + slow:
        if duplicate_pubids(s.events):
            problems.append(f"{s.name}: duplicates")
        for stream in list(acked_by_stream) + ["cli"]:
            dd, rr = order_problems(s.events, stream)
            if dd or rr:
                problems.append(f"{s.name}: {stream} {dd} dup {rr} reordered")
    lost_not_shed = {s.name: sum(1 for i in all_acked_ids if i not in s.pubids) for s in alive}
    lost_not_shed = {k: v for k, v in lost_not_shed.items() if v}
    shed_sessions = shed_normal + [s for s in slow if s.seen_code is not None]
    missed_by_shed = sum(n_acked - sum(1 for i in s.pubids if i in all_acked_ids) for s in shed_sessions)
    dropped = sum((d[f"queue_drops_{r}"] or 0) for r in REASONS) if d["queue_drops_queue_full"] is not None \
        else d["queue_drops_total_all"]
    record(limits={"outbound_queue_messages": qmsgs, "outbound_queue_bytes": qbytes, "bus_queue": busq},
           event_bytes=event_bytes, publishers="3 HTTP + 1 CLI --stdin", acked=n_acked, flood_seconds=round(t_flood, 2),
           http_statuses={p.stream: sorted({str(r.status) for r in p.records}) for p in pubs}, cli_status=cli_status,
           cli_ids=len(cli_ids), rss_before_kb=rss0, rss_max_kb=rss_max, rss_bound_kb=bound_kb, rss_samples=len(samples),
           rss_bound_formula="rss_before + 2*(sessions*outbound_queue_bytes + bus_queue*event_bytes) + 64 MiB",
           deliberately_slow=n_slow, slow_close_codes=[s.seen_code for s in slow],
           slow_saw_close_frame=[s.saw_close_frame for s in slow], reading_subscribers_shed=len(shed_normal),
           reading_subscribers_shed_codes=sorted({str(s.seen_code) for s in shed_normal}), shed_sessions=len(shed_sessions),
           missed_by_shed_sessions=missed_by_shed, dropped=dropped,
           drops_by_reason={r: d[f"queue_drops_{r}"] for r in REASONS}, slow_consumer_closes=d["slow_consumer_closes"],
           disconnects_4000=d["disconnects_4000"], close_unsent_4000=d["close_unsent_4000"],
           lost_by_subscribers_never_shed=lost_not_shed, shed_sessions_still_closing_after_fanout=none_closed_yet, order_problems=problems[:10], fenced=fenced,
           features_missing_in_binary=features_missing)

    assert rss_max is not None and rss_max <= bound_kb, f"RSS {rss_max} kB above the bound {bound_kb} kB"
    assert problems == [], problems[:10]
    assert all(str(r.status) == "200" for p in pubs for r in p.records), "HTTP publishes failed"
    assert cli_status == 0 and len(cli_ids) == per_pub, f"CLI: status {cli_status}, {len(cli_ids)} ids: {cli_err[-300:]}"
    assert fenced and lost_not_shed == {}, f"subscribers that were never shed lost events: {lost_not_shed}"
    for s in shed_sessions:
        for stream, recs in acked_by_stream.items():
            assert prefix_ok(s.streams(stream), [r.seq for r in recs]), f"{s.name}: {stream} is not a prefix"
    assert all(s.seen_code is not None for s in slow), "a subscriber that never read was not shed"
    assert not features_missing, f"the gateway binary lacks: {features_missing}"
    assert d["slow_consumer_closes"] == len(shed_sessions)
    assert d["queue_drops_queue_full"] == len(shed_sessions), "one queue_full drop per shed session"
    assert d["disconnects_4000"] + d["close_unsent_4000"] == len(shed_sessions), "every shed close counted once"
    assert d["disconnects_4000"] == sum(1 for s in shed_sessions if s.close_code == 4000), \
        "disconnects_total{code=4000} must count the close frames the clients actually got"
    assert dropped <= missed_by_shed, "more drops counted than the shed sessions missed"
    # Exact accounting: every EVENT written or queued for a session reached
    # its client or was counted as discarded when a slow consumer closed.
    received_all = sum(len(s.events) for s in normal + slow)
    assert received_all + d["queue_drops_discarded"] == d["delivered"], (
        f"received {received_all} + discarded {d['queue_drops_discarded']} != written or queued {d['delivered']}")
