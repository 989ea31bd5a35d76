// Publisher settings and the error classes (no gateway needed).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  InvalidInput,
  NoSubscriber,
  PublishError,
  Publisher,
  Rejected,
  Unauthorized,
  Unavailable,
  publisherFromEnv,
} from "@telegraphy/server";

test("error classes: one base class, a stable kind each, the class name as name", () => {
  for (const [Class, kind] of [
    [InvalidInput, "invalid_input"],
    [Unavailable, "unavailable"],
    [Unauthorized, "unauthorized"],
    [Rejected, "rejected"],
    [NoSubscriber, "no_subscriber"],
  ]) {
    const err = new Class("what to fix", { cause: new Error("underneath") });
    assert.ok(err instanceof PublishError && err instanceof Error);
    assert.equal(err.kind, kind);
    assert.equal(Class.kind, kind);
    assert.equal(err.name, Class.name);
    assert.equal(err.message, "what to fix");
    assert.equal(err.cause.message, "underneath");
  }
});

test("where to publish: exactly one of gatewayUrl or bus, with advice", () => {
  assert.throws(() => new Publisher(), /say where to publish/);
  assert.throws(() => new Publisher({ gatewayUrl: "http://h:8080", apiKey: "k", bus: "redis://h" }), /not both/);
  assert.throws(() => new Publisher({ bus: "memory://" }), /inside one gateway process.*gatewayUrl/);
  assert.equal(new Publisher({ bus: "rediss://u:secret@h:6380/0" }).kind, "redis");
  assert.throws(() => new Publisher({ bus: "rediss://u:secret@h:6380/0", tls: { caFile: "/nonexistent/ca.pem" } }), (err) => {
    assert.match(err.message, /tls\.caFile: cannot read \/nonexistent\/ca\.pem/);
    assert.doesNotMatch(err.message, /secret/, "the password is redacted");
    return err instanceof InvalidInput;
  });
  assert.throws(() => new Publisher({ bus: "nats://h:4222" }), /not a bus URL/);
  assert.throws(() => new Publisher({ bus: "redis://h", redis_key_prefix: "x" }), /unknown Publisher option `redis_key_prefix` \(did you mean `redisKeyPrefix`\?\)/);
  assert.throws(() => new Publisher({ bus: "redis://h", timeoutMs: 0 }), /timeoutMs/);
  assert.throws(() => new Publisher({ bus: "redis://h", realm: "bad realm" }), /not a valid realm/);
  assert.equal(new Publisher({ bus: "redis://h" }).kind, "redis");
  assert.equal(new Publisher({ bus: "amqp://guest:guest@h:5672/%2f" }).kind, "amqp");
  assert.equal(String(new Publisher({ bus: "amqp://guest:guest@h:5672/%2f" })), "Publisher(amqp amqp://guest:***@h:5672/%2f)");
  assert.equal(new Publisher({ gatewayUrl: "http://h:8080/", apiKey: "k" }).kind, "http");
});

test("publisherFromEnv reads the variables telegraphy-publish reads", () => {
  const http = publisherFromEnv({ TELEGRAPHY_GATEWAY_URL: "http://h:8080", TELEGRAPHY_API_KEY: "key", TELEGRAPHY_TIMEOUT: "2.5s" });
  assert.equal(http.kind, "http");
  assert.equal(http.transport.endpoint, "http://h:8080/publish");
  assert.equal(http.transport.timeoutMs, 2500);
  const redis = publisherFromEnv({ TELEGRAPHY_BUS: "redis://h:6379/0", TELEGRAPHY_REDIS__KEY_PREFIX: "p:" });
  assert.equal(redis.transport.keyPrefix, "p:");
  const amqp = publisherFromEnv({ TELEGRAPHY_BUS: "amqp://h", TELEGRAPHY_AMQP__EXCHANGE: "ex" });
  assert.equal(amqp.transport.exchange, "ex");
  assert.throws(() => publisherFromEnv({}), /TELEGRAPHY_GATEWAY_URL.*TELEGRAPHY_BUS/);
  assert.throws(() => publisherFromEnv({ TELEGRAPHY_BUS: "redis://h", TELEGRAPHY_GATEWAY_URL: "http://h" }), /keep one/);
  assert.throws(() => publisherFromEnv({ TELEGRAPHY_BUS: "redis://h", TELEGRAPHY_TIMEOUT: "soon" }), /not a number of seconds/);
});

test("publish options are checked before anything is sent", async () => {
  const pub = new Publisher({ gatewayUrl: "http://127.0.0.1:9", apiKey: "k" });
  await assert.rejects(pub.publish("a.b", [], {}, { requireSubscriber: "yes" }), /requireSubscriber must be true or false/);
  await assert.rejects(pub.publish("a.b", [], [], {}), /kwargs must be a plain object/);
  await assert.rejects(pub.publish("a.b", [], {}, { realm: "a..b" }), /not a valid realm/);
  await assert.rejects(pub.publish("a.b", [], {}, { eligible: [1.5] }), /session ids/);
  await assert.rejects(pub.publish("a.b", ["\u0000x"]), /reads as binary data/);
});
