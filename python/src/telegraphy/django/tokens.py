"""Short-lived JWTs for browsers: HS256 with the gateway's shared secret,
naming the user and the exact topics they may receive: the ModelEvents
whose `is_authorized(user)` is true, the TOPICS setting's patterns whose
audience includes the user, and the patterns of the TOPICS_FOR hook."""

from __future__ import annotations

import secrets
import time

from django.core.exceptions import ImproperlyConfigured, PermissionDenied

from . import conf
from .model_events import registry
from ..tokens import TokenError, check_patterns, mint as mint_token
from ..uri import pattern_matches


def in_audience(user, audience: str) -> bool:
    """Whether `user` belongs to one TOPICS audience."""
    authenticated = bool(getattr(user, "is_authenticated", False))
    if audience == "everyone":
        return True
    if audience == "authenticated":
        return authenticated
    if not authenticated:
        return False
    if audience == "staff":
        return bool(getattr(user, "is_staff", False))
    if audience == "superuser":
        return bool(getattr(user, "is_superuser", False))
    if audience.startswith("group:"):
        groups = getattr(user, "groups", None)
        return groups is not None and groups.filter(name=audience[len("group:"):]).exists()
    if audience.startswith("perm:"):
        return user.has_perm(audience[len("perm:"):])
    raise ImproperlyConfigured(f"TELEGRAPHY['TOPICS'] has an unknown audience {audience!r} (see manage.py check)")


def hook():
    """The TOPICS_FOR callable, or None."""
    from django.utils.module_loading import import_string

    path = conf.get("TOPICS_FOR")
    if not path:
        return None
    if callable(path):
        return path
    try:
        return import_string(path)
    except ImportError as e:
        raise ImproperlyConfigured(f"TELEGRAPHY['TOPICS_FOR'] {path!r} cannot be imported: {e}") from None


#: The gateway's presence events of topic T are on `telegraphy.presence.T`.
PRESENCE_PREFIX = "telegraphy.presence."


def presence_topic(model_topic: str, pk) -> str:
    """The topic one object's viewers are present on: `<model topic>.<pk>`."""
    return f"{model_topic}.{pk}"


def presence_patterns(model_topics) -> list[str]:
    """What a token needs to be present on, and to see who is present on,
    each object of these models (when TELEGRAPHY['PRESENCE'] is on)."""
    if not conf.get("PRESENCE"):
        return []
    return [p for t in model_topics for p in (f"{t}.*", f"{PRESENCE_PREFIX}{t}.*")]


def display_name(user) -> str | None:
    """How presence names `user`: TELEGRAPHY['DISPLAY_NAME'](user), else the
    full name, else the username; None for anonymous visitors."""
    from django.utils.module_loading import import_string

    if not getattr(user, "is_authenticated", False):
        return None
    custom = conf.get("DISPLAY_NAME")
    if custom:
        fn = custom if callable(custom) else import_string(custom)
        name = fn(user)
        return None if name is None else str(name)
    full = user.get_full_name() if hasattr(user, "get_full_name") else ""
    return full or user.get_username()


def model_topics_for(user) -> list[str]:
    """The topics of every ModelEvents whose `is_authorized(user)` is true."""
    return sorted({e.topic for e in registry.all() if e.model_class is not None and e.is_authorized(user)})


def extra_topics_for(user) -> list[str]:
    """Patterns of plain topics for `user`: TOPICS entries whose audience
    includes them, then what TOPICS_FOR returns."""
    found = []
    for pattern, audiences in (conf.get("TOPICS") or {}).items():
        if any(in_audience(user, a) for a in conf.audiences_of(audiences)):
            found.append(pattern)
    fn = hook()
    if fn is not None:
        extra = fn(user)
        try:
            found += check_patterns(extra if extra is not None else [], "subscribe")
        except TokenError as e:
            raise ImproperlyConfigured(f"TELEGRAPHY['TOPICS_FOR'] returned a bad pattern list: {e}") from None
    return found


def topics_for(user) -> list[str]:
    """Every topic pattern `user`'s token lists (claim `subscribe`)."""
    models = model_topics_for(user)
    return sorted(set(models) | set(presence_patterns(models)) | set(extra_topics_for(user)))


def may_receive(user, topic: str) -> bool:
    """Whether `user`'s token lets them receive events on `topic`."""
    return any(pattern_matches(p, topic) for p in topics_for(user))


def claims_for(user, now: int | None = None) -> dict:
    """The token claims for `user` (raises PermissionDenied for anonymous
    users unless ALLOW_ANONYMOUS)."""
    now = int(time.time()) if now is None else now
    ttl = int(conf.get("TOKEN_TTL"))
    if getattr(user, "is_authenticated", False):
        sub, role = str(user.pk), conf.get("ROLE")
    elif conf.get("ALLOW_ANONYMOUS"):
        sub, role = f"anonymous-{secrets.token_hex(8)}", conf.get("ANONYMOUS_ROLE")
    else:
        raise PermissionDenied("sign in to receive live updates (TELEGRAPHY['ALLOW_ANONYMOUS'] is off)")
    # Bound to the realm the page joins, so a gateway with
    # auth.require_realm_claim (realms as tenants) accepts it there only.
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + ttl, "subscribe": topics_for(user), "realm": conf.get("REALM")}
    name = display_name(user)
    if name:
        claims["name"] = name
    return claims


def mint(user) -> dict:
    """`{"token", "url", "realm", "expires_at"}` for `user`."""
    secret = conf.get("SECRET")
    if not secret:
        raise ImproperlyConfigured("TELEGRAPHY['SECRET'] is not set: use the gateway's TELEGRAPHY_JWT_SECRET")
    c = claims_for(user)
    token = mint_token(c["sub"], subscribe=c["subscribe"], role=c["role"], ttl=c["exp"] - c["iat"], name=c.get("name"),
                       realm=c["realm"], secret=secret, now=c["iat"])
    return {"token": token, "url": conf.get("GATEWAY_URL"), "realm": conf.get("REALM"), "expires_at": c["exp"]}
