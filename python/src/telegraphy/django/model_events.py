"""Class-based model events.

    # shop/events.py (autodiscovered)
    from telegraphy.django import ModelEvents
    from .models import Order

    class OrderEvents(ModelEvents):
        model = Order
        fields = ["id", "status", "total"]       # or exclude = [...]
        operations = ("create", "update", "delete")

        def is_authorized(self, user):
            return user.is_staff

Each registered class publishes, after the transaction commits, one event
per saved or deleted row on `<TOPIC_PREFIX>.<name>` (name defaults to
`<app_label>.<model_name>`), with args `[payload]`:

    {"name": "shop.order",
     "meta": {"event_type": "update", "verbose_name": "orders", "timestamp": "2025-01-31T12:00:00.000Z"},
     "data": {"id": 7, "status": "paid", "total": "9.50"}}
"""

from __future__ import annotations

import datetime
import decimal
import logging
import threading
import uuid
from functools import partial

from django.db import router, transaction
from django.db.models.signals import post_delete, post_save
from django.utils.functional import Promise

from . import conf

logger = logging.getLogger("telegraphy.django")

OPERATIONS = ("create", "update", "delete")


class Registry:
    """Every ModelEvents subclass with a model, in definition order."""

    def __init__(self):
        self._events: list[ModelEvents] = []
        self._by_class: dict[type, ModelEvents] = {}
        self._lock = threading.Lock()
        self._cache: dict[type, list] = {}
        self.connected = False

    def register(self, cls):
        with self._lock:
            old = self._by_class.get(cls.__qualname__ + "@" + cls.__module__)
            if old is not None:  # the same module imported twice (e.g. reloaded): replace
                self._events.remove(old)
            instance = cls()
            self._by_class[cls.__qualname__ + "@" + cls.__module__] = instance
            self._events.append(instance)
            self._cache.clear()
        if self.connected:
            self._connect(instance)

    def unregister(self, cls):
        with self._lock:
            instance = self._by_class.pop(cls.__qualname__ + "@" + cls.__module__, None)
            if instance is not None:
                self._events.remove(instance)
            self._cache.clear()

    def instance(self, cls) -> "ModelEvents":
        try:
            return self._by_class[cls.__qualname__ + "@" + cls.__module__]
        except KeyError:
            raise LookupError(f"{cls.__name__} has no model, so it is not registered") from None

    def all(self) -> list["ModelEvents"]:
        return list(self._events)

    def for_instance(self, instance) -> list["ModelEvents"]:
        sender = type(instance)
        found = self._cache.get(sender)
        if found is None:
            found = [e for e in self.all() if e.model_class is not None and isinstance(instance, e.model_class)]
            self._cache[sender] = found
        return found

    def lookup(self, label: str) -> "ModelEvents":
        """The events of a model (`app_label.ModelName`, any case) or with an
        event name; the first one declared when several match."""
        wanted = label.lower()
        for events in self.all():
            model = events.model_class
            if model is not None and model._meta.label_lower == wanted:
                return events
        for events in self.all():
            if events.model_class is not None and events.event_name.lower() == wanted:
                return events
        raise LookupError(
            f"no ModelEvents for `{label}`: declare `class ...Events(ModelEvents): model = ...` in that app's "
            f"events.py (it is autodiscovered), or use the event's name"
        )

    def connect(self):
        """Connects the signal receivers (AppConfig.ready())."""
        self.connected = True
        for events in self.all():
            self._connect(events)

    def _connect(self, events):
        """Receivers for the model and its proxies and subclasses only: a
        receiver on every model would turn off Django's fast deletes
        project-wide."""
        from django.apps import apps

        model = events.model_class
        if model is None:
            return
        for candidate in apps.get_models():
            if issubclass(candidate, model):
                uid = f"telegraphy.django.{candidate._meta.label_lower}"
                post_save.connect(_on_save, sender=candidate, dispatch_uid=uid)
                post_delete.connect(_on_delete, sender=candidate, dispatch_uid=uid)


registry = Registry()


def history_topics() -> list[str]:
    """The topics of every ModelEvents with `history = True`, sorted."""
    return sorted({events.topic for events in registry.all() if events.history and events.model_class is not None})


def _on_save(sender, instance, created=False, raw=False, using=None, **kwargs):
    if raw:  # loaddata: fixtures are not live changes
        return
    for events in registry.for_instance(instance):
        events._schedule(instance, "create" if created else "update", using)


def _on_delete(sender, instance, using=None, **kwargs):
    for events in registry.for_instance(instance):
        events._schedule(instance, "delete", using)


def jsonable(value):
    """A model field value as something every Telegraphy client can receive."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, uuid.UUID, Promise)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "storage"):  # FieldFile
        return value.name or None
    return str(value)


def utc_timestamp() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ModelEvents:
    """Declares that a model's changes are published as events.

    Attributes: `model` (a model class or "app_label.ModelName"), `fields`
    (names to send; default: every concrete field) or `exclude`,
    `operations` (any of "create", "update", "delete"), `name` (the topic
    suffix; default `<app_label>.<model_name>`), `verbose_name` (default: the
    model's verbose_name_plural), `history` (True: the gateway keeps the
    topic's recent events, so pages that reconnect get what they missed;
    `manage.py telegraphy_gateway` configures it, production gateways list
    the topic in `[history] topics`). Override `to_dict(instance)`,
    `is_authorized(user)` and `recipients(instance)` as needed. A subclass
    with `abstract = True` is a base for others and publishes nothing.
    """

    model = None
    fields = None
    exclude = ()
    operations = OPERATIONS
    name = None
    verbose_name = None
    history = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False) or cls.model is None:
            return
        registry.register(cls)

    # -- what is published ---------------------------------------------------

    @property
    def model_class(self):
        """The model class (resolving "app_label.ModelName"), or None."""
        model = type(self).model
        if isinstance(model, str):
            from django.apps import apps

            try:
                return apps.get_model(model)
            except (LookupError, ValueError):
                return None
        return model

    @property
    def event_name(self) -> str:
        """`name`, or `<app_label>.<model_name>`."""
        if self.name:
            return self.name
        meta = self.model_class._meta
        return f"{meta.app_label}.{meta.model_name}"

    @property
    def topic(self) -> str:
        """`<TOPIC_PREFIX>.<event name>`."""
        prefix = conf.get("TOPIC_PREFIX")
        return f"{prefix}.{self.event_name}" if prefix else self.event_name

    def get_verbose_name(self) -> str:
        if self.verbose_name is not None:
            return str(self.verbose_name)
        return str(self.model_class._meta.verbose_name_plural)

    def field_names(self) -> list[str]:
        """The keys of the default `to_dict`: the primary key first, then
        `fields` (or every concrete field not in `exclude`)."""
        meta = self.model_class._meta
        if self.fields is None or self.fields == "__all__":
            names = [f.name for f in meta.concrete_fields if f.name not in self.exclude]
        else:
            names = list(self.fields)
        pk = meta.pk.name
        return names if pk in names else [pk, *names]

    def to_dict(self, instance) -> dict:
        """The event's `data`. Foreign keys become the related primary key;
        dates ISO-8601 strings; decimals and UUIDs strings; a name that is not
        a field reads the attribute (called if it is a method)."""
        meta = self.model_class._meta
        data = {}
        for name in self.field_names():
            try:
                field = meta.get_field(name)
            except Exception:
                field = None
            if field is not None and getattr(field, "concrete", False) and not field.many_to_many:
                value = getattr(instance, field.attname)
            else:
                value = getattr(instance, name)
                if callable(value):
                    value = value()
            data[name] = jsonable(value)
        return data

    def is_authorized(self, user) -> bool:
        """Whether `user` may receive these events: their token then lists
        this topic. Default: authenticated users."""
        return bool(getattr(user, "is_authenticated", False))

    def recipients(self, instance):
        """Who may receive this row's event, among the authorized: None (all
        of them) or users / user primary keys. The gateway enforces it
        (`eligible_authid`), so others' browsers never get the event."""
        return None

    def payload(self, instance, event_type: str) -> dict:
        """The whole event (args[0])."""
        return {
            "name": self.event_name,
            "meta": {
                "event_type": event_type,
                "verbose_name": self.get_verbose_name(),
                "timestamp": utc_timestamp(),
            },
            "data": self.to_dict(instance),
        }

    # -- publishing ----------------------------------------------------------

    @classmethod
    def publish(cls, instance, event_type: str = "update", using: str | None = None):
        """Publishes an event for `instance` by hand (after bulk operations,
        which send no signals), once the current transaction commits; right
        away outside a transaction."""
        if event_type not in OPERATIONS:
            raise ValueError(f"event_type must be one of {', '.join(OPERATIONS)}, not {event_type!r}")
        self = registry.instance(cls)
        self._schedule(instance, event_type, using or router.db_for_write(type(instance), instance=instance), force=True)

    def _schedule(self, instance, event_type: str, using: str | None, force: bool = False):
        if not force and event_type not in self.operations:
            return
        # Built now: after a delete Django clears the primary key.
        topic, payload = self.topic, self.payload(instance, event_type)
        recipients = self.recipients(instance)
        eligible = None
        if recipients is not None:
            eligible = sorted({str(getattr(r, "pk", r)) for r in recipients})
        transaction.on_commit(partial(self._send, topic, payload, eligible), using=using)

    def _send(self, topic: str, payload: dict, eligible):
        from ..client import get_publisher
        from ..errors import PublishError

        try:
            get_publisher().publish(topic, [payload], eligible_authid=eligible)
        except PublishError as e:
            if not conf.get("FAIL_SILENTLY"):
                raise
            logger.error(
                "telegraphy: the %s event of %s was not published on %s: %s (%s)",
                payload["meta"]["event_type"], payload["name"], topic, e, e.kind,
            )
