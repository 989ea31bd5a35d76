#!/usr/bin/env bash
# Runs the third-party client interop suites (AutobahnJS via `node --test`,
# AutobahnPython via pytest) against an already-built telegraphy-gateway.
# Idempotent: installs the Python venv and npm packages as needed. Never builds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export TELEGRAPHY_GATEWAY_BIN="${TELEGRAPHY_GATEWAY_BIN:-$root/target/debug/telegraphy-gateway}"

if [[ ! -x "$TELEGRAPHY_GATEWAY_BIN" ]]; then
  echo "interop: gateway binary not found or not executable: $TELEGRAPHY_GATEWAY_BIN" >&2
  echo "interop: build it first (cargo build) or set TELEGRAPHY_GATEWAY_BIN" >&2
  exit 2
fi

# Python: venv + pinned requirements.
venv="$here/python/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/python/requirements.txt"

# JavaScript: locked install.
cd "$here/js"
if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

status=0
echo "== interop: AutobahnJS (node --test) =="
(cd "$here/js" && node --test) || status=1
echo "== interop: AutobahnPython (pytest) =="
(cd "$here/python" && "$venv/bin/python" -m pytest -q) || status=1

if [[ $status -ne 0 ]]; then
  echo "interop: FAILED" >&2
else
  echo "interop: all suites passed"
fi
exit "$status"
