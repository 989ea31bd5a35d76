"""Private brokers for test suites written in other languages (node/test):
a TLS-only Redis and a RabbitMQ with an AMQPS listener, both requiring client
certificates, with a fresh test PKI (pki.py); or, with --redis-clusters, a
3-primary Redis Cluster and a Redis primary with a replica and a Sentinel.
Prints one JSON line (the URLs and the PEM paths), then serves until its
stdin closes, and stops every broker by PID (also when killed with SIGTERM).

    python3 tests/chaos/serve_brokers.py DIR [--no-rabbit | --redis-clusters]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import procs  # noqa: E402
from brokers import RabbitNode, RedisCluster, RedisSentinels, RedisServer  # noqa: E402
from pki import broker_pki  # noqa: E402


def main() -> int:
    procs.install_safety_net()
    d = Path(sys.argv[1])
    if "--redis-clusters" in sys.argv:
        return serve_redis_clusters(d)
    certs = broker_pki(d / "pki")
    redis = RedisServer(d, tls=certs)
    redis.start()
    out = {"redis": redis.url(), **{k: str(v) for k, v in certs.items()}}
    rabbit = None
    if "--no-rabbit" not in sys.argv:
        (d / "rabbit").mkdir(exist_ok=True)
        rabbit = RabbitNode(d / "rabbit", tls=certs)
        rabbit.start()
        out["amqp"] = rabbit.tls_url()
    print(json.dumps(out), flush=True)
    try:
        sys.stdin.read()
    finally:
        redis.stop()
        if rabbit is not None:
            rabbit.stop()
        procs.cleanup_all()
    return 0


def serve_redis_clusters(d: Path) -> int:
    cluster = RedisCluster(d, primaries=3, replicas=0)
    sentinels = RedisSentinels(d, count=1)
    # The primary, its replica and the Sentinel all require this password.
    guarded = RedisSentinels(d, name="guarded", count=1, password="s3cret-pw")
    try:
        cluster.start()
        sentinels.start()
        guarded.start()
        print(json.dumps({"cluster": cluster.url(), "sentinel": sentinels.url(), "sentinel_password": guarded.url()}), flush=True)
        sys.stdin.read()
    finally:
        cluster.stop()
        sentinels.stop()
        guarded.stop()
        procs.cleanup_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
