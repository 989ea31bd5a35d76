//! Calls across the cluster: what each node tells the others about its
//! registrations, and the messages a call exchanges between the caller's
//! node and the callee's, over the bus's control channel
//! ([`telegraphy_bus::control`]).
//!
//! * **Announcements**: every node broadcasts a snapshot of its
//!   registrations (per realm: policy, URI, invoke policy, callees, first
//!   and last registration time) every [`HEARTBEAT`], and at once when they
//!   change (at most every [`MIN_GAP`]). A node that has not been heard
//!   from for [`EXPIRY`] is dropped: its registrations go and the calls in
//!   flight to it fail. A stopping node says goodbye.
//! * **Calls**: the caller's node picks the callee's node (the invocation
//!   policy over every callee of the cluster), and sends it the call; that
//!   node invokes its own callee and sends back progressive results, the
//!   result or the error. Cancels and timeouts go the other way. The
//!   caller's node owns the call: its timeout, its metrics, and failing it
//!   when the callee's node is lost.
//! * **Bounds**: messages wait for the bus in one queue of [`OUTBOX`]
//!   messages; a call that finds it full fails at once
//!   (`telegraphy.error.callee_unavailable`). A callee's node that dies is
//!   noticed by the next message sent to it (the bus reports that nobody
//!   listens; nodes awaiting answers from it ping it every [`HEARTBEAT`]),
//!   so its pending calls fail within about a heartbeat when its broker
//!   connection closed with it, and within [`EXPIRY`] + [`HEARTBEAT`] when
//!   it just went silent (a partition).
//!
//! Messages are envelopes of the control realm whose `args` are a list:
//! a kind word, then its fields (see [`Control`]). The one decoder refuses
//! anything else (logged once, counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telegraphy_bus::control::{self, ALL_NODES, CONTROL_REALM};
use telegraphy_bus::inbound::BusSessions;
use telegraphy_bus::{is_reserved_topic, Bus, Delivery, Envelope, PublishError};
use telegraphy_wamp::{Dict, Id, MatchPolicy, Value};
use tokio::sync::{mpsc, Notify};

use crate::broker::LocalSubscription;
use crate::dealer::{CancelMode, Invoke};
use crate::members::{Delta, Member, SubscriptionOp};
use crate::node::Node;

/// How often a node announces its registrations (its heartbeat).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone.
pub(crate) const EXPIRY: Duration = Duration::from_secs(3);
/// How often a node sends the sessions that joined and left its realms.
pub(crate) const DELTA_EVERY: Duration = Duration::from_millis(100);
/// Least time between two snapshot requests to one node.
const ASK_AGAIN: Duration = Duration::from_secs(2);
/// Least time between two announcements made because something changed.
const MIN_GAP: Duration = Duration::from_millis(20);
/// Control messages waiting for the bus, at most.
pub(crate) const OUTBOX: usize = 10_000;
/// Messages published together, at most.
const BATCH: usize = 256;

/// One registration as its node announces it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Announced {
    pub policy: MatchPolicy,
    pub uri: String,
    pub invoke: Invoke,
    /// Callees on that node.
    pub callees: u64,
    /// When its first and last callee registered (µs since the epoch).
    pub first_at: u64,
    pub last_at: u64,
}

/// A call sent to the callee's node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RemoteCall {
    /// The caller's node and its id for the call.
    pub from: u64,
    pub call: Id,
    pub procedure: String,
    pub args: Vec<Value>,
    pub kwargs: Dict,
    pub receive_progress: bool,
    /// The caller asked to be disclosed (or its role discloses it).
    pub disclose: bool,
    /// The caller's session, authid and authrole.
    pub caller: (Id, String, String),
}

/// What goes back to the caller's node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// A RESULT (progressive or final).
    Result { progress: bool, args: Vec<Value>, kwargs: Dict },
    /// An ERROR.
    Error { uri: String, details: Dict, args: Vec<Value>, kwargs: Dict },
}

/// A control message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Control {
    /// A node's registrations, per realm; `epoch` counts its bus sessions
    /// (a new one: messages to and from it may have been lost); `members`
    /// is the sequence number of its last [`Control::Members`].
    Registry {
        from: u64,
        epoch: u64,
        members: u64,
        realms: Vec<(String, Vec<Announced>)>,
        /// Realms where a session of that node subscribes to session meta events.
        listening: Vec<String>,
    },
    /// Sessions that joined and left a node's realms since its last delta,
    /// and the subscriptions they made and ended.
    Members {
        from: u64,
        seq: u64,
        realms: Vec<(String, Delta)>,
    },
    /// Asks a node for a snapshot of its members (sent to its inbox).
    MembersAsk {
        from: u64,
    },
    /// Every session of a node's realms, and its subscriptions, as of delta `seq`.
    MembersSnapshot {
        from: u64,
        seq: u64,
        realms: Vec<(String, Vec<Member>, Vec<LocalSubscription>)>,
    },
    /// Close sessions of this node (`wamp.session.kill*`), except `except`.
    Kill {
        from: u64,
        realm: String,
        target: KillTarget,
        except: Id,
        reason: String,
        message: String,
    },
    /// A node stops: forget it now.
    Bye {
        from: u64,
    },
    /// Are you there? Sent to nodes this one awaits answers from: when
    /// nobody listens on its inbox any more, the bus says so at once.
    Ping {
        from: u64,
    },
    Call {
        realm: String,
        call: RemoteCall,
    },
    Answer {
        realm: String,
        call: Id,
        answer: Answer,
    },
    /// `reason` (may be empty) goes in the callee's INTERRUPT.
    Cancel {
        realm: String,
        from: u64,
        call: Id,
        mode: CancelMode,
        reason: String,
    },
}

/// Which sessions a [`Control::Kill`] closes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KillTarget {
    Session(Id),
    Authid(String),
    Authrole(String),
    All,
}

fn members_value(members: Vec<Member>) -> Value {
    Value::List(members.iter().map(Member::to_value).collect())
}

fn members_of(v: Value) -> Option<Vec<Member>> {
    list(v)?.into_iter().map(Member::from_value).collect()
}

fn policy_name(p: MatchPolicy) -> &'static str {
    match p {
        MatchPolicy::Exact => "exact",
        MatchPolicy::Prefix => "prefix",
        MatchPolicy::Wildcard => "wildcard",
    }
}

fn mode_name(m: CancelMode) -> &'static str {
    match m {
        CancelMode::Skip => "skip",
        CancelMode::Kill => "kill",
        CancelMode::KillNoWait => "killnowait",
    }
}

impl Control {
    /// The envelope's `args`.
    pub(crate) fn encode(self) -> Vec<Value> {
        let s = |s: &str| Value::Str(s.to_string());
        match self {
            Control::Registry { from, epoch, members, realms, listening } => {
                let realms = realms
                    .into_iter()
                    .map(|(realm, regs)| {
                        let regs = regs
                            .into_iter()
                            .map(|a| {
                                Value::List(vec![
                                    s(policy_name(a.policy)),
                                    Value::Str(a.uri),
                                    s(a.invoke.name()),
                                    Value::UInt(a.callees),
                                    Value::UInt(a.first_at),
                                    Value::UInt(a.last_at),
                                ])
                            })
                            .collect();
                        Value::List(vec![Value::Str(realm), Value::List(regs)])
                    })
                    .collect();
                let listening = Value::List(listening.into_iter().map(Value::Str).collect());
                vec![s("registry"), Value::UInt(from), Value::UInt(epoch), Value::UInt(members), Value::List(realms), listening]
            }
            Control::Members { from, seq, realms } => {
                let realms = realms
                    .into_iter()
                    .map(|(realm, d)| {
                        let subscribed = d
                            .subscribed
                            .into_iter()
                            .map(|op| {
                                Value::List(vec![
                                    Value::UInt(op.session),
                                    Value::UInt(op.id),
                                    s(policy_name(op.policy)),
                                    Value::Str(op.uri.to_string()),
                                    Value::UInt(op.created_us),
                                ])
                            })
                            .collect();
                        let unsubscribed = d.unsubscribed.into_iter().flat_map(|(session, id)| [Value::UInt(session), Value::UInt(id)]).collect();
                        Value::List(vec![
                            Value::Str(realm),
                            members_value(d.joined),
                            Value::List(d.left.into_iter().map(Value::UInt).collect()),
                            Value::List(subscribed),
                            Value::List(unsubscribed),
                        ])
                    })
                    .collect();
                vec![s("members"), Value::UInt(from), Value::UInt(seq), Value::List(realms)]
            }
            Control::MembersAsk { from } => vec![s("members?"), Value::UInt(from)],
            Control::MembersSnapshot { from, seq, realms } => {
                let realms = realms
                    .into_iter()
                    .map(|(realm, members, subscriptions)| {
                        let subscriptions = subscriptions
                            .into_iter()
                            .map(|sub| {
                                Value::List(vec![
                                    Value::UInt(sub.id),
                                    s(policy_name(sub.policy)),
                                    Value::Str(sub.uri.to_string()),
                                    Value::UInt(sub.created_us),
                                    Value::List(sub.sessions.into_iter().map(Value::UInt).collect()),
                                ])
                            })
                            .collect();
                        Value::List(vec![Value::Str(realm), members_value(members), Value::List(subscriptions)])
                    })
                    .collect();
                vec![s("members!"), Value::UInt(from), Value::UInt(seq), Value::List(realms)]
            }
            Control::Kill { from, realm, target, except, reason, message } => {
                let (kind, value) = match target {
                    KillTarget::Session(id) => ("session", Value::UInt(id)),
                    KillTarget::Authid(a) => ("authid", Value::Str(a)),
                    KillTarget::Authrole(r) => ("authrole", Value::Str(r)),
                    KillTarget::All => ("all", Value::Null),
                };
                vec![s("kill"), Value::UInt(from), Value::Str(realm), s(kind), value, Value::UInt(except), Value::Str(reason), Value::Str(message)]
            }
            Control::Bye { from } => vec![s("bye"), Value::UInt(from)],
            Control::Ping { from } => vec![s("ping"), Value::UInt(from)],
            Control::Call { realm, call: c } => vec![
                s("call"),
                Value::Str(realm),
                Value::UInt(c.from),
                Value::UInt(c.call),
                Value::Str(c.procedure),
                Value::List(c.args),
                Value::Dict(c.kwargs),
                Value::Bool(c.receive_progress),
                Value::Bool(c.disclose),
                Value::UInt(c.caller.0),
                Value::Str(c.caller.1),
                Value::Str(c.caller.2),
            ],
            Control::Answer { realm, call, answer: Answer::Result { progress, args, kwargs } } => {
                vec![s("result"), Value::Str(realm), Value::UInt(call), Value::Bool(progress), Value::List(args), Value::Dict(kwargs)]
            }
            Control::Answer { realm, call, answer: Answer::Error { uri, details, args, kwargs } } => {
                vec![s("error"), Value::Str(realm), Value::UInt(call), Value::Str(uri), Value::Dict(details), Value::List(args), Value::Dict(kwargs)]
            }
            Control::Cancel { realm, from, call, mode, reason } => {
                vec![s("cancel"), Value::Str(realm), Value::UInt(from), Value::UInt(call), s(mode_name(mode)), Value::Str(reason)]
            }
        }
    }

    /// Reads a message's `args`; `None` for anything else.
    pub(crate) fn decode(args: Vec<Value>) -> Option<Control> {
        let mut it = args.into_iter();
        let kind = str_of(it.next()?)?;
        let message = match kind.as_str() {
            "registry" => {
                let (from, epoch, members) = (uint(it.next()?)?, uint(it.next()?)?, uint(it.next()?)?);
                let mut realms = Vec::new();
                for realm in list(it.next()?)? {
                    let mut r = list(realm)?.into_iter();
                    let name = str_of(r.next()?)?;
                    let mut regs = Vec::new();
                    for reg in list(r.next()?)? {
                        let mut f = list(reg)?.into_iter();
                        regs.push(Announced {
                            policy: MatchPolicy::parse(&str_of(f.next()?)?)?,
                            uri: str_of(f.next()?)?,
                            invoke: Invoke::parse(&str_of(f.next()?)?)?,
                            callees: uint(f.next()?)?,
                            first_at: uint(f.next()?)?,
                            last_at: uint(f.next()?)?,
                        });
                    }
                    realms.push((name, regs));
                }
                let listening = list(it.next()?)?.into_iter().map(str_of).collect::<Option<Vec<String>>>()?;
                Control::Registry { from, epoch, members, realms, listening }
            }
            "members" => {
                let (from, seq) = (uint(it.next()?)?, uint(it.next()?)?);
                let mut realms = Vec::new();
                for realm in list(it.next()?)? {
                    let mut r = list(realm)?.into_iter();
                    let name = str_of(r.next()?)?;
                    let joined = members_of(r.next()?)?;
                    let left = list(r.next()?)?.into_iter().map(uint).collect::<Option<Vec<Id>>>()?;
                    let mut subscribed = Vec::new();
                    for op in r.next().map(list).unwrap_or(Some(Vec::new()))? {
                        let mut f = list(op)?.into_iter();
                        subscribed.push(SubscriptionOp {
                            session: uint(f.next()?)?,
                            id: uint(f.next()?)?,
                            policy: MatchPolicy::parse(&str_of(f.next()?)?)?,
                            uri: Arc::from(str_of(f.next()?)?),
                            created_us: uint(f.next()?)?,
                        });
                    }
                    let flat = r.next().map(list).unwrap_or(Some(Vec::new()))?.into_iter().map(uint).collect::<Option<Vec<Id>>>()?;
                    if flat.len() % 2 != 0 {
                        return None;
                    }
                    let unsubscribed = flat.chunks(2).map(|p| (p[0], p[1])).collect();
                    realms.push((name, Delta { joined, left, subscribed, unsubscribed }));
                }
                Control::Members { from, seq, realms }
            }
            "members?" => Control::MembersAsk { from: uint(it.next()?)? },
            "members!" => {
                let (from, seq) = (uint(it.next()?)?, uint(it.next()?)?);
                let mut realms = Vec::new();
                for realm in list(it.next()?)? {
                    let mut r = list(realm)?.into_iter();
                    let (name, members) = (str_of(r.next()?)?, members_of(r.next()?)?);
                    let mut subscriptions = Vec::new();
                    for sub in r.next().map(list).unwrap_or(Some(Vec::new()))? {
                        let mut f = list(sub)?.into_iter();
                        subscriptions.push(LocalSubscription {
                            id: uint(f.next()?)?,
                            policy: MatchPolicy::parse(&str_of(f.next()?)?)?,
                            uri: Arc::from(str_of(f.next()?)?),
                            created_us: uint(f.next()?)?,
                            sessions: list(f.next()?)?.into_iter().map(uint).collect::<Option<Vec<Id>>>()?,
                        });
                    }
                    realms.push((name, members, subscriptions));
                }
                Control::MembersSnapshot { from, seq, realms }
            }
            "kill" => {
                let (from, realm) = (uint(it.next()?)?, str_of(it.next()?)?);
                let target = match (str_of(it.next()?)?.as_str(), it.next()?) {
                    ("session", Value::UInt(id)) => KillTarget::Session(id),
                    ("authid", Value::Str(a)) => KillTarget::Authid(a),
                    ("authrole", Value::Str(r)) => KillTarget::Authrole(r),
                    ("all", Value::Null) => KillTarget::All,
                    _ => return None,
                };
                Control::Kill { from, realm, target, except: uint(it.next()?)?, reason: str_of(it.next()?)?, message: str_of(it.next()?)? }
            }
            "bye" => Control::Bye { from: uint(it.next()?)? },
            "ping" => Control::Ping { from: uint(it.next()?)? },
            "call" => {
                let realm = str_of(it.next()?)?;
                let call = RemoteCall {
                    from: uint(it.next()?)?,
                    call: uint(it.next()?)?,
                    procedure: str_of(it.next()?)?,
                    args: list(it.next()?)?,
                    kwargs: dict(it.next()?)?,
                    receive_progress: boolean(it.next()?)?,
                    disclose: boolean(it.next()?)?,
                    caller: (uint(it.next()?)?, str_of(it.next()?)?, str_of(it.next()?)?),
                };
                Control::Call { realm, call }
            }
            "result" => {
                let (realm, call) = (str_of(it.next()?)?, uint(it.next()?)?);
                let answer = Answer::Result { progress: boolean(it.next()?)?, args: list(it.next()?)?, kwargs: dict(it.next()?)? };
                Control::Answer { realm, call, answer }
            }
            "error" => {
                let (realm, call) = (str_of(it.next()?)?, uint(it.next()?)?);
                let answer =
                    Answer::Error { uri: str_of(it.next()?)?, details: dict(it.next()?)?, args: list(it.next()?)?, kwargs: dict(it.next()?)? };
                Control::Answer { realm, call, answer }
            }
            "cancel" => Control::Cancel {
                realm: str_of(it.next()?)?,
                from: uint(it.next()?)?,
                call: uint(it.next()?)?,
                mode: CancelMode::parse(&str_of(it.next()?)?)?,
                reason: str_of(it.next()?)?,
            },
            _ => return None,
        };
        Some(message)
    }
}

fn str_of(v: Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s),
        _ => None,
    }
}
fn uint(v: Value) -> Option<u64> {
    match v {
        Value::UInt(n) => Some(n),
        _ => None,
    }
}
fn boolean(v: Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(b),
        _ => None,
    }
}
fn list(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::List(l) => Some(l),
        _ => None,
    }
}
fn dict(v: Value) -> Option<Dict> {
    match v {
        Value::Dict(d) => Some(d),
        _ => None,
    }
}

/// This node's changes of one realm since its last delta.
#[derive(Default)]
struct Pending {
    joined: Vec<Member>,
    left: Vec<Id>,
    /// (session, subscription) → the subscription (subscribed) or none
    /// (unsubscribed): the last change of a pair is the one that counts.
    subscriptions: HashMap<(Id, Id), Option<SubscriptionOp>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && self.subscriptions.is_empty()
    }

    fn into_delta(self) -> Delta {
        let mut delta = Delta { joined: self.joined, left: self.left, ..Delta::default() };
        for ((session, id), op) in self.subscriptions {
            match op {
                Some(op) => delta.subscribed.push(op),
                None => delta.unsubscribed.push((session, id)),
            }
        }
        delta
    }
}

/// This node's members changes since its last delta, per realm.
#[derive(Default)]
struct Changes {
    seq: u64,
    pending: Vec<(String, Pending)>,
}

impl Changes {
    fn of(&mut self, realm: &str) -> &mut Pending {
        let at = match self.pending.iter().position(|(r, _)| r == realm) {
            Some(at) => at,
            None => {
                self.pending.push((realm.to_string(), Pending::default()));
                self.pending.len() - 1
            }
        };
        &mut self.pending[at].1
    }
}

/// How far another node's members are known here.
#[derive(Debug, Default, Clone, Copy)]
struct SeenMembers {
    /// A snapshot (or a start from nothing) was applied.
    known: bool,
    /// The last delta applied.
    seq: u64,
    /// When a snapshot was last asked for.
    asked: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What to do when a message could not be handed to its node.
pub(crate) type OnFail = Box<dyn FnOnce(PublishError) + Send>;

struct Out {
    message: Envelope,
    on_fail: Option<OnFail>,
    /// Told once the message went to the bus (whatever the outcome).
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

/// This node's end of the control channel.
pub(crate) struct Cluster {
    /// This node's id.
    pub(crate) node: u64,
    outbox: mpsc::Sender<Out>,
    /// Registrations changed: announce them.
    changed: Notify,
    /// When each other node was last heard from, and its bus session.
    seen: Mutex<HashMap<u64, (Instant, u64)>>,
    /// This node's bus sessions.
    sessions: Arc<BusSessions>,
    /// This node's members changes not sent yet, and their sequence number.
    changes: Mutex<Changes>,
    /// How far each other node's members are known.
    members_seen: Mutex<HashMap<u64, SeenMembers>>,
    /// The realms where each other node has subscribers to session meta events.
    listeners: Mutex<HashMap<u64, Vec<String>>>,
    logged_unreadable: AtomicBool,
}

impl Cluster {
    /// Listens on this node's inbox and the all-nodes topic, and starts the
    /// task that sends messages through `bus` in order.
    pub(crate) fn start(node: u64, bus: Arc<dyn Bus>, sessions: Arc<BusSessions>) -> Arc<Cluster> {
        bus.add_interest(CONTROL_REALM, MatchPolicy::Exact, &control::node_topic(node));
        bus.add_interest(CONTROL_REALM, MatchPolicy::Exact, ALL_NODES);
        let (outbox, rx) = mpsc::channel(OUTBOX);
        tokio::spawn(send_all(bus, rx));
        Arc::new(Cluster {
            node,
            outbox,
            changed: Notify::new(),
            seen: Mutex::default(),
            sessions,
            changes: Mutex::default(),
            members_seen: Mutex::default(),
            listeners: Mutex::default(),
            logged_unreadable: AtomicBool::new(false),
        })
    }

    /// Queues `message` for node `to` (or every node, `None`); `on_fail`
    /// runs if it could not be handed to that node. `Err` (and `on_fail`
    /// not run) when the queue is full.
    pub(crate) fn send(&self, to: Option<u64>, message: Control, on_fail: Option<OnFail>) -> Result<(), PublishError> {
        let topic = to.map_or_else(|| ALL_NODES.to_string(), control::node_topic);
        self.queue(Out { message: control::message(topic, message.encode()), on_fail, sent: None })
    }

    fn queue(&self, out: Out) -> Result<(), PublishError> {
        self.outbox.try_send(out).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                PublishError::Unavailable(format!("{OUTBOX} messages to other gateway nodes are waiting for the bus already"))
            }
            mpsc::error::TrySendError::Closed(_) => PublishError::Unavailable("the node is stopping".into()),
        })
    }

    /// This node's bus session (counts reconnects).
    pub(crate) fn bus_session(&self) -> u64 {
        self.sessions.count()
    }

    /// Whether a session of another node subscribes to `realm`'s session
    /// meta events (as of its last heartbeat, or sooner: a node announces
    /// at once when one of its sessions subscribes).
    pub(crate) fn listened_elsewhere(&self, realm: &str) -> bool {
        lock(&self.listeners).values().any(|realms| realms.iter().any(|r| r == realm))
    }

    /// Registrations (or meta subscriptions) changed on this node: announce them soon.
    pub(crate) fn changed(&self) {
        self.changed.notify_one();
    }

    /// Handles a control message from the bus.
    pub(crate) fn receive(&self, node: &Node, event: &Envelope) {
        let Some(message) = Control::decode(event.args.clone()) else {
            node.metrics.cluster_unreadable.inc();
            if !self.logged_unreadable.swap(true, Ordering::Relaxed) {
                tracing::warn!(topic = %event.topic, "a control message from another node is not readable (a node of another version?); skipped (logged once)");
            }
            return;
        };
        match message {
            // What this node sent to all nodes comes back to it too.
            Control::Registry { from, .. }
            | Control::Bye { from }
            | Control::Members { from, .. }
            | Control::MembersAsk { from }
            | Control::MembersSnapshot { from, .. }
                if from == self.node => {}
            Control::Registry { from, epoch, members, realms, listening } => {
                self.members_heard(from, members);
                {
                    let mut listeners = lock(&self.listeners);
                    if listening.is_empty() {
                        listeners.remove(&from);
                    } else {
                        listeners.insert(from, listening);
                    }
                }
                let before = self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(from, (Instant::now(), epoch));
                match before {
                    None => {
                        tracing::info!(node = from, "a gateway node joined the cluster");
                        // It learns ours at once, not at our next heartbeat.
                        self.changed();
                    }
                    Some((_, was)) if was != epoch => {
                        for (_, realm) in node.realms.iter() {
                            realm.dealer.node_restarted(from);
                        }
                    }
                    Some(_) => {}
                }
                let mut realms: HashMap<String, Vec<Announced>> = realms.into_iter().collect();
                for (name, realm) in node.realms.iter() {
                    realm.dealer.node_announced(from, realms.remove(name).unwrap_or_default());
                }
            }
            Control::Bye { from } => self.lost(node, from, "it is stopping"),
            Control::Ping { .. } => {}
            Control::Members { from, seq, realms } => self.members_delta(node, from, seq, realms),
            Control::MembersAsk { from } => self.send_snapshot(node, from),
            Control::MembersSnapshot { from, seq, realms } => {
                let mut realms: HashMap<String, (Vec<Member>, Vec<LocalSubscription>)> = realms.into_iter().map(|(r, m, s)| (r, (m, s))).collect();
                for (name, realm) in node.realms.iter() {
                    let (members, subscriptions) = realms.remove(name).unwrap_or_default();
                    let changes = realm.members.replace(from, members, subscriptions, |id| realm.broker.subscribers_here(id));
                    node.subscriptions_changed(realm, changes);
                }
                *lock(&self.members_seen).entry(from).or_default() = SeenMembers { known: true, seq, asked: None };
            }
            Control::Kill { from, .. } if from == self.node => {}
            Control::Kill { realm, target, except, reason, message, .. } => {
                if let Some(r) = node.realms.get(&realm) {
                    crate::members::kill_here(r, &target, except, &reason, &message);
                }
            }
            Control::Call { realm, call } => match node.realms.get(&realm) {
                Some(r) => r.dealer.remote_call(call),
                None => tracing::debug!(realm, "a call for a realm this node does not serve; dropped"),
            },
            Control::Answer { realm, call, answer } => {
                if let Some(r) = node.realms.get(&realm) {
                    r.dealer.remote_answer(call, answer);
                }
            }
            Control::Cancel { realm, from, call, mode, reason } => {
                if let Some(r) = node.realms.get(&realm) {
                    r.dealer.remote_cancel(from, call, mode, Some(reason.as_str()).filter(|r| !r.is_empty()));
                }
            }
        }
    }

    /// Forgets node `gone`: its registrations, the calls to and from it,
    /// and its sessions (whose `wamp.session.on_leave` one node publishes:
    /// the one with the lowest id among those left).
    pub(crate) fn lost(&self, node: &Node, gone: u64, why: &str) {
        let leader = {
            let mut seen = lock(&self.seen);
            if seen.remove(&gone).is_some() {
                tracing::info!(node = gone, "a gateway node left the cluster: {why}");
            }
            seen.keys().all(|other| self.node < *other)
        };
        lock(&self.members_seen).remove(&gone);
        lock(&self.listeners).remove(&gone);
        for (_, realm) in node.realms.iter() {
            realm.dealer.node_lost(gone);
            let (members, changes) = realm.members.forget(gone, |id| realm.broker.subscribers_here(id));
            node.subscriptions_changed(realm, changes);
            if leader {
                let listened = node.meta_listened(realm);
                for m in members {
                    node.publish_testaments(&realm.name, &m);
                    if listened {
                        node.publish_meta(&realm.name, crate::members::ON_LEAVE, m.on_leave());
                    }
                }
            }
        }
    }

    /// A session of this node joined `realm`.
    pub(crate) fn member_joined(&self, realm: &crate::realm::Realm, member: Member, handle: Arc<crate::broker::SessionHandle>) {
        let mut changes = lock(&self.changes);
        realm.members.join(member.clone(), handle);
        changes.of(&realm.name).joined.push(member);
    }

    /// A member of this node changed (its testaments): the others hear of
    /// it with the next delta, as a join that replaces the entry.
    pub(crate) fn member_changed(&self, realm: &crate::realm::Realm, session: Id, change: impl FnOnce(&mut Member)) -> bool {
        let mut changes = lock(&self.changes);
        let Some(member) = realm.members.update(session, change) else { return false };
        let joined = &mut changes.of(&realm.name).joined;
        joined.retain(|m| m.session != session);
        joined.push(member);
        // Sent now, not with the next delta: a testament must be known
        // elsewhere before this node can die with it.
        self.flush_members(&mut changes);
        true
    }

    /// A session of this node left `realm`: its entry, if it had one.
    pub(crate) fn member_left(&self, realm: &crate::realm::Realm, session: Id) -> Option<Member> {
        let mut changes = lock(&self.changes);
        let member = realm.members.leave(session)?;
        let pending = changes.of(&realm.name);
        // Joined and left within one delta: the others never hear of it
        // (nor of its subscriptions: they ignore those of unknown sessions).
        match pending.joined.iter().position(|m| m.session == session) {
            Some(at) => {
                pending.joined.swap_remove(at);
            }
            None => pending.left.push(session),
        }
        Some(member)
    }

    /// A session of this node subscribed (`Some`) to, or left (`None`),
    /// subscription `id` of `realm`: the others hear of it with the next delta.
    pub(crate) fn subscription_changed(&self, realm: &str, session: Id, id: Id, op: Option<SubscriptionOp>) {
        lock(&self.changes).of(realm).subscriptions.insert((session, id), op);
    }

    /// Sends the members changes made since the last delta (under the lock
    /// of `changes`, so deltas leave in sequence order).
    fn flush_members(&self, changes: &mut Changes) {
        if changes.pending.iter().all(|(_, p)| p.is_empty()) {
            changes.pending.clear();
            return;
        }
        changes.seq += 1;
        let realms = std::mem::take(&mut changes.pending).into_iter().map(|(realm, p)| (realm, p.into_delta())).collect();
        if let Err(e) = self.send(None, Control::Members { from: self.node, seq: changes.seq, realms }, None) {
            // The others see the gap in the sequence and ask for a snapshot.
            tracing::debug!(error = %e, "could not send this node's session changes");
        }
    }

    /// Answers a snapshot request: this node's members as of its latest delta.
    fn send_snapshot(&self, node: &Node, to: u64) {
        let mut changes = lock(&self.changes);
        self.flush_members(&mut changes);
        let realms = node
            .realms
            .iter()
            .map(|(name, realm)| (name.clone(), realm.members.here(), realm.broker.subscriptions(|_, uri| !is_reserved_topic(uri))))
            .collect();
        let _ = self.send(Some(to), Control::MembersSnapshot { from: self.node, seq: changes.seq, realms }, None);
    }

    /// Another node's heartbeat says its latest delta is `seq`.
    fn members_heard(&self, from: u64, seq: u64) {
        let mut seen = lock(&self.members_seen);
        let entry = seen.entry(from).or_default();
        if !entry.known && seq == 0 {
            // It never had a member: nothing to ask for.
            *entry = SeenMembers { known: true, seq: 0, asked: None };
        } else if !entry.known || entry.seq < seq {
            self.ask(entry, from);
        }
    }

    /// A delta from another node: applied when it is the next one, else a
    /// snapshot is asked for.
    fn members_delta(&self, node: &Node, from: u64, seq: u64, realms: Vec<(String, Delta)>) {
        let mut seen = lock(&self.members_seen);
        let entry = seen.entry(from).or_default();
        if entry.known && seq == entry.seq + 1 {
            entry.seq = seq;
            for (name, delta) in realms {
                if let Some(realm) = node.realms.get(&name) {
                    let changes = realm.members.apply(from, delta, |id| realm.broker.subscribers_here(id));
                    node.subscriptions_changed(realm, changes);
                }
            }
        } else if !entry.known || seq > entry.seq + 1 {
            self.ask(entry, from);
        }
    }

    fn ask(&self, entry: &mut SeenMembers, from: u64) {
        if entry.asked.is_none_or(|at| at.elapsed() > ASK_AGAIN) {
            entry.asked = Some(Instant::now());
            let _ = self.send(Some(from), Control::MembersAsk { from: self.node }, None);
        }
    }

    /// Announces this node's registrations every [`HEARTBEAT`] and when
    /// they change, and drops nodes silent for [`EXPIRY`]. Runs until the
    /// node aborts it (after [`Cluster::goodbye`]).
    pub(crate) async fn run(self: Arc<Self>, node: Arc<Node>) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deltas = tokio::time::interval(DELTA_EVERY);
        deltas.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session = self.bus_session();
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    self.expire(&node);
                    self.ping_awaited(&node);
                }
                _ = self.changed.notified() => tokio::time::sleep(MIN_GAP).await,
                _ = deltas.tick() => {
                    self.flush_members(&mut lock(&self.changes));
                    continue;
                }
            }
            let now = self.bus_session();
            if now != session {
                session = now;
                for (_, realm) in node.realms.iter() {
                    realm.dealer.bus_restarted(now);
                }
            }
            let realms = node.realms.iter().map(|(name, realm)| (name.clone(), realm.dealer.announced())).collect();
            let members = {
                // Pending changes go first, so the sequence number announced is sent.
                let mut changes = lock(&self.changes);
                self.flush_members(&mut changes);
                changes.seq
            };
            let listening = node.realms.iter().filter(|(_, realm)| crate::members::listened_here(realm)).map(|(name, _)| name.clone()).collect();
            if let Err(e) = self.send(None, Control::Registry { from: self.node, epoch: now, members, realms, listening }, None) {
                tracing::debug!(error = %e, "could not announce this node's registrations");
            }
        }
    }

    /// The node stops (its sessions are closed): tells the other nodes to
    /// forget it now, and waits (up to a second) for the messages still
    /// queued to reach the bus.
    pub(crate) async fn goodbye(&self) {
        // The sessions' leaves first: the others then have nothing left to
        // announce as gone on this node's behalf.
        self.flush_members(&mut lock(&self.changes));
        let (sent, done) = tokio::sync::oneshot::channel();
        let bye = Out { message: control::message(ALL_NODES.into(), Control::Bye { from: self.node }.encode()), on_fail: None, sent: Some(sent) };
        if self.queue(bye).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
    }

    /// Pings every node that calls of this node's sessions await: a node
    /// killed outright is then noticed within a heartbeat (its broker
    /// connection closed with it), not after [`EXPIRY`].
    fn ping_awaited(self: &Arc<Self>, node: &Arc<Node>) {
        let mut awaited: Vec<u64> = node.realms.iter().flat_map(|(_, realm)| realm.dealer.nodes_awaited()).collect();
        awaited.sort_unstable();
        awaited.dedup();
        for to in awaited {
            let (cluster, node) = (self.clone(), node.clone());
            let on_fail: OnFail = Box::new(move |e| {
                if let PublishError::NoSubscriber(_) = e {
                    cluster.lost(&node, to, "nothing listens on its inbox any more");
                }
            });
            let _ = self.send(Some(to), Control::Ping { from: self.node }, Some(on_fail));
        }
    }

    fn expire(&self, node: &Node) {
        let silent: Vec<u64> = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter().filter(|(_, (at, _))| at.elapsed() > EXPIRY).map(|(n, _)| *n).collect()
        };
        for gone in silent {
            self.lost(node, gone, &format!("not heard from for {} s", EXPIRY.as_secs()));
        }
        node.metrics.cluster_nodes.set(1 + self.seen.lock().unwrap_or_else(|e| e.into_inner()).len() as i64);
    }
}

/// Publishes queued messages in order, a batch at a time.
async fn send_all(bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<Out>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut then = Vec::with_capacity(batch.len());
        let messages = batch
            .drain(..)
            .map(|o| {
                then.push((o.on_fail, o.sent));
                o.message
            })
            .collect();
        let answers = bus.publish_batch(messages, Delivery::Subscribed).await;
        for (answer, (on_fail, sent)) in answers.into_iter().zip(then) {
            if let (Err(e), Some(on_fail)) = (answer, on_fail) {
                on_fail(e);
            }
            if let Some(sent) = sent {
                let _ = sent.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegraphy_wamp::dict;

    #[test]
    fn every_message_reads_back_as_written() {
        let call = RemoteCall {
            from: u64::MAX,
            call: 7,
            procedure: "com.example.add".into(),
            args: vec![Value::UInt(1), Value::Str("x".into())],
            kwargs: dict! {"k" => true},
            receive_progress: true,
            disclose: false,
            caller: (42, "alice".into(), "user".into()),
        };
        let member = Member {
            session: 12,
            authid: "alice".into(),
            authrole: "user".into(),
            authmethod: "ticket".into(),
            authprovider: "jwt".into(),
            name: Some("Alice A.".into()),
            testaments: vec![crate::members::Testament {
                detached: false,
                topic: "com.example.gone".into(),
                args: vec![Value::Str("bye".into())],
                kwargs: dict! {"who" => "alice"},
            }],
        };
        let announced =
            Announced { policy: MatchPolicy::Prefix, uri: "com.example.".into(), invoke: Invoke::RoundRobin, callees: 2, first_at: 1, last_at: 2 };
        let messages = [
            Control::Registry {
                from: 1,
                epoch: 2,
                members: 3,
                realms: vec![("realm1".into(), vec![announced]), ("empty".into(), vec![])],
                listening: vec!["realm1".into()],
            },
            Control::Bye { from: 3 },
            Control::Ping { from: 4 },
            Control::Members {
                from: 5,
                seq: 6,
                realms: vec![(
                    "realm1".into(),
                    Delta {
                        joined: vec![member.clone()],
                        left: vec![7, 8],
                        subscribed: vec![SubscriptionOp { session: 9, id: 10, policy: MatchPolicy::Prefix, uri: Arc::from("a.b"), created_us: 11 }],
                        unsubscribed: vec![(12, 13), (14, 15)],
                    },
                )],
            },
            Control::MembersAsk { from: 9 },
            Control::MembersSnapshot {
                from: 10,
                seq: 11,
                realms: vec![
                    (
                        "realm1".into(),
                        vec![member],
                        vec![LocalSubscription { id: 1, policy: MatchPolicy::Wildcard, uri: Arc::from("a..c"), created_us: 2, sessions: vec![3, 4] }],
                    ),
                    ("r2".into(), vec![], vec![]),
                ],
            },
            Control::Kill {
                from: 1,
                realm: "r".into(),
                target: KillTarget::Authid("bob".into()),
                except: 3,
                reason: "wamp.close.killed".into(),
                message: "bye".into(),
            },
            Control::Kill { from: 2, realm: "r".into(), target: KillTarget::All, except: 0, reason: String::new(), message: String::new() },
            Control::Call { realm: "realm1".into(), call },
            Control::Answer { realm: "r".into(), call: 9, answer: Answer::Result { progress: true, args: vec![], kwargs: Dict::new() } },
            Control::Answer {
                realm: "r".into(),
                call: 9,
                answer: Answer::Error { uri: "a.b".into(), details: dict! {"x" => 1u64}, args: vec![Value::Null], kwargs: Dict::new() },
            },
            Control::Cancel { realm: "r".into(), from: 5, call: 9, mode: CancelMode::Kill, reason: String::new() },
        ];
        for m in messages {
            assert_eq!(Control::decode(m.clone().encode()), Some(m));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for args in [
            vec![],
            vec![Value::Str("registry".into())],
            vec![Value::Str("shout".into()), Value::UInt(1)],
            vec![Value::Str("bye".into()), Value::Str("1".into())],
            vec![Value::Str("cancel".into()), Value::Str("r".into()), Value::UInt(1), Value::UInt(2), Value::Str("later".into())],
        ] {
            assert_eq!(Control::decode(args.clone()), None, "{args:?}");
        }
    }
}
