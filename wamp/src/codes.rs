//! Error URIs, close reasons and WebSocket close codes, in one place.
//!
//! `tests/vectors/codes.json` is the source of truth, shared with the JS
//! client and described for users in `docs/protocol.md` section 6;
//! `tests/codes_vectors.rs` fails when this file and the vectors differ.

/// WAMP error and close-reason URIs the router sends.
pub mod uri {
    /// The peer broke the protocol (bad frame, wrong state, bad arity or type).
    pub const PROTOCOL_VIOLATION: &str = "wamp.error.protocol_violation";
    /// A URI is malformed under the router's URI rules.
    pub const INVALID_URI: &str = "wamp.error.invalid_uri";
    /// The realm named in HELLO does not exist on this router.
    pub const NO_SUCH_REALM: &str = "wamp.error.no_such_realm";
    /// UNSUBSCRIBE named a subscription the session does not hold.
    pub const NO_SUCH_SUBSCRIPTION: &str = "wamp.error.no_such_subscription";
    /// A CALL for a procedure no callee registered.
    pub const NO_SUCH_PROCEDURE: &str = "wamp.error.no_such_procedure";
    /// UNREGISTER named a registration the session does not hold.
    pub const NO_SUCH_REGISTRATION: &str = "wamp.error.no_such_registration";
    /// `wamp.session.get` / `kill` named no (other) session of the realm.
    pub const NO_SUCH_SESSION: &str = "wamp.error.no_such_session";
    /// REGISTER for a procedure already registered (invoke `single`).
    pub const PROCEDURE_ALREADY_EXISTS: &str = "wamp.error.procedure_already_exists";
    /// REGISTER with another invoke policy than the procedure's callees.
    pub const PROCEDURE_EXISTS_WITH_DIFFERENT_INVOCATION_POLICY: &str = "wamp.error.procedure_exists_with_different_invocation_policy";
    /// A call was canceled (CANCEL, or its callee's session ended).
    pub const CANCELED: &str = "wamp.error.canceled";
    /// A call's `timeout` ran out before the callee answered.
    pub const TIMEOUT: &str = "wamp.error.timeout";
    /// The web-app serving a procedure over HTTP could not be reached.
    pub const CALLEE_UNAVAILABLE: &str = "telegraphy.error.callee_unavailable";
    /// The web-app answered a call with something that is not a result or
    /// an error URI (an HTTP error, unreadable JSON, too large).
    pub const CALLEE_FAILED: &str = "telegraphy.error.callee_failed";
    /// An option has a value the router does not accept.
    pub const INVALID_ARGUMENT: &str = "wamp.error.invalid_argument";
    /// The session may not do this (reserved `wamp.` topics, role rules).
    pub const NOT_AUTHORIZED: &str = "wamp.error.not_authorized";
    /// The event bus did not accept the event (outage); retry later.
    pub const BUS_UNAVAILABLE: &str = "telegraphy.error.bus_unavailable";
    /// Credentials were presented and refused (bad, expired or forged token, wrong secret).
    pub const AUTHENTICATION_FAILED: &str = "wamp.error.authentication_failed";
    /// None of the authentication methods the client offered is available.
    pub const NO_AUTH_METHOD: &str = "wamp.error.no_auth_method";
    /// The session publishes faster than its role allows.
    pub const RATE_LIMITED: &str = "telegraphy.error.rate_limited";
    /// GOODBYE reason: the session's token expired; reconnect with a new one.
    pub const TOKEN_EXPIRED: &str = "telegraphy.close.token_expired";
    /// A limit was reached (subscriptions per session).
    pub const LIMIT_EXCEEDED: &str = "telegraphy.error.limit_exceeded";
    /// GOODBYE reason: the router is shutting down (drain).
    pub const SYSTEM_SHUTDOWN: &str = "wamp.close.system_shutdown";
    /// GOODBYE reason a client sends to leave (accepted, never sent).
    pub const CLOSE_REALM: &str = "wamp.close.close_realm";
    /// GOODBYE reason for a session closed by `wamp.session.kill*` (when
    /// the caller names no reason).
    pub const CLOSE_NORMAL: &str = "wamp.close.normal";
    /// GOODBYE reply reason.
    pub const GOODBYE_AND_OUT: &str = "wamp.close.goodbye_and_out";
    /// ABORT reason: HELLO did not arrive in time.
    pub const HELLO_TIMEOUT: &str = "telegraphy.close.hello_timeout";
    /// ABORT reason: nothing was heard from the peer within the idle timeout.
    pub const IDLE_TIMEOUT: &str = "telegraphy.close.idle_timeout";
    /// ABORT reason: a message larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: &str = "telegraphy.error.message_too_big";
}

/// WebSocket close codes the gateway sends, and those a client must
/// understand although the gateway never sends them (they come from proxies,
/// other servers, or the client's own WebSocket).
///
/// Codes below 4000 are RFC 6455 codes. Telegraphy's own codes split in two
/// ranges so that clients know what to do without knowing each code:
/// `4000..=4499` means "reconnect (with backoff)", `4500..=4999` means
/// "do not reconnect without a change (new token, fixed client)".
pub mod close {
    /// Normal closure, after a GOODBYE exchange.
    pub const NORMAL: u16 = 1000;
    /// Not sent by the gateway: the other end (a server, a proxy) is going
    /// away. Reconnect.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WAMP protocol; an ABORT with the reason came first.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame on a JSON session or a text frame on a msgpack session.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Never on the wire: a client's WebSocket reports it when the peer
    /// closed without a code, as proxies and load balancers often do.
    /// Reconnect.
    pub const NO_STATUS: u16 = 1005;
    /// Never on the wire: the connection dropped without a close frame (also
    /// a shed connection or a refused upgrade, seen from a browser). Reconnect.
    pub const ABNORMAL: u16 = 1006;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Not sent by the gateway (it sends [`AUTH_FAILED`]): a policy refused
    /// the connection. Do not reconnect.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Not sent by the gateway: the server hit an unexpected condition.
    /// Reconnect.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The node is draining (rollout, shutdown): reconnect, to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Not sent by the gateway: the server is overloaded for now. Reconnect.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Not sent by the gateway: a proxy in front got an invalid answer from
    /// the server behind it. Reconnect.
    pub const BAD_GATEWAY: u16 = 1014;
    /// The session could not keep up with its events and its outbound queue
    /// filled up: reconnect (and recover).
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing (not even a pong) was heard within the idle timeout: reconnect.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// HELLO did not arrive within the handshake timeout: reconnect.
    pub const HELLO_TIMEOUT: u16 = 4002;
    /// The session's token expired: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// Authentication failed or is not possible: do not reconnect with the
    /// same credentials.
    pub const AUTH_FAILED: u16 = 4500;

    /// Whether a client should reconnect (with backoff) after this close
    /// code: the RFC 6455 codes that say "the other end or the path is in
    /// trouble, not you", and Telegraphy's range `4000..=4499`.
    pub fn should_reconnect(code: u16) -> bool {
        matches!(code, GOING_AWAY | NO_STATUS | ABNORMAL | INTERNAL_ERROR | SERVICE_RESTART | TRY_AGAIN_LATER | BAD_GATEWAY)
            || (4000..4500).contains(&code)
    }
}
