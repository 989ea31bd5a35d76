// Connecting: anonymous, with a token, with tokenUrl; refusals end in "closed"
// with the ABORT reason and no reconnect; close().

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";

import { Telegraphy } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, tokenFor, mintToken, recordStates, nextState, withTimeout, T } from "../testing/gateway.js";

exitGuard();
let gw;
const clients = [];

before(async () => {
  gw = await Gateway.start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await gw?.stop();
});

function client(options = {}) {
  const c = new Telegraphy({ url: gw.url, realm: "realm1", WebSocket, backoff: { initial: 50, max: 200 }, ...options });
  c.errors = [];
  c.on("error", (err) => c.errors.push(err));
  clients.push(c);
  return c;
}

test("connects anonymously and reports the session", T, async () => {
  const c = client();
  const states = recordStates(c);
  assert.equal(c.state, "disconnected");
  const session = await withTimeout(c.connect(), 5000, "WELCOME");
  assert.equal(c.state, "connected");
  assert.ok(Number.isInteger(c.sessionId) && c.sessionId > 0);
  assert.equal(session.sessionId, c.sessionId);
  assert.equal(session.authmethod, "anonymous");
  assert.equal(session.authrole, "anonymous");
  assert.deepEqual(states.map((s) => s.state), ["connecting", "connected"]);
  const connected = states[1].info;
  assert.equal(connected.resumed, false);
  assert.equal(connected.reconnected, false);
  // connect() again while connected resolves at once with the same session.
  assert.equal((await c.connect()).sessionId, c.sessionId);
  await c.close();
  assert.equal(c.state, "closed");
  assert.equal(c.sessionId, null);
});

test("connects with a token (WAMP ticket)", T, async () => {
  const c = client({ token: tokenFor("alice") });
  const session = await withTimeout(c.connect(), 5000, "WELCOME");
  assert.equal(session.authid, "alice");
  assert.equal(session.authrole, "user");
  assert.equal(session.authmethod, "ticket");
  await c.close();
});

test("getToken and tokenUrl are asked for the token", T, async () => {
  let asked = 0;
  const c = client({ getToken: async () => (asked++, tokenFor("bob")) });
  assert.equal((await withTimeout(c.connect(), 5000, "WELCOME")).authid, "bob");
  assert.equal(asked, 1);
  await c.close();

  const server = createServer((req, res) => {
    assert.equal(req.url, "/telegraphy/token/");
    res.setHeader("Content-Type", "application/json");
    res.end(JSON.stringify({ token: tokenFor("carol") }));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const d = client({ tokenUrl: `http://127.0.0.1:${server.address().port}/telegraphy/token/` });
    assert.equal((await withTimeout(d.connect(), 5000, "WELCOME")).authid, "carol");
    await d.close();
  } finally {
    server.close();
  }
});

test("a token endpoint that answers {token: null} means anonymous", T, async () => {
  const c = client({ getToken: async () => null });
  assert.equal((await withTimeout(c.connect(), 5000, "WELCOME")).authmethod, "anonymous");
  await c.close();
});

test("a bad token ends in 'closed' with the ABORT reason, and no reconnect", T, async () => {
  let asked = 0;
  const forged = mintToken({ sub: "mallory", role: "user", exp: Math.floor(Date.now() / 1000) + 60 }, "not-the-secret-not-the-secret-0123456789");
  const c = client({ getToken: async () => (asked++, forged) });
  const states = recordStates(c);
  const err = await withTimeout(
    c.connect().then(
      () => assert.fail("a forged token must not connect"),
      (e) => e,
    ),
    5000,
    "the refusal",
  );
  assert.equal(err.uri, "wamp.error.authentication_failed");
  assert.equal(err.closeCode, 4500);
  assert.equal(c.state, "closed");
  const closed = states.at(-1);
  assert.equal(closed.state, "closed");
  assert.equal(closed.info.code, 4500);
  assert.equal(closed.info.reason, "wamp.error.authentication_failed");
  assert.match(closed.info.message, /signature/);
  assert.equal(closed.info.willReconnect, false);
  assert.equal(c.errors.at(-1).uri, "wamp.error.authentication_failed");
  // No reconnect: nothing happens for a while, and the token was asked once.
  await sleep(500);
  assert.equal(c.state, "closed");
  assert.equal(asked, 1);
  assert.deepEqual(states.map((s) => s.state), ["connecting", "closed"]);
});

test("an expired token and an unknown role are refused the same way", T, async () => {
  for (const [token, uri] of [
    [tokenFor("alice", { seconds: -60 }), "wamp.error.authentication_failed"],
    [tokenFor("alice", { role: "nosuchrole" }), "wamp.error.not_authorized"],
  ]) {
    const c = client({ token });
    const info = nextState(c, "closed", 5000);
    c.connect();
    const closed = await info;
    assert.equal(closed.reason, uri);
    assert.equal(closed.code, 4500);
    assert.equal(closed.willReconnect, false);
  }
});

test("no anonymous sessions: no_auth_method, closed", T, async () => {
  const secured = await Gateway.start({ anonymous: false });
  try {
    const c = client({ url: secured.url });
    const err = await withTimeout(c.connect().catch((e) => e), 5000, "the refusal");
    assert.equal(err.uri, "wamp.error.no_auth_method");
    assert.equal(c.state, "closed");
    // The same gateway takes a token.
    const d = client({ url: secured.url, token: tokenFor("dave") });
    assert.equal((await withTimeout(d.connect(), 5000, "WELCOME")).authid, "dave");
    await d.close();
  } finally {
    await secured.stop();
  }
});

test("an unknown realm is final (close 1000)", T, async () => {
  const c = client({ realm: "no.such.realm" });
  const err = await withTimeout(c.connect().catch((e) => e), 5000, "the refusal");
  assert.equal(err.uri, "wamp.error.no_such_realm");
  assert.equal(c.state, "closed");
});

test("close() while connecting stops everything", T, async () => {
  const c = client();
  const states = recordStates(c);
  const connecting = c.connect();
  await c.close();
  const err = await withTimeout(connecting.catch((e) => e), 5000, "the rejection");
  assert.equal(err.code, "closed");
  assert.equal(c.state, "closed");
  await sleep(300);
  assert.equal(states.at(-1).state, "closed");
  assert.equal(states.at(-1).info.willReconnect, false);
  // And it can connect again afterwards.
  await withTimeout(c.connect(), 5000, "WELCOME after close()");
  assert.equal(c.state, "connected");
});

test("constructor errors are clear", T, () => {
  assert.throws(() => new Telegraphy({ url: "http://x/ws", WebSocket }), /ws:\/\/ or wss:\/\//);
  assert.throws(() => new Telegraphy({ url: "ws://x/ws" }), /WebSocket/);
  assert.throws(() => new Telegraphy({ url: "ws://x/ws", WebSocket, backoff: { initial: 0 } }), /backoff.initial/);
  assert.throws(() => new Telegraphy({ url: "ws://x/ws", WebSocket }).on("stat", () => {}), /unknown event "stat"/);
});

for (const [kind, message, code] of [
  ["an ABORT for an idle timeout", [3, { message: "idle for too long" }, "telegraphy.close.idle_timeout"], 4001],
  ["a GOODBYE from a draining node", [6, { message: "shutting down" }, "wamp.close.system_shutdown"], 1012],
]) {
  test(`${kind} whose close frame never comes still reconnects`, T, () => lateClose(message, code));
}

async function lateClose(leave, code) {
  // A server that says WELCOME, then `leave` on the first connection, and
  // never closes it (a close frame lost on the way).
  const { WebSocketServer } = await import("ws");
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "wamp.2.json" });
  await new Promise((resolve) => wss.once("listening", resolve));
  let connections = 0;
  wss.on("connection", (sock) => {
    const n = ++connections;
    sock.on("message", (data) => {
      if (JSON.parse(String(data))[0] !== 1) return;
      sock.send(JSON.stringify([2, 1000 + n, { authid: "a", authrole: "anonymous", authmethod: "anonymous", roles: { broker: {} } }]));
      if (n === 1) sock.send(JSON.stringify(leave));
    });
  });
  const c = new Telegraphy({ url: `ws://127.0.0.1:${wss.address().port}/ws`, WebSocket, backoff: { initial: 50, max: 100 } });
  const states = recordStates(c);
  try {
    await withTimeout(c.connect(), 5000, "WELCOME");
    const lost = await nextState(c, "disconnected", 5000);
    assert.equal(lost.willReconnect, true, `retried, as its close code ${code} says`);
    assert.equal(lost.code, code);
    assert.equal(lost.reason, leave[2]);
    await nextState(c, "connected", 5000);
    assert.equal(connections, 2);
    assert.ok(!states.some((s) => s.state === "closed"), JSON.stringify(states.map((s) => s.state)));
  } finally {
    await c.close();
    await new Promise((resolve) => wss.close(resolve));
    for (const client of wss.clients) client.terminate();
  }
}
