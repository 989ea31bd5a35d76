// WAMP v2 message codes and the JSON serializer (subprotocol "wamp.2.json").
//
// Pure data in, data out: nothing here touches a socket.
// Binary values travel in JSON as a string made of a NUL character followed by
// the base64 of the bytes (WAMP spec, docs/protocol.md section 1); they are
// decoded to Uint8Array and encoded from Uint8Array / ArrayBuffer.

/** Message type codes used by a subscriber, publisher, caller and callee. */
export const MSG = Object.freeze({
  HELLO: 1,
  WELCOME: 2,
  ABORT: 3,
  CHALLENGE: 4,
  AUTHENTICATE: 5,
  GOODBYE: 6,
  ERROR: 8,
  PUBLISH: 16,
  PUBLISHED: 17,
  SUBSCRIBE: 32,
  SUBSCRIBED: 33,
  UNSUBSCRIBE: 34,
  UNSUBSCRIBED: 35,
  EVENT: 36,
  CALL: 48,
  CANCEL: 49,
  RESULT: 50,
  REGISTER: 64,
  REGISTERED: 65,
  UNREGISTER: 66,
  UNREGISTERED: 67,
  INVOCATION: 68,
  INTERRUPT: 69,
  YIELD: 70,
});

/** WAMP URIs the client sends or reacts to. */
export const URI = Object.freeze({
  CLOSE_REALM: "wamp.close.close_realm",
  GOODBYE_AND_OUT: "wamp.close.goodbye_and_out",
  SYSTEM_SHUTDOWN: "wamp.close.system_shutdown",
  TOKEN_EXPIRED: "telegraphy.close.token_expired",
  NO_AUTH_METHOD: "wamp.error.no_auth_method",
  AUTHENTICATION_FAILED: "wamp.error.authentication_failed",
  PROTOCOL_VIOLATION: "wamp.error.protocol_violation",
});

/** The JSON serializer: its subprotocol, and text (not binary) frames. */
export const JSON_SERIALIZER = Object.freeze({
  protocol: "wamp.2.json",
  binary: false,
  encode,
  decode,
});

/** The roles and features announced in HELLO. */
export function helloDetails(authmethods, agent) {
  return {
    agent,
    authmethods,
    roles: {
      subscriber: { features: { pattern_based_subscription: true, publisher_identification: true } },
      publisher: {
        features: { publisher_exclusion: true, subscriber_blackwhite_listing: true, publisher_identification: true },
      },
      caller: {
        features: { progressive_call_results: true, call_canceling: true, call_timeout: true, caller_identification: true },
      },
      callee: {
        features: {
          progressive_call_results: true,
          call_canceling: true,
          caller_identification: true,
          pattern_based_registration: true,
          shared_registration: true,
          registration_revocation: true,
        },
      },
    },
  };
}

/** Serializes one message to a JSON text frame. */
export function encode(message) {
  return JSON.stringify(message, (_key, value) => {
    if (value instanceof Uint8Array) return "\u0000" + bytesToBase64(value);
    if (value instanceof ArrayBuffer) return "\u0000" + bytesToBase64(new Uint8Array(value));
    return value;
  });
}

/**
 * Parses one text frame into a message: an array whose first element is an
 * integer code. Throws a TypeError for anything else.
 */
export function decode(text) {
  if (typeof text !== "string") throw new TypeError("expected a text frame for wamp.2.json");
  const message = JSON.parse(text, (_key, value) =>
    typeof value === "string" && value.charCodeAt(0) === 0 ? base64ToBytes(value.slice(1)) : value,
  );
  if (!Array.isArray(message) || !Number.isInteger(message[0])) {
    throw new TypeError("a WAMP message is a JSON array that starts with an integer code");
  }
  return message;
}

function bytesToBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function base64ToBytes(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}
