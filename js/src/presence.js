// Presence: who else is on a topic, cluster-wide (client.presence(topic)).
//
// A session is present on topic T while it holds an exact subscription to
// T, on any gateway node (docs/protocol.md, "Presence"). presence(topic):
//
//   1. subscribes to T itself (unless { join: false }), so this client
//      counts too;
//   2. subscribes to `telegraphy.presence.<T>`: at most every 100 ms, only on
//      change, {topic, joined, left, names, count, sessions};
//   3. then asks `telegraphy.presence.get(T)` for the state, and again after
//      every reconnect. Events that arrive while the answer is on its way
//      are applied after it: a join or leave applied twice changes nothing.
//
// The role needs `call` and `subscribe` patterns that name
// `telegraphy.presence.*`, and the right to subscribe to T.

import { Emitter } from "./emitter.js";

export const PRESENCE_PREFIX = "telegraphy.presence.";
const GET = "telegraphy.presence.get";

export class Presence {
  /** Distinct authids on the topic (exact, cluster-wide). */
  count = 0;
  /** Sessions on the topic (two tabs of one user: count 1, sessions 2). */
  sessions = 0;
  /** True when `authids` lists only some of them (more than `limit`). */
  truncated = false;

  #client;
  #events = new Emitter(["change", "error"]);
  #authids = new Set();
  #names = new Map(); // authid → display name (the token's `name` claim)
  #limit;
  #listeners = [];
  #pending = null; // events held while a get() is on its way
  #asking = 0; // bumped for each get(): only the latest answer counts
  #offSubscribed;
  #left = false;

  constructor(client, registry, topic, { join = true, limit = 100 } = {}) {
    this.topic = topic;
    this.#client = client;
    this.#limit = limit;
    this.channel = PRESENCE_PREFIX + topic;
    const report = (err) => this.#events.emit("error", err);
    const changes = { persistent: true, onEvent: (args) => this.#onEvent(args), onError: report };
    this.#listeners.push(changes);
    const subscribed = [registry.add(this.channel, "exact", changes)];
    if (join) {
      // Being present: an exact subscription to the topic itself (its events
      // are the application's business, not presence's).
      const self = { persistent: true, onEvent() {}, onError: report };
      this.#listeners.push(self);
      subscribed.push(registry.add(topic, "exact", self));
    }
    this.registry = registry;
    // After a reconnect the channel is subscribed again: ask again.
    const onSubscribed = (t, info) => {
      if (t === this.channel && info.resubscribed) this.#refresh().catch(report);
    };
    client.on("subscribed", onSubscribed);
    this.#offSubscribed = () => client.off("subscribed", onSubscribed);
    /** Resolves once the first state arrived; rejects if the gateway refuses. */
    this.ready = Promise.all(subscribed).then(() => this.#refresh());
    this.ready.catch(() => {}); // also reported through "error"
  }

  /** The authids on the topic, sorted (at most `limit` when `truncated`). */
  get authids() {
    return [...this.#authids].sort();
  }

  /** A display name for `authid`: its token's `name` claim, else the authid. */
  nameOf(authid) {
    return this.#names.get(authid) ?? authid;
  }

  /** { authid: display name } for everyone listed who has one. */
  get names() {
    return Object.fromEntries([...this.#authids].filter((a) => this.#names.has(a)).map((a) => [a, this.#names.get(a)]));
  }

  /** callback({count, sessions, authids, joined, left, truncated}) on every change; "error" for refusals. */
  on(name, callback) {
    this.#events.on(name, callback);
    return this;
  }

  off(name, callback) {
    this.#events.off(name, callback);
    return this;
  }

  /** Stops following (and being present on) the topic. */
  async leave() {
    if (this.#left) return;
    this.#left = true;
    this.#offSubscribed();
    await Promise.all(this.#listeners.map((l) => this.registry.remove(l)));
  }

  async #refresh() {
    const asked = ++this.#asking;
    this.#pending = [];
    let state;
    try {
      state = await this.#client.call(GET, [this.topic], { limit: this.#limit });
    } catch (err) {
      if (asked === this.#asking) this.#pending = null;
      throw err;
    }
    if (asked !== this.#asking || this.#left) return;
    const held = this.#pending ?? [];
    this.#pending = null;
    this.#authids = new Set(state.authids);
    this.#names = new Map(Object.entries(state.names ?? {}));
    this.count = state.count;
    this.sessions = state.sessions;
    this.truncated = Boolean(state.truncated);
    for (const change of held) this.#apply(change);
    this.#emit([], []);
  }

  #onEvent(args) {
    const change = args[0];
    if (change == null || typeof change !== "object" || !Array.isArray(change.joined) || !Array.isArray(change.left)) {
      this.#events.emit("error", new TypeError(`a presence event on ${this.channel} is not {joined, left, count, sessions}`));
      return;
    }
    if (this.#pending) {
      this.#pending.push(change);
      return;
    }
    this.#apply(change);
    this.#emit(change.joined, change.left);
  }

  #apply(change) {
    for (const a of change.left) {
      this.#authids.delete(a);
      this.#names.delete(a);
    }
    for (const a of change.joined) this.#authids.add(a);
    for (const [a, name] of Object.entries(change.names ?? {})) this.#names.set(a, name);
    this.count = change.count;
    this.sessions = change.sessions;
    this.truncated = this.#authids.size < this.count;
  }

  #emit(joined, left) {
    this.#events.emit("change", {
      count: this.count, sessions: this.sessions, authids: this.authids, names: this.names, joined, left, truncated: this.truncated,
    });
  }
}
