// The WAMP subscriptions of one client, shared by its local listeners.
//
// The gateway identifies a subscription by (topic, match policy): subscribing
// twice to the same pair returns the same id and one UNSUBSCRIBE ends it
// (docs/protocol.md, "Shared subscription ids"). So the client keeps one
// record per pair, with any number of local listeners (plain topic
// subscriptions and model channels), subscribes when the first listener comes
// and unsubscribes when the last one leaves.
//
// Each record's state, within one session:
//
//   inactive ──first listener / new session──► subscribing ──SUBSCRIBED──► active
//      ▲                                           │ ERROR: listeners dropped   │ last listener left
//      │                                           ▼                            ▼
//      └──────────────── UNSUBSCRIBED ◄──────── unsubscribing ◄─────────────────┘
//
// When the session ends every record goes back to "inactive" and is
// subscribed again on the next WELCOME, with the same listeners.
//
// Resume: each exact record remembers the last publication id it got. When
// it subscribes again it sends `_after_publication` (docs/protocol.md,
// "Event history"): the gateway replays what was missed, in order and
// without duplicates, then a marker EVENT `{_recovered: true|false}`. The
// marker is not handed to listeners; it fires "subscribed" with
// { resubscribed: true, resumed }: resumed false is the moment to reload.
// A gateway without history for the topic answers resumed false too.
// An exact subscription with no position yet asks for one (`_position`): the
// gateway answers with an EVENT `{_position: true}` carrying the topic's
// current position, so a topic that stays quiet can be resumed too.
//
// A listener is { persistent, onEvent(args, kwargs, details), onError(err) }.
// A non-persistent listener (subscribeTopic) that is still waiting for its
// first SUBSCRIBED is dropped, and its promise rejected, when the connection
// is lost while that SUBSCRIBE is on the wire or when the client closes.

import { TelegraphyError } from "./errors.js";
import { MSG } from "./wamp.js";

export class Registry {
  /** @param host { request(build, onReply) → Promise, sessionOpen: boolean, subscribed(topic, info), report(err) } */
  constructor(host) {
    this.host = host;
    this.records = new Map(); // `${match} ${topic}` → record
    this.byId = new Map(); // subscription id → record (active records of this session)
    this.epoch = 0; // bumped when a session opens or closes: answers from an older one are ignored
  }

  /** Adds a listener; resolves when the subscription is active on the gateway. */
  add(topic, match, listener) {
    const key = `${match} ${topic}`;
    let record = this.records.get(key);
    if (!record) {
      record = {
        key, topic, match, state: "inactive", id: null, listeners: new Map(), unsubWaiters: [], wasActive: false,
        lastPublication: null, // the last publication id delivered (exact subscriptions: the resume point)
        resuming: false, // waiting for the gateway's _recovered marker
      };
      this.records.set(key, record);
    }
    const promise = new Promise((resolve, reject) => {
      record.listeners.set(listener, record.state === "active" ? null : { resolve, reject });
      if (record.state === "active") resolve();
    });
    this.#sync(record);
    return promise;
  }

  /** Removes a listener; resolves once the gateway no longer sends its events (or at once). */
  remove(listener) {
    for (const record of this.records.values()) {
      if (!record.listeners.has(listener)) continue;
      const waiter = record.listeners.get(listener);
      record.listeners.delete(listener);
      waiter?.reject(new TelegraphyError(`unsubscribed from ${record.topic} before the subscription was active`, { code: "unsubscribed" }));
      if (record.listeners.size > 0 || !this.host.sessionOpen || record.state === "inactive") {
        this.#sync(record);
        return Promise.resolve();
      }
      const done = new Promise((resolve) => record.unsubWaiters.push(resolve));
      this.#sync(record);
      return done;
    }
    return Promise.resolve();
  }

  /** A WELCOME arrived: subscribe every record that has listeners. */
  sessionOpened() {
    this.epoch++;
    for (const record of [...this.records.values()]) this.#sync(record);
  }

  /** The session ended (connection lost or closed). */
  sessionClosed(err) {
    this.epoch++;
    this.byId.clear();
    for (const record of [...this.records.values()]) {
      if (record.state === "subscribing") this.#dropWaiting(record, err);
      record.state = "inactive";
      record.id = null;
      for (const resolve of record.unsubWaiters.splice(0)) resolve();
      this.#sync(record);
    }
  }

  /** The client reached "closed": reject everyone still waiting for a first SUBSCRIBED. */
  rejectWaiting(err) {
    for (const record of [...this.records.values()]) {
      this.#dropWaiting(record, err);
      this.#sync(record);
    }
  }

  /**
   * An EVENT: hands it to each listener of the subscription as
   * (args, kwargs, details); details.topic is always set (the gateway leaves
   * it out for exact subscriptions), plus details.publication and
   * details.subscription.
   */
  dispatch(subscriptionId, publicationId, eventDetails, args, kwargs) {
    const record = this.byId.get(subscriptionId);
    if (!record) return; // a late event for a subscription we just left
    if (eventDetails?._position === true) {
      record.lastPublication = publicationId; // where to resume from; not an event
      return;
    }
    if (record.resuming && eventDetails && typeof eventDetails._recovered === "boolean") {
      // The end of the replay: tell the application whether it is whole.
      record.resuming = false;
      if (eventDetails._recovered) record.lastPublication = publicationId;
      if (record.listeners.size > 0) {
        this.host.subscribed(record.topic, { match: record.match, resubscribed: true, resumed: eventDetails._recovered });
      }
      return;
    }
    record.lastPublication = publicationId;
    const details = {
      ...eventDetails,
      topic: eventDetails?.topic ?? record.topic,
      publication: publicationId,
      subscription: subscriptionId,
    };
    for (const listener of [...record.listeners.keys()]) {
      try {
        listener.onEvent(args ?? [], kwargs ?? {}, details);
      } catch (err) {
        this.host.report(err, record.topic);
      }
    }
  }

  #dropWaiting(record, err) {
    for (const [listener, waiter] of [...record.listeners]) {
      if (waiter && !listener.persistent) {
        record.listeners.delete(listener);
        waiter.reject(err);
      }
    }
  }

  #sync(record) {
    if (this.records.get(record.key) !== record) return;
    const open = this.host.sessionOpen;
    if (record.state === "inactive" && record.listeners.size === 0) {
      this.records.delete(record.key);
    } else if (open && record.state === "inactive") {
      this.#subscribe(record);
    } else if (open && record.state === "active" && record.listeners.size === 0) {
      this.#unsubscribe(record);
    }
  }

  #subscribe(record) {
    const epoch = this.epoch;
    record.state = "subscribing";
    const options = record.match === "exact" ? {} : { match: record.match };
    const resume = record.wasActive && record.match === "exact" && record.lastPublication != null;
    if (resume) options._after_publication = record.lastPublication;
    else if (record.match === "exact") options._position = true;
    record.resuming = false;
    // Known as soon as SUBSCRIBED is read: the EVENTs right behind it (a
    // replay) must find their record.
    const known = (subscriptionId) => {
      if (epoch !== this.epoch) return;
      record.id = subscriptionId;
      record.resuming = resume;
      this.byId.set(subscriptionId, record);
    };
    this.host.request((req) => [MSG.SUBSCRIBE, req, options, record.topic], known).then(
      (subscriptionId) => {
        if (epoch !== this.epoch) return;
        record.state = "active";
        record.id = subscriptionId;
        this.byId.set(subscriptionId, record);
        const resubscribed = record.wasActive;
        record.wasActive = true;
        for (const [listener, waiter] of record.listeners) {
          if (waiter) {
            record.listeners.set(listener, null);
            waiter.resolve();
          }
        }
        // A resume reports once its marker arrives (dispatch).
        if (!resume && record.listeners.size > 0) this.host.subscribed(record.topic, { match: record.match, resubscribed, resumed: false });
        this.#sync(record);
      },
      (err) => {
        if (epoch !== this.epoch) return;
        record.state = "inactive";
        const listeners = [...record.listeners];
        record.listeners.clear();
        err.topic = record.topic;
        for (const [listener, waiter] of listeners) {
          if (waiter) waiter.reject(err);
          try {
            listener.onError?.(err);
          } catch (e) {
            this.host.report(e, record.topic);
          }
        }
        if (listeners.some(([l, w]) => !w || l.persistent)) this.host.report(err, record.topic);
        this.#sync(record);
      },
    );
  }

  #unsubscribe(record) {
    const epoch = this.epoch;
    const id = record.id;
    record.state = "unsubscribing";
    const finish = () => {
      if (epoch !== this.epoch) return;
      this.byId.delete(id);
      record.state = "inactive";
      record.id = null;
      for (const resolve of record.unsubWaiters.splice(0)) resolve();
      this.#sync(record);
    };
    // An ERROR (no_such_subscription) also means the gateway holds nothing.
    this.host.request((req) => [MSG.UNSUBSCRIBE, req, id]).then(finish, finish);
  }
}
