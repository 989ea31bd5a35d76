// Publishes on `{keyPrefix}{realm}:{topic}` (node-redis) through the
// gateway's publish script (redis_publish.lua, a copy of
// bus/src/redis/publish.lua): events of history topics get their position
// and are kept exactly as when a gateway publishes them. Redis answers how
// many subscriptions (of every node) got the event: that is what
// `requireSubscriber` checks.

import { createHash, randomInt } from "node:crypto";
import { readFileSync } from "node:fs";

import { encodeEnvelope } from "../envelope.js";
import { InvalidInput, NoSubscriber, Rejected, Unauthorized, Unavailable } from "../errors.js";
import { importOptional, isCertificateError, redact, serverName, TLS_HINT, withTimeout } from "./common.js";

const AUTH_REPLY = /^(WRONGPASS|NOAUTH|NOPERM)\b|without any password configured/;

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
    if (this.client?.isReady) return this.client;
    this.drop();
    this.connecting ??= (async () => {
      let client;
      try {
        client = redis.createClient({
          url: this.url,
          // Fail fast instead of queueing or retrying behind the caller's
          // back: the next publish connects again.
          socket: {
            connectTimeout: this.timeoutMs,
            reconnectStrategy: false,
            ...(this.tls ? { tls: true, ...serverName(this.url), ...this.tls } : {}),
          },
          disableOfflineQueue: true,
        });
      } catch (e) {
        throw new InvalidInput(`bus \`${redact(this.url)}\` is not a valid redis:// URL: ${e.message}`, { cause: e });
      }
      client.on("error", () => {}); // errors reach the caller through connect() and commands
      try {
        await withTimeout(client.connect(), this.timeoutMs, () => new Error(`no connection within ${this.timeoutMs} ms`));
      } catch (e) {
        closeQuietly(client);
        throw this.translate(e, redis, false);
      }
      this.client = client;
      return client;
    })().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  async publish(envelope, requireSubscriber) {
    const payload = encodeEnvelope(envelope);
    const redis = await importOptional("redis", "Redis");
    const client = await this.connection(redis);
    const p = this.keyPrefix;
    const { realm, topic } = envelope;
    const channel = `${p}${realm}:${topic}`;
    const keys = [`${p}history`, `${p}h:${realm}:${topic}`, `${p}hm:${realm}:${topic}`, `${p}r:${realm}:${topic}`, channel];
    const args = [
      Buffer.from(payload.buffer, payload.byteOffset, payload.length),
      topic,
      envelope.retain ? "1" : "0",
      keepable(envelope) ? "1" : "0",
      String(randomInt(1, 65536)),
    ];
    const run = (command, first) => client.sendCommand([command, first, String(keys.length), ...keys, ...args]);
    let receivers, epoch, offset;
    try {
      [receivers, epoch, offset] = await withTimeout(
        run("EVALSHA", SCRIPT_SHA).catch((e) => {
          // Redis restarted, or SCRIPT FLUSH: send the script itself once.
          if (e instanceof redis.ErrorReply && e.message.startsWith("NOSCRIPT")) return run("EVAL", PUBLISH_SCRIPT);
          throw e;
        }),
        this.timeoutMs,
        () => new Error(`no answer within ${this.timeoutMs} ms`),
      );
    } catch (e) {
      if (!(e instanceof redis.ErrorReply)) this.drop(); // the connection is in doubt
      throw this.translate(e, redis, true);
    }
    if (requireSubscriber && !(receivers > 0)) {
      throw new NoSubscriber(`no node is subscribed to \`${envelope.topic}\` (Redis channel ${channel})`);
    }
    // A kept event's publication id is its position: offset * 65536 + epoch.
    if (offset > 0 && epoch > 0) return offset * 65536 + epoch;
    return envelope.publication;
  }

  drop() {
    if (this.client) closeQuietly(this.client);
    this.client = null;
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
