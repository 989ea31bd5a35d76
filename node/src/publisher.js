// `Publisher`: one handle that publishes events through a gateway's HTTP
// endpoint, straight onto Redis, or onto RabbitMQ; the Node.js twin of the
// Rust `telegraphy-publisher` crate and the Python `telegraphy.Publisher`
// (same checks, same error kinds, same envelope bytes).

import { canonicalFilter, newEnvelope } from "./envelope.js";
import { InvalidInput } from "./errors.js";
import { checkRealm, checkTopic, describe } from "./uri.js";
import { redact } from "./transports/common.js";
import { HttpTransport } from "./transports/http.js";
import { RedisTransport } from "./transports/redis.js";
import { AmqpTransport } from "./transports/amqp.js";

/** The realm bus events go to unless an event names another. (Over HTTP, no
 * realm means the gateway's first configured realm.) */
export const DEFAULT_REALM = "realm1";
export const DEFAULT_REDIS_KEY_PREFIX = "telegraphy:";
export const DEFAULT_AMQP_EXCHANGE = "telegraphy";
export const DEFAULT_TIMEOUT_MS = 5000;

// publish() option → wire name of the subscriber black/white list.
const FILTER_OPTIONS = {
  exclude: "exclude",
  eligible: "eligible",
  excludeAuthid: "exclude_authid",
  eligibleAuthid: "eligible_authid",
  excludeAuthrole: "exclude_authrole",
  eligibleAuthrole: "eligible_authrole",
};
const PUBLISH_OPTIONS = ["realm", "requireSubscriber", "retain", ...Object.keys(FILTER_OPTIONS)];
const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

function checkOptions(options, allowed, what) {
  if (options === null || typeof options !== "object") {
    throw new InvalidInput(`${what} options must be an object, not ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!allowed.includes(key)) {
      const hint = allowed.includes(camel(key)) ? ` (did you mean \`${camel(key)}\`?)` : "";
      throw new InvalidInput(`unknown ${what} option \`${key}\`${hint}; use ${allowed.join(", ")}`);
    }
  }
}

export class Publisher {
  /**
   * Exactly one of `gatewayUrl` (with `apiKey`) or `bus`:
   *
   *     new Publisher({ gatewayUrl: "http://127.0.0.1:8080", apiKey: "..." })
   *     new Publisher({ bus: "redis://127.0.0.1:6379/0", redisKeyPrefix: "telegraphy:" })
   *     new Publisher({ bus: "amqp://guest:guest@127.0.0.1:5672/%2f", amqpExchange: "telegraphy" })
   *
   * `redisKeyPrefix` and `amqpExchange` must match the gateways' settings
   * (`redis.key_prefix`, `amqp.exchange`). `timeoutMs` bounds each connect
   * and each answer. `realm` is the default realm of `publish`.
   * Connects lazily (at the first publish) and again after a connection loss.
   */
  constructor(settings = {}) {
    checkOptions(
      settings,
      ["gatewayUrl", "apiKey", "bus", "redisKeyPrefix", "amqpExchange", "timeoutMs", "realm"],
      "Publisher",
    );
    const {
      gatewayUrl,
      apiKey,
      bus,
      redisKeyPrefix = DEFAULT_REDIS_KEY_PREFIX,
      amqpExchange = DEFAULT_AMQP_EXCHANGE,
      timeoutMs = DEFAULT_TIMEOUT_MS,
      realm,
    } = settings;
    if (realm != null) checkRealm(realm);
    this.realm = realm ?? null;
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
      throw new InvalidInput(`timeoutMs must be a positive number of milliseconds, not ${String(timeoutMs)}`);
    }
    if ((gatewayUrl == null) === (bus == null)) {
      throw new InvalidInput(
        "say where to publish: new Publisher({ gatewayUrl: 'http://HOST:8080', apiKey }) or " +
          "new Publisher({ bus: 'redis://HOST:6379/0' | 'amqp://USER:PASS@HOST:5672/VHOST' }), not both",
      );
    }
    if (gatewayUrl != null) {
      this.transport = new HttpTransport(gatewayUrl, apiKey, timeoutMs);
      return;
    }
    const scheme = typeof bus === "string" ? (/^([a-z][a-z0-9+.-]*):/i.exec(bus)?.[1] ?? "").toLowerCase() : "";
    if (scheme === "redis") {
      this.transport = new RedisTransport(bus, redisKeyPrefix, timeoutMs);
    } else if (scheme === "amqp") {
      this.transport = new AmqpTransport(bus, amqpExchange, timeoutMs);
    } else if (scheme === "memory") {
      throw new InvalidInput(
        "memory:// is the bus inside one gateway process; other programs cannot reach it. Publish through " +
          "that gateway's HTTP endpoint instead: new Publisher({ gatewayUrl: 'http://HOST:8080', apiKey })",
      );
    } else if (scheme === "rediss" || scheme === "amqps") {
      throw new InvalidInput(
        `bus \`${redact(bus)}\`: TLS connections to the bus are not supported yet (the gateways cannot use them either); ` +
          `use ${scheme.slice(0, -1)}:// on a private network`,
      );
    } else {
      throw new InvalidInput(
        `bus \`${redact(String(bus))}\` is not a bus URL; use redis://HOST:6379/0 or amqp://USER:PASS@HOST:5672/VHOST ` +
          "(or gatewayUrl for a gateway's HTTP endpoint)",
      );
    }
  }

  /** "http", "redis" or "amqp". */
  get kind() {
    return this.transport.kind;
  }

  /**
   * Publishes one event; resolves with its publication id once the gateway
   * or the bus accepted it, rejects with a PublishError otherwise.
   *
   * `args` (array) and `kwargs` (plain object) are the payload (see
   * envelope.js for the values allowed). Options:
   *
   * - `realm`: the realm (default: the Publisher's, else realm1; over HTTP
   *   the gateway's first realm);
   * - `requireSubscriber: true`: succeed only if at least one gateway node
   *   subscribed to the topic got the event, else reject with NoSubscriber
   *   (by default an event nobody subscribes to is accepted and dropped);
   * - `exclude`, `eligible` (session ids), `excludeAuthid`, `eligibleAuthid`
   *   (token `sub`s), `excludeAuthrole`, `eligibleAuthrole` (roles): who may
   *   receive it; an empty `eligible*` list admits nobody;
   * - `retain: true`: keep it as the topic's retained event.
   */
  async publish(topic, args = [], kwargs = {}, options = {}) {
    checkTopic(topic);
    if (args == null) args = [];
    if (kwargs == null) kwargs = {};
    if (!Array.isArray(args)) {
      throw new InvalidInput(
        `args must be an array, not ${describe(args)}; keyword data goes third: publish(topic, [], { ... })`,
      );
    }
    if (typeof kwargs !== "object" || Array.isArray(kwargs)) {
      throw new InvalidInput(`kwargs must be a plain object, not ${describe(kwargs)}`);
    }
    checkOptions(options ?? {}, PUBLISH_OPTIONS, "publish");
    const { realm: realmOption, requireSubscriber = false, retain = false, ...lists } = options ?? {};
    if (typeof requireSubscriber !== "boolean") {
      throw new InvalidInput(`requireSubscriber must be true or false, not ${describe(requireSubscriber)}`);
    }
    if (typeof retain !== "boolean") throw new InvalidInput(`retain must be true or false, not ${describe(retain)}`);
    let realm = realmOption ?? this.realm;
    if (realm != null) checkRealm(realm);
    else if (this.kind !== "http") realm = DEFAULT_REALM;
    const filter = canonicalFilter(Object.fromEntries(Object.entries(lists).map(([k, v]) => [FILTER_OPTIONS[k], v])));
    const envelope = newEnvelope({ realm, topic, args, kwargs, filter });
    envelope.retain = retain;
    return this.transport.publish(envelope, requireSubscriber);
  }

  /** Closes the broker connection (a later publish connects again). */
  async close() {
    await this.transport.close();
  }

  toString() {
    const t = this.transport;
    return `Publisher(${t.kind} ${t.endpoint ?? redact(t.url)})`;
  }
}

/**
 * A Publisher configured like `telegraphy-publish`: TELEGRAPHY_BUS, or
 * TELEGRAPHY_GATEWAY_URL with TELEGRAPHY_API_KEY; TELEGRAPHY_REDIS__KEY_PREFIX,
 * TELEGRAPHY_AMQP__EXCHANGE and TELEGRAPHY_TIMEOUT (seconds) when set.
 */
export function publisherFromEnv(env = process.env) {
  const bus = env.TELEGRAPHY_BUS || undefined;
  const gateway = env.TELEGRAPHY_GATEWAY_URL || undefined;
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  if (env.TELEGRAPHY_TIMEOUT) {
    const seconds = Number(env.TELEGRAPHY_TIMEOUT.replace(/s$/, ""));
    if (!(seconds > 0)) {
      throw new InvalidInput(`TELEGRAPHY_TIMEOUT=${JSON.stringify(env.TELEGRAPHY_TIMEOUT)} is not a number of seconds`);
    }
    timeoutMs = seconds * 1000;
  }
  if (bus && gateway) throw new InvalidInput("both TELEGRAPHY_BUS and TELEGRAPHY_GATEWAY_URL are set; keep one");
  if (bus) {
    return new Publisher({
      bus,
      redisKeyPrefix: env.TELEGRAPHY_REDIS__KEY_PREFIX ?? DEFAULT_REDIS_KEY_PREFIX,
      amqpExchange: env.TELEGRAPHY_AMQP__EXCHANGE ?? DEFAULT_AMQP_EXCHANGE,
      timeoutMs,
    });
  }
  if (gateway) return new Publisher({ gatewayUrl: gateway, apiKey: env.TELEGRAPHY_API_KEY, timeoutMs });
  throw new InvalidInput(
    "say where to publish: set TELEGRAPHY_GATEWAY_URL (http://HOST:8080) and TELEGRAPHY_API_KEY, or " +
      "TELEGRAPHY_BUS (redis://... or amqp://...)",
  );
}
