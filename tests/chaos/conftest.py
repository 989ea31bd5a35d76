"""Fixtures of the chaos suite: private brokers, gateways, subscribers and the
results file. Everything a test starts is stopped by PID at its end, pass or
fail; `procs` kills whatever is left at exit."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import procs  # noqa: E402
from brokers import RabbitNode, RedisServer  # noqa: E402
from gateway import Gateway, ReadyPoller, gateway_bin, publish_bin  # noqa: E402
from wampclient import Reactor  # noqa: E402

HERE = Path(__file__).parent
RESULTS: dict = {}
_T_START = time.monotonic()


def pytest_configure(config):
    procs.install_safety_net()
    RESULTS.clear()
    RESULTS["_run"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gateway_bin": gateway_bin(),
        "publish_bin": publish_bin(),
        "outcomes": {},
    }
    for b in (gateway_bin(), publish_bin()):
        if not os.access(b, os.X_OK):
            raise pytest.UsageError(f"{b} is not an executable; set TELEGRAPHY_GATEWAY_BIN / TELEGRAPHY_PUBLISH_BIN")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        entry = {"outcome": rep.outcome, "seconds": round(rep.duration, 2)}
        if rep.outcome == "failed":
            msg = str(rep.longrepr.reprcrash.message) if hasattr(rep.longrepr, "reprcrash") else str(rep.longrepr)
            entry["failure"] = msg[:1500]
        RESULTS["_run"]["outcomes"][item.nodeid] = entry


def pytest_sessionfinish(session, exitstatus):
    leftover = procs.cleanup_all()
    RESULTS["_run"]["seconds"] = round(time.monotonic() - _T_START, 1)
    RESULTS["_run"]["leftover_processes_killed_at_end"] = leftover
    path = Path(os.environ.get("CHAOS_RESULTS", HERE / "results.json"))
    path.write_text(json.dumps(RESULTS, indent=2, sort_keys=True, default=str) + "\n")


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.section("chaos figures (also in results.json)")
    for name, figures in RESULTS.items():
        if name == "_run":
            continue
        tr.write_line(f"{name}: {json.dumps(figures, default=str, sort_keys=True)}")
    tr.write_line(f"suite seconds: {round(time.monotonic() - _T_START, 1)}")


@pytest.fixture
def record(request):
    """record(**figures): stores figures for this test in results.json and prints them."""
    name = request.node.name
    RESULTS.setdefault(name, {})

    def _record(**figures):
        RESULTS[name].update(figures)
        print(f"[{name}] " + json.dumps(figures, default=str, sort_keys=True))
    return _record


@pytest.fixture
def uid():
    return secrets.token_hex(4)


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="telegraphy-chaos-"))
    yield d
    if os.environ.get("CHAOS_KEEP_LOGS"):
        print(f"logs kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def redis_factory(workdir):
    made: list[RedisServer] = []

    def make(**kw) -> RedisServer:
        r = RedisServer(workdir, **kw)
        made.append(r)
        r.start()
        return r
    yield make
    for r in made:
        r.stop()


@pytest.fixture
def rabbit_factory(workdir):
    made: list[RabbitNode] = []

    def make(**kw) -> RabbitNode:
        d = workdir / f"rabbit{len(made)}"
        d.mkdir()
        n = RabbitNode(d, **kw)
        made.append(n)
        n.start()
        return n
    yield make
    for n in made:
        n.stop()


@pytest.fixture(scope="session")
def shared_rabbit():
    """One private RabbitMQ node for the tests that do not kill it (each uses its own exchange)."""
    d = Path(tempfile.mkdtemp(prefix="telegraphy-chaos-rabbit-"))
    n = RabbitNode(d)
    try:
        n.start()
        yield n
    finally:
        n.stop()
        if not os.environ.get("CHAOS_KEEP_LOGS"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gateway_factory(workdir):
    made: list[Gateway] = []

    def make(name: str, bus: str, start_ready: bool = True, **kw) -> Gateway:
        """A started gateway; with start_ready=False, once its admin port answers (ready or not)."""
        g = Gateway(name, workdir, bus, **kw)
        made.append(g)
        g.start(ready=start_ready)
        return g
    yield make
    for g in made:
        g.stop()
    if os.environ.get("CHAOS_SHOW_GATEWAY_LOGS"):
        for g in made:
            print(f"--- {g.log} ---\n{g.log.read_text()[-4000:]}")


@pytest.fixture
def reactor():
    r = Reactor()
    yield r
    r.stop()


@pytest.fixture
def poller_factory():
    made: list[ReadyPoller] = []

    def make(gw: Gateway) -> ReadyPoller:
        p = ReadyPoller(gw)
        made.append(p)
        p.start()
        return p
    yield make
    for p in made:
        p.stop()


@pytest.fixture
def bg(gateway_factory, reactor, poller_factory):
    """Background publishers (anything with .stop()) of a test: stopped first at
    teardown, before the gateways, subscribers and pollers they depend on."""
    threads: list = []
    yield threads
    for t in threads:
        try:
            t.stop()
        except Exception:  # noqa: BLE001
            pass
