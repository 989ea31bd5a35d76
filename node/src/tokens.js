// Short-lived JWTs for browsers (WAMP ticket authentication), signed with
// `jose`: HS256 with the gateway's shared secret (TELEGRAPHY_JWT_SECRET), or
// RS256 / EdDSA with a private key whose public half the gateway holds
// (TELEGRAPHY_JWT_PUBLIC_KEY_FILE). Claims: docs/security.md#tokens-jwt.

import { createPrivateKey, KeyObject } from "node:crypto";
import { SignJWT } from "jose";
import { InvalidInput } from "./errors.js";
import { describe, isValidTopic } from "./uri.js";

export const DEFAULT_TOKEN_TTL_SECONDS = 300;
/** The gateway refuses shorter HS256 secrets. */
export const MIN_SECRET_BYTES = 32;

const OPTIONS = [
  "subject",
  "role",
  "subscribe",
  "publish",
  "realm",
  "ttlSeconds",
  "secret",
  "privateKey",
  "algorithm",
  "audience",
  "issuer",
  "now",
];

function patterns(value, name) {
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value)) {
    throw new InvalidInput(
      `\`${name}\` must be an array of topic patterns${typeof value === "string" ? ", not one string: [" + JSON.stringify(value) + "]" : ""}`,
    );
  }
  for (const p of value) {
    if (typeof p !== "string" || p === "") {
      throw new InvalidInput(`\`${name}\` must hold topic patterns (non-empty strings such as "shop.orders.*"), not ${describe(p)}`);
    }
  }
  return [...value];
}

/** The signing key and algorithm from `secret` or `privateKey`. */
function signingKey({ secret, privateKey, algorithm }) {
  if ((secret == null) === (privateKey == null)) {
    throw new InvalidInput(
      "give either `secret` (HS256: the gateway's TELEGRAPHY_JWT_SECRET) or `privateKey` (RS256/EdDSA: the gateway holds the public key), not both",
    );
  }
  if (secret != null) {
    let bytes;
    if (typeof secret === "string") bytes = new TextEncoder().encode(secret);
    else if (secret instanceof Uint8Array) bytes = secret;
    else throw new InvalidInput(`\`secret\` must be a string or a Uint8Array, not ${describe(secret)}`);
    if (bytes.length < MIN_SECRET_BYTES) {
      throw new InvalidInput(
        `the secret is ${bytes.length} bytes long; the gateway needs at least ${MIN_SECRET_BYTES} (generate one with \`openssl rand -hex 32\`)`,
      );
    }
    if (algorithm != null && algorithm !== "HS256") {
      throw new InvalidInput(`a shared secret signs with HS256, not ${algorithm}; for ${algorithm} pass \`privateKey\``);
    }
    return { key: bytes, alg: "HS256" };
  }
  let key = privateKey;
  if (typeof key === "string" || Buffer.isBuffer(key)) {
    try {
      key = createPrivateKey(key);
    } catch (e) {
      throw new InvalidInput(`\`privateKey\` is not a PEM private key: ${e.message}`, { cause: e });
    }
  }
  let type;
  if (key instanceof KeyObject) {
    if (key.type !== "private") throw new InvalidInput(`\`privateKey\` is a ${key.type} key; sign with the private key (the gateway holds the public one)`);
    type = key.asymmetricKeyType;
  } else if (typeof CryptoKey !== "undefined" && key instanceof CryptoKey) {
    if (key.type !== "private") throw new InvalidInput(`\`privateKey\` is a ${key.type} key; sign with the private key`);
    type = key.algorithm.name === "Ed25519" ? "ed25519" : key.algorithm.name.startsWith("RS") ? "rsa" : key.algorithm.name;
  } else {
    throw new InvalidInput(`\`privateKey\` must be a PEM string, a KeyObject or a CryptoKey, not ${describe(key)}`);
  }
  const alg = { rsa: "RS256", ed25519: "EdDSA" }[type];
  if (!alg) {
    throw new InvalidInput(`the gateway verifies RSA (RS256) and Ed25519 (EdDSA) keys; this private key is ${type}`);
  }
  if (algorithm != null && algorithm !== alg) {
    throw new InvalidInput(`a ${type} key signs with ${alg}, not ${algorithm}`);
  }
  return { key, alg };
}

/**
 * Mints a JWT for one user; resolves with the token (a string). The browser
 * presents it with WAMP ticket authentication.
 *
 * - `subject` (required): the user, becomes the session's authid (`sub`);
 * - `role`: a role configured on the gateway (default there: `user`);
 * - `subscribe`, `publish`: arrays of topic patterns that narrow the role's
 *   rights (`"shop.orders.42.*"`, `"shop..status"`, `"*"`);
 * - `realm`: a realm or an array of realms the token may join;
 * - `ttlSeconds` (300): the token expires then (`exp`, checked exactly);
 * - `secret` (HS256) or `privateKey` (PEM, KeyObject or CryptoKey: RS256 for
 *   RSA, EdDSA for Ed25519); `algorithm` only double-checks that choice;
 * - `audience`, `issuer`: `aud`, `iss`, when the gateway checks them.
 */
export async function mintToken(options = {}) {
  if (options === null || typeof options !== "object") throw new InvalidInput("mintToken takes an options object");
  for (const key of Object.keys(options)) {
    if (!OPTIONS.includes(key)) throw new InvalidInput(`unknown mintToken option \`${key}\`; use ${OPTIONS.join(", ")}`);
  }
  const { subject, role, realm, ttlSeconds = DEFAULT_TOKEN_TTL_SECONDS, audience, issuer, now } = options;
  const sub = typeof subject === "number" || typeof subject === "bigint" ? String(subject) : subject;
  if (typeof sub !== "string" || sub === "") {
    throw new InvalidInput("`subject` is required: the user's id (a non-empty string), which becomes the session's authid");
  }
  if (role != null && (typeof role !== "string" || role === "")) {
    throw new InvalidInput(`\`role\` must be the name of a role configured on the gateway, not ${describe(role)}`);
  }
  if (!(Number.isInteger(ttlSeconds) && ttlSeconds > 0)) {
    throw new InvalidInput(`\`ttlSeconds\` must be a positive whole number of seconds, not ${String(ttlSeconds)}`);
  }
  const realms = realm == null ? undefined : Array.isArray(realm) ? realm : [realm];
  for (const r of realms ?? []) {
    if (!isValidTopic(r)) throw new InvalidInput(`\`realm\`: \`${String(r)}\` is not a valid realm name`);
  }
  const { key, alg } = signingKey(options);
  const iat = Math.floor((now ?? Date.now()) / 1000);
  const claims = { sub, iat, exp: iat + ttlSeconds };
  if (role != null) claims.role = role;
  const subscribe = patterns(options.subscribe, "subscribe");
  const publish = patterns(options.publish, "publish");
  if (subscribe) claims.subscribe = subscribe;
  if (publish) claims.publish = publish;
  if (realms) claims.realm = Array.isArray(realm) ? realms : realm;
  if (audience != null) claims.aud = audience;
  if (issuer != null) claims.iss = issuer;
  return new SignJWT(claims).setProtectedHeader({ alg, typ: "JWT" }).sign(key);
}
