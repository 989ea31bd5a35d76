// mintToken: the claims, the checks, and real gateways accepting (or
// refusing) what it mints: HS256 with the shared secret, RS256 and EdDSA
// with tests/keys/.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decodeJwt, decodeProtectedHeader } from "jose";
import { InvalidInput, mintToken } from "@telegraphy/server";
import { REPO, SECRET, startGateway, subscriber } from "../testing/gateway.js";

const KEYS = join(REPO, "tests/keys");
const key = (name) => readFileSync(join(KEYS, name), "utf8");

test("the claims: sub, role, iat/exp from ttlSeconds, topic patterns, realm", async () => {
  const token = await mintToken({
    subject: 42,
    role: "staff",
    subscribe: ["shop.orders.42.*", "shop.public.*"],
    publish: ["shop.chat.42"],
    realm: "tenant.acme",
    ttlSeconds: 60,
    secret: SECRET,
    now: 1_700_000_000_123,
  });
  assert.deepEqual(decodeProtectedHeader(token), { alg: "HS256", typ: "JWT" });
  assert.deepEqual(decodeJwt(token), {
    sub: "42",
    role: "staff",
    iat: 1_700_000_000,
    exp: 1_700_000_060,
    subscribe: ["shop.orders.42.*", "shop.public.*"],
    publish: ["shop.chat.42"],
    realm: "tenant.acme",
  });
  const minimal = decodeJwt(await mintToken({ subject: "u1", secret: SECRET }));
  assert.deepEqual(Object.keys(minimal).sort(), ["exp", "iat", "sub"]);
  assert.equal(minimal.exp - minimal.iat, 300, "default ttl: 5 minutes");
  assert.deepEqual(decodeJwt(await mintToken({ subject: "u", realm: ["a", "b"], secret: SECRET })).realm, ["a", "b"]);
});

test("bad options are InvalidInput, saying what to fix", async () => {
  const refuse = (options, message) =>
    assert.rejects(mintToken(options), (err) => err instanceof InvalidInput && message.test(err.message), String(message));
  await refuse({ secret: SECRET }, /`subject` is required/);
  await refuse({ subject: "u", secret: "short" }, /at least 32.*openssl rand -hex 32/);
  await refuse({ subject: "u" }, /give either `secret`.*or `privateKey`/);
  await refuse({ subject: "u", secret: SECRET, privateKey: key("rsa_private.pem") }, /not both/);
  await refuse({ subject: "u", secret: SECRET, algorithm: "RS256" }, /signs with HS256/);
  await refuse({ subject: "u", privateKey: key("rsa_private.pem"), algorithm: "EdDSA" }, /rsa key signs with RS256/);
  await refuse({ subject: "u", privateKey: key("rsa_public.pem") }, /not a PEM private key/);
  await refuse({ subject: "u", secret: SECRET, subscribe: "shop.*" }, /array of topic patterns, not one string/);
  await refuse({ subject: "u", secret: SECRET, ttlSeconds: 0 }, /positive whole number/);
  await refuse({ subject: "u", secret: SECRET, realm: "bad realm" }, /not a valid realm name/);
  await refuse({ subject: "u", secret: SECRET, ttl: 60 }, /unknown mintToken option `ttl`/);
});

describe("an HS256 gateway (TELEGRAPHY_JWT_SECRET)", () => {
  let gw;
  before(async () => {
    gw = await startGateway();
  });
  after(async () => {
    await gw?.stop();
  });

  test("accepts the token: authid is the subject, authrole the role", async () => {
    const token = await mintToken({ subject: "bob", role: "staff", secret: SECRET });
    const s = await subscriber(gw.wsUrl, token);
    assert.equal(s.details.authid, "bob");
    assert.equal(s.details.authrole, "staff");
    assert.equal(s.details.authmethod, "ticket");
    await s.close();
  });

  test("the subscribe claim narrows what the session may subscribe to", async () => {
    const token = await mintToken({ subject: "carol", role: "user", subscribe: ["shop.public.*"], secret: SECRET });
    const s = await subscriber(gw.wsUrl, token);
    await s.listen("shop.public.news");
    await assert.rejects(s.listen("shop.orders.7"), (err) => /not_authorized/.test(err.error));
    await s.close();
  });

  test("the realm claim binds the token to its realm", async () => {
    const token = await mintToken({ subject: "dave", realm: "tenant.acme", secret: SECRET });
    const s = await subscriber(gw.wsUrl, token, { realm: "tenant.acme" });
    await s.close();
    await assert.rejects(subscriber(gw.wsUrl, token, { realm: "realm1" }), /authentication_failed/);
  });

  test("refuses an expired token and one signed with another secret", async () => {
    const expired = await mintToken({ subject: "eve", secret: SECRET, ttlSeconds: 1, now: Date.now() - 10_000 });
    await assert.rejects(subscriber(gw.wsUrl, expired), /authentication_failed/);
    const forged = await mintToken({ subject: "eve", secret: `${SECRET}-not-the-gateways` });
    await assert.rejects(subscriber(gw.wsUrl, forged), /authentication_failed/);
  });
});

for (const [kind, publicKey, privateKey, attackerKey] of [
  ["RS256", "rsa_public.pem", "rsa_private.pem", "attacker_rsa_private.pem"],
  ["EdDSA", "ed25519_public.pem", "ed25519_private.pem", "attacker_ed25519_private.pem"],
]) {
  describe(`a gateway verifying ${kind} tokens (TELEGRAPHY_JWT_PUBLIC_KEY_FILE)`, () => {
    let gw;
    before(async () => {
      gw = await startGateway({ publicKeyFile: join(KEYS, publicKey) });
    });
    after(async () => {
      await gw?.stop();
    });

    test(`accepts a token signed with the private key (${kind}), refuses another key's`, async () => {
      const token = await mintToken({ subject: "frank", role: "user", privateKey: key(privateKey) });
      assert.equal(decodeProtectedHeader(token).alg, kind);
      const s = await subscriber(gw.wsUrl, token);
      assert.equal(s.details.authid, "frank");
      await s.close();
      const forged = await mintToken({ subject: "frank", privateKey: key(attackerKey) });
      await assert.rejects(subscriber(gw.wsUrl, forged), /authentication_failed/);
    });
  });
}
