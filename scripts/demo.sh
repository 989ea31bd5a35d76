#!/usr/bin/env bash
# The task board example, live, with one command:
#   builds the gateway (cargo build -p telegraphy-gateway; skipped when
#   TELEGRAPHY_GATEWAY_BIN names a built binary), makes a virtualenv in
#   examples/taskboard/.venv with the telegraphy package (./python[django]) and
#   the example's requirements, migrates the SQLite database (which creates the
#   demo users), then runs the gateway (embedded memory bus, through
#   `manage.py telegraphy_gateway`) and Django's runserver on 127.0.0.1, and
#   stops both on Ctrl-C.
# Needs Rust, Python 3.11+ (with venv) and nothing else: no Redis, no RabbitMQ.
# Ports: TASKBOARD_PORT (8000), TASKBOARD_GATEWAY_PORT (8080), TASKBOARD_ADMIN_PORT (8081; not 9090,
# which Prometheus uses).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
example="$root/examples/taskboard"
port="${TASKBOARD_PORT:-8000}"
gateway_port="${TASKBOARD_GATEWAY_PORT:-8080}"
admin_port="${TASKBOARD_ADMIN_PORT:-8081}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$gateway_port" "$admin_port"; do
  if busy "$p"; then
    echo "demo: port $p is taken; free it or set TASKBOARD_PORT / TASKBOARD_GATEWAY_PORT / TASKBOARD_ADMIN_PORT" >&2
    exit 1
  fi
done

if [[ -z "${TELEGRAPHY_GATEWAY_BIN:-}" ]]; then
  say "building the gateway (cargo build -p telegraphy-gateway)"
  cargo build -p telegraphy-gateway
  export TELEGRAPHY_GATEWAY_BIN="$root/target/debug/telegraphy-gateway"
fi
[[ -x "$TELEGRAPHY_GATEWAY_BIN" ]] || { echo "demo: $TELEGRAPHY_GATEWAY_BIN is not an executable" >&2; exit 1; }

python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "demo: needs Python 3.11 or newer ($python)" >&2; exit 1; }
venv="$example/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  say "creating $venv"
  "$python" -m venv "$venv" || { echo "demo: python venv failed; on Debian: apt-get install python3-venv" >&2; exit 1; }
fi
say "installing the telegraphy package and the example's requirements"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$root/python[django]" -r "$example/requirements.txt"

# Fresh secrets for this run, shared by Django and the gateway.
export TASKBOARD_SECRET="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))')"
export TASKBOARD_API_KEY="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
export TASKBOARD_GATEWAY_URL="ws://127.0.0.1:$gateway_port/ws"
export TASKBOARD_ORIGINS="http://127.0.0.1:$port,http://localhost:$port"
manage=("$venv/bin/python" "$example/manage.py")

say "migrating the database (creates the demo users)"
"${manage[@]}" migrate -v0

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

say "starting the gateway"
"${manage[@]}" telegraphy_gateway --admin-listen "127.0.0.1:$admin_port" &
pids+=($!)
for _ in $(seq 100); do
  busy "$gateway_port" && break
  sleep 0.1
done
busy "$gateway_port" || { echo "demo: the gateway did not start" >&2; exit 1; }

say "starting Django"
"${manage[@]}" runserver "127.0.0.1:$port" --noreload &
pids+=($!)
for _ in $(seq 100); do
  busy "$port" && break
  sleep 0.1
done

cat <<MSG

  Task board:  http://127.0.0.1:$port/
  Admin:       http://127.0.0.1:$port/admin/
  Sign in as   alice / telegraphy   (staff, team Core)
         or    bob   / telegraphy   (no team: sees only his own tasks)

  Open alice and bob in two browsers (or a private window), then change a task
  in the admin or add one on the board: both pages update live, each with what
  its user may see. Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
