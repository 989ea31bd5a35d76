// Publishing through a gateway's POST /publish (memory bus).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { InvalidInput, Publisher } from "@telegraphy/server";
import { API_KEY, startGateway } from "../testing/gateway.js";
import { publishScenarios } from "../testing/scenarios.js";

publishScenarios("http", {
  publisher: (gw) => new Publisher({ gatewayUrl: gw.url, apiKey: API_KEY }),
  badCredentials: (gw) => new Publisher({ gatewayUrl: gw.url, apiKey: "not-the-key-123" }),
  unreachable: (port) => new Publisher({ gatewayUrl: `http://127.0.0.1:${port}`, apiKey: API_KEY, timeoutMs: 2000 }),
});

describe("http: what the gateway refuses", () => {
  let gw;
  before(async () => {
    gw = await startGateway();
  });
  after(async () => {
    await gw?.stop();
  });

  test("an unknown realm: the gateway's 400 becomes InvalidInput with its message", async () => {
    const pub = new Publisher({ gatewayUrl: gw.url, apiKey: API_KEY });
    await assert.rejects(pub.publish("com.example.x", [], {}, { realm: "no.such.realm" }), (err) => {
      assert.ok(err instanceof InvalidInput, err.message);
      assert.match(err.message, /the gateway refused the event: .*realm/);
      return true;
    });
    // A configured second realm works.
    assert.ok((await pub.publish("com.example.x", [], {}, { realm: "tenant.acme" })) > 0);
  });

  test("a URL that is not a publish endpoint: InvalidInput naming it", async () => {
    const pub = new Publisher({ gatewayUrl: `http://127.0.0.1:${gw.adminPort}/nothing-here`, apiKey: API_KEY });
    await assert.rejects(pub.publish("com.example.x"), (err) => err instanceof InvalidInput && /HTTP 404/.test(err.message));
  });

  test("a body larger than the gateway takes: InvalidInput (413)", async () => {
    const pub = new Publisher({ gatewayUrl: gw.url, apiKey: API_KEY });
    await assert.rejects(pub.publish("com.example.x", ["x".repeat(70000)]), (err) => err instanceof InvalidInput && /refused the event/.test(err.message));
  });

  test("the URL and key are checked when the publisher is made", () => {
    assert.throws(() => new Publisher({ gatewayUrl: gw.wsUrl, apiKey: API_KEY }), /WebSocket URL.*http:\/\/HOST:PORT/);
    assert.throws(() => new Publisher({ gatewayUrl: "127.0.0.1:8080", apiKey: API_KEY }), /must start with http/);
    assert.throws(() => new Publisher({ gatewayUrl: gw.url }), /needs an API key/);
  });
});
