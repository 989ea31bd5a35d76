"""AutobahnPython (asyncio) as caller and callee (RPC) against the Telegraphy
gateway, for the json and msgpack serializers: results with args and kwargs
(CallResult), the callee's ApplicationError (URI, args, kwargs), progressive
results, pattern-based and shared registrations, call
timeouts, cancel (AutobahnPython announces call_canceling as a callee, so its
running invocation is interrupted), no_such_procedure and unregister."""

import asyncio

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions, CallResult, RegisterOptions

from helpers import WAIT

SERS = ["json", "msgpack"]
ARGS = [1, "two", {"three": 3.5}, [True, False, None]]
KWARGS = {"text": "grüße ✓", "n": -42, "nested": {"list": [1, 2, 3]}}


def P(ser, name):
    return f"com.interop.py.rpc.{ser}.{name}"


async def sessions(connect, ser, n):
    return [await connect(ser) for _ in range(n)]


async def call(session, procedure, *args, options=None, **kwargs):
    return await asyncio.wait_for(session.call(procedure, *args, options=options, **kwargs), WAIT)


async def call_error(session, procedure, *args, options=None) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        await call(session, procedure, *args, options=options)
    return info.value


@pytest.mark.parametrize("ser", SERS)
async def test_result_with_args_and_kwargs(connect, ser):
    callee, caller = await sessions(connect, ser, 2)
    await callee.register(lambda *a, **kw: CallResult(*a, **kw), P(ser, "echo"))
    res = await call(caller, P(ser, "echo"), *ARGS, **KWARGS)
    assert list(res.results) == ARGS and res.kwresults == KWARGS
    await callee.register(lambda a, b: a + b, P(ser, "add"))
    assert await call(caller, P(ser, "add"), 2, 3) == 5


@pytest.mark.parametrize("ser", SERS)
async def test_callee_error(connect, ser):
    callee, caller = await sessions(connect, ser, 2)

    def fail():
        raise ApplicationError("com.interop.error.out_of_stock", "no more apples", sku="apple")

    await callee.register(fail, P(ser, "fail"))
    e = await call_error(caller, P(ser, "fail"))
    assert e.error == "com.interop.error.out_of_stock"
    assert list(e.args) == ["no more apples"] and e.kwargs == {"sku": "apple"}


@pytest.mark.parametrize("ser", SERS)
async def test_progressive_results(connect, ser):
    callee, caller = await sessions(connect, ser, 2)

    async def work(details=None):
        assert details.progress is not None, "the caller asked for progress"
        for pct in (25, 50, 75):
            details.progress(pct)
        return "done"

    await callee.register(work, P(ser, "progress"), options=RegisterOptions(details_arg="details"))
    seen = []
    final = await call(caller, P(ser, "progress"), options=CallOptions(on_progress=seen.append))
    assert final == "done" and seen == [25, 50, 75]


@pytest.mark.parametrize("ser", SERS)
async def test_caller_not_disclosed_unless_asked(connect, ser):
    # This AutobahnPython has neither CallOptions(disclose_me) nor
    # RegisterOptions(disclose_caller); the AutobahnJS suite asks for
    # disclosure, and test_a_role_discloses_its_callers below has the role
    # do it. Here: nothing leaks when nobody asks.
    callee, caller = await sessions(connect, ser, 2)

    def whoami(details=None):
        return [details.caller, details.caller_authid, details.caller_authrole, details.procedure]

    await callee.register(whoami, P(ser, "whoami"), options=RegisterOptions(details_arg="details"))
    assert await call(caller, P(ser, "whoami")) == [None, None, None, P(ser, "whoami")]


@pytest.mark.parametrize("ser", SERS)
async def test_pattern_and_shared_registrations(connect, ser):
    a, b, caller = await sessions(connect, ser, 3)

    def which(details=None):
        return details.procedure

    await a.register(which, P(ser, "shop"), options=RegisterOptions(match="prefix", details_arg="details"))
    assert await call(caller, P(ser, "shop.cart.remove")) == P(ser, "shop.cart.remove")
    await a.register(which, f"com.interop.py.rpc.{ser}..add", options=RegisterOptions(match="wildcard", details_arg="details"))
    assert await call(caller, f"com.interop.py.rpc.{ser}.garden.add") == f"com.interop.py.rpc.{ser}.garden.add"

    ra = await a.register(lambda: "a", P(ser, "pool"), options=RegisterOptions(invoke="roundrobin"))
    rb = await b.register(lambda: "b", P(ser, "pool"), options=RegisterOptions(invoke="roundrobin"))
    assert ra.id == rb.id, "one shared registration"
    assert [await call(caller, P(ser, "pool")) for _ in range(4)] == ["a", "b", "a", "b"]
    with pytest.raises(ApplicationError) as info:
        await asyncio.wait_for(caller.register(lambda: "x", P(ser, "pool"), options=RegisterOptions(invoke="first")), WAIT)
    assert info.value.error == "wamp.error.procedure_exists_with_different_invocation_policy"


@pytest.mark.parametrize("ser", SERS)
async def test_timeout_interrupts_the_callee(connect, ser):
    callee, caller = await sessions(connect, ser, 2)
    interrupted = asyncio.get_running_loop().create_future()

    async def never():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set_result(True)
            raise

    await callee.register(never, P(ser, "never"))
    # The spec's timeout is in milliseconds; AutobahnPython sends the number as given (an int).
    e = await call_error(caller, P(ser, "never"), options=CallOptions(timeout=300))
    assert e.error == "wamp.error.timeout"
    assert await asyncio.wait_for(interrupted, WAIT), "the callee's invocation was interrupted"


@pytest.mark.parametrize("ser", SERS)
async def test_cancel_interrupts_the_callee(connect, ser):
    callee, caller = await sessions(connect, ser, 2)
    loop = asyncio.get_running_loop()
    started, interrupted = loop.create_future(), loop.create_future()

    async def slow():
        started.set_result(True)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set_result(True)
            raise

    await callee.register(slow, P(ser, "slow"))
    pending = caller.call(P(ser, "slow"))
    await asyncio.wait_for(started, WAIT)
    pending.cancel()  # AutobahnPython sends CANCEL (no mode: killnowait)
    assert await asyncio.wait_for(interrupted, WAIT), "INTERRUPT reached the callee"
    # Both sessions go on working.
    await callee.register(lambda: "ok", P(ser, "after"))
    assert await call(caller, P(ser, "after")) == "ok"


@pytest.mark.parametrize("ser", SERS)
async def test_no_such_procedure_and_unregister(connect, ser):
    callee, caller = await sessions(connect, ser, 2)
    assert (await call_error(caller, P(ser, "nobody"))).error == "wamp.error.no_such_procedure"
    reg = await callee.register(lambda: 1, P(ser, "temp"))
    assert await call(caller, P(ser, "temp")) == 1
    await asyncio.wait_for(reg.unregister(), WAIT)
    assert (await call_error(caller, P(ser, "temp"))).error == "wamp.error.no_such_procedure"


async def test_msgpack_callee_json_caller(connect):
    callee = await connect("msgpack")
    caller = await connect("json")
    await callee.register(lambda *a, **kw: CallResult(*a, **kw), "com.interop.py.rpc.cross")
    res = await call(caller, "com.interop.py.rpc.cross", *ARGS, **KWARGS)
    assert list(res.results) == ARGS and res.kwresults == KWARGS


async def test_a_role_discloses_its_callers():
    """roles.NAME.disclose_caller: the callee learns who calls, for callers
    that cannot ask (AutobahnPython has no disclose_me)."""
    from helpers import Gateway, close_sessions, connect

    gw = Gateway(config='[auth]\nallow_anonymous = true\n[roles.anonymous]\ncall = ["*"]\nregister = ["*"]\ndisclose_caller = true\n')
    sessions = []
    try:
        callee, caller = [await connect(gw, "json") for _ in range(2)]
        sessions += [callee, caller]

        def whoami(details=None):
            return [details.caller, details.caller_authid, details.caller_authrole]

        await callee.register(whoami, "com.interop.py.rpc.disclosed", options=RegisterOptions(details_arg="details"))
        got = await call(caller, "com.interop.py.rpc.disclosed")
        assert got == [caller.welcome.session, caller.welcome.authid, "anonymous"]
    finally:
        await close_sessions(sessions)
        gw.stop()
