// Helpers shared by the bus transports.

import { isIP } from "node:net";

import { InvalidInput } from "../errors.js";

/** The URL with its password replaced by `***`, for messages. */
export function redact(url) {
  try {
    const u = new URL(url);
    if (!u.password) return url;
    u.password = "***";
    return u.toString();
  } catch {
    return String(url).replace(/\/\/([^:@/]*):[^@/]*@/, "//$1:***@");
  }
}

/**
 * A URL that lists several hosts (`scheme://U:P@H1:1,H2:2/tail`), taken
 * apart: `{ scheme: "scheme://", userinfo: "U:P@", hosts: ["H1:1", "H2:2"], tail: "/tail" }`.
 */
export function splitHosts(url) {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)([^/?]*)(.*)$/i.exec(url);
  if (!m) throw new InvalidInput(`bus \`${redact(url)}\` is not a URL`);
  const [, scheme, authority, tail] = m;
  const at = authority.lastIndexOf("@");
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : "";
  const hosts = authority.slice(at + 1).split(",").map((h) => h.trim());
  if (hosts.some((h) => h === "")) throw new InvalidInput(`bus \`${redact(url)}\`: an empty host in the list of hosts`);
  return { scheme, userinfo, hosts, tail };
}

/** Imports an optional peer dependency, or says how to install it. */
export async function importOptional(name, what) {
  try {
    return await import(name);
  } catch (e) {
    if (e?.code === "ERR_MODULE_NOT_FOUND" || e?.code === "MODULE_NOT_FOUND") {
      throw new InvalidInput(`publishing to ${what} needs the \`${name}\` package: npm install ${name}`, { cause: e });
    }
    throw e;
  }
}

/** `promise`, or `onTimeout()`'s error after `ms`. */
export function withTimeout(promise, ms, onTimeout) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** What to check when a broker's certificate is refused (the Rust crates say the same). */
export const TLS_HINT =
  "its certificate must be signed by a CA this client trusts (Node's own, or tls.caFile / TELEGRAPHY_BUS_TLS__CA_FILE) " +
  "and name the URL's host";

/** Whether an error (or its cause) is a refused server certificate. */
export function isCertificateError(e) {
  const codes = new Set([
    "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
    "SELF_SIGNED_CERT_IN_CHAIN",
    "DEPTH_ZERO_SELF_SIGNED_CERT",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "ERR_TLS_CERT_ALTNAME_INVALID",
    "CERT_HAS_EXPIRED",
  ]);
  for (let cur = e, i = 0; cur != null && i < 5; cur = cur.cause, i++) {
    if (codes.has(cur.code)) return true;
  }
  return false;
}

/**
 * The TLS server name (SNI, and the name checked against the certificate) of
 * a bus URL: its host, unless it is an IP address (SNI carries names only;
 * Node then checks the address itself against the certificate).
 */
export function serverName(url) {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  return isIP(host) ? {} : { servername: host };
}

