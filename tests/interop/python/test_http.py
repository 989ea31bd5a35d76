"""HTTP publish (POST /publish, via urllib) interop: events reach AutobahnPython
subscribers on both serializers with the returned publication id, and
options.exclude filters receivers (ordered check: the filtered POST is answered
before the marker POST is sent)."""

import pytest

from helpers import http_publish, listen


async def post(gateway, payload):
    status, body = await http_publish(gateway, payload)
    assert status == 200, (payload, status, body)
    assert isinstance(body.get("id"), int) and body["id"] > 0, body
    return body["id"]


@pytest.mark.parametrize("ser", ["json", "msgpack"])
async def test_http_publish_reaches_subscriber(gateway, connect, ser):
    sub = await connect(ser)
    topic = f"com.interop.py.http.{ser}"
    _, inbox = await listen(sub, topic)
    args, kwargs = [1, "two", {"three": [3]}], {"who": "http", "ok": True, "ratio": 0.25}
    pub_id = await post(gateway, {"topic": topic, "args": args, "kwargs": kwargs})
    ev = await inbox.next()
    assert (ev.args, ev.kwargs) == (args, kwargs)
    assert ev.details.publication == pub_id


async def test_http_publish_exclude(gateway, connect):
    a, b = await connect("json"), await connect("msgpack")
    topic = "com.interop.py.http.exclude"
    _, ina = await listen(a, topic)
    _, inb = await listen(b, topic)
    await post(gateway, {"topic": topic, "args": ["excluded"], "options": {"exclude": [a.welcome.session]}})
    await post(gateway, {"topic": topic, "args": ["marker"]})
    assert (await inb.next()).args == ["excluded"]
    assert (await ina.next()).args == ["marker"], "HTTP event with options.exclude was delivered"
