// An Express shop that pushes live order events to its users' browsers
// through Telegraphy.
//
//   POST /login   {"username": "alice", "password": "telegraphy"}  → a session cookie
//   GET  /token   → {"token", "url", "realm", "expiresAt"} for the signed-in user
//                   (the browser client's `tokenUrl` reads `token` from it)
//   POST /orders  {"item": "book", "total": 9.5} → stores the order and publishes
//                   shop.orders.<user>.created to the user's browsers
//
// Settings (environment):
//   TELEGRAPHY_JWT_SECRET   the gateway's HS256 secret (the same variable the gateway reads)
//   TELEGRAPHY_GATEWAY_URL  http://HOST:8080 and TELEGRAPHY_API_KEY (publish over HTTP),
//     or TELEGRAPHY_BUS     redis://... or amqp://... (publish straight onto the bus)
//   GATEWAY_WS_URL          the WebSocket URL browsers connect to (default: from TELEGRAPHY_GATEWAY_URL)
//   PORT                    default 3000
//
//   TELEGRAPHY_JWT_SECRET=... TELEGRAPHY_GATEWAY_URL=http://127.0.0.1:8080 TELEGRAPHY_API_KEY=... node server.js

import { randomBytes } from "node:crypto";
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import express from "express";
import { NoSubscriber, PublishError, mintToken, publisherFromEnv } from "@telegraphy/server";

const REALM = "realm1";
const TOKEN_TTL_SECONDS = 300;

// Demo users; a real app has its own user store and password hashing.
const USERS = new Map([
  ["alice", { id: "1", name: "alice", password: "telegraphy" }],
  ["bob", { id: "2", name: "bob", password: "telegraphy" }],
]);

/** The Express app; `publisher` and `secret` come from the environment by default. */
export function createApp({ publisher = publisherFromEnv(), secret = process.env.TELEGRAPHY_JWT_SECRET, wsUrl } = {}) {
  if (!secret) throw new Error("set TELEGRAPHY_JWT_SECRET to the gateway's JWT secret");
  wsUrl ??= process.env.GATEWAY_WS_URL ?? `${(process.env.TELEGRAPHY_GATEWAY_URL ?? "http://127.0.0.1:8080").replace(/^http/, "ws").replace(/\/+$/, "")}/ws`;
  const sessions = new Map(); // session id → user
  const orders = [];
  const app = express();
  app.use(express.json());

  // Who is signed in: a session cookie set by POST /login.
  app.use((req, _res, next) => {
    const sid = /(?:^|;\s*)sid=([0-9a-f]+)/.exec(req.headers.cookie ?? "")?.[1];
    req.user = sid ? sessions.get(sid) : undefined;
    next();
  });
  const signedIn = (req, res, next) => (req.user ? next() : res.status(401).json({ error: "sign in first: POST /login" }));

  app.post("/login", (req, res) => {
    const user = USERS.get(req.body?.username);
    if (!user || user.password !== req.body?.password) return res.status(401).json({ error: "wrong username or password" });
    const sid = randomBytes(16).toString("hex");
    sessions.set(sid, user);
    res.cookie("sid", sid, { httpOnly: true, sameSite: "lax" }).json({ user: user.name });
  });

  // A short-lived token for the signed-in user: it may subscribe to their
  // own orders and the public topics, nothing else.
  app.get("/token", signedIn, async (req, res) => {
    const token = await mintToken({
      subject: req.user.id,
      role: "user",
      subscribe: [`shop.orders.${req.user.id}.*`, "shop.public.*"],
      ttlSeconds: TOKEN_TTL_SECONDS,
      secret,
    });
    res.set("Cache-Control", "no-store").json({
      token,
      url: wsUrl,
      realm: REALM,
      expiresAt: Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS,
    });
  });

  app.post("/orders", signedIn, async (req, res) => {
    const { item, total } = req.body ?? {};
    if (typeof item !== "string" || typeof total !== "number") {
      return res.status(400).json({ error: 'send {"item": "...", "total": 9.5}' });
    }
    const order = { id: orders.length + 1, item, total, createdAt: new Date().toISOString() };
    orders.push(order);
    // The order is saved whatever happens next; the event is a notification.
    // requireSubscriber: learn whether a browser of this user is listening
    // (a real app might send an e-mail instead when nobody is).
    let live;
    try {
      await publisher.publish(`shop.orders.${req.user.id}.created`, [], order, { requireSubscriber: true });
      live = "delivered";
    } catch (err) {
      if (err instanceof NoSubscriber) live = "nobody_listening";
      else if (err instanceof PublishError) {
        console.warn(`could not publish the order event (${err.kind}): ${err.message}`);
        live = err.kind; // unavailable, unauthorized, ...: fix the settings or retry later
      } else throw err;
    }
    res.status(201).json({ order, live });
  });

  return app;
}

// Run directly: listen on PORT.
if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  const publisher = publisherFromEnv();
  const app = createApp({ publisher });
  const server = app.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
    console.log(`shop listening on http://127.0.0.1:${server.address().port}`);
  });
  process.on("SIGTERM", () => {
    server.close();
    server.closeAllConnections();
    publisher.close().finally(() => process.exit(0));
  });
}
