// `Publisher`: one handle that publishes events through a gateway's HTTP
// endpoint, straight onto Redis, or onto RabbitMQ; the Node.js twin of the
// Rust `telegraphy-publisher` crate and the Python `telegraphy.Publisher`
// (same checks, same error kinds, same envelope bytes).

import { canonicalFilter, newEnvelope } from "./envelope.js";
import { InvalidInput } from "./errors.js";
import { checkRealm, checkTopic, describe } from "./uri.js";
import { readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
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
      ["gatewayUrl", "apiKey", "bus", "redisKeyPrefix", "amqpExchange", "timeoutMs", "realm", "tls"],
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
      tls,
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
    const secure = ["rediss", "amqps", "rediss+cluster", "rediss+sentinel"].includes(scheme);
    if (tls != null && !secure) {
      throw new InvalidInput(`tls files are given but the bus \`${redact(String(bus))}\` is not a rediss:// or amqps:// URL`);
    }
    const tlsOptions = secure ? readTls(tls) : null;
    if (["redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"].includes(scheme)) {
      this.transport = new RedisTransport(bus, redisKeyPrefix, timeoutMs, tlsOptions);
    } else if (scheme === "amqp" || scheme === "amqps") {
      this.transport = new AmqpTransport(bus, amqpExchange, timeoutMs, tlsOptions);
    } else if (scheme === "memory") {
      throw new InvalidInput(
        "memory:// is the bus inside one gateway process; other programs cannot reach it. Publish through " +
          "that gateway's HTTP endpoint instead: new Publisher({ gatewayUrl: 'http://HOST:8080', apiKey })",
      );
    } else {
      throw new InvalidInput(
        `bus \`${redact(String(bus))}\` is not a bus URL; use redis://HOST:6379/0 (rediss:// for TLS), ` +
          "redis+cluster://HOST:7000,HOST2:7000 (a Redis Cluster), redis+sentinel://HOST:26379/NAME (Sentinel) or " +
          "amqp://USER:PASS@HOST:5672/VHOST (amqps:// for TLS), or gatewayUrl for a gateway's HTTP endpoint",
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

/** `env[name]`, or the content of the file `env[name + "_FILE"]` without its trailing newline. */
function secret(env, name) {
  const path = env[`${name}_FILE`];
  if (!path) return env[name];
  if (env[name]) throw new InvalidInput(`both ${name} and ${name}_FILE are set; keep one`);
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new InvalidInput(`${name}_FILE: cannot read ${path}: ${e.message}`, { cause: e });
  }
  return text.replace(/\r?\n$/, "");
}

/**
 * A Publisher configured like `telegraphy-publish`: TELEGRAPHY_BUS, or
 * TELEGRAPHY_GATEWAY_URL with TELEGRAPHY_API_KEY; TELEGRAPHY_REDIS__KEY_PREFIX,
 * TELEGRAPHY_AMQP__EXCHANGE, TELEGRAPHY_TIMEOUT (seconds) and the TLS files
 * TELEGRAPHY_BUS_TLS__CA_FILE / __CERT_FILE / __KEY_FILE when set.
 * TELEGRAPHY_BUS_FILE and TELEGRAPHY_API_KEY_FILE name files holding those
 * secrets (as Kubernetes mounts them).
 */
export function publisherFromEnv(env = process.env) {
  const bus = secret(env, "TELEGRAPHY_BUS") || undefined;
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
    const files = {
      caFile: env.TELEGRAPHY_BUS_TLS__CA_FILE,
      certFile: env.TELEGRAPHY_BUS_TLS__CERT_FILE,
      keyFile: env.TELEGRAPHY_BUS_TLS__KEY_FILE,
    };
    const tls = Object.values(files).some((f) => f) ? Object.fromEntries(Object.entries(files).filter(([, f]) => f)) : undefined;
    return new Publisher({
      bus,
      redisKeyPrefix: env.TELEGRAPHY_REDIS__KEY_PREFIX ?? DEFAULT_REDIS_KEY_PREFIX,
      amqpExchange: env.TELEGRAPHY_AMQP__EXCHANGE ?? DEFAULT_AMQP_EXCHANGE,
      timeoutMs,
      tls,
    });
  }
  if (gateway) return new Publisher({ gatewayUrl: gateway, apiKey: secret(env, "TELEGRAPHY_API_KEY"), timeoutMs });
  throw new InvalidInput(
    "say where to publish: set TELEGRAPHY_GATEWAY_URL (http://HOST:8080) and TELEGRAPHY_API_KEY, or " +
      "TELEGRAPHY_BUS (redis://... or amqp://...)",
  );
}

/**
 * The TLS options of a rediss:// or amqps:// bus from `{ caFile, certFile,
 * keyFile }` (all optional): the CA is trusted besides Node's own roots, the
 * certificate and key are shown to brokers that ask for one.
 */
function readTls(tls) {
  if (tls == null) return {};
  if (typeof tls !== "object") throw new InvalidInput("tls must be { caFile, certFile, keyFile } (paths of PEM files)");
  const unknown = Object.keys(tls).filter((k) => !["caFile", "certFile", "keyFile"].includes(k));
  if (unknown.length) throw new InvalidInput(`tls: unknown key ${unknown[0]}; use caFile, certFile, keyFile`);
  if ((tls.certFile == null) !== (tls.keyFile == null)) {
    throw new InvalidInput("tls: give both certFile and keyFile (a client certificate and its key), or neither");
  }
  const read = (key) => {
    if (tls[key] == null) return undefined;
    try {
      return readFileSync(tls[key]);
    } catch (e) {
      throw new InvalidInput(`tls.${key}: cannot read ${tls[key]}: ${e.message}`, { cause: e });
    }
  };
  const ca = read("caFile");
  // Node trusts only `ca` when it is given: keep its own roots too.
  return { ca: ca ? [...rootCertificates, ca] : undefined, cert: read("certFile"), key: read("keyFile") };
}

