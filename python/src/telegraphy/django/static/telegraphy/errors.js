// The one error type the client produces.
//
// - `uri`: the WAMP error or ABORT URI when the gateway sent one
//   (e.g. "wamp.error.not_authorized", "wamp.error.authentication_failed");
// - `code`: a client-side reason when the gateway sent nothing:
//   "disconnected" (the connection dropped before the answer), "not_connected",
//   "closed" (client.close() or a final close), "unsubscribed" (left before the
//   subscription was active), "invalid_argument", "token"
//   (fetching a token failed), "callback" (an application callback threw),
//   "protocol" (the gateway sent something the client cannot read);
// - `closeCode`: the WebSocket close code, for "disconnected" and "closed".

export class TelegraphyError extends Error {
  constructor(message, { uri, code, closeCode, details, args, kwargs, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "TelegraphyError";
    if (uri !== undefined) this.uri = uri;
    if (code !== undefined) this.code = code;
    if (closeCode !== undefined) this.closeCode = closeCode;
    if (details !== undefined) this.details = details;
    if (args !== undefined) this.args = args;
    if (kwargs !== undefined) this.kwargs = kwargs;
  }
}

/** An Error from a WAMP ERROR or ABORT message. */
export function wampError(uri, details = {}, args, kwargs) {
  const text = (details && typeof details.message === "string" && details.message) ||
    (Array.isArray(args) && typeof args[0] === "string" && args[0]) || uri;
  return new TelegraphyError(text === uri ? uri : `${uri}: ${text}`, { uri, details, args, kwargs });
}
