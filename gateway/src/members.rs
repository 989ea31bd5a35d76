//! Who is in a realm: its sessions on this node and, through the cluster,
//! on the other nodes. The session meta API (`wamp.session.*`) reads it.
//!
//! This node's members are recorded as sessions join and leave; the other
//! nodes' arrive as deltas and snapshots over the control channel
//! ([`crate::cluster`]). A node's entries go when it is lost. An answer is
//! as fresh as the last delta from each node: at most a delta period
//! ([`crate::cluster::DELTA_EVERY`]) plus the bus's delay behind, and during
//! a bus outage it holds what was known when the outage began (see
//! `docs/bus.md`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use telegraphy_wamp::{dict, Dict, Id, MatchPolicy, Value};

use crate::broker::{LocalSubscription, SessionHandle};

/// The session meta API's URIs start with this.
pub(crate) const META_PREFIX: &str = "wamp.session.";
/// The meta event of a session joining a realm.
pub(crate) const ON_JOIN: &str = "wamp.session.on_join";
/// The meta event of a session leaving a realm.
pub(crate) const ON_LEAVE: &str = "wamp.session.on_leave";

/// The subscription meta API's URIs start with this.
pub(crate) const SUBSCRIPTION_PREFIX: &str = "wamp.subscription.";
/// The subscription meta events.
pub(crate) const ON_CREATE: &str = "wamp.subscription.on_create";
pub(crate) const ON_SUBSCRIBE: &str = "wamp.subscription.on_subscribe";
pub(crate) const ON_UNSUBSCRIBE: &str = "wamp.subscription.on_unsubscribe";
pub(crate) const ON_DELETE: &str = "wamp.subscription.on_delete";

/// Whether `topic` is a subscription meta event (made on each node for its
/// own listeners, from the directory: nothing travels on the bus for them).
pub(crate) fn is_subscription_event(topic: &str) -> bool {
    [ON_CREATE, ON_SUBSCRIBE, ON_UNSUBSCRIBE, ON_DELETE].contains(&topic)
}

/// `SubscriptionDetails`: `wamp.subscription.get`'s answer and
/// `on_create`'s second argument.
pub(crate) fn subscription_details(id: Id, policy: MatchPolicy, uri: &str, created_us: u64) -> Dict {
    dict! {
        "id" => id,
        "created" => rfc3339(created_us),
        "uri" => uri.to_string(),
        "match" => policy.as_str().to_string(),
    }
}

/// `yyyy-mm-ddThh:mm:ss.sssZ` for microseconds since the Unix epoch.
pub(crate) fn rfc3339(us: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_micros(us)).to_string()
}

/// Whether a session of this node subscribes to `realm`'s session meta events.
pub(crate) fn listened_here(realm: &crate::realm::Realm) -> bool {
    realm.broker.subscription_id(MatchPolicy::Exact, ON_JOIN).is_some() || realm.broker.subscription_id(MatchPolicy::Exact, ON_LEAVE).is_some()
}

/// What the meta API tells about a session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub session: Id,
    pub authid: String,
    pub authrole: String,
    pub authmethod: String,
    pub authprovider: String,
    /// A display name (the token's `name` claim), for presence.
    pub name: Option<String>,
    /// What to publish when the session ends (`wamp.session.add_testament`),
    /// in the order they were added.
    pub testaments: Vec<Testament>,
}

/// An event to publish when a session ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Testament {
    /// `scope: detached` (published first) rather than `destroyed`.
    pub detached: bool,
    pub topic: String,
    pub args: Vec<Value>,
    pub kwargs: Dict,
}

/// Testaments one session may hold.
pub(crate) const MAX_TESTAMENTS: usize = 16;

impl Member {
    /// The testaments in the order they are published: `detached` first.
    pub(crate) fn last_words(&self) -> impl Iterator<Item = &Testament> {
        self.testaments.iter().filter(|t| t.detached).chain(self.testaments.iter().filter(|t| !t.detached))
    }
}

impl Member {
    /// `wamp.session.get`'s answer, and `wamp.session.on_join`'s payload.
    pub(crate) fn details(&self) -> Dict {
        dict! {
            "session" => self.session,
            "authid" => self.authid.clone(),
            "authrole" => self.authrole.clone(),
            "authmethod" => self.authmethod.clone(),
            "authprovider" => self.authprovider.clone(),
        }
    }

    /// `wamp.session.on_leave`'s payload: session, authid, authrole.
    pub(crate) fn on_leave(&self) -> Vec<Value> {
        vec![Value::UInt(self.session), Value::Str(self.authid.clone()), Value::Str(self.authrole.clone())]
    }

    /// The fields as a list (control messages).
    pub(crate) fn to_value(&self) -> Value {
        let testaments = self
            .testaments
            .iter()
            .map(|t| {
                Value::List(vec![Value::Bool(t.detached), Value::Str(t.topic.clone()), Value::List(t.args.clone()), Value::Dict(t.kwargs.clone())])
            })
            .collect();
        Value::List(vec![
            Value::UInt(self.session),
            Value::Str(self.authid.clone()),
            Value::Str(self.authrole.clone()),
            Value::Str(self.authmethod.clone()),
            Value::Str(self.authprovider.clone()),
            Value::List(testaments),
            self.name.clone().map_or(Value::Null, Value::Str),
        ])
    }

    /// Reads [`Member::to_value`]'s list.
    pub(crate) fn from_value(v: Value) -> Option<Member> {
        let Value::List(fields) = v else { return None };
        let mut it = fields.into_iter();
        let session = match it.next()? {
            Value::UInt(n) => n,
            _ => return None,
        };
        let mut text = || match it.next() {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        };
        let (authid, authrole, authmethod, authprovider) = (text()?, text()?, text()?, text()?);
        let mut testaments = Vec::new();
        if let Some(Value::List(list)) = it.next() {
            for t in list {
                let Value::List(fields) = t else { return None };
                let mut f = fields.into_iter();
                match (f.next(), f.next(), f.next(), f.next()) {
                    (Some(Value::Bool(detached)), Some(Value::Str(topic)), Some(Value::List(args)), Some(Value::Dict(kwargs))) => {
                        testaments.push(Testament { detached, topic, args, kwargs })
                    }
                    _ => return None,
                }
            }
        }
        // Added later: absent from an older node's entries.
        let name = match it.next() {
            Some(Value::Str(n)) => Some(n),
            _ => None,
        };
        Some(Member { session, authid, authrole, authmethod, authprovider, name, testaments })
    }
}

/// A subscription as another node reported it: one session on one
/// subscription (the subscription's description comes along so that the
/// entry stands alone).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubscriptionOp {
    pub session: Id,
    pub id: Id,
    pub policy: MatchPolicy,
    pub uri: Arc<str>,
    pub created_us: u64,
}

/// Another node's subscription: its description and its sessions.
#[derive(Debug, Clone)]
struct AwaySubscription {
    policy: MatchPolicy,
    uri: Arc<str>,
    created_us: u64,
    sessions: HashSet<Id>,
}

/// What this node knows of another node's part of the realm.
#[derive(Default)]
struct Away {
    members: HashMap<Id, Member>,
    subscriptions: HashMap<Id, AwaySubscription>,
    /// Each member's subscriptions (to drop them when it leaves).
    of_session: HashMap<Id, Vec<Id>>,
}

impl AwaySubscription {
    fn described(&self, id: Id) -> LocalSubscription {
        LocalSubscription {
            id,
            policy: self.policy,
            uri: self.uri.clone(),
            created_us: self.created_us,
            sessions: self.sessions.iter().copied().collect(),
        }
    }
}

impl Away {
    fn subscribe(&mut self, op: SubscriptionOp) -> bool {
        if !self.members.contains_key(&op.session) {
            // A session that left within the same delta (or one this node
            // never heard of: the next snapshot settles it).
            return false;
        }
        let entry = self.subscriptions.entry(op.id).or_insert_with(|| AwaySubscription {
            policy: op.policy,
            uri: op.uri,
            created_us: op.created_us,
            sessions: HashSet::new(),
        });
        if !entry.sessions.insert(op.session) {
            return false;
        }
        self.of_session.entry(op.session).or_default().push(op.id);
        true
    }

    /// Takes `session` off subscription `id`; its description when it was on.
    fn unsubscribe(&mut self, session: Id, id: Id) -> Option<(MatchPolicy, Arc<str>)> {
        let sub = self.subscriptions.get_mut(&id)?;
        if !sub.sessions.remove(&session) {
            return None;
        }
        let about = (sub.policy, sub.uri.clone());
        if sub.sessions.is_empty() {
            self.subscriptions.remove(&id);
        }
        if let Some(ids) = self.of_session.get_mut(&session) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.of_session.remove(&session);
            }
        }
        Some(about)
    }

    /// Every (session, subscription) pair.
    fn pairs(&self) -> impl Iterator<Item = (Id, Id)> + '_ {
        self.subscriptions.iter().flat_map(|(id, s)| s.sessions.iter().map(move |session| (*session, *id)))
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.subscriptions.is_empty()
    }
}

/// A change of the realm's subscriptions, for the subscription meta events.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SubscriptionChange {
    /// `session` subscribed; `created`: the subscription had no other
    /// subscriber in the cluster (as this node knows it).
    Subscribed { session: Id, id: Id, policy: MatchPolicy, uri: Arc<str>, created_us: u64, created: bool },
    /// `session` left; `deleted`: it was the last subscriber.
    Unsubscribed { session: Id, id: Id, policy: MatchPolicy, uri: Arc<str>, deleted: bool },
}

/// The members of one realm, and the other nodes' subscriptions (this
/// node's are in its broker).
#[derive(Default)]
pub(crate) struct Members {
    inner: Mutex<Inner>,
    /// Bumped whenever an exact subscription gains or loses a session, on
    /// any node: presence recomputes only after a change.
    generation: AtomicU64,
    /// This node's sessions' subscriptions to subscription meta events
    /// (none: no event is made, one load per subscribe).
    listeners: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    /// This node's sessions.
    here: HashMap<Id, (Member, Arc<SessionHandle>)>,
    /// The other nodes' sessions and subscriptions, by node.
    away: HashMap<u64, Away>,
}

/// Another node's part of a realm, as a delta brings it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Delta {
    pub joined: Vec<Member>,
    pub left: Vec<Id>,
    pub subscribed: Vec<SubscriptionOp>,
    /// (session, subscription)
    pub unsubscribed: Vec<(Id, Id)>,
}

impl Members {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a session of this node subscribes to a subscription meta event.
    pub(crate) fn listened(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn listener_added(&self) {
        self.listeners.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn listener_removed(&self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }

    /// Changes of exact subscriptions so far (see [`Members::touched`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// An exact subscription gained or lost a session.
    pub(crate) fn touched(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A session of this node joined.
    pub(crate) fn join(&self, member: Member, handle: Arc<SessionHandle>) {
        self.lock().here.insert(member.session, (member, handle));
    }

    /// A session of this node left; its entry, if it had one.
    pub(crate) fn leave(&self, session: Id) -> Option<Member> {
        self.lock().here.remove(&session).map(|(m, _)| m)
    }

    /// Changes a member of this node; the changed member, if it is here.
    pub(crate) fn update(&self, session: Id, change: impl FnOnce(&mut Member)) -> Option<Member> {
        let mut inner = self.lock();
        let (member, _) = inner.here.get_mut(&session)?;
        change(member);
        Some(member.clone())
    }

    /// This node's members (for a snapshot).
    pub(crate) fn here(&self) -> Vec<Member> {
        self.lock().here.values().map(|(m, _)| m.clone()).collect()
    }

    /// Applies another node's changes; the subscription changes they make
    /// (`local`: how many sessions of this node hold a subscription).
    pub(crate) fn apply(&self, node: u64, delta: Delta, local: impl Fn(Id) -> usize) -> Vec<SubscriptionChange> {
        let mut inner = self.lock();
        let mut changes = Vec::new();
        let mut touched = false;
        for m in delta.joined {
            inner.away.entry(node).or_default().members.insert(m.session, m);
        }
        for op in delta.subscribed {
            touched |= op.policy == MatchPolicy::Exact;
            let before = subscribers_away(&inner, op.id) + local(op.id);
            let (session, id, policy, uri, created_us) = (op.session, op.id, op.policy, op.uri.clone(), op.created_us);
            if inner.away.entry(node).or_default().subscribe(op) {
                changes.push(SubscriptionChange::Subscribed { session, id, policy, uri, created_us, created: before == 0 });
            }
        }
        for (session, id) in delta.unsubscribed {
            self.drop_pair(&mut inner, node, session, id, &local, &mut changes, &mut touched);
        }
        for session in delta.left {
            let ids = inner.away.get_mut(&node).and_then(|a| {
                a.members.remove(&session);
                a.of_session.get(&session).cloned()
            });
            for id in ids.unwrap_or_default() {
                self.drop_pair(&mut inner, node, session, id, &local, &mut changes, &mut touched);
            }
        }
        if inner.away.get(&node).is_some_and(Away::is_empty) {
            inner.away.remove(&node);
        }
        if touched {
            self.touched();
        }
        changes
    }

    #[allow(clippy::too_many_arguments)]
    fn drop_pair(
        &self,
        inner: &mut Inner,
        node: u64,
        session: Id,
        id: Id,
        local: &impl Fn(Id) -> usize,
        changes: &mut Vec<SubscriptionChange>,
        touched: &mut bool,
    ) {
        let Some((policy, uri)) = inner.away.get_mut(&node).and_then(|a| a.unsubscribe(session, id)) else { return };
        *touched |= policy == MatchPolicy::Exact;
        let deleted = subscribers_away(inner, id) + local(id) == 0;
        changes.push(SubscriptionChange::Unsubscribed { session, id, policy, uri, deleted });
    }

    /// Replaces another node's part (its snapshot); the subscription
    /// changes that makes.
    pub(crate) fn replace(
        &self,
        node: u64,
        members: Vec<Member>,
        subscriptions: Vec<LocalSubscription>,
        local: impl Fn(Id) -> usize,
    ) -> Vec<SubscriptionChange> {
        let old = self.lock().away.get(&node).map(|a| a.pairs().collect::<HashSet<_>>()).unwrap_or_default();
        let mut new = HashSet::new();
        let mut ops = Vec::new();
        for s in subscriptions {
            for session in &s.sessions {
                new.insert((*session, s.id));
                if !old.contains(&(*session, s.id)) {
                    ops.push(SubscriptionOp { session: *session, id: s.id, policy: s.policy, uri: s.uri.clone(), created_us: s.created_us });
                }
            }
        }
        let gone: Vec<(Id, Id)> = old.difference(&new).copied().collect();
        let left = {
            let mut inner = self.lock();
            let away = inner.away.entry(node).or_default();
            let kept: HashSet<Id> = members.iter().map(|m| m.session).collect();
            let left: Vec<Id> = away.members.keys().filter(|s| !kept.contains(s)).copied().collect();
            for m in members {
                away.members.insert(m.session, m);
            }
            left
        };
        self.apply(node, Delta { subscribed: ops, unsubscribed: gone, left, ..Delta::default() }, local)
    }

    /// Forgets a node; returns its members, and the subscription changes.
    pub(crate) fn forget(&self, node: u64, local: impl Fn(Id) -> usize) -> (Vec<Member>, Vec<SubscriptionChange>) {
        let Some(members) = self.lock().away.get(&node).map(|a| a.members.values().cloned().collect::<Vec<_>>()) else {
            return (Vec::new(), Vec::new());
        };
        let left = members.iter().map(|m| m.session).collect();
        let changes = self.apply(node, Delta { left, ..Delta::default() }, local);
        self.lock().away.remove(&node);
        (members, changes)
    }

    /// Members everywhere whose authrole passes `filter` (none: all).
    pub(crate) fn select(&self, filter: Option<&[String]>, mut pick: impl FnMut(&Member) -> bool) -> Vec<Member> {
        let inner = self.lock();
        let admitted = |m: &Member| filter.is_none_or(|roles| roles.contains(&m.authrole));
        inner
            .here
            .values()
            .map(|(m, _)| m)
            .chain(inner.away.values().flat_map(|n| n.members.values()))
            .filter(|m| admitted(m) && pick(m))
            .cloned()
            .collect()
    }

    /// How many members pass `filter`.
    pub(crate) fn count(&self, filter: Option<&[String]>) -> usize {
        let inner = self.lock();
        match filter {
            None => inner.here.len() + inner.away.values().map(|a| a.members.len()).sum::<usize>(),
            Some(roles) => {
                let admitted = |m: &Member| roles.contains(&m.authrole);
                inner.here.values().filter(|(m, _)| admitted(m)).count()
                    + inner.away.values().flat_map(|n| n.members.values()).filter(|m| admitted(m)).count()
            }
        }
    }

    /// Finds a session anywhere.
    pub(crate) fn find(&self, session: Id) -> Option<Member> {
        let inner = self.lock();
        if let Some((m, _)) = inner.here.get(&session) {
            return Some(m.clone());
        }
        inner.away.values().find_map(|a| a.members.get(&session).cloned())
    }

    /// This node's sessions that `pick` selects, with their handles.
    pub(crate) fn here_where(&self, mut pick: impl FnMut(&Member) -> bool) -> Vec<(Member, Arc<SessionHandle>)> {
        self.lock().here.values().filter(|(m, _)| pick(m)).map(|(m, h)| (m.clone(), h.clone())).collect()
    }

    /// The other nodes' subscriptions that `keep` selects by (policy, URI),
    /// merged by id (sessions of every node; the earliest creation).
    pub(crate) fn subscriptions_away(&self, mut keep: impl FnMut(MatchPolicy, &str) -> bool) -> Vec<LocalSubscription> {
        let inner = self.lock();
        let mut merged = std::collections::BTreeMap::new();
        for (id, s) in inner.away.values().flat_map(|a| &a.subscriptions) {
            if keep(s.policy, &s.uri) {
                merge(&mut merged, s.described(*id));
            }
        }
        merged.into_values().collect()
    }

    /// How many sessions of other nodes hold subscription `id`.
    pub(crate) fn subscribers_away(&self, id: Id) -> usize {
        subscribers_away(&self.lock(), id)
    }

    /// Subscription `id` on the other nodes, merged (see [`Members::subscriptions_away`]).
    pub(crate) fn subscription_away(&self, id: Id) -> Option<LocalSubscription> {
        let inner = self.lock();
        let mut merged = std::collections::BTreeMap::new();
        for s in inner.away.values().filter_map(|a| a.subscriptions.get(&id)) {
            merge(&mut merged, s.described(id));
        }
        merged.remove(&id)
    }

    /// The authids (and display names) of the other nodes' sessions on
    /// subscription `id` (which must be (policy, uri)).
    pub(crate) fn subscriber_authids_away(&self, id: Id, policy: MatchPolicy, uri: &str, mut each: impl FnMut(&str, Option<&str>)) {
        let inner = self.lock();
        for away in inner.away.values() {
            if let Some(s) = away.subscriptions.get(&id).filter(|s| s.policy == policy && &*s.uri == uri) {
                for session in &s.sessions {
                    if let Some(m) = away.members.get(session) {
                        each(&m.authid, m.name.as_deref());
                    }
                }
            }
        }
    }
}

/// The realm's application subscriptions (not the router's own) on every
/// node that `keep` selects by (policy, URI), merged by id.
pub(crate) fn everywhere(
    realm: &crate::realm::Realm,
    mut keep: impl FnMut(MatchPolicy, &str) -> bool,
) -> std::collections::BTreeMap<Id, LocalSubscription> {
    let mut keep = |policy: MatchPolicy, uri: &str| !telegraphy_bus::is_reserved_topic(uri) && keep(policy, uri);
    let mut all: std::collections::BTreeMap<Id, LocalSubscription> = realm.broker.subscriptions(&mut keep).into_iter().map(|s| (s.id, s)).collect();
    for s in realm.members.subscriptions_away(&mut keep) {
        merge(&mut all, s);
    }
    all
}

/// Adds another node's part of a subscription: its sessions, and the
/// earliest creation.
pub(crate) fn merge(all: &mut std::collections::BTreeMap<Id, LocalSubscription>, s: LocalSubscription) {
    match all.get_mut(&s.id) {
        Some(known) => {
            known.created_us = known.created_us.min(s.created_us);
            known.sessions.extend(s.sessions);
        }
        None => {
            all.insert(s.id, s);
        }
    }
}

/// How many sessions of other nodes hold subscription `id`.
fn subscribers_away(inner: &Inner, id: Id) -> usize {
    inner.away.values().filter_map(|a| a.subscriptions.get(&id)).map(|s| s.sessions.len()).sum()
}

/// Closes a session of this node from outside its task: GOODBYE with
/// `reason` (and `message`, when given), then the WebSocket close.
pub(crate) fn kill(handle: &SessionHandle, reason: &str, message: &str) {
    let mut details = Dict::new();
    if !message.is_empty() {
        details.insert("message".into(), Value::Str(message.into()));
    }
    if let Some(frame) = crate::wire::encode_frame(handle.serialization, &telegraphy_wamp::Message::Goodbye { details, reason: reason.into() }) {
        handle.outbox.set_last_words(frame);
    }
    handle.outbox.close(telegraphy_wamp::codes::close::NORMAL);
}

/// Closes this node's sessions of `realm` that `target` names, except `except`.
pub(crate) fn kill_here(realm: &crate::realm::Realm, target: &crate::cluster::KillTarget, except: Id, reason: &str, message: &str) -> Vec<Id> {
    use crate::cluster::KillTarget;
    let picked = realm.members.here_where(|m| {
        m.session != except
            && match target {
                KillTarget::Session(id) => m.session == *id,
                KillTarget::Authid(a) => m.authid == *a,
                KillTarget::Authrole(r) => m.authrole == *r,
                KillTarget::All => true,
            }
    });
    picked
        .into_iter()
        .map(|(m, handle)| {
            kill(&handle, reason, message);
            m.session
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(session: Id) -> Member {
        Member {
            session,
            authid: format!("u{session}"),
            authrole: "user".into(),
            authmethod: "ticket".into(),
            authprovider: "jwt".into(),
            name: None,
            testaments: vec![],
        }
    }

    fn op(session: Id, id: Id) -> SubscriptionOp {
        SubscriptionOp { session, id, policy: MatchPolicy::Exact, uri: Arc::from("t.x"), created_us: 5 }
    }

    fn kinds(changes: &[SubscriptionChange]) -> Vec<(&'static str, Id, bool)> {
        changes
            .iter()
            .map(|c| match c {
                SubscriptionChange::Subscribed { session, created, .. } => ("subscribed", *session, *created),
                SubscriptionChange::Unsubscribed { session, deleted, .. } => ("unsubscribed", *session, *deleted),
            })
            .collect()
    }

    #[test]
    fn deltas_snapshots_and_a_lost_node_keep_the_directory_and_say_what_changed() {
        let m = Members::default();
        let nobody_here = |_| 0;
        let g0 = m.generation();
        // Node 7: two sessions join and subscribe; the first creates it.
        let delta = Delta { joined: vec![member(1), member(2)], subscribed: vec![op(1, 10), op(2, 10)], ..Delta::default() };
        assert_eq!(kinds(&m.apply(7, delta, nobody_here)), [("subscribed", 1, true), ("subscribed", 2, false)]);
        assert!(m.generation() > g0, "an exact subscription changed: presence looks again");
        // A session this node sessions already hold: not created by node 8.
        let delta = Delta { joined: vec![member(3)], subscribed: vec![op(3, 10), op(99, 10)], ..Delta::default() };
        assert_eq!(kinds(&m.apply(8, delta, |_| 1)), [("subscribed", 3, false)], "session 99 is unknown: ignored");
        assert_eq!(m.subscription_away(10).map(|s| s.sessions.len()), Some(3));
        let mut authids = Vec::new();
        m.subscriber_authids_away(10, MatchPolicy::Exact, "t.x", |a, _| authids.push(a.to_string()));
        authids.sort();
        assert_eq!(authids, ["u1", "u2", "u3"]);
        m.subscriber_authids_away(10, MatchPolicy::Prefix, "t.x", |_, _| panic!("another (policy, uri) under that id"));
        // Session 1 leaves (its subscription goes with it); 2 unsubscribes.
        let delta = Delta { left: vec![1], unsubscribed: vec![(2, 10)], ..Delta::default() };
        assert_eq!(kinds(&m.apply(7, delta, nobody_here)), [("unsubscribed", 2, false), ("unsubscribed", 1, false)]);
        assert_eq!(m.count(None), 2, "sessions 2 (node 7) and 3 (node 8)");
        // Node 8's snapshot: session 3 gone, session 4 there on another subscription.
        let snapshot = vec![LocalSubscription { id: 11, policy: MatchPolicy::Prefix, uri: Arc::from("t"), created_us: 9, sessions: vec![4] }];
        let changes = m.replace(8, vec![member(4)], snapshot, nobody_here);
        let mut got = kinds(&changes);
        got.sort();
        assert_eq!(got, [("subscribed", 4, true), ("unsubscribed", 3, true)]);
        assert_eq!(m.find(3), None);
        // Node 8 is lost: its sessions and subscriptions with it.
        let (members, changes) = m.forget(8, nobody_here);
        assert_eq!(members, vec![member(4)]);
        assert_eq!(kinds(&changes), [("unsubscribed", 4, true)]);
        assert_eq!((m.count(None), m.subscriptions_away(|_, _| true).len()), (1, 0), "session 2 of node 7 is left, on nothing");
    }
}
