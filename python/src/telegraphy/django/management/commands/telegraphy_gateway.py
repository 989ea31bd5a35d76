"""`manage.py telegraphy_gateway`: runs a Telegraphy gateway for development,
configured from the TELEGRAPHY settings (JWT secret, API key, realm, bus,
listen address from GATEWAY_URL, allowed page origins).

The command's values are defaults that give way to the user's: the gateway
takes settings from its defaults, then `--config FILE`, then `TELEGRAPHY_*`
environment variables, then flags (docs/configuration.md). So the command
passes its values as environment variables, and only for settings that the
arguments after `--` (flags, or keys of the `--config` file) and the user's
own `TELEGRAPHY_*` variables leave unset: environment variables would
otherwise override the file, and a flag given twice stops the gateway."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tomllib
import urllib.parse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ... import conf
from ...model_events import history_topics
from ...procedures import procedures

BINARY = "telegraphy-gateway"
DEFAULT_ORIGINS = ["http://127.0.0.1:8000", "http://localhost:8000"]


@dataclasses.dataclass(frozen=True)
class Key:
    """One gateway setting the command may provide: its environment
    variables (the first is the one the command sets), flags, and TOML path."""

    env: tuple
    flags: tuple
    toml: tuple


KEYS = {
    "listen": Key(("TELEGRAPHY_LISTEN",), ("--listen",), ("listen",)),
    "admin_listen": Key(("TELEGRAPHY_ADMIN_LISTEN",), ("--admin-listen",), ("admin_listen",)),
    "bus": Key(("TELEGRAPHY_BUS",), ("--bus",), ("bus",)),
    "realms": Key(("TELEGRAPHY_REALMS",), ("--realm",), ("realms",)),
    "allowed_origins": Key(("TELEGRAPHY_ALLOWED_ORIGINS",), (), ("allowed_origins",)),
    "api_keys": Key(("TELEGRAPHY_API_KEYS",), ("--api-keys",), ("api_keys",)),
    "jwt_secret": Key(("TELEGRAPHY_JWT_SECRET", "TELEGRAPHY_AUTH__JWT_SECRET"), (), ("auth", "jwt_secret")),
    "jwt_public_key_file": Key(("TELEGRAPHY_JWT_PUBLIC_KEY_FILE", "TELEGRAPHY_AUTH__JWT_PUBLIC_KEY_FILE"), (),
                               ("auth", "jwt_public_key_file")),
    "allow_anonymous": Key(("TELEGRAPHY_ALLOW_ANONYMOUS", "TELEGRAPHY_AUTH__ALLOW_ANONYMOUS"),
                           ("--allow-anonymous", "--dev"), ("auth", "allow_anonymous")),
    "redis_key_prefix": Key(("TELEGRAPHY_REDIS__KEY_PREFIX",), (), ("redis", "key_prefix")),
    "amqp_exchange": Key(("TELEGRAPHY_AMQP__EXCHANGE",), (), ("amqp", "exchange")),
    "history_topics": Key(("TELEGRAPHY_HISTORY__TOPICS",), (), ("history", "topics")),
    "rpc_secret": Key(("TELEGRAPHY_RPC_SECRET", "TELEGRAPHY_RPC__SECRET"), (), ("rpc", "secret")),
    "rpc_http": Key(("TELEGRAPHY_RPC__HTTP",), (), ("rpc", "http")),
}
#: The built-in `user` role written out, plus the calls of this project's
#: @procedure functions (a [roles.user] replaces the built-in role whole).
USER_ROLE = {"SUBSCRIBE": "*", "PUBLISH_RATE": "50", "PUBLISH_BURST": "100", "CALL_RATE": "50", "CALL_BURST": "100"}
#: Gateway flags that only print something and exit: no ports are checked.
PRINT_ONLY = {"--print-config", "--help", "-h", "--version", "-V"}


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


def split_address(address: str) -> tuple[str, int]:
    host, _, port = str(address).rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def address_in_use(address: str) -> bool:
    """Whether something already listens on `address` (IP:PORT)."""
    try:
        host, port = split_address(address)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError):
        return False  # not an address we can check: the gateway will say what is wrong
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError:
            return True
    return False


def free_address(host: str = "127.0.0.1") -> str:
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def passthrough_flags(args) -> dict:
    """{flag: value} of the gateway arguments after `--` (`--x v`, `--x=v`,
    `-c FILE`, `-cFILE`; a switch gets True; the last one given wins)."""
    flags, i = {}, 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if eq:
                flags[name] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("-") and name not in (
                    "--dev", "--allow-anonymous", "--print-config", "--help", "--version"):
                flags[name] = args[i + 1]
                i += 1
            else:
                flags[name] = True
        elif arg.startswith("-") and len(arg) > 1:
            name = arg[:2]
            if len(arg) > 2:
                flags[name] = arg[2:]
            elif name == "-c" and i + 1 < len(args):
                flags[name] = args[i + 1]
                i += 1
            else:
                flags[name] = True
        i += 1
    if "-c" in flags:
        flags.setdefault("--config", flags.pop("-c"))
    return flags


def read_config(path) -> dict:
    """The TOML file's table ({} when unreadable: the gateway reports that)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, TypeError):
        return {}


def toml_value(table: dict, path: tuple):
    for part in path:
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
    return table


@dataclasses.dataclass
class Plan:
    command: list
    env: dict  # what the command adds to the environment
    values: dict  # setting → effective value, where known
    sources: dict  # setting → where it comes from
    warnings: list
    print_only: bool


def plan(binary: str, options: dict, gateway_args, environ=None) -> Plan:
    """What to run: the gateway command line and the environment variables
    the command adds, each setting's effective value and its source."""
    environ = dict(os.environ if environ is None else environ)
    upper_env = {k.upper(): v for k, v in environ.items()}
    flags = passthrough_flags(gateway_args)
    config_path = flags.get("--config")
    config = read_config(config_path) if isinstance(config_path, str) else {}
    config_name = os.path.basename(config_path) if isinstance(config_path, str) else None

    bus = options.get("bus") or conf.get("BUS")
    origins = conf.origins_list(options.get("origins") or conf.get("ALLOWED_ORIGINS")) or DEFAULT_ORIGINS
    ours = {
        "listen": (options.get("listen") or listen_address(conf.get("GATEWAY_URL")),
                   "--listen" if options.get("listen") else "TELEGRAPHY['GATEWAY_URL']"),
        "admin_listen": (options.get("admin_listen") or None,
                         "--admin-listen" if options.get("admin_listen") else "a free port"),
        "bus": (bus or "memory://", "--bus" if options.get("bus") else
                ("TELEGRAPHY['BUS']" if conf.get("BUS") else "the embedded bus")),
        "realms": (conf.get("REALM"), "TELEGRAPHY['REALM']"),
        "allowed_origins": (",".join(origins), "--origin" if options.get("origins") else (
            "TELEGRAPHY['ALLOWED_ORIGINS']" if conf.get("ALLOWED_ORIGINS") else "runserver's default")),
        "api_keys": (conf.get("API_KEY") or "", "TELEGRAPHY['API_KEY']"),
        "jwt_secret": (conf.get("SECRET") or "", "TELEGRAPHY['SECRET']"),
        # Django mints tokens for every visitor who may see events (anonymous
        # ones included when ALLOW_ANONYMOUS), narrowed to their topics; a
        # session without a token would get the anonymous role's "*".
        "allow_anonymous": ("false", "the command (Django mints every token)"),
        "redis_key_prefix": (conf.get("REDIS_KEY_PREFIX") if bus and bus.startswith("redis://") else None,
                             "TELEGRAPHY['REDIS_KEY_PREFIX']"),
        "amqp_exchange": (conf.get("AMQP_EXCHANGE") if bus and bus.startswith("amqp://") else None,
                          "TELEGRAPHY['AMQP_EXCHANGE']"),
        "jwt_public_key_file": (None, None),
        "history_topics": (",".join(history_topics()) or None, "ModelEvents with history = True"),
        "rpc_secret": (conf.get("RPC_SECRET") if procedures() else None, "TELEGRAPHY['RPC_SECRET']"),
        "rpc_http": (rpc_endpoints(origins[0]), "the @procedure functions (runserver at the first origin)"),
    }
    explicit = {"listen": "--listen", "admin_listen": "--admin-listen", "bus": "--bus", "allowed_origins": "--origin"}
    env, values, sources, warnings = {}, {}, {}, []
    for name, key in KEYS.items():
        flag = next((f for f in key.flags if f in flags), None)
        if name in explicit and options.get({"allowed_origins": "origins"}.get(name, name)):
            if flag:
                raise CommandError(f"{explicit[name]} is given twice: as the command's {explicit[name]} and as the "
                                   f"gateway's {flag} after --; keep one")
            value, source = ours[name]
            env[key.env[0]] = value
            values[name], sources[name] = value, explicit[name]
            continue
        user_env = next((e for e in key.env if e in upper_env), None)
        in_file = toml_value(config, key.toml)
        if flag:
            values[name], sources[name] = flags[flag], f"{flag} (after --)"
        elif user_env:
            values[name], sources[name] = upper_env[user_env], f"${user_env}"
        elif in_file is not None:
            values[name], sources[name] = in_file, config_name
        else:
            value, source = ours[name]
            if name == "admin_listen":
                value = free_address()
            if name == "jwt_secret" and (toml_value(config, KEYS["jwt_public_key_file"].toml) is not None or any(
                    e in upper_env for e in KEYS["jwt_public_key_file"].env)):
                warnings.append("the gateway verifies tokens with a public key (jwt_public_key_file), but Django "
                                "signs them with TELEGRAPHY['SECRET'] (HS256): browsers will be refused")
                continue
            if value is None:
                continue
            env[key.env[0]] = value
            values[name], sources[name] = value, source
    if procedures() and not conf.get("RPC_SECRET"):
        warnings.append("this project has @procedure functions but no TELEGRAPHY['RPC_SECRET']: browsers cannot call them")
    # Browsers may call the project's procedures: the built-in user role
    # written out with `call`, unless the user configured roles.user.
    names = sorted(procedures())
    role_set = toml_value(config, ("roles", "user")) is not None or any(k.startswith("TELEGRAPHY_ROLES__USER__") for k in upper_env)
    if names and "rpc_http" in values and not role_set:
        role = {**USER_ROLE, "CALL": ",".join(names)}
        env.update({f"TELEGRAPHY_ROLES__USER__{k}": v for k, v in role.items()})
        values["user_call"], sources["user_call"] = ",".join(names), "the @procedure functions"
    # Settings that must agree with Django's, when the user set them elsewhere.
    if "jwt_secret" in values and sources["jwt_secret"] != "TELEGRAPHY['SECRET']" and \
            values["jwt_secret"] != conf.get("SECRET"):
        warnings.append(f"the gateway's JWT secret (from {sources['jwt_secret']}) is not TELEGRAPHY['SECRET']: "
                        f"it will refuse the tokens Django mints")
    if not bus and "api_keys" in values and sources["api_keys"] != "TELEGRAPHY['API_KEY']":
        keys = values["api_keys"]
        keys = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else list(keys or [])
        if conf.get("API_KEY") not in keys:
            warnings.append(f"the gateway's API keys (from {sources['api_keys']}) do not include "
                            f"TELEGRAPHY['API_KEY']: Django's publishes will be refused (HTTP 401)")
    if "realms" in values and sources["realms"] != "TELEGRAPHY['REALM']":
        realms = values["realms"]
        realms = [r.strip() for r in realms.split(",")] if isinstance(realms, str) else list(realms)
        if conf.get("REALM") not in realms:
            warnings.append(f"the gateway's realms (from {sources['realms']}) do not include "
                            f"TELEGRAPHY['REALM'] = {conf.get('REALM')!r}")
    listen = values.get("listen", "127.0.0.1:8080")
    if sources.get("listen") != "TELEGRAPHY['GATEWAY_URL']" and listen_address(conf.get("GATEWAY_URL")) != listen:
        warnings.append(f"the gateway listens on {listen} (from {sources.get('listen', 'its default')}), but "
                        f"browsers connect to TELEGRAPHY['GATEWAY_URL'] = {conf.get('GATEWAY_URL')}")
    return Plan([binary, *gateway_args], env, values, sources, warnings, any(f in flags for f in PRINT_ONLY))


def gateway_environment(bus: str | None, origins: list[str]) -> dict:
    """The TELEGRAPHY_* variables that configure the gateway like Django
    (every one of them; `plan` leaves out those the user set)."""
    env = {
        "TELEGRAPHY_JWT_SECRET": conf.get("SECRET") or "",
        "TELEGRAPHY_API_KEYS": conf.get("API_KEY") or "",
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


def rpc_url(p: Plan) -> str:
    value = str(p.values.get("rpc_http", ""))
    start = value.find('url = "')
    return value[start + 7:value.find('"', start + 7)] if start >= 0 else "(none)"


def rpc_endpoints(origin: str) -> str | None:
    """`[[rpc.http]]` as an environment value: each @procedure to
    telegraphy/rpc/ on the development server (None without procedures or
    RPC_SECRET, or when the project does not include telegraphy.django.urls)."""
    from django.urls import NoReverseMatch, reverse

    names = sorted(procedures())
    if not names or not conf.get("RPC_SECRET"):
        return None
    try:
        url = origin.rstrip("/") + reverse("telegraphy:rpc")
    except NoReverseMatch:
        return None
    entries = ", ".join(f'{{procedure = "{name}", url = "{url}"}}' for name in names)
    return f"[{entries}]"


def show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


class Command(BaseCommand):
    help = (
        "Runs a Telegraphy gateway for development with this project's TELEGRAPHY settings. Arguments after -- "
        "go to the gateway (e.g. -- --config gateway.toml); what they set (as flags or in the --config file), and "
        "your own TELEGRAPHY_* environment variables, take precedence over the command's defaults."
    )
    requires_system_checks = ["telegraphy"]

    def add_arguments(self, parser):
        parser.add_argument("--binary", help="path of the telegraphy-gateway binary (default: GATEWAY_BIN, "
                                             "$TELEGRAPHY_GATEWAY_BIN, PATH, target/release|debug above the project)")
        parser.add_argument("--listen", help="public listener IP:PORT (default: the host and port of GATEWAY_URL)")
        parser.add_argument("--admin-listen", help="admin listener IP:PORT for /metrics, /healthz, /readyz "
                                                   "(default: a free port on 127.0.0.1)")
        parser.add_argument("--bus", help="bus URL (default: TELEGRAPHY['BUS'], else the embedded memory://)")
        parser.add_argument("--origin", action="append", dest="origins",
                            help="a page origin allowed to open WebSockets (repeat); default: ALLOWED_ORIGINS, "
                                 "else http://127.0.0.1:8000 and http://localhost:8000")
        parser.add_argument("gateway_args", nargs="*", help="gateway arguments (after --), e.g. -- --config gw.toml")

    def handle(self, *args, **options):
        binary = find_binary(options["binary"])
        p = plan(binary, options, options["gateway_args"])
        if not p.print_only:
            for name, what in (("listen", "the WebSocket/publish listener"), ("admin_listen", "the admin listener")):
                address = p.values.get(name)
                if address is not None and not isinstance(address, bool) and address_in_use(str(address)):
                    hint = ("stop the program using it (another gateway?), or pick another port: --listen IP:PORT "
                            "and a GATEWAY_URL to match" if name == "listen" else
                            "stop the program using it, or pick another one with --admin-listen IP:PORT")
                    raise CommandError(f"{address} ({what}, from {p.sources[name]}) is already in use: {hint}")
            listen = p.values.get("listen", "127.0.0.1:8080")
            http = f"http://{listen}"
            self.stdout.write(
                "Telegraphy gateway for this Django project\n"
                f"  binary      {binary}\n"
                f"  WebSocket   ws://{listen}/ws   (from {p.sources.get('listen', 'the gateway default')}; "
                f"TELEGRAPHY['GATEWAY_URL'] = {conf.get('GATEWAY_URL')})\n"
                f"  publish     {http}/publish   (API key: TELEGRAPHY['API_KEY'])\n"
                f"  bus         {show(p.values.get('bus', 'memory://'))} "
                f"(from {p.sources.get('bus', 'the gateway default')})\n"
                f"  origins     {show(p.values.get('allowed_origins', '(none)'))} "
                f"(from {p.sources.get('allowed_origins', 'the gateway default')})\n"
                f"  metrics     http://{p.values.get('admin_listen', '127.0.0.1:9090')}/metrics "
                f"(from {p.sources.get('admin_listen', 'the gateway default')})\n"
                + (f"  procedures  {p.values['user_call']} → {rpc_url(p)} (the user role may call them)\n"
                   if "user_call" in p.values else "")
                + "".join(f"  warning     {w}\n" for w in p.warnings)
                + "Ctrl-C stops it."
            )
            self.stdout.flush()
        env = {**os.environ, **p.env}
        try:
            process = subprocess.Popen(p.command, env=env)
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
