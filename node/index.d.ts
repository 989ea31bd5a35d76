// Type declarations for @telegraphy/server (hand-written; the code is src/*.js).

/**
 * A payload value: null, boolean, number (integral → msgpack int, else
 * float64), bigint (64-bit), string, binary data (Uint8Array, Buffer,
 * ArrayBuffer), arrays and plain objects / Maps with string keys.
 */
export type Payload =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | ArrayBuffer
  | Payload[]
  | { [key: string]: Payload | undefined }
  | Map<string, Payload>;

export type ErrorKind = "invalid_input" | "unavailable" | "unauthorized" | "rejected" | "no_subscriber";

/** Base class of every error this package throws; match on `kind`. */
export class PublishError extends Error {
  static readonly kind: ErrorKind | "error";
  readonly kind: ErrorKind;
  constructor(message: string, options?: { cause?: unknown });
}
/** The event, the URL or the settings are malformed: fix the input. */
export class InvalidInput extends PublishError {}
/** The bus or gateway could not be reached or is not taking events now: retry later. */
export class Unavailable extends PublishError {}
/** The credentials were refused (API key, broker user or password). */
export class Unauthorized extends PublishError {}
/** The bus or gateway refused this event and would refuse it again. */
export class Rejected extends PublishError {}
/** `requireSubscriber` was set and no gateway node subscribed to the topic got the event. */
export class NoSubscriber extends PublishError {}

export interface PublisherSettings {
  /** A gateway's HTTP address, `http://HOST:8080` (needs `apiKey`). */
  gatewayUrl?: string;
  /** One of the gateway's API keys (`TELEGRAPHY_API_KEYS`). */
  apiKey?: string;
  /** `redis://[USER:PASS@]HOST:6379/DB` or `amqp://USER:PASS@HOST:5672/VHOST`. */
  bus?: string;
  /** The gateways' `redis.key_prefix` (default "telegraphy:"). */
  redisKeyPrefix?: string;
  /** The gateways' `amqp.exchange` (default "telegraphy"). */
  amqpExchange?: string;
  /** Bound on each connect and each answer, in milliseconds (default 5000). */
  timeoutMs?: number;
  /**
   * With a rediss:// or amqps:// bus: a CA trusted besides Node's own roots,
   * and a client certificate with its key (paths of PEM files).
   */
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  /** Default realm of `publish` (else realm1 on a bus, the gateway's first realm over HTTP). */
  realm?: string;
}

export interface PublishOptions {
  realm?: string;
  /** Succeed only if a gateway node subscribed to the topic got the event; else NoSubscriber. */
  requireSubscriber?: boolean;
  /** Keep it as the topic's retained event (subscribers asking `get_retained` get it at once). */
  retain?: boolean;
  /** Session ids that must not receive the event. */
  exclude?: Array<number | bigint>;
  /** Only these session ids may receive it (an empty array: nobody). */
  eligible?: Array<number | bigint>;
  /** Token subjects (authids) that must not receive it. */
  excludeAuthid?: string[];
  /** Only these token subjects may receive it. */
  eligibleAuthid?: string[];
  /** Roles that must not receive it. */
  excludeAuthrole?: string[];
  /** Only these roles may receive it. */
  eligibleAuthrole?: string[];
}

export class Publisher {
  constructor(settings: PublisherSettings);
  readonly kind: "http" | "redis" | "amqp";
  /** Resolves with the publication id (1..2^53) once the gateway or bus accepted the event. */
  publish(
    topic: string,
    args?: Payload[] | null,
    kwargs?: { [key: string]: Payload | undefined } | Map<string, Payload> | null,
    options?: PublishOptions,
  ): Promise<number>;
  /** Closes the broker connection; a later publish connects again. */
  close(): Promise<void>;
}

/** A Publisher from TELEGRAPHY_BUS, or TELEGRAPHY_GATEWAY_URL + TELEGRAPHY_API_KEY (and friends). */
export function publisherFromEnv(env?: Record<string, string | undefined>): Publisher;

export interface MintTokenOptions {
  /** The user (becomes the session's authid, claim `sub`). */
  subject: string | number | bigint;
  /** A role configured on the gateway (the gateway's default: `user`). */
  role?: string;
  /** Topic patterns the session may subscribe to (narrows the role). */
  subscribe?: string[];
  /** Topic patterns the session may publish to (narrows the role). */
  publish?: string[];
  /** The realm(s) the token may join. */
  realm?: string | string[];
  /** Lifetime in seconds (default 300). */
  ttlSeconds?: number;
  /** HS256: the gateway's TELEGRAPHY_JWT_SECRET (at least 32 bytes). */
  secret?: string | Uint8Array;
  /** RS256 (RSA) or EdDSA (Ed25519): a PEM private key, KeyObject or CryptoKey. */
  privateKey?: string | Buffer | import("node:crypto").KeyObject | CryptoKey;
  /** Checks the algorithm the key implies ("HS256", "RS256" or "EdDSA"). */
  algorithm?: "HS256" | "RS256" | "EdDSA";
  /** Claim `aud`, when the gateway sets auth.jwt_audience. */
  audience?: string;
  /** Claim `iss`, when the gateway sets auth.jwt_issuer. */
  issuer?: string;
  /** The current time in milliseconds (tests). */
  now?: number;
}

/** Mints a JWT for WAMP ticket authentication; resolves with the token. */
export function mintToken(options: MintTokenOptions): Promise<string>;

/** One event on the bus (docs/envelope.md). */
export interface Envelope {
  realm: string;
  topic: string;
  publication: number | bigint;
  publishedAtUs: number | bigint;
  args: Payload[];
  kwargs: { [key: string]: Payload };
  /** snake_case keys: eligible, eligible_authid, ..., exclude_authrole. */
  filter: Record<string, Array<number | bigint | string>>;
  publisher: null | {
    authid: string;
    authrole: string;
    disclose_me: boolean;
    exclude_me: boolean;
    node: number | bigint;
    session: number | bigint;
  };
}

/** The canonical msgpack bytes of an envelope (identical to the gateway's). */
export function encodeEnvelope(envelope: Partial<Envelope> & Pick<Envelope, "realm" | "topic" | "publication">): Uint8Array;
/** Reads envelope bytes; integers beyond 2^53 come back as bigints. */
export function decodeEnvelope(bytes: Uint8Array): Envelope;
/** A fresh envelope: random publication id, published now. */
export function newEnvelope(fields: { realm: string; topic: string; args?: Payload[]; kwargs?: object; filter?: object }): Envelope;
export function canonicalFilter(filter?: object | null): Envelope["filter"];
/** A payload value as WAMP JSON text (binary as "\u0000" + base64). */
export function toWampJson(value: Payload, depth?: number, where?: string): string;
export function isValidTopic(topic: unknown): boolean;
export function checkTopic(topic: unknown): string;

export const DEFAULT_REALM: "realm1";
export const DEFAULT_REDIS_KEY_PREFIX: "telegraphy:";
export const DEFAULT_AMQP_EXCHANGE: "telegraphy";
export const DEFAULT_TIMEOUT_MS: 5000;
export const DEFAULT_TOKEN_TTL_SECONDS: 300;
export const MIN_SECRET_BYTES: 32;
export const FORMAT_VERSION: 1;
export const MAX_ID: number;
export const FILTER_KEYS: readonly string[];
export const ENVELOPE_CONTENT_TYPE: "application/x-telegraphy-envelope";
