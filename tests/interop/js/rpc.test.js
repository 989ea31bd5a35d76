// AutobahnJS as caller and callee (RPC) against the Telegraphy gateway, for
// the json and msgpack serializers: results with args and kwargs, the
// callee's errors (URI, args, kwargs), progressive results, caller
// identification, pattern-based registrations (details.procedure), shared
// registrations (roundrobin), call timeouts, cancel, no_such_procedure,
// unregister, and a callee whose session ends mid-call. AutobahnJS does not
// announce call_canceling as a callee, so a cancel is a `skip` for it.
'use strict';

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const autobahn = require('autobahn');
const h = require('./lib/harness');

let gw;
before(async () => { gw = await h.startGateway(); });
afterEach(() => h.closeAll());
after(async () => { await h.closeAll(); if (gw) await gw.stop(); });

const ARGS = [1, 'two', { three: 3.5 }, [true, false, null]];
const KWARGS = { text: 'grüße ✓', n: -42, nested: { list: [1, 2, 3] } };

// Resolves with the call's rejection (fails the test if the call succeeds).
async function rejection(promise, what) {
  try {
    const res = await h.withTimeout(Promise.resolve(promise), h.WAIT_MS, what);
    assert.fail(`${what}: expected an error, got ${JSON.stringify(res)}`);
  } catch (e) {
    if (e.code === 'ERR_ASSERTION') throw e;
    return e;
  }
}

for (const ser of Object.keys(h.SERIALIZERS)) {
  describe(`wamp.2.${ser}`, () => {
    const P = (name) => `com.interop.js.rpc.${ser}.${name}`;
    const sessions = (n) => Promise.all(Array.from({ length: n }, () => h.openSession(gw, ser)));
    const call = (c, proc, args, kwargs, options) =>
      h.withTimeout(c.session.call(proc, args, kwargs, options), h.WAIT_MS, `call ${proc}`);

    test('WELCOME announces the dealer role', async () => {
      const [c] = await sessions(1);
      const features = c.details.roles.dealer.features;
      for (const f of ['progressive_call_results', 'call_canceling', 'call_timeout', 'caller_identification',
        'shared_registration', 'pattern_based_registration', 'registration_revocation']) {
        assert.equal(features[f], true, f);
      }
    });

    test('a call returns the callee result with args and kwargs', async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('echo'), (args, kwargs) => new autobahn.Result(args, kwargs));
      const res = await call(caller, P('echo'), ARGS, KWARGS);
      assert.deepEqual(res.args, ARGS);
      assert.deepEqual(res.kwargs, KWARGS);
      await callee.session.register(P('add'), (args) => args[0] + args[1]);
      assert.equal(await call(caller, P('add'), [2, 3]), 5);
    });

    test("the callee's error reaches the caller with its URI, args and kwargs", async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('fail'), () => {
        throw new autobahn.Error('com.interop.error.out_of_stock', ['no more apples'], { sku: 'apple' });
      });
      const e = await rejection(caller.session.call(P('fail')), 'failing call');
      assert.equal(e.error, 'com.interop.error.out_of_stock');
      assert.deepEqual(e.args, ['no more apples']);
      assert.deepEqual(e.kwargs, { sku: 'apple' });
    });

    test('progressive results reach the caller before the final one', async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('progress'), async (args, kwargs, details) => {
        assert.ok(details.progress, 'the caller asked for progress: the callee gets a progress function');
        for (const pct of [25, 50, 75]) details.progress([pct]);
        return 'done';
      });
      const seen = [];
      const final = await h.withTimeout(
        caller.session.call(P('progress'), [], {}, { receive_progress: true }).then((r) => r, null, (p) => seen.push(p)),
        h.WAIT_MS, 'progressive call');
      assert.equal(final, 'done');
      assert.deepEqual(seen, [25, 50, 75]);
    });

    test('disclose_me tells the callee who calls', async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('whoami'), (args, kwargs, details) =>
        [details.caller ?? null, details.caller_authid ?? null, details.caller_authrole ?? null]);
      const [id, authid, authrole] = await call(caller, P('whoami'), [], {}, { disclose_me: true });
      assert.deepEqual([id, authid, authrole], [caller.id, caller.authid, 'anonymous']);
      const [undisclosed] = await call(caller, P('whoami'));
      assert.equal(undisclosed, null, 'not disclosed unless asked');
    });

    test('a prefix registration gets the real procedure in details.procedure', async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('shop.'), (args, kwargs, details) => details.procedure, { match: 'prefix' });
      await callee.session.register(P('shop.cart.add'), () => 'exact');
      assert.equal(await call(caller, P('shop.cart.add')), 'exact', 'an exact registration wins');
      assert.equal(await call(caller, P('shop.cart.remove')), P('shop.cart.remove'));
    });

    test('a shared roundrobin registration alternates between callees', async () => {
      const [a, b, caller] = await sessions(3);
      const ra = await a.session.register(P('pool'), () => 'a', { invoke: 'roundrobin' });
      const rb = await b.session.register(P('pool'), () => 'b', { invoke: 'roundrobin' });
      assert.equal(ra.id, rb.id, 'one shared registration');
      const got = [];
      for (let i = 0; i < 4; i++) got.push(await call(caller, P('pool')));
      assert.deepEqual(got, ['a', 'b', 'a', 'b']);
    });

    test('a call times out with wamp.error.timeout', async () => {
      const [callee, caller] = await sessions(2);
      await callee.session.register(P('never'), () => new Promise(() => {}));
      const started = Date.now();
      const e = await rejection(caller.session.call(P('never'), [], {}, { timeout: 300 }), 'call with timeout');
      assert.equal(e.error, 'wamp.error.timeout');
      assert.ok(Date.now() - started >= 290, 'not before the timeout');
    });

    test('cancel with mode kill fails the call with wamp.error.canceled', async () => {
      const [callee, caller] = await sessions(2);
      let invoked;
      const invokedP = new Promise((r) => { invoked = r; });
      await callee.session.register(P('slow'), () => { invoked(); return new Promise(() => {}); });
      const pending = caller.session.call(P('slow'));
      await h.withTimeout(invokedP, h.WAIT_MS, 'the invocation');
      pending.cancel({ mode: 'kill' });
      const e = await rejection(pending, 'canceled call');
      assert.equal(e.error, 'wamp.error.canceled');
    });

    test('no_such_procedure, and unregister removes the procedure', async () => {
      const [callee, caller] = await sessions(2);
      let e = await rejection(caller.session.call(P('nobody')), 'call nobody');
      assert.equal(e.error, 'wamp.error.no_such_procedure');
      const reg = await callee.session.register(P('temp'), () => 1);
      assert.equal(await call(caller, P('temp')), 1);
      await h.withTimeout(callee.session.unregister(reg), h.WAIT_MS, 'unregister');
      e = await rejection(caller.session.call(P('temp')), 'call after unregister');
      assert.equal(e.error, 'wamp.error.no_such_procedure');
    });

    test("a callee's session ending fails its pending calls", async () => {
      const [callee, caller] = await sessions(2);
      let invoked;
      const invokedP = new Promise((r) => { invoked = r; });
      await callee.session.register(P('doomed'), () => { invoked(); return new Promise(() => {}); });
      const pending = caller.session.call(P('doomed'));
      await h.withTimeout(invokedP, h.WAIT_MS, 'the invocation');
      callee.connection.close();
      const e = await rejection(pending, 'call whose callee left');
      assert.equal(e.error, 'wamp.error.canceled');
      assert.match(e.args[0], /callee/);
    });
  });
}

test('a msgpack callee serves a json caller', async () => {
  const callee = await h.openSession(gw, 'msgpack');
  const caller = await h.openSession(gw, 'json');
  await callee.session.register('com.interop.js.rpc.cross', (args, kwargs) => new autobahn.Result(args, kwargs));
  const res = await h.withTimeout(caller.session.call('com.interop.js.rpc.cross', ARGS, KWARGS), h.WAIT_MS, 'cross call');
  assert.deepEqual(res.args, ARGS);
  assert.deepEqual(res.kwargs, KWARGS);
});
