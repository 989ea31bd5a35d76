// Model-event channels: client.subscribe(name) → Channel.
//
// The Django app publishes one event per saved or deleted row on the topic
// `<prefix>.<app_label>.<model>`, with args[0] =
//   {"name": "...", "meta": {"event_type": "create"|"update"|"delete",
//    "verbose_name": "...", "timestamp": "ISO-8601"}, "data": {...fields...}}
//
// filter() and exclude() never change a channel: each returns a new, immutable
// view that adds one condition. Views made from one subscribe() call share its
// WAMP subscription and its handlers list; a handler added through a view sees
// only the events that pass every condition of that view. unsubscribe() on any
// view ends the whole subscribe() call (every view and handler made from it).

import { compileLookups } from "./lookups.js";
import { TelegraphyError } from "./errors.js";

/** What the registry holds for one subscribe() call. */
export class ChannelRoot {
  /** Persistent: kept, and subscribed again, across every reconnect. */
  persistent = true;

  constructor(name, match, report) {
    this.name = name;
    this.match = match;
    this.report = report;
    this.handlers = []; // { type: "create"|"update"|"delete"|"any", conditions, callback }
    this.unsubscribe = null; // set by the client
    this.ready = null; // set by the client
  }

  onEvent(args, _kwargs, details) {
    const event = Array.isArray(args) ? args[0] : undefined;
    if (!isModelEvent(event)) {
      this.report(
        new TelegraphyError(
          `an event on ${details.topic} is not a model event ({"name", "meta": {"event_type", ...}, "data": {...}} as args[0]); use subscribeTopic() for plain topics`,
          { code: "protocol" },
        ),
        details.topic,
      );
      return;
    }
    const type = event.meta.event_type;
    for (const handler of [...this.handlers]) {
      if (handler.type !== "any" && handler.type !== type) continue;
      try {
        if (handler.conditions.every((condition) => condition(event.data, event))) handler.callback(event.data, event, details);
      } catch (err) {
        this.report(err, details.topic);
      }
    }
  }

  onError(err) {
    this.error = err;
  }
}

function isModelEvent(event) {
  return (
    event != null && typeof event === "object" && event.meta != null && typeof event.meta === "object" &&
    typeof event.meta.event_type === "string" && event.data != null && typeof event.data === "object"
  );
}

/** A condition from filter()/exclude(): a lookups object or a function (data, event) → boolean. */
function condition(spec, method) {
  if (typeof spec === "function") return (data, event) => Boolean(spec(data, event));
  try {
    const test = compileLookups(spec);
    return (data) => test(data);
  } catch (err) {
    err.message = `${method}(): ${err.message}`;
    throw err;
  }
}

export class Channel {
  #root;
  #conditions;

  constructor(root, conditions = []) {
    this.#root = root;
    this.#conditions = Object.freeze(conditions);
    Object.freeze(this);
  }

  /** The topic, `<prefix>.<app_label>.<model>`. */
  get name() {
    return this.#root.name;
  }

  /** Resolves when the subscription is first active; rejects if the gateway refuses it. */
  get ready() {
    return this.#root.ready;
  }

  /** A new view: events whose data matches every lookup (Django's filter()). */
  filter(lookups) {
    return new Channel(this.#root, [...this.#conditions, condition(lookups, "filter")]);
  }

  /** A new view: events whose data does not match all these lookups (Django's exclude()). */
  exclude(lookups) {
    const test = condition(lookups, "exclude");
    return new Channel(this.#root, [...this.#conditions, (data, event) => !test(data, event)]);
  }

  /** callback(data, event, details) for each "create" event that passes this view. Returns this view. */
  onCreate(callback) {
    return this.#add("create", callback);
  }

  onUpdate(callback) {
    return this.#add("update", callback);
  }

  onDelete(callback) {
    return this.#add("delete", callback);
  }

  /** Every model event (create, update, delete, or another event_type) that passes this view. */
  onAny(callback) {
    return this.#add("any", callback);
  }

  /** Removes a callback added through any view of this channel. Returns this view. */
  off(callback) {
    this.#root.handlers = this.#root.handlers.filter((h) => h.callback !== callback);
    return this;
  }

  /** Ends the subscribe() call this view comes from: every view, every handler. */
  unsubscribe() {
    return this.#root.unsubscribe();
  }

  #add(type, callback) {
    if (typeof callback !== "function") throw new TypeError(`on${type[0].toUpperCase()}${type.slice(1)}(callback): callback must be a function`);
    this.#root.handlers.push({ type, conditions: this.#conditions, callback });
    return this;
  }
}
