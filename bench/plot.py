#!/usr/bin/env python3
"""Figures and tables for docs/benchmarks.md, from the JSON lines of telegraphy-bench.

    bench/plot.sh                       # venv with matplotlib, then this script
    python bench/plot.py RESULTS_DIR OUT_DIR

Reads every *.jsonl in RESULTS_DIR; writes OUT_DIR/fanout.png (deliveries per
second, Telegraphy vs Crossbar.io vs ceiling, log scale, median of the runs
with min–max bars) and OUT_DIR/latency.png (publish→deliver percentiles at a
steady rate), and prints Markdown tables of medians.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"telegraphy": "#1f6feb", "crossbar": "#d1242f", "ceiling": "#8c959f"}
ORDER = ["telegraphy", "crossbar", "ceiling"]


def load(results: Path):
    rows = []
    for f in sorted(results.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def nsubs(r):
    """Subscribers, rounded (a run where one of 1,000 sessions failed counts as 1,000)."""
    return int(round(r.get("subscribers", 0), -1)) if r.get("subscribers", 0) >= 100 else r.get("subscribers", 0)


def group(rows, *keys):
    g = defaultdict(list)
    for r in rows:
        g[tuple(nsubs(r) if k == "subscribers" else r.get(k) for k in keys)].append(r)
    return g


def other_cpu(r):
    return r.get("machine_cpu", {}).get("other_pct", 0.0)


def fanout_plot(rows, out: Path):
    sel = [r for r in rows if r["scenario"] in ("fanout", "many-topics") and r.get("rate", 0) == 0 and r.get("serializer") == "json" and not r.get("window")]
    cases = []
    for scen, n in [("fanout", 1000), ("fanout", 10000), ("many-topics", 10000)]:
        cases.append((scen, n))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.26
    for i, label in enumerate(ORDER):
        xs, ys, lo, hi = [], [], [], []
        for j, (scen, n) in enumerate(cases):
            vals = [r["result"]["delivered_per_s"] for r in sel if r["label"] == label and r["scenario"] == scen and nsubs(r) == n and r.get("topics", 1) == (n if scen == "many-topics" else 1)]
            if label == "ceiling" and scen == "many-topics":
                vals = [r["result"]["delivered_per_s"] for r in rows if r["label"] == "ceiling" and r.get("topics", 1) > 1 and r.get("rate", 0) == 0]
            if not vals:
                continue
            m = med(vals)
            xs.append(j + (i - 1) * width)
            ys.append(m)
            lo.append(m - min(vals))
            hi.append(max(vals) - m)
        if xs:
            bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label={"crossbar": "Crossbar.io 26.10"}.get(label, label.capitalize()), color=COLORS[label])
            for b, y in zip(bars, ys):
                ax.annotate(f"{y/1e6:.2f} M" if y >= 1e5 else f"{y/1e3:.1f} k", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{s}\n{n:,} subscribers" + ("\n(1 topic each)" if s == "many-topics" else "\n(one topic)") for s, n in cases])
    ax.set_ylabel("events delivered per second (log scale)")
    ax.set_title("Fan-out throughput, same machine (2 cores), same load generator\nmedian of 3 runs, bars: min–max")
    ax.legend(loc="upper right")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "fanout.png", dpi=110)
    plt.close(fig)


def latency_plot(rows, out: Path):
    sel = [r for r in rows if r["scenario"] in ("fanout", "cluster") and r.get("rate", 0) > 0 and r.get("serializer") == "json"]
    cases = []
    for r in sel:
        key = (r["label"], r["scenario"], nsubs(r), r.get("topics", 1), r.get("nodes", 1), r.get("bus", ""), r["rate"])
        if key not in cases:
            cases.append(key)
    if not cases:
        return
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(cases) + 1.8))
    labels = []
    for y, key in enumerate(cases):
        label, scen, n, topics, nodes, bus, rate = key
        rs = [r for r in sel if (r["label"], r["scenario"], nsubs(r), r.get("topics", 1), r.get("nodes", 1), r.get("bus", ""), r["rate"]) == key]
        p = {q: med([r["result"]["latency_us"][q] / 1000 for r in rs]) for q in ("p50", "p90", "p99", "max")}
        c = COLORS.get(label, "#333")
        ax.plot([p["p50"], p["p99"]], [y, y], color=c, lw=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([p["p99"], p["max"]], [y, y], color=c, lw=1.5)
        ax.plot([p["p50"]], [y], "o", color=c)
        ax.plot([p["p99"]], [y], "|", color="k", ms=14)
        ax.annotate(f"p50 {p['p50']:.2f} · p99 {p['p99']:.2f} ms", (p["max"], y), xytext=(6, -3), textcoords="offset points", fontsize=8)
        where = f"{nodes} nodes on {bus}" if scen == "cluster" else {"crossbar": "Crossbar.io"}.get(label, label)
        labels.append(f"{where}: {n:,} subs, {topics:,} topic(s), {rate:g} ev/s")
    ax.axvline(5, color="k", ls=":", lw=1)
    ax.annotate("goal: p99 < 5 ms", (5, len(cases) - 0.5), xytext=(4, 0), textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("publish → deliver latency, ms (log scale): dot p50, bar to p99 (|), line to max")
    ax.set_title("Latency at a steady publish rate (median of runs)")
    ax.invert_yaxis()
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)


def tables(rows):
    print("## load runs (median of runs; ⚠ = other processes took > 20% CPU during a run)\n")
    print("| scenario | router | ser | publish | subs | topics | nodes | events/s | delivered/s | lost | p50 ms | p99 ms | max ms | router CPU % | load gen CPU % | RSS peak MiB | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    load = [r for r in rows if "delivered_per_s" in r.get("result", {})]
    g = group(load, "scenario", "label", "serializer", "publish", "subscribers", "topics", "nodes", "bus", "rate", "window")
    for key, rs in g.items():
        scen, label, ser, pub, n, topics, nodes, bus, rate, window = key
        res = [r["result"] for r in rs]
        events = ("%g" % rate) if rate else ("max" if not window else f"max, window {window}")
        print(
            f"| {scen} | {label} | {ser} | {pub} | {n:,} | {topics:,} | {nodes} | {events} | "
            f"{med([x['delivered_per_s'] for x in res]):,.0f} | {sum(x['lost'] for x in res)} | "
            f"{med([x['latency_us']['p50'] for x in res])/1000:.2f} | {med([x['latency_us']['p99'] for x in res])/1000:.2f} | "
            f"{med([x['latency_us']['max'] for x in res])/1000:.2f} | {med([r['router']['cpu_pct'] for r in rs]):.0f} | "
            f"{med([r.get('machine_cpu', {}).get('bench_pct', 0) for r in rs]):.0f} | "
            f"{med([r['router']['rss_peak_kib'] for r in rs])/1024:.1f} | {len(rs)}{' ⚠' if max(other_cpu(r) for r in rs) > 20 else ''} |"
        )
    storm = [r for r in rows if r["scenario"] == "connect-storm"]
    if storm:
        print("\n## connect-storm\n")
        print("| router | auth | subscribe | sessions | sessions/s | handshake p50 ms | p99 ms | failures | router CPU % | load gen CPU % | runs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for key, rs in group(storm, "label", "auth", "subscribe", "sessions").items():
            res = [r["result"] for r in rs]
            print(
                f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:,} | {med([x['sessions_per_s'] for x in res]):,.0f} | "
                f"{med([x['handshake_us']['p50'] for x in res])/1000:.1f} | {med([x['handshake_us']['p99'] for x in res])/1000:.1f} | "
                f"{sum(x['failures'] for x in res)} | {med([r['router']['cpu_pct'] for r in rs]):.0f} | "
                f"{med([r.get('machine_cpu', {}).get('bench_pct', 0) for r in rs]):.0f} | {len(rs)}{' ⚠' if max(other_cpu(r) for r in rs) > 20 else ''} |"
            )
    idle = [r for r in rows if r["scenario"] == "idle"]
    if idle:
        print("\n## idle\n")
        print("| router | auth | sessions open | RSS base MiB | RSS all MiB | KiB/session overall | KiB/session marginal | dropped | runs | note |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for key, rs in group(idle, "label", "auth", "sessions", "note").items():
            res = [r["result"] for r in rs]
            print(
                f"| {key[0]} | {key[1]} | {min(x['opened'] for x in res):,} | {med([x['rss_base_kib'] for x in res])/1024:.1f} | "
                f"{med([x['rss_all_kib'] for x in res])/1024:.1f} | {med([x['kib_per_session'] for x in res]):.2f} | "
                f"{med([x['kib_per_session_marginal'] for x in res]):.2f} | {sum(x['dropped'] for x in res)} | {len(rs)} | {key[3]} |"
            )


def main():
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/final")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    rows = load(results)
    fanout_plot(rows, out)
    latency_plot(rows, out)
    tables(rows)


if __name__ == "__main__":
    main()
