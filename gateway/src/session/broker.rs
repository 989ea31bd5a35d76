//! The broker role of a session: SUBSCRIBE, UNSUBSCRIBE and PUBLISH, and
//! the subscriptions the session holds.

use std::collections::HashSet;

use telegraphy_bus::{check_topic, now_us, Envelope, PublishOptions, Publisher, TopicError};
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use super::{Session, State};
use crate::authz::Decision;
use crate::broker::{Broker, Identity};
use crate::node::random_id;

/// Longest wait for the bus to route a new subscription before SUBSCRIBED.
const INTEREST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the broker role keeps for one established session.
#[derive(Default)]
pub(super) struct BrokerState {
    /// The subscriptions the session holds.
    subscriptions: HashSet<Id>,
}

impl BrokerState {
    /// Whether the session holds subscription `id`.
    #[cfg(test)]
    pub(super) fn holds(&self, id: Id) -> bool {
        self.subscriptions.contains(&id)
    }

    /// Leaves every subscription (the session is ending).
    pub(super) fn leave(self, broker: &Broker, session: Id) {
        broker.remove_session(session, self.subscriptions);
    }
}

impl Session {
    /// Handles a message for the broker role.
    pub(super) async fn broker_message(&mut self, msg: Message) {
        match msg {
            Message::Subscribe { request, options, topic } => self.subscribe(request, options, topic).await,
            Message::Unsubscribe { request, subscription } => self.unsubscribe(request, subscription),
            Message::Publish { request, options, topic, args, kwargs } => self.publish(request, options, topic, args, kwargs).await,
            other => debug_assert!(false, "{} is not a broker message", other.name()),
        }
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
        let State::Established { realm, broker: BrokerState { subscriptions }, rights } = &mut self.state else { return };
        let broker = &realm.broker;
        let check = match rights.permissions.subscribe(policy, &topic) {
            Decision::Full => None,
            Decision::Partial => Some(rights.permissions.clone()),
            Decision::Denied => {
                self.node.metrics.denied_subscribe.inc();
                return self.error(code::SUBSCRIBE, request, err::NOT_AUTHORIZED, &format!("your role may not subscribe to `{topic}` ({policy})"));
            }
        };
        if let Some(id) = broker.subscription_id(policy, &topic).filter(|id| subscriptions.contains(id)) {
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
        let subscribed = broker.subscribe(&self.handle, policy, &topic, check);
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
        let State::Established { realm, broker: BrokerState { subscriptions }, .. } = &mut self.state else { return };
        if subscriptions.remove(&subscription) {
            realm.broker.unsubscribe(self.handle.id, subscription);
            self.send(&Message::Unsubscribed { request });
        } else {
            self.error(code::UNSUBSCRIBE, request, err::NO_SUCH_SUBSCRIPTION, &format!("this session holds no subscription {subscription}"));
        }
    }

    async fn publish(&mut self, request: Id, options: Dict, topic: String, args: Vec<Value>, kwargs: Dict) {
        let opts = match PublishOptions::from_wamp_options(&options) {
            Ok(o) => o,
            Err(e) => {
                // Without a readable `acknowledge` the client gets the error
                // anyway: silently dropping a malformed publish helps nobody.
                return self.error(code::PUBLISH, request, err::INVALID_ARGUMENT, &e.to_string());
            }
        };
        let reject = |this: &mut Self, error: &str, message: &str| {
            if opts.acknowledge {
                this.error(code::PUBLISH, request, error, message);
            }
        };
        if let Err(e) = check_topic(&topic, self.node.uri_rules) {
            let error = match e {
                TopicError::Invalid { .. } => err::INVALID_URI,
                TopicError::Reserved => err::NOT_AUTHORIZED,
            };
            return reject(self, error, &e.to_string());
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
        let realm = realm.name.clone();
        let envelope = Envelope {
            realm,
            publication: random_id(),
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
            retain: opts.retain,
            position: None,
        };
        match self.node.bus.publish(envelope, telegraphy_bus::Delivery::Accepted).await {
            Ok(publication) => {
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
}
