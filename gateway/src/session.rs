//! The WAMP session state machine: what the router does with each message
//! a client sends. It sees decoded messages and queues replies on the
//! session's outbox; the socket belongs to [`crate::connection`].

use std::collections::HashSet;
use std::sync::Arc;

use telegraphy_bus::{Envelope, Publisher};
use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{code, dict, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use crate::hub::{encode_frame, Hub, Identity, SessionHandle};
use crate::metrics::Violation;
use crate::node::{now_us, random_id, Node};
use crate::options;

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
    Established { realm: String, hub: Arc<Hub>, subscriptions: HashSet<Id> },
    Closed,
}

/// One WAMP session.
pub struct Session {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    state: State,
}

impl Session {
    /// A session waiting for HELLO.
    pub fn new(node: Arc<Node>, handle: Arc<SessionHandle>) -> Session {
        Session { node, handle, state: State::AwaitingHello }
    }

    /// Whether WELCOME was sent.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// Decodes and handles one WebSocket payload.
    pub async fn handle_payload(&mut self, payload: &[u8]) -> Flow {
        match self.handle.serialization.decode(payload) {
            Ok(msg) => self.handle(msg).await,
            Err(telegraphy_wamp::DecodeError::Syntax(e)) => {
                self.violation(Violation::Malformed, &format!("could not decode the message: {e}"))
            }
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
            (State::AwaitingHello, other) => self.violation(
                Violation::WrongState,
                &format!("{} before the session was established; send HELLO first", other.name()),
            ),
            (State::Established { .. }, Message::Hello { .. }) => {
                self.violation(Violation::WrongState, "HELLO on an established session")
            }
            (State::Established { .. }, Message::Goodbye { .. }) => {
                self.send(&Message::Goodbye { details: Dict::new(), reason: err::GOODBYE_AND_OUT.into() });
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
            (State::Established { .. }, other) => self.violation(
                Violation::WrongState,
                &format!("{} is not a message a client sends to a broker here", other.name()),
            ),
        }
    }

    fn hello(&mut self, realm: String, details: Dict) -> Flow {
        let Some(hub) = self.node.hubs.get(&realm).cloned() else {
            self.send(&Message::Abort {
                details: dict! {"message" => format!("realm `{realm}` does not exist on this router")},
                reason: err::NO_SUCH_REALM.into(),
            });
            self.state = State::Closed;
            return Flow::Close(close::NORMAL);
        };
        if !matches!(details.get("roles"), Some(Value::Dict(r)) if !r.is_empty()) {
            return self.violation(Violation::InvalidMessage, "HELLO.Details.roles must be a non-empty dictionary");
        }
        let identity = Identity { authid: format!("anonymous-{}", self.handle.id), authrole: "anonymous".into() };
        let features = |names: &[&str]| {
            Value::Dict(names.iter().map(|n| (n.to_string(), Value::Bool(true))).collect::<Dict>())
        };
        let broker = features(&[
            "pattern_based_subscription",
            "publisher_exclusion",
            "publisher_identification",
            "subscriber_blackwhite_listing",
        ]);
        let mut roles = Dict::new();
        roles.insert("broker".into(), Value::Dict(dict! {}));
        if let Some(Value::Dict(b)) = roles.get_mut("broker") {
            b.insert("features".into(), broker);
        }
        let mut welcome = dict! {
            "realm" => realm.clone(),
            "authid" => identity.authid.clone(),
            "authrole" => identity.authrole.clone(),
            "authmethod" => "anonymous",
            "authprovider" => "static",
            "x_telegraphy_node" => format!("{:016x}", self.node.id),
        };
        welcome.insert("roles".into(), Value::Dict(roles));
        let _ = self.handle.identity.set(identity);
        self.send(&Message::Welcome { session: self.handle.id, details: welcome });
        self.state = State::Established { realm, hub, subscriptions: HashSet::new() };
        self.node.metrics.sessions.inc();
        self.node.metrics.sessions_total.inc();
        tracing::debug!(session = self.handle.id, serializer = self.handle.serialization.label(), "session established");
        Flow::Continue
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
            return self.error(
                code::SUBSCRIBE,
                request,
                err::INVALID_URI,
                &format!("`{topic}` is not a valid topic for a {policy} subscription"),
            );
        }
        let limit = self.node.config.limits.max_subscriptions_per_session;
        let State::Established { hub, subscriptions, .. } = &mut self.state else { return };
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
        let subscribed = hub.subscribe(&self.handle, policy, &topic);
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
            self.error(
                code::UNSUBSCRIBE,
                request,
                err::NO_SUCH_SUBSCRIPTION,
                &format!("this session holds no subscription {subscription}"),
            );
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
        match self.node.bus.publish(envelope).await {
            Ok(()) => {
                self.node.metrics.published_wamp.inc();
                if opts.acknowledge {
                    self.send(&Message::Published { request, publication });
                }
            }
            Err(e @ telegraphy_bus::PublishError::Unavailable(_)) => reject(self, err::BUS_UNAVAILABLE, &e.to_string()),
            Err(e @ telegraphy_bus::PublishError::Rejected(_)) => reject(self, err::INVALID_ARGUMENT, &e.to_string()),
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
            self.send(&Message::Abort { details: dict! {"message" => message}, reason: reason.into() });
        }
        self.cleanup();
    }

    /// Says GOODBYE because the node is draining.
    pub fn shutdown(&mut self) -> Flow {
        if self.is_established() {
            self.send(&Message::Goodbye {
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

    fn send(&self, msg: &Message) {
        if let Some(frame) = encode_frame(self.handle.serialization, msg) {
            // A full queue closes the session as a slow consumer; nothing else to do here.
            let _ = self.handle.outbox.push(frame);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cleanup();
    }
}
