"""The session meta API and testaments with AutobahnPython across two gateway nodes, on
Redis and on RabbitMQ: wamp.session.count / list / get answered for the whole
cluster from either node, wamp.session.on_join / on_leave received on node A
for sessions on node B, wamp.session.kill from node A closing a session on
node B (the client sees the GOODBYE reason), and node B SIGKILLed with three
sessions: they leave every answer within the bound, their on_leave events
are published once each, and the testament one of them left is published once
(by node A). A role without a pattern naming wamp.session.* is
refused."""

import asyncio
import time

import pytest
from autobahn.wamp.exception import ApplicationError

from helpers import Gateway, close_sessions, connect
from test_rpc_cluster import cluster_config, two_nodes

# Sessions of a SIGKILLed node leave the answers when its silence expires
# (3 s) at the next check (1 s); the rest is slack for a loaded machine.
GONE_WITHIN = 8.0


def meta_config(bus: str, name: str) -> str:
    config = cluster_config(bus, name)
    config = config.replace('call = ["*"]', 'call = ["*", "wamp.session.*"]', 1)
    config = config.replace('subscribe = ["*"]', 'subscribe = ["*", "wamp.session.on_join", "wamp.session.on_leave"]', 1)
    assert "wamp.session.*" in config and "wamp.session.on_join" in config, config
    return config


@pytest.fixture(params=["redis", "amqp"])
def nodes(request):
    yield from two_nodes(request.param, meta_config)


async def until(what, check, within=5.0):
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.05)


async def test_session_meta_api_across_nodes(nodes):
    a, b = nodes
    sessions = []
    try:
        admin = await connect(a, "json")
        admin_b = await connect(b, "msgpack")
        sessions += [admin, admin_b]
        joins, leaves = [], []
        await admin.subscribe(lambda details: joins.append(details), "wamp.session.on_join")
        await admin.subscribe(lambda session, authid, authrole: leaves.append(session), "wamp.session.on_leave")

        # Node B hears of the listener (announced at once), then its joins reach A.
        async def a_join_on_b_is_seen():
            probe = await connect(b, "json")
            sessions.append(probe)
            await asyncio.sleep(0.3)
            return any(d["session"] == probe._session_id for d in joins)

        await until("a join on node B reaches node A", a_join_on_b_is_seen)
        others = [await connect(b, "json") for _ in range(3)]
        sessions += others
        ids = {s._session_id for s in others}
        await until("on_join for the three sessions on node B", lambda: asyncio.sleep(0, ids <= {d["session"] for d in joins}))
        details = next(d for d in joins if d["session"] == others[0]._session_id)
        assert details["authrole"] == "anonymous" and details["authmethod"] == "anonymous", details

        everyone = {s._session_id for s in sessions if s.is_attached()}

        async def lists_agree():
            on_a = set(await admin.call("wamp.session.list"))
            on_b = set(await admin_b.call("wamp.session.list"))
            return on_a == on_b == everyone

        await until("wamp.session.list agrees on both nodes", lists_agree)
        assert await admin.call("wamp.session.count") == len(everyone)
        assert await admin.call("wamp.session.count", ["nobody"]) == 0
        got = await admin.call("wamp.session.get", others[0]._session_id)
        assert got["session"] == others[0]._session_id and got["authrole"] == "anonymous", got
        with pytest.raises(ApplicationError) as info:
            await admin.call("wamp.session.get", 12345)
        assert info.value.error == "wamp.error.no_such_session"

        # kill from node A closes a session on node B, with the reason given.
        victim = others[0]
        victim_id = victim._session_id  # AutobahnPython forgets it on leave
        await admin.call("wamp.session.kill", victim_id, reason="com.example.kicked", message="bye")
        closed = await asyncio.wait_for(victim.left, 5)
        assert (closed.reason, closed.message) == ("com.example.kicked", "bye"), closed
        await until("on_leave of the killed session", lambda: asyncio.sleep(0, victim_id in leaves))

        # A session on node B leaves a testament; node A publishes it once node B is dead.
        testaments = []
        await admin.subscribe(lambda *args, **kwargs: testaments.append((args, kwargs)), "com.interop.meta.gone")
        await others[1].call("wamp.session.add_testament", "com.interop.meta.gone", ["seeya"], {"who": "others[1]"})
        # Node B sends it to the others at once; give the bus a moment to carry it.
        await asyncio.sleep(0.3)

        # Node B dies with its sessions: they leave every answer, once each.
        # Every session but the admin's is on node B.
        doomed = {s._session_id for s in sessions if s is not admin and s.is_attached()}
        leaves.clear()
        killed_at = time.monotonic()
        b.proc.kill()
        b.proc.wait()

        async def gone():
            return not (set(await admin.call("wamp.session.list")) & doomed)

        await until("node B's sessions leave node A's answers", gone, within=GONE_WITHIN)
        took = time.monotonic() - killed_at
        await until("on_leave for each of node B's sessions", lambda: asyncio.sleep(0, doomed <= set(leaves)))
        await until("the testament of node B's session", lambda: asyncio.sleep(0, testaments))
        await asyncio.sleep(1.5)
        assert sorted(leaves) == sorted(set(leaves)), f"on_leave published more than once: {leaves}"
        assert testaments == [(("seeya",), {"who": "others[1]"})], f"the testament, once: {testaments}"
        assert await admin.call("wamp.session.count") == 1
        print(f"a SIGKILLed node's sessions left the answers after {took:.1f} s")
    finally:
        await close_sessions([s for s in sessions if s.is_attached()])


async def test_a_role_that_does_not_name_the_meta_api_is_refused():
    gw = Gateway()  # the interop config: call = ["*"], subscribe = ["*"]
    try:
        s = await connect(gw, "json")
        try:
            with pytest.raises(ApplicationError) as info:
                await s.call("wamp.session.count")
            assert info.value.error == "wamp.error.not_authorized"
            with pytest.raises(ApplicationError) as info:
                await s.subscribe(lambda *a: None, "wamp.session.on_join")
            assert info.value.error == "wamp.error.not_authorized"
        finally:
            await close_sessions([s])
    finally:
        gw.stop()
