#!/usr/bin/env bash
# Runs the tests of the Node.js server package (@telegraphy/server):
# envelope vectors, tokens, publishing over HTTP, Redis and RabbitMQ to a
# real gateway, and the Express example.
#
#   node/run-tests.sh [test files...]
#
# Needs Node >= 20 and npm, the gateway binary (TELEGRAPHY_GATEWAY_BIN,
# default ../target/debug/telegraphy-gateway; this script never builds it),
# Redis (TELEGRAPHY_TEST_REDIS, default redis://127.0.0.1:6379/0) and
# RabbitMQ (TELEGRAPHY_TEST_AMQP, default amqp://guest:guest@127.0.0.1:5672/%2f).
# Tests use their own key prefixes and exchanges (deleted afterwards) and
# stop every gateway they start. Exits non-zero when a test fails.
set -euo pipefail
# A TELEGRAPHY_GATEWAY_BIN given relative is relative to where you run this.
if [ -n "${TELEGRAPHY_GATEWAY_BIN:-}" ]; then
  TELEGRAPHY_GATEWAY_BIN="$(realpath -m "$TELEGRAPHY_GATEWAY_BIN")"
fi
cd "$(dirname "$0")"

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "node/run-tests.sh: Node.js 20 or newer is needed (found $(node --version))" >&2
  exit 1
fi

export TELEGRAPHY_GATEWAY_BIN="$(realpath -m "${TELEGRAPHY_GATEWAY_BIN:-../target/debug/telegraphy-gateway}")"
if [ ! -x "$TELEGRAPHY_GATEWAY_BIN" ]; then
  echo "node/run-tests.sh: no gateway binary at $TELEGRAPHY_GATEWAY_BIN; build it (cargo build -p telegraphy-gateway) or set TELEGRAPHY_GATEWAY_BIN" >&2
  exit 1
fi

# Install exactly what package-lock.json says (skipped when already done).
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.telegraphy-installed-lock; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.telegraphy-installed-lock
fi

if [ "$#" -eq 0 ]; then
  set -- test/*.test.js
fi
# One file at a time: each starts its own gateways; a 2-core machine is happier.
exec node --test --test-concurrency=1 --test-timeout=120000 "$@"
