"""Shared helpers for the operations suite: rendering the Helm chart with Helm's
own engine, free ports, bounded waits, and starting real processes (gateway,
Redis, Prometheus) that are always cleaned up."""

from __future__ import annotations

import base64
import copy
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "telegraphy"
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
CHART_ALERTS = CHART / "files" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "telegraphy.json"
GATEWAY_BIN = Path(os.environ.get("TELEGRAPHY_GATEWAY_BIN") or ROOT / "target" / "debug" / "telegraphy-gateway")
RELEASE = "ops"
NAMESPACE = "telegraphy-test"
# The Kubernetes version rendered manifests are validated against.
KUBE_VERSION = "1.33.0"

# Values for each bus choice and feature toggle the chart offers. Every test
# that is parametrized over VARIANTS runs once per entry.
REDIS_URL = "redis://:s3cret-redis-pw@redis.telegraphy-test.svc:6379/0"
AMQP_URL = "amqp://telegraphy:s3cret-amqp-pw@rabbitmq.telegraphy-test.svc:5672/%2f"
API_KEY = "0123456789abcdef0123456789abcdef"
REDIS = {"type": "redis", "redis": {"url": REDIS_URL}}
AMQP = {"type": "amqp", "amqp": {"url": AMQP_URL}}
VARIANTS: dict[str, dict] = {
    "default": {},
    "memory-api-keys": {"apiKeys": [API_KEY, "second-key-123456"]},
    "redis": {"bus": REDIS, "replicaCount": 3, "apiKeys": [API_KEY]},
    "amqp": {"bus": AMQP, "replicaCount": 2},
    "hpa-cpu": {"bus": REDIS, "autoscaling": {"enabled": True}},
    "hpa-connections": {"bus": AMQP, "autoscaling": {"enabled": True, "connections": {"enabled": True, "targetAverageValue": 5000}}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "prometheusrule": {"prometheusRule": {"enabled": True}},
    "ingress": {"ingress": {"enabled": True, "hosts": [{"host": "rt.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                            "tls": [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}]}},
    "existing-secret": {"bus": {"type": "redis"}, "replicaCount": 2, "existingSecret": "telegraphy-credentials"},
    "no-pdb-no-spread": {"podDisruptionBudget": {"enabled": False}, "topologySpreadConstraints": {"enabled": False},
                         "serviceAccount": {"create": False}},
    "jwt-from-extra-env": {"extraEnv": [{"name": "TELEGRAPHY_JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "telegraphy-jwt", "key": "secret"}}}],
                           "config": {"allowed_origins": ["https://app.example.com"]}},
    "custom-ports": {"containerPorts": {"http": 8000, "admin": 9100}, "service": {"port": 80, "type": "LoadBalancer"},
                     "metricsService": {"port": 9100}},
    "everything": {"bus": AMQP, "apiKeys": [API_KEY], "autoscaling": {"enabled": True, "connections": {"enabled": True}},
                   "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "ingress": {"enabled": True}, "resources": {"limits": {"memory": "2Gi", "cpu": "4"}},
                   "config": {"uri_rules": "strict", "limits": {"max_connections": 50000, "ping_interval": "20s"},
                              "shutdown": {"drain_delay": "10s", "drain_timeout": "40s"}},
                   "terminationGracePeriodSeconds": 50},
}
# Secrets the "existing-secret" variant expects to exist in the cluster.
EXISTING_SECRETS = {"telegraphy-credentials": {"TELEGRAPHY_BUS": REDIS_URL, "TELEGRAPHY_API_KEYS": API_KEY},
                    "telegraphy-jwt": {"secret": "a-shared-jwt-secret-of-at-least-32-bytes"}}


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_chart = None


def chart():
    global _chart
    if _chart is None:
        import helm_python

        _chart = helm_python.Chart.load(str(CHART))
    return _chart


def render_raw(values: dict | None = None, release: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would produce."""
    return chart().render(values or {}, name=release, namespace=NAMESPACE)


class Rendered:
    def __init__(self, values: dict | None = None, release: str = RELEASE):
        self.values = values or {}
        self.raw = render_raw(values, release)
        self.notes = next((v for k, v in self.raw.items() if k.endswith("NOTES.txt")), "")
        self.manifests: list[dict] = []
        for path, text in sorted(self.raw.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__source__", path)
                    self.manifests.append(doc)

    def all(self, kind: str) -> list[dict]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def maybe(self, kind: str) -> dict | None:
        found = self.all(kind)
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def deployment(self) -> dict:
        return self.one("Deployment")

    @property
    def container(self) -> dict:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == "gateway")

    def config_toml(self) -> str:
        return self.one("ConfigMap")["data"]["telegraphy.toml"]

    def secret_data(self, name: str) -> dict[str, str]:
        """Decoded data of a Secret: rendered by the chart, or one of EXISTING_SECRETS."""
        for s in self.all("Secret"):
            if s["metadata"]["name"] == name:
                return {k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()}
        if name in EXISTING_SECRETS:
            return dict(EXISTING_SECRETS[name])
        raise AssertionError(f"Secret {name} is neither rendered nor an existing test secret")

    def pod_env(self) -> dict[str, str]:
        """The environment the gateway container gets, Secret references resolved."""
        env = {}
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            data = self.secret_data(ref["name"])
            if ref["key"] in data:
                env[item["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), f"{item['name']}: Secret {ref['name']} has no key {ref['key']} and the ref is not optional"
        return env


DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str) -> int:
    """The gateway's duration format ("500ms", "30s", "1m 30s") in milliseconds."""
    assert re.fullmatch(r"\s*(\d+\s*(ms|s|m|h|d)\s*)+", text), f"not a duration: {text!r}"
    return sum(int(n) * DURATION_UNITS_MS[u] for n, u in re.findall(r"(\d+)\s*(ms|s|m|h|d)", text))


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the kernel's
    ephemeral range: a port from bind(0) is an ephemeral one, which any outgoing
    connection may take before the server we start binds it."""
    try:
        low = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(1000):
        port = rng.randint(max(1024, low // 2), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Calls predicate until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def clean_env(**extra: str) -> dict[str, str]:
    """This process' environment without TELEGRAPHY_* variables (the gateway
    refuses unknown ones), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TELEGRAPHY_")}
    env.update(extra)
    return env


def gateway_bin() -> Path:
    if not GATEWAY_BIN.exists():
        pytest.fail(f"{GATEWAY_BIN} is missing: build it with `cargo build -p telegraphy-gateway` (or set TELEGRAPHY_GATEWAY_BIN)")
    return GATEWAY_BIN


class Proc:
    """A child process with its output in a file; stop() is bounded and idempotent."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"ops-{name}-", suffix=".log", delete=False)
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def cleanup(self):
        self.stop(signal.SIGKILL if self.popen.poll() is None else signal.SIGTERM, timeout=5)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"`{name}` is not installed: run tests/ops/run.sh, which installs it")
    return path
