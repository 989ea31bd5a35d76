// Test support (kept outside test/ so `node --test` does not run it): starts
// the real gateway binary on free ports with a generated TOML config, opens
// AutobahnJS subscribers with a ticket (a token this package minted), and
// makes sure every gateway started here is stopped (by PID) even when a test
// fails or the process exits early.

import { after } from "node:test";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const autobahn = require("autobahn");
// AutobahnJS warns on every close; keep test output readable unless AUTOBAHN_WARN=1.
if (!process.env.AUTOBAHN_WARN) require("autobahn/lib/log.js").warn = () => {};

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");
export const GATEWAY_BIN = resolve(process.env.TELEGRAPHY_GATEWAY_BIN || join(REPO, "target/debug/telegraphy-gateway"));
export const REDIS_URL = process.env.TELEGRAPHY_TEST_REDIS || "redis://127.0.0.1:6379/0";
export const AMQP_URL = process.env.TELEGRAPHY_TEST_AMQP || "amqp://guest:guest@127.0.0.1:5672/%2f";
export const SECRET = "node-package-test-secret-0123456789abcdef";
export const API_KEY = "node-test-key-123";
export const WAIT_MS = 5000;

/** A name no other test run uses (for Redis key prefixes and AMQP exchanges). */
export const unique = (what) => `${what}-${process.pid}-${randomBytes(4).toString("hex")}`;

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

// Every child started here: killed when the process exits, whatever happened.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts a gateway and waits for /readyz. `bus`: memory:// (default),
 * redis://..., amqp://...; `keyPrefix`, `exchange`: its redis.key_prefix /
 * amqp.exchange; `publicKeyFile`: verify RS256/EdDSA tokens instead of the
 * HS256 SECRET. Register `after(() => gw.stop())` (or use `gatewayForSuite`).
 */
export async function startGateway({ bus = "memory://", keyPrefix, exchange, publicKeyFile, busTls } = {}) {
  if (!existsSync(GATEWAY_BIN)) {
    throw new Error(`gateway binary not found at ${GATEWAY_BIN}: build it (cargo build -p telegraphy-gateway) or set TELEGRAPHY_GATEWAY_BIN`);
  }
  const port = await freePort();
  const adminPort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "telegraphy-node-"));
  const auth = publicKeyFile ? `jwt_public_key_file = ${JSON.stringify(publicKeyFile)}` : `jwt_secret = "${SECRET}"`;
  const config = `listen = "127.0.0.1:${port}"
admin_listen = "127.0.0.1:${adminPort}"
bus = ${JSON.stringify(bus)}
realms = ["realm1", "tenant.acme"]
api_keys = ["${API_KEY}"]

[auth]
${auth}
jwt_leeway = "0s"

[roles.user]
subscribe = ["*"]
publish = []

[roles.staff]
subscribe = ["*"]
publish = ["*"]

[redis]
key_prefix = ${JSON.stringify(keyPrefix ?? "telegraphy:")}

[amqp]
exchange = ${JSON.stringify(exchange ?? "telegraphy")}

[shutdown]
drain_delay = "0s"
drain_timeout = "2s"
${busTls ? `\n[bus_tls]\nca_file = ${JSON.stringify(busTls.ca)}\ncert_file = ${JSON.stringify(busTls.cert)}\nkey_file = ${JSON.stringify(busTls.key)}\n` : ""}`;
  const file = join(dir, "gateway.toml");
  writeFileSync(file, config);
  // The gateway refuses unknown TELEGRAPHY_* variables: start it without ours.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TELEGRAPHY_")));
  const child = spawn(GATEWAY_BIN, ["--config", file, "--log-level", "warn"], { env, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let log = "";
  const keep = (chunk) => {
    log = (log + chunk).slice(-20000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((resolveExit) =>
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolveExit({ code, signal });
    }),
  );

  const gw = {
    pid: child.pid,
    port,
    adminPort,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    log: () => log,
    /** SIGTERM by PID, SIGKILL after 5 s; removes the config folder. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid, "SIGTERM");
        const done = await Promise.race([exited, sleep(5000, null, { ref: false })]); // unref: no 5 s wait at exit
        if (!done) {
          process.kill(child.pid, "SIGKILL");
          await exited;
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };

  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    try {
      const res = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      if (res.ok) return gw;
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  await gw.stop();
  throw new Error(`the gateway did not become ready on port ${port}:\n${log}`);
}

/** A gateway for the whole test file, stopped after its last test. */
export async function gatewayForSuite(options) {
  const gw = await startGateway(options);
  after(() => gw.stop());
  return gw;
}

/** Events delivered to a subscription, consumed in arrival order. */
export class Inbox {
  items = [];
  waiters = [];

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  next(ms = WAIT_MS) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    let waiter;
    const p = new Promise((resolveItem) => {
      waiter = resolveItem;
      this.waiters.push(resolveItem);
    });
    return withTimeout(p, ms, "waiting for an event").finally(() => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    });
  }

  /** Resolves true if nothing arrives within `ms`. */
  async none(ms = 500) {
    await sleep(ms);
    return this.items.length === 0;
  }
}

/**
 * An AutobahnJS session on `gw` that authenticates with `token` (WAMP
 * ticket). Resolves { session, details, close() }; rejects with the ABORT
 * reason when the gateway refuses the token.
 */
export function subscriber(wsUrl, token, { realm = "realm1", serializer = "json" } = {}) {
  const serializers = {
    json: () => new autobahn.serializer.JSONSerializer(),
    msgpack: () => new autobahn.serializer.MsgpackSerializer(),
  };
  const connection = new autobahn.Connection({
    url: wsUrl,
    realm,
    serializers: [serializers[serializer]()],
    authmethods: ["ticket"],
    onchallenge: (_session, method) => {
      if (method !== "ticket") throw new Error(`unexpected challenge ${method}`);
      return token;
    },
    max_retries: 0,
    retry_if_unreachable: false,
  });
  let closed;
  const closedPromise = new Promise((resolveClosed) => {
    closed = resolveClosed;
  });
  const joined = new Promise((resolveJoin, reject) => {
    connection.onopen = (session, details) => {
      resolveJoin({
        session,
        details,
        /** Subscribes `topic`; events go into the returned Inbox. */
        async listen(topic, options) {
          const inbox = new Inbox();
          await session.subscribe(topic, (args, kwargs, details) => inbox.push({ args, kwargs, details }), options);
          return inbox;
        },
        async close() {
          if (connection.isOpen) {
            connection.close();
            await withTimeout(closedPromise, WAIT_MS, "closing the WAMP session").catch(() => {});
          }
        },
      });
    };
    connection.onclose = (reason, details) => {
      closed();
      reject(new Error(`WAMP session refused or closed: ${reason} ${details?.reason ?? ""} ${details?.message ?? ""}`));
      return true; // never reconnect
    };
  });
  connection.open();
  return withTimeout(joined, WAIT_MS, `joining ${realm} at ${wsUrl}`);
}
