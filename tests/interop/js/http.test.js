// HTTP publish (POST /publish) interop: events reach AutobahnJS subscribers on
// both serializers with the returned publication id, the body's options
// filter receivers (ordered negative checks: the filtered POST is answered
// before the marker POST is sent), and bad keys / bodies are rejected.
'use strict';

const { describe, test, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('./lib/harness');

let gw;
before(async () => { gw = await h.startGateway(); });
afterEach(() => h.closeAll());
after(async () => { await h.closeAll(); if (gw) await gw.stop(); });

async function post(payload) {
  const res = await h.httpPublish(gw, payload);
  assert.equal(res.status, 200, `POST /publish ${JSON.stringify(payload)} -> ${res.status} ${JSON.stringify(res.body)}`);
  assert.ok(Number.isSafeInteger(res.body.id) && res.body.id > 0, `publication id ${JSON.stringify(res.body)}`);
  return res.body.id;
}

describe('POST /publish', () => {
  for (const ser of Object.keys(h.SERIALIZERS)) {
    test(`event reaches a wamp.2.${ser} subscriber`, async () => {
      const sub = await h.openSession(gw, ser);
      const topic = `com.interop.js.http.${ser}`;
      const { inbox } = await h.listen(sub, topic);
      const args = [1, 'two', { three: [3] }];
      const kwargs = { who: 'http', ok: true, ratio: 0.25 };
      const id = await post({ topic, args, kwargs });
      const ev = await inbox.next();
      assert.deepEqual(ev.args, args);
      assert.deepEqual(ev.kwargs, kwargs);
      assert.equal(ev.details.publication, id);
    });
  }

  test('publishing to a topic without subscribers returns an id', async () => {
    await post({ topic: 'com.interop.js.http.nobody', args: [] });
  });

  // Each case: options built from subscribers a (must not get it) and b (must get it).
  const cases = {
    exclude: (a, b) => ({ exclude: [a.id] }),
    eligible: (a, b) => ({ eligible: [b.id] }),
    exclude_authid: (a, b) => ({ exclude_authid: [a.authid] }),
    eligible_authid: (a, b) => ({ eligible_authid: [b.authid] }),
  };
  for (const [name, build] of Object.entries(cases)) {
    test(`options.${name} filters receivers`, async () => {
      const a = await h.openSession(gw, 'json');
      const b = await h.openSession(gw, 'msgpack');
      const topic = `com.interop.js.http.opt.${name}`;
      const { inbox: ina } = await h.listen(a, topic);
      const { inbox: inb } = await h.listen(b, topic);
      await post({ topic, args: ['excluded'], options: build(a, b) });
      await post({ topic, args: ['marker'] });
      assert.deepEqual((await inb.next()).args, ['excluded']);
      assert.deepEqual((await ina.next()).args, ['marker'], `HTTP event with options.${name} was delivered`);
    });
  }

  test('options.exclude_authrole ["anonymous"] reaches nobody', async () => {
    const a = await h.openSession(gw, 'json');
    const topic = 'com.interop.js.http.opt.exclude_authrole';
    const { inbox } = await h.listen(a, topic);
    await post({ topic, args: ['excluded'], options: { exclude_authrole: ['anonymous'] } });
    await post({ topic, args: ['marker'] });
    assert.deepEqual((await inbox.next()).args, ['marker']);
  });

  test('wrong or missing API key is rejected with 401/403 and publishes nothing', async () => {
    const sub = await h.openSession(gw, 'json');
    const topic = 'com.interop.js.http.auth';
    const { inbox } = await h.listen(sub, topic);
    for (const key of ['wrong-key', null]) {
      const res = await h.httpPublish(gw, { topic, args: ['unauthorized'] }, key);
      assert.ok([401, 403].includes(res.status), `key ${key} -> ${res.status}`);
    }
    await post({ topic, args: ['marker'] });
    assert.deepEqual((await inbox.next()).args, ['marker']);
  });

  test('malformed bodies are rejected with 400', async () => {
    for (const body of ['{not json', JSON.stringify({ args: [1] }), JSON.stringify({ topic: 'com.x', args: 'nope' })]) {
      const res = await h.httpPublish(gw, body);
      assert.equal(res.status, 400, `body ${body} -> ${res.status} ${JSON.stringify(res.body)}`);
    }
  });
});
