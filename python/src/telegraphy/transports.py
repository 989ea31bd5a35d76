"""The three ways an event leaves this process: a gateway's HTTP endpoint,
Redis PUBLISH, RabbitMQ with publisher confirms. Each `publish` returns only
once the other side accepted the event, else raises a PublishError."""

from __future__ import annotations

import json
import secrets
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request

from .envelope import Envelope, canonical_filter, canonical_value, to_json_value
from .errors import InvalidInput, NoSubscriber, PublishError, Rejected, Unauthorized, Unavailable

ENVELOPE_CONTENT_TYPE = "application/x-telegraphy-envelope"
#: AMQP routing keys are short strings (realm + "." + topic).
MAX_ROUTING_KEY = 255


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class HttpTransport:
    """`POST {gateway}/publish` with `Authorization: Bearer KEY` (stdlib only)."""

    kind = "http"

    def __init__(self, url: str, api_key: str | None, timeout: float):
        if not isinstance(url, str) or not url:
            raise InvalidInput("the gateway URL is empty; set it to the gateway's http://HOST:PORT")
        base = url.rstrip("/")
        if base.startswith(("ws://", "wss://")):
            raise InvalidInput(
                f"gateway URL `{url}` is the WebSocket URL; publishing uses HTTP on the same listener: "
                f"http://HOST:PORT (https:// with TLS)"
            )
        if not base.startswith(("http://", "https://")):
            raise InvalidInput(f"gateway URL `{url}` must start with http:// or https://")
        if not api_key:
            raise InvalidInput(
                "publishing through a gateway needs an API key (TELEGRAPHY_API_KEY, or TELEGRAPHY['API_KEY'] "
                "under Django): one of the gateway's TELEGRAPHY_API_KEYS"
            )
        self.endpoint = base if base.endswith("/publish") else base + "/publish"
        self.base = self.endpoint[: -len("/publish")]
        self.api_key = api_key
        self.timeout = timeout

    def _exchange(self, request: urllib.request.Request):
        """Sends `request`; (status, parsed JSON or None, a message for errors)."""
        url = request.full_url
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, text = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode("utf-8", "replace")
        except (TimeoutError, socket.timeout):
            raise Unavailable(f"the gateway at {url} did not answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Unavailable(f"the gateway at {url} cannot be reached: {reason}") from None
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        message = parsed.get("message") if isinstance(parsed, dict) else None
        return status, parsed, message or text.strip() or f"HTTP {status}"

    def presence(self, topic: str, realm: str | None, limit: int | None) -> dict:
        """`GET {gateway}/presence`: who is on `topic`, cluster-wide."""
        query = {"topic": topic}
        if realm is not None:
            query["realm"] = realm
        if limit is not None:
            query["limit"] = str(limit)
        url = f"{self.base}/presence?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, method="GET", headers={"Authorization": f"Bearer {self.api_key}"})
        status, parsed, message = self._exchange(request)
        if status == 200 and isinstance(parsed, dict) and isinstance(parsed.get("count"), int):
            return parsed
        if status in (401, 403):
            raise Unauthorized(f"the gateway refused the API key: {message}")
        if status == 400:
            raise InvalidInput(f"the gateway refused the question: {message}")
        if status == 404:
            raise InvalidInput(f"{self.base} has no /presence (HTTP 404): a gateway older than presence, or not a gateway")
        raise Unavailable(f"the gateway answered HTTP {status}: {message}")

    def publish(self, envelope: Envelope, require_subscriber: bool = False) -> int:
        body = {
            "topic": envelope.topic,
            "args": to_json_value(canonical_value(list(envelope.args), 2, "args"), "args"),
            "kwargs": to_json_value(canonical_value(envelope.kwargs, 2, "kwargs"), "kwargs"),
            "options": canonical_filter(envelope.filter),
        }
        if envelope.realm is not None:
            body["realm"] = envelope.realm
        if envelope.retain:
            body["options"] = dict(body["options"], retain=True)
        if require_subscriber:
            body["require_subscriber"] = True
        data = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            self.endpoint,
            data=data,
            method="POST",
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        status, parsed, message = self._exchange(request)
        if status == 200:
            pid = parsed.get("id") if isinstance(parsed, dict) else None
            if isinstance(pid, int) and not isinstance(pid, bool):
                return pid
            raise Rejected(f"the gateway at {self.endpoint} answered 200 without a publication id")
        if status in (401, 403):
            raise Unauthorized(f"the gateway refused the API key: {message}")
        if status in (400, 413):
            raise InvalidInput(f"the gateway refused the event: {message}")
        if status == 404:
            raise InvalidInput(f"{self.endpoint} is not a Telegraphy publish endpoint (HTTP 404); check the gateway URL")
        if status == 503:
            raise Unavailable(f"the gateway cannot take events now: {message}")
        if status == 409 and isinstance(parsed, dict) and parsed.get("error") == "no_subscriber":
            raise NoSubscriber(message)
        raise Unavailable(f"the gateway answered HTTP {status}: {message}")

    def close(self):
        pass


def _publish_script() -> str:
    """The Lua script every Redis publish runs (history, retention and
    PUBLISH in one atomic step); the same file as the gateway's."""
    from importlib.resources import files

    return files(__package__).joinpath("redis_publish.lua").read_text(encoding="utf-8")


class BusTls:
    """TLS files for rediss:// and amqps:// (all optional): a CA trusted
    besides the system's, and a client certificate with its key."""

    def __init__(self, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None):
        if (cert_file is None) != (key_file is None):
            raise InvalidInput("give both tls_cert_file and tls_key_file (a client certificate and its key), or neither")
        for what, path in (("tls_ca_file", ca_file), ("tls_cert_file", cert_file), ("tls_key_file", key_file)):
            if path is not None and not os.path.isfile(path):
                raise InvalidInput(f"{what}: {path} does not exist")
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file

    def is_set(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def context(self):
        """An SSLContext: the system's CAs and `ca_file`, the server's name checked."""
        import ssl

        ctx = ssl.create_default_context()
        if self.ca_file:
            ctx.load_verify_locations(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


#: What to check when a broker's certificate is refused (the Rust crates say the same).
TLS_HINT = ("its certificate must be signed by a CA this client trusts (the system's, or tls_ca_file / "
            "TELEGRAPHY_BUS_TLS__CA_FILE) and name the URL's host")


def _refused_credentials(e: Exception) -> bool:
    """Whether Redis (or a Sentinel) refused the credentials it was given,
    or asked for some."""
    import redis

    text = str(e)
    return isinstance(e, redis.AuthenticationError) or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")) or "password" in text


def _is_certificate_error(e: BaseException) -> bool:
    import ssl

    while e is not None:
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


#: How long a publisher on a Redis Cluster uses its copy of the history
#: settings and of the nodes' pattern registry (the gateway's REGISTRY_FRESH).
REGISTRY_FRESH = 1.0


def split_hosts(url: str) -> tuple[str, str, list[str], str]:
    """`scheme://U:P@H1:1,H2:2/tail` as (scheme, `U:P@`, [`H1:1`, `H2:2`], `/tail`)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(f"bus `{redact(url)}` is not a URL")
    end = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hosts = authority.rpartition("@")
    parts = [h.strip() for h in hosts.split(",")]
    if any(not h for h in parts):
        raise InvalidInput(f"bus `{redact(url)}`: an empty host in the list of hosts")
    return scheme, f"{userinfo}{at}", parts, tail


def _host_port(hostport: str, default: int) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    return host.strip("[]"), int(port) if port else default


def _registry_patterns(entries: dict, now_ms: float) -> list[tuple[str, str, str]]:
    """The (realm, policy, pattern) of the registry's entries still in force."""
    out = []
    for text in entries.values():
        text = text.decode() if isinstance(text, bytes) else text
        lines = text.split("\n")
        try:
            if int(lines[0]) < now_ms:
                continue
        except ValueError:
            continue
        for line in lines[1:]:
            parts = line.split("\t", 2)
            if len(parts) == 3 and parts not in out:
                out.append(tuple(parts))
    return out


def _pattern_matches(policy: str, pattern: str, topic: str) -> bool:
    if policy == "prefix":
        return topic.startswith(pattern)
    want, have = pattern.split("."), topic.split(".")
    return len(want) == len(have) and all(not w or w == h for w, h in zip(want, have))


class RedisTransport:
    """Publishes on `{key_prefix}{realm}:{topic}` through the gateway's
    publish script, so that events of history topics get their position
    and are kept, exactly as when a gateway publishes them.

    `redis+cluster://H1:P1,H2:P2` publishes on a Redis Cluster the way the
    gateway does (a topic's keys and shard channel share the hash tag
    `{realm:topic}`; SPUBLISH, and PUBLISH too when a node's pattern matches);
    `redis+sentinel://S1:26379,S2:26379/NAME[/DB]` publishes to the primary
    the Sentinels name (asked again after a failover)."""

    kind = "redis"

    def __init__(self, url: str, key_prefix: str, timeout: float, tls: BusTls | None = None):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise InvalidInput("publishing to Redis needs the redis package: pip install 'telegraphy[redis]'") from None
        self.url, self.key_prefix, self.timeout = url, key_prefix, timeout
        self.tls = tls or BusTls()
        self.scheme = url.partition("://")[0]
        self.cluster = self.scheme.endswith("+cluster")
        if self.cluster and ("{" in key_prefix or "}" in key_prefix):
            raise InvalidInput(f"redis key prefix `{key_prefix}` holds a brace; on a Redis Cluster it must not (hash tags)")
        self._client = None
        self._script = None
        self._pid = None
        self._view = None
        self._lock = threading.Lock()

    def _tls_options(self) -> dict:
        if not self.scheme.startswith("rediss"):
            return {}
        return {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": self.tls.ca_file,
                "ssl_certfile": self.tls.cert_file, "ssl_keyfile": self.tls.key_file}

    def _open(self):
        import redis

        timeouts = {"socket_connect_timeout": self.timeout, "socket_timeout": self.timeout}
        if self.scheme in ("redis", "rediss"):
            tls = {k: v for k, v in self._tls_options().items() if k != "ssl"}
            return redis.Redis.from_url(self.url, health_check_interval=30, **timeouts, **tls)
        _, userinfo, hosts, tail = split_hosts(self.url)
        user, _, password = userinfo.rstrip("@").partition(":")
        creds = {"username": urllib.parse.unquote(user) or None, "password": urllib.parse.unquote(password) or None}
        if self.cluster:
            from redis.cluster import ClusterNode, RedisCluster

            if tail.strip("/") not in ("", "0"):
                raise InvalidInput(f"bus `{redact(self.url)}`: a Redis Cluster has only database 0; leave the path empty")
            nodes = [ClusterNode(*_host_port(h, 6379)) for h in hosts]
            return RedisCluster(startup_nodes=nodes, **creds, **timeouts, **self._tls_options())
        if self.scheme in ("redis+sentinel", "rediss+sentinel"):
            from redis.sentinel import Sentinel

            path = [p for p in tail.split("?")[0].split("/") if p]
            if not path:
                raise InvalidInput(f"bus `{redact(self.url)}`: name the primary after the Sentinels: redis+sentinel://HOST:26379/NAME")
            try:
                db = int(path[1]) if len(path) > 1 else 0
            except ValueError:
                raise InvalidInput(f"bus `{redact(self.url)}`: `{path[1]}` is not a database number") from None
            tls = self._tls_options()
            addresses = [_host_port(h, 26379) for h in hosts]
            auth = self._sentinel_auth(addresses, creds, {**timeouts, **tls})
            sentinels = Sentinel(addresses, sentinel_kwargs={**timeouts, **tls, **auth}, **timeouts, **tls)
            return sentinels.master_for(path[0], db=db, **creds)
        raise InvalidInput(f"bus `{redact(self.url)}` is not a Redis URL")

    def _sentinel_auth(self, addresses: list, creds: dict, options: dict) -> dict:
        """The credentials the Sentinels get, as the gateway gives them: the
        URL's user and password (the common Helm charts set the primary's
        password on the Sentinels too), or none for Sentinels that refuse
        them (they have no password). Refused both ways by every Sentinel
        that answered: `Unauthorized`. None reachable: the URL's, and the
        publish reports the outage."""
        import redis

        given = {k: v for k, v in creds.items() if v}
        if not given:
            return {}
        refused, other = None, False
        for host, port in addresses:
            for auth in (given, {}):
                probe = redis.Redis(host=host, port=port, **auth, **options)
                try:
                    probe.ping()
                    return auth
                except (redis.AuthenticationError, redis.ResponseError) as e:
                    if not _refused_credentials(e):
                        other = True
                        break
                    refused = e
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    other = True
                    break
                finally:
                    probe.close()
        if refused is not None and not other:
            raise Unauthorized(
                f"the Redis Sentinels of {redact(self.url)} refused the credentials, with and without them: {refused} "
                f"(the bus URL's user and password are given to the Sentinels and to the primary)"
            )
        return given

    def _connection(self):
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                try:
                    self._client = self._open()
                except ValueError as e:
                    raise InvalidInput(f"bus `{redact(self.url)}`: {e}") from None
                self._script = self._client.register_script(_publish_script())
                self._pid = os.getpid()
                self._view = None
            return self._client

    def _cluster_view(self, client) -> tuple:
        """(topics, size, ttl_ms, patterns), read again when older than REGISTRY_FRESH."""
        import time

        view = self._view
        if view is not None and time.monotonic() - view[0] < REGISTRY_FRESH:
            return view[1]
        read_at = time.monotonic()
        topics, size, ttl = client.hmget(f"{self.key_prefix}history", ["topics", "size", "ttl_ms"])
        entries = client.hgetall(f"{self.key_prefix}patterns")
        text = [(v.decode() if isinstance(v, bytes) else v) if v is not None else "" for v in (topics, size, ttl)]
        fresh = (*text, _registry_patterns(entries, time.time() * 1000))
        self._view = (read_at, fresh)
        return fresh

    def publish(self, envelope: Envelope, require_subscriber: bool = False) -> int:
        import redis

        payload = envelope.encode()
        p, realm, topic = self.key_prefix, envelope.realm, envelope.topic
        channel = f"{p}{realm}:{topic}"
        if self.cluster:
            tag = f"{{{realm}:{topic}}}"
            keys = [f"{p}history:{tag}", f"{p}h:{tag}", f"{p}hm:{tag}", f"{p}r:{tag}", f"{p}{tag}"]
        else:
            keys = [f"{p}history", f"{p}h:{realm}:{topic}", f"{p}hm:{realm}:{topic}", f"{p}r:{realm}:{topic}", channel]
        client = self._connection()
        argv = [payload, topic, int(envelope.retain), int(envelope.keepable()), secrets.randbelow(65535) + 1]
        matched = False
        try:
            if self.cluster:
                topics, size, ttl, patterns = self._cluster_view(client)
                matched = any(r == realm and _pattern_matches(pol, pat, topic) for r, pol, pat in patterns)
                argv += [topics, size, ttl, channel if matched else ""]
            # Redis answers how many subscriptions (of every node) got it,
            # and the event's position when its topic keeps history.
            receivers, epoch, offset = self._script(keys=keys, args=argv)
        except redis.AuthenticationError as e:
            raise Unauthorized(f"Redis at {redact(self.url)} refused the credentials: {e}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            if _is_certificate_error(e):
                raise Unauthorized(f"the bus at {redact(self.url)} failed the TLS check: {TLS_HINT}: {e}") from None
            raise Unavailable(f"Redis at {redact(self.url)} did not take the event: {e}") from None
        except redis.ResponseError as e:
            text = str(e)
            if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")) or "without any password configured" in text:
                raise Unauthorized(
                    f"Redis at {redact(self.url)} refused the credentials: {text} "
                    f"(put the user and password in the URL: redis://USER:PASSWORD@HOST:6379/0)"
                ) from None
            raise Rejected(f"Redis at {redact(self.url)} refused the event: {text}") from None
        except redis.RedisError as e:
            raise Unavailable(f"Redis at {redact(self.url)} did not take the event: {e}") from None
        if require_subscriber and not (receivers or matched):
            raise NoSubscriber(f"no node is subscribed to `{envelope.topic}` (Redis channel {keys[4]})")
        if offset and epoch:
            return (int(offset) << 16) | int(epoch)
        return envelope.publication

    def close(self):
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:
                    pass
                self._client = None


def broker_urls(url: str) -> list[str]:
    """The brokers of an AMQP URL: `amqp://U:P@H1:5672,H2:5673/V?q` is
    `amqp://U:P@H1:5672/V?q` and `amqp://U:P@H2:5673/V?q`."""
    if "://" not in url:
        return [url]
    scheme, userinfo, hosts, tail = split_hosts(url)
    return [f"{scheme}://{userinfo}{h}{tail}" for h in hosts]


class AmqpTransport:
    """A durable topic exchange, routing key `{realm}.{topic}`, publisher
    confirms: `publish` returns once RabbitMQ confirmed the event."""

    kind = "amqp"

    def __init__(self, url: str, exchange: str, timeout: float, tls: BusTls | None = None):
        self.tls = tls or BusTls()
        try:
            import pika  # noqa: F401
        except ImportError:
            raise InvalidInput("publishing to RabbitMQ needs the pika package: pip install 'telegraphy[amqp]'") from None
        if not exchange:
            raise InvalidInput("the AMQP exchange name is empty; the gateways' default is `telegraphy`")
        self.url, self.exchange, self.timeout = url, exchange, timeout
        self._connection = None
        self._channel = None
        self._pid = None
        self._lock = threading.Lock()

    def _parameters(self):
        """One pika.URLParameters per broker: `amqp://U:P@HOST1:5672,HOST2:5672/VHOST`
        lists a RabbitMQ cluster's nodes, tried in order (as the gateways do)."""
        import pika

        out = []
        for url in broker_urls(self.url):
            try:
                params = pika.URLParameters(url)
            except Exception as e:
                raise InvalidInput(f"bus `{redact(self.url)}` is not a valid amqp:// URL: {e}") from None
            params.socket_timeout = self.timeout
            params.stack_timeout = self.timeout
            params.blocked_connection_timeout = self.timeout
            params.connection_attempts = 1
            params.retry_delay = 0
            params.client_properties = {"connection_name": "telegraphy-python"}
            if url.startswith("amqps://"):
                params.ssl_options = pika.SSLOptions(self.tls.context(), server_hostname=params.host)
            out.append(params)
        return out

    def _open(self):
        import pika
        import pika.exceptions as px

        where = redact(self.url)
        try:
            connection = pika.BlockingConnection(self._parameters())
        except (px.ProbableAuthenticationError, px.ProbableAccessDeniedError, px.AuthenticationError) as e:
            raise Unauthorized(f"RabbitMQ at {where} refused the credentials: {e!r}") from None
        except (px.AMQPError, OSError) as e:
            if _is_certificate_error(e):
                raise Unauthorized(f"the bus at {where} failed the TLS check: {TLS_HINT}: {e!r}") from None
            if isinstance(e, OSError):
                raise Unavailable(f"cannot connect to RabbitMQ at {where}: {e}") from None
            raise Unavailable(f"cannot connect to RabbitMQ at {where}: {e!r}") from None
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        except px.ChannelClosedByBroker as e:
            _close_quietly(connection)
            if e.reply_code == 406:
                raise Rejected(
                    f"cannot declare the topic exchange `{self.exchange}` on {where}: {e.reply_text}; "
                    f"if it exists with another type, pick another name (amqp_exchange, amqp.exchange on the gateways)"
                ) from None
            if e.reply_code == 403:
                raise Unauthorized(f"RabbitMQ at {where} refused access: {e.reply_text}") from None
            raise Unavailable(f"RabbitMQ at {where} closed the channel: {e.reply_text}") from None
        except (px.AMQPError, OSError) as e:
            _close_quietly(connection)
            raise Unavailable(f"RabbitMQ at {where} dropped the connection during setup: {e!r}") from None
        self._connection, self._channel, self._pid = connection, channel, os.getpid()

    def _usable(self) -> bool:
        """Whether the open connection still works (an idle blocking
        connection misses heartbeats; the broker may have closed it)."""
        import pika.exceptions as px

        if self._connection is None or self._pid != os.getpid():
            return False
        if not (self._connection.is_open and self._channel.is_open):
            return False
        try:
            self._connection.process_data_events(time_limit=0)
        except (px.AMQPError, OSError):
            return False
        return self._connection.is_open and self._channel.is_open

    def publish(self, envelope: Envelope, require_subscriber: bool = False) -> int:
        import pika
        import pika.exceptions as px

        key = f"{envelope.realm}.{envelope.topic}"
        if len(key.encode("utf-8")) > MAX_ROUTING_KEY:
            raise Rejected(
                f"realm and topic make a {len(key.encode('utf-8'))}-byte AMQP routing key; RabbitMQ allows "
                f"{MAX_ROUTING_KEY}"
            )
        payload = envelope.encode()
        where = redact(self.url)
        with self._lock:
            if not self._usable():
                self._drop()
                self._open()  # nothing was sent yet: reconnecting is safe
            try:
                # `mandatory`: RabbitMQ returns an event no queue is bound for.
                self._channel.basic_publish(
                    self.exchange, key, payload,
                    properties=pika.BasicProperties(content_type=ENVELOPE_CONTENT_TYPE),
                    mandatory=bool(require_subscriber),
                )
            except px.NackError:
                raise Unavailable(f"RabbitMQ at {where} did not take the event: the broker refused it (nack)") from None
            except px.UnroutableError:  # only with mandatory=True (require_subscriber)
                raise NoSubscriber(
                    f"no node is subscribed to `{envelope.topic}` (RabbitMQ returned it: no queue is bound for it)"
                ) from None
            except (px.AMQPError, OSError) as e:
                self._drop()
                raise Unavailable(
                    f"RabbitMQ at {where} did not confirm the event (connection lost: {e!r}); it may or may not "
                    f"have been delivered"
                ) from None
        return envelope.publication

    def _drop(self):
        if self._connection is not None and self._pid == os.getpid():
            _close_quietly(self._connection)
        self._connection = self._channel = None

    def close(self):
        with self._lock:
            self._drop()


def _close_quietly(connection):
    try:
        if connection.is_open:
            connection.close()
    except Exception:
        pass
