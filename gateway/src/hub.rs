//! The subscription registry of one realm on this node, and event fan-out.
//!
//! Subscriptions are shared per (match policy, URI): every session that
//! subscribes to the same pair gets the same subscription id, so an event is
//! encoded once per (subscription, serializer) and the very same bytes are
//! queued to every subscriber.
//!
//! Subscription ids are a keyed hash of (match policy, URI) under a random
//! per-node key: the same pair always gets the same id on this node, whether
//! or not another session holds it, so an id tells a session nothing about
//! other sessions' subscriptions (sequential ids did).
//!
//! Lookup cost per event: one hash lookup for exact subscriptions, one per
//! distinct prefix length for prefix subscriptions, and a component-wise
//! check of the wildcard patterns that have as many components as the topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use bytes::Bytes;
use telegraphy_bus::{Bus, Envelope, Ticket};
use telegraphy_wamp::{Dict, EventRef, Id, MatchPolicy, Serialization, Value};

use crate::authz::Permissions;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::wire::When;

/// Subscriptions with at most this many local subscribers have their events
/// written straight from the fan-out loop (`docs/benchmarks.md`: for large
/// fan-outs, writes spread over per-session tasks win on a small machine).
const DIRECT_WRITE_MAX: usize = 128;

/// What the hub knows of a session: enough to route and filter events.
pub struct SessionHandle {
    /// The WAMP session id.
    pub id: Id,
    /// The session's serializer, to pick the right encoded bytes.
    pub serialization: Serialization,
    /// Who the session is; set once, at WELCOME.
    pub identity: OnceLock<Identity>,
    /// Where its frames go.
    pub outbox: Outbox,
}

/// A session's authenticated identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `authid`.
    pub authid: String,
    /// `authrole`.
    pub authrole: String,
}

struct Subscription {
    /// Resolves (through the bus) once the broker routes this topic here.
    ticket: Ticket,
    policy: MatchPolicy,
    uri: Arc<str>,
    subscribers: HashMap<Id, Subscriber>,
}

struct Subscriber {
    session: Arc<SessionHandle>,
    /// Set when the session may see only some topics this subscription
    /// matches: each event is checked against it before it is queued.
    check: Option<Arc<Permissions>>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<(MatchPolicy, Arc<str>), Id>,
    subs: HashMap<Id, Subscription>,
    exact: HashMap<Arc<str>, Id>,
    prefix: HashMap<Arc<str>, Id>,
    /// Distinct prefix lengths in use (length → how many prefixes).
    prefix_lens: BTreeMap<usize, usize>,
    /// Wildcard subscriptions by component count.
    wildcard: HashMap<usize, Vec<Id>>,
}

/// Result of [`Hub::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The (shared) subscription id.
    pub id: Id,
    /// False when the session already held this subscription.
    pub new_for_session: bool,
    /// Await `Bus::interest_applied(ticket)` before confirming: then events
    /// published from now on reach the session.
    pub ticket: Ticket,
}

/// The subscriptions of one realm.
pub struct Hub {
    /// The realm this hub serves (bus interests are per realm).
    realm: String,
    inner: RwLock<Inner>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    /// This node's id, to recognise its own sessions in `exclude_me`.
    node_id: u64,
    /// Key of the subscription-id hash (random per hub).
    id_key: [u8; 32],
}

impl Hub {
    /// An empty hub.
    pub fn new(realm: &str, bus: Arc<dyn Bus>, metrics: Arc<Metrics>, node_id: u64) -> Hub {
        Hub { realm: realm.to_string(), inner: RwLock::new(Inner::default()), bus, metrics, node_id, id_key: crate::node::secure_random_bytes() }
    }

    /// The id for (policy, uri): a keyed hash, moved on past ids taken by
    /// other pairs (a collision in 2^53 ids).
    fn id_for(&self, inner: &Inner, policy: MatchPolicy, uri: &str) -> Id {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.id_key).expect("HMAC takes any key length");
        mac.update(policy.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(uri.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut id = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % telegraphy_wamp::MAX_ID + 1;
        while inner.subs.contains_key(&id) {
            id = id % telegraphy_wamp::MAX_ID + 1;
        }
        id
    }

    /// Adds `session` to the subscription for (policy, uri), creating it if needed.
    pub fn subscribe(&self, session: &Arc<SessionHandle>, policy: MatchPolicy, uri: &str, check: Option<Arc<Permissions>>) -> Subscribed {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let key: Arc<str> = Arc::from(uri);
        let id = match inner.by_key.get(&(policy, key.clone())) {
            Some(id) => *id,
            None => {
                let id = self.id_for(&inner, policy, uri);
                let ticket = self.bus.add_interest(&self.realm, policy, uri);
                inner.by_key.insert((policy, key.clone()), id);
                inner.subs.insert(id, Subscription { ticket, policy, uri: key.clone(), subscribers: HashMap::new() });
                match policy {
                    MatchPolicy::Exact => {
                        inner.exact.insert(key.clone(), id);
                    }
                    MatchPolicy::Prefix => {
                        inner.prefix.insert(key.clone(), id);
                        *inner.prefix_lens.entry(key.len()).or_default() += 1;
                    }
                    MatchPolicy::Wildcard => {
                        inner.wildcard.entry(key.split('.').count()).or_default().push(id);
                    }
                }
                self.metrics.topics.inc();
                id
            }
        };
        let sub = inner.subs.get_mut(&id).expect("indexed subscription exists");
        let new_for_session = sub.subscribers.insert(session.id, Subscriber { session: session.clone(), check }).is_none();
        if new_for_session {
            self.metrics.subscriptions.inc();
        }
        Subscribed { id, new_for_session, ticket: sub.ticket }
    }

    /// The id of the subscription for (policy, uri), if it exists.
    pub fn subscription_id(&self, policy: MatchPolicy, uri: &str) -> Option<Id> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.by_key.get(&(policy, Arc::from(uri))).copied()
    }

    /// Removes `session` from subscription `id`; false if it was not in it.
    pub fn unsubscribe(&self, session: Id, id: Id) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.unsubscribe_locked(&mut inner, session, id)
    }

    /// Removes a closing session from all of its subscriptions.
    pub fn remove_session(&self, session: Id, subscriptions: impl IntoIterator<Item = Id>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for id in subscriptions {
            self.unsubscribe_locked(&mut inner, session, id);
        }
    }

    fn unsubscribe_locked(&self, inner: &mut Inner, session: Id, id: Id) -> bool {
        let Some(sub) = inner.subs.get_mut(&id) else { return false };
        if sub.subscribers.remove(&session).is_none() {
            return false;
        }
        self.metrics.subscriptions.dec();
        if sub.subscribers.is_empty() {
            let sub = inner.subs.remove(&id).expect("present");
            inner.by_key.remove(&(sub.policy, sub.uri.clone()));
            match sub.policy {
                MatchPolicy::Exact => {
                    inner.exact.remove(&sub.uri);
                }
                MatchPolicy::Prefix => {
                    inner.prefix.remove(&sub.uri);
                    if let Some(n) = inner.prefix_lens.get_mut(&sub.uri.len()) {
                        *n -= 1;
                        if *n == 0 {
                            inner.prefix_lens.remove(&sub.uri.len());
                        }
                    }
                }
                MatchPolicy::Wildcard => {
                    let count = sub.uri.split('.').count();
                    if let Some(ids) = inner.wildcard.get_mut(&count) {
                        ids.retain(|x| *x != id);
                        if ids.is_empty() {
                            inner.wildcard.remove(&count);
                        }
                    }
                }
            }
            self.metrics.topics.dec();
            self.bus.remove_interest(&self.realm, sub.policy, &sub.uri);
        }
        true
    }

    /// Sends `event` to every local session it is for. Returns how many
    /// EVENT messages were sent.
    ///
    /// A subscription with few local subscribers has each frame written here
    /// and now (one system call each, no task woken). A larger one queues
    /// the frame and wakes each session's task: the writes then run on every
    /// core, and a session that falls behind gets several events per write.
    pub fn dispatch(&self, event: &Envelope) -> usize {
        let started = Instant::now();
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let topic = event.topic.as_str();
        let mut matched: Vec<Id> = Vec::new();
        if let Some(id) = inner.exact.get(topic) {
            matched.push(*id);
        }
        for &len in inner.prefix_lens.keys() {
            if len > topic.len() {
                break;
            }
            if topic.is_char_boundary(len) {
                if let Some(id) = inner.prefix.get(&topic[..len]) {
                    matched.push(*id);
                }
            }
        }
        if !inner.wildcard.is_empty() {
            if let Some(ids) = inner.wildcard.get(&topic.split('.').count()) {
                for id in ids {
                    if MatchPolicy::Wildcard.matches(&inner.subs[id].uri, topic) {
                        matched.push(*id);
                    }
                }
            }
        }
        let mut delivered = 0;
        let publisher = event.publisher.as_ref();
        let excluded_self = publisher.filter(|p| p.exclude_me && p.node == self.node_id).map(|p| p.session);
        let open = event.filter.is_open();
        for id in matched {
            let sub = &inner.subs[&id];
            let mut details = Dict::new();
            if sub.policy != MatchPolicy::Exact {
                details.insert("topic".into(), Value::Str(event.topic.clone()));
            }
            if let Some(p) = publisher.filter(|p| p.disclose_me) {
                details.insert("publisher".into(), Value::UInt(p.session));
                details.insert("publisher_authid".into(), Value::Str(p.authid.clone()));
                details.insert("publisher_authrole".into(), Value::Str(p.authrole.clone()));
            }
            let eref = EventRef { subscription: id, publication: event.publication, details: &details, args: &event.args, kwargs: &event.kwargs };
            let mut frames: [Option<Bytes>; 2] = [None, None];
            let mut sent = [0u64; 2];
            let when = if sub.subscribers.len() <= DIRECT_WRITE_MAX { When::Now } else { When::Task };
            'subscribers: for (sid, subscriber) in &sub.subscribers {
                if excluded_self == Some(*sid) {
                    continue;
                }
                if subscriber.check.as_ref().is_some_and(|p| !p.may_receive(topic)) {
                    continue;
                }
                let session = &subscriber.session;
                if !open {
                    let Some(who) = session.identity.get() else { continue };
                    if !event.filter.admits(*sid, &who.authid, &who.authrole) {
                        continue;
                    }
                }
                let s = session.serialization;
                let frame = match &mut frames[s.index()] {
                    Some(f) => &*f,
                    slot => match encode_frame(s, &eref) {
                        Some(f) => &*slot.insert(f),
                        // Logged by encode_frame; nobody on this subscription can get it.
                        None => break 'subscribers,
                    },
                };
                let ok = session.outbox.push_event(frame, when).is_ok();
                sent[s.index()] += u64::from(ok);
            }
            for (si, n) in sent.into_iter().enumerate() {
                if let (Some(frame), true) = (&frames[si], n > 0) {
                    self.metrics.messages_out[si].inc_by(n);
                    self.metrics.bytes_out[si].inc_by(n * frame.len() as u64);
                    delivered += n as usize;
                }
            }
        }
        drop(inner);
        self.metrics.events_delivered.inc_by(delivered as u64);
        self.metrics.fanout_duration.observe(started.elapsed().as_secs_f64());
        delivered
    }
}

/// Encodes a message into a complete WebSocket frame (text for JSON,
/// binary for msgpack), ready to be written to any session of that
/// serializer.
pub fn encode_frame<T: serde::Serialize + ?Sized>(s: Serialization, msg: &T) -> Option<Bytes> {
    match s.encode(msg) {
        // serde_json writes valid UTF-8, as a text frame must carry.
        Ok(payload) => Some(crate::wire::data_frame(payload, s.is_binary())),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a message; not sent");
            None
        }
    }
}
