"""AutobahnPython (asyncio), unmodified, against event retention and event
history: PUBLISH retain / SUBSCRIBE get_retained (Event.Details.retained), and
the meta procedure wamp.subscription.get_events with limit, reverse and
after_publication, for the json and msgpack serializers. WELCOME announces
both features."""

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions, SubscribeOptions

from helpers import Gateway, Inbox, close_sessions, listen, publish_acked

SERS = ["json", "msgpack"]

CONFIG = """
[auth]
allow_anonymous = true

[roles.anonymous]
subscribe = ["*"]
publish = ["*"]
call = ["*"]
publish_options = true

[history]
topics = ["com.interop.history.*"]
size = 100
"""


@pytest.fixture(scope="module")
def gateway():
    """This module's gateway (it overrides conftest's; conftest's `connect` uses it)."""
    gw = Gateway(config=CONFIG)
    yield gw
    gw.stop()


@pytest.mark.parametrize("ser", SERS)
async def test_welcome_announces_retention_and_history(connect, ser):
    s = await connect(ser)
    broker = s._router_roles["broker"]  # the roles AutobahnPython parsed from WELCOME
    assert broker.event_retention is True and broker.event_history is True


@pytest.mark.parametrize("ser", SERS)
async def test_get_retained_delivers_the_retained_event_at_once(connect, ser):
    topic = f"com.interop.retained.{ser}"
    pub = await connect(ser)
    await publish_acked(pub, topic, "old", options={"retain": True})
    kept = await publish_acked(pub, topic, "current", options={"retain": True})
    await publish_acked(pub, topic, "not retained")
    late = await connect(ser)
    inbox = Inbox()

    def on_event(*args, details=None, **kwargs):
        inbox.queue.put_nowait((list(args), details))

    await late.subscribe(on_event, topic, options=SubscribeOptions(get_retained=True, details=True))
    args, details = await inbox.next()
    assert args == ["current"]
    assert details.retained is True
    assert details.publication == kept
    # A subscriber that does not ask gets nothing until the next event.
    plain = await connect(ser)
    _, plain_inbox = await listen(plain, topic)
    await publish_acked(pub, topic, "live")
    assert (await plain_inbox.next()).args == ["live"]


@pytest.mark.parametrize("ser", SERS)
async def test_get_events_returns_what_was_published_in_the_spec_shape(connect, ser):
    topic = f"com.interop.history.{ser}"
    pub = await connect(ser)
    reader = await connect(ser)
    sub, inbox = await listen(reader, topic)
    ids = [await publish_acked(pub, topic, n, kind="step") for n in range(1, 6)]
    for n in range(1, 6):
        assert (await inbox.next()).args == [n]

    events = await reader.call("wamp.subscription.get_events", sub.id)
    assert [e["args"] for e in events] == [[n] for n in range(1, 6)]
    first = events[0]
    assert set(first) == {"timestamp", "subscription", "publication", "details", "args", "kwargs"}
    assert first["subscription"] == sub.id and first["publication"] == ids[0]
    assert first["kwargs"] == {"kind": "step"} and first["timestamp"].endswith("Z")

    # Crossbar.io's positional limit: the newest events.
    newest = await reader.call("wamp.subscription.get_events", sub.id, 2)
    assert [e["args"] for e in newest] == [[4], [5]]
    # after_publication pages forward; reverse walks back.
    after = await reader.call("wamp.subscription.get_events", sub.id, after_publication=ids[2])
    assert [e["publication"] for e in after] == ids[3:]
    back = await reader.call("wamp.subscription.get_events", sub.id, limit=2, reverse=True)
    assert [e["args"] for e in back] == [[5], [4]]


@pytest.mark.parametrize("ser", SERS)
async def test_a_session_that_comes_back_reads_what_it_missed(connect, ser):
    """The recovery an AutobahnPython application does by hand: remember the
    last publication, subscribe again (the subscription id is the same), ask
    for the events after it."""
    topic = f"com.interop.history.back.{ser}"
    pub = await connect(ser)
    first = await connect(ser)
    sub, inbox = await listen(first, topic)
    await publish_acked(pub, topic, 1)
    last_seen = (await inbox.next()).details.publication
    await close_sessions([first])
    for n in (2, 3):
        await publish_acked(pub, topic, n)
    again = await connect(ser)
    sub2, live = await listen(again, topic)
    assert sub2.id == sub.id
    missed = await again.call("wamp.subscription.get_events", sub2.id, after_publication=last_seen)
    assert [e["args"] for e in missed] == [[2], [3]]
    await publish_acked(pub, topic, 4)
    assert (await live.next()).args == [4]


@pytest.mark.parametrize("ser", SERS)
async def test_get_events_refusals_are_wamp_errors(connect, ser):
    s = await connect(ser)
    sub, _ = await listen(s, f"com.interop.history.refusals.{ser}")
    with pytest.raises(ApplicationError) as e:
        await s.call("wamp.subscription.get_events", sub.id, limit=10_000_000)
    assert e.value.error == "wamp.error.invalid_argument"
    with pytest.raises(ApplicationError) as e:
        await s.call("wamp.subscription.get_events", 12345)
    assert e.value.error == "wamp.error.no_such_subscription"
    with pytest.raises(ApplicationError) as e:
        await s.call("com.example.add", 1, 2)
    assert e.value.error == "wamp.error.no_such_procedure"
