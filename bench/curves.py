#!/usr/bin/env python3
"""How cost grows: curves from the JSON lines of telegraphy-bench.

    bench/curves.sh RESULTS_DIR [OUT_DIR]     # venv with matplotlib, then this script
    python bench/curves.py RESULTS_DIR OUT_DIR

Reads RESULTS_DIR/{curve-subscribers,curve-sessions,curve-nodes,scale,bus-path}.jsonl
(the phases of bench/run-all.sh) and writes, where the lines exist:

* curve-subscribers.png: deliveries/s and router CPU per delivery vs
  subscribers on one topic (Telegraphy, the bare ceiling, Crossbar.io);
* curve-sessions.png: RSS of the nodes (in all, and per session) vs sessions;
* curve-nodes.png: publish→deliver latency (p50, p99) vs gateway nodes, per bus;

and prints Markdown tables of the medians (with the bus-path ratio and the
scale run) for docs/benchmarks.md.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"telegraphy": "#1f6feb", "crossbar": "#d1242f", "ceiling": "#8c959f", "redis": "#d1242f", "amqp": "#fb8f44"}
NAMES = {"telegraphy": "Telegraphy", "crossbar": "Crossbar.io", "ceiling": "bare ceiling program"}


def lines(path: Path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def subscribers_curve(rows, out: Path):
    rows = [r for r in rows if r.get("scenario") == "fanout" and r.get("rate", 0) == 0]
    if not rows:
        return
    by = defaultdict(list)
    for r in rows:
        by[(r["label"], r["result"]["subscribers"])].append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    print("## deliveries/s and CPU per delivery vs subscribers (one topic, max rate; median of runs)\n")
    print("| router | subscribers | deliveries/s | router CPU % | router CPU µs per delivery | runs |")
    print("|---|---|---|---|---|---|")
    for label in ("telegraphy", "ceiling", "crossbar"):
        pts = sorted((n, rs) for (lab, n), rs in by.items() if lab == label)
        if not pts:
            continue
        xs, rate, cpu_per = [], [], []
        for n, rs in pts:
            d = med([r["result"]["delivered_per_s"] for r in rs])
            cpu = med([r["router"]["cpu_pct"] for r in rs])
            per = med([r["router"]["cpu_pct"] / 100 / max(r["result"]["delivered_per_s"], 1) * 1e6 for r in rs])
            xs.append(n)
            rate.append(d)
            cpu_per.append(per)
            print(f"| {NAMES.get(label, label)} | {n:,} | {d:,.0f} | {cpu:.0f} | {per:.2f} | {len(rs)} |")
        ax1.plot(xs, rate, "o-", color=COLORS.get(label), label=NAMES.get(label, label))
        ax2.plot(xs, cpu_per, "o-", color=COLORS.get(label), label=NAMES.get(label, label))
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers on one topic")
        ax.grid(which="both", alpha=0.3)
    ax1.set_ylabel("events delivered per second")
    ax1.set_title("Fan-out throughput (max rate)")
    ax2.set_ylabel("router CPU µs per delivery")
    ax2.set_title("Router CPU per delivery")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(out / "curve-subscribers.png", dpi=110)
    plt.close(fig)
    print()


def sessions_curve(rows, out: Path):
    rows = [r for r in rows if r.get("scenario") == "scale"]
    if not rows:
        return
    by = defaultdict(list)
    for r in rows:
        by[r["sessions"]].append(r)
    xs = sorted(by)
    total = [med([r["result"]["rss_total_kib"] / 1024 for r in by[n]]) for n in xs]
    per = [med([r["result"]["kib_per_session"] for r in by[n]]) for n in xs]
    p99 = [med([r["result"]["steady"]["latency_us"]["p99"] / 1000 for r in by[n]]) for n in xs]
    print("## RSS and latency vs sessions (JWT sessions, each subscribed; steady 1,000 events/s over 1,000 topics)\n")
    print("| sessions | nodes | RSS of all nodes MiB | KiB per session | latency p50 ms | p99 ms | lost | CPU per node % | machine CPU % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in xs:
        r = by[n][-1]
        s = r["result"]["steady"]
        print(
            f"| {n:,} | {r['nodes']} | {r['result']['rss_total_kib'] / 1024:.0f} | {r['result']['kib_per_session']:.2f} | "
            f"{s['latency_us']['p50'] / 1000:.2f} | {s['latency_us']['p99'] / 1000:.2f} | {s['lost']} | "
            f"{med(s['cpu_pct_per_node']):.0f} | {s.get('machine_cpu_pct', float('nan')):.0f} |"
        )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(xs, total, "o-", color=COLORS["telegraphy"], label="RSS of all nodes")
    ax1.set_xlabel("sessions (over 6 nodes)")
    ax1.set_ylabel("MiB")
    ax1.set_title("Memory of the nodes vs sessions")
    ax1.grid(alpha=0.3)
    ax1b = ax1.twinx()
    ax1b.plot(xs, per, "s--", color="#8c959f", label="KiB per session")
    ax1b.set_ylabel("KiB per session (above the idle nodes)")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="lower right")
    ax2.plot(xs, p99, "o-", color=COLORS["telegraphy"])
    ax2.set_xlabel("sessions (over 6 nodes)")
    ax2.set_ylabel("publish→deliver p99, ms")
    ax2.set_title("Latency at 1,000 events/s vs sessions")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curve-sessions.png", dpi=110)
    plt.close(fig)
    print()


def nodes_curve(rows, out: Path):
    rows = [r for r in rows if r.get("scenario") == "cluster" and r.get("rate", 0) > 0]
    if not rows:
        return
    by = defaultdict(list)
    for r in rows:
        by[(r["bus"], r["nodes"])].append(r)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    print("## latency vs nodes (5,000 subscribers over 100 topics, 1,000 events/s; median of runs)\n")
    print("| bus | nodes | p50 ms | p99 ms | max ms | lost | runs |")
    print("|---|---|---|---|---|---|---|")
    for bus in ("redis", "amqp"):
        ks = sorted(k for (b, k) in by if b == bus)
        if not ks:
            continue
        p50 = [med([r["result"]["latency_us"]["p50"] / 1000 for r in by[(bus, k)]]) for k in ks]
        p99 = [med([r["result"]["latency_us"]["p99"] / 1000 for r in by[(bus, k)]]) for k in ks]
        for k, a, b in zip(ks, p50, p99):
            rs = by[(bus, k)]
            mx = med([r["result"]["latency_us"]["max"] / 1000 for r in rs])
            print(f"| {bus} | {k} | {a:.2f} | {b:.2f} | {mx:.2f} | {sum(r['result']['lost'] for r in rs)} | {len(rs)} |")
        name = {"redis": "Redis", "amqp": "RabbitMQ"}[bus]
        ax.plot(ks, p50, "o-", color=COLORS[bus], label=f"{name} p50")
        ax.plot(ks, p99, "s--", color=COLORS[bus], label=f"{name} p99")
    ax.set_yscale("log")
    ax.set_xlabel("gateway nodes")
    ax.set_ylabel("publish→deliver latency, ms (log)")
    ax.set_title("Latency vs nodes (5,000 subscribers, 1,000 events/s)")
    ax.grid(which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve-nodes.png", dpi=110)
    plt.close(fig)
    print()


def bus_path(rows):
    rows = [r for r in rows if r.get("scenario") == "many-topics"]
    if not rows:
        return
    print("## the bus path: one node, 10,000 topics with one subscriber each, vs the broker alone (median of runs)\n")
    print("| bus | Telegraphy events/s | broker alone events/s | ratio | Telegraphy p99 ms | machine CPU % (gateway run) |")
    print("|---|---|---|---|---|---|")
    for bus in ("redis", "amqp"):
        gw = [r for r in rows if r.get("bus") == bus and r["label"] == "telegraphy"]
        br = [r for r in rows if r.get("bus") == bus and r["label"] == "broker"]
        if not gw or not br:
            continue
        g = med([r["result"]["delivered_per_s"] for r in gw])
        b = med([r["result"]["delivered_per_s"] for r in br])
        p99 = med([r["result"]["latency_us"]["p99"] / 1000 for r in gw])
        mc = med([r.get("machine_cpu", {}).get("total_pct") for r in gw])
        print(f"| {bus} | {g:,.0f} | {b:,.0f} | {g / b:.0%} | {p99:.2f} | {mc:.0f} |")
    print()


def scale(rows):
    for r in rows:
        if r.get("scenario") != "scale" or not r["result"].get("restart"):
            continue
        res, st, rs = r["result"], r["result"]["steady"], r["result"]["restart"]
        print(f"## scale run ({r['time']})\n")
        print(f"- {r['sessions']:,} JWT sessions, each subscribed, over {r['nodes']} nodes on {r['bus']} ({r['workers']} load-generator processes)")
        print(f"- opened in {res['setup_s']:.1f} s; RSS of the nodes {res['rss_total_kib'] / 1024:.0f} MiB, {res['kib_per_session']:.2f} KiB per session")
        print(
            f"- steady {r['rate']:g} events/s over {r['topics']:,} topics for {r['duration_s']:g} s: {st['received']:,} of {st['expected']:,} deliveries, "
            f"lost {st['lost']}, p50 {st['latency_us']['p50'] / 1000:.2f} ms, p99 {st['latency_us']['p99'] / 1000:.2f} ms; "
            f"CPU per node {med(st['cpu_pct_per_node']):.0f}%, load generator {st.get('workers_cpu_pct', float('nan')):.0f}%, machine {st.get('machine_cpu_pct', float('nan')):.0f}% of 200"
        )
        print(
            f"- every node restarted: stopped in {rs['stopped_s']:.1f} s, ready at {rs['ready_s']:.1f} s, all sessions back and subscribed "
            f"{rs['all_back_s']:.1f} s after the stop began; peak connections per node {max(rs['peak_connections']):,.0f} (limit {min(rs['max_connections']):,.0f}); "
            f"{rs.get('failed_attempts', 0):,} failed reconnect attempts, {rs['refused'] - rs.get('refused_before', 0):,.0f} refused by limits"
        )
        if res.get("after_restart"):
            a = res["after_restart"]
            print(f"- after the restart: {a['received']:,} of {a['expected']:,} deliveries, lost {a['lost']}, p50 {a['latency_us']['p50'] / 1000:.2f} ms, p99 {a['latency_us']['p99'] / 1000:.2f} ms")
        print()


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/curves")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    subscribers_curve(lines(results / "curve-subscribers.jsonl"), out)
    sessions_curve(lines(results / "curve-sessions.jsonl"), out)
    nodes_curve(lines(results / "curve-nodes.jsonl"), out)
    bus_path(lines(results / "bus-path.jsonl"))
    scale(lines(results / "scale.jsonl"))


if __name__ == "__main__":
    main()
