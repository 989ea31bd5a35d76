// Telegraphy JS client: a small, dependency-free WAMP v2 client for the
// Telegraphy gateway (subscriber, publisher, caller and callee roles, JSON
// serializer).
//
//   import { Telegraphy } from "./telegraphy.js";
//   const client = new Telegraphy({ url: "ws://127.0.0.1:8080/ws", realm: "realm1", tokenUrl: "/telegraphy/token/" });
//   client.subscribe("telegraphy.shop.order").filter({ status: "open" }).onCreate((order) => ...);
//   await client.connect();
//
// Layout (one concern per file, all in this folder):
//   telegraphy.js   this file: the client, its connection state machine, reconnects, call()
//   rpc.js          the callee side (register, INVOCATION, INTERRUPT) and CallResult
//   wamp.js         message codes, HELLO details, the JSON serializer
//   codes.js        WebSocket close codes and the reconnect rule
//   backoff.js      full-jitter exponential backoff
//   token.js        token / tokenUrl / getToken, asked before every connection attempt
//   registry.js     WAMP subscriptions shared by local listeners; resubscribe after reconnect
//   subscription.js plain topic subscriptions (subscribeTopic)
//   channel.js      model-event channels (subscribe), filter/exclude views
//   presence.js     who else is on a topic, cluster-wide (presence)
//   lookups.js      Django-style lookups (pure functions)
//   emitter.js      typed events: "state", "error", "subscribed"
//   errors.js       TelegraphyError (err.uri, err.code)
//
// Connection states (client.state, and the "state" event):
//
//   disconnected ──connect()──► connecting ──WELCOME──► connected
//        ▲                          │                       │
//        └──── retry timer ◄────────┴── connection lost ◄───┘   (close code says "reconnect")
//
//   any state ──close(), or a close that must not be retried (4500, 1000, ...)──► closed
//
// After a reconnect the client resubscribes and resumes: for each exact
// subscription it asks the gateway for the events published since the last
// one it got (registry.js). Each resubscription fires "subscribed" with
// { resubscribed: true, resumed }: resumed true means nothing was missed (the
// missed events were delivered, in order, no duplicates); resumed false (the
// topic keeps no history, the client was away too long, or a prefix/wildcard
// subscription) is the moment to reload data. "connected" says
// { reconnected: true, resumed: false }: per subscription is where it is known.

import { Backoff } from "./backoff.js";
import { Channel, ChannelRoot } from "./channel.js";
import { closeCodeAfter, shouldReconnect } from "./codes.js";
import { Emitter } from "./emitter.js";
import { TelegraphyError, wampError } from "./errors.js";
import { Registry } from "./registry.js";
import { Presence } from "./presence.js";
import { Callee, callValue } from "./rpc.js";
import { TopicSubscription } from "./subscription.js";
import { tokenSource } from "./token.js";
import { JSON_SERIALIZER, MSG, URI, helloDetails } from "./wamp.js";

export { Channel } from "./channel.js";
export { TelegraphyError } from "./errors.js";
export { CloseCode, shouldReconnect } from "./codes.js";
export { backoffDelay } from "./backoff.js";
export { CallResult } from "./rpc.js";
export { Presence } from "./presence.js";
export { compileLookups, matches, LOOKUP_NAMES } from "./lookups.js";

export const VERSION = "0.1.0";

const MATCH_POLICIES = ["exact", "prefix", "wildcard"];
const INVOKE_POLICIES = ["single", "roundrobin", "random", "first", "last"];
const OPEN = 1; // WebSocket.OPEN, the same in browsers and in the ws package
const GOODBYE_WAIT_MS = 1000; // after our GOODBYE, or after an ABORT, before we close the socket ourselves

export class Telegraphy {
  #url;
  #realm;
  #WebSocket;
  #token;
  #backoff;
  #timeout;
  #events = new Emitter(["state", "error", "subscribed"]);
  #registry;
  #callee;

  #state = "disconnected";
  #session = null; // WELCOME info while connected
  #everConnected = false; // a WELCOME was seen before: the next one is a reconnect
  #ws = null; // the current socket, or null
  #gen = 0; // bumped by every attempt and by close(): older async work is ignored
  #authToken = null; // the token of the current attempt
  #closeInfo = null; // { reason, message } from the ABORT or GOODBYE of the current socket
  #pending = new Map(); // request id → { resolve, reject }
  #nextRequest = 1;
  #retryTimer = null;
  #socketTimer = null; // handshake timeout, or the wait after GOODBYE / ABORT
  #welcomeWaiters = []; // connect() promises
  #closeWaiters = []; // close() promises

  /**
   * @param {object} options
   * @param {string} [options.url]  ws:// or wss:// URL of the gateway's /ws (default: /ws on the page's host)
   * @param {string} [options.realm="realm1"]
   * @param {string} [options.token]  a JWT for ticket authentication
   * @param {string} [options.tokenUrl]  GET → {"token": "..."}, asked before every (re)connect
   * @param {() => Promise<string|null>} [options.getToken]  asked before every (re)connect
   * @param {Function} [options.WebSocket]  a WebSocket constructor (Node 20: the ws package)
   * @param {Function} [options.fetch]  fetch() for tokenUrl (default: globalThis.fetch)
   * @param {{initial?: number, max?: number}} [options.backoff]  milliseconds, default {initial: 500, max: 10000}
   * @param {number} [options.timeout=15000]  ms from opening the socket to WELCOME before giving up on the attempt
   */
  constructor(options = {}) {
    this.#url = String(options.url ?? defaultUrl());
    if (!/^wss?:\/\//i.test(this.#url)) throw new TypeError(`url must start with ws:// or wss://, got ${JSON.stringify(this.#url)}`);
    this.#realm = options.realm ?? "realm1";
    if (typeof this.#realm !== "string" || this.#realm === "") throw new TypeError("realm must be a non-empty string");
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("no WebSocket constructor: pass the WebSocket option (in Node 20: `import WebSocket from \"ws\"`)");
    }
    this.#token = tokenSource(options);
    this.#backoff = new Backoff(options.backoff);
    this.#timeout = options.timeout ?? 15000;
    const client = this;
    this.#registry = new Registry({
      get sessionOpen() {
        return client.#session !== null;
      },
      request: (build, onReply) => this.#request(build, onReply),
      subscribed: (topic, info) => this.#events.emit("subscribed", topic, info),
      report: (err, topic) => this.#report(err, topic),
    });
    this.#callee = new Callee({
      get sessionOpen() {
        return client.#session !== null;
      },
      request: (build) => this.#request(build),
      send: (message) => this.#send(message),
      report: (err, procedure) => this.#report(err, procedure),
    });
  }

  /** "disconnected" | "connecting" | "connected" | "closed". */
  get state() {
    return this.#state;
  }

  /** The WAMP session id while connected, else null. */
  get sessionId() {
    return this.#session?.sessionId ?? null;
  }

  /** { sessionId, authid, authrole, authmethod, details } while connected, else null. */
  get session() {
    return this.#session;
  }

  get url() {
    return this.#url;
  }

  get realm() {
    return this.#realm;
  }

  /**
   * Listens to "state" (state, info), "error" (err) or "subscribed" (topic, info).
   * Returns a function that removes the listener.
   */
  on(name, callback) {
    return this.#events.on(name, callback);
  }

  off(name, callback) {
    this.#events.off(name, callback);
  }

  /**
   * Starts connecting (and reconnecting) until close(). Resolves with the
   * session info on the first WELCOME; rejects (err.uri: the ABORT reason)
   * if the client ends up "closed" first. While waiting for a retry, connect()
   * retries at once.
   */
  connect() {
    if (this.#state === "connected") return Promise.resolve(this.#session);
    const promise = new Promise((resolve, reject) => this.#welcomeWaiters.push({ resolve, reject }));
    promise.catch(() => {}); // the "state" and "error" events report it too: no unhandled rejection
    if (this.#state === "closed" || (this.#state === "disconnected" && this.#ws === null)) {
      if (this.#state === "closed") this.#backoff.reset();
      this.#open();
    }
    return promise;
  }

  /**
   * Says GOODBYE and stops reconnecting. State "closed" at once; resolves
   * once the socket is closed. Subscriptions and channels are kept: a later
   * connect() subscribes them again.
   */
  close() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#gen++;
    if (this.#state !== "closed") {
      this.#finish(
        { code: 1000, reason: URI.CLOSE_REALM, message: "closed by the application", wasConnected: this.#session !== null },
        new TelegraphyError("the client was closed", { code: "closed", closeCode: 1000 }),
        false,
      );
    }
    const ws = this.#ws;
    if (!ws) return Promise.resolve();
    const done = new Promise((resolve) => this.#closeWaiters.push(resolve));
    clearTimeout(this.#socketTimer);
    if (this.#session && this.#send([MSG.GOODBYE, { message: "closed by the application" }, URI.CLOSE_REALM])) {
      this.#socketTimer = setTimeout(() => this.#closeSocket(ws, 1000), GOODBYE_WAIT_MS);
    } else {
      this.#closeSocket(ws, 1000);
    }
    return done;
  }

  /**
   * Subscribes callback(args, kwargs, details) to a topic; match is "exact"
   * (default), "prefix" or "wildcard". Resolves with a subscription (call
   * .unsubscribe()) once the gateway confirmed it; rejects with err.uri on an
   * ERROR (e.g. wamp.error.not_authorized), or if the connection drops or the
   * client closes first. Before connect(), it waits for the session.
   */
  async subscribeTopic(topic, callback, { match = "exact" } = {}) {
    checkTopic(topic, "subscribeTopic");
    if (typeof callback !== "function") throw new TypeError("subscribeTopic(topic, callback): callback must be a function");
    checkMatch(match);
    const subscription = new TopicSubscription(this.#registry, topic, match, callback);
    await this.#registry.add(topic, match, subscription);
    return subscription;
  }

  /**
   * A model-event channel on `name` (`<prefix>.<app_label>.<model>`), with
   * filter()/exclude() and onCreate/onUpdate/onDelete/onAny. Subscribes at
   * once (or when connected), and again after every reconnect.
   */
  subscribe(name, { match = "exact" } = {}) {
    checkTopic(name, "subscribe");
    checkMatch(match);
    const root = new ChannelRoot(name, match, (err, topic) => this.#report(err, topic));
    root.ready = this.#registry.add(name, match, root);
    root.ready.catch(() => {}); // reported through the "error" event
    root.unsubscribe = () => this.#registry.remove(root);
    return new Channel(root);
  }

  /**
   * Who is on `topic`, cluster-wide: a Presence with .count (distinct
   * authids), .sessions, .authids (sorted; at most options.limit, default
   * 100), .on("change", ({count, sessions, authids, joined, left}) => ...),
   * .ready and .leave(). Unless options.join is false this client is present
   * too (an exact subscription to the topic). Followed again after every
   * reconnect. The role needs patterns naming `telegraphy.presence.*`.
   */
  presence(topic, { join = true, limit = 100 } = {}) {
    checkTopic(topic, "presence");
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new TypeError("presence(): options.limit must be a whole number from 1 to 1000");
    return new Presence(this, this.#registry, topic, { join, limit });
  }

  /**
   * Publishes to a topic. With options.acknowledge, resolves with the
   * publication id (rejects with err.uri on ERROR, or on disconnect);
   * without, resolves with undefined once sent. Rejects with
   * err.code "not_connected" when there is no session.
   */
  publish(topic, args = [], kwargs = {}, options = {}) {
    try {
      checkTopic(topic, "publish");
      if (args != null && !Array.isArray(args)) throw new TypeError("publish(topic, args, kwargs, options): args must be an array");
      if (kwargs != null && (typeof kwargs !== "object" || Array.isArray(kwargs))) throw new TypeError("publish(): kwargs must be an object");
      if (options == null || typeof options !== "object" || Array.isArray(options)) throw new TypeError("publish(): options must be an object");
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.#session) {
      return Promise.reject(new TelegraphyError(`cannot publish to ${topic}: not connected (state ${this.#state})`, { code: "not_connected" }));
    }
    const build = (req) => {
      const message = [MSG.PUBLISH, req, options, topic];
      const hasKwargs = kwargs != null && Object.keys(kwargs).length > 0;
      if (hasKwargs || (args != null && args.length > 0)) message.push(args ?? []);
      if (hasKwargs) message.push(kwargs);
      return message;
    };
    if (options.acknowledge === true) return this.#request(build);
    this.#send(build(this.#nextRequest++));
    return Promise.resolve(undefined);
  }

  /**
   * Calls a procedure. Resolves with the result: the value when the callee
   * answered with one positional value (or nothing: undefined), else a
   * CallResult {args, kwargs}. Rejects with err.uri on the callee's or the
   * gateway's ERROR (e.g. wamp.error.no_such_procedure, wamp.error.timeout,
   * wamp.error.canceled), err.code "not_connected" without a session, and
   * "disconnected" if the connection drops before the answer.
   *
   * options.timeout: ms after which the gateway fails the call (wamp.error.timeout);
   * options.onProgress(args, kwargs): receives progressive results;
   * options.signal: an AbortSignal; aborting cancels the call (CANCEL, the callee is interrupted);
   * options.discloseMe: let the callee see this session's id, authid and authrole.
   */
  call(procedure, args = [], kwargs = {}, options = {}) {
    const { timeout, onProgress, signal, discloseMe } = options ?? {};
    try {
      checkTopic(procedure, "call");
      if (args != null && !Array.isArray(args)) throw new TypeError("call(procedure, args, kwargs, options): args must be an array");
      if (kwargs != null && (typeof kwargs !== "object" || Array.isArray(kwargs))) throw new TypeError("call(): kwargs must be an object");
      if (timeout !== undefined && !(Number.isInteger(timeout) && timeout >= 0)) throw new TypeError("call(): options.timeout must be a whole number of milliseconds");
      if (onProgress !== undefined && typeof onProgress !== "function") throw new TypeError("call(): options.onProgress must be a function");
    } catch (err) {
      return Promise.reject(err);
    }
    if (signal?.aborted) return Promise.reject(new TelegraphyError(`the call of ${procedure} was canceled before it was sent`, { code: "canceled" }));
    const wampOptions = {};
    if (timeout) wampOptions.timeout = timeout;
    if (onProgress) wampOptions.receive_progress = true;
    if (discloseMe) wampOptions.disclose_me = true;
    let sent = null;
    const build = (req) => {
      sent = req;
      const message = [MSG.CALL, req, wampOptions, procedure];
      const hasKwargs = kwargs != null && Object.keys(kwargs).length > 0;
      if (hasKwargs || (args != null && args.length > 0)) message.push(args ?? []);
      if (hasKwargs) message.push(kwargs);
      return message;
    };
    const progress = onProgress ? (a, kw) => {
      try {
        onProgress(a, kw);
      } catch (err) {
        this.#report(err, procedure);
      }
    } : undefined;
    const result = this.#request(build, undefined, progress);
    if (signal && sent !== null) {
      const cancel = () => this.#send([MSG.CANCEL, sent, { mode: "killnowait" }]);
      signal.addEventListener("abort", cancel, { once: true });
      result.finally(() => signal.removeEventListener("abort", cancel)).catch(() => {});
    }
    return result;
  }

  /**
   * Serves a procedure: handler(args, kwargs, details) returns the result (a
   * value, a CallResult, or a promise of one) or throws (a TelegraphyError
   * with a uri becomes that ERROR; anything else wamp.error.runtime_error).
   * details: { procedure, caller, callerAuthid, callerAuthrole, signal (aborted
   * when the caller cancels or the call times out), progress(args, kwargs)
   * (null unless the caller asked for progressive results) }.
   * options.match: "exact" | "prefix" | "wildcard"; options.invoke: "single"
   * (default) | "roundrobin" | "random" | "first" | "last"; options.discloseCaller.
   * Resolves with a registration (.unregister()) once the gateway confirmed
   * it; registered again after every reconnect.
   */
  register(procedure, handler, options = {}) {
    try {
      checkTopic(procedure, "register");
      if (typeof handler !== "function") throw new TypeError("register(procedure, handler): handler must be a function");
      checkMatch(options.match ?? "exact");
      if (options.invoke !== undefined && !INVOKE_POLICIES.includes(options.invoke)) {
        throw new TypeError(`invoke must be one of ${INVOKE_POLICIES.join(", ")}; got ${JSON.stringify(options.invoke)}`);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#callee.add(procedure, handler, options);
  }

  // ---- connection ------------------------------------------------------------------

  async #open() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#ws) this.#socketClosed(this.#ws, 1000, "replaced by a new connection");
    const gen = ++this.#gen;
    this.#closeInfo = null;
    this.#setState("connecting", { attempt: this.#backoff.attempt, reconnect: this.#everConnected });
    let token;
    try {
      token = await this.#token();
    } catch (err) {
      if (gen !== this.#gen) return;
      const error = err instanceof TelegraphyError ? err : new TelegraphyError(`getting a token failed: ${err?.message ?? err}`, { code: "token", cause: err });
      this.#report(error);
      this.#retry({ code: null, reason: "telegraphy.client.token_failed", message: error.message, wasConnected: false });
      return;
    }
    if (gen !== this.#gen) return;
    this.#authToken = token;
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, [JSON_SERIALIZER.protocol]);
    } catch (err) {
      const error = new TelegraphyError(`cannot open a WebSocket to ${this.#url}: ${err.message}`, { code: "invalid_argument", cause: err });
      this.#report(error);
      this.#finish({ code: null, reason: "telegraphy.client.invalid_url", message: error.message, wasConnected: false }, error, true);
      return;
    }
    this.#ws = ws;
    this.#socketTimer = setTimeout(() => {
      this.#closeInfo = { reason: "telegraphy.client.connect_timeout", message: `no WELCOME within ${this.#timeout} ms` };
      this.#closeSocket(ws, 4002, true);
    }, this.#timeout);
    ws.onopen = () => this.#opened(ws);
    ws.onmessage = (e) => this.#received(ws, e.data);
    ws.onclose = (e) => this.#socketClosed(ws, e.code, e.reason);
    ws.onerror = () => {}; // a close event follows
  }

  #opened(ws) {
    if (ws !== this.#ws) return;
    if (ws.protocol !== JSON_SERIALIZER.protocol) {
      this.#closeInfo = {
        reason: "telegraphy.client.no_subprotocol",
        message: `the server did not accept the WebSocket subprotocol ${JSON_SERIALIZER.protocol} (got ${JSON.stringify(ws.protocol)}); is ${this.#url} a Telegraphy gateway?`,
        final: true,
      };
      this.#closeSocket(ws, 1000, true);
      return;
    }
    const authmethods = this.#authToken ? ["ticket"] : ["anonymous"];
    this.#send([MSG.HELLO, this.#realm, helloDetails(authmethods, `telegraphy-js/${VERSION}`)]);
  }

  #received(ws, data) {
    if (ws !== this.#ws) return;
    let message;
    try {
      message = JSON_SERIALIZER.decode(data);
    } catch (err) {
      this.#report(new TelegraphyError(`unreadable message from the gateway: ${err.message}`, { code: "protocol", cause: err }));
      return;
    }
    this.#handle(ws, message);
  }

  #handle(ws, message) {
    switch (message[0]) {
      case MSG.WELCOME:
        return this.#welcomed(message[1], message[2] ?? {});
      case MSG.CHALLENGE: {
        const method = message[1];
        if (method === "ticket" && this.#authToken) {
          this.#send([MSG.AUTHENTICATE, this.#authToken, {}]);
        } else {
          const text = `the gateway asked for "${method}" authentication, which this client cannot answer`;
          this.#closeInfo = { reason: URI.NO_AUTH_METHOD, message: text, final: true };
          this.#send([MSG.ABORT, { message: text }, "wamp.error.cannot_authenticate"]);
          this.#closeSocket(ws, 1000, true);
        }
        return;
      }
      case MSG.ABORT: {
        const [, details, reason] = message;
        // The gateway closes the socket right after; the close code decides what happens next.
        this.#closeInfo = { reason, message: details?.message ?? "" };
        clearTimeout(this.#socketTimer);
        // Its close frame may not come: then the ABORT decides.
        this.#socketTimer = setTimeout(() => this.#closeLate(ws, reason), GOODBYE_WAIT_MS);
        return;
      }
      case MSG.GOODBYE: {
        const [, details, reason] = message;
        if (this.#state === "closed") {
          this.#closeSocket(ws, 1000); // the answer to our GOODBYE
        } else {
          // The gateway leaves (draining: 1012; token expired: 4003) and closes the socket;
          // if its close frame does not come, the GOODBYE decides.
          this.#closeInfo = { reason, message: details?.message ?? "" };
          this.#send([MSG.GOODBYE, {}, URI.GOODBYE_AND_OUT]);
          clearTimeout(this.#socketTimer);
          this.#socketTimer = setTimeout(() => this.#closeLate(ws, reason), GOODBYE_WAIT_MS);
        }
        return;
      }
      case MSG.ERROR: {
        const [, , req, details, uri, args, kwargs] = message;
        return this.#settle(req, null, wampError(uri, details, args, kwargs));
      }
      case MSG.PUBLISHED:
      case MSG.SUBSCRIBED:
      case MSG.REGISTERED:
        return this.#settle(message[1], message[2]);
      case MSG.UNSUBSCRIBED:
        return this.#settle(message[1], undefined);
      case MSG.UNREGISTERED:
        if (message[1] === 0) return this.#callee.revoked(message[2]);
        return this.#settle(message[1], undefined);
      case MSG.RESULT: {
        const [, req, details, args, kwargs] = message;
        if (details?.progress) return this.#pending.get(req)?.onProgress?.(args ?? [], kwargs ?? {});
        return this.#settle(req, callValue(args, kwargs));
      }
      case MSG.INVOCATION:
        return this.#callee.invocation(message);
      case MSG.INTERRUPT:
        return this.#callee.interrupt(message);
      case MSG.EVENT: {
        const [, subscriptionId, publicationId, details, args, kwargs] = message;
        return this.#registry.dispatch(subscriptionId, publicationId, details, args, kwargs);
      }
      default:
        return; // nothing else is meant for a client
    }
  }

  #welcomed(sessionId, details) {
    if (this.#session) return;
    clearTimeout(this.#socketTimer);
    this.#backoff.reset();
    this.#nextRequest = 1;
    this.#session = Object.freeze({
      sessionId,
      authid: details.authid,
      authrole: details.authrole,
      authmethod: details.authmethod,
      details,
    });
    const reconnected = this.#everConnected;
    this.#everConnected = true;
    this.#registry.sessionOpened();
    this.#callee.sessionOpened();
    this.#setState("connected", { ...this.#session, reconnected, resumed: false });
    for (const waiter of this.#welcomeWaiters.splice(0)) waiter.resolve(this.#session);
  }

  /**
   * The gateway's close frame did not arrive within GOODBYE_WAIT_MS of its
   * ABORT or GOODBYE: close the socket ourselves and go on as the close code
   * the gateway sends with that reason would have made us (timeouts, an
   * expired token, a draining node: reconnect; anything else: final).
   */
  #closeLate(ws, reason) {
    if (ws !== this.#ws) return;
    const code = closeCodeAfter(reason);
    if (this.#closeInfo) this.#closeInfo.final = code === null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
    this.#socketClosed(ws, code ?? 1000, "");
  }

  /** Closes a socket and handles it as closed now, without waiting for its close event. */
  #closeSocket(ws, code, now = false) {
    try {
      ws.close(code);
    } catch {
      // already closing
    }
    if (now) this.#socketClosed(ws, code, "");
    else {
      clearTimeout(this.#socketTimer);
      this.#socketTimer = setTimeout(() => this.#socketClosed(ws, code, ""), GOODBYE_WAIT_MS);
    }
  }

  #socketClosed(ws, code, reasonText) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    clearTimeout(this.#socketTimer);
    const closeInfo = this.#closeInfo ?? {};
    const wasConnected = this.#session !== null;
    this.#session = null;
    const info = { code, reason: closeInfo.reason ?? reasonText ?? "", message: closeInfo.message || reasonText || "" };
    const closing = this.#state === "closed";
    const lost = new TelegraphyError(
      closing ? "the client was closed" : `connection lost (close code ${code}${info.reason ? `, ${info.reason}` : ""})`,
      { code: closing ? "closed" : "disconnected", closeCode: code },
    );
    this.#registry.sessionClosed(lost);
    this.#callee.sessionClosed();
    for (const { reject } of this.#pending.values()) reject(lost);
    this.#pending.clear();
    if (closing) {
      for (const resolve of this.#closeWaiters.splice(0)) resolve();
      return;
    }
    if (!closeInfo.final && shouldReconnect(code)) {
      this.#retry({ ...info, wasConnected });
    } else {
      const error = closeInfo.reason
        ? wampError(closeInfo.reason, { message: closeInfo.message })
        : new TelegraphyError(`connection closed (close code ${code}${reasonText ? `: ${reasonText}` : ""}); not reconnecting`, { code: "closed" });
      error.closeCode = code;
      this.#finish({ ...info, wasConnected }, error, true);
    }
  }

  #retry(info) {
    const attempt = this.#backoff.attempt;
    const delay = this.#backoff.next();
    this.#setState("disconnected", { ...info, willReconnect: true, delay, attempt });
    this.#retryTimer = setTimeout(() => this.#open(), delay);
  }

  /** Enters "closed": no more reconnects; rejects what waits for a session. */
  #finish(info, error, report) {
    this.#setState("closed", { ...info, willReconnect: false });
    if (report) this.#report(error);
    for (const waiter of this.#welcomeWaiters.splice(0)) waiter.reject(error);
    this.#registry.rejectWaiting(error);
  }

  // ---- requests ----------------------------------------------------------------------

  /**
   * Sends a request; resolves with its answer. `onReply(value)`, when given,
   * runs synchronously as the answer is read, before any later message is
   * handled (a promise callback would run after EVENTs that arrived in the
   * same read).
   */
  #request(build, onReply, onProgress) {
    if (!this.#session) {
      return Promise.reject(new TelegraphyError(`not connected (state ${this.#state})`, { code: "not_connected" }));
    }
    const req = this.#nextRequest++;
    return new Promise((resolve, reject) => {
      this.#pending.set(req, { resolve, reject, onReply, onProgress });
      // If the socket is already closing, the request stays pending and is
      // rejected with the others when the close arrives.
      this.#send(build(req));
    });
  }

  #settle(req, value, error) {
    const pending = this.#pending.get(req);
    if (!pending) return;
    this.#pending.delete(req);
    if (error) return pending.reject(error);
    try {
      pending.onReply?.(value);
    } catch (err) {
      this.#report(err);
    }
    pending.resolve(value);
  }

  #send(message) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON_SERIALIZER.encode(message));
      return true;
    } catch (err) {
      this.#report(new TelegraphyError(`sending failed: ${err.message}`, { code: "disconnected", cause: err }));
      return false;
    }
  }

  // ---- events ------------------------------------------------------------------------

  #setState(state, info) {
    this.#state = state;
    this.#events.emit("state", state, info);
  }

  #report(err, topic) {
    let error = err;
    if (!(err instanceof TelegraphyError)) {
      error = new TelegraphyError(`a callback${topic ? ` for ${topic}` : ""} threw: ${err?.message ?? err}`, { code: "callback", cause: err });
    }
    if (topic !== undefined && error.topic === undefined) error.topic = topic;
    if (this.#events.has("error")) this.#events.emit("error", error);
    else console.error("telegraphy:", error);
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc?.host) throw new TypeError("url is required (ws://HOST:PORT/ws)");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

function checkTopic(topic, method) {
  if (typeof topic !== "string" || topic === "") throw new TypeError(`${method}(): the topic must be a non-empty string`);
}

function checkMatch(match) {
  if (!MATCH_POLICIES.includes(match)) throw new TypeError(`match must be one of ${MATCH_POLICIES.join(", ")}; got ${JSON.stringify(match)}`);
}
