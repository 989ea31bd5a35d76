"""A small synchronous WAMP v2 client (raw JSON frames over the
`websockets` library) for checking what browsers would receive."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from websockets.sync.client import connect

HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE, ERROR = 1, 2, 3, 4, 5, 6, 8
PUBLISH, PUBLISHED, SUBSCRIBE, SUBSCRIBED, EVENT = 16, 17, 32, 33, 36
CALL, RESULT = 48, 50

ROLES = {"subscriber": {"features": {"pattern_based_subscription": True}}, "publisher": {},
         "caller": {"features": {"progressive_call_results": True}}}


class Aborted(Exception):
    def __init__(self, reason, message):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class WampError(Exception):
    def __init__(self, uri, details, args=(), kwargs=None):
        super().__init__(f"{uri}: {details.get('message', '') or (args[0] if args else '')}")
        self.uri, self.details, self.args_, self.kwargs = uri, details, list(args), kwargs or {}


@dataclass
class Event:
    subscription: int
    publication: int
    details: dict
    args: list
    kwargs: dict


class Wamp:
    """Joins `realm` with a ticket (JWT) or anonymously."""

    def __init__(self, url: str, token: str | None = None, realm: str = "realm1", timeout: float = 5.0):
        self.ws = connect(url, subprotocols=["wamp.2.json"], open_timeout=timeout, close_timeout=1, proxy=None,
                          compression=None).__enter__()
        self.events: list[Event] = []
        self.request = 0
        details = {"roles": ROLES, "authmethods": ["ticket"] if token else ["anonymous"]}
        self.send([HELLO, realm, details])
        msg = self.recv(timeout)
        if msg[0] == CHALLENGE:
            self.send([AUTHENTICATE, token or "", {}])
            msg = self.recv(timeout)
        if msg[0] == ABORT:
            self.ws.close()
            raise Aborted(msg[2], msg[1].get("message", ""))
        assert msg[0] == WELCOME, msg
        self.session_id, self.welcome = msg[1], msg[2]

    def send(self, message):
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float):
        return json.loads(self.ws.recv(timeout=timeout))

    def _wait(self, request: int, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg[0] == EVENT:
                self.events.append(Event(msg[1], msg[2], msg[3], *_payload(msg, 4)))
                continue
            if msg[0] == ERROR and msg[2] == request:
                raise WampError(msg[4], msg[3])
            if msg[0] in (SUBSCRIBED, PUBLISHED) and msg[1] == request:
                return msg[2]

    def subscribe(self, topic: str, match: str | None = None, timeout: float = 5.0) -> int:
        self.request += 1
        self.send([SUBSCRIBE, self.request, {"match": match} if match else {}, topic])
        return self._wait(self.request, timeout)

    def call(self, procedure: str, args=(), kwargs=None, options=None, timeout: float = 5.0, on_progress=None):
        """CALL; returns (args, kwargs) of the RESULT, or raises WampError
        (with the error's args and kwargs)."""
        self.request += 1
        request = self.request
        self.send([CALL, request, dict(options or {}), procedure, list(args), dict(kwargs or {})])
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg[0] == ERROR and msg[2] == request:
                raise WampError(msg[4], msg[3], *_payload(msg, 5))
            if msg[0] == RESULT and msg[1] == request:
                args_, kwargs_ = _payload(msg, 3)
                if msg[2].get("progress"):
                    if on_progress:
                        on_progress(args_, kwargs_)
                    continue
                return args_, kwargs_

    def next_event(self, timeout: float = 5.0) -> Event:
        if self.events:
            return self.events.pop(0)
        msg = self.recv(timeout)
        assert msg[0] == EVENT, msg
        return Event(msg[1], msg[2], msg[3], *_payload(msg, 4))

    def no_event(self, timeout: float = 0.5) -> bool:
        """True when no EVENT arrives within `timeout`."""
        if self.events:
            return False
        try:
            msg = self.recv(timeout)
        except TimeoutError:
            return True
        if msg[0] == EVENT:
            self.events.append(Event(msg[1], msg[2], msg[3], *_payload(msg, 4)))
            return False
        return True

    def close(self):
        try:
            self.send([GOODBYE, {}, "wamp.close.close_realm"])
        except Exception:
            pass
        self.ws.close()


def _payload(msg, at):
    """(args, kwargs) from position `at` of a message: [] and {} when absent."""
    return (msg[at] if len(msg) > at else []), (msg[at + 1] if len(msg) > at + 1 else {})
