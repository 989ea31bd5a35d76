"""Processes the chaos suite starts: spawn, track, stop by PID, leave nothing behind.

Every process is started in its own session (so a signal to the test runner's
group does not reach it) and registered here. `stop_tree` stops a process and
all its descendants (found through /proc, because RabbitMQ's erl_child_setup
calls setsid and so leaves the process group). At interpreter exit, and on
SIGTERM/SIGHUP to the test runner, everything still registered is killed.
The machine-wide epmd is never a descendant of ours (it daemonizes and is
reparented to init) and is skipped by name anyway.
"""

from __future__ import annotations

import atexit
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()
# pid -> (Popen, description)
_REGISTRY: dict[int, tuple[subprocess.Popen, str]] = {}
_PORTS_GIVEN: set[int] = set()

# Never hand out ports in these ranges: the kernel's ephemeral range (clients'
# source ports) and rabbitmqctl's own distribution ports (35672-35682).
_PORT_LOW, _PORT_HIGH = 20000, 32000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the
    ephemeral range, never handed out twice in this run."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(2000):
        port = rng.randint(_PORT_LOW, _PORT_HIGH)
        with _LOCK:
            if port in _PORTS_GIVEN:
                continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        with _LOCK:
            _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port found")


def spawn(cmd: list[str], *, env: dict[str, str], log_path: Path, description: str, cwd: str | None = None,
          stdin=subprocess.DEVNULL, stdout=None) -> subprocess.Popen:
    """Starts `cmd` in a new session, output to `log_path` (unless `stdout` is given), and registers it."""
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin, stdout=stdout if stdout is not None else log,
                                stderr=log, start_new_session=True)
    finally:
        log.close()
    with _LOCK:
        _REGISTRY[proc.pid] = (proc, description)
    return proc


def run(cmd: list[str], *, env: dict[str, str], timeout: float, cwd: str | None = None, input: bytes | None = None,
        description: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run for short-lived tools (rabbitmqctl, the CLI), registered while
    they run so the safety net stops them too; text output."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    register(proc, description or cmd[0])
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc, sig=signal.SIGKILL)
        raise
    finally:
        unregister(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def register(proc: subprocess.Popen, description: str) -> None:
    with _LOCK:
        _REGISTRY[proc.pid] = (proc, description)


def unregister(proc: subprocess.Popen) -> None:
    with _LOCK:
        _REGISTRY.pop(proc.pid, None)


def _ppid_and_comm(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces
    lpar, rpar = stat.index("("), stat.rindex(")")
    comm = stat[lpar + 1:rpar]
    fields = stat[rpar + 2:].split()
    return int(fields[1]), comm


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children first found, breadth-first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = _ppid_and_comm(int(entry))
        if info is None:
            continue
        children.setdefault(info[0], []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def comm(pid: int) -> str | None:
    info = _ppid_and_comm(pid)
    return info[1] if info else None


def signal_pids(pids: list[int], sig: int) -> None:
    _signal_pids(pids, sig)


def _signal_pids(pids: list[int], sig: int) -> None:
    for p in pids:
        info = _ppid_and_comm(p)
        if info is not None and info[1] == "epmd":
            continue  # the machine-wide epmd: never ours to stop
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Sends `sig` to `proc` and every descendant, without waiting."""
    _signal_pids([proc.pid] + descendants(proc.pid), sig)


def kill_tree_leaves_first(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL to the descendants (deepest first), then, once they are gone, to
    `proc` if it did not exit by itself: each dead child is reaped by its own
    parent (e.g. the rabbitmq-server script reaps beam.smp), not left to init."""
    desc = descendants(proc.pid)
    _signal_pids(list(reversed(desc)), signal.SIGKILL)
    _wait_gone(desc, timeout)
    try:
        proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        _signal_pids([proc.pid] + descendants(proc.pid), signal.SIGKILL)
        proc.wait(timeout=timeout)


def stop_tree(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
    """Stops `proc` and its descendants: `sig`, up to `grace` seconds, then SIGKILL.
    Returns the exit status and unregisters the process."""
    tree = [proc.pid] + descendants(proc.pid)
    if sig == signal.SIGKILL and proc.poll() is None:
        try:
            kill_tree_leaves_first(proc)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        _signal_pids(tree, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left of the tree (also children that outlived the parent).
    leftover = [p for p in tree + descendants(proc.pid) if Path(f"/proc/{p}").exists()]
    if leftover:
        _signal_pids(leftover, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _wait_gone(tree, 10)
    unregister(proc)
    return proc.returncode


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for p in pids:
            try:
                st = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            if st[st.rindex(")") + 2] != "Z":
                alive.append(p)
        if not alive:
            return
        time.sleep(0.02)


def cleanup_all() -> list[str]:
    """Kills everything still registered (the safety net). Returns what it killed."""
    with _LOCK:
        items = list(_REGISTRY.values())
    killed = []
    for proc, desc in items:
        if proc.poll() is None or descendants(proc.pid):
            killed.append(f"{desc} (pid {proc.pid})")
        kill_tree(proc, signal.SIGKILL)
    for proc, _ in items:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        unregister(proc)
    return killed


def registered() -> list[str]:
    with _LOCK:
        return [f"{d} (pid {p.pid})" for p, d in _REGISTRY.values()]


def _on_signal(signum, _frame):
    cleanup_all()
    os._exit(128 + signum)


_installed = False


def install_safety_net() -> None:
    """atexit and SIGTERM/SIGHUP handlers that kill every registered process."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, _on_signal)


def wait_tcp(host: str, port: int, timeout: float) -> float | None:
    """Polls until a TCP connect succeeds; returns the monotonic time it did, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return time.monotonic()
        except OSError:
            time.sleep(0.01)
    return None
