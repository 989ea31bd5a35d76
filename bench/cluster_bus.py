#!/usr/bin/env python3
"""Fan-out through a 3-shard Redis Cluster against one Redis, at 10,000 topics.

One gateway node (release build), 10,000 subscribers with a topic each, events
put onto the bus by the Rust publisher library as fast as its window allows
(`telegraphy-bench many-topics --publish redis`), once on a Redis of our own
and once on a Redis Cluster of three primaries of our own (both on free ports,
started and stopped here by PID; the machine's shared Redis is not used). The
two alternate, RUNS times each, so both see the same machine.

Per run: deliveries/s, the gateway's CPU per delivered event, and each Redis
process's CPU over the same window. Goal (issue 18): the cluster bus adds less
than 10% gateway CPU per delivered event, and spreads the broker's work over
its shards (the busiest shard's CPU per event well under one Redis's).

    python3 bench/cluster_bus.py [--runs 3] [--duration 10] [--json bench/results/cluster-bus.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "chaos"))

import procs  # noqa: E402
from brokers import RedisCluster, RedisServer  # noqa: E402

BENCH = ROOT / "target" / "release" / "telegraphy-bench"


def run_once(label: str, url: str, pids: list[int], args, out: Path) -> dict:
    cmd = [str(BENCH), "many-topics", "-n", str(args.topics), "--bus", url, "--publish", "redis",
           "--duration", str(args.duration), "--runs", "1", "--label", label, "--json", str(out)]
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    for pid in pids:
        cmd += ["--broker-pid", str(pid)]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    print(done.stdout, done.stderr, sep="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"telegraphy-bench failed ({done.returncode})")
    return json.loads(out.read_text().splitlines()[-1])


def summary(rows: list[dict]) -> dict:
    delivered = [r["result"]["delivered_per_s"] for r in rows]
    gw_us = [r["router"]["cpu_pct"] / 100 / r["result"]["delivered_per_s"] * 1e6 for r in rows]
    brokers = [r["brokers"]["cpu_pct"] for r in rows]
    busiest_us = [max(b) / 100 / r["result"]["delivered_per_s"] * 1e6 for b, r in zip(brokers, rows)]
    total_us = [sum(b) / 100 / r["result"]["delivered_per_s"] * 1e6 for b, r in zip(brokers, rows)]
    lost = sum(r["result"]["lost"] for r in rows)
    return {"runs": len(rows), "delivered_per_s": statistics.median(delivered),
            "gateway_cpu_us_per_delivery": statistics.median(gw_us),
            "busiest_broker_cpu_us_per_event": statistics.median(busiest_us),
            "all_brokers_cpu_us_per_event": statistics.median(total_us), "lost": lost,
            "broker_cpu_pct_per_run": brokers}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--topics", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=0.0,
                   help="events/s (0: as fast as the window allows); a rate both buses keep up with compares CPU per event")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "cluster-bus.jsonl")
    args = p.parse_args()
    if not BENCH.exists():
        raise SystemExit(f"{BENCH} not found: cargo build --release -p telegraphy-bench -p telegraphy-gateway")
    procs.install_safety_net()
    work = Path(tempfile.mkdtemp(prefix="telegraphy-cluster-bench-"))
    single = RedisServer(work, pubsub_limit_off=True)
    cluster = RedisCluster(work, primaries=3, replicas=0)
    for n in cluster.nodes:
        n.pubsub_limit_off = True
    rows: dict[str, list[dict]] = {"one-redis": [], "redis-cluster-3": []}
    try:
        single.start()
        cluster.start()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for run in range(args.runs):
            for label, url, pids in (("one-redis", single.url(), [single.proc.pid]),
                                     ("redis-cluster-3", cluster.url(), [n.proc.pid for n in cluster.nodes])):
                out = work / f"{label}-{run}.jsonl"
                row = run_once(label, url, pids, args, out)
                rows[label].append(row)
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        single.stop()
        cluster.stop()
        procs.cleanup_all()
    one, many = summary(rows["one-redis"]), summary(rows["redis-cluster-3"])
    print(json.dumps({"one-redis": one, "redis-cluster-3": many}, indent=2))
    print(f"gateway CPU per delivered event, cluster / one Redis: "
          f"{many['gateway_cpu_us_per_delivery'] / one['gateway_cpu_us_per_delivery']:.3f} (goal < 1.10)")
    print(f"busiest broker's CPU per event, cluster / one Redis: "
          f"{many['busiest_broker_cpu_us_per_event'] / one['busiest_broker_cpu_us_per_event']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
