// The bus envelope (format version 1, docs/envelope.md) in its canonical
// msgpack form: the same bytes the gateway, the Rust publisher and the
// Python package write, checked against tests/vectors/envelope/.
//
//     [1, publication, realm, topic, published_at_us, args, kwargs, filter, publisher]
//
// Canonical means: every map's keys sorted by their UTF-8 bytes, integers in
// their smallest form (non-negative ones unsigned), floats always float64,
// binary data as msgpack `bin`, smallest headers. A general msgpack library
// cannot be told all of that (@msgpack/msgpack writes 2^53 as a float and a
// BigInt always in 64 bits, and sorts keys as UTF-16), so this module writes
// the envelope itself, checking every value on the way: a bad payload fails
// here with a message instead of on a gateway. Decoding uses @msgpack/msgpack.
//
// JavaScript values and what they become:
//
//   null                      nil          (undefined object properties are left out,
//   true / false              bool          as JSON.stringify does)
//   integral number           int          (within -2^63 .. 2^64-1; beyond: float64)
//   other finite number       float64
//   bigint                    int          (must fit in 64 bits)
//   string                    str
//   Uint8Array / Buffer /     bin          (WAMP JSON subscribers get "\0" + base64)
//     ArrayBuffer
//   array                     array
//   plain object / Map        map          (string keys only)
//
// Anything else (Date, class instances, NaN, Infinity, symbols, functions)
// is refused with InvalidInput: convert it first (e.g. date.toISOString()).

import { randomBytes } from "node:crypto";
import { decode } from "@msgpack/msgpack";
import { InvalidInput } from "./errors.js";
import { describe } from "./uri.js";

export const FORMAT_VERSION = 1;
/** The largest id WAMP allows (session and publication ids are 1..=2^53). */
export const MAX_ID = 2 ** 53;
/** Nesting the gateway decodes, counting the envelope's own array. */
export const MAX_DEPTH = 64;
/** The subscriber black/white lists, in canonical (UTF-8 byte) order. */
export const FILTER_KEYS = Object.freeze([
  "eligible",
  "eligible_authid",
  "eligible_authrole",
  "exclude",
  "exclude_authid",
  "exclude_authrole",
]);
const PUBLISHER_KEYS = ["authid", "authrole", "disclose_me", "exclude_me", "node", "session"];

const I64_MIN = -(2n ** 63n);
const U64_END = 2n ** 64n;
const NUM_I64_MIN = -(2 ** 63);
const NUM_U64_END = 2 ** 64;

// ---------------------------------------------------------------------------
// Classifying values (shared by the msgpack and the JSON writer)

/** Whether a number is written as a msgpack integer (else float64). */
function isIntegerNumber(n) {
  return Number.isInteger(n) && n >= NUM_I64_MIN && n < NUM_U64_END;
}

function checkBigInt(n, where) {
  if (n < I64_MIN || n >= U64_END) {
    throw new InvalidInput(`${where}: the integer ${n} does not fit in 64 bits; send it as a string`);
  }
}

function checkString(s, where) {
  if (!s.isWellFormed()) {
    throw new InvalidInput(`${where}: a string is not valid Unicode (lone surrogate)`);
  }
}

/** The bytes of binary data, or null when `value` is not binary. */
function binaryBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  return null;
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

const utf8 = new TextEncoder();

/**
 * A map's entries as [keyBytes, key, value], sorted by the key's UTF-8
 * bytes; undefined object properties are left out.
 */
function sortedEntries(value, where) {
  const entries = [];
  const add = (k, v) => {
    if (typeof k !== "string") {
      throw new InvalidInput(`${where}: map keys must be strings, not ${describe(k)} (${String(k)})`);
    }
    checkString(k, where);
    entries.push([Buffer.from(utf8.encode(k)), k, v]);
  };
  if (value instanceof Map) {
    for (const [k, v] of value) add(k, v);
  } else {
    for (const k of Object.keys(value)) {
      if (value[k] !== undefined) add(k, value[k]);
    }
  }
  return entries.sort((a, b) => Buffer.compare(a[0], b[0]));
}

function unsupported(value, where) {
  let hint = "use null, booleans, numbers, bigints, strings, Uint8Array/Buffer, arrays and plain objects";
  if (value instanceof Date) hint = "convert dates to strings first (date.toISOString())";
  else if (value === undefined) hint = "use null for a missing value";
  else if (typeof value === "number") hint = "JSON subscribers cannot receive it";
  else if (ArrayBuffer.isView(value)) hint = "send binary data as a Uint8Array or Buffer";
  const what = typeof value === "number" ? String(value) : describe(value);
  return new InvalidInput(`${where}: ${what} cannot be published; ${hint}`);
}

function checkDepth(depth, where) {
  if (depth > MAX_DEPTH) {
    throw new InvalidInput(`${where}: arrays and objects nest deeper than ${MAX_DEPTH} levels`);
  }
}

// ---------------------------------------------------------------------------
// The msgpack writer

class Writer {
  constructor(size = 256) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.bytes.length) return;
    let size = this.bytes.length * 2;
    while (size < this.length + n) size *= 2;
    const bytes = new Uint8Array(size);
    bytes.set(this.bytes.subarray(0, this.length));
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer);
  }

  u8(b) {
    this.reserve(1);
    this.bytes[this.length++] = b;
  }

  /** A type byte then an unsigned big-endian integer of `width` bytes. */
  head(type, width, n) {
    this.reserve(1 + width);
    this.bytes[this.length] = type;
    const at = this.length + 1;
    if (width === 1) this.view.setUint8(at, n);
    else if (width === 2) this.view.setUint16(at, n);
    else this.view.setUint32(at, n);
    this.length = at + width;
  }

  raw(bytes) {
    this.reserve(bytes.length);
    this.bytes.set(bytes, this.length);
    this.length += bytes.length;
  }

  nil() {
    this.u8(0xc0);
  }

  bool(b) {
    this.u8(b ? 0xc3 : 0xc2);
  }

  float(f) {
    this.reserve(9);
    this.bytes[this.length] = 0xcb;
    this.view.setFloat64(this.length + 1, f);
    this.length += 9;
  }

  /** An integer (number or bigint, already range-checked), smallest form. */
  int(n) {
    if (typeof n === "number" && !Number.isSafeInteger(n)) n = BigInt(n);
    if (typeof n === "bigint") {
      if (n >= -(2n ** 31n) && n < 2n ** 32n) {
        n = Number(n);
      } else {
        this.reserve(9);
        this.bytes[this.length] = n >= 0n ? 0xcf : 0xd3;
        if (n >= 0n) this.view.setBigUint64(this.length + 1, n);
        else this.view.setBigInt64(this.length + 1, n);
        this.length += 9;
        return;
      }
    }
    if (n >= 0) {
      if (n < 0x80) this.u8(n);
      else if (n < 0x100) this.head(0xcc, 1, n);
      else if (n < 0x10000) this.head(0xcd, 2, n);
      else if (n < 0x100000000) this.head(0xce, 4, n);
      else this.int(BigInt(n));
    } else if (n >= -32) {
      this.u8(n & 0xff);
    } else if (n >= -0x80) {
      this.reserve(2);
      this.bytes[this.length] = 0xd0;
      this.view.setInt8(this.length + 1, n);
      this.length += 2;
    } else if (n >= -0x8000) {
      this.reserve(3);
      this.bytes[this.length] = 0xd1;
      this.view.setInt16(this.length + 1, n);
      this.length += 3;
    } else if (n >= -0x80000000) {
      this.reserve(5);
      this.bytes[this.length] = 0xd2;
      this.view.setInt32(this.length + 1, n);
      this.length += 5;
    } else {
      this.int(BigInt(n));
    }
  }

  strBytes(bytes) {
    const n = bytes.length;
    if (n < 32) this.u8(0xa0 | n);
    else if (n < 0x100) this.head(0xd9, 1, n);
    else if (n < 0x10000) this.head(0xda, 2, n);
    else this.head(0xdb, 4, n);
    this.raw(bytes);
  }

  str(s) {
    this.strBytes(utf8.encode(s));
  }

  bin(bytes) {
    const n = bytes.length;
    if (n < 0x100) this.head(0xc4, 1, n);
    else if (n < 0x10000) this.head(0xc5, 2, n);
    else this.head(0xc6, 4, n);
    this.raw(bytes);
  }

  array(n) {
    if (n < 16) this.u8(0x90 | n);
    else if (n < 0x10000) this.head(0xdc, 2, n);
    else this.head(0xdd, 4, n);
  }

  map(n) {
    if (n < 16) this.u8(0x80 | n);
    else if (n < 0x10000) this.head(0xde, 2, n);
    else this.head(0xdf, 4, n);
  }

  /** A payload value, checked; `depth` is its nesting level if a container. */
  value(v, depth, where) {
    switch (typeof v) {
      case "boolean":
        return this.bool(v);
      case "number":
        if (!Number.isFinite(v)) throw unsupported(v, where);
        return isIntegerNumber(v) ? this.int(v) : this.float(v);
      case "bigint":
        checkBigInt(v, where);
        return this.int(v);
      case "string":
        checkString(v, where);
        return this.str(v);
      case "object": {
        if (v === null) return this.nil();
        const bytes = binaryBytes(v);
        if (bytes) return this.bin(bytes);
        if (Array.isArray(v)) {
          checkDepth(depth, where);
          this.array(v.length);
          for (let i = 0; i < v.length; i++) this.value(v[i], depth + 1, `${where}[${i}]`);
          return;
        }
        if (v instanceof Map || isPlainObject(v)) {
          checkDepth(depth, where);
          const entries = sortedEntries(v, where);
          this.map(entries.length);
          for (const [keyBytes, key, item] of entries) {
            this.strBytes(keyBytes);
            this.value(item, depth + 1, `${where}[${JSON.stringify(key)}]`);
          }
          return;
        }
        throw unsupported(v, where);
      }
      default:
        throw unsupported(v, where);
    }
  }

  result() {
    return this.bytes.slice(0, this.length);
  }
}

// ---------------------------------------------------------------------------
// The JSON writer (HTTP publish bodies): the same checks, WAMP binary strings

/**
 * `value` as WAMP JSON text: binary data becomes a string holding NUL then
 * the base64 of the bytes, bigints are written as exact integers. A string
 * that starts with NUL would read as binary: refused.
 */
export function toWampJson(value, depth = 2, where = "payload") {
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isFinite(value)) throw unsupported(value, where);
      if (isIntegerNumber(value)) return BigInt(value).toString();
      // A float: never written as a bare integer, so the gateway reads a float.
      return Number.isInteger(value) ? value.toExponential() : JSON.stringify(value);
    case "bigint":
      checkBigInt(value, where);
      return value.toString();
    case "string":
      checkString(value, where);
      if (value.startsWith("\u0000")) {
        throw new InvalidInput(
          `${where}: a string starting with a NUL character reads as binary data in WAMP JSON; send a Uint8Array instead`,
        );
      }
      return JSON.stringify(value);
    case "object": {
      if (value === null) return "null";
      const bytes = binaryBytes(value);
      if (bytes) return JSON.stringify(`\u0000${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64")}`);
      if (Array.isArray(value)) {
        checkDepth(depth, where);
        return `[${value.map((v, i) => toWampJson(v, depth + 1, `${where}[${i}]`)).join(",")}]`;
      }
      if (value instanceof Map || isPlainObject(value)) {
        checkDepth(depth, where);
        const parts = sortedEntries(value, where).map(
          ([, k, v]) => `${JSON.stringify(k)}:${toWampJson(v, depth + 1, `${where}[${JSON.stringify(k)}]`)}`,
        );
        return `{${parts.join(",")}}`;
      }
      throw unsupported(value, where);
    }
    default:
      throw unsupported(value, where);
  }
}

// ---------------------------------------------------------------------------
// The filter (subscriber black/white lists)

function idList(value, key) {
  if (!Array.isArray(value)) throw new InvalidInput(`\`${key}\` must be an array of session ids`);
  return value.map((v) => {
    const ok =
      (typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= MAX_ID) ||
      (typeof v === "bigint" && v >= 0n && v <= BigInt(MAX_ID));
    if (!ok) throw new InvalidInput(`\`${key}\` must hold session ids (integers from 0 to 2^53), not ${String(v)}`);
    return Number(v);
  });
}

function stringList(value, key) {
  if (!Array.isArray(value)) {
    throw new InvalidInput(`\`${key}\` must be an array of strings${typeof value === "string" ? ", not one string" : ""}`);
  }
  return value.map((v) => {
    if (typeof v !== "string") throw new InvalidInput(`\`${key}\` must hold strings, not ${describe(v)}`);
    checkString(v, key);
    return v;
  });
}

/**
 * The black/white lists, checked, in canonical form (keys snake_case as on
 * the wire): only the lists that are set; an empty `exclude*` list is left
 * out, an empty `eligible*` list is kept (it admits nobody).
 */
export function canonicalFilter(filter) {
  const out = {};
  for (const [key, value] of Object.entries(filter ?? {})) {
    if (!FILTER_KEYS.includes(key)) {
      throw new InvalidInput(`unknown filter option \`${key}\`; use one of ${FILTER_KEYS.join(", ")}`);
    }
    if (value === undefined || value === null) continue;
    const items = key === "eligible" || key === "exclude" ? idList(value, key) : stringList(value, key);
    if (key.startsWith("exclude") && items.length === 0) continue;
    out[key] = items;
  }
  return Object.fromEntries(FILTER_KEYS.filter((k) => k in out).map((k) => [k, out[k]]));
}

// ---------------------------------------------------------------------------
// Envelopes

/**
 * @typedef {object} Envelope
 * @property {string} realm
 * @property {string} topic
 * @property {number} publication        1..=2^53
 * @property {number|bigint} publishedAtUs  microseconds since the Unix epoch (0 if unknown)
 * @property {unknown[]} args
 * @property {Record<string, unknown>} kwargs
 * @property {object} filter             snake_case keys (FILTER_KEYS)
 * @property {object|null} publisher    the publishing WAMP session (gateway publishes only)
 */

/** A random publication id in 1..=2^53 (uniform: 2^64 is a multiple of 2^53). */
export function newPublicationId() {
  return Number(randomBytes(8).readBigUInt64BE(0) % BigInt(MAX_ID)) + 1;
}

/** A fresh envelope: random publication id, published now. */
export function newEnvelope({ realm, topic, args = [], kwargs = {}, filter = {} }) {
  return {
    realm,
    topic,
    publication: newPublicationId(),
    publishedAtUs: Date.now() * 1000,
    args,
    kwargs,
    filter,
    publisher: null,
  };
}

function uint(w, value, name) {
  const ok =
    (typeof value === "number" && Number.isInteger(value) && value >= 0 && value < NUM_U64_END) ||
    (typeof value === "bigint" && value >= 0n && value < U64_END);
  if (!ok) throw new InvalidInput(`envelope \`${name}\` must be an unsigned integer, not ${String(value)}`);
  w.int(value);
}

/** The canonical msgpack bytes of an envelope (every value checked). */
export function encodeEnvelope(envelope) {
  const { realm, topic, publication, publishedAtUs = 0, args = [], kwargs = {}, filter = {}, publisher = null, retain = false } = envelope;
  if (!Array.isArray(args)) throw new InvalidInput(`args must be an array, not ${describe(args)}`);
  if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs) || !(kwargs instanceof Map || isPlainObject(kwargs))) {
    throw new InvalidInput(`kwargs must be a plain object, not ${describe(kwargs)}`);
  }
  if (typeof realm !== "string" || typeof topic !== "string") {
    throw new InvalidInput("an envelope needs a realm and a topic (strings)");
  }
  const w = new Writer();
  // Format 1.1 appends options and position (nil: a store sets it).
  w.array(retain ? 11 : 9);
  w.int(FORMAT_VERSION);
  uint(w, publication, "publication");
  w.value(realm, 1, "realm");
  w.value(topic, 1, "topic");
  uint(w, publishedAtUs, "publishedAtUs");
  w.value(args, 2, "args");
  w.value(kwargs, 2, "kwargs");
  w.value(canonicalFilter(filter), 2, "filter");
  if (publisher === null || publisher === undefined) {
    w.nil();
  } else {
    w.map(PUBLISHER_KEYS.length);
    for (const key of PUBLISHER_KEYS) {
      w.str(key);
      const v = publisher[key];
      if (key === "node" || key === "session") uint(w, v, `publisher.${key}`);
      else if (key === "authid" || key === "authrole") {
        if (typeof v !== "string") throw new InvalidInput(`envelope \`publisher.${key}\` must be a string`);
        w.str(v);
      } else w.bool(Boolean(v));
    }
  }
  if (retain) {
    w.map(1);
    w.str("retain");
    w.bool(true);
    w.nil();
  }
  return w.result();
}

/** Bigints that fit in a double exactly become numbers (recursively). */
function smallBigIntsToNumbers(value) {
  if (typeof value === "bigint") {
    return value >= -BigInt(Number.MAX_SAFE_INTEGER) && value <= BigInt(MAX_ID) ? Number(value) : value;
  }
  if (Array.isArray(value)) return value.map(smallBigIntsToNumbers);
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, smallBigIntsToNumbers(v)]));
  }
  return value;
}

/**
 * Reads envelope bytes (version 1; elements after the 9th are ignored).
 * Integers beyond 2^53 come back as bigints, binary data as Uint8Array.
 */
export function decodeEnvelope(bytes) {
  let fields;
  try {
    fields = decode(bytes, { useBigInt64: true });
  } catch (e) {
    throw new InvalidInput(`not a msgpack envelope: ${e.message}`, { cause: e });
  }
  if (!Array.isArray(fields) || fields.length < 9) {
    throw new InvalidInput("not an envelope: expected an array of at least 9 elements");
  }
  fields = smallBigIntsToNumbers(fields.slice(0, 11));
  if (fields[0] !== FORMAT_VERSION) {
    throw new InvalidInput(`envelope format version ${String(fields[0])} is not ${FORMAT_VERSION}; upgrade this package`);
  }
  const [, id, realm, topic, publishedAtUs, args, kwargs, filter, publisher, options, position] = fields;
  // 1.1: options (retain) and the history position; a kept event's
  // publication id is its position (offset * 65536 + epoch).
  const retain = options?.retain === true;
  const publication = Array.isArray(position) ? Number(position[1]) * 65536 + Number(position[0]) : id;
  const envelope = { publication, realm, topic, publishedAtUs, args, kwargs, filter, publisher };
  if (retain) envelope.retain = true;
  return envelope;
}
