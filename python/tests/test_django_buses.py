"""Django publishing straight onto each bus (and over HTTP to a gateway on
a bus): the event reaches a browser-like client on a gateway node."""

import pytest
from django.contrib.auth import get_user_model

from telegraphy.django.tokens import mint
from tests.support.gateway import AMQP_URL, API_KEY, REDIS_URL, SECRET
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db(transaction=True)


def settings_for(gateway, **extra):
    return {"GATEWAY_URL": gateway.ws_url, "SECRET": SECRET, "TOPIC_PREFIX": "tests", "FAIL_SILENTLY": False,
            **extra}


def roundtrip(settings, wamp, gateway, telegraphy):
    settings.TELEGRAPHY = telegraphy
    user = get_user_model().objects.create_user("alice")
    sub = wamp(gateway, token=mint(user)["token"])
    sub.subscribe("tests.testapp.article")
    Article.objects.create(title="over the bus")
    event = sub.next_event().args[0]
    assert (event["meta"]["event_type"], event["data"]["title"]) == ("create", "over the bus")


def test_redis(settings, wamp, redis_gateway, redis_prefix):
    roundtrip(settings, wamp, redis_gateway,
              settings_for(redis_gateway, BUS=REDIS_URL, REDIS_KEY_PREFIX=redis_prefix))


def test_amqp(settings, wamp, amqp_gateway, amqp_exchange):
    roundtrip(settings, wamp, amqp_gateway,
              settings_for(amqp_gateway, BUS=AMQP_URL, AMQP_EXCHANGE=amqp_exchange))


def test_http_derived_from_the_gateway_url(settings, wamp, gateway):
    # no PUBLISH_URL: the HTTP endpoint next to GATEWAY_URL
    roundtrip(settings, wamp, gateway, settings_for(gateway, API_KEY=API_KEY))


def test_http_to_a_redis_node(settings, wamp, redis_gateway):
    roundtrip(settings, wamp, redis_gateway, settings_for(redis_gateway, PUBLISH_URL=redis_gateway.http_url,
                                                           API_KEY=API_KEY))


def test_the_default_publisher_follows_the_settings(settings, gateway):
    import telegraphy

    settings.TELEGRAPHY = settings_for(gateway, API_KEY=API_KEY)
    assert telegraphy.get_publisher().kind == "http"
    settings.TELEGRAPHY = settings_for(gateway, BUS=REDIS_URL)
    assert telegraphy.get_publisher().kind == "redis"
    assert telegraphy.get_publisher().realm == "realm1"
