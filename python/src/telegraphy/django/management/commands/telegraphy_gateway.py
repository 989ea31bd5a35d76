"""`manage.py telegraphy_gateway`: runs a Telegraphy gateway for development,
configured from the TELEGRAPHY settings (JWT secret, API key, realm, bus,
listen address from GATEWAY_URL, allowed page origins)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import urllib.parse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ... import conf

BINARY = "telegraphy-gateway"
DEFAULT_ORIGINS = ["http://127.0.0.1:8000", "http://localhost:8000"]


def find_binary(explicit: str | None = None) -> str:
    """The gateway binary: --binary, TELEGRAPHY['GATEWAY_BIN'], env
    TELEGRAPHY_GATEWAY_BIN, `telegraphy-gateway` on PATH, or a built one in
    a `target/{release,debug}/` of a parent folder of BASE_DIR or the cwd."""
    for candidate in (explicit, conf.get("GATEWAY_BIN"), os.environ.get("TELEGRAPHY_GATEWAY_BIN")):
        if candidate:
            if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
                raise CommandError(f"the gateway binary {candidate} does not exist or is not executable")
            return str(candidate)
    on_path = shutil.which(BINARY)
    if on_path:
        return on_path
    starts = [pathlib.Path.cwd()]
    if getattr(settings, "BASE_DIR", None):
        starts.insert(0, pathlib.Path(settings.BASE_DIR))
    for start in starts:
        for folder in [start.resolve(), *start.resolve().parents]:
            for profile in ("release", "debug"):
                path = folder / "target" / profile / BINARY
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    raise CommandError(
        f"cannot find {BINARY}: build it (cargo build -p telegraphy-gateway), put it on PATH, or set "
        f"TELEGRAPHY['GATEWAY_BIN'] or the TELEGRAPHY_GATEWAY_BIN environment variable"
    )


def listen_address(gateway_url: str) -> str:
    parts = urllib.parse.urlsplit(gateway_url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gateway_environment(bus: str | None, origins: list[str]) -> dict:
    """The TELEGRAPHY_* variables that configure the gateway like Django."""
    env = {
        "TELEGRAPHY_JWT_SECRET": conf.get("SECRET") or "",
        "TELEGRAPHY_API_KEYS": conf.get("API_KEY") or "",
        # Django mints tokens for every visitor who may see events (anonymous
        # ones included when ALLOW_ANONYMOUS), narrowed to their topics; a
        # session without a token would get the anonymous role's "*".
        "TELEGRAPHY_ALLOW_ANONYMOUS": "false",
        "TELEGRAPHY_REALMS": conf.get("REALM"),
        "TELEGRAPHY_ALLOWED_ORIGINS": ",".join(origins),
        "TELEGRAPHY_BUS": bus or "memory://",
    }
    if bus and bus.startswith("redis://"):
        env["TELEGRAPHY_REDIS__KEY_PREFIX"] = conf.get("REDIS_KEY_PREFIX")
    if bus and bus.startswith("amqp://"):
        env["TELEGRAPHY_AMQP__EXCHANGE"] = conf.get("AMQP_EXCHANGE")
    return env


class Command(BaseCommand):
    help = (
        "Runs a Telegraphy gateway for development with this project's TELEGRAPHY settings. Arguments after -- "
        "go to the gateway (e.g. -- --config gateway.toml)."
    )
    requires_system_checks = ["telegraphy"]

    def add_arguments(self, parser):
        parser.add_argument("--binary", help="path of the telegraphy-gateway binary")
        parser.add_argument("--listen", help="public listener IP:PORT (default: from GATEWAY_URL)")
        parser.add_argument("--admin-listen", default="127.0.0.1:9090", help="admin listener (metrics, health)")
        parser.add_argument("--bus", help="bus URL (default: TELEGRAPHY['BUS'], else the embedded memory://)")
        parser.add_argument("--origin", action="append", dest="origins",
                            help="a page origin allowed to open WebSockets (repeat); default: ALLOWED_ORIGINS, "
                                 "else http://127.0.0.1:8000 and http://localhost:8000")
        parser.add_argument("gateway_args", nargs="*", help="extra gateway arguments (after --)")

    def handle(self, *args, **options):
        binary = find_binary(options["binary"])
        gateway_url = conf.get("GATEWAY_URL")
        listen = options["listen"] or listen_address(gateway_url)
        bus = options["bus"] or conf.get("BUS")
        origins = options["origins"] or conf.get("ALLOWED_ORIGINS") or DEFAULT_ORIGINS
        env = {**os.environ, **gateway_environment(bus, origins)}
        command = [binary, "--listen", listen, "--admin-listen", options["admin_listen"], *options["gateway_args"]]
        http = f"http://{listen}"
        self.stdout.write(
            "Telegraphy gateway for this Django project\n"
            f"  binary      {binary}\n"
            f"  WebSocket   ws://{listen}/ws   (TELEGRAPHY['GATEWAY_URL'] = {gateway_url})\n"
            f"  publish     {http}/publish   (API key: TELEGRAPHY['API_KEY'])\n"
            f"  bus         {bus or 'memory:// (embedded, one node)'}\n"
            f"  origins     {', '.join(origins)}\n"
            f"  metrics     http://{options['admin_listen']}/metrics\n"
            "Ctrl-C stops it."
        )
        self.stdout.flush()
        try:
            process = subprocess.Popen(command, env=env)
        except OSError as e:
            raise CommandError(f"cannot start {binary}: {e}") from None
        previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGTERM)
            code = process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            raise CommandError(f"the gateway exited with status {code}")
