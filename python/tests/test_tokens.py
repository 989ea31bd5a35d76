"""telegraphy.tokens.mint: browser tokens without Django, checked by a real
gateway (claims, patterns, realm, expiry)."""

import time

import jwt
import pytest

from telegraphy import Publisher, tokens
from telegraphy.tokens import TokenError
from telegraphy.uri import pattern_error, pattern_matches
from tests.support.gateway import API_KEY, SECRET
from tests.support.wamp import Aborted, WampError


def decode(token):
    return jwt.decode(token, SECRET, algorithms=["HS256"])


def test_claims():
    claims = decode(tokens.mint(42, subscribe=["shop.reports.*"], publish=[], role="member", ttl=60,
                                realm="realm1", secret=SECRET, now=int(time.time())))
    assert claims["sub"] == "42" and claims["role"] == "member" and claims["realm"] == "realm1"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["subscribe"] == ["shop.reports.*"] and claims["publish"] == []
    plain = decode(tokens.mint("ann", secret=SECRET))
    assert set(plain) == {"sub", "iat", "exp"} and plain["exp"] - plain["iat"] == tokens.DEFAULT_TTL
    both = jwt.decode(tokens.mint("ann", secret=SECRET, realm=["a", "b"], audience="tg", issuer="me"), SECRET,
                      algorithms=["HS256"], audience="tg", issuer="me")
    assert (both["realm"], both["aud"], both["iss"]) == (["a", "b"], "tg", "me")


def test_the_secret_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TELEGRAPHY_JWT_SECRET", SECRET)
    assert decode(tokens.mint("ann"))["sub"] == "ann"
    monkeypatch.delenv("TELEGRAPHY_JWT_SECRET")
    with pytest.raises(TokenError, match="TELEGRAPHY_JWT_SECRET"):
        tokens.mint("ann")


@pytest.mark.parametrize("kwargs, message", [
    ({"subject": ""}, "subject"),
    ({"subject": None}, "subject"),
    ({"subscribe": "shop.*"}, "not a string"),
    ({"subscribe": ["shop.*.x"]}, "may only end"),
    ({"publish": ["has space"]}, "publish: pattern"),
    ({"ttl": 0}, "ttl"),
    ({"role": ""}, "role"),
    ({"realm": "a b"}, "realm"),
    ({"secret": "short"}, "32 bytes"),
    ({"algorithm": "none"}, "algorithm"),
])
def test_bad_arguments(kwargs, message):
    args = {"subject": "ann", "secret": SECRET, **kwargs}
    with pytest.raises(TokenError, match=message):
        tokens.mint(args.pop("subject"), **args)


def test_patterns_as_the_gateway_reads_them():
    for good in ("*", "a", "a.b", "a.b.*", "a.b*", "a..c", ".b", "a."):
        assert pattern_error(good) is None, good
    for bad in ("", "a*b", "**", "a b", "a.#", "..", 3):
        assert pattern_error(bad), bad
    assert pattern_matches("a.b.*", "a.b.c") and not pattern_matches("a.b.*", "a.bc")
    assert pattern_matches("a.b*", "a.bc") and pattern_matches("a..c", "a.x.c") and not pattern_matches("a..c", "a.x.y")
    assert pattern_matches("a.b", "a.b") and not pattern_matches("a.b", "a.b.c") and pattern_matches("*", "z")


def test_the_gateway_honours_the_claims(gateway, wamp):
    token = tokens.mint("ann", subscribe=["tok.reports.*"], secret=SECRET)
    client = wamp(gateway, token=token)
    assert client.welcome["authid"] == "ann"
    client.subscribe("tok.reports.ready")
    with pytest.raises(WampError, match="not_authorized"):
        client.subscribe("tok.secrets")
    pid = Publisher(gateway_url=gateway.http_url, api_key=API_KEY).publish("tok.reports.ready", ["daily.pdf"])
    assert client.next_event().publication == pid
    with pytest.raises(Aborted, match="authentication_failed"):
        wamp(gateway, token=tokens.mint("ann", realm="elsewhere", secret=SECRET))
    with pytest.raises(Aborted, match="authentication_failed"):
        wamp(gateway, token=tokens.mint("ann", ttl=1, secret=SECRET, now=int(time.time()) - 10))
