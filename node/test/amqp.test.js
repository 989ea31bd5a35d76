// Publishing straight onto RabbitMQ, to a gateway on the same broker (its
// own exchange, deleted afterwards).

import { after, test } from "node:test";
import assert from "node:assert/strict";
import amqp from "amqplib";
import { ENVELOPE_CONTENT_TYPE, InvalidInput, Publisher, Rejected, decodeEnvelope } from "@telegraphy/server";
import { AMQP_URL, freePort, unique, withTimeout } from "../testing/gateway.js";
import { publishScenarios, withCredentials, withPort } from "../testing/scenarios.js";

const exchange = unique("tg-node");

// Registered first: runs after the scenarios' own cleanup (gateway stopped).
after(async () => {
  const connection = await amqp.connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    await channel.deleteExchange(exchange);
    await channel.deleteExchange(`${exchange}-direct`);
  } finally {
    await connection.close();
  }
});

publishScenarios("amqp", {
  gatewayOptions: () => ({ bus: AMQP_URL, exchange }),
  publisher: () => new Publisher({ bus: AMQP_URL, amqpExchange: exchange }),
  badCredentials: () => new Publisher({ bus: withCredentials(AMQP_URL, "guest", "wrong"), amqpExchange: exchange }),
  unreachable: (port) => new Publisher({ bus: withPort(AMQP_URL, port), amqpExchange: exchange, timeoutMs: 2000 }),
});

test("amqp: routing key {realm}.{topic}, content type, the envelope as the body", async () => {
  const connection = await amqp.connect(AMQP_URL);
  const pub = new Publisher({ bus: AMQP_URL, amqpExchange: exchange });
  try {
    const channel = await connection.createChannel();
    await channel.assertExchange(exchange, "topic", { durable: true });
    const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, "tenant.acme.com.example.wire");
    let resolveMessage;
    const message = new Promise((r) => {
      resolveMessage = r;
    });
    await channel.consume(queue, (m) => resolveMessage(m), { noAck: true });
    const id = await pub.publish("com.example.wire", [1, "two"], { three: 3 }, { realm: "tenant.acme", requireSubscriber: true });
    const m = await withTimeout(message, 5000, "the raw AMQP message");
    assert.equal(m.fields.routingKey, "tenant.acme.com.example.wire");
    assert.equal(m.properties.contentType, ENVELOPE_CONTENT_TYPE);
    const envelope = decodeEnvelope(m.content);
    assert.equal(envelope.publication, id);
    assert.equal(envelope.realm, "tenant.acme");
    assert.deepEqual(envelope.args, [1, "two"]);
    assert.deepEqual(envelope.kwargs, { three: 3 });
  } finally {
    await pub.close();
    await connection.close();
  }
});

test("amqp: an exchange of another type is Rejected with advice; a routing key over 255 bytes too", async () => {
  const connection = await amqp.connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    await channel.assertExchange(`${exchange}-direct`, "direct", { durable: false, autoDelete: false });
  } finally {
    await connection.close();
  }
  const pub = new Publisher({ bus: AMQP_URL, amqpExchange: `${exchange}-direct` });
  await assert.rejects(pub.publish("com.example.x"), (err) => err instanceof Rejected && /pick another name/.test(err.message));
  await pub.close();
  const ok = new Publisher({ bus: AMQP_URL, amqpExchange: exchange });
  await assert.rejects(ok.publish(`com.example.${"x".repeat(250)}`), (err) => err instanceof Rejected && /routing key/.test(err.message));
  await ok.close();
  assert.throws(() => new Publisher({ bus: AMQP_URL, amqpExchange: "amq.topic" }), InvalidInput);
});

test("amqp: a cluster URL lists brokers, tried in turn while one is down", async () => {
  const { brokerUrls } = await import("../src/transports/amqp.js");
  assert.deepEqual(brokerUrls("amqps://u:p@rabbit-0:5671, rabbit-1/%2f?heartbeat=5"), [
    "amqps://u:p@rabbit-0:5671/%2f?heartbeat=5",
    "amqps://u:p@rabbit-1/%2f?heartbeat=5",
  ]);
  assert.throws(() => brokerUrls("amqp://u:secret@a,,b/v"), (err) => err instanceof InvalidInput && /empty host/.test(err.message) && !/secret/.test(err.message));
  // The first broker is down: the event goes through the second.
  const live = new URL(AMQP_URL);
  const dead = await freePort();
  const cluster = `amqp://${live.username}:${live.password}@127.0.0.1:${dead},${live.host}${live.pathname}`;
  const connection = await amqp.connect(AMQP_URL);
  const pub = new Publisher({ bus: cluster, amqpExchange: exchange, timeoutMs: 2000 });
  try {
    const channel = await connection.createChannel();
    await channel.assertExchange(exchange, "topic", { durable: true });
    const { queue } = await channel.assertQueue("", { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, "realm1.com.example.cluster");
    const got = new Promise((resolve) => channel.consume(queue, (m) => resolve(m), { noAck: true }));
    const id = await pub.publish("com.example.cluster", [1]);
    assert.equal(decodeEnvelope((await withTimeout(got, 5000, "the event through the second broker")).content).publication, id);
  } finally {
    await pub.close();
    await connection.close();
  }
});
