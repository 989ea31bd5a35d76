// Publishing straight onto Redis, to a gateway on the same Redis (its own
// key prefix, so this run sees nobody else's events).

import { test } from "node:test";
import assert from "node:assert/strict";
import { createClient } from "redis";
import { Publisher, Rejected, decodeEnvelope } from "@telegraphy/server";
import { REDIS_URL, unique, withTimeout } from "../testing/gateway.js";
import { publishScenarios, withCredentials, withPort } from "../testing/scenarios.js";

const keyPrefix = `${unique("tg-node")}:`;

publishScenarios("redis", {
  gatewayOptions: () => ({ bus: REDIS_URL, keyPrefix }),
  publisher: () => new Publisher({ bus: REDIS_URL, redisKeyPrefix: keyPrefix }),
  badCredentials: () => new Publisher({ bus: withCredentials(REDIS_URL, "nobody", "wrong"), redisKeyPrefix: keyPrefix }),
  unreachable: (port) => new Publisher({ bus: withPort(REDIS_URL, port), redisKeyPrefix: keyPrefix, timeoutMs: 2000 }),
});

test("redis: the channel is {prefix}{realm}:{topic} and the message is the envelope", async () => {
  const raw = createClient({ url: REDIS_URL });
  raw.on("error", () => {});
  await raw.connect();
  const pub = new Publisher({ bus: REDIS_URL, redisKeyPrefix: keyPrefix, realm: "tenant.acme" });
  try {
    const channel = `${keyPrefix}tenant.acme:com.example.wire`;
    let resolveMessage;
    const message = new Promise((r) => {
      resolveMessage = r;
    });
    await raw.subscribe(channel, (m) => resolveMessage(m), true); // true: Buffers
    const id = await pub.publish("com.example.wire", [1, "two"], { three: 3 }, { requireSubscriber: true });
    const envelope = decodeEnvelope(await withTimeout(message, 5000, "the raw Redis message"));
    assert.equal(envelope.publication, id);
    assert.equal(envelope.realm, "tenant.acme");
    assert.equal(envelope.topic, "com.example.wire");
    assert.deepEqual(envelope.args, [1, "two"]);
    assert.deepEqual(envelope.kwargs, { three: 3 });
    assert.deepEqual(envelope.filter, {});
    assert.equal(envelope.publisher, null);
    assert.ok(Math.abs(envelope.publishedAtUs - Date.now() * 1000) < 60e6, "published_at_us is now, in microseconds");
  } finally {
    await pub.close();
    if (raw.destroy) raw.destroy(); // node-redis 5
    else await raw.disconnect(); // node-redis 4
  }
});

test("redis: an error reply from the server is Rejected, with its text", async () => {
  // DB 99 does not exist on a default Redis: SELECT fails at connect.
  const url = new URL(REDIS_URL);
  url.pathname = "/99";
  const pub = new Publisher({ bus: url.toString(), redisKeyPrefix: keyPrefix });
  await assert.rejects(pub.publish("com.example.x"), (err) => err instanceof Rejected && /DB index/.test(err.message));
  await pub.close();
});

test("redis: after close(), the next publish connects again", async () => {
  const pub = new Publisher({ bus: REDIS_URL, redisKeyPrefix: keyPrefix });
  assert.ok((await pub.publish("com.example.again")) > 0);
  await pub.close();
  assert.ok((await pub.publish("com.example.again")) > 0);
  await pub.close();
});

test("redis: the publish script is the gateway's (bus/src/redis/publish.lua)", async () => {
  const { readFileSync } = await import("node:fs");
  const { PUBLISH_SCRIPT } = await import("../src/transports/redis.js");
  const gateways = readFileSync(new URL("../../bus/src/redis/publish.lua", import.meta.url), "utf8");
  assert.equal(PUBLISH_SCRIPT, gateways, "node/src/transports/redis_publish.lua must be a copy of bus/src/redis/publish.lua");
});

test("redis: history topics get their position from the script; retain keeps the event", async () => {
  const prefix = `${unique("tg-node-history")}:`;
  const raw = createClient({ url: REDIS_URL });
  raw.on("error", () => {});
  await raw.connect();
  const pub = new Publisher({ bus: REDIS_URL, redisKeyPrefix: prefix });
  try {
    // What a gateway with `[history] topics = ["node.history.*"]` writes when it connects.
    await raw.hSet(`${prefix}history`, { topics: "node.history.*", size: "10", ttl_ms: "60000" });
    const first = await pub.publish("node.history.orders", [1]);
    const second = await pub.publish("node.history.orders", [2], {}, { retain: true });
    const live = await pub.publish("node.live.orders", [3]);
    assert.deepEqual([Math.floor(first / 65536), Math.floor(second / 65536)], [1, 2], "offsets 1 and 2");
    assert.equal(first % 65536, second % 65536, "one epoch");
    assert.ok(Math.floor(live / 65536) > 1000, "a topic without history keeps its random id");
    const { RESP_TYPES } = await import("redis");
    const binary = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } }; // node-redis 5
    const kept = await raw.sendCommand(["XRANGE", `${prefix}h:realm1:node.history.orders`, "-", "+"], binary);
    assert.deepEqual(kept.map(([, fields]) => decodeEnvelope(fields[1]).args), [[1], [2]]);
    const retained = await raw.sendCommand(["LRANGE", `${prefix}r:realm1:node.history.orders`, "0", "-1"], binary);
    assert.deepEqual(retained.map((b) => [decodeEnvelope(b).args, decodeEnvelope(b).publication]), [[[2], second]]);
  } finally {
    await pub.close();
    if (raw.destroy) raw.destroy();
    else await raw.disconnect();
  }
});
