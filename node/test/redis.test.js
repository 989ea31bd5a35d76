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
