// `POST {gateway}/publish` with `Authorization: Bearer KEY` (built-in fetch).
// See docs/protocol.md, section 7, for the statuses mapped here.

import { InvalidInput, NoSubscriber, Rejected, Unauthorized, Unavailable } from "../errors.js";
import { toWampJson } from "../envelope.js";

export class HttpTransport {
  kind = "http";

  constructor(url, apiKey, timeoutMs) {
    if (typeof url !== "string" || url === "") {
      throw new InvalidInput("the gateway URL is empty; set it to the gateway's http://HOST:PORT");
    }
    const base = url.replace(/\/+$/, "");
    if (/^wss?:\/\//.test(base)) {
      throw new InvalidInput(
        `gateway URL \`${url}\` is the WebSocket URL; publishing uses HTTP on the same listener: http://HOST:PORT (https:// with TLS)`,
      );
    }
    if (!/^https?:\/\/./.test(base)) {
      throw new InvalidInput(`gateway URL \`${url}\` must start with http:// or https://`);
    }
    if (!apiKey) {
      throw new InvalidInput(
        "publishing through a gateway needs an API key (apiKey, or TELEGRAPHY_API_KEY): one of the gateway's TELEGRAPHY_API_KEYS",
      );
    }
    this.endpoint = base.endsWith("/publish") ? base : `${base}/publish`;
    this.apiKey = apiKey;
    this.timeoutMs = timeoutMs;
  }

  /** The request body (JSON text); checks every value. */
  body(envelope, requireSubscriber) {
    const parts = [
      `"topic":${JSON.stringify(envelope.topic)}`,
      `"args":${toWampJson(envelope.args, 2, "args")}`,
      `"kwargs":${toWampJson(envelope.kwargs, 2, "kwargs")}`,
      `"options":${JSON.stringify(envelope.retain ? { ...envelope.filter, retain: true } : envelope.filter)}`,
    ];
    if (envelope.realm != null) parts.push(`"realm":${JSON.stringify(envelope.realm)}`);
    if (requireSubscriber) parts.push(`"require_subscriber":true`);
    return `{${parts.join(",")}}`;
  }

  async publish(envelope, requireSubscriber) {
    const body = this.body(envelope, requireSubscriber);
    let status;
    let text;
    try {
      const response = await fetch(this.endpoint, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.apiKey}`, "Content-Type": "application/json" },
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      status = response.status;
      text = await response.text();
    } catch (e) {
      if (e?.name === "TimeoutError" || e?.name === "AbortError") {
        throw new Unavailable(
          `the gateway at ${this.endpoint} did not answer within ${this.timeoutMs} ms; the event may or may not have been published`,
          { cause: e },
        );
      }
      const reason = e?.cause?.code ?? e?.cause?.message ?? e?.message;
      throw new Unavailable(`the gateway at ${this.endpoint} cannot be reached: ${reason}`, { cause: e });
    }
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: use the text as the message
    }
    const answer = parsed !== null && typeof parsed === "object" ? parsed : {};
    const message = (typeof answer.message === "string" && answer.message) || text.trim() || `HTTP ${status}`;
    switch (status) {
      case 200:
        if (Number.isInteger(answer.id)) return answer.id;
        throw new Rejected(`the gateway at ${this.endpoint} answered 200 without a publication id`);
      case 401:
      case 403:
        throw new Unauthorized(`the gateway refused the API key: ${message}`);
      case 400:
      case 413:
        throw new InvalidInput(`the gateway refused the event: ${message}`);
      case 404:
        throw new InvalidInput(`${this.endpoint} is not a Telegraphy publish endpoint (HTTP 404); check the gateway URL`);
      case 503:
        throw new Unavailable(`the gateway cannot take events now: ${message}`);
      case 409:
        if (answer.error === "no_subscriber") throw new NoSubscriber(message);
      // fall through
      default:
        throw new Unavailable(`the gateway answered HTTP ${status}: ${message}`);
    }
  }

  async close() {}
}
