// The envelope encoder against the shared vectors (tests/vectors/envelope/,
// read at test time), and the canonical-form rules of docs/envelope.md.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { encode as msgpackEncode } from "@msgpack/msgpack";
import {
  InvalidInput,
  MAX_ID,
  decodeEnvelope,
  encodeEnvelope,
  newEnvelope,
  toWampJson,
} from "@telegraphy/server";
import { REPO } from "../testing/gateway.js";
import { parseJson } from "../testing/json.js";

const VECTORS = join(REPO, "tests/vectors/envelope");
const hex = (bytes) => Buffer.from(bytes).toString("hex");

/** WAMP JSON binary strings ("\0" + base64) as bytes, as check_vectors.py does. */
function binary(v) {
  if (typeof v === "string" && v.startsWith("\u0000")) return new Uint8Array(Buffer.from(v.slice(1), "base64"));
  if (Array.isArray(v)) return v.map(binary);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, binary(x)]));
  return v;
}

function vectors() {
  const names = readdirSync(VECTORS).filter((f) => f.endsWith(".json")).sort();
  return names.map((name) => {
    const d = parseJson(readFileSync(join(VECTORS, name), "utf8"));
    return {
      name,
      bytes: new Uint8Array(readFileSync(join(VECTORS, name.replace(/\.json$/, ".msgpack")))),
      envelope: {
        publication: d.publication,
        realm: d.realm,
        topic: d.topic,
        publishedAtUs: d.published_at_us,
        args: binary(d.args),
        kwargs: binary(d.kwargs),
        filter: d.filter,
        publisher: d.publisher,
      },
    };
  });
}

test("the encoder reproduces every shared vector byte for byte", () => {
  const all = vectors();
  assert.ok(all.length >= 4, `expected the shared vectors in ${VECTORS}, found ${all.length}`);
  for (const { name, bytes, envelope } of all) {
    assert.equal(hex(encodeEnvelope(envelope)), hex(bytes), `${name}: encoded bytes differ from the vector`);
  }
});

test("every vector decodes to its description, and re-encodes to the same bytes", () => {
  for (const { name, bytes, envelope } of vectors()) {
    const decoded = decodeEnvelope(bytes);
    const expected = { ...envelope };
    // The filter as it travels: empty exclude* lists are left out.
    expected.filter = Object.fromEntries(
      Object.entries(envelope.filter).filter(([k, v]) => k.startsWith("eligible") || v.length > 0),
    );
    // Keys come back sorted; deepEqual ignores key order. Ids come back as
    // numbers up to 2^53, bigints beyond.
    const norm = (v) => (typeof v === "bigint" && v <= BigInt(MAX_ID) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
    const walk = (v) =>
      Array.isArray(v) ? v.map(walk) : v instanceof Uint8Array ? v : v !== null && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x)])) : norm(v);
    assert.deepEqual(decoded, walk(expected), `${name}: decoding the vector`);
    assert.equal(hex(encodeEnvelope(decoded)), hex(bytes), `${name}: re-encoding the decoded vector`);
  }
});

test("a newer format version is refused with a cause; garbage too", () => {
  const minimal = new Uint8Array(readFileSync(join(VECTORS, "minimal.msgpack")));
  const newer = minimal.slice();
  newer[1] = 0x02;
  assert.throws(() => decodeEnvelope(newer), /format version 2 is not 1; upgrade/);
  // A compatible revision appends elements: still readable.
  const appended = new Uint8Array([...minimal, 0xc0]);
  appended[0] = 0x9a;
  assert.equal(decodeEnvelope(appended).topic, "com.example.ping");
  for (const garbage of [new Uint8Array(), Buffer.from("probe"), new Uint8Array([0x91, 0x01]), minimal.slice(0, -1)]) {
    assert.throws(() => decodeEnvelope(garbage), InvalidInput);
  }
});

test("why not @msgpack/msgpack's encoder: it is not canonical for these values", () => {
  // Recorded so a future upgrade can revisit the choice (see src/envelope.js).
  assert.equal(hex(msgpackEncode(2 ** 53)), "cb4340000000000000", "2^53 as a float64");
  assert.equal(hex(msgpackEncode(5n, { useBigInt64: true })), "cf0000000000000005", "a small bigint in 64 bits");
  const utf16Sorted = hex(msgpackEncode({ "\uffff": 1, "😀": 2 }, { sortKeys: true }));
  assert.equal(utf16Sorted, "82a4f09f988002a3efbfbf01", "keys sorted by UTF-16, not UTF-8");
});

/** The payload part of an encoded envelope: encode [value] as args and cut the header off. */
function payloadBytes(value) {
  const head = encodeEnvelope({ publication: 1, realm: "r", topic: "t", publishedAtUs: 0, args: [], kwargs: {} });
  const full = encodeEnvelope({ publication: 1, realm: "r", topic: "t", publishedAtUs: 0, args: [value], kwargs: {} });
  // args is the 6th element: header bytes up to it are identical; args header 0x90 → 0x91.
  const at = head.indexOf(0x90, 6);
  return hex(full.slice(at + 1, full.length - (head.length - at - 1)));
}

test("canonical form: integers in their smallest form, floats as float64", () => {
  const cases = [
    [0, "00"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65536, "ce00010000"],
    [2 ** 32, "cf0000000100000000"], [2 ** 53, "cf0020000000000000"], [-1, "ff"], [-32, "e0"], [-33, "d0df"],
    [-129, "d1ff7f"], [-(2 ** 31), "d280000000"], [-(2 ** 31) - 1, "d3ffffffff7fffffff"],
    [2n ** 64n - 1n, "cfffffffffffffffff"], [-(2n ** 63n), "d38000000000000000"], [5n, "05"], [-5n, "fb"],
    [0.5, "cb3fe0000000000000"], [1e100, "cb54b249ad2594c37d"], [-0, "00"],
    [true, "c3"], [false, "c2"], [null, "c0"],
    ["", "a0"], ["é", "a2c3a9"], [new Uint8Array([1, 2]), "c4020102"], [new Uint8Array([1, 2]).buffer, "c4020102"],
  ];
  for (const [value, expected] of cases) assert.equal(payloadBytes(value), expected, `${String(value)}`);
});

test("canonical form: map keys sorted by UTF-8 bytes; undefined properties left out; Maps work", () => {
  // "\uffff" (ef bf bf) sorts before "😀" (f0 9f 98 80) in UTF-8, after it in UTF-16.
  assert.equal(payloadBytes({ "😀": 2, "\uffff": 1 }), "82a3efbfbf01a4f09f988002");
  // Integer-like keys: JS objects iterate them first, numerically; bytes sort "10" < "9".
  assert.equal(payloadBytes({ b: 1, 9: 2, 10: 3 }), "83a2313003a13902a16201");
  assert.equal(payloadBytes({ a: 1, gone: undefined }), "81a16101");
  assert.equal(payloadBytes(new Map([["b", 1], ["a", 2]])), payloadBytes({ a: 2, b: 1 }));
  assert.equal(payloadBytes(Object.assign(Object.create(null), { z: 1 })), "81a17a01");
});

test("values no subscriber can receive are refused with InvalidInput saying what to do", () => {
  const refuse = (value, message) =>
    assert.throws(() => payloadBytes(value), (err) => err instanceof InvalidInput && message.test(err.message), String(message));
  refuse(NaN, /NaN cannot be published/);
  refuse(Infinity, /Infinity cannot be published/);
  refuse(new Date(0), /convert dates to strings first/);
  refuse([undefined], /use null/);
  refuse(2n ** 64n, /does not fit in 64 bits; send it as a string/);
  refuse("\ud800", /not valid Unicode/);
  refuse(new Map([[1, "x"]]), /map keys must be strings/);
  refuse(new Float32Array(2), /Uint8Array or Buffer/);
  refuse(new (class Order {})(), /a Order cannot be published/);
  refuse(Symbol("s"), /cannot be published/);
  let deep = [];
  for (let i = 0; i < 63; i++) deep = [deep];
  refuse(deep, /nest deeper than 64 levels/);
  let ok = [];
  for (let i = 0; i < 61; i++) ok = [ok];
  payloadBytes(ok); // args (2) + 62 levels = 64: allowed
});

test("the filter: snake_case lists in canonical order; empty exclude* dropped, empty eligible* kept", () => {
  const e = { publication: 1, realm: "r", topic: "t", publishedAtUs: 0, args: [], kwargs: {} };
  const filter = { exclude_authid: [], eligible: [], exclude: [3], eligible_authrole: ["staff"] };
  const decoded = decodeEnvelope(encodeEnvelope({ ...e, filter }));
  assert.deepEqual(decoded.filter, { eligible: [], eligible_authrole: ["staff"], exclude: [3] });
  assert.deepEqual(Object.keys(decoded.filter), ["eligible", "eligible_authrole", "exclude"]);
  assert.throws(() => encodeEnvelope({ ...e, filter: { exclude: [-1] } }), /session ids/);
  assert.throws(() => encodeEnvelope({ ...e, filter: { exclude_authid: "bob" } }), /not one string/);
  assert.throws(() => encodeEnvelope({ ...e, filter: { eligble: [1] } }), /unknown filter option `eligble`/);
});

test("a new envelope: publication id in 1..=2^53, published now (microseconds)", () => {
  const ids = new Set();
  for (let i = 0; i < 1000; i++) {
    const e = newEnvelope({ realm: "realm1", topic: "a.b" });
    assert.ok(Number.isSafeInteger(e.publication) || e.publication === MAX_ID);
    assert.ok(e.publication >= 1 && e.publication <= MAX_ID);
    ids.add(e.publication);
    assert.ok(Math.abs(e.publishedAtUs - Date.now() * 1000) < 5e6);
  }
  assert.equal(ids.size, 1000);
});

test("WAMP JSON for HTTP bodies: binary as NUL + base64, exact bigints, floats stay floats", () => {
  assert.equal(toWampJson([new Uint8Array([0, 1, 2, 255]), 2n ** 64n - 1n, 1e20, 0.5, 7, { b: 1, a: [] }]),
    '["\\u0000AAEC/w==",18446744073709551615,1e+20,0.5,7,{"a":[],"b":1}]');
  assert.throws(() => toWampJson(["\u0000not binary"]), /reads as binary data in WAMP JSON; send a Uint8Array/);
  assert.throws(() => toWampJson([NaN]), InvalidInput);
});
