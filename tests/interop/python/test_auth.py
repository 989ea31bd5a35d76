"""Ticket (JWT) authentication and topic authorization with AutobahnPython
(asyncio) as the client, for the json and msgpack serializers.

Tokens are minted with PyJWT for each key type the gateway accepts: HS256
(shared secret), RS256 and EdDSA (public keys from tests/keys). For each key
type: a good token joins with the token's identity; expired, forged, malformed
and wrong-algorithm tokens are refused with wamp.error.authentication_failed,
an unknown role with wamp.error.not_authorized, no credentials at all (while
anonymous sessions are off) with wamp.error.no_auth_method — every refusal is
an ABORT followed by WebSocket close code 4500 (the sessions here let the
gateway close the socket; test_close_code_when_the_client_closes_first covers
clients that close as soon as they read the ABORT, as AutobahnPython does).

Authorization: SUBSCRIBE and PUBLISH beyond a session's rights get ERROR
wamp.error.not_authorized; prefix and wildcard subscriptions that overlap
forbidden topics receive only the allowed ones. Negative checks are ordered:
the forbidden events are published (over HTTP) first, then a marker the
session may receive; everything up to the marker is compared.

Each gateway here runs with a temporary config of its own (one process per
key type per module, started on first use)."""

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions, SubscribeOptions

from helpers import (
    REPO_ROOT,
    WAIT,
    Gateway,
    Inbox,
    Refused,
    close_sessions,
    connect,
    http_publish,
    join_ticket,
    listen,
)

SERS = ["json", "msgpack"]
API_KEY = "test-key-123"
SECRET = "a-test-secret-that-is-long-enough-0123456789"
OTHER_SECRET = "some-other-secret-that-is-long-enough-000"
KEYS = REPO_ROOT / "tests" / "keys"

AUTHENTICATION_FAILED = "wamp.error.authentication_failed"
NOT_AUTHORIZED = "wamp.error.not_authorized"
NO_AUTH_METHOD = "wamp.error.no_auth_method"
CLOSE_AUTH_FAILED = 4500
CLOSE_TOKEN_EXPIRED = 4003

# Roles on every gateway here. `user` is the built-in role (subscribe to
# everything, publish nothing); the others are the test's own.
ROLES = """
[roles.staff]
subscribe = ["*"]
publish = ["*"]

[roles.reader]
subscribe = ["shop.public.*"]

[roles.customer]
subscribe = ["*"]
publish = ["chat.*"]
"""


def now() -> int:
    return int(time.time())


def pem(name: str) -> bytes:
    return (KEYS / name).read_bytes()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_raw(claims: dict, key: bytes) -> str:
    """An HS256 JWT made by hand: PyJWT refuses PEM keys as HMAC secrets,
    which is exactly what an algorithm-confusion attacker uses."""
    signing_input = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


@dataclass(frozen=True)
class KeyType:
    name: str
    auth: str  # the [auth] lines of the gateway config
    algorithm: str
    key: object  # signing key (secret or private PEM)
    forged_key: object  # a key the gateway does not trust
    other_algorithm: tuple  # (algorithm, key) of a token type this gateway does not accept
    public_pem: bytes = b""

    def sign(self, claims: dict, key=None) -> str:
        return jwt.encode(claims, self.key if key is None else key, algorithm=self.algorithm)


KEY_TYPES = {
    "hs256": KeyType(
        "hs256",
        f'jwt_secret = "{SECRET}"',
        "HS256",
        SECRET,
        OTHER_SECRET,
        ("RS256", pem("rsa_private.pem")),
    ),
    "rs256": KeyType(
        "rs256",
        f'jwt_public_key_file = "{KEYS / "rsa_public.pem"}"',
        "RS256",
        pem("rsa_private.pem"),
        pem("attacker_rsa_private.pem"),
        ("EdDSA", pem("ed25519_private.pem")),
        pem("rsa_public.pem"),
    ),
    "eddsa": KeyType(
        "eddsa",
        f'jwt_public_key_file = "{KEYS / "ed25519_public.pem"}"',
        "EdDSA",
        pem("ed25519_private.pem"),
        pem("attacker_ed25519_private.pem"),
        ("RS256", pem("rsa_private.pem")),
        pem("ed25519_public.pem"),
    ),
}
KINDS = list(KEY_TYPES)
HS = KEY_TYPES["hs256"]


def config_for(kind: KeyType, extra_auth: str = "") -> str:
    return f"[auth]\nallow_anonymous = false\n{kind.auth}\n{extra_auth}\n{ROLES}"


def claims(sub="alice", role="staff", ttl=60, **extra) -> dict:
    c = {"sub": sub, "exp": now() + ttl}
    if role is not None:
        c["role"] = role
    c.update(extra)
    return c


@pytest.fixture(scope="module")
def gateways():
    """gateways(kind) -> a gateway taking that key type's tokens (started once per module)."""
    started = {}

    def get(kind: str) -> Gateway:
        if kind not in started:
            started[kind] = Gateway(config=config_for(KEY_TYPES[kind]), api_key=API_KEY)
        return started[kind]

    yield get
    for gw in started.values():
        gw.stop()


@pytest.fixture
async def join():
    """join(gateway, ser, ticket, authid=None) -> a joined session, left after the test."""
    sessions = []

    async def open_session(gateway, ser, ticket, authid=None):
        s = await join_ticket(gateway, ser, ticket, authid=authid)
        sessions.append(s)
        return s

    yield open_session
    await close_sessions(sessions)


async def refused(gateway, ser, ticket=None, **kw) -> Refused:
    """Joins (ticket auth unless `authmethods` is given) and expects an ABORT."""
    with pytest.raises(Refused) as info:
        if ticket is None:
            s = await connect(gateway, ser, router_closes=True, **kw)
        else:
            s = await join_ticket(gateway, ser, ticket, **kw)
        await close_sessions([s])  # only reached when the gateway let it in
    return info.value


def assert_refused(r: Refused, uri: str, hint: str, ticket: str = ""):
    assert r.reason == uri, (r.reason, r.message)
    assert hint in r.message, f"`{r.message}` should mention {hint}"
    assert r.close_code == CLOSE_AUTH_FAILED, f"close code {r.close_code} after ABORT {r.reason}"
    if len(ticket) > 20:
        assert ticket not in r.message, "the token is never echoed"


# --- authentication, for each key type and serializer -----------------------


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_good_token_joins_with_its_identity(gateways, join, kind, ser):
    k, gw = KEY_TYPES[kind], gateways(kind)
    token = claims("alice", "staff")
    s = await join(gw, ser, k.sign(token), authid="alice")
    w = s.welcome
    assert s.protocol == f"wamp.2.{ser}"
    assert [c.method for c in s.challenges] == ["ticket"]
    assert (w.realm, w.authid, w.authrole, w.authmethod, w.authprovider) == ("realm1", "alice", "staff", "ticket", "jwt")
    assert w.authextra == {"expires_at": token["exp"]}
    # No role claim: the built-in role `user`. The token's sub wins over HELLO.authid.
    s = await join(gw, ser, k.sign(claims("bob", role=None)), authid="mallory")
    assert (s.welcome.authid, s.welcome.authrole) == ("bob", "user")
    # The session works: a subscription and an event over HTTP.
    _, inbox = await listen(s, f"auth.{kind}.{ser}.hello")
    status, body = await http_publish(gw, {"topic": f"auth.{kind}.{ser}.hello", "args": ["hi"]})
    assert status == 200, body
    assert (await inbox.next()).args == ["hi"]


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_expired_token_is_refused(gateways, kind, ser):
    k, gw = KEY_TYPES[kind], gateways(kind)
    # Beyond the default 30 s leeway.
    ticket = k.sign(claims(ttl=-120))
    assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, "expired", ticket)


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_forged_token_is_refused(gateways, kind, ser):
    k, gw = KEY_TYPES[kind], gateways(kind)
    ticket = k.sign(claims(), key=k.forged_key)
    assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, "signature", ticket)
    # A token of another algorithm is not accepted for this key.
    alg, key = k.other_algorithm
    ticket = jwt.encode(claims(), key, algorithm=alg)
    assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, "algorithm", ticket)
    if k.public_pem:
        # Algorithm confusion: HS256 "signed" with the gateway's public key.
        ticket = hs256_raw(claims(), k.public_pem)
        assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, "algorithm", ticket)
    # An unsigned token (alg none).
    ticket = jwt.encode(claims(), None, algorithm="none")
    r = await refused(gw, ser, ticket)
    assert (r.reason, r.close_code) == (AUTHENTICATION_FAILED, CLOSE_AUTH_FAILED), r


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_malformed_token_is_refused(gateways, kind, ser):
    k, gw = KEY_TYPES[kind], gateways(kind)
    good = k.sign(claims())
    cases = [
        ("not-a-jwt", "JWT"),
        ("", "JWT"),
        ("a.b.c", "JWT"),
        (good.rsplit(".", 1)[0], "JWT"),  # no signature segment
        (good + ".x", "JWT"),  # four segments
        (k.sign({"sub": "alice", "role": "staff"}), "exp"),  # no exp
        (k.sign({"role": "staff", "exp": now() + 60}), "sub"),  # no sub
        (k.sign(claims(sub=42)), "JWT"),  # sub is not a string
        (k.sign(claims(subscribe=["a b"])), "subscribe"),  # bad pattern in a claim
    ]
    for ticket, hint in cases:
        assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, hint, ticket)


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_missing_token_is_refused(gateways, kind, ser):
    gw = gateways(kind)
    # HELLO without authmethods, with only "anonymous", with a method not configured.
    for authmethods in (None, ["anonymous"], ["wampcra"]):
        r = await refused(gw, ser, authmethods=authmethods, authid="alice" if authmethods else None)
        assert_refused(r, NO_AUTH_METHOD, "ticket")


@pytest.mark.parametrize("ser", SERS)
@pytest.mark.parametrize("kind", KINDS)
async def test_unknown_role_is_not_authorized(gateways, kind, ser):
    k, gw = KEY_TYPES[kind], gateways(kind)
    ticket = k.sign(claims(role="nosuchrole"))
    assert_refused(await refused(gw, ser, ticket), NOT_AUTHORIZED, "nosuchrole", ticket)


@pytest.mark.parametrize("ser", SERS)
async def test_audience_and_issuer_when_configured(join, ser):
    gw = Gateway(
        config=config_for(HS, 'jwt_audience = "telegraphy"\njwt_issuer = "https://shop.example"'),
        api_key=API_KEY,
    )
    try:
        good = claims(aud="telegraphy", iss="https://shop.example")
        s = await join(gw, ser, HS.sign(good))
        assert s.welcome.authid == "alice"
        for bad, hint in [
            (dict(good, aud="another-service"), "audience"),
            ({k: v for k, v in good.items() if k != "aud"}, "aud"),
            (dict(good, iss="https://evil.example"), "issuer"),
            ({k: v for k, v in good.items() if k != "iss"}, "iss"),
        ]:
            ticket = HS.sign(bad)
            assert_refused(await refused(gw, ser, ticket), AUTHENTICATION_FAILED, hint, ticket)
        await close_sessions([s])
    finally:
        gw.stop()


async def test_secret_from_the_environment(join):
    """TELEGRAPHY_JWT_SECRET configures HS256 as well as the file does."""
    gw = Gateway(config=ROLES, env={"TELEGRAPHY_JWT_SECRET": SECRET}, api_key=API_KEY)
    try:
        s = await join(gw, "json", HS.sign(claims("env", "staff")))
        assert (s.welcome.authid, s.welcome.authrole) == ("env", "staff")
        ticket = HS.sign(claims(), key=OTHER_SECRET)
        assert_refused(await refused(gw, "msgpack", ticket), AUTHENTICATION_FAILED, "signature", ticket)
        assert_refused(await refused(gw, "json"), NO_AUTH_METHOD, "ticket")
        await close_sessions([s])
    finally:
        gw.stop()


async def test_sessions_end_when_their_token_expires():
    """The gateway says GOODBYE (telegraphy.close.token_expired) and closes with
    4003 when the token's exp passes; AutobahnPython sees onLeave with that reason."""
    gw = Gateway(config=config_for(HS, 'jwt_leeway = "0s"'), api_key=API_KEY)
    try:
        exp = now() + 2
        sessions = [await join_ticket(gw, ser, HS.sign({"sub": f"short-{ser}", "exp": exp})) for ser in SERS]
        for s in sessions:
            assert s.welcome.authextra == {"expires_at": exp}
        for s in sessions:
            details = await asyncio.wait_for(s.left, 6)
            assert details.reason == "telegraphy.close.token_expired", details
            await asyncio.wait_for(s.disconnected, WAIT)
            assert s.close_code == CLOSE_TOKEN_EXPIRED
        assert time.time() >= exp - 1, "closed before the token expired"
    finally:
        gw.stop()


# --- authorization, on the HS256 gateway --------------------------------------


async def post(gw, topic, *args):
    status, body = await http_publish(gw, {"topic": topic, "args": list(args) or [topic]})
    assert status == 200, (topic, status, body)


async def events_before_marker(inbox: Inbox, marker: str) -> list:
    """(tag, topic) of every event up to the first one whose args are [marker], sorted."""
    got = []
    while True:
        ev = await inbox.next()
        if ev.args == [marker]:
            return sorted(got)
        got.append((ev.tag, ev.details.topic))


async def subscribe_denied(session, topic, match=None):
    with pytest.raises(ApplicationError) as info:
        await asyncio.wait_for(
            session.subscribe(lambda *a, **kw: None, topic, options=SubscribeOptions(match=match)), WAIT
        )
    assert info.value.error == NOT_AUTHORIZED, (topic, match, info.value)


async def publish_denied(session, topic):
    with pytest.raises(ApplicationError) as info:
        await asyncio.wait_for(session.publish(topic, "x", options=PublishOptions(acknowledge=True)), WAIT)
    assert info.value.error == NOT_AUTHORIZED, (topic, info.value)


@pytest.mark.parametrize("ser", SERS)
async def test_subscribe_beyond_the_role_is_not_authorized(gateways, join, ser):
    gw = gateways("hs256")
    s = await join(gw, ser, HS.sign(claims("dave", "reader")))
    assert s.welcome.authrole == "reader"
    for topic, match in [("shop.admin.x", None), ("shop.admin", "prefix"), ("other..x", "wildcard"), ("shop.public", None)]:
        await subscribe_denied(s, topic, match)
    # Denials do not end the session: an allowed subscription still works.
    _, inbox = await listen(s, "shop.public.news")
    await post(gw, "shop.public.news", "ok")
    assert (await inbox.next()).args == ["ok"]


@pytest.mark.parametrize("ser", SERS)
async def test_overlapping_subscriptions_receive_only_allowed_topics(gateways, join, ser):
    gw = gateways("hs256")
    s = await join(gw, ser, HS.sign(claims("dave", "reader")))
    inbox = Inbox()
    # Both overlap allowed (shop.public.*) and forbidden (shop.admin.*) topics:
    # accepted, then each event is checked for this session.
    await listen(s, "shop", match="prefix", inbox=inbox, tag="prefix")
    await listen(s, "shop..audit", match="wildcard", inbox=inbox, tag="wildcard")
    for topic in ["shop.admin.audit", "shop.public.sale", "shop.admin.x", "shop.public.audit", "shopping.public.x"]:
        await post(gw, topic)
    await post(gw, "shop.public.marker", "marker")
    assert await events_before_marker(inbox, "marker") == [
        ("prefix", "shop.public.audit"),
        ("prefix", "shop.public.sale"),
        ("wildcard", "shop.public.audit"),
    ], "forbidden topics never arrive"
    # A staff session on the same prefix gets everything (the events were published).
    staff = await join(gw, ser, HS.sign(claims("root", "staff")))
    _, all_inbox = await listen(staff, "shop", match="prefix", tag="prefix")
    await post(gw, "shop.admin.audit")
    await post(gw, "shop.public.marker", "marker")
    assert await events_before_marker(all_inbox, "marker") == [("prefix", "shop.admin.audit")]
    # The reader missed nothing in between but the marker.
    assert await events_before_marker(inbox, "marker") == []


@pytest.mark.parametrize("ser", SERS)
async def test_token_subscribe_claim_narrows_the_role(gateways, join, ser):
    gw = gateways("hs256")
    # Role `user` may subscribe to everything; the token only to orders.erin.*.
    s = await join(gw, ser, HS.sign(claims("erin", "user", subscribe=["orders.erin.*"])))
    await subscribe_denied(s, "orders.frank.1")
    await subscribe_denied(s, "chat", "prefix")
    inbox = Inbox()
    await listen(s, "orders.erin.1", inbox=inbox, tag="exact")
    await listen(s, "orders", match="prefix", inbox=inbox, tag="prefix")
    for topic in ["orders.frank.1", "orders.erin.2", "orders.erin.1", "ordersx.erin.3"]:
        await post(gw, topic)
    await post(gw, "orders.erin.marker", "marker")
    assert await events_before_marker(inbox, "marker") == [
        ("exact", "orders.erin.1"),
        ("prefix", "orders.erin.1"),
        ("prefix", "orders.erin.2"),
    ]


@pytest.mark.parametrize("ser", SERS)
async def test_publish_without_rights_is_not_authorized(gateways, join, ser):
    gw = gateways("hs256")
    watcher = await join(gw, ser, HS.sign(claims("watcher", "staff")))
    _, inbox = await listen(watcher, "chat", match="prefix")
    # The built-in `user` role and `reader` publish nothing.
    for role in ("user", "reader"):
        s = await join(gw, ser, HS.sign(claims(f"{role}-1", role)))
        await publish_denied(s, "chat.room1")
        await publish_denied(s, "shop.public.sale")
    # `customer` may publish to chat.*; this token narrows it to chat.room1.
    c = await join(gw, ser, HS.sign(claims("erin", "customer", publish=["chat.room1"])))
    await publish_denied(c, "chat.room2")
    await publish_denied(c, "orders.erin.1")
    pub = await asyncio.wait_for(c.publish("chat.room1", "allowed", options=PublishOptions(acknowledge=True)), WAIT)
    assert isinstance(pub.id, int) and pub.id > 0
    # Nothing denied reached the subscriber: the allowed event is the first it sees.
    ev = await inbox.next()
    assert (ev.args, ev.details.topic, ev.details.publication) == (["allowed"], "chat.room1", pub.id)
    # Without the token claim the role's chat.* applies.
    c2 = await join(gw, ser, HS.sign(claims("fay", "customer")))
    await asyncio.wait_for(c2.publish("chat.room2", "room2", options=PublishOptions(acknowledge=True)), WAIT)
    ev = await inbox.next()
    assert (ev.args, ev.details.topic) == (["room2"], "chat.room2")


# --- the close code when the client closes first -------------------------------


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads < 64 KiB)."""
    mask = os.urandom(4)
    n = len(payload)
    length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _ws_read(reader):
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(n)


async def _refused_then_close_first(port: int, ticket: str):
    """HELLO (ticket) -> CHALLENGE -> AUTHENTICATE -> ABORT, then at once a
    Close(1000) from the client, as a WAMP client that is done would send.
    Returns (ABORT reason, the gateway's close code and reason)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n".encode()
        )
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        writer.write(_ws_frame(1, json.dumps([1, "realm1", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}]).encode()))
        assert json.loads((await _ws_read(reader))[1])[0] == 4, "CHALLENGE"
        writer.write(_ws_frame(1, json.dumps([5, ticket, {}]).encode()))
        abort = json.loads((await _ws_read(reader))[1])
        assert abort[0] == 3, abort
        writer.write(_ws_frame(8, struct.pack(">H", 1000)))
        opcode, payload = await _ws_read(reader)
        assert opcode == 8, (opcode, payload)
        return abort[2], struct.unpack(">H", payload[:2])[0], payload[2:].decode(errors="replace")
    finally:
        writer.close()


async def test_close_code_when_the_client_closes_first(gateways):
    """A client may close the WebSocket as soon as it reads the ABORT (AutobahnPython's
    ApplicationSession does, from onLeave). The gateway decided on 4500 before it
    sent the ABORT; its close frame must say 4500 however fast the client is, or
    the client cannot tell "do not reconnect with these credentials" from a
    normal close."""
    gw = gateways("hs256")
    seen = collections.Counter()
    for _ in range(300):
        reason, code, text = await asyncio.wait_for(_refused_then_close_first(gw.port, "not-a-jwt"), WAIT)
        assert reason == AUTHENTICATION_FAILED
        seen[(code, text)] += 1
    assert dict(seen) == {(CLOSE_AUTH_FAILED, "authentication failed"): 300}, dict(seen)
