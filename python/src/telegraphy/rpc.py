"""Procedures your web-app serves to browsers through the gateway.

The gateway maps procedure patterns to your endpoints (``[[rpc.http]]`` in
its configuration). A browser's CALL becomes a ``POST`` to your endpoint,
signed with the shared ``rpc.secret``; this module checks the signature and
reads the call, framework-free (Flask, FastAPI, plain WSGI). Django users
get all of it from ``@telegraphy.django.procedure``.

    from telegraphy.rpc import InvalidSignature, RpcError, verify

    @app.post("/telegraphy/rpc/")
    def rpc():
        try:
            call = verify(request.get_data(), request.headers.get("X-Telegraphy-Signature"), RPC_SECRET)
        except InvalidSignature as e:
            return {"error": "wamp.error.not_authorized", "args": [str(e)]}, 403
        if call.procedure == "shop.cart.add":
            return {"result": add_to_cart(call.caller.authid, *call.args)}
        return {"error": "wamp.error.no_such_procedure"}, 404

The answer is a JSON object: ``{"result": value}``, ``{"args": [...],
"kwargs": {...}}``, or ``{"error": "<uri>", "args": [...], "kwargs": {...}}``
(``RpcError.answer()``); with ``Content-Type: application/x-ndjson`` one
object per line, ``"progress": true`` on each but the last (``ndjson()``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field

#: The request header that carries ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.
SIGNATURE_HEADER = "X-Telegraphy-Signature"
#: How old (or how far in the future) a signed call may be, in seconds.
TOLERANCE = 60

_URI = re.compile(r"^([^\s.#]+\.)*[^\s.#]+$")


class InvalidSignature(Exception):
    """The request is not a call the gateway signed with your secret (or
    it is older than the tolerance): answer 403 and do nothing."""


class RpcError(Exception):
    """Raise it in a procedure to answer the caller with a WAMP error:
    ``raise RpcError("shop.error.out_of_stock", "no more apples", sku="apple")``.
    The caller gets the URI, the positional and the keyword arguments."""

    def __init__(self, uri: str, *args, **kwargs):
        if not isinstance(uri, str) or not _URI.match(uri):
            raise ValueError(f"RpcError needs an error URI such as 'shop.error.out_of_stock', not {uri!r}")
        super().__init__(uri, *args)
        self.uri, self.arguments, self.kwargs = uri, list(args), kwargs

    def answer(self) -> dict:
        """The JSON answer for the gateway."""
        return {"error": self.uri, "args": self.arguments, "kwargs": self.kwargs}


@dataclass(frozen=True)
class Caller:
    """Who calls, as the gateway authenticated them: with Django tokens the
    authid is the user's primary key (as a string)."""

    session: int
    authid: str
    authrole: str


@dataclass(frozen=True)
class Call:
    """A call the gateway forwarded."""

    procedure: str
    realm: str
    caller: Caller
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    receive_progress: bool = False


def _key(secret) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not secret:
        raise InvalidSignature("no RPC secret is configured here, so no call can be trusted")
    return secret


def sign(body: bytes, secret, timestamp: int | None = None) -> str:
    """The signature header value for ``body`` (what the gateway sends; for
    tests and for clients of your own)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(_key(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(body: bytes, header: str | None, secret, *, tolerance: int = TOLERANCE, now: float | None = None) -> Call:
    """Checks that ``body`` was signed by the gateway with ``secret`` less
    than ``tolerance`` seconds ago, then reads it. Raises InvalidSignature
    (with a message saying why) or ValueError for a signed body that is not
    a call."""
    if not header:
        raise InvalidSignature(f"the request has no {SIGNATURE_HEADER} header; only the gateway may call this endpoint")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise InvalidSignature(f"the {SIGNATURE_HEADER} header is not t=<timestamp>,v1=<signature>") from None
    expected = hmac.new(_key(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise InvalidSignature("the signature does not match: the body was changed, or the gateway's rpc.secret is not this one")
    age = (time.time() if now is None else now) - t
    if abs(age) > tolerance:
        raise InvalidSignature(f"the call was signed {int(age)} s ago, outside the {tolerance} s window (a replay, or clocks apart)")
    return parse(body)


def parse(body: bytes) -> Call:
    """Reads a call's JSON body (after ``verify``)."""
    try:
        data = json.loads(body)
        caller = data["caller"]
        return Call(
            procedure=str(data["procedure"]),
            realm=str(data.get("realm", "")),
            caller=Caller(session=int(caller["session"]), authid=str(caller["authid"]), authrole=str(caller["authrole"])),
            args=list(data.get("args") or []),
            kwargs=dict(data.get("kwargs") or {}),
            receive_progress=bool(data.get("receive_progress", False)),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a call from the gateway: {e}") from None


def ndjson(progress_values, final: dict):
    """Lines of a streamed answer: each of ``progress_values`` as a
    progressive result, then ``final`` (an answer object). Yields bytes."""
    for value in progress_values:
        yield json.dumps({"progress": True, "result": value}).encode() + b"\n"
    yield json.dumps(final).encode() + b"\n"
