"""Real gateway processes for the tests: started on free loopback ports,
ready when /readyz answers 200, stopped with SIGTERM (SIGKILL after 10 s)."""

from __future__ import annotations

import os
import random
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[3]
GATEWAY_BIN = os.environ.get("TELEGRAPHY_GATEWAY_BIN") or str(REPO / "target" / "debug" / "telegraphy-gateway")
SECRET = "test-secret-0123456789-0123456789-abcdef"
API_KEY = "test-api-key-123"
REDIS_URL = os.environ.get("TELEGRAPHY_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TELEGRAPHY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")


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


def wait_port_closed(port: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def clean_env() -> dict:
    """os.environ without TELEGRAPHY_* client variables a test may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TELEGRAPHY_") or k == "TELEGRAPHY_GATEWAY_BIN"}


class Gateway:
    """One gateway node. `config` is TOML text; `env` adds variables;
    `port` reuses a port (restart on the same address)."""

    def __init__(self, config: str = "", env: dict | None = None, args=(), port: int | None = None,
                 admin_port: int | None = None, api_key: str | None = API_KEY, secret: str | None = SECRET):
        if not os.path.exists(GATEWAY_BIN):
            raise RuntimeError(f"gateway binary not found: {GATEWAY_BIN} (build it, or set TELEGRAPHY_GATEWAY_BIN)")
        self.config, self.extra_env, self.args = config, dict(env or {}), list(args)
        self.api_key, self.secret = api_key, secret
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.proc = None
        self.start()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.log = tempfile.TemporaryFile()
        self.config_file = tempfile.NamedTemporaryFile("w", prefix="telegraphy-test-", suffix=".toml", delete=False)
        self.config_file.write(self.config)
        self.config_file.close()
        env = clean_env()
        if self.secret:
            env["TELEGRAPHY_JWT_SECRET"] = self.secret
        if self.api_key:
            env["TELEGRAPHY_API_KEYS"] = self.api_key
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [GATEWAY_BIN, "--config", self.config_file.name, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited during startup ({self.proc.returncode}):\n{self.output()}")
            try:
                if http_status(f"http://127.0.0.1:{self.admin_port}/readyz") == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"gateway not ready within {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        try:
            return http_status(f"http://127.0.0.1:{self.admin_port}/readyz") == 200
        except OSError:
            return False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-8000:]

    def _cleanup(self):
        try:
            os.unlink(self.config_file.name)
        except FileNotFoundError:
            pass

    def kill(self):
        """SIGKILL: the node vanishes (clients see 1006)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()
        wait_port_closed(self.port)

    def stop(self):
        """SIGTERM (drain), SIGKILL after 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def restart(self):
        self.kill()
        self.start()
