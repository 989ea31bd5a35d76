// Pure parts without a gateway: backoff, close codes, the JSON serializer,
// and the subscription registry's state machine driven by a fake host.

import { test } from "node:test";
import assert from "node:assert/strict";

import { Backoff, backoffDelay } from "../src/backoff.js";
import { CloseCode, shouldReconnect } from "../src/codes.js";
import { MSG, decode, encode, helloDetails } from "../src/wamp.js";
import { Registry } from "../src/registry.js";
import { TelegraphyError, wampError } from "../src/errors.js";

test("full-jitter backoff: random(0, min(max, initial * 2^attempt))", () => {
  const opts = { initial: 500, max: 10000 };
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.999999), 499);
  assert.equal(backoffDelay(3, opts, () => 0.5), 2000);
  assert.equal(backoffDelay(5, opts, () => 0.5), 5000); // 16000 capped at 10000
  assert.equal(backoffDelay(1000, opts, () => 0.5), 5000); // no overflow
  const b = new Backoff({ initial: 100, max: 1000 }, () => 0.999999);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [99, 199, 399, 799, 999]);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 99);
  // With Math.random the delays stay within their ceilings.
  const r = new Backoff({ initial: 10, max: 50 });
  for (let i = 0; i < 200; i++) {
    const ceiling = Math.min(50, 10 * 2 ** r.attempt);
    const d = r.next();
    assert.ok(d >= 0 && d < ceiling, `delay ${d} under ${ceiling}`);
  }
  assert.throws(() => new Backoff({ initial: -1 }), /initial/);
  assert.throws(() => new Backoff({ initial: 100, max: 50 }), /max/);
});

test("close codes: which ones reconnect", () => {
  for (const code of [1001, 1005, 1006, 1011, 1012, 1013, 1014, 4000, 4001, 4002, 4003, 4499]) {
    assert.equal(shouldReconnect(code), true, `${code} reconnects`);
  }
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 4500, 4501, 4999, 3000, null, undefined]) {
    assert.equal(shouldReconnect(code), false, `${code} does not reconnect`);
  }
  assert.equal(CloseCode.SERVICE_RESTART, 1012);
  assert.equal(CloseCode.TOKEN_EXPIRED, 4003);
  assert.equal(CloseCode.AUTH_FAILED, 4500);
});

test("JSON serializer: messages, binary values, bad frames", () => {
  const msg = [MSG.PUBLISH, 1, { acknowledge: true }, "com.x", [1, "a", new Uint8Array([0, 255])], { b: new Uint8Array([1]).buffer }];
  const text = encode(msg);
  assert.equal(text, '[16,1,{"acknowledge":true},"com.x",[1,"a","\\u0000AP8="],{"b":"\\u0000AQ=="}]');
  const back = decode(text);
  assert.deepEqual([...back[4][2]], [0, 255]);
  assert.deepEqual([...back[5].b], [1]);
  assert.throws(() => decode("{}"), /JSON array that starts with an integer/);
  assert.throws(() => decode('["x"]'), /integer code/);
  assert.throws(() => decode("not json"), SyntaxError);
  assert.throws(() => decode(new Uint8Array(2)), /text frame/);
  const hello = helloDetails(["ticket"], "agent/1");
  assert.deepEqual(hello.authmethods, ["ticket"]);
  assert.equal(hello.roles.subscriber.features.pattern_based_subscription, true);
  assert.equal(hello.roles.publisher.features.publisher_exclusion, true);
});

test("wampError carries the URI and the gateway's message", () => {
  const err = wampError("wamp.error.not_authorized", { message: "your role may not subscribe" }, ["your role may not subscribe"]);
  assert.ok(err instanceof TelegraphyError);
  assert.equal(err.uri, "wamp.error.not_authorized");
  assert.equal(err.message, "wamp.error.not_authorized: your role may not subscribe");
  assert.equal(wampError("wamp.error.x").message, "wamp.error.x");
});

/** A fake host whose requests the test answers by hand. */
function fakeHost() {
  const host = {
    sessionOpen: false,
    sent: [], // { message, resolve, reject }
    subscribed: [],
    reports: [],
    request(build, onReply) {
      return new Promise((resolve, reject) =>
        host.sent.push({ message: build(host.sent.length + 1), resolve: (v) => (onReply?.(v), resolve(v)), reject }),
      );
    },
    report(err) {
      host.reports.push(err);
    },
  };
  host.subscribed = [];
  const registryHost = {
    get sessionOpen() {
      return host.sessionOpen;
    },
    request: (b, onReply) => host.request(b, onReply),
    subscribed: (topic, info) => host.subscribed.push([topic, info]),
    report: (err) => host.report(err),
  };
  return { host, registry: new Registry(registryHost) };
}

const tick = () => new Promise((r) => setImmediate(r));
const listener = (persistent = false) => ({ persistent, events: [], onEvent(...a) { this.events.push(a); }, onError(e) { this.error = e; } });

test("registry: one SUBSCRIBE per (topic, match), shared by listeners, resubscribed per session", async () => {
  const { host, registry } = fakeHost();
  const a = listener();
  const b = listener(true);
  const pa = registry.add("com.t", "exact", a);
  const pb = registry.add("com.t", "exact", b);
  registry.add("com.t", "prefix", listener(true));
  assert.equal(host.sent.length, 0, "nothing is sent without a session");
  host.sessionOpen = true;
  registry.sessionOpened();
  assert.deepEqual(host.sent.map((s) => s.message), [
    [MSG.SUBSCRIBE, 1, { _position: true }, "com.t"],
    [MSG.SUBSCRIBE, 2, { match: "prefix" }, "com.t"],
  ]);
  host.sent[0].resolve(11);
  host.sent[1].resolve(12);
  await Promise.all([pa, pb]);
  assert.deepEqual(host.subscribed.map(([t, i]) => [t, i.match, i.resubscribed]), [["com.t", "exact", false], ["com.t", "prefix", false]]);
  registry.dispatch(11, 99, {}, [1], { k: 1 });
  assert.deepEqual(a.events[0], [[1], { k: 1 }, { topic: "com.t", publication: 99, subscription: 11 }]);
  assert.equal(b.events.length, 1);

  // A new session: the same records are subscribed again, marked as resubscriptions.
  host.sessionOpen = false;
  registry.sessionClosed(new TelegraphyError("lost", { code: "disconnected" }));
  registry.dispatch(11, 100, {}, [2]);
  assert.equal(a.events.length, 1, "no dispatch for ids of the old session");
  host.sessionOpen = true;
  registry.sessionOpened();
  assert.equal(host.sent.length, 4);
  // The exact subscription resumes from the last publication it got; the
  // prefix one cannot.
  assert.deepEqual(host.sent[2].message, [MSG.SUBSCRIBE, 3, { _after_publication: 99 }, "com.t"]);
  assert.deepEqual(host.sent[3].message, [MSG.SUBSCRIBE, 4, { match: "prefix" }, "com.t"]);
  const before = host.subscribed.length;
  host.sent[2].resolve(21);
  await tick();
  assert.equal(host.subscribed.length, before, "a resume is reported when its marker arrives");
  registry.dispatch(21, 100, {}, [2]); // a missed event, replayed
  registry.dispatch(21, 100, { _recovered: true }, []); // the marker: not an event
  assert.deepEqual(host.subscribed.at(-1)[1], { match: "exact", resubscribed: true, resumed: true });
  assert.deepEqual(a.events.map((e) => e[0]), [[1], [2]], "the marker never reaches listeners");
  registry.dispatch(21, 101, {}, [3]);
  assert.equal(a.events.length, 3);
  // The next reconnect resumes from the newest publication.
  host.sessionOpen = false;
  registry.sessionClosed(new TelegraphyError("lost", { code: "disconnected" }));
  host.sessionOpen = true;
  registry.sessionOpened();
  assert.deepEqual(host.sent[4].message, [MSG.SUBSCRIBE, 5, { _after_publication: 101 }, "com.t"]);
  host.sent[4].resolve(21);
  await tick();
  registry.dispatch(21, 101, { _recovered: false }, []);
  assert.deepEqual(host.subscribed.at(-1)[1], { match: "exact", resubscribed: true, resumed: false });
  // A position handed out by the gateway is where the next resume starts; never an event.
  registry.dispatch(21, 4242, { _position: true }, []);
  assert.equal(a.events.length, 3);
  host.sessionOpen = false;
  registry.sessionClosed(new TelegraphyError("lost", { code: "disconnected" }));
  host.sessionOpen = true;
  registry.sessionOpened();
  assert.deepEqual(host.sent.at(-2).message.slice(2), [{ _after_publication: 4242 }, "com.t"]);
});

test("registry: leaving while subscribing, coming back while unsubscribing", async () => {
  const { host, registry } = fakeHost();
  host.sessionOpen = true;
  const a = listener(true);
  const pa = registry.add("com.u", "exact", a).catch((e) => e);
  assert.equal(host.sent.length, 1);
  const left = registry.remove(a); // SUBSCRIBE still on the wire
  assert.equal((await pa).code, "unsubscribed");
  host.sent[0].resolve(5);
  await tick();
  assert.deepEqual(host.sent[1].message, [MSG.UNSUBSCRIBE, 2, 5], "unsubscribed as soon as SUBSCRIBED arrives");
  const b = listener(true);
  const pb = registry.add("com.u", "exact", b); // while UNSUBSCRIBE is on the wire
  assert.equal(host.sent.length, 2, "no SUBSCRIBE until UNSUBSCRIBED");
  host.sent[1].resolve();
  await left;
  await tick();
  assert.deepEqual(host.sent[2].message, [MSG.SUBSCRIBE, 3, { _position: true }, "com.u"]);
  host.sent[2].resolve(6);
  await pb;
  registry.dispatch(6, 1, {}, []);
  assert.equal(b.events.length, 1);
  assert.equal(a.events.length, 0);
});

test("registry: a refused SUBSCRIBE drops its listeners; disconnect drops waiting non-persistent ones", async () => {
  const { host, registry } = fakeHost();
  host.sessionOpen = true;
  const a = listener(false);
  const pa = registry.add("com.x", "exact", a).catch((e) => e);
  host.sent[0].reject(wampError("wamp.error.not_authorized", { message: "no" }));
  const err = await pa;
  assert.equal(err.uri, "wamp.error.not_authorized");
  assert.equal(err.topic, "com.x");
  assert.equal(registry.records.size, 0);
  assert.equal(host.reports.length, 0, "the promise carries it: no error event for a first subscribeTopic");

  const channel = listener(true);
  registry.add("com.y", "exact", channel).catch(() => {});
  host.sent[1].reject(wampError("wamp.error.invalid_uri"));
  await tick();
  assert.equal(channel.error.uri, "wamp.error.invalid_uri");
  assert.equal(host.reports[0].uri, "wamp.error.invalid_uri", "channels report through the error event");

  const plain = listener(false);
  const persistent = listener(true);
  const pp = registry.add("com.z", "exact", plain).catch((e) => e);
  registry.add("com.z", "exact", persistent);
  host.sessionOpen = false;
  registry.sessionClosed(new TelegraphyError("lost", { code: "disconnected" }));
  assert.equal((await pp).code, "disconnected");
  host.sessionOpen = true;
  registry.sessionOpened();
  host.sent.at(-1).resolve(3);
  await tick();
  registry.dispatch(3, 1, {}, []);
  assert.equal(persistent.events.length, 1);
  assert.equal(plain.events.length, 0);
});
