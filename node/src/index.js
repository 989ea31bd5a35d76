// @telegraphy/server: publish Telegraphy events from Node.js (through a
// gateway's HTTP endpoint, or straight onto Redis or RabbitMQ) and mint the
// tokens browsers connect with. Guide: docs/node.md.

export {
  Publisher,
  publisherFromEnv,
  DEFAULT_REALM,
  DEFAULT_REDIS_KEY_PREFIX,
  DEFAULT_AMQP_EXCHANGE,
  DEFAULT_TIMEOUT_MS,
} from "./publisher.js";
export { PublishError, InvalidInput, Unavailable, Unauthorized, Rejected, NoSubscriber } from "./errors.js";
export { mintToken, DEFAULT_TOKEN_TTL_SECONDS, MIN_SECRET_BYTES } from "./tokens.js";
export {
  encodeEnvelope,
  decodeEnvelope,
  newEnvelope,
  canonicalFilter,
  toWampJson,
  FORMAT_VERSION,
  MAX_ID,
  FILTER_KEYS,
} from "./envelope.js";
export { isValidTopic, checkTopic } from "./uri.js";
export { ENVELOPE_CONTENT_TYPE } from "./transports/amqp.js";
