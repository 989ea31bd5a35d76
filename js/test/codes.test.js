// The shared close-code and error-URI vectors (tests/vectors/codes.json)
// against src/codes.js and the URIs of src/wamp.js: the same names and
// values, and shouldReconnect answering as the vectors say for every code.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { CloseCode, closeCodeAfter, shouldReconnect } from "../src/codes.js";
import { URI } from "../src/wamp.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../tests/vectors/codes.json", import.meta.url), "utf8"));
const ACTIONS = { reconnect: true, do_not_reconnect: false };

function reconnects(action) {
  assert.ok(action in ACTIONS, `unknown action ${action} (reconnect, do_not_reconnect)`);
  return ACTIONS[action];
}

/** What the vectors say for `code`: its entry, else its range, else the default. */
function expected(code) {
  const listed = VECTORS.close.codes.find((c) => c.code === code);
  if (listed) return reconnects(listed.action);
  const range = VECTORS.close.rule.ranges.find((r) => code >= r.from && code <= r.to);
  return reconnects(range ? range.action : VECTORS.close.rule.otherwise);
}

test("CloseCode names exactly the codes of the vectors", () => {
  const listed = Object.fromEntries(VECTORS.close.codes.map((c) => [c.name, c.code]));
  assert.deepEqual({ ...CloseCode }, listed);
});

test("shouldReconnect follows the vectors for every close code", () => {
  for (let code = 0; code <= 65535; code++) {
    assert.equal(shouldReconnect(code), expected(code), `close code ${code}: shouldReconnect disagrees with tests/vectors/codes.json`);
  }
  for (const code of [null, undefined, NaN]) assert.equal(shouldReconnect(code), false, `${code}`);
});

test("every URI the client knows is in the vectors, under the same name", () => {
  const byUri = new Map(VECTORS.uris.map((u) => [u.uri, u.name]));
  for (const [name, uri] of Object.entries(URI)) {
    assert.ok(byUri.has(uri), `URI.${name} = ${uri} is not in tests/vectors/codes.json`);
    assert.equal(byUri.get(uri), name, `${uri} is named ${byUri.get(uri)} in the vectors`);
  }
});

test("the close code after an ABORT or GOODBYE is the one the vectors give its URI", () => {
  for (const u of VECTORS.uris) {
    if (!u.messages.includes("ABORT") && !u.messages.includes("GOODBYE")) continue;
    const after = closeCodeAfter(u.uri);
    const reconnecting = u.close.filter((code) => shouldReconnect(code));
    if (reconnecting.length) assert.equal(after, reconnecting[0], `${u.uri}: the vectors close with ${u.close}`);
    else assert.equal(after, null, `${u.uri} closes with ${JSON.stringify(u.close)}, which is not retried`);
  }
});
