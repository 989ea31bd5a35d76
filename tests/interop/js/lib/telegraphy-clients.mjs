// COUNT clients of Telegraphy's own JS client (js/src/telegraphy.js, the
// browser module) on one gateway node, each present on TOPIC
// (client.presence), driven over stdin/stdout for the Python suites
// (tests/interop/python/test_presence_cluster.py).
//
//   node telegraphy-clients.mjs WS_URL COUNT TOPIC
//
// Prints {"ready": true, "sessions": [...], "authids": [...]} once every
// client is connected and present. Then, for each line "state" on stdin,
// prints the first client's presence view: {"count", "sessions"}.
// Closes every client and exits when stdin closes.

import { createRequire } from "node:module";
import readline from "node:readline";

import { Telegraphy } from "../../../../js/src/telegraphy.js";

const require = createRequire(import.meta.url);
const WebSocket = require("ws");

const [url, count, topic] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

async function main() {
  const clients = [];
  const views = [];
  for (let i = 0; i < count; i++) {
    const client = new Telegraphy({ url, realm: "realm1", WebSocket, backoff: { initial: 100, max: 1000 } });
    client.on("error", () => {}); // a node killed under its clients is part of the test
    clients.push(client);
  }
  await Promise.all(clients.map((c) => c.connect()));
  for (const c of clients) views.push(c.presence(topic));
  await Promise.all(views.map((v) => v.ready));
  out({ ready: true, sessions: clients.map((c) => c.sessionId), authids: clients.map((c) => c.session.authid) });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === "state") out({ count: views[0].count, sessions: views[0].sessions });
  }
  await Promise.all(clients.map((c) => c.close()));
  process.exit(0);
}

main().catch((err) => {
  out({ fatal: String(err && (err.uri || err.message) || err) });
  process.exit(1);
});
