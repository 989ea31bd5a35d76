"""System checks: each bad setting gets its id and a hint."""

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from telegraphy.django import ModelEvents
from telegraphy.django.checks import check_events, check_settings, check_templates
from telegraphy.django.model_events import registry
from tests.testapp.models import Article

GOOD = {
    "GATEWAY_URL": "ws://127.0.0.1:8080/ws",
    "API_KEY": "test-api-key-123",
    "SECRET": "x" * 32,
}


def ids(settings, **changes):
    settings.TELEGRAPHY = {**GOOD, **changes}
    return sorted(e.id for e in check_settings())


def test_good_settings_pass(settings):
    assert ids(settings) == []
    assert ids(settings, BUS="redis://127.0.0.1:6379/0", API_KEY=None) == []
    assert ids(settings, BUS="rediss://redis.internal:6380/0", BUS_TLS_CA_FILE=__file__, API_KEY=None) == []
    assert ids(settings, BUS="redis+cluster://r1:7000,r2:7000", API_KEY=None) == []
    assert ids(settings, BUS="rediss+sentinel://s1:26379,s2:26379/mymaster", BUS_TLS_CA_FILE=__file__, API_KEY=None) == []
    assert ids(settings, PUBLISH_URL="https://gw.internal:8080", GATEWAY_URL="wss://events.example.com/ws") == []


@pytest.mark.parametrize("changes, expected", [
    ({"SECRETT": "x"}, "telegraphy.E001"),
    ({"SECRET": "short"}, "telegraphy.E002"),
    ({"SECRET": None}, "telegraphy.E002"),
    ({"GATEWAY_URL": "http://127.0.0.1:8080/ws"}, "telegraphy.E003"),
    ({"BUS": "redis://h", "PUBLISH_URL": "http://h"}, "telegraphy.E004"),
    ({"PUBLISH_URL": "ws://h/ws"}, "telegraphy.E005"),
    ({"BUS": "memory://"}, "telegraphy.E006"),
    ({"BUS": "ftp://h"}, "telegraphy.E006"),
    ({"BUS": "redis://h", "BUS_TLS_CA_FILE": __file__}, "telegraphy.E018"),
    ({"BUS": "rediss://h", "BUS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "telegraphy.E018"),
    ({"BUS": "amqps://h", "BUS_TLS_CERT_FILE": __file__}, "telegraphy.E018"),
    ({"BUS": "kafka://h"}, "telegraphy.E006"),
    ({"API_KEY": None}, "telegraphy.E008"),
    ({"API_KEY": "short"}, "telegraphy.E008"),
    ({"TOPIC_PREFIX": "has space"}, "telegraphy.E009"),
    ({"TOPIC_PREFIX": "wamp.x"}, "telegraphy.E009"),
    ({"REALM": ""}, "telegraphy.E010"),
    ({"TOKEN_TTL": 0}, "telegraphy.E011"),
    ({"TOKEN_TTL": "300"}, "telegraphy.E011"),
    ({"ROLE": ""}, "telegraphy.E012"),
    ({"TIMEOUT": -1}, "telegraphy.E013"),
    ({"ALLOWED_ORIGINS": 8000}, "telegraphy.E014"),
    ({"ALLOWED_ORIGINS": ["http://x", 8000]}, "telegraphy.E014"),
    ({"ALLOWED_ORIGINS": "127.0.0.1:8000"}, "telegraphy.E014"),
    ({"ALLOWED_ORIGINS": ["http://x/page"]}, "telegraphy.E014"),
    ({"ALLOWED_ORIGINS": " , "}, "telegraphy.E014"),
    ({"TOPICS": ["myshop.reports.ready"]}, "telegraphy.E015"),
    ({"TOPICS": {"my shop.x": "staff"}}, "telegraphy.E015"),
    ({"TOPICS": {"myshop.*.x": "staff"}}, "telegraphy.E015"),
    ({"TOPICS": {"myshop.x": "stuff"}}, "telegraphy.E015"),
    ({"TOPICS": {"myshop.x": ["group:"]}}, "telegraphy.E015"),
    ({"TOPICS": {"myshop.x": ["perm:nodot"]}}, "telegraphy.E015"),
    ({"TOPICS": {"myshop.x": None}}, "telegraphy.E015"),
    ({"TOPICS_FOR": "tests.nowhere.topics_for"}, "telegraphy.E016"),
    ({"TOPICS_FOR": "tests.settings.SECRET_KEY"}, "telegraphy.E016"),
    ({"TOPICS_FOR": 3}, "telegraphy.E016"),
])
def test_bad_settings(settings, changes, expected):
    settings.TELEGRAPHY = {**GOOD, **changes}
    errors = check_settings()
    assert expected in [e.id for e in errors]
    for e in errors:
        assert e.hint, f"{e.id} has no hint"


def test_origins_as_a_list_or_a_comma_separated_string(settings):
    assert ids(settings, ALLOWED_ORIGINS=["http://127.0.0.1:8000", "https://app.example.com/"]) == []
    assert ids(settings, ALLOWED_ORIGINS=("*",)) == []
    assert ids(settings, ALLOWED_ORIGINS="http://127.0.0.1:8000, https://app.example.com:8443") == []
    settings.TELEGRAPHY = {**GOOD, "ALLOWED_ORIGINS": "127.0.0.1:8000"}
    (error,) = check_settings()
    assert "'127.0.0.1:8000', which is not a page origin" in error.msg


def test_topics_and_the_hook_pass(settings):
    assert ids(settings, TOPICS={"myshop.reports.*": ["staff", "group:managers"], "myshop.news": "authenticated",
                                 "myshop..status": ["everyone", "perm:shop.view_order", "superuser"], "*": []},
               TOPICS_FOR="tests.testapp.topics.topics_for") == []


def test_an_unknown_audience_gets_a_suggestion(settings):
    settings.TELEGRAPHY = {**GOOD, "TOPICS": {"myshop.x": "authenticatd"}}
    (error,) = check_settings()
    assert error.id == "telegraphy.E015" and error.hint == "Did you mean 'authenticated'?"


def test_typos_get_a_suggestion(settings):
    settings.TELEGRAPHY = {**GOOD, "SECRETT": "x"}
    (error,) = [e for e in check_settings() if e.id == "telegraphy.E001"]
    assert "Did you mean 'SECRET'?" == error.hint


def test_not_a_dict(settings):
    settings.TELEGRAPHY = "ws://x"
    assert [e.id for e in check_settings()] == ["telegraphy.E001"]


def test_missing_settings_warn(settings):
    del settings.TELEGRAPHY
    assert [e.id for e in check_settings()] == ["telegraphy.W002"]


def test_the_request_context_processor_is_needed(settings):
    assert check_templates() == []
    settings.TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "OPTIONS": {}}]
    assert [w.id for w in check_templates()] == ["telegraphy.W001"]


def test_checks_run_with_manage_py_check(settings):
    settings.TELEGRAPHY = {**GOOD, "SECRET": "short"}
    with pytest.raises(SystemCheckError, match="telegraphy.E002"):
        call_command("check")


@pytest.fixture
def declared():
    classes = []

    def declare(**attrs):
        cls = type(f"Events{len(classes)}", (ModelEvents,), {"__module__": __name__, **attrs})
        classes.append(cls)
        return cls

    yield declare
    for cls in classes:
        registry.unregister(cls)


@pytest.mark.parametrize("attrs, expected", [
    ({"model": "testapp.Nothing"}, "telegraphy.E020"),
    ({"model": Article, "name": "x1", "operations": ("create", "created")}, "telegraphy.E021"),
    ({"model": Article, "name": "x2", "fields": ["title"], "exclude": ["body"]}, "telegraphy.E022"),
    ({"model": Article, "name": "x3", "fields": "title"}, "telegraphy.E023"),
    ({"model": Article, "name": "x4", "fields": ["titel"]}, "telegraphy.E024"),
    ({"model": Article, "name": "has space"}, "telegraphy.E025"),
    ({"model": Article, "name": "a.*"}, "telegraphy.E025"),
    ({"model": Article}, "telegraphy.E026"),  # same topic as ArticleEvents
])
def test_bad_events(settings, declared, attrs, expected):
    assert check_events() == []
    declared(**attrs)
    errors = check_events()
    assert [e.id for e in errors] == [expected]
    assert errors[0].hint


def test_fields_may_name_attributes(declared):
    events = declared(model=Article, name="with.method", fields=["title", "headline"])
    assert check_events() == []
    from telegraphy.django.model_events import registry

    assert registry.instance(events).to_dict(Article(pk=3, title="hi")) == {"id": 3, "title": "hi", "headline": "HI"}


def test_checks_are_registered_with_the_telegraphy_tag():
    assert "telegraphy" in checks.registry.registry.tags_available()
