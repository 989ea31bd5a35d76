"""Publishers of numbered events, and the accounting that judges what
subscribers received against what was acknowledged.

Every event carries args = [stream, seq]: `stream` names the publisher (one
connection, so one order), `seq` counts from 0. A publisher records, per
event, when it was sent and answered and with what.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

import procs
from gateway import API_KEY, Gateway, base_env, publish_bin


@dataclass
class Pub:
    stream: str
    seq: int
    t0: float                 # sent
    t1: float = 0.0           # answered
    status: int | None = None  # HTTP status (None: no answer); CLI: 200 when its id was printed
    error: str | None = None   # error code of a refusal, or exception text
    pubid: int | None = None
    body: dict | None = None

    @property
    def acked(self) -> bool:
        return self.status == 200 and self.pubid is not None


class HttpPublisher(threading.Thread):
    """POST /publish, one request at a time on one keep-alive connection
    (so one order), at `rate` events/s (None: as fast as it goes), until
    stopped or `count` events were sent."""

    def __init__(self, gw: Gateway, topic: str, stream: str, *, rate: float | None = 100.0, count: int | None = None,
                 pad: int = 0, extra: dict | None = None):
        super().__init__(daemon=True, name=f"http-pub-{stream}")
        self.gw, self.topic, self.stream = gw, topic, stream
        self.rate, self.count, self.pad = rate, count, pad
        self.extra = extra or {}
        self.records: list[Pub] = []
        self._halt = threading.Event()
        self.conn: http.client.HTTPConnection | None = None

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=30)
            try:
                self.conn.request("POST", "/publish", body=body,
                                  headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A keep-alive connection the server had closed: the request was not
                # processed only if nothing was sent; retrying could duplicate, so
                # only retry when the request surely never reached the server.
                self.conn.close()
                self.conn = None
                if attempt == 2 or not isinstance(e, BrokenPipeError):
                    raise
        raise RuntimeError("unreachable")

    def run(self) -> None:
        seq = 0
        pad = "x" * self.pad
        next_at = time.monotonic()
        while not self._halt.is_set() and (self.count is None or seq < self.count):
            if self.rate:
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                next_at = max(next_at + 1.0 / self.rate, time.monotonic() - 0.5)
            body = {"topic": self.topic, "args": [self.stream, seq]}
            if pad:
                body["kwargs"] = {"pad": pad}
            body.update(self.extra)
            rec = Pub(self.stream, seq, time.monotonic())
            try:
                status, raw = self._post(json.dumps(body).encode())
                rec.status = status
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = {"raw": raw[:200].decode("utf-8", "replace")}
                if not isinstance(data, dict):
                    data = {"raw": str(data)[:200]}
                rec.body = data if status != 200 else None
                if status == 200:
                    rec.pubid = data.get("id")
                else:
                    rec.error = data.get("error")
            except Exception as e:  # noqa: BLE001
                rec.error = f"{type(e).__name__}: {e}"
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
            rec.t1 = time.monotonic()
            self.records.append(rec)
            seq += 1
        if self.conn is not None:
            self.conn.close()

    def acked(self) -> list[Pub]:
        return [r for r in self.records if r.acked]


def cli_cmd(bus: str, *, prefix: str | None = None, exchange: str | None = None, extra: list[str] | None = None) -> list[str]:
    cmd = [publish_bin(), "--bus", bus]
    if prefix:
        cmd += ["--redis-key-prefix", prefix]
    if exchange:
        cmd += ["--amqp-exchange", exchange]
    return cmd + (extra or [])


def run_cli_stdin(bus: str, lines: list[str], *, prefix=None, exchange=None, extra=None, timeout: float = 120.0,
                  log_dir=None) -> tuple[int, list[str], str, float, float]:
    """Runs `telegraphy-publish --stdin` with these lines; returns (status, stdout lines, stderr, t0, t1)."""
    cmd = cli_cmd(bus, prefix=prefix, exchange=exchange, extra=["--stdin"] + (extra or []))
    t0 = time.monotonic()
    try:
        r = procs.run(cmd, env=base_env(), timeout=timeout, input=("\n".join(lines) + "\n").encode(),
                      description="telegraphy-publish --stdin")
        status, out, err = r.returncode, r.stdout.split(), r.stderr
    except subprocess.TimeoutExpired:
        status, out, err = None, [], f"no exit within {timeout}s"
    t1 = time.monotonic()
    return status, out, err, t0, t1


@dataclass
class CliBatch:
    t0: float
    t1: float
    status: int
    seqs: list[int]
    ids: list[int]
    stderr: str = ""


class CliPublisher(threading.Thread):
    """Runs `telegraphy-publish --stdin` again and again with batches of
    `batch` numbered lines, straight onto the bus, until stopped. An event is
    acknowledged when its publication id was printed (ids come in line order
    without pipelining; with it, the printed set still says which ones)."""

    def __init__(self, bus: str, topic: str, stream: str, *, prefix=None, exchange=None, batch: int = 10, pause: float = 0.05):
        super().__init__(daemon=True, name=f"cli-pub-{stream}")
        self.bus, self.topic, self.stream = bus, topic, stream
        self.prefix, self.exchange = prefix, exchange
        self.batch, self.pause = batch, pause
        self.batches: list[CliBatch] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=120)

    def run(self) -> None:
        seq = 0
        while not self._halt.is_set():
            seqs = list(range(seq, seq + self.batch))
            seq += self.batch
            lines = [json.dumps({"topic": self.topic, "args": [self.stream, s]}) for s in seqs]
            try:
                status, out, err, t0, t1 = run_cli_stdin(self.bus, lines, prefix=self.prefix, exchange=self.exchange,
                                                        extra=["--timeout", "3s"], timeout=60)
            except Exception as e:  # noqa: BLE001 - recorded, the loop goes on
                self.errors.append(f"{type(e).__name__}: {e}")
                self._halt.wait(0.5)
                continue
            ids = [int(x) for x in out if x.isdigit()]
            self.batches.append(CliBatch(t0, t1, status, seqs, ids, err[-300:]))
            self._halt.wait(self.pause)

    def acked_ids(self) -> set[int]:
        return {i for b in self.batches for i in b.ids}


# --- accounting ---------------------------------------------------------------

def order_problems(events: list[tuple], stream: str) -> tuple[int, int]:
    """(duplicates, reorderings) of one stream in one subscriber's record."""
    seqs = [seq for (s, seq, _) in events if s == stream]
    dups = len(seqs) - len(set(seqs))
    reorder = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
    return dups, reorder


def duplicate_pubids(events: list[tuple]) -> int:
    ids = [p for (_, _, p) in events]
    return len(ids) - len(set(ids))


def wait_until(pred, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def fence(gw: Gateway, topic: str, subs: list, timeout: float = 30.0, tag: str = "fence", acked: list | None = None) -> bool:
    """Publishes a marker through `gw` (retrying until acked) and waits until every
    subscriber in `subs` got it: everything published before it, on any stream that
    finished before, has then reached them (one order per node). Returns whether all got it;
    the fence's publication id is appended to `acked` when given."""
    deadline = time.monotonic() + timeout
    pubid = None
    n = 0
    while pubid is None and time.monotonic() < deadline:
        status, data = gw.publish(topic, args=[tag, n])
        n += 1
        if status == 200:
            pubid = data["id"]
            if acked is not None:
                acked.append(pubid)
        else:
            time.sleep(0.1)
    if pubid is None:
        return False
    return wait_until(lambda: all(pubid in s.pubids for s in subs), max(0.0, deadline - time.monotonic()) + 1)


def tail_loss_ok(received_seqs: set[int], lost_seqs: list[int]) -> bool:
    """Loss allowed at a broker kill: only the tail of what was in flight, i.e. every
    lost event comes after every received one of the same segment."""
    return not lost_seqs or not received_seqs or min(lost_seqs) > max(received_seqs)


class ExternalHttpPublisher:
    """An HttpPublisher in its own Python process (flood_pub.py), so a flood of
    publishes does not take the GIL from the subscribers' reactor. Same records."""

    def __init__(self, gw: Gateway, topic: str, stream: str, *, count: int, pad: int = 0, log_path=None):
        self.gw, self.topic, self.stream, self.count, self.pad = gw, topic, stream, count, pad
        self.log_path = log_path
        self.records: list[Pub] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import sys
        from pathlib import Path
        script = Path(__file__).with_name("flood_pub.py")
        log = self.log_path or (self.gw.workdir / f"flood-{self.stream}.log")
        self.proc = procs.spawn([sys.executable, str(script), str(self.gw.port), self.topic, self.stream, str(self.count),
                                 str(self.pad)], env=base_env(), log_path=log, description=f"flood publisher {self.stream}",
                                stdout=subprocess.PIPE)

    def join(self, timeout: float = 300) -> None:
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            procs.stop_tree(self.proc, sig=9)
            out = b""
        procs.unregister(self.proc)
        for line in out.decode().splitlines():
            stream, seq, t0, t1, status, pubid, error = json.loads(line)
            self.records.append(Pub(stream, seq, t0, t1, status, error, pubid))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            procs.stop_tree(self.proc, sig=9)

    def acked(self) -> list[Pub]:
        return [r for r in self.records if r.acked]
