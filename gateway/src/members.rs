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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use telegraphy_wamp::{dict, Dict, Id, Value};

use crate::broker::SessionHandle;

/// The session meta API's URIs start with this.
pub(crate) const META_PREFIX: &str = "wamp.session.";
/// The meta event of a session joining a realm.
pub(crate) const ON_JOIN: &str = "wamp.session.on_join";
/// The meta event of a session leaving a realm.
pub(crate) const ON_LEAVE: &str = "wamp.session.on_leave";

/// Whether a session of this node subscribes to `realm`'s session meta events.
pub(crate) fn listened_here(realm: &crate::realm::Realm) -> bool {
    use telegraphy_wamp::MatchPolicy;
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
        Some(Member { session, authid, authrole, authmethod, authprovider, testaments })
    }
}

/// The members of one realm.
#[derive(Default)]
pub(crate) struct Members {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// This node's sessions.
    here: HashMap<Id, (Member, Arc<SessionHandle>)>,
    /// The other nodes' sessions, by node.
    away: HashMap<u64, HashMap<Id, Member>>,
}

impl Members {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Applies another node's changes.
    pub(crate) fn apply(&self, node: u64, joined: Vec<Member>, left: &[Id]) {
        let mut inner = self.lock();
        let of_node = inner.away.entry(node).or_default();
        for id in left {
            of_node.remove(id);
        }
        for m in joined {
            of_node.insert(m.session, m);
        }
        if of_node.is_empty() {
            inner.away.remove(&node);
        }
    }

    /// Replaces another node's members (its snapshot).
    pub(crate) fn replace(&self, node: u64, members: Vec<Member>) {
        let mut inner = self.lock();
        if members.is_empty() {
            inner.away.remove(&node);
        } else {
            inner.away.insert(node, members.into_iter().map(|m| (m.session, m)).collect());
        }
    }

    /// Forgets a node; returns its members.
    pub(crate) fn forget(&self, node: u64) -> Vec<Member> {
        self.lock().away.remove(&node).map(|m| m.into_values().collect()).unwrap_or_default()
    }

    /// Members everywhere whose authrole passes `filter` (none: all).
    pub(crate) fn select(&self, filter: Option<&[String]>, mut pick: impl FnMut(&Member) -> bool) -> Vec<Member> {
        let inner = self.lock();
        let admitted = |m: &Member| filter.is_none_or(|roles| roles.contains(&m.authrole));
        inner.here.values().map(|(m, _)| m).chain(inner.away.values().flat_map(|n| n.values())).filter(|m| admitted(m) && pick(m)).cloned().collect()
    }

    /// How many members pass `filter`.
    pub(crate) fn count(&self, filter: Option<&[String]>) -> usize {
        let inner = self.lock();
        match filter {
            None => inner.here.len() + inner.away.values().map(HashMap::len).sum::<usize>(),
            Some(roles) => {
                let admitted = |m: &Member| roles.contains(&m.authrole);
                inner.here.values().filter(|(m, _)| admitted(m)).count()
                    + inner.away.values().flat_map(|n| n.values()).filter(|m| admitted(m)).count()
            }
        }
    }

    /// Finds a session anywhere.
    pub(crate) fn find(&self, session: Id) -> Option<Member> {
        let inner = self.lock();
        if let Some((m, _)) = inner.here.get(&session) {
            return Some(m.clone());
        }
        inner.away.values().find_map(|members| members.get(&session).cloned())
    }

    /// This node's sessions that `pick` selects, with their handles.
    pub(crate) fn here_where(&self, mut pick: impl FnMut(&Member) -> bool) -> Vec<(Member, Arc<SessionHandle>)> {
        self.lock().here.values().filter(|(m, _)| pick(m)).map(|(m, h)| (m.clone(), h.clone())).collect()
    }
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
