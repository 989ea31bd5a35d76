#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, the interoperability
# tests with third-party WAMP clients (AutobahnJS under Node, AutobahnPython)
# and the headless-browser test of the demo page, all against real gateways.
# Installs what the tests need: Node and Python test dependencies, and
# Debian's Chromium when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building the workspace"
cargo build --workspace --all-targets --locked

echo "==> Rust tests"
cargo test --workspace --locked

export TELEGRAPHY_GATEWAY_BIN="$PWD/target/debug/telegraphy-gateway"

echo "==> interoperability tests (AutobahnJS, AutobahnPython)"
bash tests/interop/run.sh

echo "==> browser tests (headless Chromium)"
if [[ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]]; then
  echo "installing Debian's chromium for the browser tests"
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node --test)
