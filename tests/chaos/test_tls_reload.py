"""The gateway's own TLS certificate is replaced without a restart: after
SIGHUP (or a change of the files, seen within seconds) new connections get
the new certificate while sessions opened before keep going; a pair that does
not load is refused and the previous one stays in use."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import ssl
import time

from gateway import API_KEY
from pki import make_ca, sign
from wampclient import events_within, session


def serial_of(port: int, ctx: ssl.SSLContext) -> int:
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return int(s.getpeercert()["serialNumber"], 16)


def publish_https(port: int, ctx: ssl.SSLContext, topic: str, n: int) -> None:
    c = http.client.HTTPSConnection("localhost", port, timeout=10, context=ctx)
    c.request("POST", "/publish", body=json.dumps({"topic": topic, "args": [n]}),
              headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    c.close()


def wait_for(what: str, check, within: float = 15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


def test_certificate_reload_under_live_sessions(gateway_factory, workdir, record):
    d = workdir / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    first = sign(d, ca, "first", "DNS:localhost", "serverAuth")
    second = sign(d, ca, "second", "DNS:localhost", "serverAuth")
    live_cert, live_key = d / "live.pem", d / "live.key"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    gw = gateway_factory("tls", "memory://", env={"TELEGRAPHY_TLS__CERT_FILE": str(live_cert), "TELEGRAPHY_TLS__KEY_FILE": str(live_key)})
    ctx = ssl.create_default_context(cafile=str(ca[0]))
    first_serial = serial_of(gw.port, ctx)
    tls = {"ssl_context": ctx, "server_hostname": "localhost"}

    async def scenario():
        figures = {}
        old = await session(gw.port, "127.0.0.1", "reload.topic", **tls)
        # Replace the pair and say so.
        shutil.copy(second[0], live_cert)
        shutil.copy(second[1], live_key)
        gw.proc.send_signal(signal.SIGHUP)
        new_serial = await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for("the new certificate", lambda: (s := serial_of(gw.port, ctx)) != first_serial and s))
        figures["serial_changed"] = new_serial != first_serial
        # The session opened before the reload still gets events; one opened after too.
        new = await session(gw.port, "127.0.0.1", "reload.topic", **tls)
        await asyncio.get_running_loop().run_in_executor(None, publish_https, gw.port, ctx, "reload.topic", 42)
        got = await asyncio.gather(events_within(old, 3.0), events_within(new, 3.0))
        assert got == [[42], [42]], got
        figures["events"] = got

        # A broken pair: refused, the second certificate stays.
        live_key.write_text(first[1].read_text())  # the first key does not match the second certificate
        gw.proc.send_signal(signal.SIGHUP)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for("the refused reload counted", lambda: (gw.metrics().get("telegraphy_tls_reloads_total", result="error") or 0) >= 1))
        figures["serial_after_a_bad_reload"] = serial_of(gw.port, ctx) == new_serial
        assert figures["serial_after_a_bad_reload"]
        # Saving good files again is seen without a signal (the files' times are watched).
        shutil.copy(first[1], live_key)
        shutil.copy(first[0], live_cert)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for("the change seen without SIGHUP", lambda: serial_of(gw.port, ctx) == first_serial))
        figures["reloads"] = {r: gw.metrics().get("telegraphy_tls_reloads_total", result=r) for r in ("ok", "error")}
        for ws in (old, new):
            ws.abort()
        return figures

    figures = asyncio.run(scenario())
    log = gw.log.read_text(errors="replace")
    assert "TLS certificate not reloaded; the previous one stays in use" in log, log[-2000:]
    record(**figures)
