"""Model events against a real gateway: create/update/delete arrive with the
documented payload, only after the commit, never for a rollback; operations,
recipients, manual publishing after bulk changes; failures."""

from __future__ import annotations

import datetime
import logging
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from telegraphy import Unavailable
from telegraphy.django import ModelEvents
from telegraphy.django.model_events import registry
from telegraphy.django.tokens import mint
from tests.testapp.events import ArticleEvents, NoteEvents
from tests.testapp.models import Article, Note, Payroll

pytestmark = pytest.mark.django_db(transaction=True)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def alice(telegraphy_settings):
    return get_user_model().objects.create_user("alice", password="pw", is_staff=True)


@pytest.fixture
def bob(telegraphy_settings):
    return get_user_model().objects.create_user("bob", password="pw")


@pytest.fixture
def listen(wamp, gateway):
    """listen(user, topic) → a WAMP client with the user's token, subscribed."""

    def open_for(user, topic):
        client = wamp(gateway, token=mint(user)["token"])
        client.subscribe(topic)
        return client

    return open_for


def test_create_update_delete_arrive_with_the_payload(alice, listen):
    sub = listen(alice, "tests.testapp.article")
    article = Article.objects.create(title="Hello", body="secret body", author=alice, price="9.50")

    create = sub.next_event().args[0]
    assert create["name"] == "testapp.article"
    assert create["meta"]["event_type"] == "create"
    assert create["meta"]["verbose_name"] == "Articles"
    assert ISO_UTC.match(create["meta"]["timestamp"])
    stamp = datetime.datetime.fromisoformat(create["meta"]["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 5
    data = create["data"]
    assert data == {
        "id": article.pk, "title": "Hello", "status": "draft", "price": "9.50", "author": alice.pk,
        "created": data["created"],
    }
    assert "body" not in data  # exclude = ["body"]
    assert datetime.datetime.fromisoformat(data["created"]).tzinfo is not None

    article.title = "Hello again"
    article.save()
    update = sub.next_event().args[0]
    assert update["meta"]["event_type"] == "update" and update["data"]["title"] == "Hello again"

    pk = article.pk
    article.delete()
    delete = sub.next_event().args[0]
    assert delete["meta"]["event_type"] == "delete"
    assert delete["data"]["id"] == pk, "the payload is built before Django clears the primary key"


def test_a_rolled_back_transaction_publishes_nothing(alice, listen):
    sub = listen(alice, "tests.testapp.article")
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Article.objects.create(title="never")
            raise RuntimeError("rollback")
    assert not Article.objects.exists()
    Article.objects.create(title="after")
    assert sub.next_event().args[0]["data"]["title"] == "after", "the rolled-back one never came"


def test_a_rolled_back_savepoint_publishes_only_what_committed(alice, listen):
    sub = listen(alice, "tests.testapp.article")
    with transaction.atomic():
        Article.objects.create(title="kept")
        try:
            with transaction.atomic():
                Article.objects.create(title="inner, rolled back")
                raise ValueError
        except ValueError:
            pass
    assert sub.next_event().args[0]["data"]["title"] == "kept"
    assert sub.no_event(0.5)


def test_events_wait_for_the_commit(alice, listen):
    sub = listen(alice, "tests.testapp.article")
    with transaction.atomic():
        Article.objects.create(title="pending")
        assert sub.no_event(0.5), "nothing may be published before the commit"
    assert sub.next_event().args[0]["data"]["title"] == "pending"


def test_operations_limit_what_is_published(alice, listen):
    sub = listen(alice, "tests.hr.payroll")
    row = Payroll.objects.create(employee="carol", salary=50000)
    event = sub.next_event().args[0]
    assert event["name"] == "hr.payroll" and event["data"] == {"id": row.pk, "employee": "carol", "salary_k": 50}
    row.delete()  # operations = ("create", "update")
    assert sub.no_event(0.7)


def test_bulk_operations_send_nothing_but_can_be_published_by_hand(alice, listen):
    sub = listen(alice, "tests.testapp.article")
    Article.objects.bulk_create([Article(title="a"), Article(title="b")])
    Article.objects.update(status="open")
    assert sub.no_event(0.7), "bulk_create and update() send no signals"
    for article in Article.objects.order_by("title"):
        ArticleEvents.publish(article, "update")
    got = [sub.next_event().args[0] for _ in range(2)]
    assert [(e["meta"]["event_type"], e["data"]["title"], e["data"]["status"]) for e in got] == [
        ("update", "a", "open"), ("update", "b", "open")]
    with transaction.atomic():
        ArticleEvents.publish(Article.objects.first(), "delete")
        assert sub.no_event(0.3), "publish() by hand also waits for the commit"
    assert sub.next_event().args[0]["meta"]["event_type"] == "delete"
    with pytest.raises(ValueError, match="event_type"):
        ArticleEvents.publish(Article.objects.first(), "created")


def test_recipients_limit_who_receives_a_row(alice, bob, listen):
    alice_sub = listen(alice, "tests.testapp.note")
    bob_sub = listen(bob, "tests.testapp.note")
    Note.objects.create(owner=bob, text="for bob")
    note = bob_sub.next_event().args[0]["data"]
    assert (note["text"], note["owner"]) == ("for bob", bob.pk)
    assert alice_sub.no_event(0.7), "the gateway keeps bob's row from alice (eligible_authid)"
    Note.objects.create(owner=alice, text="for alice")
    assert alice_sub.next_event().args[0]["data"]["text"] == "for alice"
    assert bob_sub.no_event(0.5)


def test_queryset_delete_sends_one_event_per_row(alice, listen):
    """Django sends post_delete for each row when a receiver listens to the
    model, so QuerySet.delete() publishes deletes (other models keep their
    fast deletes: the receivers are per model)."""
    from django.db.models.signals import post_delete

    Article.objects.create(title="x")
    Article.objects.create(title="y")
    sub = listen(alice, "tests.testapp.article")
    Article.objects.all().delete()
    assert {sub.next_event().args[0]["data"]["title"] for _ in range(2)} == {"x", "y"}
    assert post_delete.has_listeners(Article) and not post_delete.has_listeners(get_user_model())


def test_loaddata_saves_are_not_events(alice, listen):
    from django.utils import timezone

    sub = listen(alice, "tests.testapp.article")
    Article(title="fixture", created=timezone.now()).save_base(raw=True)  # what loaddata does
    assert sub.no_event(0.5)


def test_failures_are_logged_not_raised_by_default(alice, settings, caplog):
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "PUBLISH_URL": "http://127.0.0.1:9", "FAIL_SILENTLY": True}
    with caplog.at_level(logging.ERROR, logger="telegraphy.django"):
        Article.objects.create(title="saved anyway")
    assert Article.objects.filter(title="saved anyway").exists()
    assert "the create event of testapp.article was not published" in caplog.text
    assert "unavailable" in caplog.text


def test_failures_raise_when_asked(alice, settings):
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "PUBLISH_URL": "http://127.0.0.1:9", "FAIL_SILENTLY": False}
    with pytest.raises(Unavailable):
        Article.objects.create(title="raises after the commit")
    assert Article.objects.filter(title="raises after the commit").exists(), "the data was committed"


def test_registry_and_defaults(telegraphy_settings):
    events = registry.lookup("testapp.article")
    assert isinstance(events, ArticleEvents)
    assert events.topic == "tests.testapp.article" and events.event_name == "testapp.article"
    assert events.field_names() == ["id", "title", "status", "price", "author", "created"]
    assert registry.lookup("hr.payroll").model_class is Payroll
    note = registry.lookup("testapp.note")
    assert isinstance(note, NoteEvents) and note.model_class is Note and note.field_names() == ["id", "text", "owner"]
    assert note.get_verbose_name() == "notes"
    with pytest.raises(LookupError, match="no ModelEvents"):
        registry.lookup("testapp.nothing")


def test_abstract_bases_are_not_registered(telegraphy_settings):
    class Base(ModelEvents):
        abstract = True
        model = Article

    assert all(type(e) is not Base for e in registry.all())
