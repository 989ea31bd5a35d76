"""Django and the Publisher over TLS to the bus: a private Redis (TLS only,
client certificates required) and a private RabbitMQ (an AMQPS listener that
requires them), started here on free ports with a CA made by openssl, and a
real gateway on each. The brokers come from the fault suite's harness
(tests/chaos/brokers.py), which stops them by PID."""

import pathlib
import shutil
import sys
import tempfile

import pytest

from telegraphy import Publisher
from telegraphy.errors import Unauthorized
from tests.support.gateway import Gateway
from tests.test_django_buses import roundtrip, settings_for

CHAOS = pathlib.Path(__file__).resolve().parents[2] / "tests" / "chaos"
sys.path.insert(0, str(CHAOS))
from brokers import RabbitNode, RedisServer  # noqa: E402
from pki import broker_pki  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def certs():
    d = pathlib.Path(tempfile.mkdtemp(prefix="telegraphy-tls-"))
    yield {**broker_pki(d), "dir": d}
    shutil.rmtree(d, ignore_errors=True)


def gateway_env(certs):
    return {"TELEGRAPHY_BUS_TLS__CA_FILE": str(certs["ca"]), "TELEGRAPHY_BUS_TLS__CERT_FILE": str(certs["client_cert"]),
            "TELEGRAPHY_BUS_TLS__KEY_FILE": str(certs["client_key"])}


def django_tls(certs, ca="ca"):
    return {"BUS_TLS_CA_FILE": str(certs[ca]), "BUS_TLS_CERT_FILE": str(certs["client_cert"]),
            "BUS_TLS_KEY_FILE": str(certs["client_key"])}


@pytest.fixture(scope="module")
def tls_redis(certs):
    server = RedisServer(certs["dir"], tls=certs)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_rabbit(certs):
    d = certs["dir"] / "rabbit"
    d.mkdir()
    node = RabbitNode(d, tls=certs)
    node.start()
    yield node
    node.stop()


def test_django_publishes_over_rediss(settings, wamp, tls_redis, certs):
    gw = Gateway(f'[redis]\nkey_prefix = "pytls:"\n', env={"TELEGRAPHY_BUS": tls_redis.url(), **gateway_env(certs)})
    try:
        roundtrip(settings, wamp, gw, settings_for(gw, BUS=tls_redis.url(), REDIS_KEY_PREFIX="pytls:", **django_tls(certs)))
    finally:
        gw.stop()
    wrong = Publisher(bus=tls_redis.url(), redis_key_prefix="pytls:", tls_ca_file=str(certs["other_ca"]),
                      tls_cert_file=str(certs["client_cert"]), tls_key_file=str(certs["client_key"]))
    with pytest.raises(Unauthorized, match="failed the TLS check"):
        wrong.publish("tests.x")


def test_django_publishes_over_amqps(settings, wamp, tls_rabbit, certs):
    url = tls_rabbit.tls_url()
    gw = Gateway('[amqp]\nexchange = "pytls"\n', env={"TELEGRAPHY_BUS": url, **gateway_env(certs)})
    try:
        roundtrip(settings, wamp, gw, settings_for(gw, BUS=url, AMQP_EXCHANGE="pytls", **django_tls(certs)))
    finally:
        gw.stop()
    wrong = Publisher(bus=url, amqp_exchange="pytls", tls_ca_file=str(certs["other_ca"]),
                      tls_cert_file=str(certs["client_cert"]), tls_key_file=str(certs["client_key"]))
    with pytest.raises(Unauthorized, match="failed the TLS check"):
        wrong.publish("tests.x")
