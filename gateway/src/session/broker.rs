//! The broker role of a session: SUBSCRIBE, UNSUBSCRIBE and PUBLISH, and
//! the subscriptions the session holds.

use std::collections::HashSet;

use telegraphy_bus::history::{resume, Resume};
use telegraphy_bus::{check_topic, now_us, Envelope, EventStore, Position, PublishOptions, Publisher, TopicError};
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use super::{flag_option, Session, State};
use crate::authz::Decision;
use crate::broker::{event_details, Identity};
use crate::node::random_id;
use crate::realm::Realm;
use crate::wire::encode_frame;

/// The SUBSCRIBE option that asks for the events missed since a
/// publication (a WAMP custom option).
const AFTER_PUBLICATION: &str = "_after_publication";

/// The EVENT detail that answers it.
const RECOVERED: &str = "_recovered";

/// The event history meta procedure.
pub(super) const GET_EVENTS: &str = "wamp.subscription.get_events";

/// The SUBSCRIBE option (and the EVENT detail answering it) that gives a
/// new subscriber the topic's current position, to resume from later even
/// if nothing is published meanwhile.
const POSITION: &str = "_position";

/// What a SUBSCRIBE asked to get before live events.
struct Replay {
    get_retained: bool,
    after: Option<Id>,
    position: bool,
}

/// An EVENT frame for subscription `sub` carrying `e`'s payload.
fn event_frame(s: telegraphy_wamp::Serialization, sub: Id, publication: Id, details: &Dict, args: &[Value], kwargs: &Dict) -> Option<bytes::Bytes> {
    encode_frame(s, &telegraphy_wamp::EventRef { subscription: sub, publication, details, args, kwargs })
}

use crate::members::rfc3339;

/// The arguments of a `get_events` call.
struct HistoryQuery {
    subscription: Id,
    limit: usize,
    reverse: bool,
    topic: Option<String>,
    /// Offsets (same epoch) an event must lie within: (lowest, highest), inclusive.
    offsets: (u64, u64),
    /// Which epoch the publication bounds came from.
    epoch: Option<u16>,
    /// Publish times (microseconds) an event must lie within, inclusive.
    times: (u64, u64),
}

impl HistoryQuery {
    /// Reads `[subscription, limit?]` and the spec's keywords.
    fn parse(args: &[Value], kwargs: &Dict, max: usize) -> Result<HistoryQuery, String> {
        let subscription = args.first().and_then(Value::as_u64).ok_or("the first argument must be the subscription id")?;
        let mut q = HistoryQuery { subscription, limit: max, reverse: false, topic: None, offsets: (0, u64::MAX), epoch: None, times: (0, u64::MAX) };
        let limit = kwargs.get("limit").or(args.get(1)).filter(|v| !matches!(v, Value::Null));
        if let Some(v) = limit {
            let n = v.as_u64().filter(|n| *n >= 1).ok_or("`limit` must be a positive integer")?;
            if n > max as u64 {
                return Err(format!("`limit` is {n}; at most {max} events per call (history.max_replay): page with after_publication"));
            }
            q.limit = n as usize;
        }
        for (key, value) in kwargs {
            if matches!(value, Value::Null) {
                continue;
            }
            match key.as_str() {
                "limit" => {}
                "reverse" => q.reverse = value.as_bool().ok_or("`reverse` must be a boolean")?,
                "topic" => q.topic = Some(value.as_str().ok_or("`topic` must be a URI")?.to_string()),
                "after_publication" | "from_publication" | "before_publication" | "until_publication" => {
                    let p = value
                        .as_u64()
                        .and_then(Position::from_publication)
                        .ok_or_else(|| format!("`{key}` must be a publication id from this topic's history"))?;
                    if q.epoch.is_some_and(|e| e != p.epoch) {
                        return Err("the publication ids given are from different histories".into());
                    }
                    q.epoch = Some(p.epoch);
                    match key.as_str() {
                        "after_publication" => q.offsets.0 = q.offsets.0.max(p.offset + 1),
                        "from_publication" => q.offsets.0 = q.offsets.0.max(p.offset),
                        "before_publication" => q.offsets.1 = q.offsets.1.min(p.offset.saturating_sub(1)),
                        _ => q.offsets.1 = q.offsets.1.min(p.offset),
                    }
                }
                "after_time" | "from_time" | "before_time" | "until_time" => {
                    let text = value.as_str().ok_or_else(|| format!("`{key}` must be an RFC 3339 timestamp string"))?;
                    let at = humantime::parse_rfc3339_weak(text).map_err(|e| format!("`{key}`: {e}; use RFC 3339, e.g. 2026-11-30T12:00:00.000Z"))?;
                    let us = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
                    match key.as_str() {
                        "after_time" => q.times.0 = q.times.0.max(us + 1),
                        "from_time" => q.times.0 = q.times.0.max(us),
                        "before_time" => q.times.1 = q.times.1.min(us.saturating_sub(1)),
                        _ => q.times.1 = q.times.1.min(us),
                    }
                }
                other => return Err(format!("unknown keyword `{other}` for {GET_EVENTS}")),
            }
        }
        Ok(q)
    }

    /// Whether the query pages forward from a lower bound.
    fn forward(&self) -> bool {
        !self.reverse && (self.offsets.0 > 0 || self.times.0 > 0)
    }

    /// Whether a kept event passes the query's bounds (`epoch`: the log's).
    fn admits(&self, e: &Envelope, epoch: Option<u16>) -> bool {
        if self.epoch.is_some() && self.epoch != epoch {
            // Publication bounds from an earlier history match nothing now.
            return false;
        }
        let offset = e.position.map_or(0, |p| p.offset);
        (self.offsets.0..=self.offsets.1).contains(&offset) && (self.times.0..=self.times.1).contains(&e.published_at_us)
    }
}

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
    pub(super) fn leave(self, node: &crate::node::Node, realm: &Realm, session: Id) {
        for id in self.subscriptions {
            node.unsubscribed(realm, session, id);
        }
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
        let (get_retained, want_position) = match (flag_option(&options, "get_retained"), flag_option(&options, POSITION)) {
            (Ok(r), Ok(p)) => (r, p),
            (Err(m), _) | (_, Err(m)) => return self.error(code::SUBSCRIBE, request, err::INVALID_ARGUMENT, &m),
        };
        let after = match options.get(AFTER_PUBLICATION) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().filter(|id| (1..=telegraphy_wamp::MAX_ID).contains(id)) {
                Some(id) => Some(id),
                None => {
                    return self.error(
                        code::SUBSCRIBE,
                        request,
                        err::INVALID_ARGUMENT,
                        &format!("option `{AFTER_PUBLICATION}` must be a publication id (an integer from 1 to 2^53) you received on this topic"),
                    )
                }
            },
        };
        let limit = self.node.config.limits.max_subscriptions_per_session;
        let State::Established { realm, broker: BrokerState { subscriptions }, rights, .. } = &mut self.state else { return };
        let realm = realm.clone();
        let broker = &realm.broker;
        if let Some(watched) = topic.strip_prefix(telegraphy_bus::PRESENCE_PREFIX) {
            // Presence of a topic: only for those who may read the topic itself.
            if policy != MatchPolicy::Exact || rights.permissions.subscribe(MatchPolicy::Exact, watched) != Decision::Full {
                self.node.metrics.denied_subscribe.inc();
                let message = format!("you may follow the presence of `{watched}` only if your role may subscribe to `{watched}` itself (exactly)");
                return self.error(code::SUBSCRIBE, request, err::NOT_AUTHORIZED, &message);
            }
        }
        let check = match rights.permissions.subscribe(policy, &topic) {
            // The router's events are checked per listener against what
            // they tell of (a subscription meta event names a topic).
            Decision::Full if telegraphy_bus::is_reserved_topic(&topic) => Some(rights.permissions.clone()),
            Decision::Full => None,
            Decision::Partial => Some(rights.permissions.clone()),
            Decision::Denied => {
                self.node.metrics.denied_subscribe.inc();
                return self.error(code::SUBSCRIBE, request, err::NOT_AUTHORIZED, &format!("your role may not subscribe to `{topic}` ({policy})"));
            }
        };
        if topic.starts_with(crate::members::META_PREFIX) {
            // The other nodes start publishing their sessions' joins and
            // leaves once they hear of a listener: tell them now.
            if let Some(cluster) = &self.node.cluster {
                cluster.changed();
            }
        }
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
        let want_position = want_position && after.is_none() && policy == MatchPolicy::Exact;
        let store = realm.store.clone().filter(|_| get_retained || after.is_some() || want_position);
        let subscribed = broker.subscribe(&self.handle, policy, &topic, check, store.is_some());
        subscriptions.insert(subscribed.id);
        if subscribed.new_for_session {
            self.node.subscribed(&realm, self.handle.id, &subscribed, policy, &topic);
            if let Some(watched) = topic.strip_prefix(telegraphy_bus::PRESENCE_PREFIX) {
                realm.presence.follow(&realm, watched);
            }
        }
        // Confirm once the bus routes the topic here, so that events
        // published after SUBSCRIBED arrive (bounded: a stuck broker must
        // not stall the session; the interest is re-applied on reconnect).
        if tokio::time::timeout(INTEREST_WAIT, self.node.bus.interest_applied(subscribed.ticket)).await.is_err() {
            tracing::warn!(topic = %topic, "the bus took longer than {INTEREST_WAIT:?} to route a new subscription; confirming anyway");
        }
        self.send(&Message::Subscribed { request, subscription: subscribed.id });
        if let Some(store) = store {
            self.replay(&realm, &*store, subscribed.id, policy, &topic, Replay { get_retained, after, position: want_position }).await;
        }
    }

    /// Sends what a SUBSCRIBE asked for before live events (the retained
    /// event, the events missed since `after`), then lets live events through.
    async fn replay(&mut self, realm: &Realm, store: &dyn EventStore, sub: Id, policy: MatchPolicy, topic: &str, ask: Replay) {
        let Replay { get_retained, after, position } = ask;
        let who = self.handle.identity.get().cloned().unwrap_or(Identity { authid: String::new(), authrole: String::new(), name: None });
        let me = self.handle.id;
        let may = |e: &Envelope| e.filter.admits(me, &who.authid, &who.authrole);
        let s = self.handle.serialization;
        let mut frames = Vec::new();
        let mut replayed = None;
        if get_retained && policy == MatchPolicy::Exact {
            match store.retained(&realm.name, topic).await {
                Ok(retained) => {
                    if let Some(e) = retained.iter().find(|e| may(e)) {
                        let mut details = event_details(policy, e);
                        details.insert("retained".into(), Value::Bool(true));
                        frames.extend(event_frame(s, sub, e.publication, &details, &e.args, &e.kwargs));
                    }
                }
                Err(e) => tracing::warn!(topic, error = %e, "could not read the retained event; subscribing without it"),
            }
        }
        if position {
            // The place to resume from even if nothing is published before
            // the subscriber goes away.
            match store.head(&realm.name, topic).await {
                Ok(Some(head)) => {
                    let details = Dict::from_iter([(POSITION.to_string(), Value::Bool(true))]);
                    frames.extend(event_frame(s, sub, head.publication(), &details, &[], &Dict::new()));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(topic, error = %e, "could not read the topic's position; subscribing without it"),
            }
        }
        if let Some(after) = after {
            let max = self.node.config.history.max_replay;
            let mut marker = after;
            let recovered = match Position::from_publication(after).filter(|_| policy == MatchPolicy::Exact) {
                None => false,
                Some(position) => match store.read(&realm.name, topic, Some(position), max + 1).await.map(|page| resume(page, position, max)) {
                    Ok(Resume::Recovered(events)) => {
                        replayed = Some(events.last().and_then(|e| e.position).unwrap_or(position));
                        marker = events.last().map_or(after, |e| e.publication);
                        self.node.metrics.history_replayed.inc_by(events.len() as u64);
                        for e in events.iter().filter(|e| may(e)) {
                            frames.extend(event_frame(s, sub, e.publication, &event_details(policy, e), &e.args, &e.kwargs));
                        }
                        true
                    }
                    Ok(Resume::Lost) => false,
                    Err(e) => {
                        tracing::warn!(topic, error = %e, "could not read the history for a resume; the client is told it did not recover");
                        false
                    }
                },
            };
            self.node.metrics.resumes[usize::from(recovered)].inc();
            // The extension's answer, after the replayed events and before
            // any live one: `recovered: false` means "reload your state".
            let details = Dict::from_iter([(RECOVERED.to_string(), Value::Bool(recovered))]);
            frames.extend(event_frame(s, sub, marker, &details, &[], &Dict::new()));
        }
        if !realm.broker.release(sub, me, &frames, replayed) {
            self.handle.outbox.overflow();
        }
    }

    /// `wamp.subscription.get_events` (event history, the only procedure
    /// this router answers yet); any other CALL: `no_such_procedure`.
    pub(super) async fn get_events(&mut self, request: Id, args: Vec<Value>, kwargs: Dict) {
        let State::Established { realm, broker: BrokerState { subscriptions }, rights, .. } = &self.state else { return };
        let Some(store) = realm.store.clone() else {
            let message = "event history is not kept on this bus (the gateway's bus keeps no events)";
            return self.error(code::CALL, request, err::NO_SUCH_PROCEDURE, message);
        };
        let realm = realm.clone();
        let max = self.node.config.history.max_replay;
        let query = match HistoryQuery::parse(&args, &kwargs, max) {
            Ok(q) => q,
            Err(message) => return self.error(code::CALL, request, err::INVALID_ARGUMENT, &message),
        };
        if !subscriptions.contains(&query.subscription) {
            return self.error(
                code::CALL,
                request,
                err::NO_SUCH_SUBSCRIPTION,
                &format!("this session holds no subscription {}; subscribe first, then ask for its events", query.subscription),
            );
        }
        let Some((policy, pattern)) = realm.broker.subscription(query.subscription) else { return };
        let topic = match (&query.topic, policy) {
            (None, MatchPolicy::Exact) => pattern.to_string(),
            (Some(t), _) if policy.matches(&pattern, t) && rights.permissions.may_receive(t) => t.clone(),
            (Some(t), _) => {
                return self.error(
                    code::CALL,
                    request,
                    err::INVALID_ARGUMENT,
                    &format!("`{t}` is not a topic of this subscription that you may read"),
                )
            }
            (None, _) => {
                return self.error(
                    code::CALL,
                    request,
                    err::INVALID_ARGUMENT,
                    &format!("subscription {} is a {policy} subscription: name one of its topics with the `topic` keyword", query.subscription),
                )
            }
        };
        let who = self.handle.identity.get().cloned().unwrap_or(Identity { authid: String::new(), authrole: String::new(), name: None });
        let me = (self.node.id, self.handle.id);
        let size = store.config().size;
        let page = match store.read(&realm.name, &topic, None, size).await {
            Ok(page) => page,
            Err(e) => return self.error(code::CALL, request, err::BUS_UNAVAILABLE, &format!("{e}; retry later")),
        };
        let mine = |e: &Envelope| e.publisher.as_ref().is_some_and(|p| p.exclude_me && (p.node, p.session) == me);
        let mut events: Vec<&Envelope> =
            page.events.iter().filter(|e| e.filter.admits(me.1, &who.authid, &who.authrole) && !mine(e) && query.admits(e, page.epoch)).collect();
        // Paging forward from a lower bound takes the first `limit` events
        // after it; otherwise the newest `limit` (Crossbar.io's
        // `get_events(sub, limit)`: the latest events).
        if query.forward() {
            events.truncate(query.limit);
        } else {
            events.drain(..events.len().saturating_sub(query.limit));
        }
        if query.reverse {
            events.reverse();
        }
        let list = events
            .into_iter()
            .map(|e| {
                Value::Dict(Dict::from_iter([
                    ("timestamp".to_string(), Value::Str(rfc3339(e.published_at_us))),
                    ("subscription".to_string(), Value::UInt(query.subscription)),
                    ("publication".to_string(), Value::UInt(e.publication)),
                    ("details".to_string(), Value::Dict(event_details(policy, e))),
                    ("args".to_string(), Value::List(e.args.clone())),
                    ("kwargs".to_string(), Value::Dict(e.kwargs.clone())),
                ]))
            })
            .collect();
        self.send(&Message::Result { request, details: Dict::new(), args: vec![Value::List(list)], kwargs: Dict::new() });
    }

    fn unsubscribe(&mut self, request: Id, subscription: Id) {
        let State::Established { realm, broker: BrokerState { subscriptions }, .. } = &mut self.state else { return };
        if subscriptions.remove(&subscription) {
            self.node.unsubscribed(realm, self.handle.id, subscription);
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
        let identity = self.handle.identity.get().cloned().unwrap_or(Identity { authid: String::new(), authrole: String::new(), name: None });
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
