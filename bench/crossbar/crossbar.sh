#!/usr/bin/env bash
# Crossbar.io, the peer router for the benchmarks, in its own virtualenv.
#
#   bench/crossbar/crossbar.sh setup          # venv + `pip install crossbar` (~3 min, once)
#   bench/crossbar/crossbar.sh start [PORT]   # writes the node config, starts it, waits until it answers
#   bench/crossbar/crossbar.sh stop           # SIGTERM, waits for the exit
#   bench/crossbar/crossbar.sh pid            # the router worker's pid (for RSS/CPU sampling)
#   bench/crossbar/crossbar.sh run PORT -- telegraphy-bench ARGS...
#                                             # start, run the bench against it, stop
#
# The node: one router worker, realm `realm1`, an anonymous role allowed
# everything, a WebSocket transport on 127.0.0.1:PORT path `ws`, serializers
# json and msgpack. Crossbar runs a controller process and a router worker
# process; the worker is the one that routes, so RSS/CPU are sampled there.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${CROSSBAR_VENV:-$here/venv}"
node="${CROSSBAR_NODE:-$here/node}"
port="${2:-8090}"

setup() {
  if [[ -x "$venv/bin/crossbar" ]]; then
    return 0
  fi
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # numpy<2: autobahn's bjdata extension is built against NumPy 1 and
  # prints an import traceback (and loses UBJSON) under NumPy 2.
  "$venv/bin/pip" install --quiet crossbar 'numpy<2'
  "$venv/bin/crossbar" version >/dev/null 2>&1 || "$venv/bin/crossbar" version
}

config() {
  mkdir -p "$node/.crossbar"
  cat >"$node/.crossbar/config.json" <<JSON
{
  "version": 2,
  "controller": {},
  "workers": [
    {
      "type": "router",
      "realms": [
        {
          "name": "realm1",
          "roles": [
            {
              "name": "anonymous",
              "permissions": [
                {
                  "uri": "",
                  "match": "prefix",
                  "allow": {"call": true, "register": true, "publish": true, "subscribe": true},
                  "disclose": {"caller": false, "publisher": false},
                  "cache": true
                }
              ]
            }
          ]
        }
      ],
      "transports": [
        {
          "type": "websocket",
          "endpoint": {"type": "tcp", "interface": "127.0.0.1", "port": $port, "backlog": 4096},
          "url": "ws://127.0.0.1:$port/ws",
          "serializers": ["json", "msgpack"],
          "options": {"auto_ping_interval": 0, "open_handshake_timeout": 60000, "close_handshake_timeout": 5000}
        }
      ]
    }
  ]
}
JSON
}

start() {
  setup
  stop >/dev/null 2>&1 || true
  config
  (cd "$node" && exec "$venv/bin/crossbar" start --cbdir "$node/.crossbar" --loglevel warn >"$node/crossbar.log" 2>&1 </dev/null) &
  echo $! >"$node/controller.pid"
  for _ in $(seq 1 120); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "crossbar listening on ws://127.0.0.1:$port/ws (controller pid $(cat "$node/controller.pid"), router pid $(worker_pid))"
      return 0
    fi
    sleep 0.5
  done
  echo "crossbar did not start; see $node/crossbar.log" >&2
  tail -20 "$node/crossbar.log" >&2
  return 1
}

worker_pid() {
  local c
  c="$(cat "$node/controller.pid")"
  # The router worker is a child of the controller running the worker module.
  for p in $(pgrep -P "$c"); do
    if tr '\0' ' ' <"/proc/$p/cmdline" | grep -q 'worker'; then echo "$p"; return 0; fi
  done
  pgrep -P "$c" | head -1
}

stop() {
  [[ -f "$node/controller.pid" ]] || return 0
  local c
  c="$(cat "$node/controller.pid")"
  if kill -0 "$c" 2>/dev/null; then
    kill -TERM "$c"
    for _ in $(seq 1 40); do kill -0 "$c" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$c" 2>/dev/null && kill -KILL "$c"
  fi
  rm -f "$node/controller.pid"
}

case "${1:-}" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  pid) worker_pid ;;
  run)
    shift 2 || true
    [[ "${1:-}" == "--" ]] && shift
    start
    trap stop EXIT
    "$@" --target "ws://127.0.0.1:$port/ws" --attach-pid "$(worker_pid)"
    ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
