#!/usr/bin/env bash
# Draws how cost grows (PNG) and prints the Markdown tables, from the JSON
# lines that bench/run-all.sh RESULTS_DIR scale bus-path curve-subscribers
# curve-sessions curve-nodes wrote: a venv with matplotlib under bench/.venv,
# then bench/curves.py RESULTS_DIR OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -x "$here/.venv/bin/python" ]]; then
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install --quiet matplotlib
fi
"$here/.venv/bin/python" "$here/curves.py" "${1:-$here/results/curves}" "${2:-$here/../docs/img}"
