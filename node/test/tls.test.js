// Publishing over TLS to the bus (rediss://, amqps://): a private Redis and
// RabbitMQ with TLS listeners that require client certificates, and a test
// PKI, from the fault suite's harness (tests/chaos/serve_brokers.py, which
// stops them by PID when its stdin closes). The same scenarios as over
// plain redis:// and amqp://; a CA that did not sign the broker's certificate
// is refused as Unauthorized, naming the TLS check.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Publisher, Unauthorized } from "@telegraphy/server";
import { unique } from "../testing/gateway.js";
import { serveBrokers } from "../testing/brokers.js";
import { publishScenarios, withPort } from "../testing/scenarios.js";

let brokers;
let stopBrokers = async () => {};
const keyPrefix = `${unique("tg-node-tls")}:`;
const exchange = unique("tg-node-tls");

before(async () => {
  ({ brokers, stop: stopBrokers } = await serveBrokers("tls", [], "the TLS brokers"));
});

after(() => stopBrokers());

const tls = (ca = "ca") => ({ caFile: brokers[ca], certFile: brokers.client_cert, keyFile: brokers.client_key });
const gatewayTls = () => ({ ca: brokers.ca, cert: brokers.client_cert, key: brokers.client_key });
/** The URL with 127.0.0.1 for its host (the broker's certificate names only localhost). */
const atIp = (url) => {
  const u = new URL(url);
  u.hostname = "127.0.0.1";
  return u.toString();
};
const byIp = (url, port) => withPort(atIp(url), port);

publishScenarios("rediss", {
  gatewayOptions: () => ({ bus: brokers.redis, keyPrefix, busTls: gatewayTls() }),
  publisher: () => new Publisher({ bus: brokers.redis, redisKeyPrefix: keyPrefix, tls: tls() }),
  badCredentials: () => new Publisher({ bus: brokers.redis, redisKeyPrefix: keyPrefix, tls: tls("other_ca") }),
  unreachable: (port) => new Publisher({ bus: byIp(brokers.redis, port), redisKeyPrefix: keyPrefix, timeoutMs: 2000, tls: tls() }),
});

publishScenarios("amqps", {
  gatewayOptions: () => ({ bus: brokers.amqp, exchange, busTls: gatewayTls() }),
  publisher: () => new Publisher({ bus: brokers.amqp, amqpExchange: exchange, tls: tls() }),
  badCredentials: () => new Publisher({ bus: brokers.amqp, amqpExchange: exchange, tls: tls("other_ca") }),
  unreachable: (port) => new Publisher({ bus: byIp(brokers.amqp, port), amqpExchange: exchange, timeoutMs: 2000, tls: tls() }),
});

test("tls: the TLS check names what to fix, and a name the certificate lacks is refused", async () => {
  for (const [bus, options] of [
    [brokers.redis, { redisKeyPrefix: keyPrefix }],
    [brokers.amqp, { amqpExchange: exchange }],
  ]) {
    for (const pub of [
      new Publisher({ bus, ...options, tls: tls("other_ca") }),
      new Publisher({ bus: atIp(bus), ...options, tls: tls() }),
    ]) {
      await assert.rejects(pub.publish("com.example.tls", [1]), (err) => {
        assert.ok(err instanceof Unauthorized, `${err.name}: ${err.message}`);
        assert.match(err.message, /failed the TLS check: .*tls\.caFile/);
        return true;
      });
      await pub.close();
    }
  }
  assert.throws(() => new Publisher({ bus: "redis://127.0.0.1:6379/0", tls: tls() }), /not a rediss:\/\/ or amqps:\/\/ URL/);
  assert.throws(() => new Publisher({ bus: "rediss://h:6380/0", tls: { certFile: "/x" } }), /both certFile and keyFile/);
});
