"""The Publisher and Django on a Redis Cluster (redis+cluster://) and through
Redis Sentinel (redis+sentinel://): a private 3-primary cluster with a replica
each, and a primary with a replica and three Sentinels, started here on free
ports by the fault suite's harness (tests/chaos/brokers.py, which stops them
by PID), with a real gateway on each."""

import pathlib
import shutil
import sys
import tempfile

import pytest

from telegraphy import Publisher
from telegraphy.errors import InvalidInput, NoSubscriber, Unauthorized
from telegraphy.tokens import mint
from telegraphy.transports import split_hosts
from tests.support.gateway import SECRET, Gateway
from tests.test_django_buses import roundtrip, settings_for

CHAOS = pathlib.Path(__file__).resolve().parents[2] / "tests" / "chaos"
sys.path.insert(0, str(CHAOS))
from brokers import RedisCluster, RedisSentinels  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)
PREFIX = "pycluster:"


def token() -> str:
    return mint("carol", subscribe=["tests.*"], secret=SECRET)


@pytest.fixture(scope="module")
def workdir():
    d = pathlib.Path(tempfile.mkdtemp(prefix="telegraphy-rcluster-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(workdir):
    c = RedisCluster(workdir, primaries=3, replicas=0)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def sentinels(workdir):
    s = RedisSentinels(workdir, count=1)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def sentinels_with_password(workdir):
    """The primary, its replica and the Sentinel all require a password,
    as the common Helm charts set them up."""
    s = RedisSentinels(workdir, name="guarded", count=1, password="s3cret-pw")
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def cluster_gateway(cluster):
    gw = Gateway(f'[redis]\nkey_prefix = "{PREFIX}"\n[history]\ntopics = ["tests.kept.*"]\n',
                 env={"TELEGRAPHY_BUS": cluster.url()})
    yield gw
    gw.stop()


def test_urls_are_checked():
    assert split_hosts("redis+cluster://u:p@h1:7000,h2:7001/") == ("redis+cluster", "u:p@", ["h1:7000", "h2:7001"], "/")
    with pytest.raises(InvalidInput, match="empty host"):
        Publisher(bus="redis+cluster://h1:7000,,h2:7000").publish("tests.x")
    with pytest.raises(InvalidInput, match="only database 0"):
        Publisher(bus="redis+cluster://127.0.0.1:7000/3").publish("tests.x")
    with pytest.raises(InvalidInput, match="name the primary"):
        Publisher(bus="redis+sentinel://127.0.0.1:26379").publish("tests.x")
    with pytest.raises(InvalidInput, match="brace"):
        Publisher(bus="redis+cluster://127.0.0.1:7000", redis_key_prefix="{x}:")


def test_publisher_reaches_exact_and_pattern_subscribers_on_every_shard(wamp, cluster, cluster_gateway):
    # Topics until every shard holds one.
    topics, shards = [], set()
    i = 0
    while len(shards) < 3:
        t = f"tests.shard.t{i}"
        shards.add(cluster.primary_for(f"{PREFIX}{{realm1:{t}}}").port)
        topics.append(t)
        i += 1
    exact = wamp(cluster_gateway, token=token())
    for t in topics:
        exact.subscribe(t)
    by_prefix = wamp(cluster_gateway, token=token())
    by_prefix.subscribe("tests.shard.", match="prefix")
    publisher = Publisher(bus=cluster.url(), redis_key_prefix=PREFIX)
    for t in topics:
        publisher.publish(t, args=[t], require_subscriber=True)
    for client in (exact, by_prefix):
        got = sorted(client.next_event().args[0] for _ in topics)
        assert got == sorted(topics)
    with pytest.raises(NoSubscriber):
        publisher.publish("tests.nobody.listens", require_subscriber=True)


def test_history_topics_keep_their_order_on_the_cluster(wamp, cluster, cluster_gateway):
    sub = wamp(cluster_gateway, token=token())
    sub.subscribe("tests.kept.a")
    publisher = Publisher(bus=cluster.url(), redis_key_prefix=PREFIX)
    ids = [publisher.publish("tests.kept.a", args=[n]) for n in range(3)]
    # Positions: one epoch, offsets 1, 2, 3 (publication id = offset << 16 | epoch),
    # written by the script on the topic's shard; subscribers see the same ids.
    assert [i >> 16 for i in ids] == [1, 2, 3] and len({i & 0xFFFF for i in ids}) == 1
    events = [sub.next_event() for _ in ids]
    assert [e.args[0] for e in events] == [0, 1, 2]
    assert [e.publication for e in events] == ids


def test_django_publishes_on_a_cluster(settings, wamp, cluster, cluster_gateway):
    roundtrip(settings, wamp, cluster_gateway, settings_for(cluster_gateway, BUS=cluster.url(), REDIS_KEY_PREFIX=PREFIX))


def test_django_publishes_through_sentinel(settings, wamp, sentinels):
    gw = Gateway('[redis]\nkey_prefix = "pysentinel:"\n', env={"TELEGRAPHY_BUS": sentinels.url()})
    try:
        roundtrip(settings, wamp, gw, settings_for(gw, BUS=sentinels.url(), REDIS_KEY_PREFIX="pysentinel:"))
    finally:
        gw.stop()


def test_sentinels_with_a_password_get_the_urls_credentials(settings, wamp, sentinels_with_password):
    url = sentinels_with_password.url()
    assert ":s3cret-pw@" in url
    gw = Gateway('[redis]\nkey_prefix = "pysentinelpw:"\n', env={"TELEGRAPHY_BUS": url})
    try:
        roundtrip(settings, wamp, gw, settings_for(gw, BUS=url, REDIS_KEY_PREFIX="pysentinelpw:"))
    finally:
        gw.stop()
    wrong = Publisher(bus=url.replace("s3cret-pw", "wrong"), redis_key_prefix="pysentinelpw:")
    with pytest.raises(Unauthorized, match="refused the credentials"):
        wrong.publish("tests.sentinel.pw", ["never"])


def test_sentinels_without_a_password_are_asked_again_without_the_urls(sentinels):
    # The URL carries a password this Sentinel does not have (it has none and
    # refuses one): it is asked again without it, and the primary (which
    # redis-py lets through a password it does not need) takes the event.
    url = sentinels.url().replace("redis+sentinel://", "redis+sentinel://:only-the-primary-might-have-one@")
    assert Publisher(bus=url, redis_key_prefix="pysentinel:").publish("tests.sentinel.nopw", ["kept"]) > 0
