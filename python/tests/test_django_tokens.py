"""Tokens for the current user: the view, the claims (topics from
is_authorized), and what the gateway does with them."""

from __future__ import annotations

import time

import jwt
import pytest
from django.contrib.auth import get_user_model

from telegraphy.django.tokens import claims_for, mint, topics_for
from tests.support.gateway import SECRET
from tests.support.wamp import WampError

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(telegraphy_settings):
    return get_user_model().objects.create_user("alice", password="pw", is_staff=True)


@pytest.fixture
def user(telegraphy_settings):
    return get_user_model().objects.create_user("bob", password="pw")


def decode(token):
    return jwt.decode(token, SECRET, algorithms=["HS256"])


def test_the_view_mints_a_token_for_the_logged_in_user(client, user, gateway):
    client.force_login(user)
    response = client.get("/telegraphy/token/")
    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    body = response.json()
    assert set(body) == {"token", "url", "realm", "expires_at"}
    assert body["url"] == gateway.ws_url and body["realm"] == "realm1"
    claims = decode(body["token"])
    assert claims["sub"] == str(user.pk) and claims["role"] == "user"
    assert claims["exp"] == body["expires_at"] and abs(claims["exp"] - time.time() - 300) < 5
    assert {"tests.testapp.article", "tests.testapp.note"} <= set(claims["subscribe"])
    assert claims["name"] == user.get_username()


def test_only_get(client, user):
    client.force_login(user)
    assert client.post("/telegraphy/token/").status_code == 405


def test_anonymous_visitors_get_403(client):
    response = client.get("/telegraphy/token/")
    assert response.status_code == 403
    assert response.json()["error"] == "not_authenticated"


def test_anonymous_visitors_when_allowed(client, settings):
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "ALLOW_ANONYMOUS": True}
    claims = decode(client.get("/telegraphy/token/").json()["token"])
    assert claims["sub"].startswith("anonymous-") and claims["role"] == "anonymous"
    assert claims["subscribe"] == []  # is_authorized defaults to authenticated users


def test_staff_get_the_staff_topics(staff, user):
    assert "tests.hr.payroll" in topics_for(staff)
    assert "tests.hr.payroll" not in topics_for(user)


def test_settings_shape_the_claims(user, settings):
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "TOKEN_TTL": 60, "ROLE": "member", "TOPIC_PREFIX": "com.shop",
                           "PRESENCE": False}
    claims = claims_for(user, now=1000)
    assert (claims["exp"], claims["role"], claims["iat"]) == (1060, "member", 1000)
    assert claims["subscribe"] == ["com.shop.testapp.article", "com.shop.testapp.note"]
    assert claims["realm"] == settings.TELEGRAPHY.get("REALM", "realm1")


def test_tokens_are_bound_to_the_realm_for_multi_tenant_gateways(user, wamp):
    """A gateway that requires the `realm` claim (realms as tenants) takes
    Django's tokens for the configured realm, and refuses them elsewhere."""
    from tests.support.gateway import Gateway
    from tests.support.wamp import Aborted

    gw = Gateway('realms = ["realm1", "other"]\n[auth]\nrequire_realm_claim = true\n')
    try:
        token = mint(user)["token"]
        assert decode(token)["realm"] == "realm1"
        client = wamp(gw, token=token)
        assert client.welcome["authid"] == str(user.pk)
        with pytest.raises(Aborted, match="realm"):
            wamp(gw, token=token, realm="other")
    finally:
        gw.stop()


def test_the_gateway_accepts_the_token(user, wamp, gateway):
    client = wamp(gateway, token=mint(user)["token"])
    assert client.welcome["authid"] == str(user.pk)
    assert client.welcome["authrole"] == "user"
    assert client.subscribe("tests.testapp.article") > 0


def test_an_unauthorized_user_cannot_subscribe_to_the_topic(user, staff, wamp, gateway):
    client = wamp(gateway, token=mint(user)["token"])
    with pytest.raises(WampError) as info:
        client.subscribe("tests.hr.payroll")
    assert info.value.uri == "wamp.error.not_authorized"
    # nor catch it with a wider subscription
    client.subscribe("tests.", match="prefix")
    boss = wamp(gateway, token=mint(staff)["token"])
    assert boss.subscribe("tests.hr.payroll") > 0


@pytest.mark.django_db(transaction=True)
def test_a_prefix_subscription_never_leaks_a_forbidden_topic(user, staff, wamp, gateway):
    from tests.testapp.models import Article, Payroll

    client = wamp(gateway, token=mint(user)["token"])
    client.subscribe("tests.", match="prefix")
    Payroll.objects.create(employee="x", salary=1)
    Article.objects.create(title="visible")
    event = client.next_event()
    assert event.details["topic"] == "tests.testapp.article"
    assert client.no_event(0.5)


# -- plain topics: the TOPICS setting and the TOPICS_FOR hook ---------------------------------------------------


@pytest.fixture
def topics(settings, telegraphy_settings):
    settings.TELEGRAPHY = {
        **settings.TELEGRAPHY,
        "TOPICS": {"tests.reports.*": ["staff", "group:managers"], "tests.news": "authenticated",
                   "tests.status": "everyone", "tests.perm": "perm:testapp.view_article", "tests.root": "superuser"},
        "TOPICS_FOR": "tests.testapp.topics.topics_for",
        "PRESENCE": False,
    }


def test_presence_in_the_token(user, settings):
    """Presence (on by default): the token lets its user be present on each
    object of the models they may see (`<model topic>.<pk>`) and follow who
    else is (`telegraphy.presence.<model topic>.<pk>`), and names them."""
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "TOPIC_PREFIX": "com.shop"}
    user.first_name, user.last_name = "Ann", "Smith"
    claims = claims_for(user, now=1000)
    assert claims["subscribe"] == [
        "com.shop.testapp.article", "com.shop.testapp.article.*", "com.shop.testapp.note", "com.shop.testapp.note.*",
        "telegraphy.presence.com.shop.testapp.article.*", "telegraphy.presence.com.shop.testapp.note.*",
    ]
    assert claims["name"] == "Ann Smith"
    assert decode(mint(user)["token"])["name"] == "Ann Smith"
    user.first_name = user.last_name = ""
    assert claims_for(user)["name"] == user.get_username()
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "DISPLAY_NAME": lambda u: f"#{u.pk}"}
    assert claims_for(user)["name"] == f"#{user.pk}"


def test_topics_per_audience(topics, staff, user):
    from django.contrib.auth.models import AnonymousUser, Group, Permission

    assert topics_for(staff) == ["tests.hr.payroll", "tests.news", "tests.reports.*", "tests.status",
                                 "tests.testapp.article", "tests.testapp.note", f"tests.users.{staff.pk}.*"]
    assert topics_for(user) == ["tests.news", "tests.status", "tests.testapp.article", "tests.testapp.note",
                                f"tests.users.{user.pk}.*"]
    user.groups.add(Group.objects.create(name="managers"))
    user.user_permissions.add(Permission.objects.get(codename="view_article"))
    user = get_user_model().objects.get(pk=user.pk)  # no permission cache
    assert {"tests.reports.*", "tests.perm"} <= set(topics_for(user))
    assert topics_for(AnonymousUser()) == ["tests.status"]
    vip = get_user_model().objects.create_user("vip1", is_superuser=True)
    assert {"tests.vip", "tests.root", "tests.perm"} <= set(topics_for(vip))


def test_a_bad_hook_is_reported(topics, user, settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "TOPICS_FOR": "tests.testapp.topics.bad_topics_for"}
    with pytest.raises(ImproperlyConfigured, match="may only end a pattern"):
        topics_for(user)


def test_the_gateway_enforces_plain_topics(topics, staff, user, wamp, gateway):
    from telegraphy import Publisher

    allowed = wamp(gateway, token=mint(staff)["token"])
    allowed.subscribe("tests.reports.ready")
    refused = wamp(gateway, token=mint(user)["token"])
    with pytest.raises(WampError, match="not_authorized"):
        refused.subscribe("tests.reports.ready")
    refused.subscribe("tests.", match="prefix")  # accepted: it overlaps tests.news, and is checked per event
    pid = Publisher(gateway_url=gateway.http_url, api_key="test-api-key-123").publish(
        "tests.reports.ready", ["daily.pdf"], {"size": 12345})
    event = allowed.next_event()
    assert (event.publication, event.args, event.kwargs) == (pid, ["daily.pdf"], {"size": 12345})
    assert refused.no_event(0.5)
