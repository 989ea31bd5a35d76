#!/usr/bin/env bash
# Tests of the Python package, the Django app and the example site:
#   python/tests               publisher (shared envelope vectors, HTTP, Redis, RabbitMQ,
#                              outages), Django app (model events, tokens, checks, template
#                              tags, buses, management command) against real gateways;
#                              tokens without Django; examples/flask and examples/fastapi
#                              (tests/test_examples_web.py) and a new Django project made
#                              by following docs/django.md (tests/test_guide_django.py),
#                              both in headless Chromium
#   examples/taskboard/tests   the task board in headless Chromium (Playwright)
#
# Idempotent: makes python/.venv, installs the package (editable, with every extra)
# and the pinned test dependencies. Never builds the gateway and never downloads a
# browser: it needs target/debug/telegraphy-gateway (or TELEGRAPHY_GATEWAY_BIN),
# Redis on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672 (scripts/services.sh), and
# Debian's chromium (installed here when missing, as scripts/test.sh does).
# Set TELEGRAPHY_TEST_DJANGO=4.2 to run against another Django release.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export TELEGRAPHY_GATEWAY_BIN="${TELEGRAPHY_GATEWAY_BIN:-$root/target/debug/telegraphy-gateway}"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if [[ ! -x "$TELEGRAPHY_GATEWAY_BIN" ]]; then
  echo "python tests: gateway binary not found: $TELEGRAPHY_GATEWAY_BIN" >&2
  echo "python tests: build it (cargo build -p telegraphy-gateway) or set TELEGRAPHY_GATEWAY_BIN" >&2
  exit 2
fi
for port in 6379 5672; do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "python tests: nothing listens on 127.0.0.1:$port; run scripts/services.sh (Redis, RabbitMQ)" >&2
    exit 2
  fi
done
if [[ ! -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ]]; then
  echo "python tests: installing Debian's chromium for the browser tests"
  sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "python tests: $python is older than 3.11" >&2
  exit 2
fi
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r "$here/requirements-test.txt" -e "$here[django,redis,amqp]"
if [[ -n "${TELEGRAPHY_TEST_DJANGO:-}" ]]; then
  "${pip[@]}" "Django~=${TELEGRAPHY_TEST_DJANGO}.0"
fi
"$venv/bin/python" -c 'import django; print(f"python tests: Django {django.get_version()}")'

status=0
echo "== python/tests (package and Django app) =="
(cd "$here" && "$venv/bin/python" -m pytest -q -rs) || status=1
echo "== examples/taskboard/tests (headless Chromium) =="
(cd "$root/examples/taskboard" && "$venv/bin/python" -m pytest -q -rs) || status=1

if [[ $status -ne 0 ]]; then
  echo "python tests: FAILED" >&2
else
  echo "python tests: all suites passed"
fi
exit "$status"
