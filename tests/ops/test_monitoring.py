"""Alerts and dashboard against the real thing: promtool checks and unit-tests
the alert rules; a real gateway (configured by the chart's rendered ConfigMap
and Secret, on a real Redis) is driven through WAMP and HTTP, scraped, and
every metric the dashboard and the alerts use must exist; a real Prometheus
scrapes that gateway, loads the alert rules and answers every dashboard query."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import (ALERTS, CHART_ALERTS, DASHBOARD, ROOT, Proc, Rendered, VARIANTS, clean_env, free_port,
                      gateway_bin, http_get, tool, wait_for)

HERE = Path(__file__).resolve().parent
# Prometheus' own series, not scraped from the gateway.
SYNTHETIC = {"up"}
TOPIC = "ops.test.orders"


# --------------------------------------------------------------- static checks


def test_chart_copy_of_alerts_is_identical():
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        "helm/telegraphy/files/alerts.yml differs from deploy/prometheus/alerts.yml: "
        "cp deploy/prometheus/alerts.yml helm/telegraphy/files/alerts.yml")


def test_promtool_check_rules():
    proc = subprocess.run([tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"SUCCESS: \d+ rules found", proc.stdout)


def test_every_alert_has_summary_runbook_and_severity():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    names = [r["alert"] for g in groups for r in g["rules"]]
    assert len(names) == len(set(names))
    for g in groups:
        for rule in g["rules"]:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert len(rule["annotations"]["description"]) > 150, f"{rule['alert']}: the description is the runbook; say what to do"
    # The operations guide has a runbook entry for each alert.
    ops = (ROOT / "docs" / "operations.md").read_text()
    missing = [n for n in names if n not in ops]
    assert not missing, f"docs/operations.md does not mention {missing}"


def test_promtool_unit_tests_of_alert_logic(tmp_path):
    doc = yaml.safe_load(ALERTS.read_text())
    for g in doc["groups"]:
        for rule in g["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(HERE / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = subprocess.run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every alert is exercised by at least one firing case.
    tested = set(re.findall(r"alertname: (\w+)", (HERE / "alerts_test.yml").read_text()))
    assert tested == {r["alert"] for g in doc["groups"] for r in g["rules"]}


# ------------------------------------------------------- expressions we query


def dashboard_panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard_panels(dash) for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b((?:telegraphy|process)_[a-z0-9_]+)\b", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace('=~"$instance"', '=~".*"')


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    ids = [p["id"] for p in dashboard_panels(dash)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard_panels(dash):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {p['title']!r} overlap"
                cells[(x, y)] = p["title"]
    for p in dashboard_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            if "telegraphy_" in t["expr"]:
                assert '$instance' in t["expr"], f"{p['title']}: {t['expr']} ignores the node selector"
    used = set().union(*map(metric_names, dashboard_exprs()))
    # What issue 7 asks the dashboard to show.
    for required in ["telegraphy_sessions", "telegraphy_disconnects_total", "telegraphy_subscriptions", "telegraphy_topics",
                     "telegraphy_events_published_total", "telegraphy_events_delivered_total",
                     "telegraphy_fanout_duration_seconds_bucket", "telegraphy_bus_lag_seconds_bucket",
                     "telegraphy_bus_connected", "telegraphy_bus_reconnects_total", "telegraphy_slow_consumer_closes_total",
                     "telegraphy_protocol_violations_total", "telegraphy_auth_failures_total",
                     "telegraphy_http_publish_errors_total", "process_resident_memory_bytes", "process_cpu_seconds_total"]:
        assert required in used, required
    assert any("sum by (code)" in e and "telegraphy_disconnects_total" in e for e in dashboard_exprs())
    assert any("sum by (reason)" in e and "telegraphy_auth_failures_total" in e for e in dashboard_exprs())
    for q in ("0.5", "0.9", "0.99"):
        assert any(f"histogram_quantile({q}" in e and "fanout_duration_seconds_bucket" in e for e in dashboard_exprs())
        assert any(f"histogram_quantile({q}" in e and "bus_lag_seconds_bucket" in e for e in dashboard_exprs())


# ------------------------------------------------------------ a real gateway


def wamp_session(port: int, exits: contextlib.ExitStack):
    ws = exits.enter_context(connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["wamp.2.json"], open_timeout=10, close_timeout=5))
    ws.send(json.dumps([1, "realm1", {"roles": {"subscriber": {}, "publisher": {}}}]))
    welcome = json.loads(ws.recv(timeout=10))
    assert welcome[0] == 2, f"expected WELCOME, got {welcome}"
    return ws


def publish(port: int, key: str, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/publish", json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def scrape(admin_port: int) -> tuple[set[str], dict[str, str]]:
    status, text = http_get(f"http://127.0.0.1:{admin_port}/metrics")
    assert status == 200
    samples = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
               for line in text.splitlines() if line and not line.startswith("#")}
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    return samples, types


class Stack:
    pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Redis (with a password), a gateway configured by the chart's redis
    variant, and traffic that makes every label-on-first-use series appear."""
    tmp = tmp_path_factory.mktemp("gateway")
    procs: list[Proc] = []
    s = Stack()
    exits = contextlib.ExitStack()
    try:
        r = Rendered(VARIANTS["redis"])
        pod_env = r.pod_env()
        bus = urllib.parse.urlsplit(pod_env["TELEGRAPHY_BUS"])
        s.redis_port = free_port()
        redis = Proc("redis", [tool("redis-server"), "--bind", "127.0.0.1", "--port", str(s.redis_port), "--save", "",
                               "--appendonly", "no", "--requirepass", bus.password])
        procs.append(redis)
        wait_for(lambda: subprocess.run([tool("redis-cli"), "-p", str(s.redis_port), "-a", bus.password, "--no-auth-warning", "ping"],
                                        capture_output=True, text=True, timeout=5).stdout.strip() == "PONG", 20, "redis-server")

        # The ConfigMap's TOML, only the listen addresses moved to free loopback ports.
        s.http_port, s.admin_port = free_port(), free_port()
        toml = r.config_toml()
        toml, n1 = re.subn(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{s.http_port}"', toml)
        toml, n2 = re.subn(r'(?m)^admin_listen = .*$', f'admin_listen = "127.0.0.1:{s.admin_port}"', toml)
        assert n1 == n2 == 1
        cfg = tmp / "telegraphy.toml"
        cfg.write_text(toml)
        env = dict(pod_env)
        env["TELEGRAPHY_BUS"] = pod_env["TELEGRAPHY_BUS"].replace(bus.netloc, f":{bus.password}@127.0.0.1:{s.redis_port}")
        s.api_key = env["TELEGRAPHY_API_KEYS"].split(",")[0]
        printed = subprocess.run([str(gateway_bin()), "--config", str(cfg), "--print-config"], env=clean_env(**env),
                                 capture_output=True, text=True, timeout=30)
        assert printed.returncode == 0, printed.stderr
        if "allow_anonymous" in printed.stdout:
            # Gateways with authentication refuse anonymous sessions unless told.
            env["TELEGRAPHY_AUTH__ALLOW_ANONYMOUS"] = "true"
        gw = Proc("gateway", [str(gateway_bin()), "--config", str(cfg)], env=clean_env(**env))
        procs.append(gw)
        s.gateway = gw
        wait_for(lambda: gw.alive() and http_get(f"http://127.0.0.1:{s.admin_port}/readyz")[0] == 200, 30,
                 "the gateway to be ready", interval=0.2)
        assert http_get(f"http://127.0.0.1:{s.admin_port}/healthz") == (200, "ok") or http_get(f"http://127.0.0.1:{s.admin_port}/healthz")[0] == 200

        # A subscriber gets an event published over HTTP (events, fan-out, bus lag).
        ws = wamp_session(s.http_port, exits)
        ws.send(json.dumps([32, 1, {}, TOPIC]))
        subscribed = json.loads(ws.recv(timeout=10))
        assert subscribed[0] == 33, subscribed
        for i in range(3):
            assert publish(s.http_port, s.api_key, {"topic": TOPIC, "args": [i]}) == 200
            event = json.loads(ws.recv(timeout=10))
            assert event[0] == 36 and event[4] == [i], event
        # Ten sessions follow one topic: the top-topics table names it (a
        # topic needs ten subscribers before it becomes a label).
        for _ in range(10):
            follower = wamp_session(s.http_port, exits)
            follower.send(json.dumps([32, 1, {}, "ops.test.followed"]))
            assert json.loads(follower.recv(timeout=10))[0] == 33
        # A wrong key (HTTP publish error 403 or 401).
        assert publish(s.http_port, "not-the-right-key-000", {"topic": TOPIC}) in (401, 403)
        # Garbage on the bus (decode error), straight into Redis.
        channel = f"telegraphy:realm1:{TOPIC}"
        out = subprocess.run([tool("redis-cli"), "-p", str(s.redis_port), "-a", bus.password, "--no-auth-warning",
                              "publish", channel, "this is not an envelope"], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "1", f"redis PUBLISH reached {out.stdout!r} subscribers"
        # A protocol violation (malformed) ends a session with a close code.
        bad = wamp_session(s.http_port, exits)
        bad.send("{not json")
        with pytest.raises(ConnectionClosed):
            for _ in range(10):
                bad.recv(timeout=10)
        # An upgrade without a WAMP subprotocol is refused.
        conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=10)
        conn.request("GET", "/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert conn.getresponse().status == 400
        conn.close()
        # A clean GOODBYE (close code 1000).
        ws.send(json.dumps([6, {}, "wamp.close.close_realm"]))
        assert json.loads(ws.recv(timeout=10))[0] == 6
        ws.close()

        def counted():
            samples, _ = scrape(s.admin_port)
            return {"telegraphy_disconnects_total", "telegraphy_bus_decode_errors_total"} <= samples
        wait_for(counted, 15, "disconnects and decode errors to be counted")
        s.samples, s.types = scrape(s.admin_port)
        s.procs = procs
        yield s
    finally:
        exits.close()
        for p in reversed(procs):
            p.cleanup()


def pending_metric_allowed(name: str) -> bool:
    """A metric the dashboard shows ahead of the gateway: allowed to be missing
    only while no gateway source defines it yet."""
    sources = "".join(p.read_text() for p in (ROOT / "gateway" / "src").glob("*.rs"))
    return name == "telegraphy_auth_failures_total" and name not in sources


def check_names_exist(exprs: list[str], samples: set[str], types: dict[str, str]):
    missing = []
    for expr in exprs:
        for name in metric_names(expr) - SYNTHETIC:
            if name in samples:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if types.get(name) == "histogram":
                missing.append(f"{name} is a histogram: query {name}_bucket / _sum / _count ({expr})")
            elif base != name and types.get(base) == "histogram":
                missing.append(f"{name}: histogram {base} exports no such series ({expr})")
            elif not pending_metric_allowed(name):
                missing.append(f"{name} ({expr})")
    assert not missing, "metrics not exported by the gateway:\n" + "\n".join(missing)


def test_gateway_exports_every_metric_the_dashboard_uses(stack):
    check_names_exist(dashboard_exprs(), stack.samples, stack.types)


def test_gateway_exports_every_metric_the_alerts_use(stack):
    check_names_exist(alert_exprs(), stack.samples, stack.types)


def test_metric_name_check_can_fail(stack):
    with pytest.raises(AssertionError, match="telegraphy_sesions"):
        check_names_exist(['sum(telegraphy_sesions{instance=~"$instance"})'], stack.samples, stack.types)
    with pytest.raises(AssertionError, match="is a histogram"):
        check_names_exist(["rate(telegraphy_fanout_duration_seconds[1m])"], stack.samples, stack.types)


# ------------------------------------------------------------ a real Prometheus


def prom_query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


@pytest.fixture(scope="module")
def prometheus(stack):
    tmp = Path(tempfile.mkdtemp(prefix="ops-prometheus-"))
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "telegraphy", "static_configs": [{"targets": [f"127.0.0.1:{stack.admin_port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run([tool("promtool"), "check", "config", str(tmp / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = Proc("prometheus", [tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
                               f"--storage.tsdb.path={tmp / 'data'}", "--storage.tsdb.retention.time=1h"], cwd=str(tmp))
    try:
        wait_for(lambda: proc.alive() and http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 60,
                 "Prometheus to be ready", interval=0.25)
        # Enough scrapes for rate() over 1m: at least 5 samples of the gateway.

        def scraped():
            res = prom_query(port, 'count_over_time(up{job="telegraphy"}[1m])')["data"]["result"]
            return res and float(res[0]["value"][1]) >= 5
        wait_for(scraped, 60, "Prometheus to scrape the gateway five times", interval=0.5)
        yield port
    finally:
        proc.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def test_prometheus_scrapes_the_gateway(prometheus, stack):
    res = prom_query(prometheus, 'up{job="telegraphy"}')
    assert res["status"] == "success"
    assert [(r["metric"]["instance"], r["value"][1]) for r in res["data"]["result"]] == [(f"127.0.0.1:{stack.admin_port}", "1")]


def test_prometheus_answers_every_dashboard_query(prometheus, stack):
    failures = []
    for expr in dashboard_exprs():
        res = prom_query(prometheus, concrete(expr))
        if res["status"] != "success":
            failures.append(f"{expr}: {res.get('error')}")
            continue
        has_samples = all(n in stack.samples or n in SYNTHETIC for n in metric_names(expr))
        if has_samples and not res["data"]["result"]:
            failures.append(f"{expr}: no data although the gateway exports its metrics")
    assert not failures, "\n".join(failures)


def test_dashboard_queries_see_the_traffic(prometheus):
    def value(expr):
        res = prom_query(prometheus, expr)["data"]["result"]
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in res}

    # The labels the panels group by carry the values the traffic produced.
    codes = {dict(k).get("code") for k in value('sum by (code) (increase(telegraphy_disconnects_total[5m]))')}
    assert "1000" in codes, codes
    assert len(codes) >= 2, f"expected the clean GOODBYE and the protocol violation's close code, got {codes}"
    assert ("kind", "malformed") in {kv for k, v in value('sum by (kind) (telegraphy_protocol_violations_total)').items() if v >= 1 for kv in k}
    statuses = {dict(k)["status"] for k in value('sum by (status) (telegraphy_http_publish_errors_total)')}
    assert statuses & {"401", "403"}, statuses
    assert value('sum(telegraphy_events_delivered_total)')[()] >= 3
    assert value('sum by (source) (telegraphy_events_published_total{source="http"})')[(("source", "http"),)] >= 3
    assert value('sum(telegraphy_fanout_duration_seconds_count)')[()] >= 3
    assert value('sum(telegraphy_bus_lag_seconds_count)')[()] >= 3
    assert value('sum by (cause) (telegraphy_bus_decode_errors_total{cause="malformed"})')[(("cause", "malformed"),)] >= 1
    reasons = {dict(k)["reason"] for k in value('sum by (reason) (telegraphy_connections_refused_total)')}
    assert "subprotocol" in reasons
    assert value('telegraphy_bus_connected')
    assert list(value('telegraphy_bus_connected').values()) == [1.0]
    # The instance variable's query.
    res = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{prometheus}/api/v1/label/instance/values?match[]=telegraphy_sessions", timeout=10).read())
    assert res["status"] == "success" and len(res["data"]) == 1


def test_prometheus_loads_and_evaluates_the_alert_rules(prometheus):
    rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prometheus}/api/v1/rules", timeout=10).read())
    assert rules["status"] == "success"
    loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
    expected = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {r["name"] for r in loaded} == expected

    def evaluated():
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prometheus}/api/v1/rules", timeout=10).read())
        return [r for g in rules["data"]["groups"] for r in g["rules"] if r.get("lastEvaluation", "").startswith("0001")] == [] and rules
    rules = wait_for(evaluated, 20, "every rule to be evaluated once")
    broken = [(r["name"], r.get("lastError")) for g in rules["data"]["groups"] for r in g["rules"] if r["health"] != "ok"]
    assert not broken, broken
    # A healthy single gateway: nothing fires.
    firing = [r["name"] for g in rules["data"]["groups"] for r in g["rules"] if r["state"] == "firing"]
    assert firing == []


def test_gateway_drains_on_sigterm(stack, prometheus):
    """Last: SIGTERM turns /readyz to 503 first (drain_delay), closes sessions
    with 1012 and exits 0 within drain_timeout, as docs/operations.md says."""
    with contextlib.ExitStack() as exits:
        drain_and_check(stack, wamp_session(stack.http_port, exits))


def drain_and_check(stack, ws):
    started = time.monotonic()
    stack.gateway.popen.terminate()
    wait_for(lambda: http_get(f"http://127.0.0.1:{stack.admin_port}/readyz")[0] == 503, 5, "/readyz to answer 503")
    assert http_get(f"http://127.0.0.1:{stack.admin_port}/healthz")[0] == 200, "liveness must stay green while draining"
    goodbye = json.loads(ws.recv(timeout=30))
    assert goodbye[0] == 6 and goodbye[2] == "wamp.close.system_shutdown", goodbye
    delay = time.monotonic() - started
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1012
    assert 4.0 <= delay, f"sessions were closed {delay:.1f}s after SIGTERM, before the chart's drain_delay (5s)"
    assert stack.gateway.popen.wait(30) == 0
    assert time.monotonic() - started < 25, "the gateway outlived the chart's drain_timeout"
