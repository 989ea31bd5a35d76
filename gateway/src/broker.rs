//! The broker role of one realm on this node: its subscriptions and the
//! fan-out of events to them.
//!
//! Subscriptions are shared per (match policy, URI): every session that
//! subscribes to the same pair gets the same subscription id, so an event is
//! encoded once per (subscription, serializer) and the very same bytes are
//! sent to every subscriber.
//!
//! Subscription ids are a hash of (realm, match policy, URI): the same on
//! every node and across restarts, so a client that moves to another node
//! and subscribes again gets the id it had, and `get_events` on it works
//! after the move. An id tells a session nothing about other sessions'
//! subscriptions (it can compute it alone).
//!
//! A subscriber can join *held*: its events wait (bounded) until the
//! session has sent what must come first (retained or missed events), and
//! [`Broker::release`] then writes those, the held events the replay did
//! not already cover, and lets live events through, all under the
//! subscription's lock so nothing overtakes.
//!
//! Locking: the realm-wide index (a [`MatchIndex`] of subscriptions) is
//! held only to find or change subscriptions, never while frames are
//! written; each subscription has its own lock over its subscriber set,
//! which the fan-out holds while it writes to that subscription's sessions.
//! A SUBSCRIBE to one topic so waits at most for a fan-out on that same
//! topic, never for the rest of the realm. Lock order: index, then
//! subscription.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use bytes::Bytes;
use telegraphy_bus::{Bus, Envelope, Position, Ticket};
use telegraphy_wamp::{Dict, EventRef, Id, MatchPolicy, Serialization, Value};

use crate::authz::Permissions;
use crate::match_index::MatchIndex;
use crate::metrics::Metrics;
use crate::outbox::{Flush, Outbox};
use crate::wire::{encode_frame, SharedFrame};

/// What the broker knows of a session: enough to route and filter events.
pub struct SessionHandle {
    /// The WAMP session id.
    pub id: Id,
    /// The session's serializer, to pick the right encoded bytes.
    pub serialization: Serialization,
    /// Who the session is; set once, at WELCOME.
    pub identity: OnceLock<Identity>,
    /// Where its frames go.
    pub outbox: Outbox,
    /// The client's address (behind trusted proxies, the one they name), for logs.
    pub client: Option<std::net::IpAddr>,
}

impl SessionHandle {
    /// Queues a message on this session's outbox, from any task. A full
    /// queue closes the session as a slow consumer; nothing else to do here.
    pub(crate) fn send(&self, msg: &telegraphy_wamp::Message) {
        if let Some(frame) = crate::wire::encode_frame(self.serialization, msg) {
            let _ = self.outbox.push(&frame);
        }
    }
}

/// A session's authenticated identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `authid`.
    pub authid: String,
    /// `authrole`.
    pub authrole: String,
    /// A display name (the token's `name` claim), for presence.
    pub name: Option<String>,
}

/// One subscription: (policy, URI), its id, and the local sessions on it.
struct Subscription {
    id: Id,
    policy: MatchPolicy,
    uri: Arc<str>,
    /// When it was created on this node (microseconds since the Unix epoch).
    created_us: u64,
    /// Resolves (through the bus) once the broker routes this topic here.
    ticket: Ticket,
    subscribers: RwLock<Subscribers>,
}

impl Subscription {
    /// What the meta API and the cluster tell of it (takes its subscriber lock).
    fn described(&self) -> LocalSubscription {
        let sessions = self.subscribers.read().unwrap_or_else(|e| e.into_inner()).by_session.keys().copied().collect();
        LocalSubscription { id: self.id, policy: self.policy, uri: self.uri.clone(), created_us: self.created_us, sessions }
    }
}

#[derive(Default)]
struct Subscribers {
    /// An `IndexMap`: the fan-out walks it once per event, as fast as a
    /// `Vec` (a `HashMap` scans its control bytes).
    by_session: indexmap::IndexMap<Id, Subscriber, foldhash::fast::RandomState>,
    /// Set once the subscription has left the index (its last subscriber
    /// left): a SUBSCRIBE that found it just before must look again.
    retired: bool,
}

struct Subscriber {
    session: Arc<SessionHandle>,
    /// Set when the session may see only some topics this subscription
    /// matches: each event is checked against it before it is sent.
    check: Option<Arc<Permissions>>,
    /// Set for a subscriber that replays: while `active`, live events take
    /// the cold path through it (held, then filtered).
    hold: Option<Box<Hold>>,
}

/// A replaying subscriber's live events.
#[derive(Default)]
struct Hold {
    /// Cleared once the live path is past the replay: one load per event after.
    active: AtomicBool,
    held: Mutex<Held>,
}

/// Events held for a replaying subscriber: (history position, frame).
#[derive(Default)]
struct Held {
    frames: Vec<(Option<Position>, Bytes)>,
    overflowed: bool,
    /// Set on release: live events at or below this position (same epoch)
    /// were replayed (read from the store before the live path brought
    /// them here) and are dropped; the first other one ends the hold.
    floor: Option<Position>,
}

/// Whether a live event at `at` is one the replay up to `floor` sent.
fn replayed_already(at: Option<Position>, floor: Position) -> bool {
    at.is_some_and(|p| p.epoch == floor.epoch && p.offset <= floor.offset)
}

/// Most events held for one replaying subscriber; beyond it the session is
/// closed as a slow consumer when released (it could not keep up anyway).
const HOLD_MAX: usize = 10_000;

#[derive(Default)]
struct Index {
    by_pattern: MatchIndex<Arc<Subscription>>,
    ids: HashMap<Id, Arc<Subscription>>,
}

/// A subscription of this node, as the meta API and the cluster see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LocalSubscription {
    pub id: Id,
    pub policy: MatchPolicy,
    pub uri: Arc<str>,
    pub created_us: u64,
    pub sessions: Vec<Id>,
}

/// Result of [`Broker::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The (shared) subscription id.
    pub id: Id,
    /// False when the session already held this subscription.
    pub new_for_session: bool,
    /// When the subscription was created on this node (microseconds since
    /// the Unix epoch).
    pub created_us: u64,
    /// Await `Bus::interest_applied(ticket)` before confirming: then events
    /// published from now on reach the session.
    pub ticket: Ticket,
}

/// The broker role of one realm: subscriptions and fan-out.
pub struct Broker {
    /// The realm (bus interests are per realm).
    realm: String,
    index: RwLock<Index>,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    /// This node's id, to recognise its own sessions in `exclude_me`.
    node_id: u64,
}

impl Broker {
    /// A broker with no subscriptions.
    pub fn new(realm: &str, bus: Arc<dyn Bus>, metrics: Arc<Metrics>, node_id: u64) -> Broker {
        Broker { realm: realm.to_string(), index: RwLock::new(Index::default()), bus, metrics, node_id }
    }

    /// The id for (policy, uri): [`stable_id`], moved on past ids taken by
    /// other pairs on this node (a collision in 2^53 ids).
    fn id_for(&self, index: &Index, policy: MatchPolicy, uri: &str) -> Id {
        let mut id = stable_id(&self.realm, policy, uri);
        while index.ids.contains_key(&id) {
            id = id % telegraphy_wamp::MAX_ID + 1;
        }
        id
    }

    /// Adds `session` to the subscription for (policy, uri), creating it if
    /// needed; `held`: its events wait until [`Broker::release`].
    pub fn subscribe(&self, session: &Arc<SessionHandle>, policy: MatchPolicy, uri: &str, check: Option<Arc<Permissions>>, held: bool) -> Subscribed {
        loop {
            let existing = self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.get(policy, uri).cloned();
            let sub = match existing {
                Some(sub) => sub,
                None => {
                    let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
                    match index.by_pattern.get(policy, uri) {
                        Some(sub) => sub.clone(),
                        None => {
                            let id = self.id_for(&index, policy, uri);
                            let ticket = self.bus.add_interest(&self.realm, policy, uri);
                            let uri: Arc<str> = Arc::from(uri);
                            let created_us = telegraphy_bus::now_us();
                            let sub = Arc::new(Subscription { id, policy, uri: uri.clone(), created_us, ticket, subscribers: RwLock::default() });
                            index.by_pattern.insert(policy, uri, sub.clone());
                            index.ids.insert(id, sub.clone());
                            self.metrics.topics.inc();
                            sub
                        }
                    }
                }
            };
            let mut subscribers = sub.subscribers.write().unwrap_or_else(|e| e.into_inner());
            if subscribers.retired {
                // Its last subscriber left between the lookup and now.
                continue;
            }
            let hold = held.then(|| Box::new(Hold { active: AtomicBool::new(true), held: Mutex::default() }));
            let new_for_session = subscribers.by_session.insert(session.id, Subscriber { session: session.clone(), check, hold }).is_none();
            if new_for_session {
                self.metrics.subscriptions.inc();
            }
            return Subscribed { id: sub.id, new_for_session, created_us: sub.created_us, ticket: sub.ticket };
        }
    }

    /// Ends the hold of `session` on subscription `id`: writes `first`
    /// (frames the session must send before any live event), then the held
    /// events whose history offset is above `replayed` (or that have none),
    /// then lets live events through. Returns false when too many events
    /// were held (the caller closes the session as a slow consumer).
    pub(crate) fn release(&self, id: Id, session: Id, first: &[Bytes], replayed: Option<Position>) -> bool {
        let Some(sub) = self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).cloned() else { return true };
        let mut subscribers = sub.subscribers.write().unwrap_or_else(|e| e.into_inner());
        let Some(subscriber) = subscribers.by_session.get_mut(&session) else { return true };
        let Some(hold) = subscriber.hold.as_mut() else { return true };
        let held = std::mem::take(&mut *hold.held.lock().unwrap_or_else(|e| e.into_inner()));
        if held.overflowed {
            subscriber.hold = None;
            return false;
        }
        let outbox = &subscriber.session.outbox;
        for frame in first {
            let _ = outbox.push(frame);
        }
        let mut past = false;
        for (at, frame) in held.frames {
            if !replayed.is_some_and(|floor| replayed_already(at, floor)) {
                past = true;
                let _ = outbox.push(&frame);
            }
        }
        match replayed {
            // Events the replay read from the store may still be on their
            // way to this fan-out: drop them when they come.
            Some(floor) if !past => hold.held.lock().unwrap_or_else(|e| e.into_inner()).floor = Some(floor),
            _ => subscriber.hold = None,
        }
        true
    }

    /// The (policy, URI) of subscription `id`, if it exists on this node.
    pub(crate) fn subscription(&self, id: Id) -> Option<(MatchPolicy, Arc<str>)> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).map(|s| (s.policy, s.uri.clone()))
    }

    /// Subscription `id` on this node, if it exists: (policy, URI, when it
    /// was created, its sessions).
    pub(crate) fn describe(&self, id: Id) -> Option<LocalSubscription> {
        let sub = self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).cloned()?;
        Some(sub.described())
    }

    /// Every subscription on this node that `keep` selects by (policy, URI).
    pub(crate) fn subscriptions(&self, mut keep: impl FnMut(MatchPolicy, &str) -> bool) -> Vec<LocalSubscription> {
        let subs: Vec<Arc<Subscription>> =
            self.index.read().unwrap_or_else(|e| e.into_inner()).ids.values().filter(|s| keep(s.policy, &s.uri)).cloned().collect();
        subs.iter().map(|sub| sub.described()).collect()
    }

    /// How many sessions of this node hold subscription `id`.
    pub(crate) fn subscribers_here(&self, id: Id) -> usize {
        let Some(sub) = self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).cloned() else { return 0 };
        let n = sub.subscribers.read().unwrap_or_else(|e| e.into_inner()).by_session.len();
        n
    }

    /// Who the sessions on subscription `id` here are (one call per session).
    pub(crate) fn subscriber_identities(&self, id: Id, mut each: impl FnMut(&Identity)) {
        let Some(sub) = self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).cloned() else { return };
        for subscriber in sub.subscribers.read().unwrap_or_else(|e| e.into_inner()).by_session.values() {
            if let Some(who) = subscriber.session.identity.get() {
                each(who);
            }
        }
    }

    /// Sends a router event (a meta or presence event, made on this node:
    /// it does not travel on the bus) to the sessions subscribed exactly to
    /// `topic`; `about`: the (policy, URI) the event tells of, which a
    /// session gets only if its role could subscribe to it fully (so a
    /// listener never learns of topics it may not read).
    pub(crate) fn dispatch_router_event(&self, topic: &str, args: Vec<Value>, kwargs: Dict, about: Option<(MatchPolicy, &str)>) -> usize {
        let Some(sub) = self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.get(MatchPolicy::Exact, topic).cloned() else { return 0 };
        let details = Dict::new();
        let eref = EventRef { subscription: sub.id, publication: crate::node::random_id(), details: &details, args: &args, kwargs: &kwargs };
        let mut frames: [Option<Bytes>; 2] = [None, None];
        let mut delivered = 0;
        let subscribers = sub.subscribers.read().unwrap_or_else(|e| e.into_inner());
        for subscriber in subscribers.by_session.values() {
            if let Some((policy, uri)) = about {
                let admitted = subscriber.check.as_ref().is_some_and(|p| p.subscribe(policy, uri) == crate::authz::Decision::Full);
                if !admitted {
                    continue;
                }
            }
            let s = subscriber.session.serialization;
            let frame = match &mut frames[s.index()] {
                Some(f) => &*f,
                slot => match encode_frame(s, &eref) {
                    Some(f) => &*slot.insert(f),
                    None => return delivered,
                },
            };
            if subscriber.session.outbox.push(frame).is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// The id of the subscription for (policy, uri), if it exists.
    pub(crate) fn subscription_id(&self, policy: MatchPolicy, uri: &str) -> Option<Id> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.get(policy, uri).map(|s| s.id)
    }

    /// Removes `session` from subscription `id`; false if it was not in it.
    #[cfg(test)]
    pub(crate) fn unsubscribe(&self, session: Id, id: Id) -> bool {
        self.leave(session, id).is_some()
    }

    /// Removes `session` from subscription `id`; the subscription's (policy,
    /// URI) if the session was in it.
    pub(crate) fn leave(&self, session: Id, id: Id) -> Option<(MatchPolicy, Arc<str>)> {
        let sub = self.index.read().unwrap_or_else(|e| e.into_inner()).ids.get(&id).cloned()?;
        let now_empty = {
            let mut subscribers = sub.subscribers.write().unwrap_or_else(|e| e.into_inner());
            subscribers.by_session.swap_remove(&session)?;
            subscribers.by_session.is_empty()
        };
        self.metrics.subscriptions.dec();
        if now_empty {
            self.retire_if_empty(&sub);
        }
        Some((sub.policy, sub.uri.clone()))
    }

    /// Takes an empty subscription out of the index (and the bus interest
    /// with it), unless a session joined it meanwhile.
    fn retire_if_empty(&self, sub: &Arc<Subscription>) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut subscribers = sub.subscribers.write().unwrap_or_else(|e| e.into_inner());
        if subscribers.retired || !subscribers.by_session.is_empty() {
            return;
        }
        subscribers.retired = true;
        index.by_pattern.remove(sub.policy, &sub.uri);
        index.ids.remove(&sub.id);
        self.metrics.topics.dec();
        self.bus.remove_interest(&self.realm, sub.policy, &sub.uri);
    }

    /// Removes a closing session from all of its subscriptions.
    #[cfg(test)]
    pub(crate) fn remove_session(&self, session: Id, subscriptions: impl IntoIterator<Item = Id>) {
        for id in subscriptions {
            self.unsubscribe(session, id);
        }
    }

    /// Sends `event` to every local session it is for. Returns how many
    /// EVENT messages were sent. Frames for small fan-outs wait in `flush`
    /// until the caller's batch of events is done.
    pub fn dispatch(&self, event: &Envelope, flush: &mut Flush) -> usize {
        let started = Instant::now();
        let topic = event.topic.as_str();
        let mut matched: Vec<Arc<Subscription>> = Vec::new();
        self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.for_each_match(topic, |_, sub| matched.push(sub.clone()));
        if telegraphy_bus::is_reserved_topic(topic) {
            // Meta events reach exact subscriptions only (whose rights were
            // checked for that topic by name), never a prefix or wildcard.
            matched.retain(|sub| sub.policy == MatchPolicy::Exact);
        }
        let mut delivered = 0;
        let publisher = event.publisher.as_ref();
        let excluded_self = publisher.filter(|p| p.exclude_me && p.node == self.node_id).map(|p| p.session);
        let open = event.filter.is_open();
        for sub in matched {
            let details = event_details(sub.policy, event);
            let eref = EventRef { subscription: sub.id, publication: event.publication, details: &details, args: &event.args, kwargs: &event.kwargs };
            let mut frames: [Option<SharedFrame>; 2] = [None, None];
            // Frames sent in all, and of them with the second serializer
            // (two adds per delivery; an array indexed by serializer cost
            // a dozen instructions).
            let (mut sent, mut sent_second) = (0u64, 0u64);
            let subscribers = sub.subscribers.read().unwrap_or_else(|e| e.into_inner());
            let fanout = subscribers.by_session.len();
            'subscribers: for (sid, subscriber) in &subscribers.by_session {
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
                        Some(f) => &*slot.insert(Arc::new(f)),
                        // Logged by encode_frame; nobody on this subscription can get it.
                        None => break 'subscribers,
                    },
                };
                if let Some(hold) = subscriber.hold.as_ref().filter(|h| h.active.load(Ordering::Relaxed)) {
                    if !hold_event(hold, event, frame) {
                        continue;
                    }
                }
                let ok = u64::from(session.outbox.push_event(frame, fanout, flush).is_ok());
                sent += ok;
                sent_second += ok & s.index() as u64;
            }
            drop(subscribers);
            for (si, n) in [sent - sent_second, sent_second].into_iter().enumerate() {
                if let (Some(frame), true) = (&frames[si], n > 0) {
                    self.metrics.messages_out[si].inc_by(n);
                    self.metrics.bytes_out[si].inc_by(n * frame.len() as u64);
                    delivered += n as usize;
                }
            }
        }
        self.metrics.events_delivered.inc_by(delivered as u64);
        self.metrics.fanout_duration.observe(started.elapsed().as_secs_f64());
        delivered
    }

    /// Number of subscriptions.
    #[cfg(test)]
    fn subscription_count(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.len()
    }
}

/// EVENT details for `event` on a subscription of `policy`: the concrete
/// topic for pattern subscriptions, the publisher when it disclosed itself.
pub(crate) fn event_details(policy: MatchPolicy, event: &Envelope) -> Dict {
    let mut details = Dict::new();
    if policy != MatchPolicy::Exact {
        details.insert("topic".into(), Value::Str(event.topic.clone()));
    }
    if let Some(p) = event.publisher.as_ref().filter(|p| p.disclose_me) {
        details.insert("publisher".into(), Value::UInt(p.session));
        details.insert("publisher_authid".into(), Value::Str(p.authid.clone()));
        details.insert("publisher_authrole".into(), Value::Str(p.authrole.clone()));
    }
    details
}

/// A live event for a subscriber that replays, or replayed: keeps it
/// (while replaying) or drops it (a copy of a replayed one); true when it
/// goes out now (the live path is past the replay; the hold ends).
#[cold]
fn hold_event(hold: &Hold, event: &Envelope, frame: &Bytes) -> bool {
    let mut held = hold.held.lock().unwrap_or_else(|e| e.into_inner());
    match held.floor {
        Some(floor) if replayed_already(event.position, floor) => false,
        Some(_) => {
            hold.active.store(false, Ordering::Relaxed);
            true
        }
        None if held.frames.len() >= HOLD_MAX => {
            held.overflowed = true;
            held.frames = Vec::new();
            false
        }
        None => {
            if !held.overflowed {
                held.frames.push((event.position, frame.clone()));
            }
            false
        }
    }
}

/// The id of subscription (policy, uri) in `realm`, the same on every node:
/// the first 8 bytes of SHA-256 over the three, in `1..=2^53`.
pub(crate) fn stable_id(realm: &str, policy: MatchPolicy, uri: &str) -> Id {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for part in [realm, policy.as_str(), uri] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % telegraphy_wamp::MAX_ID + 1
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use telegraphy_bus::{Delivery, Filter, PublishError, Publisher};
    use telegraphy_wamp::{Message, Serialization};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::authz::PatternSet;
    use crate::wire::{read_message, Wire};

    /// A bus that only records the interests it is given (this module's
    /// promise to the bus: an interest exactly while a subscription exists).
    #[derive(Default)]
    struct Interests(Mutex<HashSet<(MatchPolicy, String)>>);

    impl Bus for Interests {
        fn publish(&self, _: Envelope, _: Delivery) -> BoxFuture<'_, Result<telegraphy_wamp::Id, PublishError>> {
            Box::pin(async { Ok(1) })
        }
        fn add_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) -> Ticket {
            assert_eq!(realm, "realm1");
            assert!(self.0.lock().unwrap().insert((policy, pattern.to_string())), "interest added twice: {policy} {pattern}");
            0
        }
        fn remove_interest(&self, _: &str, policy: MatchPolicy, pattern: &str) {
            assert!(self.0.lock().unwrap().remove(&(policy, pattern.to_string())), "interest removed without being added: {policy} {pattern}");
        }
        fn interest_applied(&self, _: Ticket) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn shutdown(&self) {}
    }

    struct Fixture {
        broker: Broker,
        bus: Arc<Interests>,
        listener: TcpListener,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let bus = Arc::new(Interests::default());
            let broker = Broker::new("realm1", bus.clone(), Arc::new(Metrics::new()), 7);
            Fixture { broker, bus, listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
        }

        /// A session over a real loopback socket, and the client's end.
        async fn session(&self, id: Id, ser: Serialization, who: (&str, &str)) -> (Arc<SessionHandle>, TcpStream) {
            let client = TcpStream::connect(self.listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = self.listener.accept().await.unwrap();
            let outbox = Outbox::new(Wire::tcp(server), ser.index(), 64, 1 << 20, Arc::new(Metrics::new()));
            let identity = OnceLock::new();
            identity.set(Identity { authid: who.0.into(), authrole: who.1.into(), name: None }).unwrap();
            (Arc::new(SessionHandle { id, serialization: ser, identity, outbox, client: None }), client)
        }

        fn interests(&self) -> HashSet<(MatchPolicy, String)> {
            self.bus.0.lock().unwrap().clone()
        }
    }

    /// One event as its own batch: dispatched, then flushed.
    fn dispatch(broker: &Broker, event: &Envelope) -> usize {
        broker.dispatch(event, &mut Flush::default())
    }

    fn event(topic: &str) -> Envelope {
        Envelope {
            realm: "realm1".into(),
            publication: 99,
            topic: topic.into(),
            args: vec![Value::UInt(1)],
            kwargs: Dict::new(),
            filter: Filter::default(),
            publisher: None,
            published_at_us: 0,
            retain: false,
            position: None,
        }
    }

    #[test]
    fn only_copies_of_replayed_events_are_dropped_after_a_replay() {
        let floor = Position { epoch: 7, offset: 10 };
        assert!(replayed_already(Some(Position { epoch: 7, offset: 10 }), floor));
        assert!(replayed_already(Some(Position { epoch: 7, offset: 3 }), floor));
        assert!(!replayed_already(Some(Position { epoch: 7, offset: 11 }), floor), "newer");
        assert!(!replayed_already(Some(Position { epoch: 8, offset: 1 }), floor), "a new epoch starts over at 1: not a copy");
        assert!(!replayed_already(None, floor), "an event without a position was never replayed");
    }

    #[tokio::test]
    async fn sessions_share_a_subscription_and_its_interest() {
        let f = Fixture::new().await;
        let (a, _ca) = f.session(1, Serialization::Json, ("alice", "user")).await;
        let (b, _cb) = f.session(2, Serialization::Msgpack, ("bob", "user")).await;
        let first = f.broker.subscribe(&a, MatchPolicy::Exact, "t.x", None, false);
        let again = f.broker.subscribe(&a, MatchPolicy::Exact, "t.x", None, false);
        let other = f.broker.subscribe(&b, MatchPolicy::Exact, "t.x", None, false);
        assert!(first.new_for_session && !again.new_for_session && other.new_for_session);
        assert_eq!((first.id, again.id), (other.id, other.id));
        let prefix = f.broker.subscribe(&b, MatchPolicy::Prefix, "t.x", None, false);
        assert_ne!(prefix.id, first.id, "another policy is another subscription");
        assert_eq!(f.broker.subscription_count(), 2);
        assert_eq!(f.interests(), HashSet::from([(MatchPolicy::Exact, "t.x".into()), (MatchPolicy::Prefix, "t.x".into())]));
        assert_eq!(f.broker.subscription_id(MatchPolicy::Exact, "t.x"), Some(first.id));
    }

    #[tokio::test]
    async fn the_last_subscriber_leaving_ends_the_subscription_and_its_interest() {
        let f = Fixture::new().await;
        let (a, _ca) = f.session(1, Serialization::Json, ("alice", "user")).await;
        let (b, _cb) = f.session(2, Serialization::Json, ("bob", "user")).await;
        let s = f.broker.subscribe(&a, MatchPolicy::Wildcard, "t..z", None, false);
        f.broker.subscribe(&b, MatchPolicy::Wildcard, "t..z", None, false);
        assert!(f.broker.unsubscribe(1, s.id));
        assert!(!f.broker.unsubscribe(1, s.id), "already left");
        assert_eq!(f.broker.subscription_count(), 1);
        f.broker.remove_session(2, [s.id]);
        assert_eq!(f.broker.subscription_count(), 0);
        assert!(f.interests().is_empty());
        assert_eq!(dispatch(&f.broker, &event("t.y.z")), 0);
        // Subscribing again brings back the same id (keyed hash) and the interest.
        assert_eq!(f.broker.subscribe(&a, MatchPolicy::Wildcard, "t..z", None, false).id, s.id);
        assert_eq!(f.interests().len(), 1);
    }

    #[tokio::test]
    async fn an_event_reaches_every_matching_subscription_once_per_session() {
        let f = Fixture::new().await;
        let (a, mut ca) = f.session(1, Serialization::Json, ("alice", "user")).await;
        let (b, mut cb) = f.session(2, Serialization::Msgpack, ("bob", "user")).await;
        let exact = f.broker.subscribe(&a, MatchPolicy::Exact, "shop.order.7", None, false).id;
        let prefix = f.broker.subscribe(&b, MatchPolicy::Prefix, "shop.order", None, false).id;
        f.broker.subscribe(&b, MatchPolicy::Exact, "shop.other", None, false);
        assert_eq!(dispatch(&f.broker, &event("shop.order.7")), 2);
        match read_message(&mut ca, Serialization::Json).await {
            Message::Event { subscription, publication, details, args, .. } => {
                assert_eq!((subscription, publication), (exact, 99));
                assert!(!details.contains_key("topic"), "an exact subscription does not repeat the topic");
                assert_eq!(args, vec![Value::UInt(1)]);
            }
            other => panic!("{other:?}"),
        }
        match read_message(&mut cb, Serialization::Msgpack).await {
            Message::Event { subscription, details, .. } => {
                assert_eq!(subscription, prefix);
                assert_eq!(details.get("topic"), Some(&Value::Str("shop.order.7".into())), "a pattern subscription names the topic");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dispatch(&f.broker, &event("shop.nothing")), 0);
    }

    #[tokio::test]
    async fn filters_exclusion_and_partial_rights_are_applied_per_session() {
        let f = Fixture::new().await;
        let (a, _ca) = f.session(1, Serialization::Json, ("alice", "user")).await;
        let (b, _cb) = f.session(2, Serialization::Json, ("bob", "staff")).await;
        let (c, _cc) = f.session(3, Serialization::Json, ("carol", "user")).await;
        f.broker.subscribe(&a, MatchPolicy::Prefix, "news", None, false);
        f.broker.subscribe(&b, MatchPolicy::Prefix, "news", None, false);
        // Carol may read news.public only: the prefix subscription is checked per event.
        let partial = Permissions::new(
            crate::authz::Actions { subscribe: PatternSet::parse(&["news.public.*"]).unwrap(), ..Default::default() },
            crate::authz::Actions::default(),
            false,
        );
        f.broker.subscribe(&c, MatchPolicy::Prefix, "news", Some(Arc::new(partial)), false);
        assert_eq!(dispatch(&f.broker, &event("news.public.1")), 3);
        assert_eq!(dispatch(&f.broker, &event("news.secret.1")), 2);
        let mut e = event("news.public.2");
        e.filter.eligible_authrole = Some(vec!["staff".into()]);
        assert_eq!(dispatch(&f.broker, &e), 1);
        let mut e = event("news.public.3");
        e.filter.exclude_authid = vec!["alice".into()];
        e.filter.exclude = vec![2];
        assert_eq!(dispatch(&f.broker, &e), 1);
        // exclude_me applies to the publisher's own session on this node only.
        let mut e = event("news.public.4");
        e.publisher = Some(Publisher { node: 7, session: 1, authid: "alice".into(), authrole: "user".into(), exclude_me: true, disclose_me: false });
        assert_eq!(dispatch(&f.broker, &e), 2);
        e.publisher.as_mut().unwrap().node = 8;
        assert_eq!(dispatch(&f.broker, &e), 3);
    }

    /// Sessions joining and leaving one topic from several threads while
    /// events are dispatched: no subscriber is lost to a subscription that
    /// was being retired, and the bus interest ends exactly when the last
    /// subscriber leaves.
    #[test]
    fn concurrent_joins_and_leaves_keep_the_registry_consistent() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let f = Arc::new(rt.block_on(Fixture::new()));
        let mut sessions = Vec::new();
        for i in 0..4u64 {
            sessions.push(rt.block_on(f.session(i + 1, Serialization::Json, ("u", "user"))));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dispatcher = {
            let (f, stop) = (f.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    dispatch(&f.broker, &event("race.topic"));
                }
            })
        };
        let workers: Vec<_> = sessions
            .iter()
            .map(|(handle, _)| {
                let (f, handle) = (f.clone(), handle.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let s = f.broker.subscribe(&handle, MatchPolicy::Exact, "race.topic", None, false);
                        assert!(f.broker.unsubscribe(handle.id, s.id), "a session's own subscription was lost");
                    }
                    f.broker.subscribe(&handle, MatchPolicy::Exact, "race.topic", None, false)
                })
            })
            .collect();
        let ids: HashSet<Id> = workers.into_iter().map(|w| w.join().unwrap().id).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        dispatcher.join().unwrap();
        assert_eq!(ids.len(), 1, "every session ends on the one subscription");
        assert_eq!(f.broker.subscription_count(), 1);
        assert_eq!(f.interests().len(), 1);
        let id = *ids.iter().next().unwrap();
        for i in 1..=4 {
            assert!(f.broker.unsubscribe(i, id));
        }
        assert_eq!(f.broker.subscription_count(), 0);
        assert!(f.interests().is_empty());
    }
}
