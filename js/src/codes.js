// WebSocket close codes, and what a client does after each: the reconnect
// rule of docs/protocol.md section 6, whose source of truth is
// tests/vectors/codes.json (js/test/codes.test.js checks this file against it).

/** Close codes the gateway sends, and those a client must understand. */
export const CloseCode = Object.freeze({
  NORMAL: 1000, // GOODBYE done, unknown realm, or the client's own close: do not reconnect
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002, // not a WAMP message: a client bug, do not reconnect
  UNSUPPORTED_DATA: 1003, // the wrong frame type for the serializer: a client bug
  NO_STATUS: 1005, // reported when the peer (often a proxy) closed without a code
  ABNORMAL: 1006, // the connection dropped (or could not be opened) without a close frame
  INVALID_PAYLOAD: 1007, // a text frame that is not UTF-8: a client bug
  POLICY_VIOLATION: 1008, // not from the gateway: a proxy or server refused by policy
  MESSAGE_TOO_BIG: 1009, // larger than the gateway's limits.max_message_size
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012, // the node is draining: reconnect now, to another node
  TRY_AGAIN_LATER: 1013,
  BAD_GATEWAY: 1014, // a proxy in front got no good answer from the gateway
  SLOW_CONSUMER: 4000,
  IDLE_TIMEOUT: 4001,
  HELLO_TIMEOUT: 4002,
  TOKEN_EXPIRED: 4003, // reconnect with a fresh token
  AUTH_FAILED: 4500, // do not reconnect with the same credentials
});

const RECONNECT = new Set([1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/**
 * True when a connection closed with `code` should be retried with backoff:
 * 1001, 1005, 1006, 1011, 1012, 1013, 1014 and the range 4000-4499.
 * False for everything else, in particular 1000, 1002-1003, 1007-1009 and
 * 4500-4999 (authentication failed: retrying cannot help without a change).
 */
export function shouldReconnect(code) {
  return RECONNECT.has(code) || (code >= 4000 && code <= 4499);
}

/**
 * The close code the gateway sends right after an ABORT or a GOODBYE with
 * `reason` (tests/vectors/codes.json, `uris[].close`), or null when it
 * closes with one that must not be retried. The client uses it when the
 * gateway's close frame does not arrive: the message alone then decides, as
 * the code would have.
 */
export function closeCodeAfter(reason) {
  return CLOSE_AFTER[reason] ?? null;
}

const CLOSE_AFTER = Object.freeze({
  "telegraphy.close.idle_timeout": 4001,
  "telegraphy.close.hello_timeout": 4002,
  "telegraphy.close.token_expired": 4003,
  "wamp.close.system_shutdown": 1012,
});
