"""`Publisher`: one handle that publishes events through a gateway's HTTP
endpoint, straight onto Redis, or onto RabbitMQ; the Python twin of the Rust
`telegraphy-publisher` crate (same checks, same error kinds, same bytes)."""

from __future__ import annotations

import os
import urllib.parse

from .envelope import Envelope, canonical_filter
from .errors import InvalidInput
from .transports import AmqpTransport, BusTls, HttpTransport, RedisTransport, redact
from .uri import check_topic, is_valid_topic

#: The realm bus events go to unless `publish(realm=...)` names another. (Over
#: HTTP, no realm means the gateway's first configured realm.)
DEFAULT_REALM = "realm1"
DEFAULT_REDIS_KEY_PREFIX = "telegraphy:"
DEFAULT_AMQP_EXCHANGE = "telegraphy"
DEFAULT_TIMEOUT = 5.0


class Publisher:
    """Publishes events; thread-safe, connects lazily, reconnects by itself.

    Exactly one of `gateway_url` (with `api_key`) or `bus`::

        Publisher(gateway_url="http://127.0.0.1:8080", api_key="...")
        Publisher(bus="redis://127.0.0.1:6379/0", redis_key_prefix="telegraphy:")
        Publisher(bus="amqp://guest:guest@127.0.0.1:5672/%2f", amqp_exchange="telegraphy")
        Publisher(bus="rediss://user:pass@redis.internal:6380/0", tls_ca_file="/etc/ssl/redis-ca.pem")
        Publisher(bus="redis+cluster://10.0.0.1:7000,10.0.0.2:7000")   # a Redis Cluster
        Publisher(bus="redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster")

    `rediss://` and `amqps://` speak TLS: the broker's certificate must be
    signed by a CA of the system's or by `tls_ca_file`, and name the URL's
    host; `tls_cert_file` and `tls_key_file` are a client certificate for
    brokers that ask for one (the gateways' `[bus_tls]`).

    `redis_key_prefix` and `amqp_exchange` must match the gateways' settings
    (`redis.key_prefix`, `amqp.exchange`). `timeout` (seconds) bounds each
    connect and each answer. `realm` is the default realm of `publish`.
    """

    def __init__(
        self,
        gateway_url: str | None = None,
        api_key: str | None = None,
        *,
        bus: str | None = None,
        redis_key_prefix: str = DEFAULT_REDIS_KEY_PREFIX,
        amqp_exchange: str = DEFAULT_AMQP_EXCHANGE,
        timeout: float = DEFAULT_TIMEOUT,
        realm: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
    ):
        if realm is not None and not is_valid_topic(realm):
            raise InvalidInput(f"`{realm}` is not a valid realm name")
        self.realm = realm
        if (gateway_url is None) == (bus is None):
            raise InvalidInput(
                "say where to publish: Publisher(gateway_url='http://HOST:8080', api_key=KEY) "
                "or Publisher(bus='redis://HOST:6379/0' | 'amqp://USER:PASS@HOST:5672/VHOST'), not both"
            )
        if gateway_url is not None:
            self._transport = HttpTransport(gateway_url, api_key, timeout)
            return
        scheme = urllib.parse.urlsplit(bus).scheme if isinstance(bus, str) else ""
        tls = BusTls(tls_ca_file, tls_cert_file, tls_key_file)
        if tls.is_set() and scheme not in ("rediss", "amqps", "rediss+cluster", "rediss+sentinel"):
            raise InvalidInput(f"TLS files are given but the bus `{redact(str(bus))}` is not a rediss:// or amqps:// URL")
        if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"):
            self._transport = RedisTransport(bus, redis_key_prefix, timeout, tls)
        elif scheme in ("amqp", "amqps"):
            self._transport = AmqpTransport(bus, amqp_exchange, timeout, tls)
        elif scheme == "memory":
            raise InvalidInput(
                "memory:// is the bus inside one gateway process; other programs cannot reach it. Publish through "
                "that gateway's HTTP endpoint instead: Publisher(gateway_url='http://HOST:8080', api_key=KEY)"
            )
        else:
            raise InvalidInput(
                f"bus `{redact(str(bus))}` is not a bus URL; use redis://HOST:6379/0 (rediss:// for TLS), "
                f"redis+cluster://HOST:7000,HOST2:7000 (a Redis Cluster), redis+sentinel://HOST:26379/NAME (Sentinel) or "
                f"amqp://USER:PASS@HOST:5672/VHOST (amqps:// for TLS), or gateway_url= for a gateway's HTTP endpoint"
            )

    @property
    def kind(self) -> str:
        """`http`, `redis` or `amqp`."""
        return self._transport.kind

    def publish(
        self,
        topic: str,
        args=None,
        kwargs=None,
        *,
        realm: str | None = None,
        exclude=None,
        eligible=None,
        exclude_authid=None,
        eligible_authid=None,
        exclude_authrole=None,
        eligible_authrole=None,
        require_subscriber: bool = False,
        retain: bool = False,
    ) -> int:
        """Publishes one event; returns its publication id once the gateway
        or the bus accepted it. Raises a `PublishError` subclass otherwise.

        `args` (list) and `kwargs` (dict) are the payload: None, bool, int,
        float, str, bytes (binary), lists and dicts with string keys. The six
        black/white lists pick who may receive it (session ids, authids =
        the token's `sub`, authroles); an empty `eligible*` list admits nobody.

        With `require_subscriber=True` the publish succeeds only if at least
        one gateway node subscribed to the topic got the event, and raises
        `NoSubscriber` otherwise (by default an event nobody subscribes to
        is accepted and dropped, which is not an error).

        With `retain=True` the event is kept as the topic's retained event:
        a subscriber that asks (`get_retained`) gets it at once.
        """
        check_topic(topic)
        realm = realm if realm is not None else self.realm
        if realm is not None and not is_valid_topic(realm):
            raise InvalidInput(f"`{realm}` is not a valid realm name")
        if self._transport.kind != "http" and realm is None:
            realm = DEFAULT_REALM
        options = {
            "exclude": exclude, "eligible": eligible,
            "exclude_authid": exclude_authid, "eligible_authid": eligible_authid,
            "exclude_authrole": exclude_authrole, "eligible_authrole": eligible_authrole,
        }
        filter = canonical_filter({k: v for k, v in options.items() if v is not None})
        if args is not None and not isinstance(args, (list, tuple)):
            raise InvalidInput(f"args must be a list, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise InvalidInput(f"kwargs must be a dict, not {type(kwargs).__name__}")
        envelope = Envelope.new(realm, topic, args, kwargs, filter)
        envelope.retain = bool(retain)
        return self._transport.publish(envelope, require_subscriber=bool(require_subscriber))

    def presence(self, topic: str, *, realm: str | None = None, limit: int | None = None) -> dict:
        """Who is on `topic` now, on every gateway node: a dict with
        `count` (distinct authids), `sessions`, `authids` (sorted, at most
        `limit`, default 100, at most 1,000) and `truncated`. A session is on
        a topic while it holds an exact subscription to it (docs/protocol.md,
        "Presence"). Asks a gateway: only a Publisher with `gateway_url`
        can (the bus itself does not know who is connected)::

            Publisher(gateway_url=URL, api_key=KEY).presence("shop.order.7")["count"]
        """
        check_topic(topic)
        realm = realm if realm is not None else self.realm
        if realm is not None and not is_valid_topic(realm):
            raise InvalidInput(f"`{realm}` is not a valid realm name")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000):
            raise InvalidInput("limit must be an int from 1 to 1000")
        if self._transport.kind != "http":
            raise InvalidInput(
                "presence comes from the gateways, not the bus: use a Publisher with gateway_url= and api_key= "
                "(TELEGRAPHY_GATEWAY_URL / TELEGRAPHY['GATEWAY_URL']) to ask"
            )
        return self._transport.presence(topic, realm, limit)

    def close(self):
        """Closes the broker connection (a later publish reconnects)."""
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        where = getattr(self._transport, "endpoint", None) or redact(getattr(self._transport, "url", ""))
        return f"<telegraphy.Publisher {self.kind} {where}>"


def _secret(env, name: str) -> str | None:
    """`name`, or the content of the file `name`_FILE names (without its
    trailing newline); both set is refused."""
    path = env.get(f"{name}_FILE")
    if path is None:
        return env.get(name)
    if env.get(name) is not None:
        raise InvalidInput(f"both {name} and {name}_FILE are set; keep one")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read()
    except OSError as e:
        raise InvalidInput(f"{name}_FILE: cannot read {path}: {e.strerror or e}") from None
    return value[:-1] if value.endswith("\n") else value


def publisher_from_env(environ=None) -> Publisher:
    """A Publisher configured like `telegraphy-publish`: TELEGRAPHY_BUS, or
    TELEGRAPHY_GATEWAY_URL with TELEGRAPHY_API_KEY; TELEGRAPHY_REDIS__KEY_PREFIX,
    TELEGRAPHY_AMQP__EXCHANGE, TELEGRAPHY_TIMEOUT (seconds) and the TLS files
    TELEGRAPHY_BUS_TLS__CA_FILE / __CERT_FILE / __KEY_FILE when set.
    TELEGRAPHY_BUS_FILE and TELEGRAPHY_API_KEY_FILE name files holding those
    secrets (as Kubernetes mounts them)."""
    env = os.environ if environ is None else environ
    bus, gateway = _secret(env, "TELEGRAPHY_BUS"), env.get("TELEGRAPHY_GATEWAY_URL")
    timeout = env.get("TELEGRAPHY_TIMEOUT")
    try:
        timeout = float(timeout.rstrip("s")) if timeout else DEFAULT_TIMEOUT
    except ValueError:
        raise InvalidInput(f"TELEGRAPHY_TIMEOUT={env.get('TELEGRAPHY_TIMEOUT')!r} is not a number of seconds") from None
    if bus and gateway:
        raise InvalidInput("both TELEGRAPHY_BUS and TELEGRAPHY_GATEWAY_URL are set; keep one")
    if bus:
        return Publisher(
            bus=bus,
            redis_key_prefix=env.get("TELEGRAPHY_REDIS__KEY_PREFIX", DEFAULT_REDIS_KEY_PREFIX),
            amqp_exchange=env.get("TELEGRAPHY_AMQP__EXCHANGE", DEFAULT_AMQP_EXCHANGE),
            timeout=timeout,
            tls_ca_file=env.get("TELEGRAPHY_BUS_TLS__CA_FILE"),
            tls_cert_file=env.get("TELEGRAPHY_BUS_TLS__CERT_FILE"),
            tls_key_file=env.get("TELEGRAPHY_BUS_TLS__KEY_FILE"),
        )
    if gateway:
        return Publisher(gateway_url=gateway, api_key=_secret(env, "TELEGRAPHY_API_KEY"), timeout=timeout)
    raise InvalidInput(
        "say where to publish: set TELEGRAPHY_GATEWAY_URL (http://HOST:8080) and TELEGRAPHY_API_KEY, or "
        "TELEGRAPHY_BUS (redis://... or amqp://...); under Django, the TELEGRAPHY settings dict"
    )
