// Typed errors, the same kinds as the Rust publisher (`ErrorKind`) and the
// Python package (`telegraphy.errors`). Catch `PublishError` for all of them
// and look at `err.kind`, or test `instanceof` one class; every message says
// what to fix.

/**
 * A publish (or a token mint) did not succeed; nothing was reported
 * published. `kind` is one of "invalid_input", "unavailable",
 * "unauthorized", "rejected", "no_subscriber". `cause` holds the
 * underlying error (from fetch, redis, amqplib) when there is one.
 */
export class PublishError extends Error {
  static kind = "error";

  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }

  /** The error's kind, e.g. "no_subscriber" (stable: match on it). */
  get kind() {
    return this.constructor.kind;
  }
}

/** The event, the URL or the settings are malformed: fix the input. */
export class InvalidInput extends PublishError {
  static kind = "invalid_input";
}

/**
 * The bus or gateway could not be reached, or is not taking events now:
 * retry later. Only when the connection broke after the event was sent may
 * it have been delivered anyway (the message says so).
 */
export class Unavailable extends PublishError {
  static kind = "unavailable";
}

/** The credentials were refused (API key, broker user or password). */
export class Unauthorized extends PublishError {
  static kind = "unauthorized";
}

/** The bus or gateway refused this event and would refuse it again. */
export class Rejected extends PublishError {
  static kind = "rejected";
}

/**
 * `requireSubscriber: true` was asked and no gateway node subscribed to the
 * topic got the event (the bus took it and dropped it: nobody received it).
 */
export class NoSubscriber extends PublishError {
  static kind = "no_subscriber";
}
