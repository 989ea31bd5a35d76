// Publishes on `{keyPrefix}{realm}:{topic}` (node-redis) through the
// gateway's publish script (redis_publish.lua, a copy of
// bus/src/redis/publish.lua): events of history topics get their position
// and are kept exactly as when a gateway publishes them. Redis answers how
// many subscriptions (of every node) got the event: that is what
// `requireSubscriber` checks.
//
// `redis+cluster://H1:P1,H2:P2` publishes on a Redis Cluster as the gateway
// does: a topic's keys and shard channel share the hash tag `{realm:topic}`,
// the script SPUBLISHes (and PUBLISHes too when a node's pattern matches the
// topic, from the registry `{prefix}patterns`, read again after 1 s).
// `redis+sentinel://S1:26379,S2:26379/NAME[/DB]` asks the Sentinels for the
// primary at every connect (and connects again after a failover).

import { createHash, randomInt } from "node:crypto";
import { readFileSync } from "node:fs";

import { encodeEnvelope } from "../envelope.js";
import { InvalidInput, NoSubscriber, Rejected, Unauthorized, Unavailable } from "../errors.js";
import { importOptional, isCertificateError, redact, serverName, splitHosts, TLS_HINT, withTimeout } from "./common.js";

const AUTH_REPLY = /^(WRONGPASS|NOAUTH|NOPERM)\b|without any password configured/;
/** How long a cluster publisher uses its copy of the history settings and pattern registry (ms). */
export const REGISTRY_FRESH_MS = 1000;

/** The patterns `[realm, policy, pattern]` of the registry's entries still in force at `nowMs`. */
export function registryPatterns(entries, nowMs) {
  const out = [];
  for (const text of Object.values(entries)) {
    const lines = String(text).split("\n");
    const expires = Number(lines[0]);
    if (!Number.isFinite(expires) || lines[0] === "" || expires < nowMs) continue;
    for (const line of lines.slice(1)) {
      const parts = line.split("\t");
      if (parts.length >= 3) out.push([parts[0], parts[1], parts.slice(2).join("\t")]);
    }
  }
  return out;
}

/** Whether a registered pattern (prefix or wildcard) matches `topic`. */
export function patternMatches(policy, pattern, topic) {
  if (policy === "prefix") return topic.startsWith(pattern);
  const want = pattern.split(".");
  const have = topic.split(".");
  return want.length === have.length && want.every((w, i) => w === "" || w === have[i]);
}

function hostPort(hostport, port) {
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(hostport);
  return { host: m[1], port: m[2] ? Number(m[2]) : port };
}

/** The publish script, and its SHA-1 for EVALSHA. */
export const PUBLISH_SCRIPT = readFileSync(new URL("./redis_publish.lua", import.meta.url), "utf8");
const SCRIPT_SHA = createHash("sha1").update(PUBLISH_SCRIPT).digest("hex");

/** Whether an envelope may be kept by a store: not addressed to session ids. */
function keepable(envelope) {
  const f = envelope.filter ?? {};
  return !(f.exclude?.length > 0) && f.eligible == null;
}

export class RedisTransport {
  kind = "redis";

  constructor(url, keyPrefix, timeoutMs, tls = null) {
    if (typeof keyPrefix !== "string") throw new InvalidInput("redisKeyPrefix must be a string (the gateways' redis.key_prefix)");
    this.url = url;
    this.keyPrefix = keyPrefix;
    this.timeoutMs = timeoutMs;
    this.tls = tls; // rediss://: { ca, cert, key } for node:tls
    this.client = null; // the connected client, or null
    this.connecting = null; // the promise of a connect in progress
    this.view = null; // cluster: { readAt, topics, size, ttl, patterns }
    const scheme = String(url).split("://")[0];
    this.mode = scheme.endsWith("+cluster") ? "cluster" : scheme.endsWith("+sentinel") ? "sentinel" : "single";
    this.nodeScheme = scheme.startsWith("rediss") ? "rediss://" : "redis://";
    if (this.mode !== "single") {
      const { userinfo, hosts, tail } = splitHosts(url);
      this.userinfo = userinfo;
      this.hosts = hosts;
      const path = tail.split("?")[0].split("/").filter((p) => p !== "");
      if (this.mode === "cluster" && path.length > 0 && !(path.length === 1 && path[0] === "0")) {
        throw new InvalidInput(`bus \`${redact(url)}\`: a Redis Cluster has only database 0; leave the path empty`);
      }
      if (this.mode === "cluster" && /[{}]/.test(keyPrefix)) {
        throw new InvalidInput(`redisKeyPrefix \`${keyPrefix}\` holds a brace; on a Redis Cluster it must not (hash tags)`);
      }
      if (this.mode === "sentinel") {
        if (path.length === 0) {
          throw new InvalidInput(`bus \`${redact(url)}\`: name the primary after the Sentinels: redis+sentinel://HOST:26379/NAME`);
        }
        this.primaryName = decodeURIComponent(path[0]);
        this.db = path.length > 1 ? Number(path[1]) : 0;
        if (!Number.isInteger(this.db)) throw new InvalidInput(`bus \`${redact(url)}\`: \`${path[1]}\` is not a database number`);
      }
    }
  }

  socketOptions(url) {
    return {
      connectTimeout: this.timeoutMs,
      reconnectStrategy: false,
      ...(this.tls ? { tls: true, ...serverName(url), ...this.tls } : {}),
    };
  }

  /**
   * Sentinel: the primary's URL, from the first Sentinel that knows it.
   * Each Sentinel is given the URL's user and password (the common Helm
   * charts set the primary's password on the Sentinels too), and asked
   * again without them when it refuses them (it has none), as the gateway
   * does. Refused both ways by every Sentinel: `Unauthorized`.
   */
  async primaryUrl(redis) {
    const errors = [];
    let refused = null;
    let others = false;
    const ask = async (url) => {
      const client = redis.createClient({ url, socket: this.socketOptions(url), disableOfflineQueue: true });
      client.on("error", () => {});
      try {
        await withTimeout(client.connect(), this.timeoutMs, () => new Error(`no connection within ${this.timeoutMs} ms`));
        return await withTimeout(client.sendCommand(["SENTINEL", "get-master-addr-by-name", this.primaryName]), this.timeoutMs,
          () => new Error(`no answer within ${this.timeoutMs} ms`));
      } finally {
        closeQuietly(client);
      }
    };
    for (const h of this.hosts) {
      const tries = this.userinfo ? [`${this.nodeScheme}${this.userinfo}${h}`, `${this.nodeScheme}${h}`] : [`${this.nodeScheme}${h}`];
      for (const url of tries) {
        try {
          const addr = await ask(url);
          if (Array.isArray(addr) && addr.length === 2) {
            const host = String(addr[0]).includes(":") ? `[${addr[0]}]` : String(addr[0]);
            return `${this.nodeScheme}${this.userinfo}${host}:${addr[1]}/${this.db}`;
          }
          errors.push(`${h}: no primary named \`${this.primaryName}\``);
          others = true;
          break;
        } catch (e) {
          const message = e?.message ?? String(e);
          if (AUTH_REPLY.test(message)) {
            refused = message;
            continue;
          }
          errors.push(`${h}: ${message}`);
          others = true;
          break;
        }
      }
    }
    if (refused && !others) {
      throw new Unauthorized(`the Redis Sentinels of ${redact(this.url)} refused the credentials, with and without them: ${refused} ` +
        "(the bus URL's user and password are given to the Sentinels and to the primary)");
    }
    if (refused) errors.push(`credentials refused: ${refused}`);
    throw new Unavailable(`no Sentinel of ${redact(this.url)} named the primary: ${errors.join("; ")}`);
  }

  get where() {
    return `Redis at ${redact(this.url)}`;
  }

  /** A thrown error (from connecting or PUBLISH) as a PublishError. */
  translate(e, redis, sent) {
    if (e instanceof redis.ErrorReply) {
      if (AUTH_REPLY.test(e.message)) {
        return new Unauthorized(
          `${this.where} refused the credentials: ${e.message} (put the user and password in the URL: redis://USER:PASSWORD@HOST:6379/0)`,
          { cause: e },
        );
      }
      return new Rejected(`${this.where} refused the event: ${e.message}`, { cause: e });
    }
    if (isCertificateError(e)) {
      return new Unauthorized(`the bus at ${redact(this.url)} failed the TLS check: ${TLS_HINT}: ${e.message}`, { cause: e });
    }
    const maybe = sent ? "; the event may or may not have been published" : "";
    return new Unavailable(`${this.where} did not take the event: ${e?.message ?? e}${maybe}`, { cause: e });
  }

  /** The connected client: reuses it while it is ready, else connects anew. */
  async connection(redis) {
    if (this.client && (this.mode === "cluster" || this.client.isReady)) return this.client;
    this.drop();
    this.connecting ??= (async () => {
      let client;
      const url = this.mode === "sentinel" ? await this.primaryUrl(redis) : this.url;
      try {
        if (this.mode === "cluster") {
          const [user, password] = this.userinfo.replace(/@$/, "").split(":");
          client = redis.createCluster({
            rootNodes: this.hosts.map((h) => ({ url: `${this.nodeScheme}${h}` })),
            defaults: {
              ...(user ? { username: decodeURIComponent(user) } : {}),
              ...(password ? { password: decodeURIComponent(password) } : {}),
              socket: this.socketOptions(`${this.nodeScheme}${this.hosts[0]}`),
              disableOfflineQueue: true,
            },
          });
        } else {
          client = redis.createClient({
            url,
            // Fail fast instead of queueing or retrying behind the caller's
            // back: the next publish connects again.
            socket: this.socketOptions(url),
            disableOfflineQueue: true,
          });
        }
      } catch (e) {
        throw new InvalidInput(`bus \`${redact(this.url)}\` is not a valid Redis URL: ${e.message}`, { cause: e });
      }
      // Errors reach the caller through connect() and commands; a cluster
      // reports only "all the root nodes are unavailable", so the nodes'
      // own refusals (credentials) are kept to say why.
      let refusal = null;
      client.on("error", (e) => {
        if (e instanceof redis.ErrorReply) refusal = e;
      });
      try {
        await withTimeout(client.connect(), this.timeoutMs, () => new Error(`no connection within ${this.timeoutMs} ms`));
      } catch (e) {
        closeQuietly(client);
        throw this.translate(refusal ?? e, redis, false);
      }
      this.client = client;
      return client;
    })().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  /** Cluster: the history settings and registered patterns, read again after REGISTRY_FRESH_MS. */
  async clusterView(client) {
    if (this.view && Date.now() - this.view.readAt < REGISTRY_FRESH_MS) return this.view;
    const readAt = Date.now();
    const settings = `${this.keyPrefix}history`;
    const registry = `${this.keyPrefix}patterns`;
    const [topics, size, ttl] = await client.sendCommand(settings, true, ["HMGET", settings, "topics", "size", "ttl_ms"]);
    const flat = await client.sendCommand(registry, true, ["HGETALL", registry]);
    const entries = {};
    if (Array.isArray(flat)) for (let i = 0; i + 1 < flat.length; i += 2) entries[String(flat[i])] = String(flat[i + 1]);
    else Object.assign(entries, flat ?? {});
    this.view = { readAt, topics: String(topics ?? ""), size: String(size ?? ""), ttl: String(ttl ?? ""), patterns: registryPatterns(entries, Date.now()) };
    return this.view;
  }

  async publish(envelope, requireSubscriber) {
    const payload = encodeEnvelope(envelope);
    const redis = await importOptional("redis", "Redis");
    const client = await this.connection(redis);
    const p = this.keyPrefix;
    const { realm, topic } = envelope;
    const channel = `${p}${realm}:${topic}`;
    const cluster = this.mode === "cluster";
    const tag = `{${realm}:${topic}}`;
    const keys = cluster
      ? [`${p}history:${tag}`, `${p}h:${tag}`, `${p}hm:${tag}`, `${p}r:${tag}`, `${p}${tag}`]
      : [`${p}history`, `${p}h:${realm}:${topic}`, `${p}hm:${realm}:${topic}`, `${p}r:${realm}:${topic}`, channel];
    const args = [
      Buffer.from(payload.buffer, payload.byteOffset, payload.length),
      topic,
      envelope.retain ? "1" : "0",
      keepable(envelope) ? "1" : "0",
      String(randomInt(1, 65536)),
    ];
    const command = (c, first) => [c, first, String(keys.length), ...keys, ...args];
    const run = cluster ? (c, first) => client.sendCommand(keys[1], false, command(c, first)) : (c, first) => client.sendCommand(command(c, first));
    let receivers, epoch, offset;
    let matched = false;
    try {
      [receivers, epoch, offset] = await withTimeout(
        (async () => {
          if (cluster) {
            const view = await this.clusterView(client);
            matched = view.patterns.some(([r, policy, pattern]) => r === realm && patternMatches(policy, pattern, topic));
            args.push(view.topics, view.size, view.ttl, matched ? channel : "");
          }
          return run("EVALSHA", SCRIPT_SHA).catch((e) => {
            // Redis restarted, or SCRIPT FLUSH: send the script itself once.
            if (e instanceof redis.ErrorReply && e.message.startsWith("NOSCRIPT")) return run("EVAL", PUBLISH_SCRIPT);
            throw e;
          });
        })(),
        this.timeoutMs,
        () => new Error(`no answer within ${this.timeoutMs} ms`),
      );
    } catch (e) {
      if (e instanceof redis.ErrorReply && e.message.startsWith("READONLY")) {
        // A primary demoted by a failover: the next publish asks the Sentinels again.
        this.drop();
        throw new Unavailable(`${this.where}: the server is no longer the primary (a failover); retry`, { cause: e });
      }
      if (!(e instanceof redis.ErrorReply)) this.drop(); // the connection is in doubt
      throw this.translate(e, redis, true);
    }
    if (requireSubscriber && !(receivers > 0 || matched)) {
      throw new NoSubscriber(`no node is subscribed to \`${envelope.topic}\` (Redis channel ${keys[4]})`);
    }
    // A kept event's publication id is its position: offset * 65536 + epoch.
    if (offset > 0 && epoch > 0) return offset * 65536 + epoch;
    return envelope.publication;
  }

  drop() {
    if (this.client) closeQuietly(this.client);
    this.client = null;
    this.view = null;
  }

  async close() {
    await this.connecting?.catch(() => {});
    this.drop();
  }
}

function closeQuietly(client) {
  try {
    if (typeof client.destroy === "function") client.destroy(); // node-redis 5
    else client.disconnect().catch(() => {}); // node-redis 4
  } catch {
    // already closed
  }
}
