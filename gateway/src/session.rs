//! The WAMP session state machine: what the router does with each message
//! a client sends. It sees decoded messages and queues replies on the
//! session's outbox; the socket belongs to [`crate::connection`].

use std::collections::HashSet;
use std::sync::Arc;

use telegraphy_bus::{Envelope, Publisher};
use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{code, dict, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use crate::auth::{AuthFailure, Authenticated, CraChallenge};
use crate::authz::{Decision, Permissions};
use crate::hub::{encode_frame, Hub, Identity, SessionHandle};
use crate::metrics::Violation;
use crate::node::{now_us, random_id, Node};
use crate::options;

/// A token bucket: `rate` per second, `burst` at once.
fn rate_limiter(rate: f64, burst: u32) -> Option<governor::DefaultDirectRateLimiter> {
    let period = std::time::Duration::from_secs_f64(1.0 / rate.max(1e-6));
    // A rate too high to express (a zero period) means no limit.
    let quota = governor::Quota::with_period(period)?.allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN));
    Some(governor::RateLimiter::direct(quota))
}

/// Longest wait for the bus to route a new subscription before SUBSCRIBED.
const INTEREST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
        realm: String,
        hub: Arc<Hub>,
        method: Challenge,
    },
    Established {
        realm: String,
        hub: Arc<Hub>,
        subscriptions: HashSet<Id>,
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
}

/// One WAMP session.
pub struct Session {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    state: State,
    /// When the token behind the session expires (the session is closed then).
    expires_at: Option<tokio::time::Instant>,
}

impl Session {
    /// A session waiting for HELLO.
    pub fn new(node: Arc<Node>, handle: Arc<SessionHandle>) -> Session {
        Session { node, handle, state: State::AwaitingHello, expires_at: None }
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
    pub async fn handle(&mut self, msg: Message) -> Flow {
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
            (State::Established { .. }, Message::Subscribe { request, options, topic }) => {
                self.subscribe(request, options, topic).await;
                Flow::Continue
            }
            (State::Established { .. }, Message::Unsubscribe { request, subscription }) => {
                self.unsubscribe(request, subscription);
                Flow::Continue
            }
            (State::Established { .. }, Message::Publish { request, options, topic, args, kwargs }) => {
                self.publish(request, options, topic, args, kwargs).await;
                Flow::Continue
            }
            (State::Established { .. }, Message::DealerRequest { code, request }) => {
                let error = if code == code::CALL { err::NO_SUCH_PROCEDURE } else { err::FEATURE_NOT_SUPPORTED };
                self.error(code, request, error, "this router implements the broker role only (publish/subscribe)");
                Flow::Continue
            }
            (State::Established { .. }, other) => {
                self.violation(Violation::WrongState, &format!("{} is not a message a client sends to a broker here", other.name()))
            }
        }
    }

    fn hello(&mut self, realm: String, details: Dict) -> Flow {
        let Some(hub) = self.node.hubs.get(&realm).cloned() else {
            self.send_last(&Message::Abort {
                details: dict! {"message" => format!("realm `{realm}` does not exist on this router")},
                reason: err::NO_SUCH_REALM.into(),
            });
            self.state = State::Closed;
            return Flow::Close(close::NORMAL);
        };
        if !matches!(details.get("roles"), Some(Value::Dict(r)) if !r.is_empty()) {
            return self.violation(Violation::InvalidMessage, "HELLO.Details.roles must be a non-empty dictionary");
        }
        let methods: Vec<&str> = match details.get("authmethods") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let auth = &self.node.auth;
        if methods.contains(&"ticket") && auth.accepts_tickets() {
            self.send(&Message::Challenge { authmethod: "ticket".into(), extra: Dict::new() });
            self.state = State::Challenged { realm, hub, method: Challenge::Ticket };
            return Flow::Continue;
        }
        if methods.contains(&"wampcra") {
            let authid = details.get("authid").and_then(Value::as_str).unwrap_or_default();
            if let Some(challenge) = auth.cra_challenge(authid, self.handle.id) {
                self.send(&Message::Challenge { authmethod: "wampcra".into(), extra: dict! {"challenge" => challenge.challenge.clone()} });
                self.state = State::Challenged { realm, hub, method: Challenge::Cra(challenge) };
                return Flow::Continue;
            }
        }
        if methods.is_empty() || methods.contains(&"anonymous") {
            if let Some(result) = auth.anonymous(self.handle.id) {
                return match result {
                    Ok(who) => self.welcome(realm, hub, who),
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
        let State::Challenged { realm, hub, method } = std::mem::replace(&mut self.state, State::Closed) else {
            return Flow::Close(close::PROTOCOL_ERROR);
        };
        let result = match &method {
            Challenge::Ticket => self.node.auth.verify_ticket(&signature, &realm),
            Challenge::Cra(c) => self.node.auth.verify_cra(c, &signature),
        };
        match result {
            Ok(who) => self.welcome(realm, hub, who),
            Err(f) => self.refuse(f),
        }
    }

    /// ABORTs a session whose credentials were refused.
    fn refuse(&mut self, f: AuthFailure) -> Flow {
        self.node.metrics.auth_failure(f.reason);
        tracing::info!(session = self.handle.id, reason = f.reason, "authentication refused: {}", f.message);
        self.send_last(&Message::Abort { details: dict! {"message" => f.message}, reason: f.uri.into() });
        self.state = State::Closed;
        Flow::Close(close::AUTH_FAILED)
    }

    fn welcome(&mut self, realm: String, hub: Arc<Hub>, who: Authenticated) -> Flow {
        let features = |names: &[&str]| Value::Dict(names.iter().map(|n| (n.to_string(), Value::Bool(true))).collect::<Dict>());
        let broker = features(&["pattern_based_subscription", "publisher_exclusion", "publisher_identification", "subscriber_blackwhite_listing"]);
        let mut roles = Dict::new();
        roles.insert("broker".into(), Value::Dict(dict! {"features" => broker}));
        let mut welcome = dict! {
            "realm" => realm.clone(),
            "authid" => who.authid.clone(),
            "authrole" => who.authrole.clone(),
            "authmethod" => who.authmethod,
            "authprovider" => who.authprovider,
            "x_telegraphy_node" => format!("{:016x}", self.node.id),
        };
        welcome.insert("roles".into(), Value::Dict(roles));
        if let Some(exp) = who.expires_at {
            let secs = exp.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            welcome.insert("authextra".into(), Value::Dict(dict! {"expires_at" => secs}));
            if self.node.config.auth.expire_sessions {
                // At `exp` exactly (no leeway); a time too far to represent never comes.
                let left = exp.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                self.expires_at = tokio::time::Instant::now().checked_add(left);
            }
        }
        let _ = self.handle.identity.set(Identity { authid: who.authid, authrole: who.authrole });
        let limiter = (who.role.publish_rate > 0.0).then(|| rate_limiter(who.role.publish_rate, who.role.publish_burst)).flatten();
        self.send(&Message::Welcome { session: self.handle.id, details: welcome });
        self.state = State::Established { realm, hub, subscriptions: HashSet::new(), rights: Rights { permissions: who.permissions, limiter } };
        self.node.metrics.sessions.inc();
        self.node.metrics.sessions_total.inc();
        tracing::debug!(session = self.handle.id, serializer = self.handle.serialization.label(), "session established");
        Flow::Continue
    }

    /// When the session's credentials expire (it is then closed).
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    /// Says GOODBYE because the token expired.
    pub fn expire(&mut self) -> Flow {
        self.send_last(&Message::Goodbye {
            details: dict! {"message" => "the session's token expired; reconnect with a fresh token"},
            reason: err::TOKEN_EXPIRED.into(),
        });
        self.cleanup();
        Flow::Close(close::TOKEN_EXPIRED)
    }

    async fn subscribe(&mut self, request: Id, options: Dict, topic: String) {
        let policy = match options.get("match") {
            None | Some(Value::Null) => MatchPolicy::Exact,
            Some(Value::Str(s)) => match MatchPolicy::parse(s) {
                Some(p) => p,
                None => {
                    return self.error(
                        code::SUBSCRIBE,
                        request,
                        err::INVALID_ARGUMENT,
                        &format!("unknown match policy `{s}`; use exact, prefix or wildcard"),
                    )
                }
            },
            Some(other) => {
                return self.error(
                    code::SUBSCRIBE,
                    request,
                    err::INVALID_ARGUMENT,
                    &format!("option `match` must be a string, got {}", other.type_name()),
                )
            }
        };
        if !uri::is_valid(&topic, self.node.uri_rules, UriKind::Pattern(policy)) {
            return self.error(code::SUBSCRIBE, request, err::INVALID_URI, &format!("`{topic}` is not a valid topic for a {policy} subscription"));
        }
        let limit = self.node.config.limits.max_subscriptions_per_session;
        let State::Established { hub, subscriptions, rights, .. } = &mut self.state else { return };
        let check = match rights.permissions.subscribe(policy, &topic) {
            Decision::Full => None,
            Decision::Partial => Some(rights.permissions.clone()),
            Decision::Denied => {
                self.node.metrics.denied_subscribe.inc();
                return self.error(code::SUBSCRIBE, request, err::NOT_AUTHORIZED, &format!("your role may not subscribe to `{topic}` ({policy})"));
            }
        };
        if let Some(id) = hub.subscription_id(policy, &topic).filter(|id| subscriptions.contains(id)) {
            // Already held: the spec asks for the existing id.
            return self.send(&Message::Subscribed { request, subscription: id });
        }
        if subscriptions.len() >= limit {
            return self.error(
                code::SUBSCRIBE,
                request,
                err::LIMIT_EXCEEDED,
                &format!("this session already holds {limit} subscriptions, the most allowed"),
            );
        }
        let subscribed = hub.subscribe(&self.handle, policy, &topic, check);
        subscriptions.insert(subscribed.id);
        // Confirm once the bus routes the topic here, so that events
        // published after SUBSCRIBED arrive (bounded: a stuck broker must
        // not stall the session; the interest is re-applied on reconnect).
        if tokio::time::timeout(INTEREST_WAIT, self.node.bus.interest_applied(subscribed.ticket)).await.is_err() {
            tracing::warn!(topic = %topic, "the bus took longer than {INTEREST_WAIT:?} to route a new subscription; confirming anyway");
        }
        self.send(&Message::Subscribed { request, subscription: subscribed.id });
    }

    fn unsubscribe(&mut self, request: Id, subscription: Id) {
        let State::Established { hub, subscriptions, .. } = &mut self.state else { return };
        if subscriptions.remove(&subscription) {
            hub.unsubscribe(self.handle.id, subscription);
            self.send(&Message::Unsubscribed { request });
        } else {
            self.error(code::UNSUBSCRIBE, request, err::NO_SUCH_SUBSCRIPTION, &format!("this session holds no subscription {subscription}"));
        }
    }

    async fn publish(&mut self, request: Id, options: Dict, topic: String, args: Vec<Value>, kwargs: Dict) {
        let opts = match options::parse(&options) {
            Ok(o) => o,
            Err(message) => {
                // Without a readable `acknowledge` the client gets the error
                // anyway: silently dropping a malformed publish helps nobody.
                return self.error(code::PUBLISH, request, err::INVALID_ARGUMENT, &message);
            }
        };
        let reject = |this: &mut Self, error: &str, message: &str| {
            if opts.acknowledge {
                this.error(code::PUBLISH, request, error, message);
            }
        };
        if !uri::is_valid(&topic, self.node.uri_rules, UriKind::Concrete) {
            return reject(self, err::INVALID_URI, &format!("`{topic}` is not a valid topic URI"));
        }
        if topic.starts_with("wamp.") {
            return reject(self, err::NOT_AUTHORIZED, "topics under `wamp.` are reserved for the router");
        }
        let State::Established { rights, .. } = &self.state else { return };
        if !rights.permissions.may_publish(&topic) {
            self.node.metrics.denied_publish.inc();
            return reject(self, err::NOT_AUTHORIZED, &format!("your role may not publish to `{topic}`"));
        }
        if !opts.filter.is_open() && !rights.permissions.publish_options {
            self.node.metrics.denied_publish.inc();
            return reject(self, err::NOT_AUTHORIZED, "your role may not use the exclude/eligible publish options");
        }
        if rights.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            self.node.metrics.rate_limited.inc();
            return reject(self, err::RATE_LIMITED, "you publish faster than your role allows (roles.NAME.publish_rate); slow down");
        }
        let identity = self.handle.identity.get().cloned().unwrap_or(Identity { authid: String::new(), authrole: String::new() });
        let State::Established { realm, .. } = &self.state else { return };
        let realm = realm.clone();
        let publication = random_id();
        let envelope = Envelope {
            realm,
            publication,
            topic,
            args,
            kwargs,
            filter: opts.filter.clone(),
            publisher: Some(Publisher {
                node: self.node.id,
                session: self.handle.id,
                authid: identity.authid,
                authrole: identity.authrole,
                exclude_me: opts.exclude_me,
                disclose_me: opts.disclose_me,
            }),
            published_at_us: now_us(),
        };
        match self.node.bus.publish(envelope, telegraphy_bus::Delivery::Accepted).await {
            Ok(()) => {
                self.node.metrics.published_wamp.inc();
                if opts.acknowledge {
                    self.send(&Message::Published { request, publication });
                }
            }
            Err(e @ telegraphy_bus::PublishError::Unavailable(_)) => reject(self, err::BUS_UNAVAILABLE, &e.to_string()),
            Err(e @ (telegraphy_bus::PublishError::Rejected(_) | telegraphy_bus::PublishError::NoSubscriber(_))) => {
                reject(self, err::INVALID_ARGUMENT, &e.to_string())
            }
        }
    }

    /// Sends ABORT for a protocol violation and asks to close.
    pub fn violation(&mut self, kind: Violation, message: &str) -> Flow {
        self.node.metrics.violation(kind);
        tracing::debug!(session = self.handle.id, kind = ?kind, message, "protocol violation");
        self.abort(err::PROTOCOL_VIOLATION, message);
        Flow::Close(close::PROTOCOL_ERROR)
    }

    /// Counts a protocol violation found outside the session (socket level).
    pub fn count_violation(&self, kind: Violation) {
        self.node.metrics.violation(kind);
    }

    /// Sends ABORT with `reason` and ends the session (the caller closes).
    pub fn abort(&mut self, reason: &str, message: &str) {
        if !matches!(self.state, State::Closed) {
            self.send_last(&Message::Abort { details: dict! {"message" => message}, reason: reason.into() });
        }
        self.cleanup();
    }

    /// Says GOODBYE because the node is draining.
    pub fn shutdown(&mut self) -> Flow {
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
    pub fn cleanup(&mut self) {
        if let State::Established { hub, subscriptions, .. } = std::mem::replace(&mut self.state, State::Closed) {
            hub.remove_session(self.handle.id, subscriptions);
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
    pub fn send_ping(&self) {
        let _ = self.handle.outbox.push(&crate::wire::ping_frame());
    }

    fn send(&self, msg: &Message) {
        if let Some(frame) = encode_frame(self.handle.serialization, msg) {
            // A full queue closes the session as a slow consumer; nothing else to do here.
            let _ = self.handle.outbox.push(&frame);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cleanup();
    }
}
