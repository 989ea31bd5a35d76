// AutobahnJS pub/sub interop against the Telegraphy gateway, for the json and
// msgpack serializers: WELCOME identity, match policies (exact/prefix/wildcard),
// acknowledge, exclude_me, exclude/eligible by session id, authid and authrole,
// disclose_me, unsubscribe, goodbye, and json <-> msgpack cross delivery.
// Negative checks are ordered: the excluded event is published first, then a
// marker the same session is eligible for, and the marker must arrive first.
'use strict';

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

let gw;
before(async () => { gw = await h.startGateway(); });
afterEach(() => h.closeAll());
after(async () => { await h.closeAll(); if (gw) await gw.stop(); });

const ARGS = [1, 'two', { three: 3.5 }, [true, false, null]];
const KWARGS = { text: 'grüße ✓', n: -42, nested: { list: [1, 2, 3] } };

// Publishes `excluded` (with `options`) and then an eligible marker from the
// same publisher; asserts `inbox`'s next event is the marker.
async function assertSkipped(pub, topic, options, inbox) {
  await h.publishAcked(pub, topic, ['excluded'], {}, options);
  await h.publishAcked(pub, topic, ['marker'], {}, { exclude_me: false });
  const ev = await inbox.next();
  assert.deepEqual(ev.args, ['marker'], `event published with ${JSON.stringify(options)} was delivered`);
}

for (const ser of Object.keys(h.SERIALIZERS)) {
  describe(`wamp.2.${ser}`, () => {
    const T = (name) => `com.interop.js.${ser}.${name}`;
    const sessions = (n) => Promise.all(Array.from({ length: n }, () => h.openSession(gw, ser)));

    test('WELCOME carries session id, anonymous authrole and distinct authids', async () => {
      const [a, b] = await sessions(2);
      for (const c of [a, b]) {
        assert.equal(c.details.transport.protocol, `wamp.2.${ser}`);
        assert.ok(Number.isSafeInteger(c.id) && c.id > 0, `session id ${c.id}`);
        assert.equal(c.authrole, 'anonymous');
        assert.equal(typeof c.authid, 'string');
        assert.ok(c.authid.length > 0);
      }
      assert.notEqual(a.id, b.id);
      assert.notEqual(a.authid, b.authid);
    });

    test('exact subscription receives args and kwargs', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('exact'), { match: 'exact' });
      const id = await h.publishAcked(pub, T('exact'), ARGS, KWARGS);
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ARGS);
      assert.deepEqual(ev.kwargs, KWARGS);
      assert.equal(ev.details.publication, id);
    });

    test('prefix subscription receives matching topics with details.topic', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('prefix'), { match: 'prefix' });
      await h.publishAcked(pub, T('other.x'), ['no match'], {});
      await h.publishAcked(pub, T('prefix.a.b'), ['p'], { k: 1 });
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ['p']);
      assert.deepEqual(ev.kwargs, { k: 1 });
      assert.equal(ev.details.topic, T('prefix.a.b'));
    });

    test('wildcard subscription receives matching topics with details.topic', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('wild..c'), { match: 'wildcard' });
      await h.publishAcked(pub, T('wild.b.d'), ['no match: last component'], {});
      await h.publishAcked(pub, T('wild.b.x.c'), ['no match: extra component'], {});
      await h.publishAcked(pub, T('wild.b.c'), ['w'], { k: 2 });
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ['w']);
      assert.deepEqual(ev.kwargs, { k: 2 });
      assert.equal(ev.details.topic, T('wild.b.c'));
    });

    test('acknowledge resolves with distinct publication ids', async () => {
      const [pub] = await sessions(1);
      const id1 = await h.publishAcked(pub, T('ack.nobody'), ['x'], {});
      const id2 = await h.publishAcked(pub, T('ack.nobody'), ['y'], {});
      for (const id of [id1, id2]) assert.ok(Number.isSafeInteger(id) && id > 0, `publication id ${id}`);
      assert.notEqual(id1, id2);
    });

    test('exclude_me defaults to true', async () => {
      const [pub, other] = await sessions(2);
      const { inbox: own } = await h.listen(pub, T('self'));
      const { inbox: others } = await h.listen(other, T('self'));
      await assertSkipped(pub, T('self'), {}, own);
      assert.deepEqual((await others.next()).args, ['excluded']);
    });

    test('exclude_me: false delivers to the publisher itself', async () => {
      const [pub] = await sessions(1);
      const { inbox } = await h.listen(pub, T('self.false'));
      await h.publishAcked(pub, T('self.false'), ['mine'], { v: 1 }, { exclude_me: false });
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ['mine']);
      assert.deepEqual(ev.kwargs, { v: 1 });
    });

    // Each case: options built from subscribers a (must not get it) and b (must get it).
    const blackWhite = {
      'exclude (session id)': (a, b) => ({ exclude: [a.id] }),
      'eligible (session id)': (a, b) => ({ eligible: [b.id] }),
      exclude_authid: (a, b) => ({ exclude_authid: [a.authid] }),
      eligible_authid: (a, b) => ({ eligible_authid: [b.authid] }),
    };
    for (const [name, build] of Object.entries(blackWhite)) {
      test(`${name} filters receivers`, async () => {
        const [a, b, pub] = await sessions(3);
        assert.notEqual(a.authid, b.authid);
        const topic = T(`bw.${name.split(' ')[0]}`);
        const { inbox: ina } = await h.listen(a, topic);
        const { inbox: inb } = await h.listen(b, topic);
        await assertSkipped(pub, topic, build(a, b), ina);
        assert.deepEqual((await inb.next()).args, ['excluded']);
        assert.deepEqual((await inb.next()).args, ['marker']);
      });
    }

    test('exclude_authrole: ["anonymous"] reaches nobody', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('role.exclude'));
      await assertSkipped(pub, T('role.exclude'), { exclude_authrole: ['anonymous'] }, inbox);
    });

    test('eligible_authrole admits "anonymous" and rejects other roles', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('role.eligible'));
      await h.publishAcked(pub, T('role.eligible'), ['in'], {}, { eligible_authrole: ['anonymous'] });
      assert.deepEqual((await inbox.next()).args, ['in']);
      await assertSkipped(pub, T('role.eligible'), { eligible_authrole: ['some.other.role'] }, inbox);
    });

    test('disclose_me reveals publisher id, authid and authrole', async () => {
      const [sub, pub] = await sessions(2);
      const { inbox } = await h.listen(sub, T('disclose'));
      await h.publishAcked(pub, T('disclose'), ['d'], {}, { disclose_me: true });
      const { details } = await inbox.next();
      assert.equal(details.publisher, pub.id);
      assert.equal(details.publisher_authid, pub.authid);
      assert.equal(details.publisher_authrole, 'anonymous');
    });

    test('unsubscribe stops delivery', async () => {
      const [gone, stays, pub] = await sessions(3);
      const goneInbox = new h.Inbox('unsubscribed session');
      const { subscription } = await h.listen(gone, T('unsub'), undefined, goneInbox);
      await h.listen(gone, T('unsub.marker'), undefined, goneInbox);
      const { inbox: staysInbox } = await h.listen(stays, T('unsub'));
      await h.withTimeout(gone.session.unsubscribe(subscription), h.WAIT_MS, 'UNSUBSCRIBED');
      await h.publishAcked(pub, T('unsub'), ['after unsubscribe'], {});
      assert.deepEqual((await staysInbox.next()).args, ['after unsubscribe']);
      await h.publishAcked(pub, T('unsub.marker'), ['marker'], {});
      // AutobahnJS aborts the session on an EVENT for an unknown subscription.
      const ev = await Promise.race([goneInbox.next(), gone.closed.then((c) =>
        assert.fail(`session closed before the marker arrived: ${JSON.stringify(c)}`))]);
      assert.equal(ev.tag, T('unsub.marker'), 'event delivered after unsubscribe');
    });

    test('leave: router answers GOODBYE and the connection closes', async () => {
      const [c] = await sessions(1);
      c.connection.close();
      const { details } = await h.withTimeout(c.closed, h.WAIT_MS, 'connection close after GOODBYE');
      assert.equal(details.reason, 'wamp.close.goodbye_and_out');
      assert.equal(details.will_retry, false);
    });
  });
}

describe('cross-serializer', () => {
  for (const [from, to] of [['json', 'msgpack'], ['msgpack', 'json']]) {
    test(`${from} publisher reaches ${to} subscriber`, async () => {
      const sub = await h.openSession(gw, to);
      const pub = await h.openSession(gw, from);
      const topic = `com.interop.js.cross.${from}`;
      const { inbox } = await h.listen(sub, topic);
      const id = await h.publishAcked(pub, topic, ARGS, KWARGS);
      const ev = await inbox.next();
      assert.deepEqual(ev.args, ARGS);
      assert.deepEqual(ev.kwargs, KWARGS);
      assert.equal(ev.details.publication, id);
    });
  }
});
