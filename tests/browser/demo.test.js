// The dev-mode live demo page in a real headless Chromium: it connects and
// subscribes, shows an event published over HTTP and one published from the
// page itself, shows the close code when the gateway drains, and logs no
// errors. A screenshot lands in target/browser/demo.png for people to look at.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { chromium } = require('playwright-core');

const ROOT = path.resolve(__dirname, '..', '..');
const GATEWAY_BIN = process.env.TELEGRAPHY_GATEWAY_BIN || path.join(ROOT, 'target', 'debug', 'telegraphy-gateway');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

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

let gateway;
let base;
let browser;

before(async () => {
  const port = await freePort();
  const admin = await freePort();
  gateway = spawn(GATEWAY_BIN, ['--dev', '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${admin}`], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200) break;
    } catch (_) { /* not up yet */ }
    if (i > 100) throw new Error('gateway did not become ready');
    await new Promise((r) => setTimeout(r, 100));
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (gateway && gateway.exitCode === null) gateway.kill('SIGKILL');
});

test('the demo page shows events live and reports the drain', async () => {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(`${base}/`);
  await page.waitForFunction(() => window.telegraphyDemo && window.telegraphyDemo.state === 'open', null, { timeout: 5000 });

  const resp = await fetch(`${base}/publish`, {
    method: 'POST',
    headers: { Authorization: 'Bearer dev', 'Content-Type': 'application/json' },
    body: JSON.stringify({ topic: 'demo.hello', args: ['hello from curl'], kwargs: { n: 1 } }),
  });
  assert.equal(resp.status, 200);
  const { id } = await resp.json();
  await page.waitForFunction(() => window.telegraphyDemo.events.length === 1, null, { timeout: 5000 });
  const first = (await page.evaluate(() => window.telegraphyDemo.events))[0];
  assert.deepEqual(first, { topic: 'demo.hello', id, args: ['hello from curl'], kwargs: { n: 1 } });
  assert.match(await page.textContent('#events'), /hello from curl/);

  // Publish from the page: the form sends PUBLISH with exclude_me false.
  await page.fill('#topic', 'demo.browser');
  await page.fill('#args', '["from the page"]');
  await page.click('#publish-form button[type=submit]');
  await page.waitForFunction(() => window.telegraphyDemo.events.length === 2, null, { timeout: 5000 });
  const second = (await page.evaluate(() => window.telegraphyDemo.events))[1];
  assert.equal(second.topic, 'demo.browser');
  assert.deepEqual(second.args, ['from the page']);
  assert.match(await page.textContent('#publish-result'), /publication id/);
  assert.equal((await page.textContent('#count')).trim().split(/\s/)[0], '2');

  // Invalid JSON in the form is refused on the page, nothing is sent.
  await page.fill('#args', '[oops');
  await page.click('#publish-form button[type=submit]');
  assert.notEqual((await page.textContent('#args-error')).trim(), '');

  fs.mkdirSync(path.join(ROOT, 'target', 'browser'), { recursive: true });
  await page.screenshot({ path: path.join(ROOT, 'target', 'browser', 'demo.png') });

  // Drain: the page learns the gateway is restarting (close code 1012).
  gateway.kill('SIGTERM');
  await page.waitForFunction(() => /restarting/.test(document.querySelector('#state').textContent), null, { timeout: 5000 });
  assert.deepEqual(problems, []);
  await page.close();
});
