"""`{% load telegraphy %}`

* `{% telegraphy_scripts %}`: the JS client, configured for the current user
  (token minted at render time), as `window.telegraphy`; and the widgets.
* `{% telegraphy_url %}`, `{% telegraphy_prefix %}`, `{% telegraphy_topic "app.Model" %}`.
* Live widgets, rendered here and kept live by static/telegraphy/widgets.js:
  `{% telegraphy_label "app.Model" pk "field" %}`,
  `{% telegraphy_list "app.Model" queryset "field" %}`,
  `{% telegraphy_table "app.Model" queryset "field1,field2" labels="One,Two" %}`.
  The list and table take `filter={...}` (Django-style lookups the JS client
  evaluates on each event: rows that stop matching leave, new ones join) and
  `empty="text"`; every widget takes `events="name"` to pick one of several
  ModelEvents of a model.
* `{% telegraphy_feed "myshop.reports.ready" %}`: a <ul> of the events of a
  plain topic (not model events; see TOPICS), newest first.
* `{% telegraphy_presence "shop.Order" order %}`: who else is viewing this
  object, on every gateway node (names, live; see PRESENCE and DISPLAY_NAME).
"""

from __future__ import annotations

import hashlib
import json

from django import template
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join, json_script
from django.utils.safestring import mark_safe
from django.utils.text import capfirst

from .. import conf, tokens
from ...uri import is_valid_prefix, is_valid_topic, pattern_error
from ..model_events import ModelEvents, registry

register = template.Library()


def _events(label, events=None) -> ModelEvents:
    try:
        found = registry.lookup(events or label)
    except LookupError as e:
        raise template.TemplateSyntaxError(str(e)) from None
    if events is not None and found.model_class._meta.label_lower != str(label).lower():
        raise template.TemplateSyntaxError(f"the events {events!r} are not for the model {label!r}")
    return found


def display(value) -> str:
    """How widgets show a value (widgets.js's display() does the same)."""
    if value is None:
        return ""
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _widget_id(context, kind: str, *parts) -> str:
    """A stable id (the same on every render of the page), so widgets.js can
    swap in a fresh render after a reconnect."""
    counter = context.render_context.setdefault("telegraphy_widget_ids", {})
    key = hashlib.sha1(json.dumps([kind, *map(str, parts)]).encode()).hexdigest()[:10]
    counter[key] = counter.get(key, 0) + 1
    return f"tg-{kind}-{key}" + (f"-{counter[key]}" if counter[key] > 1 else "")


def _rows(events: ModelEvents, queryset):
    for instance in queryset:
        yield instance.pk, events.to_dict(instance)


def _check_fields(events: ModelEvents, fields, sample: dict | None):
    known = list(sample) if sample is not None else (
        events.field_names() if type(events).to_dict is ModelEvents.to_dict else None
    )
    if known is None:
        return
    for field in fields:
        if field not in known:
            raise template.TemplateSyntaxError(
                f"{type(events).__name__} events carry no field {field!r} (they carry {', '.join(known)}); add it "
                f"to fields or to_dict()"
            )


def _filter_json(filter) -> str:
    if filter in (None, ""):
        return ""
    if isinstance(filter, str):
        try:
            filter = json.loads(filter)
        except ValueError:
            raise template.TemplateSyntaxError(f"filter={filter!r} is not a JSON object of lookups") from None
    if not isinstance(filter, dict):
        raise template.TemplateSyntaxError("filter= takes a dict of Django-style lookups, e.g. {'status': 'open'}")
    return json.dumps(filter, separators=(",", ":"), default=str)


@register.simple_tag(takes_context=True)
def telegraphy_scripts(context, widgets=True, resync=True):
    """The configured JS client: `window.telegraphy`, connected with a token
    minted now for request.user (not connected for anonymous visitors unless
    ALLOW_ANONYMOUS); and the live widgets module."""
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            "{% telegraphy_scripts %} needs the request in the template context: add "
            "'django.template.context_processors.request' to TEMPLATES OPTIONS context_processors"
        )
    user = getattr(request, "user", None) or AnonymousUser()
    token = expires_at = None
    try:
        minted = tokens.mint(user)
        token, expires_at = minted["token"], minted["expires_at"]
    except PermissionDenied:
        pass
    try:
        token_url = reverse("telegraphy:token")
    except NoReverseMatch:
        token_url = None
    config = {
        "url": conf.get("GATEWAY_URL"),
        "realm": conf.get("REALM"),
        "token": token,
        "tokenUrl": token_url if token else None,
        "expiresAt": expires_at,
        "prefix": conf.get("TOPIC_PREFIX"),
        "resync": bool(resync),
    }
    html = [json_script(config, "telegraphy-config"),
            # Classic, so it runs at once: defines window.telegraphyReady for classic scripts.
            format_html('<script src="{}"></script>', static("telegraphy/ready.js")),
            format_html('<script type="module" src="{}"></script>', static("telegraphy/boot.js"))]
    if widgets:
        html.append(format_html('<script type="module" src="{}"></script>', static("telegraphy/widgets.js")))
    return mark_safe("\n".join(html))


@register.simple_tag
def telegraphy_url():
    """The gateway's WebSocket URL (GATEWAY_URL)."""
    return conf.get("GATEWAY_URL")


@register.simple_tag
def telegraphy_prefix():
    """The topic prefix (TOPIC_PREFIX)."""
    return conf.get("TOPIC_PREFIX")


@register.simple_tag
def telegraphy_topic(model, events=None):
    """The topic of a model's events: `{% telegraphy_topic "shop.Order" %}`."""
    return _events(model, events).topic


@register.simple_tag(takes_context=True)
def telegraphy_label(context, model, pk, field, events=None):
    """A span showing one object's field, updated live."""
    ev = _events(model, events)
    instance = pk if hasattr(pk, "_meta") else ev.model_class._default_manager.filter(pk=pk).first()
    pk_value = instance.pk if instance is not None else pk
    data = ev.to_dict(instance) if instance is not None else None
    _check_fields(ev, [field], data)
    return format_html(
        '<span id="{}" class="telegraphy-label" data-telegraphy-widget="label" data-topic="{}" data-pk-field="{}" '
        'data-pk="{}" data-field="{}">{}</span>',
        _widget_id(context, "label", ev.topic, pk_value, field), ev.topic, ev.model_class._meta.pk.name,
        pk_value, field, display((data or {}).get(field)),
    )


@register.simple_tag(takes_context=True)
def telegraphy_list(context, model, queryset, field, filter=None, empty="", events=None):
    """A <ul> of one field of each object, kept live (create, update, delete)."""
    ev = _events(model, events)
    rows = list(_rows(ev, queryset))
    _check_fields(ev, [field], rows[0][1] if rows else None)
    filter_json = _filter_json(filter)
    items = format_html_join("\n", '  <li data-pk="{}">{}</li>', ((pk, display(d.get(field))) for pk, d in rows))
    empty_html = format_html('<li class="telegraphy-empty"{}>{}</li>', mark_safe(" hidden") if rows else "", empty) \
        if empty else ""
    return format_html(
        '<ul id="{}" class="telegraphy-list" data-telegraphy-widget="list" data-topic="{}" data-pk-field="{}" '
        'data-field="{}" data-filter="{}">\n{}{}\n</ul>',
        _widget_id(context, "list", ev.topic, field, filter_json), ev.topic, ev.model_class._meta.pk.name,
        field, filter_json, empty_html, items,
    )


@register.simple_tag(takes_context=True)
def telegraphy_table(context, model, queryset, fields, filter=None, empty="", labels=None, events=None):
    """A <table> with one row per object and one column per field, kept live.
    `labels="Title,Status"` names the columns (default: the fields' verbose names)."""
    ev = _events(model, events)
    names = [f.strip() for f in fields.split(",") if f.strip()] if isinstance(fields, str) else list(fields)
    if not names:
        raise template.TemplateSyntaxError("telegraphy_table needs at least one field: \"title,status\"")
    rows = list(_rows(ev, queryset))
    _check_fields(ev, names, rows[0][1] if rows else None)
    filter_json = _filter_json(filter)
    meta = ev.model_class._meta

    def header(name):
        try:
            return capfirst(meta.get_field(name).verbose_name)
        except Exception:
            return capfirst(name.replace("_", " "))

    if labels is not None:
        titles = [t.strip() for t in labels.split(",")] if isinstance(labels, str) else list(labels)
        if len(titles) != len(names):
            raise template.TemplateSyntaxError(f"labels= names {len(titles)} columns for {len(names)} fields")
    else:
        titles = [header(n) for n in names]
    head = format_html_join("", '<th data-field="{}">{}</th>', zip(names, titles))
    body = format_html_join(
        "\n",
        '    <tr data-pk="{}">{}</tr>',
        ((pk, format_html_join("", '<td data-field="{}">{}</td>', ((n, display(d.get(n))) for n in names)))
         for pk, d in rows),
    )
    empty_html = format_html(
        '    <tr class="telegraphy-empty"{}><td colspan="{}">{}</td></tr>\n',
        mark_safe(" hidden") if rows else "", len(names), empty,
    ) if empty else ""
    return format_html(
        '<table id="{}" class="telegraphy-table" data-telegraphy-widget="table" data-topic="{}" data-pk-field="{}" '
        'data-fields="{}" data-filter="{}">\n  <thead><tr>{}</tr></thead>\n  <tbody>\n{}{}\n  </tbody>\n</table>',
        _widget_id(context, "table", ev.topic, ",".join(names), filter_json), ev.topic, meta.pk.name,
        ",".join(names), filter_json, head, empty_html, body,
    )


@register.simple_tag(takes_context=True)
def telegraphy_presence(context, model, obj, empty="Nobody else here.", events=None):
    """Who else is viewing `obj` right now, on every gateway node: the page
    is present on the object (an exact subscription to `<model topic>.<pk>`)
    and shows the display names of the others, live. `obj` is an instance or
    a primary key. Needs TELEGRAPHY['PRESENCE'] (on by default) and a gateway
    role that names presence (the built-in `user` role does)."""
    if not conf.get("PRESENCE"):
        raise template.TemplateSyntaxError("telegraphy_presence needs TELEGRAPHY['PRESENCE'] = True")
    ev = _events(model, events)
    pk = obj.pk if hasattr(obj, "_meta") else obj
    topic = tokens.presence_topic(ev.topic, pk)
    if pk in (None, "") or "." in str(pk) or not is_valid_topic(topic):
        raise template.TemplateSyntaxError(
            f"telegraphy_presence: the primary key {pk!r} does not make a topic ({topic!r}): it must not be empty "
            f"or contain dots, spaces or #"
        )
    return format_html(
        '<span id="{}" class="telegraphy-presence telegraphy-presence-alone" data-telegraphy-widget="presence" '
        'data-topic="{}" data-count="0"><span class="telegraphy-presence-empty">{}</span>'
        '<span class="telegraphy-presence-names" hidden></span></span>',
        _widget_id(context, "presence", topic), topic, empty,
    )


@register.simple_tag(takes_context=True)
def telegraphy_feed(context, topic, match="exact", limit=50, empty=""):
    """A <ul> that shows each event published on a plain topic (one that is
    not a model's: `telegraphy.publish("myshop.reports.ready", ...)`), newest
    first, at most `limit`. The user's token must list the topic (TOPICS or
    TOPICS_FOR); for an exact topic it does not, the feed stays empty and
    does not subscribe (class `telegraphy-denied`). `match="prefix"` or
    `"wildcard"` follows several topics (the gateway still checks each event)."""
    if match not in ("exact", "prefix", "wildcard"):
        raise template.TemplateSyntaxError(f'match= is "exact", "prefix" or "wildcard", not {match!r}')
    valid = {"exact": is_valid_topic, "prefix": is_valid_prefix}.get(match, lambda t: pattern_error(t) is None)
    if not valid(topic):
        raise template.TemplateSyntaxError(f"telegraphy_feed: {topic!r} is not a valid {match} topic")
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise template.TemplateSyntaxError(f"limit= takes a number, not {limit!r}") from None
    request = context.get("request")
    user = getattr(request, "user", None) or AnonymousUser()
    denied = False
    if match == "exact":
        try:
            tokens.claims_for(user)
            denied = not tokens.may_receive(user, topic)
        except PermissionDenied:
            denied = True
    empty_html = format_html('<li class="telegraphy-empty">{}</li>', empty) if empty else ""
    return format_html(
        '<ul id="{}" class="telegraphy-feed{}" data-telegraphy-widget="feed" data-topic="{}" data-match="{}" '
        'data-limit="{}"{}>{}</ul>',
        _widget_id(context, "feed", topic, match), " telegraphy-denied" if denied else "", topic, match, limit,
        mark_safe(" data-denied") if denied else "", empty_html,
    )
