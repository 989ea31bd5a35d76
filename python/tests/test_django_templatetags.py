"""Template tags render the configured client and the live widgets."""

import json
import re

import jwt
import pytest
from django.contrib.auth import get_user_model
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory

from tests.support.gateway import SECRET
from tests.testapp.models import Article

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(telegraphy_settings):
    return get_user_model().objects.create_user("bob", password="pw")


def render(text, **context):
    return Template("{% load telegraphy %}" + text).render(Context(context))


def config_of(html):
    match = re.search(r'<script id="telegraphy-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_scripts_for_a_logged_in_user(client, user, gateway):
    client.force_login(user)
    html = client.get("/page/").content.decode()
    config = config_of(html)
    assert config["url"] == gateway.ws_url and config["realm"] == "realm1" and config["prefix"] == "tests"
    assert config["tokenUrl"] == "/telegraphy/token/" and config["resync"] is True
    claims = jwt.decode(config["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user.pk) and claims["exp"] == config["expiresAt"]
    assert '<script type="module" src="/static/telegraphy/boot.js"></script>' in html
    assert '<script type="module" src="/static/telegraphy/widgets.js"></script>' in html


def test_scripts_for_an_anonymous_visitor(client, telegraphy_settings):
    config = config_of(client.get("/page/").content.decode())
    assert config["token"] is None and config["tokenUrl"] is None


def test_scripts_need_the_request():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="context_processors.request"):
        render("{% telegraphy_scripts %}")


def test_scripts_options(rf=RequestFactory()):
    from django.contrib.auth.models import AnonymousUser

    request = rf.get("/")
    request.user = AnonymousUser()
    html = render("{% telegraphy_scripts widgets=False resync=False %}", request=request)
    assert "widgets.js" not in html and config_of(html)["resync"] is False


def test_the_config_cannot_break_out_of_its_script(settings, telegraphy_settings):
    from django.contrib.auth.models import AnonymousUser

    settings.TELEGRAPHY = {**telegraphy_settings, "TOPIC_PREFIX": "x</script><script>alert(1)"}
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    html = render("{% telegraphy_scripts %}", request=request)
    assert "</script><script>alert" not in html


def test_helpers(telegraphy_settings, gateway):
    assert render("{% telegraphy_url %}") == gateway.ws_url
    assert render("{% telegraphy_prefix %}") == "tests"
    assert render('{% telegraphy_topic "testapp.Article" %}') == "tests.testapp.article"
    assert render('{% telegraphy_topic "TESTAPP.ARTICLE" %}') == "tests.testapp.article"
    assert render('{% telegraphy_topic "hr.payroll" %}') == "tests.hr.payroll"
    with pytest.raises(TemplateSyntaxError, match="no ModelEvents for `shop.Order`"):
        render('{% telegraphy_topic "shop.Order" %}')


def test_label(telegraphy_settings):
    a = Article.objects.create(title="Tom & <Jerry>", price="2.50")
    html = render('{% telegraphy_label "testapp.Article" pk "title" %}', pk=a.pk)
    assert 'data-telegraphy-widget="label"' in html and 'data-topic="tests.testapp.article"' in html
    assert f'data-pk="{a.pk}"' in html and 'data-pk-field="id"' in html and 'data-field="title"' in html
    assert ">Tom &amp; &lt;Jerry&gt;</span>" in html
    assert render('{% telegraphy_label "testapp.Article" a "price" %}', a=a).endswith(">2.50</span>")
    with pytest.raises(TemplateSyntaxError, match="carry no field 'body'"):
        render('{% telegraphy_label "testapp.Article" a "body" %}', a=a)


def test_list_and_table(telegraphy_settings):
    Article.objects.create(title="one", status="open")
    Article.objects.create(title="two", status="done")
    qs = Article.objects.order_by("pk")
    html = render('{% telegraphy_list "testapp.Article" qs "title" filter=f empty="Nothing" %}', qs=qs,
                  f={"status": "open"})
    assert 'data-filter="{&quot;status&quot;:&quot;open&quot;}"' in html
    assert re.findall(r'<li data-pk="\d+">(\w+)</li>', html) == ["one", "two"]
    assert '<li class="telegraphy-empty" hidden>Nothing</li>' in html

    html = render('{% telegraphy_table "testapp.Article" qs "title, status,price" %}', qs=qs)
    assert '<th data-field="title">Title</th><th data-field="status">Status</th>' in html
    assert 'data-fields="title,status,price"' in html
    assert '<td data-field="title">one</td><td data-field="status">open</td><td data-field="price">0.00</td>' in html

    html = render('{% telegraphy_table "testapp.Article" qs "title,status" labels="Name, State" %}', qs=qs)
    assert '<th data-field="title">Name</th><th data-field="status">State</th>' in html
    with pytest.raises(TemplateSyntaxError, match="2 columns for 1 fields"):
        render('{% telegraphy_table "testapp.Article" qs "title" labels="a,b" %}', qs=qs)

    empty = render('{% telegraphy_table "testapp.Article" qs "title" empty="No rows" %}', qs=Article.objects.none())
    assert '<tr class="telegraphy-empty"><td colspan="1">No rows</td></tr>' in empty


def test_widget_ids_are_stable_and_unique(telegraphy_settings):
    a = Article.objects.create(title="x")
    text = '{% telegraphy_label "testapp.Article" a "title" %}{% telegraphy_label "testapp.Article" a "title" %}'
    first, second = render(text, a=a), render(text, a=a)
    ids = re.findall(r'id="([^"]+)"', first)
    assert len(set(ids)) == 2 and ids == re.findall(r'id="([^"]+)"', second)


def test_display_matches_widgets_js():
    from telegraphy.django.templatetags.telegraphy import display

    assert [display(v) for v in (None, True, False, 2.0, 2.5, [1, "a"], {"k": 1}, "s")] == [
        "", "yes", "no", "2", "2.5", '[1,"a"]', '{"k":1}', "s"]


def test_bad_filters(telegraphy_settings):
    with pytest.raises(TemplateSyntaxError, match="JSON object"):
        render('{% telegraphy_list "testapp.Article" qs "title" filter="status=open" %}', qs=[])


def test_scripts_define_the_ready_promise_first(client, user):
    client.force_login(user)
    html = client.get("/page/").content.decode()
    ready = html.index('<script src="/static/telegraphy/ready.js"></script>')
    assert ready < html.index('src="/static/telegraphy/boot.js"')


def feed(user, text):
    request = RequestFactory().get("/")
    request.user = user
    return Template("{% load telegraphy %}" + text).render(Context({"request": request}))


def test_feed_of_a_plain_topic(user, settings):
    from django.contrib.auth.models import AnonymousUser

    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "TOPICS": {"tests.reports.*": "authenticated"}}
    html = feed(user, '{% telegraphy_feed "tests.reports.ready" limit=5 empty="No reports yet." %}')
    assert 'class="telegraphy-feed" data-telegraphy-widget="feed" data-topic="tests.reports.ready"' in html
    assert 'data-match="exact" data-limit="5"><li class="telegraphy-empty">No reports yet.</li></ul>' in html
    # Not in the token: rendered empty, marked denied, and widgets.js does not subscribe.
    for who in (user, AnonymousUser()):
        denied = feed(who, '{% telegraphy_feed "tests.secrets" %}')
        assert "telegraphy-denied" in denied and "data-denied" in denied
    assert "data-denied" not in feed(user, '{% telegraphy_feed "tests." match="prefix" %}')
    for bad in ('"a b"', '"tests.x" match="regex"', '"tests.x" limit="many"'):
        with pytest.raises(TemplateSyntaxError):
            feed(user, "{% telegraphy_feed " + bad + " %}")


def test_presence(telegraphy_settings, settings):
    """{% telegraphy_presence %}: a span for widgets.js on `<model topic>.<pk>`;
    an instance or a pk; a pk that makes no topic, or PRESENCE off, is an error."""
    a = Article.objects.create(title="x")
    html = render('{% telegraphy_presence "testapp.Article" a %}', a=a)
    assert f'data-telegraphy-widget="presence" data-topic="tests.testapp.article.{a.pk}" data-count="0"' in html
    assert '<span class="telegraphy-presence-empty">Nobody else here.</span>' in html
    assert 'class="telegraphy-presence-names" hidden' in html
    assert f"tests.testapp.article.{a.pk}" in render('{% telegraphy_presence "testapp.Article" pk empty="Alone" %}', pk=a.pk)
    with pytest.raises(TemplateSyntaxError, match="primary key"):
        render('{% telegraphy_presence "testapp.Article" "a.b" %}')
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "PRESENCE": False}
    with pytest.raises(TemplateSyntaxError, match="PRESENCE"):
        render('{% telegraphy_presence "testapp.Article" a %}', a=a)
