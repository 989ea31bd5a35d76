"""Judging a run: which acknowledged events each subscriber had to receive,
which it did, and which losses the bus contract allows.

The rules (docs/bus.md, "What every bus guarantees"):

- An event node N acknowledged over HTTP (200) must reach every subscriber
  on node N: N was connected when the broker took it, and a node must not
  accept publishes before its subscriptions are back in force.
- Any other acknowledged event (through another node, or the CLI straight
  onto the bus) must reach node N's subscribers when N's /readyz said 200
  from the sample before the publish to the sample after its answer (and,
  for HTTP, so did the publishing node's).
- Events a node was not ready for are allowed to be missed (reported).
- At a broker kill, the broker may die with events it confirmed but had not
  yet handed to a node: allowed, but only as the tail of what was in flight,
  i.e. a lost event must come after every event of the same stream, sent in
  the same segment (between two kills), that the subscriber did receive.
- Never a duplicate, never a reordering within a stream.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from gateway import ReadyPoller
from load import CliPublisher, HttpPublisher, duplicate_pubids, order_problems


@dataclass
class Expected:
    stream: str
    seq: int
    pubid: int
    t0: float
    t1: float
    via: str | None  # node name for HTTP publishes, None for the CLI


def acked_events(http: list[tuple[HttpPublisher, str]], cli: list[CliPublisher],
                 seq_of: dict[int, tuple] | None = None) -> list[Expected]:
    """Every acknowledged event. CLI events get their seq from what a subscriber
    received (`seq_of`: publication id -> (stream, seq)), else from the line order."""
    seq_of = seq_of or {}
    out = []
    for pub, via in http:
        for r in pub.records:
            if r.acked:
                out.append(Expected(r.stream, r.seq, r.pubid, r.t0, r.t1, via))
    for c in cli:
        for b in c.batches:
            # Without pipelining the ids come in line order; the set is what counts.
            for seq, pubid in zip(b.seqs, b.ids):
                known = seq_of.get(pubid)
                if known is not None and known[0] == c.stream:
                    seq = known[1]
                out.append(Expected(c.stream, seq, pubid, b.t0, b.t1, None))
    return out


def judge(subs_by_node: dict[str, list], pollers: dict[str, ReadyPoller], http: list[tuple[HttpPublisher, str]],
          cli: list[CliPublisher], kills: list[float] | None = None, judged_nodes: list[str] | None = None) -> dict:
    kills = sorted(kills or [])
    seq_of = {pubid: (stream, seq) for subs in subs_by_node.values() for s in subs for (stream, seq, pubid) in s.events}
    events = acked_events(http, cli, seq_of)
    streams = sorted({e.stream for e in events})
    fig: dict = {"acked_events": len(events), "nodes": {}}
    violations: list[str] = []
    for node, subs in subs_by_node.items():
        poller = pollers[node]
        expected: list[Expected] = []
        not_expected: list[Expected] = []
        for e in events:
            if e.via == node:
                ok = True
            elif e.via is not None:
                ok = poller.ready_throughout(e.t0, e.t1) and pollers[e.via].ready_throughout(e.t0, e.t1)
            else:
                ok = poller.ready_throughout(e.t0, e.t1)
            (expected if ok else not_expected).append(e)
        nf = {"subscribers": len(subs), "expected_per_subscriber": len(expected),
              "not_expected_node_not_ready": len(not_expected), "acked_then_lost": 0, "lost_in_flight_at_kill": 0,
              "missed_while_not_ready": 0, "duplicates": 0, "reorderings": 0, "received_min": None, "received_max": None}
        judged = judged_nodes is None or node in judged_nodes
        for s in subs:
            got = s.pubids
            n = len(s.events)
            nf["received_min"] = n if nf["received_min"] is None else min(nf["received_min"], n)
            nf["received_max"] = n if nf["received_max"] is None else max(nf["received_max"], n)
            d = duplicate_pubids(s.events)
            r = 0
            where = []
            for st in streams + ["fence"]:
                dd, rr = order_problems(s.events, st)
                r += rr
                if rr:
                    seqs = [seq for (x, seq, _) in s.events if x == st]
                    i = next(i for i, (a, b) in enumerate(zip(seqs, seqs[1:])) if b < a)
                    where.append(f"{st}: ... {seqs[max(0, i - 3):i + 4]} ...")
            nf["duplicates"] += d
            nf["reorderings"] += r
            if d or r:
                violations.append(f"{s.name}: {d} duplicates, {r} reorderings {'; '.join(where)}".rstrip())
            nf["missed_while_not_ready"] += sum(1 for e in not_expected if e.pubid not in got)
            # received seqs per (stream, segment)
            received: dict[tuple[str, int], list[int]] = {}
            for e in events:
                if e.pubid in got:
                    received.setdefault((e.stream, bisect.bisect_right(kills, e.t0)), []).append(e.seq)
            lost_here = []
            for e in expected:
                if e.pubid in got:
                    continue
                seg = bisect.bisect_right(kills, e.t0)
                rec = received.get((e.stream, seg), [])
                # A kill follows this segment and nothing later in it was received: in flight at the kill.
                if seg < len(kills) and (not rec or max(rec) < e.seq) and e.t0 < kills[seg]:
                    nf["lost_in_flight_at_kill"] += 1
                else:
                    nf["acked_then_lost"] += 1
                    lost_here.append((e.stream, e.seq))
                    if len(nf.setdefault("lost_examples", [])) < 5:
                        ref = kills[seg - 1] if seg > 0 else (kills[0] if kills else 0.0)
                        later = sorted(x for x in rec if x > e.seq)[:3]
                        nf["lost_examples"].append({"subscriber": s.name, "stream": e.stream, "seq": e.seq, "via": e.via,
                                                    "segment": seg, "sent_s_from_kill": round(e.t0 - ref, 4),
                                                    "answered_s_from_kill": round(e.t1 - ref, 4),
                                                    "received_later_in_segment": later})
            if lost_here and judged:
                violations.append(f"{s.name} on {node}: {len(lost_here)} acknowledged events lost, e.g. {lost_here[:8]}")
        nf["judged"] = judged
        fig["nodes"][node] = nf
    fig["violations"] = violations
    return fig


def http_figures(pub: HttpPublisher, poller: ReadyPoller | None = None) -> dict:
    recs = pub.records
    acked = [r for r in recs if r.acked]
    refused = [r for r in recs if r.status is not None and r.status != 200]
    bad_refusals = [r for r in refused if not (r.status == 503 and r.error == "bus_unavailable"
                                                 and isinstance(r.body, dict) and "message" in r.body)]
    fig = {
        "sent": len(recs),
        "acked_200": len(acked),
        "refused_503_bus_unavailable": len(refused) - len(bad_refusals),
        "refused_other": len(bad_refusals),
        "refused_other_examples": [(r.status, r.body) for r in bad_refusals[:3]],
        "no_answer": sum(1 for r in recs if r.status is None),
        "no_answer_examples": [r.error for r in recs if r.status is None][:3],
    }
    if poller is not None:
        fig["acked_while_not_ready"] = sum(1 for r in acked if poller.not_ready_throughout(r.t0, r.t1))
        fig["acked_with_a_not_ready_neighbour_sample"] = sum(
            1 for r in acked if (b := poller.bracket(r.t1, r.t1)) is not None and any(st != 200 for st in b))
    return fig


def cli_figures(c: CliPublisher) -> dict:
    statuses: dict[int, int] = {}
    for b in c.batches:
        statuses[b.status] = statuses.get(b.status, 0) + 1
    lines = sum(len(b.seqs) for b in c.batches)
    ids = [i for b in c.batches for i in b.ids]
    return {"runs": len(c.batches), "runs_by_exit_status": statuses, "lines": lines, "acked_ids": len(ids),
            "duplicate_ids": len(ids) - len(set(ids)),
            "stderr_example": next((b.stderr for b in c.batches if b.status != 0), "")[:200],
            "harness_errors": c.errors[:3]}
