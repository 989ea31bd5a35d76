#!/usr/bin/env python3
"""Instruction budgets for the gateway's hot paths.

Each workload of `telegraphy-instr` runs under valgrind's callgrind at two
sizes; (instructions at the larger size - at the smaller) / (units at the
larger - at the smaller) is the cost of one unit (a delivered EVENT, a
decoded message, a session set up, a bus event consumed), with setup and
teardown cancelled out. Instructions, not seconds: the same binary and
input give the same count however busy the machine is.

    bench/instructions/run.py                 # check against baseline.json (exit 1 if a path grew > 5%)
    bench/instructions/run.py --update        # write the current figures as the new baseline
    bench/instructions/run.py --repeat 2      # run everything twice and report the spread
    bench/instructions/run.py --only fanout   # a subset (substring of the path names)

Needs valgrind, a release build of telegraphy-instr (cargo build --release
-p telegraphy-bench --bin telegraphy-instr), and for the bus paths Redis and
RabbitMQ (TELEGRAPHY_TEST_REDIS / TELEGRAPHY_TEST_AMQP, defaults on 127.0.0.1).
The figures and the command that reproduces them are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BASELINE = HERE / "baseline.json"
DEFAULT_BIN = ROOT / "target" / "release" / "telegraphy-instr"
# A change that adds more than this to a path fails the check.
TOLERANCE = 0.05
# The goal for the fan-out: at most this many times the ceiling's cost.
CEILING_GOAL = 1.5

REDIS = os.environ.get("TELEGRAPHY_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("TELEGRAPHY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")


def path(name, unit, argv, sizes, per):
    """A hot path: `argv(size)` runs it; `per(size)` units happen at `size`."""
    return {"name": name, "unit": unit, "argv": argv, "sizes": sizes, "per": per}


def fanout(kind, subscribers, ser, sizes):
    return path(
        f"fanout-{kind}-{subscribers // 1000}k-{ser}",
        "delivery",
        lambda n: [f"fanout-{kind}", "--subscribers", str(subscribers), "--ser", ser, "--events", str(n)],
        sizes,
        lambda n: n * subscribers,
    )


PATHS = [
    fanout("gateway", 1000, "json", (10, 50)),
    fanout("ceiling", 1000, "json", (10, 50)),
    fanout("gateway", 1000, "msgpack", (10, 50)),
    fanout("ceiling", 1000, "msgpack", (10, 50)),
    fanout("gateway", 10000, "json", (2, 12)),
    fanout("ceiling", 10000, "json", (2, 12)),
    fanout("gateway", 10000, "msgpack", (2, 12)),
    fanout("ceiling", 10000, "msgpack", (2, 12)),
    # Small fan-outs (<= 128 local sessions) are written once per session per
    # dispatcher batch: 100 subscribers, 16 events per batch.
    path(
        "fanout-gateway-100-batch16-json",
        "delivery",
        lambda n: ["fanout-gateway", "--subscribers", "100", "--ser", "json", "--events", str(n), "--batch", "16"],
        (64, 192),
        lambda n: n * 100,
    ),
    # A large fan-out when the dispatcher takes 16 events per batch from
    # the bus (a busy node): each session's share is one write per batch.
    path(
        "fanout-gateway-1k-batch16-json",
        "delivery",
        lambda n: ["fanout-gateway", "--subscribers", "1000", "--ser", "json", "--events", str(n), "--batch", "16"],
        (16, 48),
        lambda n: n * 1000,
    ),
    path("decode-json", "message", lambda n: ["decode", "--ser", "json", "--messages", str(n)], (3000, 9000), lambda n: n),
    path("decode-msgpack", "message", lambda n: ["decode", "--ser", "msgpack", "--messages", str(n)], (3000, 9000), lambda n: n),
    path("session-setup-jwt", "session", lambda n: ["session-setup", "--sessions", str(n)], (20, 60), lambda n: n),
    # One remote procedure call on one node: CALL, INVOCATION, YIELD, RESULT.
    path("call-json", "call", lambda n: ["call", "--ser", "json", "--calls", str(n)], (1000, 3000), lambda n: n),
    path("call-msgpack", "call", lambda n: ["call", "--ser", "msgpack", "--calls", str(n)], (1000, 3000), lambda n: n),
    path("bus-redis", "event", lambda n: ["bus-redis", "--url", REDIS, "--events", str(n)], (500, 1500), lambda n: n),
    path("bus-amqp", "event", lambda n: ["bus-amqp", "--url", AMQP, "--events", str(n)], (500, 1500), lambda n: n),
    path("bus-ceiling-redis", "event", lambda n: ["bus-ceiling-redis", "--url", REDIS, "--events", str(n)], (500, 1500), lambda n: n),
    path("bus-ceiling-amqp", "event", lambda n: ["bus-ceiling-amqp", "--url", AMQP, "--events", str(n)], (500, 1500), lambda n: n),
]


def count(binary: Path, argv: list[str]) -> int:
    """Instructions the workload executes (user space, this process only)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out", str(binary), *argv]
        env = dict(os.environ, TELEGRAPHY_INSTR_EXE=str(binary))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"instructions: `{' '.join(argv)}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
        found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
        if not found:
            raise SystemExit(f"instructions: no count from callgrind for `{' '.join(argv)}`:\n{done.stderr[-2000:]}")
        return int(found.group(1))


def measure(binary: Path, p) -> float:
    a, b = p["sizes"]
    ia, ib = count(binary, p["argv"](a)), count(binary, p["argv"](b))
    return (ib - ia) / (p["per"](b) - p["per"](a))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("TELEGRAPHY_INSTR_BIN", DEFAULT_BIN)))
    ap.add_argument("--update", action="store_true", help="write the figures as the new baseline")
    ap.add_argument("--repeat", type=int, default=1, help="run each path this many times (reports the spread)")
    ap.add_argument("--only", default="", help="only paths whose name contains this")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not args.bin.exists():
        print(f"instructions: {args.bin} does not exist; build it: cargo build --release -p telegraphy-bench --bin telegraphy-instr",
              file=sys.stderr)
        return 2
    baseline = json.loads(BASELINE.read_text())["paths"] if BASELINE.exists() else {}
    figures: dict[str, float] = {}
    spreads: dict[str, float] = {}
    for p in PATHS:
        if args.only not in p["name"]:
            continue
        runs = [measure(args.bin, p) for _ in range(args.repeat)]
        base = baseline.get(p["name"])
        if len(runs) < 3 and base and sorted(runs)[len(runs) // 2] > base * (1 + TOLERANCE):
            # Over budget: measured again before it fails (the runs of a
            # path differ by under 1%; a real slowdown stays over in all
            # three).
            runs += [measure(args.bin, p) for _ in range(3 - len(runs))]
        figures[p["name"]] = sorted(runs)[len(runs) // 2]
        spreads[p["name"]] = (max(runs) - min(runs)) / min(runs) if min(runs) > 0 else 0.0
        print(f"  {p['name']:<28} {figures[p['name']]:>12,.1f} instructions per {p['unit']}", flush=True)

    failures = []
    print(f"\n{'path':<28} {'now':>12} {'baseline':>12} {'change':>8}" + ("   spread" if args.repeat > 1 else ""))
    for name, now in figures.items():
        base = baseline.get(name)
        change = (now / base - 1) if base else None
        line = f"{name:<28} {now:>12,.1f} {base if base is not None else float('nan'):>12,.1f} "
        line += f"{change:>+7.1%}" if change is not None else "     new"
        if args.repeat > 1:
            line += f"   {spreads[name]:.2%}"
        if change is not None and change > TOLERANCE:
            line += "   OVER BUDGET"
            failures.append(f"{name}: {base:,.1f} -> {now:,.1f} instructions ({change:+.1%}, budget +{TOLERANCE:.0%})")
        print(line)

    # The bus paths against the bare client libraries.
    for bus in ("redis", "amqp"):
        mine, bare = figures.get(f"bus-{bus}"), figures.get(f"bus-ceiling-{bus}")
        if mine and bare:
            print(f"bus-{bus}: {mine / bare:.2f}x the bare client's instructions per event consumed")
    # The fan-out against the ceiling.
    for key in [k for k in figures if k.startswith("fanout-gateway-")]:
        ceiling = figures.get(key.replace("gateway", "ceiling"))
        if ceiling:
            ratio = figures[key] / ceiling
            goal = "  (goal <= 1.5x at 1k)" if "-1k-" in key else ""
            print(f"{key}: {ratio:.2f}x the ceiling's instructions per delivery{goal}")

    if args.json:
        args.json.write_text(json.dumps({"paths": figures, "spread": spreads}, indent=2) + "\n")
    if args.update:
        merged = dict(baseline, **figures)
        BASELINE.write_text(json.dumps({
            "about": "instructions per unit for each hot path, release build; written by bench/instructions/run.py --update",
            "tolerance": TOLERANCE,
            "paths": {k: round(v, 1) for k, v in sorted(merged.items())},
        }, indent=2) + "\n")
        print(f"\nbaseline written: {BASELINE.relative_to(ROOT)}")
        return 0
    if failures:
        print("\ninstruction budget exceeded (a hot path got more than 5% more expensive):", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        print("If the cost is intended (a feature that pays for itself), say so in the commit and run "
              "bench/instructions/run.py --update.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
