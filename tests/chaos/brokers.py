"""Private broker instances for fault injection: a redis-server and a RabbitMQ
node of our own, on free ports, never the machine's shared ones (6379, 5672).

Both can be killed with SIGKILL and restarted on the same port (RabbitMQ: same
node name and data directory, so durable exchanges survive, as in production).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import procs

RABBIT_BIN = "/usr/lib/rabbitmq/bin"  # not /usr/sbin: that wrapper su's to the rabbitmq user


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAPHY_", "RABBITMQ_"))}


class PortTaken(RuntimeError):
    pass


class RedisServer:
    def __init__(self, workdir: Path, *, pubsub_limit_off: bool = False, appendonly: bool = False,
                 tls: dict[str, Path] | None = None, users: list[str] | None = None, extra: list[str] | None = None):
        """`tls` (cert, key, ca): a TLS-only server that requires a client
        certificate signed by `ca`; `users`: ACL rules (`alice on >pw ~* +@all`);
        `extra`: more redis-server arguments (a {port} in them is replaced)."""
        self.extra = extra or []
        self.tls = tls
        self.users = users or []
        self.workdir = workdir
        self.appendonly = appendonly  # an append-only file, fsync'd at every write: a kill -9 loses nothing acknowledged
        self.port = procs.free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"redis-{self.port}.log"
        self.pubsub_limit_off = pubsub_limit_off
        self.starts = 0

    def url(self, db: int = 0, *, user: str = "", host: str = "") -> str:
        scheme = "rediss" if self.tls else "redis"
        host = host or ("localhost" if self.tls else "127.0.0.1")
        return f"{scheme}://{user + '@' if user else ''}{host}:{self.port}/{db}"

    def start(self, timeout: float = 20.0) -> None:
        """Starts redis-server; on its first start, a port taken meanwhile by someone
        else is replaced by another (a restart keeps its port: that is the point)."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if self.starts > 1 or attempt == 2:
                    raise
                self.port = procs.free_port()
                self.starts = 0

    def _start(self, timeout: float) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always", "--appendfilename", f"redis-{self.port}.aof",
               "--appenddirname", f"aof-{self.port}"] if self.appendonly else ["--appendonly", "no"]
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls["cert"]),
                     "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                     "--tls-auth-clients", "yes"]
        cmd = ["redis-server", *ports, "--bind", "127.0.0.1", "--save", "", *aof,
               "--daemonize", "no", "--dir", str(self.workdir)]
        for rule in self.users:
            cmd += ["--user", *rule.split()]
        if self.pubsub_limit_off:
            cmd += ["--client-output-buffer-limit", "pubsub 0 0 0"]
        cmd += [a.replace("{port}", str(self.port)) for a in self.extra]
        self.proc = procs.spawn(cmd, env=_clean_env(), log_path=self.log, description=f"redis-server :{self.port}")
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                procs.unregister(self.proc)
                if "in use" in self.log.read_text(errors="replace"):
                    raise PortTaken(self.port)
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.log}")
            if self.ping():
                return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server on {self.port} did not answer PING within {timeout}s")

    def ping(self) -> bool:
        """Whether the server answers (with TLS: the handshake with our client
        certificate succeeds; an ACL-only server may answer NOAUTH, which is an answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = raw
                if self.tls:
                    ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
                    ctx.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
                    s = ctx.wrap_socket(raw, server_hostname="localhost")
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                answer = s.recv(64)
                return answer.startswith(b"+PONG") or answer.startswith(b"-NOAUTH")
        except (OSError, ssl.SSLError):
            return False

    def kill9(self) -> float:
        """SIGKILL to redis-server. Returns the monotonic time the signal was sent:
        the broker can accept nothing sent after it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        self.proc.wait(timeout=10)
        procs.unregister(self.proc)
        return t_kill

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_tree(self.proc, sig=signal.SIGKILL)
            self.proc = None


def redis_cli(port: int, *args: str, timeout: float = 10.0, tls: dict[str, Path] | None = None) -> str:
    """One redis-cli command against our own server on `port` (with `tls`: over
    TLS with the test client certificate); its output."""
    out = procs.run(["redis-cli", "-p", str(port), *cli_tls(tls), *args], env=_clean_env(), timeout=timeout)
    return out.stdout.strip()


def cli_tls(tls: dict[str, Path] | None) -> list[str]:
    if not tls:
        return []
    return ["--tls", "--cacert", str(tls["ca"]), "--cert", str(tls["client_cert"]), "--key", str(tls["client_key"])]


class RedisCluster:
    """A Redis Cluster of our own: `primaries` primaries with `replicas` replicas
    each (redis-cli --cluster create), every node on a free port of 127.0.0.1.
    A primary that dies is replaced by its replica after `node_timeout_ms`."""

    def __init__(self, workdir: Path, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000,
                 tls: dict[str, Path] | None = None):
        """`tls` (pki.broker_pki): TLS only, between the nodes too, client
        certificates required; nodes announce themselves as `localhost`, the
        name in the test certificate."""
        self.tls = tls
        # Nodes connect to each other with the client certificate (the server
        # one is for serverAuth only).
        tls_args = ["--tls-cluster", "yes", "--tls-replication", "yes", "--cluster-announce-hostname", "localhost",
                    "--cluster-preferred-endpoint-type", "hostname", "--tls-client-cert-file", str(tls["client_cert"]),
                    "--tls-client-key-file", str(tls["client_key"])] if tls else []
        args = tls_args + ["--cluster-enabled", "yes", "--cluster-config-file", "nodes-{port}.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # A replica takes over however long ago it last heard from its primary
                # (an idle test cluster has old replication pings).
                "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"]
        self.nodes = [RedisServer(workdir, extra=args, tls=tls) for _ in range(primaries * (1 + replicas))]
        self.primaries, self.replicas = primaries, replicas

    def start(self, timeout: float = 60.0) -> None:
        for n in self.nodes:
            n.start()
        out = procs.run(["redis-cli", *cli_tls(self.tls), "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                         "--cluster-replicas", str(self.replicas), "--cluster-yes"], env=_clean_env(), timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in redis_cli(n.port, "cluster", "info", tls=self.tls) for n in self.nodes) and \
                    len(self.slot_primaries()) == self.primaries and self._replicas_in_sync():
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def _replicas_in_sync(self) -> bool:
        roles = [redis_cli(n.port, "info", "replication", tls=self.tls) for n in self.nodes]
        replicas = [r for r in roles if "role:slave" in r]
        return len(replicas) == self.primaries * self.replicas and all("master_link_status:up" in r for r in replicas)

    def url(self, seeds: int = 3, host: str = "") -> str:
        scheme, host = ("rediss+cluster", host or "localhost") if self.tls else ("redis+cluster", host or "127.0.0.1")
        return f"{scheme}://" + ",".join(f"{host}:{n.port}" for n in self.nodes[:seeds])

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def slot_primaries(self) -> dict[int, int]:
        """First slot of each range -> the port of the primary serving it, as a live node sees it."""
        for n in self.alive():
            out = procs.run(["redis-cli", "-p", str(n.port), *cli_tls(self.tls), "--json", "cluster", "slots"], env=_clean_env(), timeout=10)
            try:
                import json
                return {r[0]: r[2][1] for r in json.loads(out.stdout)}
            except (ValueError, IndexError, TypeError):
                continue
        return {}

    def slot(self, key: str) -> int:
        return int(redis_cli(self.alive()[0].port, "cluster", "keyslot", key, tls=self.tls))

    def primary_for(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot now."""
        slot = self.slot(key)
        ranges = sorted(self.slot_primaries().items())
        port = [p for first, p in ranges if first <= slot][-1]
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class RedisSentinels:
    """A Redis primary, one replica and `count` Sentinels watching them (quorum
    count // 2 + 1), all ours; the primary is called `name`. A primary down for
    `down_after_ms` is replaced by the replica."""

    def __init__(self, workdir: Path, *, name: str = "telegraphy", count: int = 3, down_after_ms: int = 1000,
                 password: str = ""):
        """`password`: the primary, the replica and the Sentinels all require it
        (as the common Helm charts set them up)."""
        self.workdir, self.name, self.down_after_ms, self.password = workdir, name, down_after_ms, password
        self.auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.cli_auth = ["-a", password, "--no-auth-warning"] if password else []
        self.primary = RedisServer(workdir, extra=["--repl-diskless-sync-delay", "0", *self.auth])
        self.replica: RedisServer | None = None
        self.ports = [procs.free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout: float = 30.0) -> None:
        self.primary.start()
        self.replica = RedisServer(self.workdir, extra=["--replicaof", "127.0.0.1", str(self.primary.port), *self.auth])
        self.replica.start()
        quorum = len(self.ports) // 2 + 1
        for port in self.ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} {quorum}\n"
                            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                            f"sentinel failover-timeout {self.name} 10000\n"
                            f"sentinel parallel-syncs {self.name} 1\n"
                            + (f"requirepass {self.password}\nsentinel auth-pass {self.name} {self.password}\n"
                               if self.password else ""))
            self.procs.append(procs.spawn(["redis-server", str(conf), "--sentinel"], env=_clean_env(),
                                          log_path=self.workdir / f"sentinel-{port}.log", description=f"redis-sentinel :{port}"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Every Sentinel knows the primary, the replica and the other Sentinels,
            # and the replica has the primary's data.
            if all(f"slaves=1,sentinels={len(self.ports)}" in redis_cli(p, *self.cli_auth, "info", "sentinel") for p in self.ports) and \
                    "master_link_status:up" in redis_cli(self.replica.port, *self.cli_auth, "info", "replication"):
                return
            time.sleep(0.2)
        raise RuntimeError("the Sentinels did not find each other and the replica")

    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + f"/{self.name}"

    def current_primary_port(self) -> int | None:
        for p in self.ports:
            out = redis_cli(p, *self.cli_auth, "sentinel", "get-master-addr-by-name", self.name).split()
            if len(out) == 2:
                return int(out[1])
        return None

    def stop(self) -> None:
        for proc in self.procs:
            procs.stop_tree(proc, sig=signal.SIGKILL)
        self.procs = []
        for n in (self.primary, self.replica):
            if n is not None:
                n.stop()


class RabbitNode:
    """A RabbitMQ node of our own: name chaos-<random>@localhost, its own ports,
    data and log directories, cookie and (empty) plugin list."""

    def __init__(self, workdir: Path, *, tls: dict[str, Path] | None = None, cookie: str | None = None):
        """`tls` (cert, key, ca): also an AMQPS listener on `tls_port` that
        requires a client certificate signed by `ca`. `cookie`: the Erlang
        cookie (nodes of one cluster share theirs; see `join`)."""
        self.workdir = workdir
        self.name = f"chaos-{secrets.token_hex(4)}@localhost"
        self.port = procs.free_port()
        self.tls = tls
        self.tls_port = procs.free_port() if tls else None
        self.dist_port = procs.free_port()
        self.home = workdir / "home"
        self.mnesia = workdir / "mnesia"
        self.logdir = workdir / "log"
        for d in (self.home, self.mnesia, self.logdir):
            d.mkdir(parents=True, exist_ok=True)
        self.cookie = cookie or secrets.token_hex(16).upper()
        cookie_file = self.home / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o600)
        (workdir / "enabled_plugins").write_text("[].\n")
        # Our own config file, so /etc/rabbitmq/rabbitmq.conf (the shared node's) is not read.
        conf = "disk_free_limit.absolute = 10MB\n"
        if tls:
            conf += (f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
                     f"ssl_options.cacertfile = {tls['ca']}\n"
                     f"ssl_options.certfile = {tls['cert']}\n"
                     f"ssl_options.keyfile = {tls['key']}\n"
                     "ssl_options.verify = verify_peer\n"
                     "ssl_options.fail_if_no_peer_cert = true\n")
        (workdir / "rabbitmq.conf").write_text(conf)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "server.log"
        self.starts = 0

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def tls_url(self, host: str = "localhost") -> str:
        return f"amqps://guest:guest@{host}:{self.tls_port}/%2f"

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env.update({
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.mnesia),
            "RABBITMQ_LOG_BASE": str(self.logdir),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_PID_FILE": str(self.workdir / "node.pid"),
        })
        return env

    def spawn(self) -> None:
        self.proc = procs.spawn([f"{RABBIT_BIN}/rabbitmq-server"], env=self.env(), log_path=self.log,
                                description=f"rabbitmq {self.name} :{self.port}", cwd=str(self.workdir))
        self.starts += 1

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return procs.run([f"{RABBIT_BIN}/rabbitmqctl", "-n", self.name, *args], env=self.env(), timeout=timeout,
                         cwd=str(self.workdir), description=f"rabbitmqctl {args[0]}")

    def await_startup(self, timeout: float = 90.0) -> float:
        """Blocks until the node has booted; returns the monotonic time it had."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node exited with {self.proc.returncode}; see {self.log} and {self.logdir}")
            try:
                r = self.ctl("await_startup", "--timeout", "30", timeout=45)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                return time.monotonic()
            last = r
            time.sleep(0.3)
        raise RuntimeError(f"RabbitMQ node {self.name} did not boot within {timeout}s: {last and last.stderr[-500:]}")

    def start(self) -> float:
        self.spawn()
        return self.await_startup()

    def join(self, other: "RabbitNode") -> None:
        """Makes this (started) node a member of `other`'s cluster; both
        must have been made with the same cookie."""
        for args in (("stop_app",), ("join_cluster", other.name), ("start_app",)):
            r = self.ctl(*args, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name} failed: {r.stderr[-800:]}")
        self.await_startup()

    def kill9(self) -> float:
        """The broker crash: SIGKILL to beam.smp. Its erl_child_setup and the
        rabbitmq-server script then end by themselves (whatever of the tree is
        still there after a moment is killed too). Returns the monotonic time
        the signal was sent: the broker can accept nothing sent after it."""
        assert self.proc is not None
        beams = [p for p in procs.descendants(self.proc.pid) if procs.comm(p) == "beam.smp"]
        assert beams, "no beam.smp under the rabbitmq-server process"
        procs.signal_pids(beams, signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        procs.kill_tree_leaves_first(self.proc)
        procs.unregister(self.proc)
        return t_kill

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_tree(self.proc, sig=signal.SIGKILL)
            self.proc = None


def start_in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Runs fn(*args) in a thread; the dict gets 'result' or 'error'."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
