"""Procedures served by Django: the framework-free signature helper
(telegraphy.rpc), the @procedure view (signature, user, arguments, errors,
streaming), the system check, and calls from a WAMP client through a real
gateway ([[rpc.http]]) to a live Django server."""

from __future__ import annotations

import json
import time

import pytest
from django.contrib.auth.models import User
from django.test import Client

from telegraphy import rpc
from telegraphy.django.procedures import procedures
from telegraphy.tokens import mint
from tests.support.gateway import SECRET, Gateway
from tests.support.wamp import WampError

RPC_SECRET = "test-rpc-secret-0123456789-0123456789-abcdef"


def body_of(procedure, args=(), kwargs=None, authid="anonymous-1", authrole="anonymous", session=7):
    return json.dumps({"procedure": procedure, "realm": "realm1", "args": list(args), "kwargs": kwargs or {},
                       "caller": {"session": session, "authid": authid, "authrole": authrole},
                       "receive_progress": False}).encode()


# ---- telegraphy.rpc (no Django) --------------------------------------------------------

def test_sign_and_verify():
    body = body_of("shop.cart.add", ["apple"])
    header = rpc.sign(body, RPC_SECRET)
    call = rpc.verify(body, header, RPC_SECRET)
    assert (call.procedure, call.args, call.caller.session) == ("shop.cart.add", ["apple"], 7)


def test_the_gateways_signature_vector():
    # gateway/src/http_callee.rs: the_signature_is_hmac_sha256_over_timestamp_dot_body
    assert rpc.sign(b"{}", "secret", 1_700_000_000) == \
        "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"


@pytest.mark.parametrize("case", ["no header", "garbage", "tampered", "wrong secret", "replayed", "future", "no secret"])
def test_forged_expired_and_replayed_calls_are_refused(case):
    body = body_of("shop.cart.add", ["apple"])
    now = time.time()
    header, secret, check_body = rpc.sign(body, RPC_SECRET), RPC_SECRET, body
    if case == "no header":
        header = None
    elif case == "garbage":
        header = "v1=abc"
    elif case == "tampered":
        check_body = body.replace(b"apple", b"pears")
    elif case == "wrong secret":
        secret = "another-secret-0123456789-0123456789"
    elif case == "replayed":
        header = rpc.sign(body, RPC_SECRET, timestamp=int(now) - 61)
    elif case == "future":
        header = rpc.sign(body, RPC_SECRET, timestamp=int(now) + 120)
    elif case == "no secret":
        secret = ""
    with pytest.raises(rpc.InvalidSignature):
        rpc.verify(check_body, header, secret, now=now)


def test_rpc_error_needs_a_uri():
    assert rpc.RpcError("shop.error.x", 1, a=2).answer() == {"error": "shop.error.x", "args": [1], "kwargs": {"a": 2}}
    with pytest.raises(ValueError):
        rpc.RpcError("not a uri")


# ---- the Django view ---------------------------------------------------------------------

def post(procedure, args=(), kwargs=None, secret=RPC_SECRET, **caller):
    body = body_of(procedure, args, kwargs, **caller)
    return Client().post("/telegraphy/rpc/", body, content_type="application/json",
                         headers={"X-Telegraphy-Signature": rpc.sign(body, secret)})


def test_procedures_are_autodiscovered():
    assert {"tests.rpc.add", "tests.rpc.whoami", "tests.rpc.count"} <= set(procedures())


@pytest.mark.django_db
def test_the_view_calls_the_function_with_the_user():
    user = User.objects.create_user("alice")
    response = post("tests.rpc.whoami", authid=str(user.pk), authrole="user")
    assert response.status_code == 200
    assert response.json()["result"]["username"] == "alice"
    response = post("tests.rpc.whoami", authid="anonymous-abc", authrole="anonymous")
    assert response.json()["result"]["username"] is None
    response = post("tests.rpc.whoami", authid="999999", authrole="user")
    assert response.json()["result"]["username"] is None, "an authid that is no user: AnonymousUser"
    assert post("tests.rpc.add", [2, 3]).json() == {"result": 5}
    assert post("tests.rpc.add", [2], {"b": 40}).json() == {"result": 42}


@pytest.mark.django_db
def test_the_view_answers_errors():
    assert post("tests.rpc.fail").json() == {"error": "tests.error.nope", "args": ["not today"], "kwargs": {"why": "because"}}
    crash = post("tests.rpc.crash")
    assert crash.status_code == 500 and crash.json()["error"] == "wamp.error.runtime_error"
    assert "a bug" not in crash.content.decode(), "no internals leak to the caller"
    unknown = post("tests.rpc.nothing")
    assert unknown.status_code == 404 and unknown.json()["error"] == "wamp.error.no_such_procedure"
    bad = post("tests.rpc.add", [1, 2, 3])
    assert bad.status_code == 400 and bad.json()["error"] == "wamp.error.invalid_argument"
    forged = post("tests.rpc.add", [1, 2], secret="not-the-secret-0123456789-0123456789")
    assert forged.status_code == 403 and forged.json()["error"] == "wamp.error.not_authorized"
    assert Client().get("/telegraphy/rpc/").status_code == 405


@pytest.mark.django_db
def test_a_generator_streams_progressive_results():
    response = post("tests.rpc.count", [3])
    assert response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert lines == [{"progress": True, "result": 1}, {"progress": True, "result": 2},
                     {"progress": True, "result": 3}, {"result": "done"}]


def test_the_system_check_wants_the_rpc_secret(settings):
    from telegraphy.django.checks import check_procedures

    assert check_procedures() == []
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "RPC_SECRET": None}
    errors = check_procedures()
    assert [e.id for e in errors] == ["telegraphy.E017"]
    assert "tests.rpc.add" in errors[0].msg and "rpc.secret" in errors[0].hint


# ---- through a real gateway ---------------------------------------------------------------

@pytest.fixture
def rpc_gateway(live_server):
    config = (
        f'[auth]\nallow_anonymous = true\n'
        f'[roles.user]\nsubscribe = ["*"]\ncall = ["tests.rpc.*"]\n'
        f'[roles.anonymous]\ncall = ["tests.rpc.add"]\n'
        f'[rpc]\nsecret = "{RPC_SECRET}"\n'
        f'[[rpc.http]]\nprocedure = "tests.rpc.*"\nurl = "{live_server.url}/telegraphy/rpc/"\ntimeout = "5s"\n'
    )
    gw = Gateway(config)
    yield gw
    gw.stop()


@pytest.mark.django_db(transaction=True)
def test_a_call_through_the_gateway_reaches_django_as_the_user(rpc_gateway, wamp):
    user = User.objects.create_user("bob")
    token = mint(str(user.pk), secret=SECRET, role="user", realm="realm1")
    client = wamp(rpc_gateway, token=token)
    args, _ = client.call("tests.rpc.whoami")
    assert args[0]["username"] == "bob"
    assert args[0]["session"] == client.session_id
    assert args[0]["authrole"] == "user"
    assert client.call("tests.rpc.add", [20, 22]) == ([42], {})
    with pytest.raises(WampError) as info:
        client.call("tests.rpc.fail")
    assert (info.value.uri, info.value.args_, info.value.kwargs) == ("tests.error.nope", ["not today"], {"why": "because"})
    seen = []
    args, _ = client.call("tests.rpc.count", [3], options={"receive_progress": True}, on_progress=lambda a, kw: seen.append(a[0]))
    assert (seen, args) == ([1, 2, 3], ["done"])
    # The gateway's rights apply first: anonymous may call tests.rpc.add only.
    anonymous = wamp(rpc_gateway)
    assert anonymous.call("tests.rpc.add", [1]) == ([1], {})
    with pytest.raises(WampError) as info:
        anonymous.call("tests.rpc.whoami")
    assert info.value.uri == "wamp.error.not_authorized"


@pytest.mark.django_db(transaction=True)
def test_a_web_app_that_is_down_or_slow_never_hangs_a_call(wamp):
    from tests.support.gateway import free_port

    config = (
        f'[auth]\nallow_anonymous = true\n[roles.anonymous]\ncall = ["*"]\n[rpc]\nsecret = "{RPC_SECRET}"\n'
        f'[[rpc.http]]\nprocedure = "down.*"\nurl = "http://127.0.0.1:{free_port()}/telegraphy/rpc/"\n'
    )
    gw = Gateway(config)
    try:
        client = wamp(gw)
        started = time.monotonic()
        with pytest.raises(WampError) as info:
            client.call("down.thing")
        assert info.value.uri == "telegraphy.error.callee_unavailable"
        assert time.monotonic() - started < 5
    finally:
        gw.stop()
