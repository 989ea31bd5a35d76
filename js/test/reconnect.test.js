// Reconnects against real gateway processes: SIGKILL and a restart on the same
// port (fresh token, resubscribe), SIGTERM drain (GOODBYE system_shutdown,
// close 1012), token expiry (4003), pending requests on disconnect, close().

import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

import { Telegraphy } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, inbox, modelEvent, nextState, recordStates, tokenFor, waitFor, withTimeout, T } from "../testing/gateway.js";

exitGuard();

const cleanup = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** True when every thread of the process is stopped (state T in /proc). */
function stopped(pid) {
  const tasks = readdirSync(`/proc/${pid}/task`);
  return tasks.every((tid) => {
    try {
      return /^\d+ \(.*\) [tT] /.test(readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8"));
    } catch {
      return true; // the thread is gone
    }
  });
}

async function startGateway(options) {
  const gw = await Gateway.start(options);
  cleanup.push(() => gw.stop());
  return gw;
}

function newClient(gw, options = {}) {
  const c = new Telegraphy({ url: gw.url, WebSocket, backoff: { initial: 100, max: 400 }, ...options });
  c.errors = [];
  c.on("error", (err) => c.errors.push(err));
  cleanup.push(() => c.close());
  return c;
}

/** Resolves once every topic in `topics` got a "subscribed" event with resubscribed: true. */
function resubscribed(client, topics, ms = 10000) {
  const left = new Set(topics);
  let off;
  const p = new Promise((resolve) => {
    off = client.on("subscribed", (topic, info) => {
      if (info.resubscribed && info.resumed === false) left.delete(topic);
      if (left.size === 0) resolve();
    });
  });
  return withTimeout(p, ms, `resubscriptions to ${topics.join(", ")}`).finally(() => off());
}

test("SIGKILL, restart on the same port: reconnects with a fresh token, resubscribes, receives", T, async () => {
  const first = await startGateway();
  const tokens = [];
  const c = newClient(first, {
    getToken: async () => {
      const token = tokenFor(`user-${tokens.length}`);
      tokens.push(token);
      return token;
    },
  });
  const states = recordStates(c);
  const plain = inbox();
  const created = inbox();
  await withTimeout(c.connect(), 5000, "WELCOME");
  assert.equal(c.session.authid, "user-0");
  await c.subscribeTopic("com.live.", plain, { match: "prefix" });
  const channel = c.subscribe("telegraphy.shop.order");
  channel.filter({ status: "open" }).onCreate(created);
  await withTimeout(channel.ready, 5000, "channel");
  await first.publish("com.live.a", [1]);
  assert.deepEqual((await plain.next())[0], [1]);

  const disconnected = nextState(c, "disconnected");
  await first.kill();
  const info = await disconnected;
  assert.equal(info.code, 1006);
  assert.equal(info.willReconnect, true);
  assert.ok(info.delay >= 0 && info.delay <= 400, `delay ${info.delay} within the backoff cap`);
  assert.equal(c.state === "disconnected" || c.state === "connecting", true);
  assert.equal(c.sessionId, null);

  // The port is closed for a while: attempts fail and back off.
  await waitFor(() => states.filter((s) => s.state === "disconnected").length >= 3, 10000, "three failed attempts");
  const again = resubscribed(c, ["com.live.", "telegraphy.shop.order"]);
  const reconnected = nextState(c, "connected", 15000);
  const second = await startGateway({ port: first.port, adminPort: first.adminPort });
  const welcome = await reconnected;
  assert.equal(welcome.reconnected, true);
  assert.equal(welcome.resumed, false);
  assert.ok(tokens.length >= 2, "getToken was asked again");
  assert.equal(welcome.authid, `user-${tokens.length - 1}`, "the session uses the newest token");
  await again;

  await second.publish("com.live.b", [2]);
  assert.deepEqual((await plain.next(5000, "a plain event after the restart"))[0], [2]);
  await second.publish("telegraphy.shop.order", [modelEvent("create", { id: 9, status: "closed" })]);
  await second.publish("telegraphy.shop.order", [modelEvent("create", { id: 10, status: "open" })]);
  assert.equal((await created.next(5000, "a model event after the restart"))[0].id, 10, "same callbacks, same filters");

  // Each disconnect was reported with willReconnect and a bounded delay.
  for (const s of states.filter((x) => x.state === "disconnected")) {
    assert.equal(s.info.willReconnect, true);
    assert.ok(s.info.delay <= 400);
  }
  assert.ok(!states.some((s) => s.state === "closed"));
});

test("SIGTERM drain: GOODBYE system_shutdown, close 1012, reconnect to the next process", T, async () => {
  const first = await startGateway();
  const c = newClient(first);
  const got = inbox();
  await withTimeout(c.connect(), 5000, "WELCOME");
  await c.subscribeTopic("com.drain", got);

  const disconnected = nextState(c, "disconnected");
  await first.term();
  const info = await disconnected;
  assert.equal(info.code, 1012);
  assert.equal(info.reason, "wamp.close.system_shutdown");
  assert.match(info.message, /shutting down/);
  assert.equal(info.willReconnect, true);

  const again = resubscribed(c, ["com.drain"]);
  const reconnected = nextState(c, "connected", 15000);
  const second = await startGateway({ port: first.port, adminPort: first.adminPort });
  assert.equal((await reconnected).reconnected, true);
  await again;
  await second.publish("com.drain", ["after drain"]);
  assert.deepEqual((await got.next(5000, "an event from the second process"))[0], ["after drain"]);
});

test("close() while waiting to reconnect stops reconnecting", T, async () => {
  const gw = await startGateway();
  const c = newClient(gw, { backoff: { initial: 300, max: 300 } });
  const states = recordStates(c);
  await withTimeout(c.connect(), 5000, "WELCOME");
  const disconnected = nextState(c, "disconnected");
  await gw.kill();
  await disconnected;
  await c.close();
  assert.equal(c.state, "closed");
  assert.equal(states.at(-1).state, "closed");
  assert.equal(states.at(-1).info.willReconnect, false);
  // The gateway comes back; the closed client stays away.
  const back = await startGateway({ port: gw.port, adminPort: gw.adminPort });
  await sleep(1000);
  assert.equal(c.state, "closed");
  assert.equal(states.at(-1).state, "closed");
  assert.ok(back);
});

test("close() on a connected client: GOODBYE, no reconnect", T, async () => {
  const gw = await startGateway();
  const c = newClient(gw);
  const states = recordStates(c);
  await withTimeout(c.connect(), 5000, "WELCOME");
  await withTimeout(c.close(), 3000, "close()");
  assert.equal(c.state, "closed");
  const closed = states.at(-1);
  assert.equal(closed.state, "closed");
  assert.equal(closed.info.reason, "wamp.close.close_realm");
  assert.equal(closed.info.willReconnect, false);
  await sleep(500);
  assert.equal(states.filter((s) => s.state === "connecting").length, 1, "no second attempt");
});

test("token expiry (4003): reconnects with a fresh token", T, async () => {
  const gw = await startGateway();
  let n = 0;
  const c = newClient(gw, {
    // The first token lives 2 seconds; later ones 5 minutes.
    getToken: async () => tokenFor(`eve-${n}`, { seconds: n++ === 0 ? 2 : 300 }),
  });
  const got = inbox();
  await withTimeout(c.connect(), 5000, "WELCOME");
  await c.subscribeTopic("com.expiry", got);
  const info = await nextState(c, "disconnected", 8000);
  assert.equal(info.code, 4003);
  assert.equal(info.reason, "telegraphy.close.token_expired");
  assert.equal(info.willReconnect, true);
  const again = resubscribed(c, ["com.expiry"]);
  const welcome = await nextState(c, "connected", 8000);
  assert.equal(welcome.authid, "eve-1");
  await again;
  await gw.publish("com.expiry", ["fresh"]);
  assert.deepEqual((await got.next())[0], ["fresh"]);
});

test("resume after a reconnect: the missed events arrive once, in order, then resumed: true", T, async () => {
  const gw = await startGateway({ extraToml: '[history]\ntopics = ["com.resume.*"]\n' });
  let n = 0;
  const c = newClient(gw, {
    // The first token lives 2 seconds: the gateway closes the session (4003).
    getToken: async () => tokenFor(`rose-${n}`, { seconds: n++ === 0 ? 2 : 300 }),
  });
  const got = inbox();
  await withTimeout(c.connect(), 5000, "WELCOME");
  await c.subscribeTopic("com.resume.orders", got);
  await gw.publish("com.resume.orders", [1]);
  assert.deepEqual((await got.next())[0], [1]);
  const resumes = [];
  c.on("subscribed", (topic, info) => resumes.push([topic, info.resubscribed, info.resumed]));
  await nextState(c, "disconnected", 8000);
  // Published while the client is away.
  await gw.publish("com.resume.orders", [2]);
  await gw.publish("com.resume.orders", [3]);
  await nextState(c, "connected", 8000);
  assert.deepEqual((await got.next(5000, "the first missed event"))[0], [2]);
  assert.deepEqual((await got.next(5000, "the second missed event"))[0], [3]);
  await waitFor(() => resumes.length > 0, 5000, "the resume to be reported");
  assert.deepEqual(resumes, [["com.resume.orders", true, true]]);
  await gw.publish("com.resume.orders", [4]);
  assert.deepEqual((await got.next(5000, "a live event after the resume"))[0], [4], "no duplicate, then live");
});

test("a static token that expired: reconnect is refused, then closed", T, async () => {
  const gw = await startGateway();
  const c = newClient(gw, { token: tokenFor("frank", { seconds: 2 }) });
  await withTimeout(c.connect(), 5000, "WELCOME");
  const closed = await nextState(c, "closed", 10000);
  assert.equal(closed.code, 4500);
  assert.equal(closed.reason, "wamp.error.authentication_failed");
  assert.match(closed.message, /expired/);
});

test("pending requests reject on disconnect", T, async () => {
  const gw = await startGateway();
  const c = newClient(gw);
  await withTimeout(c.connect(), 5000, "WELCOME");
  // Freeze the gateway so that nothing is answered, then kill it.
  // SIGSTOP takes effect asynchronously: wait until every thread is stopped.
  gw.child.kill("SIGSTOP");
  await waitFor(() => stopped(gw.child.pid), 5000, "the gateway to stop (SIGSTOP)");
  // Both requests are pending from the moment they are made (whether or not
  // their frames left the client before the gateway dies).
  const publishing = c.publish("com.pending", [1], {}, { acknowledge: true }).then(() => "resolved", (e) => e);
  const subscribing = c.subscribeTopic("com.pending", () => {}).then(() => "resolved", (e) => e);
  await gw.kill();
  const [p, s] = await withTimeout(Promise.all([publishing, subscribing]), 5000, "the rejections");
  for (const err of [p, s]) {
    assert.equal(err.code, "disconnected");
    assert.equal(err.closeCode, 1006);
  }
  // The dropped subscribeTopic is not resubscribed after the gateway is back.
  const subscribed = [];
  c.on("subscribed", (topic) => subscribed.push(topic));
  const reconnected = nextState(c, "connected", 10000);
  await startGateway({ port: gw.port, adminPort: gw.adminPort });
  await reconnected;
  // Resubscriptions are asked for as the session opens, and the gateway
  // answers in order: once a SUBSCRIBE made now is answered, any
  // resubscription of com.pending would have been reported before it.
  await withTimeout(c.subscribeTopic("com.pending.marker", () => {}), 5000, "the marker subscription");
  assert.deepEqual(subscribed, ["com.pending.marker"]);
});

test("backoff grows with full jitter up to max while the gateway is down", T, async () => {
  const gw = await startGateway();
  const c = newClient(gw, { backoff: { initial: 20, max: 160 } });
  const states = recordStates(c);
  await withTimeout(c.connect(), 5000, "WELCOME");
  await gw.kill();
  await waitFor(() => states.filter((s) => s.state === "disconnected").length >= 8, 10000, "eight attempts");
  const attempts = states.filter((s) => s.state === "disconnected").map((s) => s.info);
  attempts.forEach((info, i) => {
    assert.equal(info.attempt, i);
    assert.ok(info.delay >= 0 && info.delay < Math.min(160, 20 * 2 ** i), `attempt ${i}: delay ${info.delay}`);
  });
  await c.close();
});
