#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the
# interoperability tests with third-party WAMP clients (AutobahnJS under
# Node, AutobahnPython) against a real gateway binary. Installs the Node and
# Python test dependencies itself (tests/interop/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building the workspace"
cargo build --workspace --all-targets --locked

echo "==> Rust tests"
cargo test --workspace --locked

echo "==> interoperability tests (AutobahnJS, AutobahnPython)"
TELEGRAPHY_GATEWAY_BIN="$PWD/target/debug/telegraphy-gateway" bash tests/interop/run.sh
