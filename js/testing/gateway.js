// Test support: runs the real gateway binary on free ports with a temporary
// TOML config, mints HS256 tokens, publishes over HTTP, and waits (bounded).
// Kept outside test/ so that `node --test` does not run it as a test file.

import { after } from "node:test";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

export { default as WebSocket } from "ws";

/** Options for every test that talks to a gateway: a bound on the whole test. */
export const T = Object.freeze({ timeout: 30000 });

export const SECRET = "a-test-secret-for-the-js-client-0123456789";
export const API_KEY = "test-key-123";

const here = dirname(fileURLToPath(import.meta.url));
export const GATEWAY_BIN = process.env.TELEGRAPHY_GATEWAY_BIN || resolve(here, "../../target/debug/telegraphy-gateway");

/**
 * Call once at the top of a test file: after its last test, a process that
 * is still kept alive (a client left reconnecting, a socket left open) exits
 * with status 1 within 5 seconds instead of hanging the test run.
 */
export function exitGuard(ms = 5000) {
  after(() => {
    setTimeout(() => {
      console.error(`test process still alive ${ms} ms after its last test: a client or socket was left open`);
      process.exit(1);
    }, ms).unref();
  });
}

/** A free TCP port on 127.0.0.1 (the OS picks it; closed again before use). */
export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * A gateway process. `extraToml` is appended to the config.
 * start() spawns it and waits for /readyz; kill()/term() stop it.
 */
export class Gateway {
  constructor({ port, adminPort, extraToml = "", anonymous = true, drainTimeout = "3s", bus = null, redisPrefix = null } = {}) {
    this.bus = bus;
    this.redisPrefix = redisPrefix;
    this.port = port;
    this.adminPort = adminPort;
    this.extraToml = extraToml;
    this.anonymous = anonymous;
    this.drainTimeout = drainTimeout;
    this.child = null;
    this.log = "";
    this.dir = mkdtempSync(join(tmpdir(), "telegraphy-js-"));
  }

  static async start(options = {}) {
    const gw = new Gateway({ ...options, port: options.port ?? (await freePort()), adminPort: options.adminPort ?? (await freePort()) });
    await gw.start();
    return gw;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  config() {
    return `listen = "127.0.0.1:${this.port}"
admin_listen = "127.0.0.1:${this.adminPort}"
realms = ["realm1"]
${this.bus ? `bus = "${this.bus}"` : ""}
${this.redisPrefix ? `[redis]\nkey_prefix = "${this.redisPrefix}"` : ""}

[auth]
jwt_secret = "${SECRET}"
allow_anonymous = ${this.anonymous}
jwt_leeway = "0s"

[roles.anonymous]
subscribe = ["*"]
publish = ["*"]
call = ["*"]
register = ["*"]
publish_options = true

[roles.user]
subscribe = ["*"]
publish = ["*"]
call = ["*"]
register = ["*"]

[roles.reader]
subscribe = ["shop.public.*"]
publish = []

[shutdown]
drain_timeout = "${this.drainTimeout}"
${this.extraToml}
`;
  }

  async start() {
    if (!existsSync(GATEWAY_BIN)) {
      throw new Error(`gateway binary not found at ${GATEWAY_BIN}: build it (cargo build -p telegraphy-gateway) or set TELEGRAPHY_GATEWAY_BIN`);
    }
    const file = join(this.dir, "gateway.toml");
    writeFileSync(file, this.config());
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TELEGRAPHY_")));
    this.log = "";
    const child = spawn(GATEWAY_BIN, ["--config", file, "--api-keys", API_KEY, "--log-level", "info"], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    running.add(child);
    this.exited = new Promise((resolveExit) =>
      child.once("exit", (code, signal) => {
        running.delete(child);
        resolveExit({ code, signal });
      }),
    );
    child.stdout.on("data", (d) => (this.log += d));
    child.stderr.on("data", (d) => (this.log += d));
    const deadline = Date.now() + 15000;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      try {
        const res = await fetch(`http://127.0.0.1:${this.adminPort}/readyz`);
        if (res.ok) return this;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    child.kill("SIGKILL");
    throw new Error(`the gateway did not become ready on port ${this.port}:\n${this.log}`);
  }

  /** SIGKILL: the connections drop without a close frame (1006). */
  async kill() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  /** SIGTERM: the gateway drains (GOODBYE system_shutdown, close 1012), then exits. */
  async term() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    return withTimeout(this.exited, 10000, "the gateway to exit after SIGTERM");
  }

  /** Stops the process and removes the temporary folder. */
  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** POST /publish with the test API key; returns the publication id. */
  async publish(topic, args, kwargs, options) {
    const body = { topic };
    if (args !== undefined) body.args = args;
    if (kwargs !== undefined) body.kwargs = kwargs;
    if (options !== undefined) body.options = options;
    const res = await fetch(`${this.httpUrl}/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await res.json();
    if (!res.ok) throw new Error(`POST /publish ${res.status}: ${JSON.stringify(answer)}`);
    return answer.id;
  }
}

/** An HS256 JWT signed with SECRET (or `secret`). */
export function mintToken(claims, secret = SECRET) {
  const part = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = part({ alg: "HS256", typ: "JWT" });
  const body = part(claims);
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** A token for `sub` valid `seconds` from now. */
export function tokenFor(sub, { role = "user", seconds = 300, ...extra } = {}) {
  return mintToken({ sub, role, exp: Math.floor(Date.now() / 1000) + seconds, ...extra });
}

/** Resolves `promise`, or rejects after `ms` saying what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` until it returns a truthy value (returned), or fails after `ms`. */
export async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Records a client's "state" events: [{ state, info }]. */
export function recordStates(client) {
  const states = [];
  client.on("state", (state, info) => states.push({ state, info }));
  return states;
}

/** Resolves with the info of the next "state" event equal to `state` (bounded). */
export function nextState(client, state, ms = 10000) {
  let off;
  const p = new Promise((resolveState) => {
    off = client.on("state", (s, info) => {
      if (s === state) resolveState(info);
    });
  });
  return withTimeout(p, ms, `state "${state}"`).finally(() => off());
}

/** A queue of calls of a callback, to await one call at a time (bounded). */
export function inbox() {
  const items = [];
  const waiters = [];
  const push = (...args) => {
    const waiter = waiters.shift();
    if (waiter) waiter(args);
    else items.push(args);
  };
  push.next = (ms = 5000, what = "a callback") => {
    if (items.length) return Promise.resolve(items.shift());
    return withTimeout(new Promise((r) => waiters.push(r)), ms, what);
  };
  push.items = items;
  /** Asserts nothing arrives for `ms` (resolves true) or returns what arrived. */
  push.quiet = async (ms = 300) => {
    await sleep(ms);
    return items.length === 0;
  };
  return push;
}

/** The model-event payload the Django app publishes as args[0]. */
export function modelEvent(eventType, data, name = "shop.order") {
  return { name, meta: { event_type: eventType, verbose_name: "order", timestamp: new Date().toISOString() }, data };
}
