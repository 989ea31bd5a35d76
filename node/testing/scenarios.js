// The publishing scenarios every path (HTTP, Redis, RabbitMQ) must pass,
// against a real gateway and a real AutobahnJS subscriber that joined with
// a token this package minted.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { InvalidInput, NoSubscriber, PublishError, Publisher, Unauthorized, Unavailable, mintToken } from "@telegraphy/server";
import { SECRET, freePort, startGateway, subscriber, unique } from "./gateway.js";

/**
 * `gatewayOptions()`: options for startGateway; `publisher(gw)`: a
 * Publisher for this path; `badCredentials(gw)`, `unreachable(port)`:
 * Publishers that must fail with Unauthorized / Unavailable.
 */
export function publishScenarios(name, { gatewayOptions = () => ({}), publisher, badCredentials, unreachable }) {
  describe(`${name}: publishing to a real gateway`, () => {
    let gw;
    let pub;
    let alice;
    const topic = (what) => `com.example.${name}.${what}.${unique("t").replace(/-/g, "")}`;

    before(async () => {
      gw = await startGateway(gatewayOptions());
      pub = publisher(gw);
      const token = await mintToken({
        subject: "alice",
        role: "user",
        subscribe: ["com.example.*"],
        ttlSeconds: 120,
        secret: SECRET,
      });
      alice = await subscriber(gw.wsUrl, token);
    });

    after(async () => {
      await alice?.close();
      await pub?.close();
      await gw?.stop();
    });

    test("an event reaches a WAMP subscriber that joined with a minted token", async () => {
      assert.equal(alice.details.authid, "alice");
      assert.equal(alice.details.authrole, "user");
      const t = topic("created");
      const inbox = await alice.listen(t);
      const kwargs = { total: 9.5, items: ["a", "b"], customer: { name: "Ådä ✓", id: 7 } };
      const id = await pub.publish(t, [42, null, true, new Uint8Array([0, 1, 2, 255]), -129], kwargs);
      assert.ok(Number.isInteger(id) && id >= 1 && id <= 2 ** 53, `publication id ${id}`);
      const event = await inbox.next();
      assert.equal(event.details.publication, id);
      assert.deepEqual(event.args, [42, null, true, "\u0000AAEC/w==", -129]);
      assert.deepEqual(event.kwargs, kwargs);
    });

    test("events published one after the other arrive in order", async () => {
      const t = topic("ordered");
      const inbox = await alice.listen(t);
      for (let i = 0; i < 20; i++) await pub.publish(t, [i]);
      for (let i = 0; i < 20; i++) assert.deepEqual((await inbox.next()).args, [i]);
    });

    test("concurrent publishes on a fresh publisher all arrive", async () => {
      const fresh = publisher(gw);
      try {
        const t = topic("burst");
        const inbox = await alice.listen(t);
        const ids = await Promise.all(Array.from({ length: 25 }, (_, i) => fresh.publish(t, [i])));
        assert.equal(new Set(ids).size, 25);
        const got = [];
        for (let i = 0; i < 25; i++) got.push((await inbox.next()).args[0]);
        assert.deepEqual(got.sort((a, b) => a - b), Array.from({ length: 25 }, (_, i) => i));
      } finally {
        await fresh.close();
      }
    });

    test("requireSubscriber: resolves once a node subscribed to the topic got the event", async () => {
      const t = topic("watched");
      const inbox = await alice.listen(t);
      const id = await pub.publish(t, ["hello"], {}, { requireSubscriber: true });
      const event = await inbox.next();
      assert.equal(event.details.publication, id);
      assert.deepEqual(event.args, ["hello"]);
    });

    test("requireSubscriber: NoSubscriber when no node subscribed to the topic", async () => {
      const watched = topic("other");
      const inbox = await alice.listen(watched);
      const nobody = topic("unwatched");
      await assert.rejects(pub.publish(nobody, [1], {}, { requireSubscriber: true }), (err) => {
        assert.ok(err instanceof NoSubscriber, `${err.name}: ${err.message}`);
        assert.ok(err instanceof PublishError);
        assert.equal(err.kind, "no_subscriber");
        return true;
      });
      // Without requireSubscriber the same publish is accepted (and dropped).
      const id = await pub.publish(nobody, [2]);
      assert.ok(id > 0);
      // The subscriber of another topic got nothing.
      assert.ok(await inbox.none(300));
    });

    test("black/white lists: excludeAuthid keeps the event from that user, eligibleAuthrole admits her role", async () => {
      const t = topic("targeted");
      const inbox = await alice.listen(t);
      await pub.publish(t, ["not for alice"], {}, { excludeAuthid: ["alice"] });
      await pub.publish(t, ["staff only"], {}, { eligibleAuthrole: ["staff"] });
      await pub.publish(t, ["for users"], {}, { eligibleAuthrole: ["user"], exclude: [] });
      assert.deepEqual((await inbox.next()).args, ["for users"]);
      assert.ok(await inbox.none(300));
    });

    test("refused credentials: Unauthorized", async () => {
      const bad = badCredentials(gw);
      try {
        await assert.rejects(bad.publish(topic("x"), [1]), (err) => {
          assert.ok(err instanceof Unauthorized, `${err.name}: ${err.message}`);
          assert.equal(err.kind, "unauthorized");
          return true;
        });
      } finally {
        await bad.close();
      }
    });

    test("nothing listening at the address: Unavailable", async () => {
      const down = unreachable(await freePort());
      try {
        await assert.rejects(down.publish(topic("x"), [1]), (err) => {
          assert.ok(err instanceof Unavailable, `${err.name}: ${err.message}`);
          assert.equal(err.kind, "unavailable");
          assert.match(err.message, /127\.0\.0\.1/);
          return true;
        });
      } finally {
        await down.close();
      }
    });

    test("a bad topic: InvalidInput, before anything is sent", async () => {
      // Checked locally: even a publisher whose bus is down says InvalidInput.
      const down = unreachable(await freePort());
      try {
        for (const [bad, why] of [
          ["com..x", /not a valid topic URI/],
          ["com.example.has space", /not a valid topic URI/],
          ["com.#", /not a valid topic URI/],
          ["wamp.session.on_join", /reserved/],
          ["", /not a valid topic URI/],
        ]) {
          for (const p of [pub, down]) {
            await assert.rejects(p.publish(bad, [1]), (err) => {
              assert.ok(err instanceof InvalidInput, `${bad}: ${err.name}: ${err.message}`);
              assert.equal(err.kind, "invalid_input");
              assert.match(err.message, why);
              return true;
            });
          }
        }
        await assert.rejects(pub.publish(topic("x"), { id: 1 }), /args must be an array.*keyword data goes third/);
        await assert.rejects(pub.publish(topic("x"), [new Date(0)]), /convert dates to strings/);
        await assert.rejects(pub.publish(topic("x"), [], {}, { exclude_authid: ["a"] }), /did you mean `excludeAuthid`/);
      } finally {
        await down.close();
      }
    });
  });
}

/** Quiet bus publishers for the credential and reachability checks. */
export function withCredentials(url, user, password) {
  const u = new URL(url);
  u.username = user;
  u.password = password;
  return u.toString();
}

export function withPort(url, port) {
  const u = new URL(url);
  u.port = String(port);
  return u.toString();
}

export { Publisher };
