"""The TELEGRAPHY settings dict, read lazily (on each access, never at
import), with defaults. System checks (checks.py) validate it."""

from __future__ import annotations

import urllib.parse

DEFAULTS = {
    # The gateway's WebSocket URL, as browsers reach it.
    "GATEWAY_URL": "ws://127.0.0.1:8080/ws",
    # Where Django publishes: a gateway's HTTP endpoint (PUBLISH_URL, with
    # API_KEY) or the bus (BUS). Neither: the HTTP endpoint next to GATEWAY_URL.
    "PUBLISH_URL": None,
    "BUS": None,
    # TLS to the broker for rediss:// and amqps:// BUS URLs: a CA trusted
    # besides the system's, and a client certificate with its key.
    "BUS_TLS_CA_FILE": None,
    "BUS_TLS_CERT_FILE": None,
    "BUS_TLS_KEY_FILE": None,
    "API_KEY": None,
    # The gateway's TELEGRAPHY_JWT_SECRET (HS256, at least 32 bytes).
    "SECRET": None,
    # The gateway's rpc.secret (TELEGRAPHY_RPC_SECRET, at least 32 bytes):
    # checks the signature of the calls it forwards to @procedure functions.
    "RPC_SECRET": None,
    "TOPIC_PREFIX": "telegraphy",
    "REALM": "realm1",
    # Token lifetime in seconds; the JS client fetches a fresh one on reconnect.
    "TOKEN_TTL": 300,
    # The `role` claim of users' tokens (a built-in or configured gateway role).
    "ROLE": "user",
    # Anonymous visitors: refused a token (403) unless this is True; then
    # they get one for ANONYMOUS_ROLE with the topics is_authorized allows them.
    "ALLOW_ANONYMOUS": False,
    "ANONYMOUS_ROLE": "anonymous",
    # Bus options; must match the gateways' redis.key_prefix / amqp.exchange.
    "REDIS_KEY_PREFIX": "telegraphy:",
    "AMQP_EXCHANGE": "telegraphy",
    # Seconds for each connect and answer when publishing.
    "TIMEOUT": 5,
    # A failed publish after a commit is logged (logger "telegraphy.django")
    # and swallowed: the data is saved, the request should not fail. False
    # raises instead.
    "FAIL_SILENTLY": True,
    # `manage.py telegraphy_gateway`: the binary, and the page origins that
    # may open WebSockets (default: http://127.0.0.1:8000, http://localhost:8000).
    "GATEWAY_BIN": None,
    "ALLOWED_ORIGINS": None,
    # Topics that are not model events (published with telegraphy.publish):
    # {pattern: audience or [audiences]}, audiences "everyone",
    # "authenticated", "staff", "superuser", "group:NAME", "perm:APP.CODENAME".
    "TOPICS": {},
    # Dotted path of `def topics_for(user) -> iterable of patterns`, added to
    # each token (per-user topics such as f"myshop.users.{user.pk}.*").
    "TOPICS_FOR": None,
    # Presence ({% telegraphy_presence "app.Model" obj %}): users who may see
    # a model's events may also be present on, and see who is present on,
    # each of its objects (topics `<model topic>.<pk>`).
    "PRESENCE": True,
    # How users are named in presence (the token's `name` claim): a callable
    # or dotted path `def display_name(user) -> str`; default the full name,
    # else the username.
    "DISPLAY_NAME": None,
}

AUDIENCES = ("everyone", "authenticated", "staff", "superuser")
AUDIENCE_PREFIXES = ("group:", "perm:")


def origins_list(value) -> list[str] | None:
    """ALLOWED_ORIGINS as a list: a list/tuple as it is, a string split at
    commas (like the gateway's TELEGRAPHY_ALLOWED_ORIGINS), None as None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [o.strip() for o in value.split(",") if o.strip()]
    return list(value)


def audiences_of(value) -> list:
    """One TOPICS value as a list of audiences (a string is one audience)."""
    return [value] if isinstance(value, str) else list(value)


def user_settings() -> dict:
    from django.conf import settings

    value = getattr(settings, "TELEGRAPHY", {})
    return value if isinstance(value, dict) else {}


def get(name: str):
    """One setting, from settings.TELEGRAPHY or its default."""
    if name not in DEFAULTS:
        raise KeyError(f"unknown TELEGRAPHY setting {name}")
    return user_settings().get(name, DEFAULTS[name])


def publish_url() -> str | None:
    """Where HTTP publishes go: PUBLISH_URL, else derived from GATEWAY_URL
    (ws://HOST:PORT/ws → http://HOST:PORT), unless BUS is set."""
    if get("BUS"):
        return None
    if get("PUBLISH_URL"):
        return get("PUBLISH_URL")
    return http_url_of(get("GATEWAY_URL"))


def http_url_of(ws_url) -> str | None:
    """http(s)://HOST:PORT of a ws(s):// URL, or None."""
    if not isinstance(ws_url, str):
        return None
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        return None
    return f"{scheme}://{parts.netloc}"


def publisher_from_settings():
    """A telegraphy.Publisher from the settings."""
    from ..publisher import Publisher

    timeout = float(get("TIMEOUT"))
    realm = get("REALM")
    if get("BUS"):
        return Publisher(
            bus=get("BUS"),
            redis_key_prefix=get("REDIS_KEY_PREFIX"),
            amqp_exchange=get("AMQP_EXCHANGE"),
            timeout=timeout,
            realm=realm,
            tls_ca_file=get("BUS_TLS_CA_FILE"),
            tls_cert_file=get("BUS_TLS_CERT_FILE"),
            tls_key_file=get("BUS_TLS_KEY_FILE"),
        )
    return Publisher(gateway_url=publish_url(), api_key=get("API_KEY"), timeout=timeout, realm=realm)
