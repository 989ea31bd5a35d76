// An AutobahnJS caller driven over stdin/stdout, for suites in another
// language (tests/interop/python/test_rpc_cluster.py puts an AutobahnPython
// callee on one gateway node and this caller on another).
//
//   node caller.js WS_URL SERIALIZER
//
// Prints {"ready": true} once joined. Then reads one JSON request per line:
//   {"id": 1, "procedure": "...", "args": [], "kwargs": {}, "options": {},
//    "cancel_after_ms": 100, "cancel_mode": "kill"}
// (options may hold `timeout`, `receive_progress`, `disclose_me`) and answers
// each, in the order they finish, with one JSON line:
//   {"id": 1, "ok": true, "args": [...], "kwargs": {...}, "progress": [[args, kwargs], ...], "ms": 12.5}
//   {"id": 1, "ok": false, "error": "wamp.error.canceled", "args": [...], "kwargs": {...}, "progress": [...], "ms": 12.5}
// Exits when stdin closes.
'use strict';

const readline = require('node:readline');
const autobahn = require('autobahn');
const { openSession, closeAll } = require('./harness');

const [url, serializer] = process.argv.slice(2);

function out(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function main() {
  const client = await openSession({ wsUrl: url }, serializer);
  out({ ready: true, session: client.id });
  const lines = readline.createInterface({ input: process.stdin });
  const pending = [];
  for await (const line of lines) {
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    const progress = [];
    const options = { ...(req.options || {}) };
    const started = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - started) / 1e6;
    const call = client.session.call(req.procedure, req.args || [], req.kwargs || {}, options);
    // when.js promises: the third handler gets the progressive results.
    const done = call.then(
      (res) => {
        const isResult = res instanceof autobahn.Result;
        out({ id: req.id, ok: true, args: isResult ? res.args : [res], kwargs: isResult ? res.kwargs : {}, progress, ms: ms() });
      },
      (e) => out({ id: req.id, ok: false, error: e.error || String(e), args: e.args || [], kwargs: e.kwargs || {}, progress, ms: ms() }),
      (p) => progress.push(p instanceof autobahn.Result ? [p.args, p.kwargs] : [[p], {}]),
    );
    if (req.cancel_after_ms !== undefined) {
      setTimeout(() => call.cancel({ mode: req.cancel_mode || 'killnowait' }), req.cancel_after_ms);
    }
    pending.push(done);
  }
  await Promise.allSettled(pending);
  await closeAll();
  process.exit(0);
}

main().catch((e) => {
  out({ fatal: String(e && e.stack ? e.stack : e) });
  process.exit(1);
});
