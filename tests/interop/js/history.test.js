// AutobahnJS, unmodified, against event retention and event history: PUBLISH
// retain / SUBSCRIBE get_retained (details.retained), and the meta procedure
// wamp.subscription.get_events (limit, reverse, after_publication), for the
// json and msgpack serializers.
'use strict';

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

let gw;
before(async () => { gw = await h.startGateway(); });
afterEach(() => h.closeAll());
after(async () => { await h.closeAll(); if (gw) await gw.stop(); });

for (const ser of Object.keys(h.SERIALIZERS)) {
  describe(`wamp.2.${ser}`, () => {
    test('WELCOME announces event_retention and event_history', async () => {
      const c = await h.openSession(gw, ser);
      const broker = c.details.roles.broker.features;
      assert.equal(broker.event_retention, true);
      assert.equal(broker.event_history, true);
    });

    test('get_retained delivers the newest retained event at once, marked retained', async () => {
      const topic = `com.interop.js.retained.${ser}`;
      const pub = await h.openSession(gw, ser);
      await h.publishAcked(pub, topic, ['old'], {}, { retain: true });
      const kept = await h.publishAcked(pub, topic, ['current'], {}, { retain: true });
      await h.publishAcked(pub, topic, ['not retained']);
      const late = await h.openSession(gw, ser);
      const { inbox } = await h.listen(late, topic, { get_retained: true });
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ['current']);
      assert.equal(ev.details.retained, true);
      assert.equal(ev.details.publication, kept);
    });

    test('get_events: the spec shape, positional limit, after_publication, reverse', async () => {
      const topic = `com.interop.history.js.${ser}`;
      const pub = await h.openSession(gw, ser);
      const reader = await h.openSession(gw, ser);
      const { subscription, inbox } = await h.listen(reader, topic);
      const ids = [];
      for (let n = 1; n <= 5; n++) ids.push(await h.publishAcked(pub, topic, [n], { kind: 'step' }));
      for (let n = 1; n <= 5; n++) assert.deepEqual((await inbox.next()).args, [n]);

      const events = await reader.session.call('wamp.subscription.get_events', [subscription.id]);
      assert.deepEqual(events.map((e) => e.args), [[1], [2], [3], [4], [5]]);
      assert.deepEqual(Object.keys(events[0]).sort(), ['args', 'details', 'kwargs', 'publication', 'subscription', 'timestamp']);
      assert.equal(events[0].publication, ids[0]);
      assert.equal(events[0].subscription, subscription.id);
      assert.deepEqual(events[0].kwargs, { kind: 'step' });

      const newest = await reader.session.call('wamp.subscription.get_events', [subscription.id, 2]);
      assert.deepEqual(newest.map((e) => e.args), [[4], [5]]);
      const after = await reader.session.call('wamp.subscription.get_events', [subscription.id], { after_publication: ids[2] });
      assert.deepEqual(after.map((e) => e.publication), ids.slice(3));
      const back = await reader.session.call('wamp.subscription.get_events', [subscription.id], { limit: 2, reverse: true });
      assert.deepEqual(back.map((e) => e.args), [[5], [4]]);
    });

    test('get_events refusals are WAMP errors', async () => {
      const c = await h.openSession(gw, ser);
      const { subscription } = await h.listen(c, `com.interop.history.js.refusals.${ser}`);
      await assert.rejects(c.session.call('wamp.subscription.get_events', [subscription.id], { limit: 10000000 }),
        (e) => e.error === 'wamp.error.invalid_argument');
      await assert.rejects(c.session.call('wamp.subscription.get_events', [12345]),
        (e) => e.error === 'wamp.error.no_such_subscription');
      await assert.rejects(c.session.call('com.example.add', [1, 2]),
        (e) => e.error === 'wamp.error.no_such_procedure');
    });
  });
}
