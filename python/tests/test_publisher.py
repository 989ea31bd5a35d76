"""The plain publisher against real gateways: over HTTP, Redis and
RabbitMQ, events reach a WAMP subscriber with their payload, options and
publication id; outages, bad credentials and bad input raise typed errors."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

import telegraphy
from telegraphy import InvalidInput, NoSubscriber, Publisher, PublishError, Rejected, Unauthorized, Unavailable
from telegraphy.envelope import Envelope
from tests.conftest import amqp_config, delete_exchange, redis_config
from tests.support.gateway import AMQP_URL, API_KEY, REDIS_URL, Gateway, free_port

BINARY = b"\x00\x01\xfe\xff"


def check_delivery(publisher: Publisher, gateway: Gateway, wamp):
    """Publishes three ways and checks what a JSON subscriber receives."""
    topic = f"com.example.t{uuid.uuid4().hex[:6]}"
    sub = wamp(gateway)
    sub.subscribe(topic + ".", match="prefix")

    pid = publisher.publish(f"{topic}.created", [42, "x", None, True, 1.5, BINARY], {"total": 9.5, "items": ["a"]})
    event = sub.next_event()
    assert event.publication == pid
    assert event.details["topic"] == f"{topic}.created"
    assert event.args == [42, "x", None, True, 1.5, "\u0000AAH+/w=="]
    assert event.kwargs == {"total": 9.5, "items": ["a"]}

    # eligible_authid: only the named authid receives it
    publisher.publish(f"{topic}.private", ["for nobody here"], eligible_authid=["someone-else"])
    publisher.publish(f"{topic}.excluded", ["not for you"], exclude=[sub.session_id])
    publisher.publish(f"{topic}.mine", ["for you"], eligible=[sub.session_id])
    event = sub.next_event()
    assert event.args == ["for you"], "the filtered events must not arrive"

    # the module-level shortcut with the same publisher
    telegraphy.set_publisher(publisher)
    try:
        pid = telegraphy.publish(f"{topic}.short", 1, 2, flag=True)
    finally:
        telegraphy.set_publisher(None)
    event = sub.next_event()
    assert (event.publication, event.args, event.kwargs) == (pid, [1, 2], {"flag": True})

    # require_subscriber: succeeds only if a node subscribed to the topic got it
    pid = publisher.publish(f"{topic}.required", ["held"], require_subscriber=True)
    event = sub.next_event()
    assert (event.publication, event.args) == (pid, ["held"])
    with pytest.raises(NoSubscriber, match="is subscribed to `nobody") as caught:
        publisher.publish(f"nobody.{uuid.uuid4().hex[:8]}", ["lost"], require_subscriber=True)
    assert caught.value.kind == "no_subscriber"


# -- input checks (no network) -------------------------------------------------


def test_where_to_publish_must_be_said_once():
    with pytest.raises(InvalidInput, match="say where to publish"):
        Publisher()
    with pytest.raises(InvalidInput, match="not both"):
        Publisher(gateway_url="http://127.0.0.1:1", api_key="k" * 8, bus="redis://127.0.0.1")


@pytest.mark.parametrize("kwargs, says", [
    ({"gateway_url": "ws://127.0.0.1:8080/ws", "api_key": "k"}, "is the WebSocket URL"),
    ({"gateway_url": "127.0.0.1:8080", "api_key": "k"}, "must start with http"),
    ({"gateway_url": "http://127.0.0.1:8080", "api_key": ""}, "needs an API key"),
    ({"bus": "memory://"}, "(?i)publish through that gateway's HTTP endpoint"),
    ({"bus": "redis://127.0.0.1:6379/0", "tls_ca_file": __file__}, "not a rediss:// or amqps:// URL"),
    ({"bus": "rediss://127.0.0.1:6379/0", "tls_ca_file": "/nonexistent/ca.pem"}, "does not exist"),
    ({"bus": "amqps://g:secret@h/%2f", "tls_cert_file": __file__}, "both tls_cert_file and tls_key_file"),
    ({"bus": "nats://127.0.0.1"}, "not a bus URL"),
    ({"bus": "amqp://g:secret@h/%2f", "amqp_exchange": ""}, "exchange name is empty"),
])
def test_bad_destinations(kwargs, says):
    with pytest.raises(InvalidInput, match=says) as info:
        Publisher(**kwargs)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("topic", ["", "a..b", "with space", "wamp.x", 42])
def test_bad_topics_are_refused_before_sending(topic):
    publisher = Publisher(gateway_url="http://127.0.0.1:9", api_key="k" * 8)
    with pytest.raises(InvalidInput):
        publisher.publish(topic)


@pytest.mark.parametrize("kwargs, says", [
    ({"args": "abc"}, "args must be a list"),
    ({"kwargs": [1]}, "kwargs must be a dict"),
    ({"exclude": ["x"]}, "session ids"),
    ({"eligible_authid": "alice"}, "not one string"),
    ({"args": [{1: 2}]}, "keys must be strings"),
    ({"realm": "bad realm"}, "not a valid realm"),
])
def test_bad_events_are_refused_before_sending(kwargs, says):
    publisher = Publisher(gateway_url="http://127.0.0.1:9", api_key="k" * 8)
    with pytest.raises(InvalidInput, match=says):
        publisher.publish("a.b", **kwargs)


def test_errors_share_a_base_and_say_their_kind():
    assert all(issubclass(c, PublishError) for c in (InvalidInput, Unavailable, Unauthorized, Rejected))
    assert [c.kind for c in (InvalidInput, Unavailable, Unauthorized, Rejected)] == [
        "invalid_input", "unavailable", "unauthorized", "rejected"]


def test_configuration_from_the_environment():
    from telegraphy.publisher import publisher_from_env

    p = publisher_from_env({"TELEGRAPHY_GATEWAY_URL": "http://127.0.0.1:8080", "TELEGRAPHY_API_KEY": "k" * 8})
    assert p.kind == "http" and p._transport.endpoint == "http://127.0.0.1:8080/publish"
    p = publisher_from_env({"TELEGRAPHY_BUS": REDIS_URL, "TELEGRAPHY_REDIS__KEY_PREFIX": "x:",
                            "TELEGRAPHY_TIMEOUT": "2s"})
    assert p.kind == "redis" and p._transport.key_prefix == "x:" and p._transport.timeout == 2
    p = publisher_from_env({"TELEGRAPHY_BUS": AMQP_URL, "TELEGRAPHY_AMQP__EXCHANGE": "ex"})
    assert p.kind == "amqp" and p._transport.exchange == "ex"
    with pytest.raises(InvalidInput, match="TELEGRAPHY_GATEWAY_URL"):
        publisher_from_env({})
    with pytest.raises(InvalidInput, match="both"):
        publisher_from_env({"TELEGRAPHY_BUS": REDIS_URL, "TELEGRAPHY_GATEWAY_URL": "http://h"})


# -- HTTP ----------------------------------------------------------------------------


def test_http_delivers(gateway, wamp):
    check_delivery(Publisher(gateway_url=gateway.http_url, api_key=API_KEY), gateway, wamp)


def test_http_binary_and_realm(gateway, wamp):
    sub = wamp(gateway)
    sub.subscribe("com.example.bin")
    Publisher(gateway_url=gateway.http_url + "/publish", api_key=API_KEY).publish(
        "com.example.bin", [b""], {"b": bytes(range(256))}, realm="realm1")
    event = sub.next_event()
    assert event.args == ["\u0000"]
    assert event.kwargs["b"].startswith("\u0000AAECAw")


def test_http_wrong_api_key_is_unauthorized(gateway):
    with pytest.raises(Unauthorized, match="refused the API key"):
        Publisher(gateway_url=gateway.http_url, api_key="wrong-key-123").publish("a.b")


def test_http_unknown_realm_is_invalid_input(gateway):
    with pytest.raises(InvalidInput, match="realm"):
        Publisher(gateway_url=gateway.http_url, api_key=API_KEY).publish("a.b", realm="nope")


def test_http_too_large_is_invalid_input(gateway):
    with pytest.raises(InvalidInput, match="refused the event"):
        Publisher(gateway_url=gateway.http_url, api_key=API_KEY).publish("a.b", ["x" * 70_000])


def test_http_not_a_gateway_is_invalid_input(gateway):
    with pytest.raises(InvalidInput, match="404"):
        Publisher(gateway_url=gateway.http_url + "/somewhere", api_key=API_KEY).publish("a.b")


def test_presence_counts_who_is_on_a_topic(gateway, wamp):
    """A cron report asks how many sessions are on a topic, cluster-wide."""
    publisher = Publisher(gateway_url=gateway.http_url, api_key=API_KEY)
    assert publisher.presence("report.page")["count"] == 0
    viewers = [wamp(gateway) for _ in range(3)]
    for v in viewers:
        v.subscribe("report.page")
    answer = publisher.presence("report.page", limit=2)
    assert (answer["count"], answer["sessions"], answer["truncated"]) == (3, 3, True)
    assert len(answer["authids"]) == 2 and answer["authids"] == sorted(answer["authids"])
    viewers[0].close()
    deadline = time.monotonic() + 5
    while publisher.presence("report.page")["count"] != 2:
        assert time.monotonic() < deadline, "a viewer that left is still counted"
        time.sleep(0.05)
    with pytest.raises(Unauthorized):
        Publisher(gateway_url=gateway.http_url, api_key="wrong-key-123").presence("report.page")
    with pytest.raises(InvalidInput, match="realm"):
        publisher.presence("report.page", realm="nope")
    with pytest.raises(InvalidInput, match="reserved"):
        publisher.presence("telegraphy.presence.x")
    with pytest.raises(InvalidInput, match="limit"):
        publisher.presence("report.page", limit=0)
    with pytest.raises(InvalidInput, match="gateway_url"):
        Publisher(bus=REDIS_URL).presence("report.page")


def test_http_unreachable_gateway_is_unavailable():
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot be reached"):
        Publisher(gateway_url=f"http://127.0.0.1:{free_port()}", api_key=API_KEY).publish("a.b")
    assert time.monotonic() - started < 5


def test_http_gateway_whose_bus_is_down_is_unavailable(tmp_path):
    """The gateway answers 503 while its Redis is away."""
    redis = PrivateRedis(tmp_path)
    gw = Gateway(f'bus = "{redis.url}"\n[redis]\nkey_prefix = "p:"\n')
    try:
        publisher = Publisher(gateway_url=gw.http_url, api_key=API_KEY)
        assert publisher.publish("a.b") > 0
        redis.stop()
        with pytest.raises(Unavailable, match="cannot take events now"):
            publisher.publish("a.b")
    finally:
        gw.stop()
        redis.stop()


# -- Redis ----------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a free port, to stop and start at will."""

    def __init__(self, tmp_path, *extra):
        if not shutil.which("redis-server"):
            pytest.skip("redis-server is not installed (scripts/services.sh installs it)")
        self.port, self.extra, self.dir = free_port(), extra, tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        for _ in range(100):
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.AuthenticationError:
                return
            except redis.ResponseError:
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_redis_delivers(redis_gateway, redis_prefix, wamp):
    with Publisher(bus=REDIS_URL, redis_key_prefix=redis_prefix) as publisher:
        check_delivery(publisher, redis_gateway, wamp)


def test_redis_writes_the_envelope_on_the_documented_channel(redis_prefix):
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    pubsub.subscribe(f"{redis_prefix}realm1:com.example.raw")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    pid = Publisher(bus=REDIS_URL, redis_key_prefix=redis_prefix).publish(
        "com.example.raw", [1, b"\x00"], {"b": 2, "a": 1}, eligible_authid=["alice"])
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    envelope = Envelope.decode(message["data"])
    assert (envelope.publication, envelope.realm, envelope.topic) == (pid, "realm1", "com.example.raw")
    assert envelope.args == [1, b"\x00"] and list(envelope.kwargs) == ["a", "b"]
    assert envelope.filter == {"eligible_authid": ["alice"]} and envelope.publisher is None
    assert envelope.encode() == message["data"]  # canonical


def test_redis_unreachable_is_unavailable():
    with pytest.raises(Unavailable, match="did not take the event"):
        Publisher(bus=f"redis://127.0.0.1:{free_port()}/0", timeout=1).publish("a.b")


def test_redis_outage_and_recovery(tmp_path):
    redis = PrivateRedis(tmp_path)
    try:
        publisher = Publisher(bus=redis.url, timeout=1)
        assert publisher.publish("a.b") > 0
        redis.stop()
        with pytest.raises(Unavailable):
            publisher.publish("a.b")
        redis.start()
        assert publisher.publish("a.b") > 0, "the next publish after the outage reconnects"
    finally:
        # The restarted server too: nothing left behind, pass or fail.
        redis.stop()


def test_redis_password(tmp_path):
    redis = PrivateRedis(tmp_path, "--requirepass", "s3cret-pass")
    try:
        with pytest.raises(Unauthorized, match="refused the credentials") as info:
            Publisher(bus=redis.url, timeout=1).publish("a.b")
        with pytest.raises(Unauthorized):
            Publisher(bus=f"redis://:wrong-pass@127.0.0.1:{redis.port}/0", timeout=1).publish("a.b")
        assert "wrong-pass" not in str(info.value)
        assert Publisher(bus=f"redis://:s3cret-pass@127.0.0.1:{redis.port}/0").publish("a.b") > 0
    finally:
        redis.stop()


# -- RabbitMQ -------------------------------------------------------------------------


def test_amqp_delivers(amqp_gateway, amqp_exchange, wamp):
    with Publisher(bus=AMQP_URL, amqp_exchange=amqp_exchange) as publisher:
        check_delivery(publisher, amqp_gateway, wamp)


def test_amqp_message_properties(amqp_exchange):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(amqp_exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, amqp_exchange, routing_key="realm1.com.example.#")
    pid = Publisher(bus=AMQP_URL, amqp_exchange=amqp_exchange).publish("com.example.props", [1])
    for _ in range(50):
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method:
            break
        time.sleep(0.05)
    connection.close()
    assert method.routing_key == "realm1.com.example.props"
    assert properties.content_type == "application/x-telegraphy-envelope"
    assert Envelope.decode(body).publication == pid


def test_amqp_a_cluster_url_tries_each_broker_in_turn(amqp_gateway, amqp_exchange, wamp):
    from telegraphy.transports import broker_urls

    assert broker_urls("amqps://u:p@rabbit-0:5671, rabbit-1/%2f?heartbeat=5") == [
        "amqps://u:p@rabbit-0:5671/%2f?heartbeat=5", "amqps://u:p@rabbit-1/%2f?heartbeat=5"]
    with pytest.raises(InvalidInput, match="empty host"):
        broker_urls("amqp://u:secret@a,,b/v")
    # The first broker is down: the publish goes through the second, as the gateways do.
    dead, live = f"127.0.0.1:{free_port()}", AMQP_URL.split("@", 1)[1].split("/", 1)[0]
    cluster = f"amqp://guest:guest@{dead},{live}/%2f"
    with Publisher(bus=cluster, amqp_exchange=amqp_exchange, timeout=2) as publisher:
        check_delivery(publisher, amqp_gateway, wamp)


def test_amqp_wrong_password_is_unauthorized():
    with pytest.raises(Unauthorized, match="refused the credentials") as info:
        Publisher(bus="amqp://guest:wrong-pass@127.0.0.1:5672/%2f", amqp_exchange="x").publish("a.b")
    assert "wrong-pass" not in str(info.value)


def test_amqp_unreachable_is_unavailable():
    with pytest.raises(Unavailable, match="cannot connect to RabbitMQ"):
        Publisher(bus=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f", timeout=1).publish("a.b")


def test_amqp_exchange_of_another_type_is_rejected():
    import pika

    name = f"telegraphy-pytest-fanout-{uuid.uuid4().hex[:6]}"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().exchange_declare(name, exchange_type="fanout")
    connection.close()
    try:
        with pytest.raises(Rejected, match="pick another name"):
            Publisher(bus=AMQP_URL, amqp_exchange=name).publish("a.b")
    finally:
        delete_exchange(name)


def test_amqp_routing_key_limit_is_rejected(amqp_exchange):
    with pytest.raises(Rejected, match="255"):
        Publisher(bus=AMQP_URL, amqp_exchange=amqp_exchange).publish("a." + "b" * 250)


def test_amqp_reconnects_after_the_broker_closed_the_connection(amqp_exchange):
    """An idle publisher whose connection the broker closed (heartbeats
    missed, broker restart) reconnects on the next publish."""
    publisher = Publisher(bus=AMQP_URL, amqp_exchange=amqp_exchange)
    assert publisher.publish("a.b") > 0
    publisher._transport._connection.close()  # as if the broker had dropped it
    assert publisher.publish("a.b") > 0
    publisher.close()


def test_amqp_gateway_cluster_config(amqp_exchange):
    """Sanity: the config helpers give a gateway that is ready on the exchange."""
    gw = Gateway(amqp_config(amqp_exchange))
    try:
        assert gw.ready()
    finally:
        gw.stop()


def test_redis_gateway_cluster_config(redis_prefix):
    gw = Gateway(redis_config(redis_prefix))
    try:
        assert gw.ready()
    finally:
        gw.stop()


def test_the_redis_publish_script_is_the_gateways():
    from pathlib import Path

    import telegraphy.transports as transports

    gateway_copy = Path(__file__).resolve().parents[2] / "bus" / "src" / "redis" / "publish.lua"
    assert transports._publish_script() == gateway_copy.read_text(encoding="utf-8"), (
        "python/src/telegraphy/redis_publish.lua must be a copy of bus/src/redis/publish.lua"
    )


def test_redis_publishes_follow_the_history_order_of_the_gateways(tmp_path):
    """A publisher writing straight onto Redis gets positions from the same
    script as the gateways, and its retained event reaches a late subscriber."""
    import redis

    prefix = f"telegraphy-pytest-{uuid.uuid4().hex[:8]}:"
    gw = Gateway(redis_config(prefix) + '[history]\ntopics = ["py.history.*"]\n')
    try:
        with Publisher(bus=REDIS_URL, redis_key_prefix=prefix) as publisher:
            first = publisher.publish("py.history.orders", [1])
            second = publisher.publish("py.history.orders", [2], retain=True)
            other = publisher.publish("py.live.orders", [3])
        # Positions: offset * 65536 + epoch, the same epoch, offsets 1 and 2.
        assert (first >> 16, second >> 16) == (1, 2) and first & 0xFFFF == second & 0xFFFF != 0
        assert other >> 16 > 1000, "a topic without history keeps a random id"
        client = redis.Redis.from_url(REDIS_URL)
        kept = client.xrange(f"{prefix}h:realm1:py.history.orders")
        assert [Envelope.decode(fields[b"e"]).args for _, fields in kept] == [[1], [2]]
        retained = [Envelope.decode(b) for b in client.lrange(f"{prefix}r:realm1:py.history.orders", 0, -1)]
        assert [(e.args, e.retain, e.publication) for e in retained] == [([2], True, second)]
    finally:
        gw.stop()
