// Presence: client.presence(topic) on one gateway and across two gateways on
// the machine's Redis: the count and authids at start, joins and leaves as
// they happen, a refusal for a role that does not name presence.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

import { Telegraphy } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, tokenFor, waitFor, T } from "../testing/gateway.js";

exitGuard();

// A role that names presence (`*` alone does not reach it).
const VIEWER = `
[roles.viewer]
subscribe = ["shop.*", "telegraphy.presence.*"]
call = ["telegraphy.presence.*"]
`;
const REDIS = process.env.TELEGRAPHY_TEST_REDIS || "redis://127.0.0.1:6379/0";

let single;
const pair = [];
const clients = [];

before(async () => {
  single = await Gateway.start({ extraToml: VIEWER });
  // Two nodes that meet on the shared Redis, under a prefix of their own.
  const redisPrefix = `test-js-presence-${randomBytes(6).toString("hex")}:`;
  for (let i = 0; i < 2; i++) pair.push(await Gateway.start({ extraToml: VIEWER, bus: REDIS, redisPrefix }));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all([single, ...pair].map((gw) => gw?.stop()));
});

async function viewer(gw, authid) {
  // The token's `name` claim is the display name presence gives.
  const token = tokenFor(authid, { role: "viewer", name: authid[0].toUpperCase() + authid.slice(1) });
  const c = new Telegraphy({ url: gw.url, realm: "realm1", WebSocket, token, backoff: { initial: 50, max: 200 } });
  clients.push(c);
  await c.connect();
  return c;
}

/** Waits until `presence` shows exactly `authids`. */
function shows(presence, authids, what) {
  const want = [...authids].sort();
  return waitFor(() => presence.count === want.length && JSON.stringify(presence.authids) === JSON.stringify(want), 10000, what);
}

test("presence on one gateway: the state at start, joins and leaves", T, async () => {
  const alice = await viewer(single, "alice");
  const seen = alice.presence("shop.order.7");
  const changes = [];
  seen.on("change", (c) => changes.push(c));
  await seen.ready;
  await shows(seen, ["alice"], "alice sees herself");
  const bob = await viewer(single, "bob");
  const bobs = bob.presence("shop.order.7");
  await bobs.ready;
  assert.deepEqual(bobs.authids, ["alice", "bob"], "bob's first state names both");
  assert.deepEqual(bobs.names, { alice: "Alice", bob: "Bob" });
  await shows(seen, ["alice", "bob"], "alice sees bob come");
  assert.ok(changes.some((c) => c.joined.includes("bob") && c.names.bob === "Bob"), JSON.stringify(changes));
  assert.equal(seen.nameOf("bob"), "Bob");
  assert.equal(seen.nameOf("nobody"), "nobody");
  // A second tab of bob's counts as one more session, not one more person.
  const tab = await viewer(single, "bob");
  tab.presence("shop.order.7");
  await waitFor(() => seen.sessions === 3, 10000, "three sessions");
  assert.equal(seen.count, 2);
  await tab.close();
  await bobs.leave();
  await shows(seen, ["alice"], "alice sees bob go");
  assert.ok(changes.some((c) => c.left.includes("bob")), JSON.stringify(changes));
  assert.equal(seen.sessions, 1);
  await bob.close();
});

test("presence across two gateways on Redis", T, async () => {
  const carol = await viewer(pair[0], "carol");
  const dave = await viewer(pair[1], "dave");
  const hers = carol.presence("shop.order.9");
  await hers.ready;
  const his = dave.presence("shop.order.9");
  await his.ready;
  await shows(hers, ["carol", "dave"], "carol (node 1) sees dave (node 2)");
  await shows(his, ["carol", "dave"], "dave sees carol");
  await dave.close();
  await shows(hers, ["carol"], "dave left node 2: carol sees it on node 1");
});

test("presence is refused to a role that does not name it, and to topics the role may not read", T, async () => {
  const anon = new Telegraphy({ url: single.url, realm: "realm1", WebSocket, backoff: { initial: 50, max: 200 } });
  clients.push(anon);
  await anon.connect();
  anon.on("error", () => {});
  await assert.rejects(anon.presence("shop.order.7").ready, (err) => err.uri === "wamp.error.not_authorized");
  const erin = await viewer(single, "erin");
  erin.on("error", () => {});
  await assert.rejects(erin.presence("admin.secret").ready, (err) => err.uri === "wamp.error.not_authorized");
  assert.throws(() => erin.presence("shop.x", { limit: 0 }), /limit/);
});
