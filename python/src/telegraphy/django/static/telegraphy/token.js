// Where the ticket (JWT) for each connection attempt comes from.
//
// Before every connect and reconnect the client asks, in this order:
//   getToken()  — an async function of the application;
//   tokenUrl    — GET, credentials included for the same origin (Django's
//                 session cookie), answer JSON {"token": "..."};
//   token       — a fixed string (it cannot be renewed: after it expires,
//                 the gateway refuses it and the client stops).
// A null or empty token means "connect anonymously".

import { TelegraphyError } from "./errors.js";

/** Returns a function that yields the token for the next attempt (or null). */
export function tokenSource({ token, tokenUrl, getToken, fetch: fetchImpl }) {
  if (getToken != null && typeof getToken !== "function") throw new TypeError("getToken must be an async function returning a token");
  if (tokenUrl != null && typeof tokenUrl !== "string" && !(tokenUrl instanceof URL)) throw new TypeError("tokenUrl must be a URL string");
  if (token != null && typeof token !== "string") throw new TypeError("token must be a string (a JWT)");
  if (getToken) return async () => checked(await getToken(), "getToken()");
  if (tokenUrl) return () => fetchToken(tokenUrl, fetchImpl ?? globalThis.fetch);
  return async () => token || null;
}

async function fetchToken(url, fetchImpl) {
  if (typeof fetchImpl !== "function") throw new TelegraphyError("tokenUrl needs fetch(); pass the fetch option", { code: "token" });
  let response;
  try {
    response = await fetchImpl(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  } catch (err) {
    throw new TelegraphyError(`fetching a token from ${url} failed: ${err.message}`, { code: "token", cause: err });
  }
  if (!response.ok) {
    throw new TelegraphyError(`fetching a token from ${url} failed: HTTP ${response.status}`, { code: "token" });
  }
  let body;
  try {
    body = await response.json();
  } catch (err) {
    throw new TelegraphyError(`the token endpoint ${url} did not answer JSON`, { code: "token", cause: err });
  }
  return checked(body?.token, `the "token" field from ${url}`);
}

function checked(value, where) {
  if (value == null || value === "") return null;
  if (typeof value !== "string") throw new TelegraphyError(`${where} must be a string (a JWT) or null`, { code: "token" });
  return value;
}
