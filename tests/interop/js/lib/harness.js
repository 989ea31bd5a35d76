// Shared helpers for the AutobahnJS interop tests: start/stop the Telegraphy
// gateway, open WAMP sessions with a given serializer, collect events with
// timeouts, and publish over the gateway's HTTP API.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const autobahn = require('autobahn');

// AutobahnJS logs every connection close via console.warn; keep test output
// readable unless AUTOBAHN_WARN=1.
if (!process.env.AUTOBAHN_WARN) require('autobahn/lib/log.js').warn = () => {};

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..', '..');
const GATEWAY_BIN = process.env.TELEGRAPHY_GATEWAY_BIN ||
  path.join(REPO_ROOT, 'target', 'debug', 'telegraphy-gateway');
const API_KEY = 'test-key';
const REALM = 'realm1';
const WAIT_MS = 3000;

const SERIALIZERS = {
  json: () => new autobahn.serializer.JSONSerializer(),
  msgpack: () => new autobahn.serializer.MsgpackSerializer(),
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Minimal HTTP client: resolves {status, body} (body parsed as JSON when possible).
function httpRequest(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        let parsed = data;
        try { parsed = JSON.parse(data); } catch (_) { /* keep raw text */ }
        resolve({ status: res.statusCode, body: parsed });
      });
    });
    req.on('error', reject);
    req.setTimeout(WAIT_MS, () => req.destroy(new Error(`HTTP ${method} ${url} timed out`)));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// Starts the gateway on two free ports and waits for /readyz to answer 200.
async function startGateway() {
  if (!fs.existsSync(GATEWAY_BIN)) {
    throw new Error(`gateway binary not found: ${GATEWAY_BIN} (build it or set TELEGRAPHY_GATEWAY_BIN)`);
  }
  const port = await freePort();
  const adminPort = await freePort();
  const proc = spawn(GATEWAY_BIN, [
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--api-keys', API_KEY,
    '--config', path.join(__dirname, '..', '..', 'gateway.toml'),
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk) => { output = (output + chunk).slice(-8000); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => proc.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));

  const gw = {
    port,
    adminPort,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    httpUrl: `http://127.0.0.1:${port}`,
    output: () => output,
    async stop() {
      if (exited) return exited;
      proc.kill('SIGTERM');
      try {
        return await withTimeout(exitPromise, 10000, 'gateway exit after SIGTERM');
      } catch (_) { /* fall through to SIGKILL */ }
      proc.kill('SIGKILL');
      await exitPromise;
      throw new Error('gateway did not exit within 10 s of SIGTERM (killed)');
    },
  };

  const deadline = Date.now() + 10000;
  for (;;) {
    if (exited) {
      throw new Error(`gateway exited during startup (${JSON.stringify(exited)}):\n${output}`);
    }
    try {
      const res = await httpRequest(`http://127.0.0.1:${adminPort}/readyz`);
      if (res.status === 200) return gw;
    } catch (_) { /* not listening yet */ }
    if (Date.now() > deadline) {
      await gw.stop().catch(() => {});
      throw new Error(`gateway not ready within 10 s:\n${output}`);
    }
    await sleep(100);
  }
}

// Events pushed by subscription handlers, consumed in arrival order.
class Inbox {
  constructor(name = 'inbox') {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  next(ms = WAIT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let resolveFn;
    const p = new Promise((resolve) => { resolveFn = resolve; this.waiters.push(resolve); });
    return withTimeout(p, ms, `waiting for an event in ${this.name}`).catch((err) => {
      this.waiters = this.waiters.filter((w) => w !== resolveFn);
      throw err;
    });
  }
}

// Tracks every connection opened by a test file so they can all be closed.
const openConnections = new Set();

// Opens a WAMP session with one serializer; resolves a client object with
// the session and the WELCOME-derived identity (id, authid, authrole).
function openSession(gw, serializer) {
  const connection = new autobahn.Connection({
    url: gw.wsUrl,
    realm: REALM,
    serializers: [SERIALIZERS[serializer]()],
    max_retries: 0,
    retry_if_unreachable: false,
  });
  const client = { connection, serializer };
  client.closed = new Promise((resolve) => {
    connection.onclose = (reason, details) => {
      openConnections.delete(connection);
      resolve({ reason, details });
      return true; // never auto-reconnect
    };
  });
  const joined = new Promise((resolve, reject) => {
    connection.onopen = (session, details) => {
      Object.assign(client, {
        session,
        details,
        id: session.id,
        authid: details.authid,
        authrole: details.authrole,
      });
      resolve(client);
    };
    client.closed.then(({ reason, details }) =>
      reject(new Error(`connection closed before join: ${reason} ${JSON.stringify(details)}`)));
  });
  openConnections.add(connection);
  connection.open();
  return withTimeout(joined, WAIT_MS, `joining ${REALM} over wamp.2.${serializer}`);
}

async function closeAll() {
  const pending = [];
  for (const conn of openConnections) {
    try { conn.close(); } catch (_) { /* already closing */ }
    pending.push(new Promise((resolve) => {
      const prev = conn.onclose;
      conn.onclose = (...a) => { prev(...a); resolve(); return true; };
    }));
  }
  await withTimeout(Promise.all(pending), WAIT_MS, 'closing sessions').catch(() => {
    for (const conn of openConnections) {
      if (conn._transport) conn._transport.close();
    }
    openConnections.clear();
  });
}

// Subscribes and routes each event into an inbox as {args, kwargs, details, tag}.
async function listen(client, topic, options, inbox = new Inbox(topic), tag = topic) {
  const handler = (args, kwargs, details) => inbox.push({ args, kwargs, details, tag });
  const subscription = await client.session.subscribe(topic, handler, options);
  return { subscription, inbox };
}

// Publishes with acknowledge: true and returns the publication id.
async function publishAcked(client, topic, args, kwargs, options = {}) {
  const pub = await withTimeout(
    client.session.publish(topic, args, kwargs, { ...options, acknowledge: true }),
    WAIT_MS, `PUBLISHED for ${topic}`);
  return pub.id;
}

function httpPublish(gw, payload, key = API_KEY) {
  const body = typeof payload === 'string' ? payload : JSON.stringify(payload);
  const headers = { 'Content-Type': 'application/json' };
  if (key !== null) headers.Authorization = `Bearer ${key}`;
  return httpRequest(`${gw.httpUrl}/publish`, { method: 'POST', headers, body });
}

module.exports = {
  API_KEY, Inbox, SERIALIZERS, WAIT_MS,
  closeAll, httpPublish, listen, openSession, publishAcked, startGateway, withTimeout,
};
