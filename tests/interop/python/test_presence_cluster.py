"""About 1,000 sessions over three gateway nodes, on Redis and on RabbitMQ: 699
AutobahnPython sessions and 300 clients of Telegraphy's own JS client
(js/src/telegraphy.js, `client.presence(topic)`), all present on one topic,
and an AutobahnPython admin session per node.

Every node answers the same figures within the documented staleness:
wamp.session.count, wamp.subscription.count_subscribers of the topic, and
telegraphy.presence.get; the JS clients' own presence views agree. Then
wamp.session.kill from node C closes a session on node A, and node B is
SIGKILLed: its sessions leave every remaining node's answers within the
bound, and the testament one of them left is published once."""

import asyncio
import json
import time
from pathlib import Path

import pytest

from helpers import close_sessions, connect
from test_meta_cluster import GONE_WITHIN, meta_config, until
from test_rpc_cluster import two_nodes

CLIENTS_JS = Path(__file__).resolve().parents[1] / "js" / "lib" / "telegraphy-clients.mjs"
TOPIC = "com.interop.presence.page"
PY_PER_NODE = 233  # + one admin per node
JS_PER_NODE = 100
# An answer about another node is one delta (100 ms) plus the bus behind;
# the rest is slack for 1,000 sessions starting on a 2-core machine.
AGREE_WITHIN = 15.0


def presence_config(bus: str, name: str) -> str:
    config = meta_config(bus, name)
    config = config.replace('call = ["*", "wamp.session.*"]', 'call = ["*", "wamp.session.*", "wamp.subscription.*", "telegraphy.presence.*"]', 1)
    config = config.replace('subscribe = ["*",', 'subscribe = ["*", "telegraphy.presence.*",', 1)
    assert "telegraphy.presence.*" in config and "wamp.subscription.*" in config, config
    return config


@pytest.fixture(params=["redis", "amqp"])
def nodes(request):
    yield from two_nodes(request.param, presence_config, count=3)


class JsClients:
    """COUNT Telegraphy JS clients on one node, in a node process."""

    async def start(self, gateway, count):
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(CLIENTS_JS), gateway.ws_url, str(count), TOPIC,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        first = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 60))
        assert first.get("ready"), first
        self.sessions = set(first["sessions"])
        return self

    async def state(self):
        self.proc.stdin.write(b"state\n")
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))

    async def stop(self):
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def answers(admin):
    """(sessions in the realm, subscribers of TOPIC, presence sessions, presence count) as one node answers."""
    count = await admin.call("wamp.session.count")
    sub = await admin.call("wamp.subscription.lookup", TOPIC)
    subscribers = await admin.call("wamp.subscription.count_subscribers", sub) if sub else 0
    present = await admin.call("telegraphy.presence.get", TOPIC)
    return count, subscribers, present["sessions"], present["count"]


async def test_a_thousand_sessions_over_three_nodes(nodes):
    a, b, c = nodes
    sessions, js = [], []
    try:
        admins = [await connect(gw, "json") for gw in nodes]
        sessions += admins
        started = time.monotonic()
        per_node = {}
        for gw, ser in zip(nodes, ["json", "msgpack", "json"]):
            mine = []
            for batch in range(0, PY_PER_NODE, 50):
                mine += await asyncio.gather(*(connect(gw, ser) for _ in range(min(50, PY_PER_NODE - batch))))
            await asyncio.gather(*(s.subscribe(lambda *a, **k: None, TOPIC) for s in mine))
            per_node[gw] = mine
            sessions += mine
        for gw in nodes:
            js.append(await JsClients().start(gw, JS_PER_NODE))
        present = 3 * (PY_PER_NODE + JS_PER_NODE)
        assert present == 999, present  # 3 × (233 + 100)
        everyone = len(admins) + present
        opened = time.monotonic() - started
        print(f"{everyone} sessions opened in {opened:.1f} s")

        # Every node answers the same figures for the whole cluster.
        want = (everyone, present, present, present)

        async def agree():
            got = [await answers(admin) for admin in admins]
            return all(g == want for g in got) and got

        got = await until("every node counts every session, subscriber and presence", agree, within=AGREE_WITHIN)
        print(f"every node agrees: {got[0]}")
        for clients in js:
            await until("the JS clients' presence views count everyone",
                        lambda: _js_counts(clients, present), within=AGREE_WITHIN)

        # kill from node C closes a session on node A.
        victim = per_node[a][0]
        victim_id = victim._session_id
        await admins[2].call("wamp.session.kill", victim_id, reason="com.example.kicked")
        closed = await asyncio.wait_for(victim.left, 5)
        assert closed.reason == "com.example.kicked", closed
        present -= 1
        everyone -= 1

        # A session on node B leaves a testament; node B dies.
        testaments = []
        await admins[0].subscribe(lambda *args, **kwargs: testaments.append(args), "com.interop.presence.gone")
        await per_node[b][0].call("wamp.session.add_testament", "com.interop.presence.gone", ["b0"], {})
        await asyncio.sleep(0.3)
        lost = PY_PER_NODE + JS_PER_NODE
        killed_at = time.monotonic()
        b.proc.kill()
        b.proc.wait()
        want = (everyone - lost - 1, present - lost, present - lost, present - lost)

        async def b_gone():
            got = [await answers(admin) for admin in (admins[0], admins[2])]
            return all(g == want for g in got) and got

        await until("node B's sessions leave the answers of nodes A and C", b_gone, within=GONE_WITHIN)
        took = time.monotonic() - killed_at
        print(f"node B SIGKILLed: its {lost + 1} sessions left every answer in {took:.2f} s")
        await until("node B's session's testament", lambda: asyncio.sleep(0, testaments))
        await asyncio.sleep(1.5)
        assert testaments == [("b0",)], f"published once: {testaments}"
    finally:
        for clients in js:
            await clients.stop()
        await close_sessions([s for s in sessions if s.is_attached()])


async def _js_counts(clients, present):
    state = await clients.state()
    return state["sessions"] == present and state["count"] == present
