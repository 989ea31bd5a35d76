// Plain topics: subscribeTopic with each match policy, publish with
// acknowledge, WAMP errors carried as err.uri, unsubscribe.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { Telegraphy } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, inbox, tokenFor, withTimeout, T } from "../testing/gateway.js";

exitGuard();

let gw;
let a; // subscriber
let b; // publisher
const errors = [];

const clients = [];

function newClient(options = {}) {
  const c = new Telegraphy({ url: gw.url, WebSocket, backoff: { initial: 50, max: 200 }, ...options });
  c.on("error", (err) => errors.push(err));
  clients.push(c);
  return c;
}

before(async () => {
  gw = await Gateway.start();
  a = newClient();
  b = newClient();
  await withTimeout(Promise.all([a.connect(), b.connect()]), 5000, "two sessions");
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await gw?.stop();
});

test("exact subscription receives args, kwargs and details", T, async () => {
  const got = inbox();
  const sub = await a.subscribeTopic("com.example.exact", got);
  assert.equal(sub.topic, "com.example.exact");
  assert.equal(sub.match, "exact");
  const id = await b.publish("com.example.exact", [1, "two"], { k: 3 }, { acknowledge: true });
  assert.ok(Number.isInteger(id) && id > 0, "publish with acknowledge resolves with the publication id");
  const [args, kwargs, details] = await got.next(5000, "the event");
  assert.deepEqual(args, [1, "two"]);
  assert.deepEqual(kwargs, { k: 3 });
  assert.equal(details.topic, "com.example.exact", "details.topic is filled in for exact subscriptions");
  assert.equal(details.publication, id);
  // Other topics do not arrive.
  await b.publish("com.example.exact.more", [0], {}, { acknowledge: true });
  assert.ok(await got.quiet(300));
  await sub.unsubscribe();
});

test("prefix subscription", T, async () => {
  const got = inbox();
  const sub = await a.subscribeTopic("com.prefix.", got, { match: "prefix" });
  await b.publish("com.prefix.a", ["a"], {}, { acknowledge: true });
  await b.publish("com.prefix.b.c", ["bc"], {}, { acknowledge: true });
  await b.publish("com.prefixx", ["no"], {}, { acknowledge: true });
  const first = await got.next();
  const second = await got.next();
  assert.deepEqual([first[2].topic, second[2].topic].sort(), ["com.prefix.a", "com.prefix.b.c"]);
  assert.ok(await got.quiet(300));
  await sub.unsubscribe();
});

test("wildcard subscription", T, async () => {
  const got = inbox();
  const sub = await a.subscribeTopic("com..update", got, { match: "wildcard" });
  await b.publish("com.post.update", [1], {}, { acknowledge: true });
  await b.publish("com.post.delete", [2], {}, { acknowledge: true });
  await b.publish("com.a.b.update", [3], {}, { acknowledge: true });
  const [args, , details] = await got.next();
  assert.deepEqual(args, [1]);
  assert.equal(details.topic, "com.post.update");
  assert.ok(await got.quiet(300));
  await sub.unsubscribe();
});

test("unsubscribe stops events; shared subscriptions are counted locally", T, async () => {
  const one = inbox();
  const two = inbox();
  const s1 = await a.subscribeTopic("com.shared", one);
  const s2 = await a.subscribeTopic("com.shared", two);
  await b.publish("com.shared", ["x"], {}, { acknowledge: true });
  await one.next();
  await two.next();
  // Leaving one keeps the other: the gateway holds one subscription for both.
  await s1.unsubscribe();
  await b.publish("com.shared", ["y"], {}, { acknowledge: true });
  assert.deepEqual((await two.next())[0], ["y"]);
  assert.ok(await one.quiet(200));
  await s2.unsubscribe();
  await b.publish("com.shared", ["z"], {}, { acknowledge: true });
  assert.ok(await two.quiet(300));
  // And subscribing again after everything was left works.
  const again = await a.subscribeTopic("com.shared", two);
  await b.publish("com.shared", ["w"], {}, { acknowledge: true });
  assert.deepEqual((await two.next())[0], ["w"]);
  await again.unsubscribe();
});

test("publish: exclude_me false delivers to the publisher itself; default does not", T, async () => {
  const got = inbox();
  const sub = await b.subscribeTopic("com.self", got);
  await b.publish("com.self", ["mine"], {}, { acknowledge: true });
  assert.ok(await got.quiet(300), "exclude_me defaults to true");
  await b.publish("com.self", ["again"], {}, { acknowledge: true, exclude_me: false });
  assert.deepEqual((await got.next())[0], ["again"]);
  await sub.unsubscribe();
});

test("publish without acknowledge resolves with undefined and still delivers", T, async () => {
  const got = inbox();
  const sub = await a.subscribeTopic("com.noack", got);
  assert.equal(await b.publish("com.noack", [], { only: "kwargs" }), undefined);
  const [args, kwargs] = await got.next();
  assert.deepEqual(args, []);
  assert.deepEqual(kwargs, { only: "kwargs" });
  await sub.unsubscribe();
});

test("errors carry the WAMP error URI", T, async () => {
  const reserved = await b.publish("wamp.reserved", [], {}, { acknowledge: true }).catch((e) => e);
  assert.equal(reserved.uri, "wamp.error.not_authorized");
  assert.match(reserved.message, /wamp\.error\.not_authorized/);

  const invalid = await b.publish("bad..topic", [], {}, { acknowledge: true }).catch((e) => e);
  assert.equal(invalid.uri, "wamp.error.invalid_uri");

  const badSub = await a.subscribeTopic("bad..topic", () => {}).catch((e) => e);
  assert.equal(badSub.uri, "wamp.error.invalid_uri");

  // A role that may subscribe only to shop.public.*: the gateway refuses others.
  const reader = newClient({ token: tokenFor("rita", { role: "reader" }) });
  await withTimeout(reader.connect(), 5000, "reader WELCOME");
  const denied = await reader.subscribeTopic("shop.private.x", () => {}).catch((e) => e);
  assert.equal(denied.uri, "wamp.error.not_authorized");
  const allowed = await reader.subscribeTopic("shop.public.x", () => {});
  assert.equal(allowed.topic, "shop.public.x");
  const noPublish = await reader.publish("shop.public.x", [], {}, { acknowledge: true }).catch((e) => e);
  assert.equal(noPublish.uri, "wamp.error.not_authorized");
  await reader.close();

  // Local checks throw before anything is sent.
  await assert.rejects(a.subscribeTopic("x", () => {}, { match: "regex" }), /match must be one of/);
  await assert.rejects(a.subscribeTopic("", () => {}), /non-empty string/);
  await assert.rejects(b.publish("x", "not-an-array"), /args must be an array/);
});

test("publish when not connected rejects with code not_connected", T, async () => {
  const c = newClient();
  const err = await c.publish("com.x", [1]).catch((e) => e);
  assert.equal(err.code, "not_connected");
});

test("subscribeTopic before connect() waits for the session", T, async () => {
  const c = newClient();
  const got = inbox();
  const pending = c.subscribeTopic("com.early", got);
  c.connect();
  const sub = await withTimeout(pending, 5000, "the subscription");
  await b.publish("com.early", [42], {}, { acknowledge: true });
  assert.deepEqual((await got.next())[0], [42]);
  await sub.unsubscribe();
  await c.close();
});

test("binary values round-trip as Uint8Array", T, async () => {
  const got = inbox();
  const sub = await a.subscribeTopic("com.binary", got);
  await b.publish("com.binary", [new Uint8Array([0, 1, 254, 255])], {}, { acknowledge: true });
  const [args] = await got.next();
  assert.ok(args[0] instanceof Uint8Array);
  assert.deepEqual([...args[0]], [0, 1, 254, 255]);
  await sub.unsubscribe();
});

test("a throwing callback is reported as an error and does not stop others", T, async () => {
  const got = inbox();
  const before = errors.length;
  const bad = await a.subscribeTopic("com.throws", () => {
    throw new Error("boom");
  });
  const good = await a.subscribeTopic("com.throws", got);
  await b.publish("com.throws", [1], {}, { acknowledge: true });
  await got.next();
  const err = errors.slice(before).find((e) => e.code === "callback");
  assert.ok(err, "an error event with code callback");
  assert.equal(err.topic, "com.throws");
  assert.equal(err.cause.message, "boom");
  await bad.unsubscribe();
  await good.unsubscribe();
});
