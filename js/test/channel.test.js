// Model-event channels against the real gateway: events published over HTTP
// (as the Django app does), filter/exclude views, onCreate/onUpdate/onDelete/onAny.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { Telegraphy } from "../src/telegraphy.js";
import { Gateway, WebSocket, exitGuard, inbox, modelEvent, withTimeout, T } from "../testing/gateway.js";

exitGuard();

const TOPIC = "telegraphy.shop.order";
let gw;
let client;
const errors = [];

before(async () => {
  gw = await Gateway.start();
  client = new Telegraphy({ url: gw.url, WebSocket });
  client.on("error", (err) => errors.push(err));
  await withTimeout(client.connect(), 5000, "WELCOME");
});

after(async () => {
  await client?.close();
  await gw?.stop();
});

/** Publishes a model event over HTTP, as the Django app does. */
function emit(type, data, topic = TOPIC) {
  return gw.publish(topic, [modelEvent(type, data, topic)]);
}

test("onCreate / onUpdate / onDelete / onAny get (data, event, details)", T, async () => {
  const channel = client.subscribe(TOPIC);
  assert.equal(channel.name, TOPIC);
  await withTimeout(channel.ready, 5000, "the channel subscription");
  const created = inbox();
  const updated = inbox();
  const deleted = inbox();
  const any = inbox();
  assert.equal(channel.onCreate(created), channel, "handlers chain");
  channel.onUpdate(updated).onDelete(deleted).onAny(any);

  const id = await emit("create", { id: 1, status: "open" });
  const [data, event, details] = await created.next(5000, "onCreate");
  assert.deepEqual(data, { id: 1, status: "open" });
  assert.equal(event.name, TOPIC);
  assert.equal(event.meta.event_type, "create");
  assert.equal(event.meta.verbose_name, "order");
  assert.ok(!Number.isNaN(Date.parse(event.meta.timestamp)));
  assert.equal(details.topic, TOPIC);
  assert.equal(details.publication, id);

  await emit("update", { id: 1, status: "paid" });
  assert.deepEqual((await updated.next(5000, "onUpdate"))[0], { id: 1, status: "paid" });
  await emit("delete", { id: 1, status: "paid" });
  assert.deepEqual((await deleted.next(5000, "onDelete"))[0], { id: 1, status: "paid" });

  const types = [];
  for (let i = 0; i < 3; i++) types.push((await any.next(5000, "onAny"))[1].meta.event_type);
  assert.deepEqual(types, ["create", "update", "delete"]);
  assert.equal(created.items.length + updated.items.length + deleted.items.length, 0, "each handler once");
  await channel.unsubscribe();
  await emit("create", { id: 2 });
  assert.ok(await any.quiet(300), "nothing after unsubscribe()");
});

test("filter() and exclude() are immutable views sharing one subscription", T, async () => {
  const orders = client.subscribe(TOPIC);
  const all = inbox();
  const open = inbox();
  const bigOpen = inbox();
  const notMine = inbox();
  const openView = orders.filter({ status: "open" });
  assert.notEqual(openView, orders, "filter() returns a new view");
  orders.onAny(all);
  openView.onCreate(open);
  openView.filter({ total__gte: 10 }).onCreate(bigOpen);
  orders.exclude({ owner__id__in: [3, 4] }).onAny(notMine);
  await withTimeout(orders.ready, 5000, "subscription");

  const rows = [
    { id: 1, status: "open", total: 5, owner: { id: 1, name: "Ann" } },
    { id: 2, status: "open", total: "12.50", owner: { id: 3, name: "Bob" } },
    { id: 3, status: "closed", total: 99, owner: { id: 4, name: "Cid" } },
    { id: 4, status: "open", total: 10, owner: null },
  ];
  for (const row of rows) await emit("create", row);
  const ids = async (box, n) => {
    const out = [];
    for (let i = 0; i < n; i++) out.push((await box.next(5000, "an event"))[0].id);
    return out;
  };
  assert.deepEqual(await ids(all, 4), [1, 2, 3, 4], "the unfiltered channel is unchanged by its views");
  assert.deepEqual(await ids(open, 3), [1, 2, 4]);
  assert.deepEqual(await ids(bigOpen, 2), [2, 4], "12.50 as a Decimal string compares as a number");
  assert.deepEqual(await ids(notMine, 2), [1, 4]);
  assert.ok(await all.quiet(200));
  assert.equal(open.items.length + bigOpen.items.length + notMine.items.length, 0);

  // An update to a filtered view's handler: onCreate views ignore updates.
  await emit("update", { id: 1, status: "open", total: 50, owner: { id: 1 } });
  assert.equal((await all.next())[1].meta.event_type, "update");
  assert.ok(await bigOpen.quiet(200));
  await openView.unsubscribe(); // ends the whole subscribe() call
  await emit("create", { id: 5, status: "open" });
  assert.ok(await all.quiet(300));
});

test("a function filter and nested lookups", T, async () => {
  const channel = client.subscribe(TOPIC).filter({ owner__name__istartswith: "an" }).filter((data, event) => event.meta.event_type !== "delete" && data.id % 2 === 1);
  const got = inbox();
  channel.onAny(got);
  await withTimeout(channel.ready, 5000, "subscription");
  await emit("create", { id: 1, owner: { name: "Anna" } });
  await emit("create", { id: 3, owner: { name: "Bob" } });
  await emit("create", { id: 4, owner: { name: "Andy" } });
  await emit("delete", { id: 5, owner: { name: "Andy" } });
  await emit("update", { id: 7, owner: { name: "andré" } });
  assert.deepEqual((await got.next())[0].id, 1);
  assert.deepEqual((await got.next())[0].id, 7);
  assert.ok(await got.quiet(300));
  await channel.unsubscribe();
});

test("unknown lookups throw at filter() time", T, () => {
  const channel = client.subscribe("telegraphy.shop.lookup_errors");
  assert.throws(() => channel.filter({ total__gtee: 1 }), /filter\(\): unknown lookup `gtee`.*did you mean "gte"/);
  assert.throws(() => channel.exclude({ created__year: 2024 }), /exclude\(\): unknown lookup `year`.*does not support/);
  assert.throws(() => channel.filter({ id__in: 3 }), /"in" needs an array/);
  assert.throws(() => channel.filter("status=open"), /take an object of lookups/);
  assert.throws(() => channel.onCreate("not a function"), /callback must be a function/);
  channel.unsubscribe();
});

test("a prefix channel gets every model of an app; a plain payload is reported", T, async () => {
  const app = client.subscribe("telegraphy.shop.", { match: "prefix" });
  const got = inbox();
  app.onAny(got);
  await withTimeout(app.ready, 5000, "subscription");
  await emit("create", { id: 1 }, "telegraphy.shop.customer");
  const [, event, details] = await got.next();
  assert.equal(event.name, "telegraphy.shop.customer");
  assert.equal(details.topic, "telegraphy.shop.customer");

  const before = errors.length;
  await gw.publish("telegraphy.shop.raw", ["not a model event"]);
  await withTimeout(
    (async () => {
      while (errors.length === before) await new Promise((r) => setTimeout(r, 20));
    })(),
    5000,
    "the error event",
  );
  assert.match(errors.at(-1).message, /not a model event/);
  assert.equal(errors.at(-1).topic, "telegraphy.shop.raw");
  assert.ok(await got.quiet(200));
  await app.unsubscribe();
});

test("a refused channel subscription is reported (err.uri) and its ready promise rejects", T, async () => {
  const c = new Telegraphy({ url: gw.url, WebSocket });
  try {
    const errs = [];
    c.on("error", (e) => errs.push(e));
    await withTimeout(c.connect(), 5000, "WELCOME");
    const channel = c.subscribe("bad..topic");
    const err = await withTimeout(channel.ready.catch((e) => e), 5000, "the refusal");
    assert.equal(err.uri, "wamp.error.invalid_uri");
    assert.equal(errs[0]?.uri, "wamp.error.invalid_uri");
    assert.equal(errs[0]?.topic, "bad..topic");
  } finally {
    await c.close();
  }
});
