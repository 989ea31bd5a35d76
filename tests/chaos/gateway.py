"""A telegraphy-gateway process, its admin endpoints, HTTP publishing, and a
/readyz poller that records a timeline to judge acknowledgements against."""

from __future__ import annotations

import bisect
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import procs

API_KEY = "chaos-api-key-0123456789abcdef"


def gateway_bin() -> str:
    return os.environ.get("TELEGRAPHY_GATEWAY_BIN") or str(Path(__file__).resolve().parents[2] / "target/debug/telegraphy-gateway")


def publish_bin() -> str:
    return os.environ.get("TELEGRAPHY_PUBLISH_BIN") or str(Path(__file__).resolve().parents[2] / "target/debug/telegraphy-publish")


def base_env() -> dict[str, str]:
    # Every TELEGRAPHY_* variable must be a gateway setting (unknown keys stop it),
    # so the harness's own (TELEGRAPHY_PUBLISH_BIN, ...) are not passed on.
    return {k: v for k, v in os.environ.items() if not k.startswith("TELEGRAPHY_")}


_print_config_cache: dict[str, str] = {}


def print_config() -> str:
    b = gateway_bin()
    if b not in _print_config_cache:
        r = procs.run([b, "--print-config"], env=base_env(), timeout=30)
        _print_config_cache[b] = r.stdout
    return _print_config_cache[b]


def supports_setting(key: str) -> bool:
    """Whether the gateway binary knows `limits.socket_send_buffer`-style key (from --print-config)."""
    section, _, name = key.rpartition(".")
    text = print_config()
    if section:
        m = re.search(rf"^\[{re.escape(section)}\]\n(.*?)(?:^\[|\Z)", text, re.S | re.M)
        return bool(m and re.search(rf"^{re.escape(name)}\s*=", m.group(1), re.M))
    return bool(re.search(rf"^{re.escape(name)}\s*=", text, re.M))


def setting_value(key: str) -> str | None:
    """The value --print-config shows for `section.name` (as written there), or None."""
    section, _, name = key.rpartition(".")
    m = re.search(rf"^\[{re.escape(section)}\]\n(.*?)(?:^\[|\Z)", print_config(), re.S | re.M)
    if not m:
        return None
    v = re.search(rf"^{re.escape(name)}\s*=\s*(.+)$", m.group(1), re.M)
    return v.group(1).strip() if v else None


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


class Metrics:
    def __init__(self, samples: dict):
        self.samples = samples

    def get(self, name: str, **labels) -> float | None:
        """The value of the series with exactly these labels (None if absent)."""
        return self.samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))

    def total(self, name: str, **match) -> float:
        """Sum over every series of `name` whose labels include `match`."""
        s = 0.0
        for (n, labels), v in self.samples.items():
            d = dict(labels)
            if n == name and all(d.get(k) == str(v2) for k, v2 in match.items()):
                s += v
        return s

    def has(self, name: str) -> bool:
        return any(n == name for (n, _) in self.samples)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(l).get(label) for (n, l) in self.samples if n == name and dict(l).get(label) is not None}


class Gateway:
    def __init__(self, name: str, workdir: Path, bus: str, *, prefix: str | None = None, exchange: str | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.workdir = workdir
        self.bus = bus
        self.port = procs.free_port()
        self.admin_port = procs.free_port()
        self.log = workdir / f"gateway-{name}.log"
        self.extra_env = dict(env or {})
        self.prefix = prefix
        self.exchange = exchange
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, ready: bool = True) -> None:
        """Starts the gateway and waits until it is ready (or, with ready=False,
        until its admin port answers); if a port was taken meanwhile by someone
        else, tries other ports."""
        for attempt in range(3):
            try:
                return self._start(timeout, ready)
            except RuntimeError as e:
                if "in use" not in str(e) or attempt == 2:
                    raise
                self.port, self.admin_port = procs.free_port(), procs.free_port()

    def _start(self, timeout: float, ready: bool = True) -> None:
        env = base_env()
        env.update({
            "TELEGRAPHY_ALLOW_ANONYMOUS": "true",
            "TELEGRAPHY_API_KEYS": API_KEY,
            "TELEGRAPHY_LIMITS__BUS_RECONNECT_MAX_DELAY": "1s",
        })
        if self.prefix:
            env["TELEGRAPHY_REDIS__KEY_PREFIX"] = self.prefix
        if self.exchange:
            env["TELEGRAPHY_AMQP__EXCHANGE"] = self.exchange
        env.update(self.extra_env)
        cmd = [gateway_bin(), "--bus", self.bus, "--listen", f"127.0.0.1:{self.port}",
               "--admin-listen", f"127.0.0.1:{self.admin_port}", "--log-level", os.environ.get("CHAOS_GATEWAY_LOG_LEVEL", "info")]
        self.proc = procs.spawn(cmd, env=env, log_path=self.log, description=f"gateway {self.name} :{self.port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                procs.unregister(self.proc)
                raise RuntimeError(f"gateway {self.name} exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.readyz()[0] == 200 or not ready:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway {self.name} not ready within {timeout}s: {self.log.read_text()[-2000:]}")

    # --- admin -------------------------------------------------------------
    def _admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def readyz(self) -> tuple[int, str]:
        return self._admin_get("/readyz")

    def metrics(self) -> Metrics:
        status, text = self._admin_get("/metrics", timeout=15)
        assert status == 200, f"/metrics answered {status}"
        return Metrics(parse_metrics(text))

    # --- HTTP publish ------------------------------------------------------
    def publish(self, topic: str, args=None, kwargs=None, **extra) -> tuple[int, dict]:
        body = {"topic": topic}
        if args is not None:
            body["args"] = args
        if kwargs is not None:
            body["kwargs"] = kwargs
        body.update(extra)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("POST", "/publish", body=json.dumps(body),
                      headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read()
            try:
                data = json.loads(raw)
            except ValueError:
                data = {"raw": raw.decode("utf-8", "replace")}
            return r.status, data
        finally:
            c.close()

    # --- process -----------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        procs.unregister(self.proc)

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        procs.unregister(self.proc)
        return rc

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_tree(self.proc, sig=signal.SIGKILL)


class ReadyPoller(threading.Thread):
    """Polls a gateway's /readyz every `interval` seconds; keeps (t, status) samples,
    status None when the admin listener did not answer."""

    def __init__(self, gw: Gateway, interval: float = 0.02):
        super().__init__(daemon=True, name=f"readyz-{gw.name}")
        self.gw = gw
        self.interval = interval
        self.samples: list[tuple[float, float, int | None]] = []
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def _poll_once(self) -> int | None:
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.gw.admin_port, timeout=5)
            self._conn.request("GET", "/readyz")
            r = self._conn.getresponse()
            r.read()
            return r.status
        except (OSError, http.client.HTTPException):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None

    def run(self) -> None:
        while not self._halt.is_set():
            ts = time.monotonic()
            status = self._poll_once()
            self.samples.append((ts, time.monotonic(), status))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        if self._conn is not None:
            self._conn.close()

    # --- judging against the timeline ---------------------------------------
    # A sample is (start, end, status): the status was decided somewhere in
    # [start, end]. "Before t" means it ended before t, "after t" that it
    # started after t, so the bracketing is conservative.
    def bracket(self, t0: float, t1: float) -> list[int | None] | None:
        """Statuses of the last sample before t0, every sample overlapping [t0, t1] and
        the first sample after t1; None when there is no sample before or after."""
        # Bisected, not scanned: a verdict asks this for every acknowledged
        # event on every node, and a poller takes 50 samples a second (a
        # scan made a three-node run's verdict outlast the test's timeout).
        # A sample starts and ends after the one before it.
        s = self.samples
        n = len(s)
        first_inside = bisect.bisect_left(s, t0, 0, n, key=lambda x: x[1])  # the first sample that ends at or after t0
        first_after = bisect.bisect_right(s, t1, 0, n, key=lambda x: x[0])  # the first sample that starts after t1
        if first_inside == 0 or first_after >= n:
            return None
        return [st for (_, _, st) in s[first_inside - 1:first_after + 1]]

    def ready_throughout(self, t0: float, t1: float) -> bool:
        b = self.bracket(t0, t1)
        return b is not None and all(st == 200 for st in b)

    def not_ready_throughout(self, t0: float, t1: float) -> bool:
        """The node said 503 for the whole of [t0, t1]: the last sample before t0, every
        sample overlapping it and the first after t1 answered 503 (a sample without an
        answer proves nothing either way). A request sent while the node was still
        ready may be accepted then and answered after it turned not ready: the broker
        died with it in flight, which is not an acknowledgement while not ready."""
        b = self.bracket(t0, t1)
        return b is not None and all(st == 503 for st in b)

    def first_ready_after(self, t: float) -> float | None:
        """End time of the first 200 sample after t that follows a non-200 sample after t."""
        seen_down = False
        for a, b, st in list(self.samples):
            if a < t:
                continue
            if st != 200:
                seen_down = True
            elif seen_down:
                return b
        return None

    def first_not_ready_after(self, t: float) -> float | None:
        for a, b, st in list(self.samples):
            if a >= t and st != 200:
                return b
        return None

    def count(self, status) -> int:
        return sum(1 for (_, _, st) in list(self.samples) if st == status)
