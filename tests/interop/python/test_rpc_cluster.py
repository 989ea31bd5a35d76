"""Calls across gateway nodes with third-party clients, on Redis and on
RabbitMQ: an AutobahnPython callee on node A, an AutobahnJS caller on node B
(driven through tests/interop/js/lib/caller.js). Results with args and kwargs,
the callee's ApplicationError, progressive results, pattern-based and shared
registrations (roundrobin over callees on both nodes), a call timeout, a
cancel; then node A is SIGKILLed with a call in flight: the call fails within
the documented bound (3 s of silence + 1 s heartbeat) and the procedure is
gone from node B."""

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallResult, RegisterOptions

from helpers import INTEROP_CONFIG, Gateway, close_sessions, connect

CALLER_JS = Path(__file__).resolve().parents[1] / "js" / "lib" / "caller.js"
REDIS_URL = os.environ.get("TELEGRAPHY_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TELEGRAPHY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f")
P = "com.interop.cluster."
# Calls to a killed node fail after its silence expires (3 s) and the next
# heartbeat check (1 s); the rest is slack for a loaded machine.
KILL_BOUND_MS = 6000


def cluster_config(bus: str, name: str) -> str:
    base = INTEROP_CONFIG.read_text()
    if bus == "redis":
        return f'bus = "{REDIS_URL}"\n[redis]\nkey_prefix = "{name}:"\n' + base
    return f'bus = "{AMQP_URL}"\n[amqp]\nexchange = "{name}"\n' + base


def delete_exchanges(name: str):
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    for exchange in (name, f"{name}.control"):
        connection.channel().exchange_delete(exchange)
    connection.close()


def two_nodes(bus: str, config_for=None, count: int = 2):
    """`count` (two) gateway nodes on `bus` (their own key prefix / exchange),
    stopped and cleaned up afterwards; `config_for(bus, name)` gives their config."""
    name = f"telegraphy-interop-{uuid.uuid4().hex[:8]}"
    config = (config_for or cluster_config)(bus, name)
    started = []
    try:
        for _ in range(count):
            started.append(Gateway(config=config))
        yield started
    finally:
        for gw in started:
            if gw.proc.poll() is None:
                gw.stop()
        if bus == "amqp":
            delete_exchanges(name)


@pytest.fixture(params=["redis", "amqp"])
def nodes(request):
    yield from two_nodes(request.param)


class JsCaller:
    """AutobahnJS in a node process, calling through one gateway node."""

    async def start(self, gateway, serializer):
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(CALLER_JS), gateway.ws_url, serializer,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        self.answers, self.next_id = {}, 0
        first = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))
        assert first.get("ready"), first
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        while line := await self.proc.stdout.readline():
            answer = json.loads(line)
            assert "fatal" not in answer, answer["fatal"]
            self.answers.setdefault(answer["id"], asyncio.get_running_loop().create_future()).set_result(answer)

    def send(self, procedure, *args, kwargs=None, options=None, **extra) -> int:
        self.next_id += 1
        request = {"id": self.next_id, "procedure": procedure, "args": list(args), "kwargs": kwargs or {}, "options": options or {}, **extra}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.answers.setdefault(self.next_id, asyncio.get_running_loop().create_future())
        return self.next_id

    async def answer(self, call_id, within=5.0):
        return await asyncio.wait_for(self.answers[call_id], within)

    async def call(self, procedure, *args, **kw):
        return await self.answer(self.send(procedure, *args, **kw))

    async def call_known(self, procedure, *args, **kw):
        """Calls once node B knows the registration (announcements travel
        over the bus): no_such_procedure is retried for a few seconds."""
        for _ in range(100):
            answer = await self.call(procedure, *args, **kw)
            if answer.get("error") != "wamp.error.no_such_procedure":
                return answer
            await asyncio.sleep(0.05)
        raise AssertionError(f"{procedure} never became callable from the caller's node")

    async def stop(self):
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()


@pytest.fixture
async def js_caller():
    callers = []

    async def start(gateway, serializer):
        caller = await JsCaller().start(gateway, serializer)
        callers.append(caller)
        return caller

    yield start
    for c in callers:
        await c.stop()


@pytest.mark.parametrize("sers", [("msgpack", "json"), ("json", "msgpack")], ids=["py-msgpack-js-json", "py-json-js-msgpack"])
async def test_autobahn_python_callee_and_autobahn_js_caller_on_two_nodes(nodes, js_caller, sers):
    a, b = nodes
    callee_ser, caller_ser = sers
    sessions = []
    try:
        callee = await connect(a, callee_ser)
        second = await connect(b, callee_ser)
        sessions += [callee, second]
        interrupted = asyncio.get_running_loop().create_future()

        def fail():
            raise ApplicationError("com.interop.error.out_of_stock", "no more apples", sku="apple")

        async def work(details=None):
            for pct in (25, 50, 75):
                details.progress(pct)
            return "done"

        def which(details=None):
            return details.procedure

        async def slow():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if not interrupted.done():
                    interrupted.set_result(True)
                raise

        await callee.register(lambda *a, **kw: CallResult(*a, **kw), P + "echo")
        await callee.register(fail, P + "fail")
        await callee.register(work, P + "progress", options=RegisterOptions(details_arg="details"))
        await callee.register(which, P + "pattern.", options=RegisterOptions(match="prefix", details_arg="details"))
        await callee.register(slow, P + "slow")
        await callee.register(lambda: "a", P + "shared", options=RegisterOptions(invoke="roundrobin"))
        await second.register(lambda: "b", P + "shared", options=RegisterOptions(invoke="roundrobin"))

        caller = await js_caller(b, caller_ser)
        args, kwargs = [1, "two", {"three": 3.5}, [True, False, None]], {"text": "grüße ✓", "n": -42}
        answer = await caller.call_known(P + "echo", *args, kwargs=kwargs)
        assert answer["ok"] and answer["args"] == args and answer["kwargs"] == kwargs, answer

        answer = await caller.call(P + "fail")
        assert not answer["ok"] and answer["error"] == "com.interop.error.out_of_stock", answer
        assert answer["args"] == ["no more apples"] and answer["kwargs"] == {"sku": "apple"}, answer

        answer = await caller.call(P + "progress", options={"receive_progress": True})
        assert answer["ok"] and answer["args"] == ["done"], answer
        assert [p[0] for p in answer["progress"]] == [[25], [50], [75]], answer

        answer = await caller.call_known(P + "pattern.cart.add")
        assert answer["args"] == [P + "pattern.cart.add"], answer

        served = [(await caller.call(P + "shared"))["args"][0] for _ in range(6)]
        assert sorted(served) == ["a"] * 3 + ["b"] * 3, f"roundrobin over the callees of both nodes: {served}"

        answer = await caller.call(P + "slow", options={"timeout": 300})
        assert answer["error"] == "wamp.error.timeout" and answer["ms"] >= 290, answer
        await asyncio.wait_for(interrupted, 3)

        interrupted = asyncio.get_running_loop().create_future()
        answer = await caller.call(P + "slow", cancel_after_ms=200, cancel_mode="kill")
        assert answer["error"] == "wamp.error.canceled", answer
        await asyncio.wait_for(interrupted, 3)
    finally:
        await close_sessions(sessions)


async def test_a_killed_callee_node_fails_its_calls_within_the_bound(nodes, js_caller):
    a, b = nodes
    callee = await connect(a, "json")
    invoked = asyncio.get_running_loop().create_future()

    async def hang():
        invoked.set_result(True)
        await asyncio.sleep(60)

    await callee.register(hang, P + "hang")
    caller = await js_caller(b, "msgpack")
    known = await caller.call_known(P + "hang", options={"timeout": 100})
    assert known["error"] == "wamp.error.timeout", known
    invoked = asyncio.get_running_loop().create_future()
    call_id = caller.send(P + "hang")
    await asyncio.wait_for(invoked, 3)
    a.proc.kill()  # SIGKILL: no drain, no goodbye
    a.proc.wait()
    answer = await caller.answer(call_id, within=KILL_BOUND_MS / 1000 + 2)
    assert not answer["ok"] and answer["error"] in ("wamp.error.canceled", "telegraphy.error.callee_unavailable"), answer
    assert answer["ms"] < KILL_BOUND_MS, f"the call failed only after {answer['ms']:.0f} ms"
    assert "node" in str(answer["args"]), answer
    print(f"call to a SIGKILLed node failed after {answer['ms']:.0f} ms: {answer['error']}")
    answer = await caller.call(P + "hang")
    assert answer["error"] == "wamp.error.no_such_procedure", answer
