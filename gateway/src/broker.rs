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
use crate::outbox::{part_of, Flush, Outbox, ShardWork, Walked, PARTS};
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
    /// `Vec` (a `HashMap` scans its control bytes). Its entries are kept
    /// grouped by part ([`part_of`]): part `p` is at
    /// `ends[p - 1]..ends[p]`, so a write shard walks only its own.
    /// Hashed with a fixed seed: the keys are the node's own random
    /// session ids, which no client chooses, and the same ids then cost
    /// the same instructions in every run (the instruction budgets).
    by_session: indexmap::IndexMap<Id, Subscriber, foldhash::fast::FixedState>,
    ends: [u32; PARTS],
    /// How many subscribers use each serializer (its frame is encoded
    /// only when some do).
    per_serializer: [u32; 2],
    /// How many subscribers have partial rights or replay (a `check` or a
    /// `hold`): with none, a fan-out skips the per-session checks.
    special: u32,
    /// Set once the subscription has left the index (its last subscriber
    /// left): a SUBSCRIBE that found it just before must look again.
    retired: bool,
}

impl Subscribers {
    /// Adds (or replaces) `session`'s entry; true when it is new.
    fn insert(&mut self, session: Id, subscriber: Subscriber) -> bool {
        self.special += u32::from(subscriber.is_special());
        if let Some(entry) = self.by_session.get_mut(&session) {
            let old = std::mem::replace(entry, subscriber);
            self.special -= u32::from(old.is_special());
            return false;
        }
        self.per_serializer[subscriber.session.serialization.index()] += 1;
        let p = part_of(session);
        // It goes in last; each later part gives its first place to it and
        // takes the place after its end, until it reaches the end of part p.
        let (at, _) = self.by_session.insert_full(session, subscriber);
        let mut at = at as u32;
        for q in (p + 1..PARTS).rev() {
            let start = self.ends[q - 1];
            if start < self.ends[q] {
                self.by_session.swap_indices(start as usize, at as usize);
            }
            at = start;
            self.ends[q] += 1;
        }
        self.ends[p] += 1;
        true
    }

    /// Removes `session`'s entry, keeping the parts grouped.
    fn remove(&mut self, session: Id) -> Option<Subscriber> {
        let at = self.by_session.get_index_of(&session)?;
        let p = part_of(session);
        // The entry moves to the end of its part, then the gap it leaves
        // moves through the later parts (each gives its last entry to it)
        // to the end, where it is popped.
        let mut gap = self.ends[p] as usize - 1;
        self.by_session.swap_indices(at, gap);
        self.ends[p] -= 1;
        for q in p + 1..PARTS {
            let end = self.ends[q] as usize;
            if gap + 1 < end {
                self.by_session.swap_indices(gap, end - 1);
            }
            gap = end - 1;
            self.ends[q] -= 1;
        }
        let (_, subscriber) = self.by_session.pop()?;
        self.per_serializer[subscriber.session.serialization.index()] -= 1;
        self.special -= u32::from(subscriber.is_special());
        Some(subscriber)
    }

    /// The subscribers of part `p`.
    #[inline]
    fn part(&self, p: usize) -> &indexmap::map::Slice<Id, Subscriber> {
        let start = if p == 0 { 0 } else { self.ends[p - 1] as usize };
        &self.by_session.as_slice()[start..self.ends[p] as usize]
    }
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

impl Subscriber {
    /// Whether events for it need more than the event's own checks.
    fn is_special(&self) -> bool {
        self.check.is_some() || self.hold.is_some()
    }
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
            let new_for_session = subscribers.insert(session.id, Subscriber { session: session.clone(), check, hold });
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
            let special = subscriber.is_special();
            subscribers.special -= u32::from(!special);
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
            _ => {
                subscriber.hold = None;
                let special = subscriber.is_special();
                subscribers.special -= u32::from(!special);
            }
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
            subscribers.remove(session)?;
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
    /// EVENT messages were sent, or handed to the write shards (counted
    /// per session before its filters: the shards count what they send).
    /// Frames for small fan-outs wait in `flush` until the caller's batch
    /// of events is done; large fan-outs go to the write shards.
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
        let target = Target { topic, filter: &event.filter, open: event.filter.is_open(), excluded_self, position: event.position };
        // What the shards need of the event, made once if any goes there.
        let mut shared: Option<Arc<Shared>> = None;
        for sub in matched {
            let subscribers = sub.subscribers.read().unwrap_or_else(|e| e.into_inner());
            let fanout = subscribers.by_session.len();
            let Some(frames) = encode(&sub, event, subscribers.per_serializer) else { continue };
            if flush.goes_to_shards(fanout) {
                drop(subscribers);
                let shared = shared.get_or_insert_with(|| Arc::new(Shared::of(&target, &self.metrics)));
                flush.hand(Arc::new(Walk { sub, frames, event: shared.clone() }));
                delivered += fanout;
                continue;
            }
            let sent = match uniform(&frames, &subscribers, &target) {
                // Nothing to check per session: only failures are counted.
                Some(frame) => {
                    let mut failed = 0;
                    for subscriber in subscribers.by_session.values() {
                        failed += u64::from(subscriber.session.outbox.push_event(frame, fanout, flush).is_err());
                    }
                    Sent::uniform(fanout, failed, &frames)
                }
                None => {
                    let mut sent = Sent::default();
                    for (sid, subscriber) in &subscribers.by_session {
                        if let Some(frame) = target.frame(*sid, subscriber, &frames) {
                            sent.count(subscriber.session.outbox.push_event(frame, fanout, flush).is_ok(), subscriber.session.serialization);
                        }
                    }
                    sent
                }
            };
            drop(subscribers);
            delivered += sent.record(&self.metrics, &frames);
        }
        self.metrics.fanout_duration.observe(started.elapsed().as_secs_f64());
        delivered
    }

    /// Number of subscriptions.
    #[cfg(test)]
    fn subscription_count(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).by_pattern.len()
    }
}

/// The frames of `event` on `sub`, for each serializer its subscribers
/// use; `None` when none could be encoded (logged by `encode_frame`) or
/// nobody is subscribed.
fn encode(sub: &Subscription, event: &Envelope, per_serializer: [u32; 2]) -> Option<[Option<SharedFrame>; 2]> {
    let details = event_details(sub.policy, event);
    let eref = EventRef { subscription: sub.id, publication: event.publication, details: &details, args: &event.args, kwargs: &event.kwargs };
    let mut frames: [Option<SharedFrame>; 2] = [None, None];
    for s in [Serialization::Json, Serialization::Msgpack] {
        if per_serializer[s.index()] > 0 {
            frames[s.index()] = Some(Arc::new(encode_frame(s, &eref)?));
        }
    }
    (frames[0].is_some() || frames[1].is_some()).then_some(frames)
}

/// The frame every subscriber of a subscription gets, when nothing is
/// checked per session (the usual case): one serializer in use, no
/// partial rights or replay, a filter that admits everyone, and no
/// publisher excluding itself. The fan-out loops then only write.
#[inline(always)]
fn uniform<'f>(frames: &'f [Option<SharedFrame>; 2], subscribers: &Subscribers, target: &Target<'_>) -> Option<&'f SharedFrame> {
    match frames {
        [Some(frame), None] | [None, Some(frame)] if subscribers.special == 0 && target.open && target.excluded_self.is_none() => Some(frame),
        _ => None,
    }
}

/// What decides whether a subscriber gets an event, and holds it back
/// while the subscriber replays.
struct Target<'a> {
    topic: &'a str,
    filter: &'a telegraphy_bus::Filter,
    /// Whether the filter admits everyone.
    open: bool,
    excluded_self: Option<Id>,
    position: Option<Position>,
}

impl Target<'_> {
    /// The frame `subscriber` is to be sent now, if any. Runs once per
    /// delivery.
    #[inline(always)]
    fn frame<'f>(&self, sid: Id, subscriber: &Subscriber, frames: &'f [Option<SharedFrame>; 2]) -> Option<&'f SharedFrame> {
        if self.excluded_self == Some(sid) {
            return None;
        }
        if subscriber.check.as_ref().is_some_and(|p| !p.may_receive(self.topic)) {
            return None;
        }
        let session = &subscriber.session;
        if !self.open {
            let who = session.identity.get()?;
            if !self.filter.admits(sid, &who.authid, &who.authrole) {
                return None;
            }
        }
        let frame = frames[session.serialization.index()].as_ref()?;
        if let Some(hold) = subscriber.hold.as_ref().filter(|h| h.active.load(Ordering::Relaxed)) {
            if !hold_event(hold, self.position, frame) {
                return None;
            }
        }
        Some(frame)
    }
}

/// Frames sent in all, and of them with the second serializer (two adds
/// per delivery; an array indexed by serializer cost a dozen instructions).
#[derive(Default)]
struct Sent {
    all: u64,
    second: u64,
}

impl Sent {
    #[inline(always)]
    fn count(&mut self, ok: bool, s: Serialization) {
        let ok = u64::from(ok);
        self.all += ok;
        self.second += ok & s.index() as u64;
    }

    /// `walked` sessions sent the one frame in `frames`, `failed` of
    /// them refused it ([`uniform`]).
    #[inline(always)]
    fn uniform(walked: usize, failed: u64, frames: &[Option<SharedFrame>; 2]) -> Sent {
        let all = walked as u64 - failed;
        Sent { all, second: all * u64::from(frames[1].is_some()) }
    }

    /// Adds what was sent to the metrics; returns how many frames.
    fn record(&self, metrics: &Metrics, frames: &[Option<SharedFrame>; 2]) -> usize {
        if self.all == 0 {
            return 0;
        }
        for (si, n) in [self.all - self.second, self.second].into_iter().enumerate() {
            if let (Some(frame), true) = (&frames[si], n > 0) {
                metrics.messages_out[si].inc_by(n);
                metrics.bytes_out[si].inc_by(n * frame.len() as u64);
            }
        }
        metrics.events_delivered.inc_by(self.all);
        self.all as usize
    }
}

/// What the write shards need of an event (shared by its subscriptions).
struct Shared {
    topic: String,
    /// The eligibility filter (empty when it admits everyone).
    filter: telegraphy_bus::Filter,
    open: bool,
    excluded_self: Option<Id>,
    position: Option<Position>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// What the shards need of `target`, owned.
    fn of(target: &Target<'_>, metrics: &Arc<Metrics>) -> Shared {
        Shared {
            topic: target.topic.to_owned(),
            filter: if target.open { Default::default() } else { target.filter.clone() },
            open: target.open,
            excluded_self: target.excluded_self,
            position: target.position,
            metrics: metrics.clone(),
        }
    }

    fn target(&self) -> Target<'_> {
        Target { topic: &self.topic, filter: &self.filter, open: self.open, excluded_self: self.excluded_self, position: self.position }
    }
}

/// An event for a large subscription, walked by the write shards.
struct Walk {
    sub: Arc<Subscription>,
    frames: [Option<SharedFrame>; 2],
    event: Arc<Shared>,
}

impl ShardWork for Walk {
    fn walk_part(&self, part: usize, out: &mut Walked) -> usize {
        let e = &*self.event;
        // Under the subscription's lock, as the dispatcher's own fan-out:
        // a session that unsubscribed (its UNSUBSCRIBED sent after it left
        // under the write lock) gets no EVENT after it.
        let subscribers = self.sub.subscribers.read().unwrap_or_else(|e| e.into_inner());
        let part = subscribers.part(part);
        if part.is_empty() {
            return 0;
        }
        let walked = part.len();
        let target = e.target();
        let sent = match uniform(&self.frames, &subscribers, &target) {
            // Nothing to check per session: only failures are counted.
            Some(frame) => {
                let mut failed = 0;
                if out.direct {
                    for subscriber in part.values() {
                        failed += u64::from(subscriber.session.outbox.push_walked::<true>(frame, out).is_err());
                    }
                } else {
                    for subscriber in part.values() {
                        failed += u64::from(subscriber.session.outbox.push_walked::<false>(frame, out).is_err());
                    }
                }
                Sent::uniform(walked, failed, &self.frames)
            }
            None => {
                let mut sent = Sent::default();
                for (sid, subscriber) in part {
                    if let Some(frame) = target.frame(*sid, subscriber, &self.frames) {
                        sent.count(subscriber.session.outbox.push_walked::<false>(frame, out).is_ok(), subscriber.session.serialization);
                    }
                }
                sent
            }
        };
        drop(subscribers);
        sent.record(&e.metrics, &self.frames);
        walked
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
fn hold_event(hold: &Hold, position: Option<Position>, frame: &Bytes) -> bool {
    let mut held = hold.held.lock().unwrap_or_else(|e| e.into_inner());
    match held.floor {
        Some(floor) if replayed_already(position, floor) => false,
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
                held.frames.push((position, frame.clone()));
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

    /// Subscribes to prefix `news`: alice (1, role user), bob (2, role
    /// staff, serializer `bob`) and carol (3, role user), who may read
    /// `news.public.*` only (the subscription is checked per event).
    async fn news_readers(f: &Fixture, bob: Serialization) -> Vec<(Arc<SessionHandle>, TcpStream)> {
        let readers = vec![
            f.session(1, Serialization::Json, ("alice", "user")).await,
            f.session(2, bob, ("bob", "staff")).await,
            f.session(3, Serialization::Json, ("carol", "user")).await,
        ];
        let partial = Permissions::new(
            crate::authz::Actions { subscribe: PatternSet::parse(&["news.public.*"]).unwrap(), ..Default::default() },
            crate::authz::Actions::default(),
            false,
        );
        for ((session, _), check) in readers.iter().zip([None, None, Some(Arc::new(partial))]) {
            f.broker.subscribe(session, MatchPolicy::Prefix, "news", check, false);
        }
        readers
    }

    #[tokio::test]
    async fn filters_exclusion_and_partial_rights_are_applied_per_session() {
        let f = Fixture::new().await;
        let _readers = news_readers(&f, Serialization::Json).await;
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

    #[tokio::test]
    async fn subscribers_stay_grouped_by_part_through_joins_and_leaves() {
        let f = Fixture::new().await;
        let json = f.session(1, Serialization::Json, ("a", "user")).await.0;
        let msgpack = f.session(2, Serialization::Msgpack, ("b", "user")).await.0;
        let mut subscribers = Subscribers::default();
        let mut present: Vec<Id> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for step in 0..3000 {
            if present.is_empty() || rng.u8(..) < 150 {
                let id = rng.u64(1..200);
                let session = if id % 3 == 0 { msgpack.clone() } else { json.clone() };
                let new = subscribers.insert(id, Subscriber { session, check: None, hold: None });
                assert_eq!(new, !present.contains(&id), "step {step}");
                if new {
                    present.push(id);
                }
            } else {
                let id = present.swap_remove(rng.usize(..present.len()));
                assert!(subscribers.remove(id).is_some(), "step {step}: {id} was in");
                assert!(subscribers.remove(id).is_none());
            }
            let mut seen: Vec<Id> =
                (0..PARTS).flat_map(|p| subscribers.part(p).keys().inspect(move |id| assert_eq!(part_of(**id), p)).copied()).collect();
            seen.sort_unstable();
            let mut want = present.clone();
            want.sort_unstable();
            assert_eq!(seen, want, "step {step}: every subscriber in its part, once");
            let msgpacks = present.iter().filter(|id| *id % 3 == 0).count() as u32;
            assert_eq!(subscribers.per_serializer, [present.len() as u32 - msgpacks, msgpacks], "step {step}");
        }
    }

    /// Subscribes `n` plain sessions (ids from 1,000) to prefix `topic`
    /// (enough to make its fan-out one for the write shards).
    async fn crowd(f: &Fixture, topic: &str, n: u64) -> Vec<(Arc<SessionHandle>, TcpStream)> {
        let mut crowd = Vec::new();
        for i in 0..n {
            let (s, c) = f.session(1000 + i, Serialization::Json, ("crowd", "user")).await;
            f.broker.subscribe(&s, MatchPolicy::Prefix, topic, None, false);
            crowd.push((s, c));
        }
        crowd
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_on_a_large_and_a_small_subscription_gets_their_events_in_order() {
        let f = Fixture::new().await;
        let mut crowd = crowd(&f, "big", crate::outbox::DIRECT_WRITE_MAX as u64 + 10).await;
        let mut both = Vec::new();
        for id in 1..=3 {
            let (s, c) = f.session(id, Serialization::Json, ("both", "user")).await;
            f.broker.subscribe(&s, MatchPolicy::Prefix, "big", None, false);
            f.broker.subscribe(&s, MatchPolicy::Exact, "small", None, false);
            both.push((s, c));
        }
        let shards = crate::outbox::WriteShards::start();
        let mut flush = Flush::with_shards(shards.clone());
        // Batches mixing the large fan-out (the shards) and the small one
        // (the dispatcher, when the shards are idle), so that a small
        // fan-out's frame could overtake a large one's still being written.
        let topics: Vec<&str> = (0..300).map(|i| if i % 3 == 1 { "small" } else { "big" }).collect();
        for (n, topic) in topics.iter().enumerate() {
            let mut e = event(topic);
            e.publication = n as u64 + 1;
            f.broker.dispatch(&e, &mut flush);
            if n % 5 == 4 {
                flush.run();
            }
        }
        flush.run();
        for (_, client) in &mut both {
            for n in 0..topics.len() as u64 {
                match read_message(client, Serialization::Json).await {
                    Message::Event { publication, .. } => assert_eq!(publication, n + 1, "events out of order"),
                    other => panic!("{other:?}"),
                }
            }
        }
        let bigs = topics.iter().filter(|t| **t == "big").count() as u64;
        for (_, client) in crowd.iter_mut().take(20) {
            for n in (0..topics.len() as u64).filter(|n| topics[*n as usize] == "big") {
                match read_message(client, Serialization::Json).await {
                    Message::Event { publication, .. } => assert_eq!(publication, n + 1),
                    other => panic!("{other:?}"),
                }
            }
        }
        while !shards.is_idle() {
            tokio::task::yield_now().await;
        }
        let smalls = topics.len() as u64 - bigs;
        assert_eq!(f.broker.metrics.events_delivered.get(), bigs * (crowd.len() as u64 + 3) + smalls * 3, "every delivery counted once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_write_shards_apply_filters_exclusion_and_partial_rights() {
        let f = Fixture::new().await;
        let crowd = crowd(&f, "news", crate::outbox::DIRECT_WRITE_MAX as u64).await;
        let _readers = news_readers(&f, Serialization::Msgpack).await;
        let shards = crate::outbox::WriteShards::start();
        let mut flush = Flush::with_shards(shards.clone());
        let crowd = crowd.len() as u64;
        async fn delivered(broker: &Broker, flush: &mut Flush, shards: &crate::outbox::WriteShards, e: &Envelope) -> u64 {
            let before = broker.metrics.events_delivered.get();
            broker.dispatch(e, flush);
            flush.run();
            while !shards.is_idle() {
                tokio::task::yield_now().await;
            }
            broker.metrics.events_delivered.get() - before
        }
        macro_rules! delivered {
            ($e:expr) => {
                delivered(&f.broker, &mut flush, &shards, $e).await
            };
        }
        assert_eq!(delivered!(&event("news.public.1")), crowd + 3);
        assert_eq!(delivered!(&event("news.secret.1")), crowd + 2);
        let mut e = event("news.public.2");
        e.filter.eligible_authrole = Some(vec!["staff".into()]);
        assert_eq!(delivered!(&e), 1);
        let mut e = event("news.public.3");
        e.filter.exclude_authid = vec!["alice".into(), "crowd".into()];
        e.filter.exclude = vec![2];
        assert_eq!(delivered!(&e), 1);
        let mut e = event("news.public.4");
        e.publisher = Some(Publisher { node: 7, session: 1, authid: "alice".into(), authrole: "user".into(), exclude_me: true, disclose_me: false });
        assert_eq!(delivered!(&e), crowd + 2);
        assert_eq!(f.broker.metrics.messages_out[1].get(), 4, "bob's msgpack frames counted by serializer");
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
