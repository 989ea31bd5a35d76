// The Origin allow-list in a real headless Chromium. A page served by a tiny
// Node HTTP server on its own port (an origin other than the gateway's) opens
// `new WebSocket("ws://127.0.0.1:GATEWAY_PORT/ws", ["wamp.2.json"])` and sends
// HELLO. A gateway whose `allowed_origins` does not list that origin refuses
// the upgrade (HTTP 403; the page sees onerror/onclose and never a WELCOME);
// a gateway that lists it, or allows "*", lets the same page join. A page from
// the gateway's own origin (the dev-mode demo page) is always allowed.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..');
const GATEWAY_BIN = process.env.TELEGRAPHY_GATEWAY_BIN || path.join(ROOT, 'target', 'debug', 'telegraphy-gateway');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// Upper bound for one connection attempt in the page (bounded waits only).
const ATTEMPT_MS = 5000;

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

// The page: `window.tryGateway(url)` opens the WebSocket, sends HELLO and
// resolves with what happened: WELCOME (then it says GOODBYE), or the socket
// failing, or the attempt timing out.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>origin test page</title></head>
<body><p>A page on another origin than the gateway.</p>
<script>
window.tryGateway = (url) => new Promise((resolve) => {
  const result = { opened: false, protocol: null, error: false, welcome: null, abort: null, closeCode: null, timedOut: false };
  let ws;
  const done = () => { clearTimeout(timer); resolve(result); };
  const timer = setTimeout(() => { result.timedOut = true; try { ws.close(); } catch (_) {} resolve(result); }, ${ATTEMPT_MS});
  try {
    ws = new WebSocket(url, ['wamp.2.json']);
  } catch (e) {
    result.error = String(e);
    done();
    return;
  }
  ws.onopen = () => {
    result.opened = true;
    result.protocol = ws.protocol;
    ws.send(JSON.stringify([1, 'realm1', { roles: { subscriber: {}, publisher: {} } }]));
  };
  ws.onerror = () => { result.error = true; };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg[0] === 2) {
      result.welcome = { session: msg[1], authid: msg[2].authid, authrole: msg[2].authrole };
      ws.send(JSON.stringify([6, {}, 'wamp.close.close_realm']));
    } else if (msg[0] === 3) {
      result.abort = msg[2];
    }
  };
  ws.onclose = (e) => { result.closeCode = e.code; done(); };
});
</script></body></html>`;

// A gateway with its own temporary config; anonymous sessions allowed. A port
// found free can be taken before the gateway binds it: then it starts again
// on other ports.
async function startGateway(name, { allowedOrigins = null, args = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'telegraphy-origin-'));
  const config = path.join(dir, 'gateway.toml');
  const lines = [];
  if (allowedOrigins) lines.push(`allowed_origins = ${JSON.stringify(allowedOrigins)}`);
  lines.push('[auth]', 'allow_anonymous = true');
  fs.writeFileSync(config, lines.join('\n') + '\n');
  for (let attempt = 1; ; attempt++) {
    const gw = await spawnGateway(name, config, args);
    const ready = await gw.ready();
    if (ready === 'ready') {
      gw.dir = dir;
      return gw;
    }
    await gw.stop();
    if (ready !== 'port taken' || attempt === 3) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`gateway ${name}: ${ready}:\n${gw.output()}`);
    }
  }
}

async function spawnGateway(name, config, args) {
  const port = await freePort();
  const admin = await freePort();
  const proc = spawn(GATEWAY_BIN, ['--config', config, '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${admin}`, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (d) => { output += d; });
  proc.stderr.on('data', (d) => { output += d; });
  const running = () => proc.exitCode === null && proc.signalCode === null;
  return {
    name,
    port,
    admin,
    proc,
    dir: null,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    base: `http://127.0.0.1:${port}`,
    output: () => output.slice(-4000),
    async ready() {
      for (let i = 0; i <= 100; i++) {
        if (!running()) return /Address already in use/.test(output) ? 'port taken' : 'exited during startup';
        try {
          if ((await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200 && running()) return 'ready';
        } catch (_) { /* not up yet */ }
        await new Promise((r) => setTimeout(r, 100));
      }
      return 'not ready within 10 s';
    },
    async metric(sample) {
      const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
      return line ? Number(line.trim().split(/\s+/).pop()) : 0;
    },
    async stop() {
      if (running()) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
        await exited;
        clearTimeout(timer);
      }
      if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    },
  };
}

const REFUSED_ORIGIN = 'telegraphy_connections_refused_total{reason="origin"}';

let browser;
let pageServer;
let pageOrigin;
const gateways = [];

before(async () => {
  pageServer = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(PAGE);
  });
  await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  await Promise.all(gateways.map((g) => g.stop()));
  if (pageServer) await new Promise((r) => pageServer.close(r));
});

async function gateway(name, opts) {
  const gw = await startGateway(name, opts);
  gateways.push(gw);
  return gw;
}

// Opens the page on its own origin and tries the gateway from it.
async function tryFromPage(gw) {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  try {
    await page.goto(`${pageOrigin}/`);
    assert.equal(await page.evaluate(() => window.location.origin), pageOrigin);
    const result = await page.evaluate((u) => window.tryGateway(u), gw.wsUrl);
    return { result, logs };
  } finally {
    await page.close();
  }
}

test('a page from an origin not in allowed_origins cannot open a WebSocket', async () => {
  const gw = await gateway('listing another origin', { allowedOrigins: ['https://app.example.com'] });
  const { result, logs } = await tryFromPage(gw);
  const why = `${JSON.stringify(result)}\nconsole: ${logs.join('\n')}\ngateway: ${gw.output()}`;
  assert.equal(result.timedOut, false, `the socket neither opened nor failed within ${ATTEMPT_MS} ms: ${why}`);
  assert.equal(result.opened, false, why);
  assert.equal(result.error, true, why);
  assert.equal(result.welcome, null, why);
  assert.equal(result.closeCode, 1006, why);
  // The gateway refused it because of the Origin, once, with HTTP 403 (as
  // Chromium reports on the console).
  assert.equal(await gw.metric(REFUSED_ORIGIN), 1, why);
  assert.ok(logs.some((l) => /WebSocket connection to .* failed.*\b403\b/.test(l)), why);
});

test('the same page joins once its origin is in allowed_origins', async () => {
  const gw = await gateway('listing the page origin', { allowedOrigins: [pageOrigin] });
  const { result, logs } = await tryFromPage(gw);
  const why = `${JSON.stringify(result)}\nconsole: ${logs.join('\n')}\ngateway: ${gw.output()}`;
  assert.equal(result.opened, true, why);
  assert.equal(result.protocol, 'wamp.2.json', why);
  assert.ok(result.welcome, why);
  assert.equal(result.welcome.authrole, 'anonymous', why);
  assert.ok(Number.isSafeInteger(result.welcome.session) && result.welcome.session > 0, why);
  assert.equal(result.error, false, why);
  assert.equal(result.timedOut, false, why);
  assert.equal(await gw.metric(REFUSED_ORIGIN), 0, why);
});

test('"*" in allowed_origins lets every origin in', async () => {
  const gw = await gateway('allowing every origin', { allowedOrigins: ['*'] });
  const { result, logs } = await tryFromPage(gw);
  assert.ok(result.welcome, `${JSON.stringify(result)}\nconsole: ${logs.join('\n')}\ngateway: ${gw.output()}`);
});

test('a page from the gateway\'s own origin is always allowed', async () => {
  // Dev mode serves the demo page at `/`: same origin as the WebSocket.
  const gw = await gateway('same origin', { allowedOrigins: ['https://app.example.com'], args: ['--dev'] });
  const page = await browser.newPage();
  try {
    // The demo page opens its own session; ours runs beside it.
    await page.goto(`${gw.base}/`);
    const result = await page.evaluate(async ({ url, ms }) => {
      const r = await new Promise((resolve) => {
        const ws = new WebSocket(url, ['wamp.2.json']);
        const timer = setTimeout(() => { ws.close(); resolve({ timedOut: true }); }, ms);
        ws.onopen = () => ws.send(JSON.stringify([1, 'realm1', { roles: { subscriber: {} } }]));
        ws.onmessage = (m) => { clearTimeout(timer); ws.close(); resolve({ first: JSON.parse(m.data)[0] }); };
        ws.onclose = (e) => { clearTimeout(timer); resolve({ closeCode: e.code }); };
      });
      return { origin: window.location.origin, ...r };
    }, { url: gw.wsUrl, ms: ATTEMPT_MS });
    assert.deepEqual(result, { origin: gw.base, first: 2 }, gw.output());
    assert.equal(await gw.metric(REFUSED_ORIGIN), 0);
  } finally {
    await page.close();
  }
});
