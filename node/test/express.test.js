// The Express example (examples/express/server.js), run as its own process
// against a real gateway: a user signs in, takes a token from GET /token,
// subscribes with AutobahnJS, and receives the event POST /orders published.
// Once publishing over HTTP, once straight onto Redis (TELEGRAPHY_BUS).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { API_KEY, REDIS_URL, REPO, SECRET, freePort, startGateway, subscriber, unique, withTimeout } from "../testing/gateway.js";

const SERVER = join(REPO, "node/examples/express/server.js");

/** Starts the example app; resolves { url, stop() } once it listens. */
async function startApp(env) {
  const port = await freePort();
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TELEGRAPHY_")));
  const child = spawn(process.execPath, [SERVER], {
    env: { ...clean, ...env, PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((r) => child.once("exit", r));
  const app = {
    url: `http://127.0.0.1:${port}`,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, "SIGTERM");
        await withTimeout(exited, 5000, "the example app to exit").catch(() => process.kill(child.pid, "SIGKILL"));
      }
    },
  };
  process.once("exit", () => child.kill("SIGKILL"));
  try {
    await withTimeout(
      new Promise((resolveListening, reject) => {
        child.stdout.on("data", () => output.includes("listening") && resolveListening());
        child.once("exit", (code) => reject(new Error(`the example exited (${code}):\n${output}`)));
      }),
      10000,
      "the example app to listen",
    );
  } catch (e) {
    await app.stop();
    throw e;
  }
  return app;
}

/** A signed-in user of the app: fetch with its session cookie. */
async function login(app, username) {
  const res = await fetch(`${app.url}/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password: "telegraphy" }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const cookie = res.headers.get("set-cookie").split(";")[0];
  return (path, init = {}) =>
    fetch(`${app.url}${path}`, {
      ...init,
      headers: { ...(init.body ? { "Content-Type": "application/json" } : {}), Cookie: cookie, ...init.headers },
    });
}

for (const [how, gatewayOptions, appEnv] of [
  ["over the gateway's HTTP endpoint", () => ({}), (gw) => ({ TELEGRAPHY_GATEWAY_URL: gw.url, TELEGRAPHY_API_KEY: API_KEY })],
  [
    "straight onto Redis",
    () => ({ bus: REDIS_URL, keyPrefix: `${unique("tg-node-express")}:` }),
    (gw, options) => ({ TELEGRAPHY_BUS: REDIS_URL, TELEGRAPHY_REDIS__KEY_PREFIX: options.keyPrefix, GATEWAY_WS_URL: gw.wsUrl }),
  ],
]) {
  describe(`the Express example, publishing ${how}`, () => {
    let gw;
    let app;
    const sessions = [];
    before(async () => {
      const options = gatewayOptions();
      gw = await startGateway(options);
      app = await startApp({ TELEGRAPHY_JWT_SECRET: SECRET, ...appEnv(gw, options) });
    });
    after(async () => {
      for (const s of sessions) await s.close();
      await app?.stop();
      await gw?.stop();
    });

    test("alice's browser receives the order event the app published", async () => {
      const alice = await login(app, "alice");
      const res = await alice("/token");
      assert.equal(res.status, 200);
      const { token, url, realm, expiresAt } = await res.json();
      assert.equal(url, gw.wsUrl);
      assert.equal(realm, "realm1");
      assert.ok(expiresAt > Date.now() / 1000);
      const browser = await subscriber(url, token, { realm });
      sessions.push(browser);
      assert.equal(browser.details.authid, "1");
      const inbox = await browser.listen("shop.orders.1.", { match: "prefix" });

      const created = await alice("/orders", { method: "POST", body: JSON.stringify({ item: "book", total: 9.5 }) });
      assert.equal(created.status, 201, app.output());
      const { order, live } = await created.json();
      assert.equal(live, "delivered");
      const event = await inbox.next();
      assert.equal(event.details.topic, "shop.orders.1.created");
      assert.deepEqual(event.kwargs, order);
      assert.equal(event.kwargs.item, "book");
    });

    test("bob's token may not subscribe to alice's orders; his order finds nobody listening", async () => {
      const bob = await login(app, "bob");
      const { token } = await (await bob("/token")).json();
      const browser = await subscriber(gw.wsUrl, token);
      sessions.push(browser);
      await assert.rejects(browser.listen("shop.orders.1.", { match: "prefix" }), (err) => /not_authorized/.test(err.error));
      const created = await bob("/orders", { method: "POST", body: JSON.stringify({ item: "pen", total: 2 }) });
      assert.equal(created.status, 201);
      assert.equal((await created.json()).live, "nobody_listening");
    });

    test("no token without signing in", async () => {
      const res = await fetch(`${app.url}/token`);
      assert.equal(res.status, 401);
    });
  });
}
