// Topic URI rules, as the gateway applies them (`wamp/src/uri.rs`, loose
// rules): dot-separated components, each non-empty and free of whitespace
// and `#`. Topics under `wamp.` and `telegraphy.presence.` are reserved for the router.

import { InvalidInput } from "./errors.js";

// Rust's `char::is_whitespace` (the Unicode White_Space property). JS's `\s`
// differs: it also matches U+FEFF and misses U+0085.
const WHITESPACE = new Set(
  "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" +
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000",
);

function componentOk(component) {
  if (component.length === 0) return false;
  for (const ch of component) {
    if (ch === "#" || WHITESPACE.has(ch)) return false;
  }
  return true;
}

/** Whether `topic` is a concrete topic URI under the loose rules. */
export function isValidTopic(topic) {
  return typeof topic === "string" && topic.length > 0 && topic.split(".").every(componentOk);
}

/** Returns `topic`, or throws InvalidInput saying what is wrong. */
export function checkTopic(topic) {
  if (typeof topic !== "string") {
    throw new InvalidInput(`the topic must be a string, not ${describe(topic)}`);
  }
  if (!isValidTopic(topic)) {
    throw new InvalidInput(
      `\`${topic}\` is not a valid topic URI (dot-separated words, no spaces, no \`#\`, no empty parts)`,
    );
  }
  if (topic.startsWith("wamp.") || topic.startsWith("telegraphy.presence.")) {
    throw new InvalidInput("topics under `wamp.` and `telegraphy.presence.` are reserved for the router");
  }
  return topic;
}

/** Returns `realm`, or throws InvalidInput. */
export function checkRealm(realm) {
  if (!isValidTopic(realm)) {
    throw new InvalidInput(
      `\`${String(realm)}\` is not a valid realm name (a URI such as realm1 or com.example.tenant)`,
    );
  }
  return realm;
}

/** A short description of a value's type, for messages. */
export function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return value.constructor?.name ? `a ${value.constructor.name}` : "an object";
  return `a ${typeof value}`;
}
