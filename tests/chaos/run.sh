#!/usr/bin/env bash
# Runs the chaos (fault-injection) suite against the gateway and CLI binaries.
#   TELEGRAPHY_GATEWAY_BIN  default: ../../target/debug/telegraphy-gateway
#   TELEGRAPHY_PUBLISH_BIN  default: ../../target/debug/telegraphy-publish
# Extra arguments go to pytest (e.g. -k broker_kill, -x, -v).
# Needs redis-server and rabbitmq-server (Debian packages) installed, and installs
# haproxy if missing; starts
# its own private instances on free ports and never touches the shared ones.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export TELEGRAPHY_GATEWAY_BIN="${TELEGRAPHY_GATEWAY_BIN:-$root/target/debug/telegraphy-gateway}"
export TELEGRAPHY_PUBLISH_BIN="${TELEGRAPHY_PUBLISH_BIN:-$root/target/debug/telegraphy-publish}"
# HAProxy (Debian's package) stands in front of gateways in test_load_balancers.py.
if ! command -v haproxy >/dev/null; then
  echo "run.sh: installing Debian's haproxy for the load-balancer tests"
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq haproxy >/dev/null
fi
for tool in redis-server /usr/lib/rabbitmq/bin/rabbitmq-server haproxy; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found (apt-get install -y redis-server rabbitmq-server)" >&2; exit 2; }
done
if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
fi
if ! cmp -s "$here/requirements.txt" "$here/.venv/.requirements.installed" 2>/dev/null; then
  "$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$here/.venv/.requirements.installed"
fi
cd "$here"
# An exception in a harness thread (publisher, poller) fails the test instead of a warning.
exec "$here/.venv/bin/python" -m pytest -p no:cacheprovider -rA --timeout=300 \
  -W error::pytest.PytestUnhandledThreadExceptionWarning "$@"
