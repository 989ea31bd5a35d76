//! The WAMP session state machine: what the router does with each message
//! a client sends. It sees decoded messages and queues replies on the
//! session's outbox; the socket belongs to [`crate::connection`].
//!
//! This module runs a session's life, HELLO (and authentication) to
//! GOODBYE, and hands an established session's messages to the role they
//! are for: [`broker`] (SUBSCRIBE, UNSUBSCRIBE, PUBLISH, and the event
//! history procedure) and [`dealer`] (REGISTER, UNREGISTER, CALL, CANCEL,
//! YIELD, and ERROR for an INVOCATION). Each role keeps its per-session
//! state in the established state and releases it in [`Session::cleanup`].

mod broker;
mod dealer;
mod meta;

use std::sync::Arc;

use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{dict, Dict, Id, Message, Value, WelcomeRef};

use crate::auth::{AuthFailure, Authenticated, CraChallenge};
use crate::authz::Permissions;
use crate::broker::{Identity, SessionHandle};
use crate::metrics::Violation;
use crate::node::Node;
use crate::realm::Realm;
use crate::wire::encode_frame;

/// A boolean option of a request (absent or null: false); the error names it.
fn flag_option(options: &Dict, key: &str) -> Result<bool, String> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| format!("option `{key}` must be a boolean, got {}", v.type_name())),
    }
}

/// What the connection should do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the WebSocket with this code once queued frames are written.
    Close(u16),
}

enum State {
    AwaitingHello,
    /// CHALLENGE sent; waiting for AUTHENTICATE.
    Challenged {
        realm: Arc<Realm>,
        method: Challenge,
    },
    Established {
        realm: Arc<Realm>,
        /// The broker role's state for this session.
        broker: broker::BrokerState,
        /// The dealer roles' state for this session.
        dealer: dealer::DealerState,
        rights: Rights,
    },
    Closed,
}

enum Challenge {
    Ticket,
    Cra(CraChallenge),
}

/// What an established session may do, and how fast.
struct Rights {
    permissions: Arc<Permissions>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    call_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// The role discloses the caller of every call.
    disclose_caller: bool,
}

/// One WAMP session.
pub struct Session {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    state: State,
    /// When the token behind the session expires (the session is closed then).
    expires_at: Option<tokio::time::Instant>,
    /// What the client announced it can do as a callee (HELLO).
    callee_features: crate::dealer::CalleeFeatures,
}

impl Session {
    /// A session waiting for HELLO.
    pub fn new(node: Arc<Node>, handle: Arc<SessionHandle>) -> Session {
        Session { node, handle, state: State::AwaitingHello, expires_at: None, callee_features: Default::default() }
    }

    /// Whether WELCOME was sent.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Decodes and handles one WebSocket payload.
    pub async fn handle_payload(&mut self, payload: &[u8]) -> Flow {
        match self.handle.serialization.decode(payload) {
            Ok(msg) => self.handle(msg).await,
            Err(telegraphy_wamp::DecodeError::Syntax(e)) => self.violation(Violation::Malformed, &format!("could not decode the message: {e}")),
            Err(telegraphy_wamp::DecodeError::Message(e)) => self.violation(Violation::InvalidMessage, &e.to_string()),
        }
    }

    /// Handles one decoded message.
    pub(crate) async fn handle(&mut self, msg: Message) -> Flow {
        match (&mut self.state, msg) {
            (State::Closed, _) => Flow::Close(close::NORMAL),
            (State::AwaitingHello, Message::Hello { realm, details }) => self.hello(realm, details),
            (State::AwaitingHello, Message::Abort { .. }) => {
                self.state = State::Closed;
                Flow::Close(close::NORMAL)
            }
            (State::AwaitingHello, other) => {
                self.violation(Violation::WrongState, &format!("{} before the session was established; send HELLO first", other.name()))
            }
            (State::Challenged { .. }, Message::Authenticate { signature, .. }) => self.authenticate(signature),
            (State::Challenged { .. }, Message::Abort { .. }) => {
                self.state = State::Closed;
                Flow::Close(close::NORMAL)
            }
            (State::Challenged { .. }, other) => {
                self.violation(Violation::WrongState, &format!("{} while authenticating; send AUTHENTICATE", other.name()))
            }
            (State::Established { .. }, Message::Hello { .. }) => self.violation(Violation::WrongState, "HELLO on an established session"),
            (State::Established { .. }, Message::Goodbye { .. }) => {
                self.send_last(&Message::Goodbye { details: Dict::new(), reason: err::GOODBYE_AND_OUT.into() });
                self.cleanup();
                Flow::Close(close::NORMAL)
            }
            (State::Established { .. }, Message::Abort { .. }) => {
                self.cleanup();
                Flow::Close(close::NORMAL)
            }
            (State::Established { .. }, msg @ (Message::Subscribe { .. } | Message::Unsubscribe { .. } | Message::Publish { .. })) => {
                self.broker_message(msg).await;
                Flow::Continue
            }
            (State::Established { .. }, Message::Call { request, options, procedure, args, kwargs }) => {
                self.call(request, options, procedure, args, kwargs).await;
                Flow::Continue
            }
            (State::Established { .. }, Message::Cancel { request, options }) => {
                self.cancel(request, options);
                Flow::Continue
            }
            (State::Established { .. }, Message::Register { request, options, procedure }) => {
                self.register(request, options, procedure);
                Flow::Continue
            }
            (State::Established { .. }, Message::Unregister { request, registration }) => {
                self.unregister(request, registration);
                Flow::Continue
            }
            (State::Established { .. }, Message::Yield { request, options, args, kwargs }) => {
                self.yielded(request, options, args, kwargs);
                Flow::Continue
            }
            (
                State::Established { .. },
                Message::Error { request_type: telegraphy_wamp::code::INVOCATION, request, details, error, args, kwargs },
            ) => {
                self.invocation_failed(request, details, error, args, kwargs);
                Flow::Continue
            }
            (State::Established { .. }, other) => {
                self.violation(Violation::WrongState, &format!("{} is not a message a client sends to a broker here", other.name()))
            }
        }
    }

    fn hello(&mut self, name: String, details: Dict) -> Flow {
        let Some(realm) = self.node.realms.get(&name).cloned() else {
            self.send_last(&Message::Abort {
                details: dict! {"message" => format!("realm `{name}` does not exist on this router")},
                reason: err::NO_SUCH_REALM.into(),
            });
            self.state = State::Closed;
            return Flow::Close(close::NORMAL);
        };
        match details.get("roles") {
            Some(Value::Dict(roles)) if !roles.is_empty() => self.callee_features = crate::dealer::CalleeFeatures::from_roles(roles),
            _ => return self.violation(Violation::InvalidMessage, "HELLO.Details.roles must be a non-empty dictionary"),
        }
        let methods: Vec<&str> = match details.get("authmethods") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let auth = &self.node.auth;
        if methods.contains(&"ticket") && auth.accepts_tickets() {
            self.send(&Message::Challenge { authmethod: "ticket".into(), extra: Dict::new() });
            self.state = State::Challenged { realm, method: Challenge::Ticket };
            return Flow::Continue;
        }
        if methods.contains(&"wampcra") {
            let authid = details.get("authid").and_then(Value::as_str).unwrap_or_default();
            if let Some(challenge) = auth.cra_challenge(authid, self.handle.id) {
                self.send(&Message::Challenge { authmethod: "wampcra".into(), extra: dict! {"challenge" => challenge.challenge.clone()} });
                self.state = State::Challenged { realm, method: Challenge::Cra(challenge) };
                return Flow::Continue;
            }
        }
        if methods.is_empty() || methods.contains(&"anonymous") {
            if let Some(result) = auth.anonymous(self.handle.id) {
                return match result {
                    Ok(who) => self.welcome(realm, who),
                    Err(f) => self.refuse(f),
                };
            }
        }
        let offered = if methods.is_empty() { "none".to_string() } else { methods.join(", ") };
        let available = auth.methods();
        let message = if available.is_empty() {
            "this gateway accepts no sessions: configure auth.jwt_secret, auth.jwt_public_key_file, auth.cra or auth.allow_anonymous".to_string()
        } else {
            format!(
                "no acceptable authentication method: you offered {offered}; this gateway accepts {}. Browsers: connect with authmethods [\"ticket\"] and a token from your web-app",
                available.join(", ")
            )
        };
        self.refuse(AuthFailure { uri: err::NO_AUTH_METHOD, message, reason: "no_method" })
    }

    fn authenticate(&mut self, signature: String) -> Flow {
        let State::Challenged { realm, method } = std::mem::replace(&mut self.state, State::Closed) else {
            return Flow::Close(close::PROTOCOL_ERROR);
        };
        let result = match &method {
            Challenge::Ticket => self.node.auth.verify_ticket(&signature, &realm.name),
            Challenge::Cra(c) => self.node.auth.verify_cra(c, &signature),
        };
        match result {
            Ok(who) => self.welcome(realm, who),
            Err(f) => self.refuse(f),
        }
    }

    /// ABORTs a session whose credentials were refused.
    fn refuse(&mut self, f: AuthFailure) -> Flow {
        self.node.metrics.auth_failure(f.reason);
        let client = self.handle.client.map(|c| c.to_string()).unwrap_or_default();
        tracing::info!(session = self.handle.id, %client, reason = f.reason, "authentication refused: {}", f.message);
        self.send_last(&Message::Abort { details: dict! {"message" => f.message}, reason: f.uri.into() });
        self.state = State::Closed;
        Flow::Close(close::AUTH_FAILED)
    }

    fn welcome(&mut self, realm: Arc<Realm>, who: Authenticated) -> Flow {
        let mut welcome = dict! {
            "realm" => realm.name.clone(),
            "authid" => who.authid.clone(),
            "authrole" => who.authrole.clone(),
            "authmethod" => who.authmethod,
            "authprovider" => who.authprovider,
            "x_telegraphy_node" => format!("{:016x}", self.node.id),
        };
        let mut authextra = Dict::new();
        if let Some(name) = &who.name {
            authextra.insert("name".into(), Value::Str(name.clone()));
        }
        if let Some(exp) = who.expires_at {
            let secs = exp.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            authextra.insert("expires_at".into(), Value::UInt(secs));
            if self.node.config.auth.expire_sessions {
                // At `exp` exactly (no leeway); a time too far to represent never comes.
                let left = exp.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                self.expires_at = tokio::time::Instant::now().checked_add(left);
            }
        }
        if !authextra.is_empty() {
            welcome.insert("authextra".into(), Value::Dict(authextra));
        }
        let member = crate::members::Member {
            session: self.handle.id,
            authid: who.authid.clone(),
            authrole: who.authrole.clone(),
            authmethod: who.authmethod.to_string(),
            authprovider: who.authprovider.to_string(),
            name: who.name.clone(),
            testaments: Vec::new(),
        };
        let _ = self.handle.identity.set(Identity { authid: who.authid, authrole: who.authrole, name: who.name });
        let limiter = crate::config::rate_limiter(who.role.publish_rate, who.role.publish_burst);
        let call_limiter = crate::config::rate_limiter(who.role.call_rate, who.role.call_burst);
        if let Some(frame) =
            encode_frame(self.handle.serialization, &WelcomeRef { session: self.handle.id, details: &welcome, roles: realm.welcome_roles() })
        {
            let _ = self.handle.outbox.push(&frame);
        }
        self.node.member_joined(&realm, member, self.handle.clone());
        self.state = State::Established {
            realm,
            broker: broker::BrokerState::default(),
            dealer: dealer::DealerState { features: self.callee_features, http_calls: Default::default() },
            rights: Rights { permissions: who.permissions, limiter, call_limiter, disclose_caller: who.role.disclose_caller },
        };
        self.node.metrics.sessions.inc();
        self.node.metrics.sessions_total.inc();
        tracing::debug!(session = self.handle.id, serializer = self.handle.serialization.label(), "session established");
        Flow::Continue
    }

    /// When the session's credentials expire (it is then closed).
    pub(crate) fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    /// Says GOODBYE because the token expired.
    pub(crate) fn expire(&mut self) -> Flow {
        self.send_last(&Message::Goodbye {
            details: dict! {"message" => "the session's token expired; reconnect with a fresh token"},
            reason: err::TOKEN_EXPIRED.into(),
        });
        self.cleanup();
        Flow::Close(close::TOKEN_EXPIRED)
    }

    /// Sends ABORT for a protocol violation and asks to close.
    pub(crate) fn violation(&mut self, kind: Violation, message: &str) -> Flow {
        self.node.metrics.violation(kind);
        tracing::debug!(session = self.handle.id, kind = ?kind, message, "protocol violation");
        self.abort(err::PROTOCOL_VIOLATION, message);
        Flow::Close(close::PROTOCOL_ERROR)
    }

    /// Counts a protocol violation found outside the session (socket level).
    pub(crate) fn count_violation(&self, kind: Violation) {
        self.node.metrics.violation(kind);
    }

    /// Sends ABORT with `reason` and ends the session (the caller closes).
    pub(crate) fn abort(&mut self, reason: &str, message: &str) {
        if !matches!(self.state, State::Closed) {
            self.send_last(&Message::Abort { details: dict! {"message" => message}, reason: reason.into() });
        }
        self.cleanup();
    }

    /// Says GOODBYE because the node is draining.
    pub(crate) fn shutdown(&mut self) -> Flow {
        if self.is_established() {
            self.send_last(&Message::Goodbye {
                details: dict! {"message" => "this gateway node is shutting down; reconnect to another node"},
                reason: err::SYSTEM_SHUTDOWN.into(),
            });
        }
        self.cleanup();
        Flow::Close(close::SERVICE_RESTART)
    }

    /// Leaves every subscription; idempotent. Called on every way out.
    pub(crate) fn cleanup(&mut self) {
        if let State::Established { realm, broker, dealer, .. } = std::mem::replace(&mut self.state, State::Closed) {
            broker.leave(&self.node, &realm, self.handle.id);
            realm.dealer.leave(self.handle.id);
            self.node.member_left(&realm, self.handle.id);
            dealer.leave(&self.node.metrics);
            self.node.metrics.sessions.dec();
        }
    }

    fn error(&mut self, request_type: u64, request: Id, error: &str, message: &str) {
        self.send(&Message::Error {
            request_type,
            request,
            details: dict! {"message" => message},
            error: error.into(),
            args: vec![Value::Str(message.into())],
            kwargs: Dict::new(),
        });
    }

    /// Queues the session's last message (ABORT, GOODBYE): it is written
    /// together with the WebSocket close frame.
    fn send_last(&self, msg: &Message) {
        if let Some(frame) = encode_frame(self.handle.serialization, msg) {
            self.handle.outbox.set_last_words(frame);
        }
    }

    /// Queues a WebSocket ping (the client's pong keeps the session from
    /// the idle timeout).
    pub(crate) fn send_ping(&self) {
        let _ = self.handle.outbox.push(&crate::wire::ping_frame());
    }

    fn send(&self, msg: &Message) {
        self.handle.send(msg);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use telegraphy_bus::memory::MemoryBus;
    use telegraphy_bus::{BusMetrics, Inbound};
    use telegraphy_wamp::{MatchPolicy, Serialization};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::auth::Authenticator;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::outbox::Outbox;
    use crate::wire::Wire;

    /// A node on the memory bus (anonymous sessions allowed), one session
    /// on it over a real loopback socket, and the client's end.
    async fn session() -> (Session, TcpStream, tokio::sync::mpsc::Receiver<telegraphy_bus::Envelope>) {
        let mut config = Config::default();
        config.auth.allow_anonymous = true;
        config.roles.insert(
            "anonymous".into(),
            crate::config::RoleConfig {
                subscribe: vec!["*".into()],
                publish: vec!["*".into()],
                call: vec!["*".into()],
                register: vec!["*".into()],
                publish_burst: 1,
                ..Default::default()
            },
        );
        let auth = Authenticator::from_config(&config).unwrap();
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let bus: Arc<dyn telegraphy_bus::Bus> = Arc::new(MemoryBus::new(Inbound::new(tx.clone(), BusMetrics::unregistered())));
        let node = Node::new(
            1,
            config,
            auth,
            crate::node::NodeBus { bus, store: None, queue: tx.downgrade(), sessions: Default::default() },
            metrics.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let json = Serialization::Json;
        let outbox = Outbox::new(Wire::tcp(server), json.index(), 64, 1 << 20, metrics);
        let handle = Arc::new(SessionHandle { id: 42, serialization: json, identity: OnceLock::new(), outbox, client: None });
        (Session::new(node, handle), client, rx)
    }

    async fn reply(client: &mut TcpStream) -> Message {
        crate::wire::read_message(client, Serialization::Json).await
    }

    fn hello() -> Message {
        Message::Hello { realm: "realm1".into(), details: dict! {"roles" => Value::Dict(dict! {"subscriber" => Value::Dict(Dict::new())})} }
    }

    #[tokio::test]
    async fn welcome_announces_the_realms_roles() {
        let (mut s, mut client, _rx) = session().await;
        assert_eq!(s.handle(hello()).await, Flow::Continue);
        let Message::Welcome { session, details } = reply(&mut client).await else { panic!("WELCOME expected") };
        assert_eq!(session, 42);
        let Some(Value::Dict(roles)) = details.get("roles") else { panic!("roles: {details:?}") };
        let Some(Value::Dict(broker)) = roles.get("broker") else { panic!("broker role: {roles:?}") };
        let Some(Value::Dict(features)) = broker.get("features") else { panic!("features: {broker:?}") };
        assert_eq!(features.get("pattern_based_subscription"), Some(&Value::Bool(true)));
        let Some(Value::Dict(dealer)) = roles.get("dealer") else { panic!("dealer role: {roles:?}") };
        let Some(Value::Dict(features)) = dealer.get("features") else { panic!("features: {dealer:?}") };
        assert_eq!(features.get("call_canceling"), Some(&Value::Bool(true)));
        assert!(s.is_established());
    }

    #[tokio::test]
    async fn broker_messages_reach_the_broker_role_and_its_state() {
        let (mut s, mut client, mut bus) = session().await;
        s.handle(hello()).await;
        reply(&mut client).await;
        let sub = Message::Subscribe { request: 1, options: dict! {"match" => "prefix"}, topic: "news".into() };
        assert_eq!(s.handle(sub).await, Flow::Continue);
        let Message::Subscribed { request: 1, subscription } = reply(&mut client).await else { panic!("SUBSCRIBED expected") };
        let State::Established { realm, broker, .. } = &s.state else { panic!("established") };
        let realm = realm.clone();
        assert_eq!(realm.broker.subscription_id(MatchPolicy::Prefix, "news"), Some(subscription));
        assert!(broker.holds(subscription), "the session's broker state records the subscription");
        let publish =
            Message::Publish { request: 2, options: dict! {"acknowledge" => true}, topic: "news.a".into(), args: vec![], kwargs: Dict::new() };
        assert_eq!(s.handle(publish).await, Flow::Continue);
        assert!(matches!(reply(&mut client).await, Message::Published { request: 2, .. }));
        // Nobody listens to wamp.session.on_join: only the publication went to the bus.
        assert_eq!(bus.recv().await.unwrap().topic, "news.a", "the publication went to the bus");
        assert_eq!(s.handle(Message::Unsubscribe { request: 3, subscription }).await, Flow::Continue);
        assert!(matches!(reply(&mut client).await, Message::Unsubscribed { request: 3 }));
        assert_eq!(realm.broker.subscription_id(MatchPolicy::Prefix, "news"), None, "the last subscriber left");
    }

    #[tokio::test]
    async fn dealer_messages_are_refused_as_no_such_procedure_and_cleanup_leaves_subscriptions() {
        let (mut s, mut client, _bus) = session().await;
        s.handle(hello()).await;
        reply(&mut client).await;
        let call = Message::Call { request: 5, options: Dict::new(), procedure: "com.example.add".into(), args: vec![], kwargs: Dict::new() };
        s.handle(call).await;
        let Message::Error { request_type, request: 5, error, .. } = reply(&mut client).await else { panic!("ERROR expected") };
        assert_eq!((request_type, error.as_str()), (telegraphy_wamp::code::CALL, err::NO_SUCH_PROCEDURE));
        s.handle(Message::Subscribe { request: 6, options: Dict::new(), topic: "t".into() }).await;
        reply(&mut client).await;
        let State::Established { realm, .. } = &s.state else { panic!("established") };
        let realm = realm.clone();
        assert!(realm.broker.subscription_id(MatchPolicy::Exact, "t").is_some());
        s.cleanup();
        assert_eq!(realm.broker.subscription_id(MatchPolicy::Exact, "t"), None, "cleanup releases the broker role's state");
        assert!(!s.is_established());
    }
    #[tokio::test]
    async fn dealer_messages_reach_the_dealer_role_and_cleanup_releases_its_registrations() {
        let (mut s, mut client, _bus) = session().await;
        s.handle(hello()).await;
        reply(&mut client).await;
        let register = Message::Register { request: 7, options: dict! {"match" => "prefix"}, procedure: "com.tools".into() };
        assert_eq!(s.handle(register).await, Flow::Continue);
        let Message::Registered { request: 7, registration } = reply(&mut client).await else { panic!("REGISTERED expected") };
        let State::Established { realm, .. } = &s.state else { panic!("established") };
        let realm = realm.clone();
        assert_eq!(realm.dealer.registration(MatchPolicy::Prefix, "com.tools"), Some((registration, 1)));
        // The session calls itself: the INVOCATION comes back to it.
        let call = Message::Call { request: 8, options: Dict::new(), procedure: "com.tools.hammer".into(), args: vec![], kwargs: Dict::new() };
        assert_eq!(s.handle(call).await, Flow::Continue);
        let Message::Invocation { registration: r, details, .. } = reply(&mut client).await else { panic!("INVOCATION expected") };
        assert_eq!((r, details.get("procedure")), (registration, Some(&Value::Str("com.tools.hammer".into()))));
        assert_eq!(realm.dealer.calls_in_flight(), 1);
        s.cleanup();
        assert_eq!(realm.dealer.registration(MatchPolicy::Prefix, "com.tools"), None, "cleanup releases the dealer role's registrations");
        assert_eq!(realm.dealer.calls_in_flight(), 0, "and its calls");
    }
}
