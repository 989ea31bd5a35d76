"""Browser tokens without Django: short-lived JWTs the gateway accepts for
WAMP ticket authentication (docs/security.md, docs/python.md).

    from telegraphy import tokens
    token = tokens.mint("42", subscribe=["shop.reports.*", "shop.users.42.*"])

Any WSGI/ASGI framework (Flask, FastAPI, ...) mints one per signed-in user
and hands it to the JS client. Needs PyJWT: `pip install "telegraphy[tokens]"`
(the `django` extra has it too).
"""

from __future__ import annotations

import os
import time

from .uri import is_valid_topic, pattern_error

#: Lifetime of a token unless `ttl=` says otherwise (seconds).
DEFAULT_TTL = 300
ALGORITHMS = ("HS256", "RS256", "EdDSA")


class TokenError(ValueError):
    """A token cannot be minted from these arguments (the message says why)."""


def check_patterns(patterns, claim: str) -> list[str]:
    """`patterns` as a list, or TokenError naming the first bad one."""
    if isinstance(patterns, (str, bytes)):
        raise TokenError(f"{claim}= takes a list of patterns, not a string: {claim}=[{patterns!r}]")
    try:
        result = list(patterns)
    except TypeError:
        raise TokenError(f"{claim}= takes a list of patterns, not {type(patterns).__name__}") from None
    for pattern in result:
        problem = pattern_error(pattern)
        if problem:
            raise TokenError(f"{claim}: {problem}")
    return result


def claims(
    subject,
    *,
    subscribe=None,
    publish=None,
    role: str | None = None,
    ttl: int = DEFAULT_TTL,
    realm=None,
    audience: str | None = None,
    issuer: str | None = None,
    now: int | None = None,
    name: str | None = None,
) -> dict:
    """The claims `mint` signs (checked: TokenError on a bad argument)."""
    if isinstance(subject, bool) or not isinstance(subject, (str, int)) or str(subject) == "":
        raise TokenError(f"the subject (the user's id, claim `sub`) must be a non-empty string, not {subject!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise TokenError(f"ttl must be a positive number of seconds, not {ttl!r}")
    now = int(time.time()) if now is None else int(now)
    result = {"sub": str(subject), "iat": now, "exp": now + int(ttl)}
    if role is not None:
        if not isinstance(role, str) or not role:
            raise TokenError(f"role must be the name of a gateway role, not {role!r}")
        result["role"] = role
    if realm is not None:
        realms = [realm] if isinstance(realm, str) else list(realm)
        bad = [r for r in realms if not is_valid_topic(r)]
        if bad or not realms:
            raise TokenError(f"realm must be a realm name or a list of them, not {realm!r}")
        result["realm"] = realm if isinstance(realm, str) else realms
    if audience is not None:
        result["aud"] = str(audience)
    if issuer is not None:
        result["iss"] = str(issuer)
    if name is not None:
        if not isinstance(name, str):
            raise TokenError(f"name must be a display name (a string), not {name!r}")
        if name.strip():
            result["name"] = name.strip()[:100]
    # An empty list is not "no claim": the token may then subscribe (or
    # publish) to nothing, whatever its role allows.
    if subscribe is not None:
        result["subscribe"] = check_patterns(subscribe, "subscribe")
    if publish is not None:
        result["publish"] = check_patterns(publish, "publish")
    return result


def mint(
    subject,
    *,
    subscribe=None,
    publish=None,
    role: str | None = None,
    ttl: int = DEFAULT_TTL,
    realm=None,
    secret=None,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    now: int | None = None,
    name: str | None = None,
) -> str:
    """A signed token (a JWT string) for the user `subject` (claim `sub`, the
    session's authid: `eligible_authid` targets it).

    * `subscribe` / `publish`: lists of topic patterns (`shop.orders`,
      `shop.orders.*`, `shop..status`, `*`) that narrow the role's rights.
      None leaves the claim out (the role alone decides: the built-in `user`
      role may subscribe to every topic!), `[]` allows nothing.
    * `role`: the gateway role (claim left out: the gateway uses `user`).
    * `ttl`: seconds until it expires (`exp`), default 300.
    * `realm`: a realm or a list of them the token is good for (no claim: any).
    * `secret`: HS256 secret, the gateway's TELEGRAPHY_JWT_SECRET (≥ 32 bytes);
      default: the TELEGRAPHY_JWT_SECRET environment variable. With
      `algorithm="RS256"` or `"EdDSA"` it is the PEM private key instead.
    * `audience` / `issuer`: `aud` / `iss`, when the gateway requires them.
    * `name`: a display name (claim `name`), which presence shows beside the
      authid (`telegraphy.presence.get`, the JS client's `presence()`).
    """
    if algorithm not in ALGORITHMS:
        raise TokenError(f"algorithm must be one of {', '.join(ALGORITHMS)} (what the gateway verifies), not {algorithm!r}")
    if secret is None:
        secret = os.environ.get("TELEGRAPHY_JWT_SECRET")
        if not secret:
            raise TokenError("no secret: pass secret=... or set TELEGRAPHY_JWT_SECRET (the gateway's secret)")
    if algorithm == "HS256":
        size = len(secret.encode("utf-8")) if isinstance(secret, str) else len(secret)
        if size < 32:
            raise TokenError("the secret must have at least 32 bytes, like the gateway's TELEGRAPHY_JWT_SECRET "
                             "(generate one with `openssl rand -hex 32`)")
    body = claims(subject, subscribe=subscribe, publish=publish, role=role, ttl=ttl, realm=realm,
                  audience=audience, issuer=issuer, now=now, name=name)
    try:
        import jwt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError('telegraphy.tokens needs PyJWT: pip install "telegraphy[tokens]"') from None
    return jwt.encode(body, secret, algorithm=algorithm)
