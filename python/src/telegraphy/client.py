"""The default publisher behind `telegraphy.publish()`: built on first use
from the Django settings (when Django is configured and has a TELEGRAPHY
dict) or from the environment, then kept."""

from __future__ import annotations

import sys
import threading

from .publisher import Publisher, publisher_from_env

_lock = threading.Lock()
_default: Publisher | None = None


def _django_configured() -> bool:
    if "django.conf" not in sys.modules:
        return False
    from django.conf import settings

    return settings.configured and hasattr(settings, "TELEGRAPHY")


def get_publisher() -> Publisher:
    """The default Publisher (built once, thread-safe)."""
    global _default
    with _lock:
        if _default is None:
            if _django_configured():
                from .django.conf import publisher_from_settings

                _default = publisher_from_settings()
            else:
                _default = publisher_from_env()
        return _default


def set_publisher(publisher: Publisher | None):
    """Replaces the default publisher (None: build it again on next use)."""
    global _default
    with _lock:
        old, _default = _default, publisher
    if old is not None and old is not publisher:
        old.close()


def publish(topic: str, *args, **kwargs) -> int:
    """Publishes `args` and `kwargs` as the event's payload on `topic` with
    the default publisher; returns the publication id. For a realm or
    black/white lists use `get_publisher().publish(...)`."""
    return get_publisher().publish(topic, list(args), kwargs)


def presence(topic: str, *, realm: str | None = None, limit: int | None = None) -> dict:
    """Who is on `topic` now, cluster-wide, asked of the gateway through the
    default publisher (it needs the gateway's URL and an API key)::

        telegraphy.presence("shop.order.7")["count"]
    """
    return get_publisher().presence(topic, realm=realm, limit=limit)
