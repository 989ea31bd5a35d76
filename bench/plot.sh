#!/usr/bin/env bash
# Makes the report's figures: a venv with matplotlib under bench/.venv, then
# bench/plot.py RESULTS_DIR OUT_DIR (prints the Markdown tables too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -x "$here/.venv/bin/python" ]]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet matplotlib
fi
"$here/.venv/bin/python" "$here/plot.py" "${1:-$here/results/final}" "${2:-$here/../docs/img}"
