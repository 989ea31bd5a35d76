// Publishing on a Redis Cluster (redis+cluster://) and through Redis Sentinel
// (redis+sentinel://): a private 3-primary cluster, and a primary with a
// replica and a Sentinel, from the fault suite's harness
// (tests/chaos/serve_brokers.py --redis-clusters, which stops them by PID when
// its stdin closes). The same scenarios as over plain redis://, and on the
// cluster a prefix subscription (classic pub/sub through the nodes' pattern
// registry) next to exact ones (sharded pub/sub).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { InvalidInput, Publisher, Unauthorized, mintToken } from "@telegraphy/server";
import { patternMatches, registryPatterns } from "../src/transports/redis.js";
import { SECRET, startGateway, subscriber, unique } from "../testing/gateway.js";
import { serveBrokers } from "../testing/brokers.js";
import { publishScenarios } from "../testing/scenarios.js";

let brokers;
let stopBrokers = async () => {};
const keyPrefix = `${unique("tg-node-rc")}:`;

before(async () => {
  ({ brokers, stop: stopBrokers } = await serveBrokers("rcluster", ["--redis-clusters"], "the Redis Cluster and Sentinel"));
});

after(() => stopBrokers());

/** The cluster (or Sentinel) URL with user:pass in it. */
const withCredentials = (url, userinfo) => url.replace("://", `://${userinfo}@`);

for (const kind of ["cluster", "sentinel"]) {
  publishScenarios(`redis+${kind}`, {
    gatewayOptions: () => ({ bus: brokers[kind], keyPrefix }),
    publisher: () => new Publisher({ bus: brokers[kind], redisKeyPrefix: keyPrefix }),
    badCredentials: () => new Publisher({ bus: withCredentials(brokers[kind], "nobody:wrong"), redisKeyPrefix: keyPrefix }),
    unreachable: (port) => new Publisher({ bus: `redis+${kind}://127.0.0.1:${port}${kind === "sentinel" ? "/telegraphy" : ""}`, redisKeyPrefix: keyPrefix, timeoutMs: 2000 }),
  });
}

test("redis+cluster: a prefix subscriber gets what the Node publisher sends to topics on every shard", async () => {
  const gw = await startGateway({ bus: brokers.cluster, keyPrefix });
  const token = await mintToken({ subject: "bob", role: "user", subscribe: ["com.example.*"], ttlSeconds: 120, secret: SECRET });
  const bob = await subscriber(gw.wsUrl, token);
  const pub = new Publisher({ bus: brokers.cluster, redisKeyPrefix: keyPrefix });
  try {
    const base = `com.example.${unique("p").replace(/-/g, "")}`;
    const inbox = await bob.listen(`${base}.`, { match: "prefix" });
    const topics = Array.from({ length: 12 }, (_, i) => `${base}.t${i}`);
    for (const t of topics) await pub.publish(t, [t], {}, { requireSubscriber: true });
    const got = [];
    for (const _ of topics) got.push((await inbox.next()).args[0]);
    assert.deepEqual(got.sort(), [...topics].sort());
  } finally {
    await bob.close();
    await pub.close();
    await gw.stop();
  }
});

test("redis+sentinel: Sentinels with a password get the URL's, Sentinels without one are asked again without it", async () => {
  const url = brokers.sentinel_password;
  assert.match(url, /:s3cret-pw@/);
  const prefix = `${unique("tg-node-spw")}:`;
  const gw = await startGateway({ bus: url, keyPrefix: prefix });
  const token = await mintToken({ subject: "bob", role: "user", subscribe: ["com.example.*"], ttlSeconds: 120, secret: SECRET });
  const bob = await subscriber(gw.wsUrl, token);
  const pub = new Publisher({ bus: url, redisKeyPrefix: prefix });
  try {
    const topic = `com.example.${unique("s").replace(/-/g, "")}`;
    const inbox = await bob.listen(topic);
    await pub.publish(topic, ["through a guarded Sentinel"], {}, { requireSubscriber: true });
    assert.deepEqual((await inbox.next()).args, ["through a guarded Sentinel"]);
    const wrong = new Publisher({ bus: url.replace("s3cret-pw", "wrong"), redisKeyPrefix: prefix, timeoutMs: 2000 });
    await assert.rejects(wrong.publish(topic, ["never"]), (e) => e instanceof Unauthorized && /Sentinels .* refused the credentials/.test(e.message));
    await wrong.close();
  } finally {
    await bob.close();
    await pub.close();
    await gw.stop();
  }
  // A password the Sentinel does not have: it is asked again without it and
  // names the primary, which has none either and refuses it by name (not
  // "the Sentinels refused").
  const spare = new Publisher({ bus: withCredentials(brokers.sentinel, ":not-the-sentinels"), redisKeyPrefix: keyPrefix, timeoutMs: 2000 });
  try {
    await assert.rejects(spare.publish(`com.example.${unique("n").replace(/-/g, "")}`, ["never"]),
      (e) => e instanceof Unauthorized && /^Redis at .* refused the credentials: .*without any password configured/.test(e.message));
  } finally {
    await spare.close();
  }
});

test("redis+cluster / redis+sentinel: URLs are checked, registry entries read as the gateway writes them", () => {
  assert.throws(() => new Publisher({ bus: "redis+cluster://127.0.0.1:7000/3" }), (e) => e instanceof InvalidInput && /only database 0/.test(e.message));
  assert.throws(() => new Publisher({ bus: "redis+sentinel://127.0.0.1:26379" }), (e) => e instanceof InvalidInput && /name the primary/.test(e.message));
  assert.throws(() => new Publisher({ bus: "redis+cluster://a:1,,b:2" }), (e) => e instanceof InvalidInput && /empty host/.test(e.message));
  const patterns = registryPatterns({ a: "2000\nrealm1\tprefix\tcom.shop.\nrealm1\twildcard\ta..c", b: "500\nrealm1\tprefix\tx." }, 1000);
  assert.deepEqual(patterns, [["realm1", "prefix", "com.shop."], ["realm1", "wildcard", "a..c"]]);
  assert.ok(patternMatches("prefix", "com.shop.", "com.shop.order.1"));
  assert.ok(patternMatches("wildcard", "a..c", "a.b.c") && !patternMatches("wildcard", "a..c", "a.b.d"));
});
