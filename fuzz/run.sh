#!/usr/bin/env bash
# Runs fuzz targets one after the other for SECONDS each (default 600).
#   fuzz/run.sh 600 wamp_json wamp_msgpack
# Uses the stable toolchain with RUSTC_BOOTSTRAP=1 for cargo-fuzz's flags
# (fuzzing only, never the product build). New inputs go to corpus/TARGET,
# crashes to artifacts/TARGET; committed seeds live in seeds/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(wamp_json wamp_msgpack envelope publish_body ticket)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
