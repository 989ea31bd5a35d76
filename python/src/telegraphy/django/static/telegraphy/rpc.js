// Remote procedure calls: the callee side (registrations, INVOCATION,
// INTERRUPT, revocation) and the result shape both sides share. The caller
// side (call()) lives in telegraphy.js beside the other requests.
//
// A registration is kept across reconnects: after every WELCOME the client
// registers its procedures again (the gateway gives new registration ids).

import { TelegraphyError } from "./errors.js";
import { MSG } from "./wamp.js";

/** The URI sent when a handler throws something that is not a TelegraphyError with a uri. */
export const RUNTIME_ERROR = "wamp.error.runtime_error";
const CANCELED = "wamp.error.canceled";

/**
 * A result with several values: return `new CallResult(args, kwargs)` from a
 * handler to answer with positional and keyword arguments; `call()` resolves
 * with one when the answer is more than one positional value.
 */
export class CallResult {
  constructor(args = [], kwargs = {}) {
    this.args = args;
    this.kwargs = kwargs;
  }
}

/** What call() resolves with: the single value, or a CallResult. */
export function callValue(args, kwargs) {
  const positional = Array.isArray(args) ? args : [];
  const keywords = kwargs && typeof kwargs === "object" ? kwargs : {};
  if (Object.keys(keywords).length === 0 && positional.length <= 1) return positional[0];
  return new CallResult(positional, keywords);
}

/** The YIELD payload for a handler's return value. */
function payload(value) {
  if (value instanceof CallResult) return [value.args ?? [], value.kwargs ?? {}];
  if (value === undefined) return [[], {}];
  return [[value], {}];
}

function withPayload(message, [args, kwargs]) {
  const hasKwargs = kwargs && Object.keys(kwargs).length > 0;
  if (hasKwargs || args.length > 0) message.push(args);
  if (hasKwargs) message.push(kwargs);
  return message;
}

/** A procedure this client serves. */
export class Registration {
  #callee;

  constructor(callee, procedure, handler, options) {
    this.#callee = callee;
    this.procedure = procedure;
    this.handler = handler;
    this.options = options;
    /** The gateway's registration id in the current session, or null. */
    this.id = null;
  }

  /** Stops serving the procedure (resolves once the gateway confirmed it). */
  unregister() {
    return this.#callee.remove(this);
  }
}

/**
 * The callee role: `host` gives { sessionOpen, request(build), send(message), report(err) }.
 */
export class Callee {
  #host;
  #registrations = new Set();
  #byId = new Map(); // registration id → Registration (current session)
  #running = new Map(); // INVOCATION request id → AbortController

  constructor(host) {
    this.#host = host;
  }

  /** Registers now (or when connected); resolves with the Registration once the gateway confirmed it. */
  async add(procedure, handler, options) {
    const registration = new Registration(this, procedure, handler, options);
    this.#registrations.add(registration);
    if (this.#host.sessionOpen) {
      try {
        await this.#register(registration);
      } catch (err) {
        this.#registrations.delete(registration);
        throw err;
      }
    }
    return registration;
  }

  async remove(registration) {
    this.#registrations.delete(registration);
    const id = registration.id;
    if (id === null || !this.#host.sessionOpen) return;
    this.#byId.delete(id);
    registration.id = null;
    await this.#host.request((req) => [MSG.UNREGISTER, req, id]);
  }

  /** After WELCOME: registers every procedure again. */
  sessionOpened() {
    for (const registration of this.#registrations) {
      this.#register(registration).catch((err) => this.#host.report(err, registration.procedure));
    }
  }

  /** The session ended: ids are void, running handlers are told (signal). */
  sessionClosed() {
    this.#byId.clear();
    for (const registration of this.#registrations) registration.id = null;
    for (const controller of this.#running.values()) controller.abort(new TelegraphyError("the connection was lost", { code: "disconnected" }));
    this.#running.clear();
  }

  async #register(registration) {
    const options = {};
    if (registration.options.match && registration.options.match !== "exact") options.match = registration.options.match;
    if (registration.options.invoke) options.invoke = registration.options.invoke;
    if (registration.options.discloseCaller) options.disclose_caller = true;
    const id = await this.#host.request((req) => [MSG.REGISTER, req, options, registration.procedure]);
    if (!this.#registrations.has(registration)) {
      // unregistered while the REGISTER was on its way
      this.#host.request((req) => [MSG.UNREGISTER, req, id]).catch(() => {});
      return;
    }
    registration.id = id;
    this.#byId.set(id, registration);
  }

  /** [INVOCATION, request, registration, details, args, kwargs] */
  invocation(message) {
    const [, request, registrationId, details = {}, args = [], kwargs = {}] = message;
    const registration = this.#byId.get(registrationId);
    if (!registration) {
      this.#host.send([MSG.ERROR, MSG.INVOCATION, request, {}, "wamp.error.no_such_registration", ["no such registration on this client"]]);
      return;
    }
    const controller = new AbortController();
    this.#running.set(request, controller);
    const info = {
      procedure: details.procedure ?? registration.procedure,
      caller: details.caller,
      callerAuthid: details.caller_authid,
      callerAuthrole: details.caller_authrole,
      signal: controller.signal,
      progress: details.receive_progress
        ? (progressArgs = [], progressKwargs = {}) => {
            if (this.#running.get(request) === controller) {
              this.#host.send(withPayload([MSG.YIELD, request, { progress: true }], [progressArgs, progressKwargs]));
            }
          }
        : null,
    };
    Promise.resolve()
      .then(() => registration.handler(args, kwargs, info))
      .then(
        (value) => {
          if (this.#running.get(request) !== controller) return; // interrupted or disconnected
          this.#running.delete(request);
          this.#host.send(withPayload([MSG.YIELD, request, {}], payload(value)));
        },
        (err) => {
          if (this.#running.get(request) !== controller) return;
          this.#running.delete(request);
          const interrupted = controller.signal.aborted;
          const uri = err instanceof TelegraphyError && err.uri ? err.uri : interrupted ? CANCELED : RUNTIME_ERROR;
          const errArgs = err instanceof TelegraphyError && Array.isArray(err.args) ? err.args : [String(err?.message ?? err)];
          const errKwargs = err instanceof TelegraphyError && err.kwargs ? err.kwargs : {};
          if (uri === RUNTIME_ERROR) this.#host.report(err, registration.procedure);
          this.#host.send(withPayload([MSG.ERROR, MSG.INVOCATION, request, {}, uri], [errArgs, errKwargs]));
        },
      );
  }

  /** [INTERRUPT, request, options]: the handler's signal aborts; its answer, if any, goes out as usual. */
  interrupt(message) {
    const [, request, options = {}] = message;
    const controller = this.#running.get(request);
    if (!controller) return;
    const reason = options.reason === "wamp.error.timeout" ? "the call timed out" : "the call was canceled";
    if (options.mode === "killnowait") this.#running.delete(request); // nobody waits for the answer
    controller.abort(new TelegraphyError(reason, { uri: CANCELED, code: "canceled" }));
  }

  /** [UNREGISTERED, 0, {registration, reason}]: the gateway revoked a registration. */
  revoked(details) {
    const registration = this.#byId.get(details?.registration);
    if (!registration) return;
    this.#byId.delete(registration.id);
    this.#registrations.delete(registration);
    registration.id = null;
    this.#host.report(
      new TelegraphyError(`the gateway revoked the registration of ${registration.procedure}: ${details.reason ?? "no reason given"}`, { code: "revoked" }),
      registration.procedure,
    );
  }
}
