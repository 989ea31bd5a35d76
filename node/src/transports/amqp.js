// RabbitMQ (amqplib): a durable topic exchange, routing key `{realm}.{topic}`,
// a confirm channel: `publish` resolves once RabbitMQ confirmed the event.
// With `requireSubscriber` the event is published `mandatory`: RabbitMQ
// returns it (before confirming it) when no queue is bound for it.

import { decodeEnvelope, encodeEnvelope } from "../envelope.js";
import { InvalidInput, NoSubscriber, Rejected, Unauthorized, Unavailable } from "../errors.js";
import { importOptional, isCertificateError, redact, serverName, splitHosts, TLS_HINT, withTimeout } from "./common.js";

export const ENVELOPE_CONTENT_TYPE = "application/x-telegraphy-envelope";
/** AMQP routing keys are short strings (realm + "." + topic). */
export const MAX_ROUTING_KEY = 255;

/**
 * The brokers of an AMQP URL: `amqp://U:P@H1:5672,H2:5673/V?q` is
 * `amqp://U:P@H1:5672/V?q` and `amqp://U:P@H2:5673/V?q`.
 */
export function brokerUrls(url) {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) return [url];
  const { scheme, userinfo, hosts, tail } = splitHosts(url);
  return hosts.map((h) => `${scheme}${userinfo}${h}${tail}`);
}

export class AmqpTransport {
  kind = "amqp";

  constructor(url, exchange, timeoutMs, tls = null) {
    if (typeof exchange !== "string" || exchange === "") {
      throw new InvalidInput("the AMQP exchange name is empty; the gateways' default is `telegraphy` (amqp.exchange)");
    }
    if (exchange.startsWith("amq.")) {
      throw new InvalidInput(`the AMQP exchange \`${exchange}\` is under \`amq.\`, which RabbitMQ reserves; use the gateways' amqp.exchange`);
    }
    this.url = url;
    this.exchange = exchange;
    this.timeoutMs = timeoutMs;
    this.tls = tls; // amqps://: { ca, cert, key } for node:tls
    this.connection = null;
    this.channel = null;
    this.connecting = null;
    this.pending = new Set(); // publishes awaiting their confirm
    this.returned = new Set(); // publication ids RabbitMQ returned as unroutable
  }

  get where() {
    return `RabbitMQ at ${redact(this.url)}`;
  }

  /** Connects to one broker; errors as PublishErrors. */
  async connectOne(amqp, url) {
    try {
      return await withTimeout(
        amqp.connect(url, {
          timeout: this.timeoutMs,
          clientProperties: { connection_name: "telegraphy-node" },
          ...(this.tls ? { ...serverName(url), ...this.tls } : {}),
        }),
        this.timeoutMs,
        () => new Error(`no connection within ${this.timeoutMs} ms`),
      );
    } catch (e) {
      const text = e?.message ?? String(e);
      const where = `RabbitMQ at ${redact(url)}`;
      if (isCertificateError(e)) {
        throw new Unauthorized(`the bus at ${redact(url)} failed the TLS check: ${TLS_HINT}: ${text}`, { cause: e });
      }
      if (/ACCESS.REFUSED/.test(text)) {
        throw new Unauthorized(`${where} refused the credentials: ${text}`, { cause: e });
      }
      if (/Expected ConnectionOpenOk/.test(text)) {
        throw new Unauthorized(`${where} refused to open the virtual host (missing, or this user may not use it): ${text}`, { cause: e });
      }
      if (/Expected amqp/.test(text) || e instanceof TypeError) {
        throw new InvalidInput(`bus \`${redact(this.url)}\` is not a valid amqp:// URL: ${text}`, { cause: e });
      }
      throw new Unavailable(`cannot connect to ${where}: ${text}`, { cause: e });
    }
  }

  async open() {
    const amqp = (await importOptional("amqplib", "RabbitMQ")).default;
    // `amqp://U:P@HOST1:5672,HOST2:5672/VHOST` lists a cluster's brokers:
    // each is tried in turn while it cannot be reached (as the gateways do).
    const urls = brokerUrls(this.url);
    let connection;
    for (const [i, url] of urls.entries()) {
      try {
        connection = await this.connectOne(amqp, url);
        break;
      } catch (e) {
        if (!(e instanceof Unavailable) || i === urls.length - 1) throw e;
      }
    }
    connection.on("error", () => {}); // reported through "close"
    connection.on("close", () => this.lost(connection, "the connection closed"));
    try {
      const channel = await connection.createConfirmChannel();
      channel.on("error", () => {});
      channel.on("close", () => this.lost(connection, "the channel closed"));
      channel.on("return", (message) => this.onReturn(message));
      await withTimeout(
        channel.assertExchange(this.exchange, "topic", { durable: true }),
        this.timeoutMs,
        () => new Error(`RabbitMQ did not answer within ${this.timeoutMs} ms`),
      );
      this.connection = connection;
      this.channel = channel;
    } catch (e) {
      connection.close().catch(() => {});
      const text = e?.message ?? String(e);
      if (e?.code === 406) {
        throw new Rejected(
          `cannot declare the topic exchange \`${this.exchange}\` on ${this.where}: ${text}; if it exists with another type, pick another name (amqpExchange here, amqp.exchange on the gateways)`,
          { cause: e },
        );
      }
      if (e?.code === 403) throw new Unauthorized(`${this.where} refused access: ${text}`, { cause: e });
      throw new Unavailable(`${this.where} dropped the connection during setup: ${text}`, { cause: e });
    }
  }

  onReturn(message) {
    try {
      this.returned.add(decodeEnvelope(message.content).publication);
    } catch {
      // not one of ours
    }
  }

  /** The connection or channel is gone: fail what awaits a confirm. */
  lost(connection, why) {
    if (connection !== this.connection) return;
    this.connection = this.channel = null;
    for (const fail of this.pending) fail(why);
  }

  async publish(envelope, requireSubscriber) {
    const key = `${envelope.realm}.${envelope.topic}`;
    const keyBytes = Buffer.byteLength(key);
    if (keyBytes > MAX_ROUTING_KEY) {
      throw new Rejected(`realm and topic make a ${keyBytes}-byte AMQP routing key; RabbitMQ allows ${MAX_ROUTING_KEY}`);
    }
    const payload = encodeEnvelope(envelope);
    if (!this.channel) {
      // Nothing was sent yet: (re)connecting is safe.
      this.connecting ??= this.open().finally(() => {
        this.connecting = null;
      });
      await this.connecting;
    }
    const channel = this.channel;
    const id = envelope.publication;
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.pending.delete(fail);
        this.returned.delete(id);
      };
      const fail = (why) => {
        done();
        reject(new Unavailable(`${this.where} did not confirm the event (${why}); it may or may not have been delivered`));
      };
      const timer = setTimeout(() => {
        fail(`no confirm within ${this.timeoutMs} ms`);
        this.drop(); // the channel is in doubt
      }, this.timeoutMs);
      this.pending.add(fail);
      try {
        channel.publish(
          this.exchange,
          key,
          Buffer.from(payload.buffer, payload.byteOffset, payload.length),
          { contentType: ENVELOPE_CONTENT_TYPE, mandatory: Boolean(requireSubscriber) },
          (err) => {
            if (!this.pending.has(fail)) return; // already failed
            const wasReturned = this.returned.has(id);
            done();
            if (err) reject(new Unavailable(`${this.where} did not take the event: the broker refused it (nack)`));
            else if (wasReturned) {
              reject(new NoSubscriber(`no node is subscribed to \`${envelope.topic}\` (RabbitMQ returned it: no queue is bound for it)`));
            } else resolve(id);
          },
        );
      } catch (e) {
        done();
        this.drop();
        reject(new Unavailable(`${this.where} did not take the event: ${e?.message ?? e}`, { cause: e }));
      }
    });
  }

  drop() {
    const connection = this.connection;
    this.lost(connection, "the connection was closed");
    connection?.close().catch(() => {});
  }

  async close() {
    await this.connecting?.catch(() => {});
    this.drop();
  }
}
