"""Short-lived JWTs for browsers: HS256 with the gateway's shared secret,
naming the user and the exact topics `is_authorized(user)` allows."""

from __future__ import annotations

import secrets
import time

from django.core.exceptions import ImproperlyConfigured, PermissionDenied

from . import conf
from .model_events import registry


def topics_for(user) -> list[str]:
    """The topics of every ModelEvents whose `is_authorized(user)` is true."""
    return sorted({e.topic for e in registry.all() if e.model_class is not None and e.is_authorized(user)})


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
    return {"sub": sub, "role": role, "iat": now, "exp": now + ttl, "subscribe": topics_for(user)}


def mint(user) -> dict:
    """`{"token", "url", "realm", "expires_at"}` for `user`."""
    import jwt

    secret = conf.get("SECRET")
    if not secret:
        raise ImproperlyConfigured("TELEGRAPHY['SECRET'] is not set: use the gateway's TELEGRAPHY_JWT_SECRET")
    claims = claims_for(user)
    token = jwt.encode(claims, secret, algorithm="HS256")
    return {"token": token, "url": conf.get("GATEWAY_URL"), "realm": conf.get("REALM"), "expires_at": claims["exp"]}
