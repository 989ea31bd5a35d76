#!/usr/bin/env bash
# The measurements behind docs/benchmarks.md, in one go (about 55 minutes).
#
#   cargo build --release -p telegraphy-gateway -p telegraphy-publish -p telegraphy-bench
#   bench/crossbar/crossbar.sh setup        # once
#   bench/run-all.sh [RESULTS_DIR] [PHASE...]
#
# Phases: fanout window latency many-topics storm idle cluster (default: all),
# and the scale figures (not in the default set; about 25 minutes together):
#   scale      100,000 JWT sessions over 6 nodes on Redis, steady 1,000
#              events/s, then every node restarted (telegraphy-bench scale)
#   bus-path   one node consuming 10,000 topics from Redis / RabbitMQ vs
#              the broker alone (telegraphy-bench bus-ceiling)
#   curve-subscribers  deliveries/s and CPU per delivery, 10 → 10,000 subscribers
#   curve-sessions     RSS vs sessions, 1,000 → 100,000 over 6 nodes
#   curve-nodes        latency vs nodes (1 → 5) on Redis and RabbitMQ
# bench/curves.sh RESULTS_DIR draws the curves (PNG) from these phases' lines.
# Each run appends JSON lines to RESULTS_DIR/<phase>.jsonl; bench/plot.py
# turns them into the report's figures. Never run two benchmarks at once,
# and nothing else heavy (fuzzers, builds) meanwhile: 2 cores are shared by
# the router and the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
shift || true
phases=("$@")
[[ ${#phases[@]} -eq 0 ]] && phases=(fanout window latency many-topics storm idle cluster)
mkdir -p "$out"
B=target/release/telegraphy-bench
CB=bench/crossbar/crossbar.sh
CB_PORT=8090
RUNS="${RUNS:-3}"
DUR="${DUR:-10}"

if pgrep -f 'fuzz/target|cargo-fuzz|fuzz run' >/dev/null; then
  echo "fuzzers are running; benchmarks would measure them. Wait until they end." >&2
  exit 1
fi

ceiling_at() { # ceiling_at ARGS... : a scenario against a running telegraphy-ceiling
  local port=8097
  target/release/telegraphy-ceiling --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  local pid=$!
  sleep 0.5
  "$B" "$@" --target "ws://127.0.0.1:$port/ws" --attach-pid "$pid" --label ceiling || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

crossbar() { # crossbar ARGS... : the same scenario against Crossbar.io
  "$CB" start "$CB_PORT" >/dev/null
  local pid
  pid="$("$CB" pid)"
  "$B" "$@" --target "ws://127.0.0.1:$CB_PORT/ws" --attach-pid "$pid" --label crossbar || true
  "$CB" stop
}

for phase in "${phases[@]}"; do
  j="$out/$phase.jsonl"
  echo "=== $phase ($(date -u +%FT%TZ)) → $j"
  case "$phase" in
    fanout)
      for n in 1000 10000; do
        "$B" fanout  -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"
        "$B" ceiling -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"
        crossbar fanout -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"
      done
      "$B" fanout -n 1000 --serializer msgpack --duration "$DUR" --runs "$RUNS" --json "$j"
      ;;
    window)
      # Max mode with more events in flight (the default window is ~65 at
      # 1,000 subscribers): routers that coalesce queued events into fewer
      # writes gain, a router pinned at one core does not.
      for w in 260 1000; do
        "$B" fanout  -n 1000 --window "$w" --duration "$DUR" --runs "$RUNS" --json "$j" --note "window $w"
        "$B" ceiling -n 1000 --window "$w" --duration "$DUR" --runs "$RUNS" --json "$j" --note "window $w"
        crossbar fanout -n 1000 --window "$w" --duration "$DUR" --runs "$RUNS" --json "$j" --note "window $w"
      done
      ;;
    latency)
      # A steady load Crossbar.io can carry: 1,000 subscribers, 20 events/s.
      "$B" fanout  -n 1000 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      "$B" ceiling -n 1000 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      crossbar fanout -n 1000 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      # 10,000 subscribers and 20 events/s on one topic (200k deliveries/s).
      "$B" fanout  -n 10000 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      "$B" ceiling -n 10000 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      # 10,000 subscribers on 100 topics, 1,000 events/s (100k deliveries/s), one node.
      "$B" fanout  -n 10000 --topics 100 --rate 1000 --duration "$DUR" --runs "$RUNS" --json "$j"
      "$B" ceiling -n 10000 --topics 100 --rate 1000 --duration "$DUR" --runs "$RUNS" --json "$j"
      ;;
    many-topics)
      "$B" many-topics -n 10000 --duration "$DUR" --runs "$RUNS" --json "$j"
      "$B" ceiling -n 10000 --topics 10000 --duration "$DUR" --runs "$RUNS" --json "$j"
      crossbar many-topics -n 10000 --duration "$DUR" --runs "$RUNS" --json "$j"
      ;;
    storm)
      "$B" connect-storm -n 10000 --runs "$RUNS" --json "$j"
      "$B" connect-storm -n 10000 --auth jwt --subscribe --runs "$RUNS" --json "$j"
      # The bare program: TCP accept, WebSocket upgrade, HELLO → WELCOME, nothing else.
      for r in $(seq "$RUNS"); do ceiling_at connect-storm -n 10000 --auth anonymous --json "$j"; done
      crossbar connect-storm -n 3000 --runs "$RUNS" --json "$j"
      ;;
    idle)
      # 19,500 sessions: the open-files hard limit here is 20,000 per process.
      "$B" idle -n 19500 --runs "$RUNS" --json "$j"
      crossbar idle -n 10000 --auth anonymous --runs 1 --json "$j"
      ;;
    cluster)
      for bus in redis amqp; do
        # 10,000 subscribers, 1,000 events/s: 1, 10 or 100 subscribers per event.
        for topics in 10000 1000 100; do
          "$B" cluster --bus "$bus" --nodes 2 -n 10000 --topics "$topics" --rate 1000 --duration "$DUR" --runs "$RUNS" --json "$j"
        done
        "$B" cluster --bus "$bus" --nodes 3 -n 10000 --topics 1000 --rate 1000 --duration "$DUR" --runs 1 --json "$j"
        "$B" cluster --bus "$bus" --nodes 2 -n 10000 --topics 1 --rate 20 --duration "$DUR" --runs "$RUNS" --json "$j"
      done
      ;;
    scale)
      "$B" scale -n 100000 --nodes 6 --topics 1000 --rate 1000 --duration 30 --after-restart 20 --json "$j"
      ;;
    bus-path)
      for bus in redis amqp; do
        "$B" many-topics -n 10000 --bus "$bus" --publish "$bus" --duration "$DUR" --runs "$RUNS" --json "$j"
        "$B" bus-ceiling -n 10000 --bus "$bus" --duration "$DUR" --runs "$RUNS" --json "$j"
      done
      ;;
    curve-subscribers)
      for n in 10 100 1000 10000; do
        "$B" fanout  -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"
        "$B" ceiling -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"
        if [[ -x bench/crossbar/venv/bin/crossbar ]]; then crossbar fanout -n "$n" --duration "$DUR" --runs "$RUNS" --json "$j"; fi
      done
      ;;
    curve-sessions)
      for n in 1000 10000 30000 60000 100000; do
        "$B" scale -n "$n" --nodes 6 --topics 1000 --rate 1000 --duration "$DUR" --no-restart --json "$j"
      done
      ;;
    curve-nodes)
      for bus in redis amqp; do
        for k in 1 2 3 4 5; do
          "$B" cluster --bus "$bus" --nodes "$k" -n 5000 --topics 100 --rate 1000 --duration "$DUR" --runs "$RUNS" --json "$j"
        done
      done
      ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
echo "=== done ($(date -u +%FT%TZ))"
