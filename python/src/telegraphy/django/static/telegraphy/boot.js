// Starts the Telegraphy client for a Django page. {% telegraphy_scripts %}
// renders the configuration as <script type="application/json"
// id="telegraphy-config"> and loads this module, which:
//   - creates the client as window.telegraphy (also exported as `client`),
//   - uses the token minted at render time for the first connection and asks
//     the token view (tokenUrl) for a fresh one before every reconnect,
//   - mirrors the connection state on <html data-telegraphy-state="..."> and
//     as a "telegraphy:state" DOM event,
//   - connects, unless there is no token (anonymous visitor),
//   - resolves window.telegraphyReady (defined early by ready.js) with the
//     client and dispatches "telegraphy:ready" on document, so that classic
//     scripts, which run before any module, can wait for it.
// Other modules: `import { client, config } from "/static/telegraphy/boot.js"`.

import { Telegraphy } from "./telegraphy.js";

const node = document.getElementById("telegraphy-config");

/** The settings rendered by {% telegraphy_scripts %}. */
export const config = node ? JSON.parse(node.textContent) : {};

function tokenGetter() {
  let first = config.token;
  return async () => {
    const now = Date.now() / 1000;
    if (first && (!config.expiresAt || now < config.expiresAt - 15)) {
      const token = first;
      first = null;
      return token;
    }
    first = null;
    if (!config.tokenUrl) return null;
    const response = await fetch(config.tokenUrl, {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" },
    });
    if (response.status === 403) return null; // signed out: the gateway will refuse us, and we stop
    if (!response.ok) throw new Error(`the token view ${config.tokenUrl} answered HTTP ${response.status}`);
    return (await response.json()).token ?? null;
  };
}

/** The client, or null when the page has no configuration. */
export const client = config.url ? new Telegraphy({ url: config.url, realm: config.realm, getToken: tokenGetter() }) : null;

if (client) {
  window.telegraphy = client;
  window.telegraphyConfig = config;
  const root = document.documentElement;
  root.dataset.telegraphyState = client.state;
  client.on("state", (state, info) => {
    root.dataset.telegraphyState = state;
    document.dispatchEvent(new CustomEvent("telegraphy:state", { detail: { state, info } }));
  });
  client.on("error", (err) => console.warn("telegraphy:", err.message));
  if (config.token) client.connect();
  else root.dataset.telegraphyState = "anonymous";
}

// Classic scripts wait with window.telegraphyReady (ready.js) or "telegraphy:ready".
if (typeof window.__telegraphyResolve === "function") window.__telegraphyResolve(client);
else if (!window.telegraphyReady) window.telegraphyReady = Promise.resolve(client);
document.dispatchEvent(new CustomEvent("telegraphy:ready", { detail: { client, config } }));
