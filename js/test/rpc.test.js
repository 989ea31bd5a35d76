// Remote procedure calls with the client on both sides, against the real
// gateway: call() and register(), results (one value, CallResult), errors
// with their URI and payload, progressive results (onProgress), timeouts,
// AbortSignal → CANCEL → the handler's signal, caller disclosure, pattern
// and shared registrations, registrations restored after a reconnect, and
// argument checks.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { CallResult, Telegraphy, TelegraphyError } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, withTimeout, T } from "../testing/gateway.js";

exitGuard();

let gw;
const clients = [];
const errors = [];

function newClient(options = {}) {
  const c = new Telegraphy({ url: gw.url, WebSocket, backoff: { initial: 50, max: 200 }, ...options });
  c.on("error", (err) => errors.push(err));
  clients.push(c);
  return c;
}

async function pair() {
  const callee = newClient();
  const caller = newClient();
  await withTimeout(Promise.all([callee.connect(), caller.connect()]), 5000, "two sessions");
  return { callee, caller };
}

async function rejection(promise, what) {
  try {
    const value = await withTimeout(promise, 5000, what);
    assert.fail(`${what}: expected a rejection, got ${JSON.stringify(value)}`);
  } catch (err) {
    if (err.code === "ERR_ASSERTION") throw err;
    return err;
  }
}

before(async () => {
  gw = await Gateway.start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await gw?.stop();
});

test("call() resolves with the callee's value, or a CallResult for several", T, async () => {
  const { callee, caller } = await pair();
  await callee.register("com.math.add", ([a, b]) => a + b);
  assert.equal(await caller.call("com.math.add", [2, 3]), 5);
  await callee.register("com.math.divmod", ([a, b]) => new CallResult([Math.floor(a / b), a % b], { exact: a % b === 0 }));
  const res = await caller.call("com.math.divmod", [7, 2]);
  assert.ok(res instanceof CallResult);
  assert.deepEqual([res.args, res.kwargs], [[3, 1], { exact: false }]);
  await callee.register("com.math.nothing", () => undefined);
  assert.equal(await caller.call("com.math.nothing"), undefined);
  await callee.register("com.math.kw", (args, kwargs) => kwargs.x * 2);
  assert.equal(await caller.call("com.math.kw", [], { x: 21 }), 42);
});

test("errors carry their URI, args and kwargs; unexpected throws become wamp.error.runtime_error", T, async () => {
  const { callee, caller } = await pair();
  await callee.register("com.shop.buy", () => {
    throw new TelegraphyError("out of stock", { uri: "com.shop.error.out_of_stock", args: ["apple"], kwargs: { left: 0 } });
  });
  let err = await rejection(caller.call("com.shop.buy"), "failing call");
  assert.equal(err.uri, "com.shop.error.out_of_stock");
  assert.deepEqual([err.args, err.kwargs], [["apple"], { left: 0 }]);
  await callee.register("com.shop.crash", () => {
    throw new Error("boom");
  });
  err = await rejection(caller.call("com.shop.crash"), "crashing call");
  assert.equal(err.uri, "wamp.error.runtime_error");
  assert.deepEqual(err.args, ["boom"]);
  err = await rejection(caller.call("com.shop.nobody"), "call of nobody");
  assert.equal(err.uri, "wamp.error.no_such_procedure");
});

test("progressive results reach onProgress before the final value", T, async () => {
  const { callee, caller } = await pair();
  await callee.register("com.report.build", async (args, kwargs, details) => {
    assert.equal(typeof details.progress, "function");
    for (const pct of [25, 50, 75]) details.progress([pct]);
    return "done";
  });
  const seen = [];
  const value = await caller.call("com.report.build", [], {}, { onProgress: (args) => seen.push(args[0]) });
  assert.equal(value, "done");
  assert.deepEqual(seen, [25, 50, 75]);
});

test("a timeout fails the call with wamp.error.timeout and aborts the handler's signal", T, async () => {
  const { callee, caller } = await pair();
  let aborted;
  const abortedP = new Promise((r) => { aborted = r; });
  await callee.register("com.slow.never", (args, kwargs, details) => new Promise((resolve, reject) => {
    details.signal.addEventListener("abort", () => { aborted(details.signal.reason); reject(details.signal.reason); });
  }));
  const started = Date.now();
  const err = await rejection(caller.call("com.slow.never", [], {}, { timeout: 300 }), "call with timeout");
  assert.equal(err.uri, "wamp.error.timeout");
  assert.ok(Date.now() - started >= 290);
  const reason = await withTimeout(abortedP, 5000, "the handler's signal");
  assert.equal(reason.uri, "wamp.error.canceled");
});

test("an AbortSignal cancels the call and interrupts the handler", T, async () => {
  const { callee, caller } = await pair();
  let started;
  const startedP = new Promise((r) => { started = r; });
  let interrupted;
  const interruptedP = new Promise((r) => { interrupted = r; });
  await callee.register("com.slow.job", (args, kwargs, details) => new Promise(() => {
    details.signal.addEventListener("abort", () => interrupted(true));
    started();
  }));
  const controller = new AbortController();
  const pending = caller.call("com.slow.job", [], {}, { signal: controller.signal });
  await withTimeout(startedP, 5000, "the invocation");
  controller.abort();
  const err = await rejection(pending, "canceled call");
  assert.equal(err.uri, "wamp.error.canceled");
  assert.equal(await withTimeout(interruptedP, 5000, "the interrupt"), true);
  // An already aborted signal never sends the call.
  const done = new AbortController();
  done.abort();
  assert.equal((await rejection(caller.call("com.slow.job", [], {}, { signal: done.signal }), "pre-aborted")).code, "canceled");
});

test("discloseMe tells the handler who calls; pattern registrations see the procedure", T, async () => {
  const { callee, caller } = await pair();
  await callee.register("com.who.", (args, kwargs, d) => new CallResult([d.procedure, d.caller ?? null, d.callerAuthid ?? null]), { match: "prefix" });
  const disclosed = await caller.call("com.who.am.i", [], {}, { discloseMe: true });
  assert.deepEqual(disclosed.args, ["com.who.am.i", caller.sessionId, caller.session.authid]);
  const hidden = await caller.call("com.who.else");
  assert.deepEqual(hidden.args, ["com.who.else", null, null]);
});

test("shared registrations: roundrobin between two clients", T, async () => {
  const a = newClient();
  const b = newClient();
  const caller = newClient();
  await withTimeout(Promise.all([a.connect(), b.connect(), caller.connect()]), 5000, "three sessions");
  const ra = await a.register("com.pool.work", () => "a", { invoke: "roundrobin" });
  const rb = await b.register("com.pool.work", () => "b", { invoke: "roundrobin" });
  assert.equal(ra.id, rb.id);
  const got = [];
  for (let i = 0; i < 4; i++) got.push(await caller.call("com.pool.work"));
  assert.deepEqual(got, ["a", "b", "a", "b"]);
  const err = await rejection(caller.register("com.pool.work", () => "c"), "a single registration of a shared procedure");
  assert.equal(err.uri, "wamp.error.procedure_already_exists");
  await ra.unregister();
  assert.deepEqual([await caller.call("com.pool.work"), await caller.call("com.pool.work")], ["b", "b"]);
});

test("registrations come back after the gateway restarts", T, async () => {
  const own = await Gateway.start();
  try {
    const callee = new Telegraphy({ url: own.url, WebSocket, backoff: { initial: 50, max: 200 } });
    const caller = new Telegraphy({ url: own.url, WebSocket, backoff: { initial: 50, max: 200 } });
    clients.push(callee, caller);
    await withTimeout(Promise.all([callee.connect(), caller.connect()]), 5000, "two sessions");
    const registration = await callee.register("com.restart.echo", ([x]) => x);
    const before = registration.id;
    assert.equal(await caller.call("com.restart.echo", ["before"]), "before");
    const reconnected = (c) => new Promise((resolve) => {
      const off = c.on("state", (state, info) => { if (state === "connected" && info.reconnected) { off(); resolve(); } });
    });
    const both = Promise.all([reconnected(callee), reconnected(caller)]);
    await own.kill();
    await own.start();
    await withTimeout(both, 15000, "both reconnected");
    // The REGISTER after WELCOME may still be on its way: retry the call briefly.
    let value;
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      try {
        value = await caller.call("com.restart.echo", ["after"]);
        break;
      } catch (err) {
        if (err.uri !== "wamp.error.no_such_procedure") throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.equal(value, "after");
    assert.notEqual(registration.id, null);
    assert.notEqual(registration.id, before, "a new session gives a new registration id");
  } finally {
    await own.stop();
  }
});

test("arguments are checked before anything is sent", T, async () => {
  const c = newClient();
  await c.connect();
  await assert.rejects(c.call(""), TypeError);
  await assert.rejects(c.call("a.b", "not an array"), TypeError);
  await assert.rejects(c.call("a.b", [], {}, { timeout: -1 }), TypeError);
  await assert.rejects(c.register("a.b", "not a function"), TypeError);
  await assert.rejects(c.register("a.b", () => 1, { invoke: "everyone" }), TypeError);
  await assert.rejects(c.register("a.b", () => 1, { match: "regex" }), TypeError);
  const offline = new Telegraphy({ url: gw.url, WebSocket });
  assert.equal((await rejection(offline.call("a.b"), "call before connect")).code, "not_connected");
});
