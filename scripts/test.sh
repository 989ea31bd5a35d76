#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (gateway nodes on the
# real Redis and RabbitMQ, the telegraphy-publish binary), the fault-injection
# suite (private Redis and RabbitMQ instances killed and restarted, nodes
# killed and drained, stalled readers, floods), the instruction budgets of
# the hot paths (callgrind, release build), the shared envelope
# vectors checked by an independent msgpack implementation, the
# interoperability tests with third-party WAMP clients (AutobahnJS under
# Node, AutobahnPython), the Python package with its Django app and the
# example site (pytest-django, real gateways, headless Chromium), the JS
# client (node --test against real gateways), the Node.js server package, the operations suite (Helm chart rendered and
# validated, dashboard and alert queries against a real Prometheus) and the
# headless-browser tests.
# Installs and starts what the tests need: Redis and RabbitMQ, Node and
# Python test dependencies, Debian's prometheus (promtool), valgrind and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> brokers (Redis, RabbitMQ)"
bash scripts/services.sh

echo "==> Rust formatting (rustfmt.toml; fix with: cargo fmt --all)"
if rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || command -v rustfmt >/dev/null; then
  cargo fmt --all --check
else
  echo "rustfmt is not installed here (rustup component add rustfmt); skipping the format check"
fi

echo "==> building the workspace"
cargo build --workspace --all-targets --locked

echo "==> Rust tests"
cargo test --workspace --locked

export TELEGRAPHY_GATEWAY_BIN="$PWD/target/debug/telegraphy-gateway"

echo "==> instruction budgets (valgrind's callgrind; bench/instructions, docs/benchmarks.md)"
if ! command -v valgrind >/dev/null; then
  echo "installing Debian's valgrind for the instruction counts"
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release --locked -p telegraphy-bench --bin telegraphy-instr
python3 bench/instructions/run.py

echo "==> fault-injection suite (tests/chaos: private brokers killed and restarted, a RabbitMQ cluster losing a broker, nodes killed and drained, slow readers, floods, HAProxy in front, TLS brokers)"
bash tests/chaos/run.sh -q

echo "==> interoperability tests (AutobahnJS, AutobahnPython)"
bash tests/interop/run.sh

echo "==> envelope vectors, checked with Python's msgpack"
tests/interop/python/.venv/bin/python tests/vectors/check_vectors.py

echo "==> JS client (node --test against real gateways)"
(cd js && npm ci --no-audit --no-fund --loglevel=error && node --test)

echo "==> Node.js server package (node/run-tests.sh: HTTP, Redis and RabbitMQ publishing, tokens, the Express example)"
bash node/run-tests.sh

echo "==> Python package, Django app, example site (python/run-tests.sh)"
bash python/run-tests.sh

echo "==> operations: Helm chart, dashboard, alert rules, Dockerfile (tests/ops)"
bash tests/ops/run.sh

echo "==> browser tests (headless Chromium)"
if [[ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]]; then
  echo "installing Debian's chromium for the browser tests"
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node --test)
