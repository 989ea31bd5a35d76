"""Procedures of the test app (autodiscovered by the Django app)."""

from telegraphy.django import RpcError, procedure


@procedure("tests.rpc.add")
def add(call, a, b=0):
    return a + b


@procedure("tests.rpc.whoami")
def whoami(call):
    user = call.user
    return {
        "username": user.get_username() if user.is_authenticated else None,
        "authid": call.caller.authid,
        "authrole": call.caller.authrole,
        "session": call.caller.session,
        "procedure": call.procedure,
    }


@procedure("tests.rpc.fail")
def fail(call):
    raise RpcError("tests.error.nope", "not today", why="because")


@procedure("tests.rpc.crash")
def crash(call):
    raise ValueError("a bug")


@procedure("tests.rpc.count")
def count(call, n):
    for i in range(1, n + 1):
        yield i
    return "done"
