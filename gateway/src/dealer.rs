//! The dealer role of a realm (WAMP RPC): registrations, and the calls in
//! flight between callers and callees, on this node and across the
//! cluster (with [`crate::cluster`]).
//!
//! A CALL is routed to the registration that best matches its procedure
//! (exact, then the longest prefix, then the most specific wildcard:
//! [`MatchIndex::best_match`]); the registration's invocation policy picks
//! one of its callees; the dealer writes an INVOCATION to that callee's
//! outbox and remembers the call until the callee's final YIELD or ERROR,
//! a CANCEL, the call's timeout, or either session leaving. Every answer is
//! written to the other session's outbox from the task that handled the
//! message: the dealer runs no task of its own, except one timer per call
//! that has a `timeout`.
//!
//! # Bounds
//!
//! * Calls in flight: at most `limits.max_calls_per_session` per caller, so
//!   at most that many times the sessions on the node; a callee that never
//!   answers holds its callers' slots until they cancel, time out or leave,
//!   or until it leaves (its calls then fail with `wamp.error.canceled`).
//! * Registrations: at most `limits.max_registrations_per_session` per
//!   callee.
//! * Frames go through the sessions' bounded outboxes: a callee (or caller)
//!   that does not read is closed as a slow consumer, which ends its calls.
//!
//! The state is one `std::sync::Mutex` per realm, held only while looking up
//! and updating the maps and queueing frames (never across an `.await`).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Id, MatchPolicy, Message, Value};

use telegraphy_bus::{now_us, PublishError};

use crate::broker::SessionHandle;
use crate::cluster::{Announced, Answer, Cluster, Control, OnFail, RemoteCall};
use crate::match_index::MatchIndex;
use crate::metrics::{CallOutcome, Metrics};

/// Maps and sets keyed by ids: foldhash, seeded per process (SipHash, the
/// standard library's default, was a tenth of a call's instructions).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// How calls to a shared registration pick their callee
/// (`REGISTER.Options.invoke`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Invoke {
    /// One callee only: a second REGISTER is refused.
    #[default]
    Single,
    /// Callees in turn, in the order they registered.
    RoundRobin,
    /// A callee at random.
    Random,
    /// The callee that registered first (hot stand-by).
    First,
    /// The callee that registered last.
    Last,
}

impl Invoke {
    /// The policy the option names.
    pub(crate) fn parse(s: &str) -> Option<Invoke> {
        Some(match s {
            "single" => Invoke::Single,
            "roundrobin" => Invoke::RoundRobin,
            "random" => Invoke::Random,
            "first" => Invoke::First,
            "last" => Invoke::Last,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Invoke::Single => "single",
            Invoke::RoundRobin => "roundrobin",
            Invoke::Random => "random",
            Invoke::First => "first",
            Invoke::Last => "last",
        }
    }
}

/// What a session announced in `HELLO.Details.roles.callee.features`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CalleeFeatures {
    /// It may send progressive YIELDs (`progressive_call_results`).
    pub progressive_call_results: bool,
    /// It understands INTERRUPT (`call_canceling`).
    pub call_canceling: bool,
    /// It understands `UNREGISTERED` with request 0 (`registration_revocation`).
    pub registration_revocation: bool,
}

impl CalleeFeatures {
    /// Reads the features from `HELLO.Details.roles`.
    pub(crate) fn from_roles(roles: &Dict) -> CalleeFeatures {
        let Some(Value::Dict(callee)) = roles.get("callee") else { return CalleeFeatures::default() };
        let Some(Value::Dict(features)) = callee.get("features") else { return CalleeFeatures::default() };
        let on = |name: &str| matches!(features.get(name), Some(Value::Bool(true)));
        CalleeFeatures {
            progressive_call_results: on("progressive_call_results"),
            call_canceling: on("call_canceling"),
            registration_revocation: on("registration_revocation"),
        }
    }
}

/// A REGISTER, its options read and checked by the session.
#[derive(Debug, Clone)]
pub(crate) struct Registering {
    pub policy: MatchPolicy,
    pub procedure: String,
    pub invoke: Invoke,
    /// Every INVOCATION of this registration says who calls.
    pub disclose_caller: bool,
    /// Replace the registration's callees that have the same authid
    /// (a restarted worker taking over from its stale self).
    pub force_reregister: bool,
}

/// A CALL, its options read and checked by the session.
#[derive(Debug, Clone)]
pub(crate) struct Calling {
    pub request: Id,
    pub procedure: String,
    pub args: Vec<Value>,
    pub kwargs: Dict,
    /// `receive_progress`: the caller takes progressive results.
    pub receive_progress: bool,
    /// `disclose_me`: the callee may learn who calls.
    pub disclose_me: bool,
    /// `timeout` (none for 0): the call fails with `wamp.error.timeout` then.
    pub timeout: Option<Duration>,
    /// Calls the caller has in flight elsewhere (to the web-app over
    /// HTTP): they count against the same limit.
    pub other_calls: usize,
}

/// `CANCEL.Options.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelMode {
    /// Answer the caller now; the callee is not told.
    Skip,
    /// Tell the callee; answer the caller when the callee answers.
    Kill,
    /// Tell the callee and answer the caller now.
    KillNoWait,
}

impl CancelMode {
    pub(crate) fn parse(s: &str) -> Option<CancelMode> {
        Some(match s {
            "skip" => CancelMode::Skip,
            "kill" => CancelMode::Kill,
            "killnowait" => CancelMode::KillNoWait,
            _ => return None,
        })
    }
}

/// Why the dealer refused a request: the error URI and a message for the
/// developer.
pub(crate) type Refused = (&'static str, String);

/// The dealer's limits (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DealerLimits {
    pub max_calls_per_session: usize,
    pub max_registrations_per_session: usize,
}

/// The dealer role of one realm.
/// The dealer role of one realm.
pub(crate) struct Dealer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    metrics: Arc<Metrics>,
    limits: DealerLimits,
    /// The realm's name, in messages to other nodes.
    realm: String,
    /// The other gateway nodes, when the bus joins several.
    cluster: Option<Arc<Cluster>>,
}

#[derive(Default)]
struct Registry {
    /// (match policy, procedure or pattern) → registration id.
    index: MatchIndex<Id>,
    registrations: HashMap<Id, Registration>,
    /// Calls in flight to this node's callees, by (callee session,
    /// INVOCATION request id).
    invocations: HashMap<(Id, Id), Invocation>,
    /// Calls of this node's sessions, by (caller session, CALL request id).
    calls: HashMap<(Id, Id), Route>,
    /// Calls from callers on other nodes, by (their node, its call id).
    remote_calls: HashMap<(u64, Id), (Id, Id)>,
    /// Calls of this node's sessions to callees on other nodes, by call id.
    outgoing: HashMap<Id, Outgoing>,
    /// The registrations each other node announced last.
    nodes: HashMap<u64, Vec<(MatchPolicy, Arc<str>)>>,
    /// What each session that took part holds.
    peers: HashMap<Id, Peer>,
}

/// Where a call of this node's session went.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// To a callee here: its invocation's key.
    Here((Id, Id)),
    /// To another node: the call id.
    Away(Id),
}

struct Registration {
    policy: MatchPolicy,
    uri: Arc<str>,
    /// This node's callees' policy; the other nodes' when it has none.
    invoke: Invoke,
    /// This node's callees, in the order they registered.
    callees: Vec<Callee>,
    /// Other nodes' callees of the same (policy, URI).
    remote: Vec<Remote>,
    /// The next callee for `roundrobin`.
    cursor: usize,
}

/// Another node's callees of a registration, as it announced them.
struct Remote {
    node: u64,
    invoke: Invoke,
    callees: u64,
    first_at: u64,
    last_at: u64,
}

struct Callee {
    handle: Arc<SessionHandle>,
    features: CalleeFeatures,
    disclose_caller: bool,
    /// When it registered (µs since the epoch).
    at: u64,
}

/// Who made a call a callee here serves.
enum Origin {
    /// A session on this node.
    Local(Arc<SessionHandle>),
    /// A session on another node (and this node's bus session when the
    /// call arrived): answers go there.
    Remote(u64, u64),
}

struct Invocation {
    caller: Origin,
    /// The CALL request id (of a remote caller: the call id).
    call_request: Id,
    callee: Arc<SessionHandle>,
    /// The caller takes progressive results and the callee may send them.
    progress: bool,
    /// The callee understands INTERRUPT.
    interruptible: bool,
    /// Canceled with mode `kill`: the callee's answer becomes
    /// `wamp.error.canceled` for the caller.
    killed: bool,
    started: Instant,
    timer: Option<tokio::task::AbortHandle>,
}

/// A call of this node's session to a callee on another node.
struct Outgoing {
    caller: Arc<SessionHandle>,
    call_request: Id,
    node: u64,
    progress: bool,
    /// This node's bus session when the call was sent (see [`Dealer::bus_restarted`]).
    bus_session: u64,
    started: Instant,
    timer: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct Peer {
    /// The last INVOCATION request id sent to this session as a callee.
    last_invocation: Id,
    /// CALL request ids in flight, as a caller.
    calls: HashSet<Id>,
    /// INVOCATION request ids in flight, as a callee.
    invocations: HashSet<Id>,
    /// Registrations held, as a callee.
    registrations: Vec<Id>,
}

/// Which callee a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// This node's callee at that index.
    Here(usize),
    /// A callee on that node.
    Away(u64),
}

/// A call about to be written to a callee here.
struct Invoking {
    call_request: Id,
    procedure: String,
    args: Vec<Value>,
    kwargs: Dict,
    receive_progress: bool,
    disclose_me: bool,
    /// The caller's session, authid and authrole (empty when unknown).
    caller: (Id, String, String),
}

impl Registration {
    /// Picks a callee by the invocation policy, over this node's callees
    /// and (unless `here_only`) the other nodes'. `None` without callees.
    fn pick(&mut self, here_only: bool) -> Option<Pick> {
        let here = self.callees.len();
        let remote: &[Remote] = if here_only { &[] } else { &self.remote };
        let total = here + remote.iter().map(|r| r.callees as usize).sum::<usize>();
        if total == 0 {
            return None;
        }
        let nth = |n: usize| {
            let mut n = match n.checked_sub(here) {
                None => return Pick::Here(n),
                Some(n) => n as u64,
            };
            for r in remote {
                if n < r.callees {
                    return Pick::Away(r.node);
                }
                n -= r.callees;
            }
            Pick::Here(0)
        };
        Some(match self.invoke {
            Invoke::Single | Invoke::First => {
                let earliest = remote.iter().filter(|r| r.callees > 0).min_by_key(|r| (r.first_at, r.node));
                match (self.callees.first(), earliest) {
                    (Some(c), Some(r)) if r.first_at < c.at => Pick::Away(r.node),
                    (Some(_), _) => Pick::Here(0),
                    (None, Some(r)) => Pick::Away(r.node),
                    (None, None) => return None,
                }
            }
            Invoke::Last => {
                let latest = remote.iter().filter(|r| r.callees > 0).max_by_key(|r| (r.last_at, r.node));
                match (self.callees.last(), latest) {
                    (Some(c), Some(r)) if r.last_at > c.at => Pick::Away(r.node),
                    (Some(_), _) => Pick::Here(here - 1),
                    (None, Some(r)) => Pick::Away(r.node),
                    (None, None) => return None,
                }
            }
            Invoke::Random => nth(fastrand::usize(..total)),
            Invoke::RoundRobin => {
                let at = self.cursor % total;
                self.cursor = at + 1;
                nth(at)
            }
        })
    }

    /// When this node's first callee registered.
    fn first_at(&self) -> Option<u64> {
        self.callees.first().map(|c| c.at)
    }
}

/// Whether two groups of callees of one (policy, URI) cannot share it.
fn clash(a: Invoke, b: Invoke) -> bool {
    a == Invoke::Single || b == Invoke::Single || a != b
}

impl Dealer {
    /// A dealer with no registrations; `cluster` joins it to the other nodes.
    pub(crate) fn new(realm: &str, metrics: Arc<Metrics>, limits: DealerLimits, cluster: Option<Arc<Cluster>>) -> Dealer {
        Dealer { inner: Arc::new(Inner { registry: Mutex::new(Registry::default()), metrics, limits, realm: realm.into(), cluster }) }
    }

    /// Registers `callee` for a procedure (or a pattern of them); returns
    /// the registration id.
    pub(crate) fn register(&self, callee: &Arc<SessionHandle>, features: CalleeFeatures, r: Registering) -> Result<Id, Refused> {
        let mut reg = self.inner.lock();
        let held = reg.peers.get(&callee.id).map_or(0, |p| p.registrations.len());
        if held >= self.inner.limits.max_registrations_per_session {
            return Err((
                err::LIMIT_EXCEEDED,
                format!("this session holds {held} registrations, the most one session may hold (limits.max_registrations_per_session)"),
            ));
        }
        let id = match reg.index.get(r.policy, &r.procedure).copied() {
            Some(id) => {
                let (authid, revoked) = (identity_authid(callee), self.join_existing(&mut reg, id, callee, &r)?);
                for old in revoked {
                    tracing::info!(session = old.handle.id, authid, registration = id, "registration revoked: force_reregister by the same authid");
                    let reason = "replaced by a new registration of the same authid (force_reregister)";
                    self.inner.revoked(&mut reg, id, &old, reason);
                }
                id
            }
            None => {
                let id = loop {
                    let id = crate::node::random_id();
                    if !reg.registrations.contains_key(&id) {
                        break id;
                    }
                };
                let uri: Arc<str> = Arc::from(r.procedure.as_str());
                reg.index.insert(r.policy, uri.clone(), id);
                let registration = Registration { policy: r.policy, uri, invoke: r.invoke, callees: Vec::new(), remote: Vec::new(), cursor: 0 };
                reg.registrations.insert(id, registration);
                id
            }
        };
        let registration = reg.registrations.get_mut(&id).expect("just found or made");
        registration.invoke = r.invoke;
        registration.callees.push(Callee { handle: callee.clone(), features, disclose_caller: r.disclose_caller, at: now_us() });
        reg.peers.entry(callee.id).or_default().registrations.push(id);
        self.inner.metrics.rpc_registrations.inc();
        self.inner.changed();
        Ok(id)
    }

    /// Checks a REGISTER against an existing registration of the same
    /// (policy, URI), here or on other nodes; returns the callees
    /// `force_reregister` replaces.
    fn join_existing(&self, reg: &mut Registry, id: Id, callee: &Arc<SessionHandle>, r: &Registering) -> Result<Vec<Callee>, Refused> {
        let existing = reg.registrations.get_mut(&id).expect("the index and the registrations agree");
        if existing.callees.iter().any(|c| c.handle.id == callee.id) {
            return Err((err::PROCEDURE_ALREADY_EXISTS, format!("this session already registered `{}`", r.procedure)));
        }
        if r.force_reregister && existing.remote.is_empty() && !existing.callees.is_empty() {
            let authid = identity_authid(callee);
            if !authid.is_empty() && existing.callees.iter().all(|c| identity_authid(&c.handle) == authid) {
                existing.cursor = 0;
                return Ok(std::mem::take(&mut existing.callees));
            }
        }
        let elsewhere = if existing.callees.is_empty() { " on another gateway node" } else { "" };
        if existing.invoke == Invoke::Single || r.invoke == Invoke::Single {
            return Err((
                err::PROCEDURE_ALREADY_EXISTS,
                format!(
                    "`{}` is already registered{elsewhere} (invoke `{}`); to share it, every callee registers with the same invoke policy, e.g. roundrobin",
                    r.procedure,
                    existing.invoke.name()
                ),
            ));
        }
        if existing.invoke != r.invoke {
            return Err((
                err::PROCEDURE_EXISTS_WITH_DIFFERENT_INVOCATION_POLICY,
                format!("`{}` is registered{elsewhere} with invoke `{}`, not `{}`", r.procedure, existing.invoke.name(), r.invoke.name()),
            ));
        }
        Ok(Vec::new())
    }

    /// Withdraws one of `session`'s registrations. Calls already handed to
    /// it stay in flight (the callee may still answer them).
    pub(crate) fn unregister(&self, session: Id, registration: Id) -> Result<(), Refused> {
        let mut reg = self.inner.lock();
        let held = reg.peers.get(&session).is_some_and(|p| p.registrations.contains(&registration));
        if !held {
            return Err((err::NO_SUCH_REGISTRATION, format!("this session holds no registration {registration}")));
        }
        if let Some(p) = reg.peers.get_mut(&session) {
            p.registrations.retain(|r| *r != registration);
        }
        reg.remove_callee(registration, session);
        self.inner.metrics.rpc_registrations.dec();
        self.inner.changed();
        Ok(())
    }

    /// Routes a call: an INVOCATION to one callee of the best matching
    /// registration, here or on another node. The answer comes later
    /// ([`Dealer::yielded`], [`Dealer::failed`], [`Dealer::remote_answer`]);
    /// a refusal here is the caller's ERROR.
    pub(crate) fn call(&self, caller: &Arc<SessionHandle>, c: Calling) -> Result<(), Refused> {
        let mut reg = self.inner.lock();
        let in_flight = reg.peers.get(&caller.id).map_or(0, |p| p.calls.len()) + c.other_calls;
        if in_flight >= self.inner.limits.max_calls_per_session {
            return Err((
                err::LIMIT_EXCEEDED,
                format!("this session has {in_flight} calls in flight, the most one session may have (limits.max_calls_per_session); wait for some to finish"),
            ));
        }
        if reg.calls.contains_key(&(caller.id, c.request)) {
            return Err((err::INVALID_ARGUMENT, format!("a call with request id {} is still in flight; use a new request id", c.request)));
        }
        let found = reg.index.best_match(&c.procedure).map(|(policy, &id)| (policy, id));
        let picked = found.and_then(|(policy, id)| Some((policy, id, reg.registrations.get_mut(&id)?.pick(false)?)));
        let Some((policy, registration, pick)) = picked else {
            return Err((err::NO_SUCH_PROCEDURE, format!("no callee has registered `{}`", c.procedure)));
        };
        let (caller_id, request, timeout) = (caller.id, c.request, c.timeout);
        let route = match pick {
            Pick::Here(at) => {
                let invoking = Invoking {
                    call_request: c.request,
                    procedure: c.procedure,
                    args: c.args,
                    kwargs: c.kwargs,
                    receive_progress: c.receive_progress,
                    disclose_me: c.disclose_me,
                    caller: caller_of(caller),
                };
                Route::Here(self.inner.invoke(&mut reg, registration, policy, at, Origin::Local(caller.clone()), invoking))
            }
            Pick::Away(node) => Route::Away(self.call_away(&mut reg, caller, c, node)?),
        };
        let timer = timeout.map(|after| {
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                Inner::expire(&inner, caller_id, request, after);
            })
            .abort_handle()
        });
        match route {
            Route::Here(key) => reg.invocations.get_mut(&key).expect("just made").timer = timer,
            Route::Away(call) => reg.outgoing.get_mut(&call).expect("just made").timer = timer,
        }
        reg.calls.insert((caller_id, request), route);
        reg.peers.entry(caller_id).or_default().calls.insert(request);
        self.inner.metrics.rpc_calls_in_flight.inc();
        Ok(())
    }

    /// Sends a call to a callee on `node`; returns the call id.
    fn call_away(&self, reg: &mut Registry, caller: &Arc<SessionHandle>, c: Calling, node: u64) -> Result<Id, Refused> {
        let cluster = self.inner.cluster.as_ref().expect("other nodes' registrations come through the cluster");
        let call = loop {
            let id = crate::node::random_id();
            if !reg.outgoing.contains_key(&id) {
                break id;
            }
        };
        let remote = RemoteCall {
            from: cluster.node,
            call,
            procedure: c.procedure,
            args: c.args,
            kwargs: c.kwargs,
            receive_progress: c.receive_progress,
            disclose: c.disclose_me,
            caller: caller_of(caller),
        };
        let inner = Arc::downgrade(&self.inner);
        let on_fail: OnFail = Box::new(move |e| Inner::undelivered(&inner, call, node, e));
        cluster.send(Some(node), Control::Call { realm: self.inner.realm.clone(), call: remote }, Some(on_fail)).map_err(|e| {
            (err::CALLEE_UNAVAILABLE, format!("the callee is on another gateway node, which cannot be reached now ({e}); retry later"))
        })?;
        let outgoing = Outgoing {
            caller: caller.clone(),
            call_request: c.request,
            node,
            progress: c.receive_progress,
            bus_session: cluster.bus_session(),
            started: Instant::now(),
            timer: None,
        };
        reg.outgoing.insert(call, outgoing);
        Ok(call)
    }

    /// A callee's YIELD: a progressive result goes to the caller (when it
    /// asked for them), the final one ends the call. A YIELD for no call in
    /// flight (canceled, timed out, answered) is dropped.
    pub(crate) fn yielded(&self, callee: Id, request: Id, progress: bool, args: Vec<Value>, kwargs: Dict) {
        let mut reg = self.inner.lock();
        if progress {
            if let Some(inv) = reg.invocations.get(&(callee, request)).filter(|i| i.progress && !i.killed) {
                let result = Message::Result { request: inv.call_request, details: dict! {"progress" => true}, args, kwargs };
                self.inner.answer(&inv.caller, result);
            }
            return;
        }
        let Some(inv) = reg.finish((callee, request)) else { return };
        if inv.killed {
            let message = "the call was canceled; the callee had answered already";
            self.inner.answer(&inv.caller, call_error(inv.call_request, err::CANCELED, message));
            self.inner.done(&inv, CallOutcome::Canceled);
        } else {
            self.inner.answer(&inv.caller, Message::Result { request: inv.call_request, details: Dict::new(), args, kwargs });
            self.inner.done(&inv, CallOutcome::Result);
        }
    }

    /// A callee's ERROR for an invocation: the caller gets it as the
    /// call's ERROR (same URI, details and payload).
    pub(crate) fn failed(&self, callee: Id, request: Id, details: Dict, error: String, args: Vec<Value>, kwargs: Dict) {
        let mut reg = self.inner.lock();
        let Some(inv) = reg.finish((callee, request)) else { return };
        let outcome = if inv.killed { CallOutcome::Canceled } else { CallOutcome::Error };
        let error = if inv.killed && error != err::CANCELED { err::CANCELED.to_string() } else { error };
        self.inner.answer(&inv.caller, Message::Error { request_type: code::CALL, request: inv.call_request, details, error, args, kwargs });
        self.inner.done(&inv, outcome);
    }

    /// A caller's CANCEL. Unknown or finished calls are ignored (the
    /// answer may be on its way).
    pub(crate) fn cancel(&self, caller: Id, request: Id, mode: CancelMode) {
        let mut reg = self.inner.lock();
        match reg.calls.get(&(caller, request)).copied() {
            None => {}
            Some(Route::Here(key)) => self.inner.cancel_here(&mut reg, key, mode, None),
            Some(Route::Away(call)) => {
                let Some(node) = reg.outgoing.get(&call).map(|o| o.node) else { return };
                // `kill` waits for the callee's answer; the others answer now.
                if mode != CancelMode::Kill {
                    if let Some(o) = reg.finish_outgoing(call) {
                        o.caller.send(&call_error(o.call_request, err::CANCELED, "the call was canceled"));
                        self.inner.metrics.call_done(CallOutcome::Canceled, o.started);
                    }
                }
                self.inner.tell_cancel(Some(node), call, mode, None);
            }
        }
    }

    /// A session left: its calls are abandoned (their callees interrupted),
    /// the calls it was serving fail for their callers, and its
    /// registrations go. Idempotent.
    pub(crate) fn leave(&self, session: Id) {
        let mut reg = self.inner.lock();
        let Some(peer) = reg.peers.remove(&session) else { return };
        for request in peer.calls {
            match reg.calls.get(&(session, request)).copied() {
                None => {}
                Some(Route::Here(key)) => {
                    let Some(inv) = reg.finish(key) else { continue };
                    if inv.interruptible {
                        inv.callee.send(&interrupt(key.1, "killnowait", Some("wamp.close.caller_left")));
                    }
                    self.inner.done(&inv, CallOutcome::Canceled);
                }
                Some(Route::Away(call)) => {
                    let Some(o) = reg.finish_outgoing(call) else { continue };
                    self.inner.tell_cancel(Some(o.node), call, CancelMode::KillNoWait, Some("wamp.close.caller_left"));
                    self.inner.metrics.call_done(CallOutcome::Canceled, o.started);
                }
            }
        }
        for request in peer.invocations {
            let Some(inv) = reg.finish((session, request)) else { continue };
            let message = "the callee's session ended before it answered; the call may or may not have run";
            self.inner.answer(&inv.caller, call_error(inv.call_request, err::CANCELED, message));
            self.inner.done(&inv, CallOutcome::CalleeLost);
        }
        let had_registrations = !peer.registrations.is_empty();
        for registration in peer.registrations {
            reg.remove_callee(registration, session);
            self.inner.metrics.rpc_registrations.dec();
        }
        if had_registrations {
            self.inner.changed();
        }
    }

    /// Calls `session` has in flight to WAMP callees.
    pub(crate) fn calls_of(&self, session: Id) -> usize {
        self.inner.lock().peers.get(&session).map_or(0, |p| p.calls.len())
    }

    /// This node's registrations, as it announces them to the others.
    pub(crate) fn announced(&self) -> Vec<Announced> {
        let reg = self.inner.lock();
        reg.registrations
            .values()
            .filter(|r| !r.callees.is_empty())
            .map(|r| Announced {
                policy: r.policy,
                uri: r.uri.to_string(),
                invoke: r.invoke,
                callees: r.callees.len() as u64,
                first_at: r.callees.iter().map(|c| c.at).min().unwrap_or(0),
                last_at: r.callees.iter().map(|c| c.at).max().unwrap_or(0),
            })
            .collect()
    }

    /// Node `node` announced its registrations: they replace what it
    /// announced before. Where one clashes with this node's (two `single`,
    /// or two invoke policies), the registration made first wins (ties: the
    /// lower node id); this node revokes its callees when it loses, and
    /// ignores the other node's when it wins (that node revokes them).
    pub(crate) fn node_announced(&self, node: u64, announced: Vec<Announced>) {
        let mut reg = self.inner.lock();
        // Registrations it announced before stay in place (their ids, their
        // round-robin cursors) until the new announcement is in.
        let before = reg.nodes.remove(&node).unwrap_or_default();
        for (policy, uri) in &before {
            if let Some(r) = reg.index.get(*policy, uri).copied().and_then(|id| reg.registrations.get_mut(&id)) {
                r.remote.retain(|x| x.node != node);
            }
        }
        let here = self.inner.cluster.as_ref().map_or(0, |c| c.node);
        let mut held = Vec::with_capacity(announced.len());
        for a in announced {
            let uri: Arc<str> = Arc::from(a.uri.as_str());
            let id = match reg.index.get(a.policy, &a.uri).copied() {
                Some(id) => id,
                None => {
                    let id = loop {
                        let id = crate::node::random_id();
                        if !reg.registrations.contains_key(&id) {
                            break id;
                        }
                    };
                    reg.index.insert(a.policy, uri.clone(), id);
                    let r = Registration { policy: a.policy, uri: uri.clone(), invoke: a.invoke, callees: Vec::new(), remote: Vec::new(), cursor: 0 };
                    reg.registrations.insert(id, r);
                    id
                }
            };
            let r = reg.registrations.get_mut(&id).expect("just found or made");
            if let Some(mine) = r.first_at().filter(|_| clash(r.invoke, a.invoke)) {
                if (mine, here) < (a.first_at, node) {
                    continue;
                }
                let (uri, lost) = (r.uri.clone(), std::mem::take(&mut r.callees));
                r.invoke = a.invoke;
                tracing::warn!(
                    procedure = %uri,
                    node,
                    "registration revoked: another gateway node registered the same procedure first, with invoke `{}`",
                    a.invoke.name()
                );
                for old in lost {
                    let reason = "another gateway node had registered this procedure first (invoke single, or another invoke policy)";
                    self.inner.revoked(&mut reg, id, &old, reason);
                }
            }
            let r = reg.registrations.get_mut(&id).expect("still there");
            if r.callees.is_empty() && r.remote.is_empty() {
                r.invoke = a.invoke;
            }
            r.remote.push(Remote { node, invoke: a.invoke, callees: a.callees, first_at: a.first_at, last_at: a.last_at });
            held.push((a.policy, uri));
        }
        if !held.is_empty() {
            reg.nodes.insert(node, held);
        }
        for (policy, uri) in before {
            if let Some(&id) = reg.index.get(policy, &uri) {
                reg.drop_if_empty(id);
            }
        }
    }

    /// Node `node` is gone (silent, stopped, or unreachable): its
    /// registrations go, calls to it fail, calls from it are abandoned.
    pub(crate) fn node_lost(&self, node: u64) {
        let mut reg = self.inner.lock();
        reg.forget_node(node);
        let message = "the callee's gateway node left the cluster before it answered; the call may or may not have run";
        self.fail_outgoing(&mut reg, |o| o.node == node, err::CANCELED, message, CallOutcome::CalleeLost);
        abandon_remote(&mut reg, |from, _| from == node);
    }

    /// This node's bus connection started over (at `session`): what other
    /// nodes answered meanwhile may be lost, so the calls sent before fail.
    pub(crate) fn bus_restarted(&self, session: u64) {
        let mut reg = self.inner.lock();
        let message = "this gateway node lost its bus connection while the call was in flight; the call may or may not have run";
        self.fail_outgoing(&mut reg, |o| o.bus_session < session, err::CALLEE_UNAVAILABLE, message, CallOutcome::CalleeLost);
        // Their callers' nodes fail them too (they see this node's new bus session).
        abandon_remote(&mut reg, |_, arrived| arrived < session);
    }

    /// Node `node` reconnected to the bus: answers it sent meanwhile may be
    /// lost, so the calls sent to it before fail.
    pub(crate) fn node_restarted(&self, node: u64) {
        let mut reg = self.inner.lock();
        let message = "the callee's gateway node lost its bus connection while the call was in flight; the call may or may not have run";
        self.fail_outgoing(&mut reg, |o| o.node == node, err::CALLEE_UNAVAILABLE, message, CallOutcome::CalleeLost);
        // That node failed the calls it had sent here before (its own bus restart).
        abandon_remote(&mut reg, |from, _| from == node);
    }

    fn fail_outgoing(&self, reg: &mut Registry, which: impl Fn(&Outgoing) -> bool, error: &str, message: &str, outcome: CallOutcome) {
        let failing: Vec<Id> = reg.outgoing.iter().filter(|(_, o)| which(o)).map(|(id, _)| *id).collect();
        for call in failing {
            let Some(o) = reg.finish_outgoing(call) else { continue };
            o.caller.send(&call_error(o.call_request, error, message));
            self.inner.metrics.call_done(outcome, o.started);
        }
    }

    /// The nodes that calls of this node's sessions await answers from.
    pub(crate) fn nodes_awaited(&self) -> Vec<u64> {
        let reg = self.inner.lock();
        let mut nodes: Vec<u64> = reg.outgoing.values().map(|o| o.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// A call from a caller on another node, for a callee here.
    pub(crate) fn remote_call(&self, call: RemoteCall) {
        let mut reg = self.inner.lock();
        if reg.remote_calls.contains_key(&(call.from, call.call)) {
            return;
        }
        let found = reg.index.best_match(&call.procedure).map(|(policy, &id)| (policy, id));
        let picked = found.and_then(|(policy, id)| Some((policy, id, reg.registrations.get_mut(&id)?.pick(true)?)));
        let Some((policy, registration, Pick::Here(at))) = picked else {
            let message = format!("no callee of `{}` is connected to the gateway node the call went to any more; retry", call.procedure);
            self.inner.answer(&Origin::Remote(call.from, 0), call_error(call.call, err::NO_SUCH_PROCEDURE, &message));
            return;
        };
        let (from, id) = (call.from, call.call);
        let invoking = Invoking {
            call_request: call.call,
            procedure: call.procedure,
            args: call.args,
            kwargs: call.kwargs,
            receive_progress: call.receive_progress,
            disclose_me: call.disclose,
            caller: call.caller,
        };
        let session = self.inner.cluster.as_ref().map_or(0, |c| c.bus_session());
        let key = self.inner.invoke(&mut reg, registration, policy, at, Origin::Remote(from, session), invoking);
        reg.remote_calls.insert((from, id), key);
    }

    /// An answer from the callee's node to a call of a session here.
    pub(crate) fn remote_answer(&self, call: Id, answer: Answer) {
        let mut reg = self.inner.lock();
        match answer {
            Answer::Result { progress: true, args, kwargs } => {
                if let Some(o) = reg.outgoing.get(&call).filter(|o| o.progress) {
                    o.caller.send(&Message::Result { request: o.call_request, details: dict! {"progress" => true}, args, kwargs });
                }
            }
            Answer::Result { progress: false, args, kwargs } => {
                let Some(o) = reg.finish_outgoing(call) else { return };
                o.caller.send(&Message::Result { request: o.call_request, details: Dict::new(), args, kwargs });
                self.inner.metrics.call_done(CallOutcome::Result, o.started);
            }
            Answer::Error { uri, details, args, kwargs } => {
                let Some(o) = reg.finish_outgoing(call) else { return };
                let outcome = match uri.as_str() {
                    err::CANCELED => CallOutcome::Canceled,
                    err::NO_SUCH_PROCEDURE => CallOutcome::NoSuchProcedure,
                    _ => CallOutcome::Error,
                };
                o.caller.send(&Message::Error { request_type: code::CALL, request: o.call_request, details, error: uri, args, kwargs });
                self.inner.metrics.call_done(outcome, o.started);
            }
        }
    }

    /// A cancel from the caller's node (its CANCEL, its timeout, or its
    /// caller leaving).
    pub(crate) fn remote_cancel(&self, from: u64, call: Id, mode: CancelMode, reason: Option<&str>) {
        let mut reg = self.inner.lock();
        let Some(&key) = reg.remote_calls.get(&(from, call)) else { return };
        self.inner.cancel_here(&mut reg, key, mode, reason);
    }

    /// Registrations on this node: (registration id, match policy, URI,
    /// callees), for tests and the meta API to come.
    #[cfg(test)]
    pub(crate) fn registration(&self, policy: MatchPolicy, uri: &str) -> Option<(Id, usize)> {
        let reg = self.inner.lock();
        let id = *reg.index.get(policy, uri)?;
        Some((id, reg.registrations[&id].callees.len()))
    }

    /// Calls in flight on this node (tests).
    #[cfg(test)]
    pub(crate) fn calls_in_flight(&self) -> usize {
        let reg = self.inner.lock();
        reg.invocations.len() + reg.outgoing.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves consistent-enough maps:
        // every update is a few inserts and removes.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registrations changed: the other nodes hear of it.
    fn changed(&self) {
        if let Some(c) = &self.cluster {
            c.changed();
        }
    }

    /// Writes an INVOCATION to callee `at` of `registration`; returns the
    /// invocation's key.
    fn invoke(&self, reg: &mut Registry, registration: Id, policy: MatchPolicy, at: usize, caller: Origin, c: Invoking) -> (Id, Id) {
        let r = &reg.registrations[&registration];
        let callee = &r.callees[at];
        let (handle, features) = (callee.handle.clone(), callee.features);
        let mut details = Dict::new();
        if policy != MatchPolicy::Exact {
            details.insert("procedure".into(), Value::Str(c.procedure));
        }
        let progress = c.receive_progress && features.progressive_call_results;
        if progress {
            details.insert("receive_progress".into(), Value::Bool(true));
        }
        if callee.disclose_caller || c.disclose_me {
            let (session, authid, authrole) = c.caller;
            details.insert("caller".into(), Value::UInt(session));
            if !authid.is_empty() || !authrole.is_empty() {
                details.insert("caller_authid".into(), Value::Str(authid));
                details.insert("caller_authrole".into(), Value::Str(authrole));
            }
        }
        let peer = reg.peers.entry(handle.id).or_default();
        peer.last_invocation = if peer.last_invocation >= telegraphy_wamp::MAX_ID { 1 } else { peer.last_invocation + 1 };
        let request = peer.last_invocation;
        peer.invocations.insert(request);
        let key = (handle.id, request);
        handle.send(&Message::Invocation { request, registration, details, args: c.args, kwargs: c.kwargs });
        let invocation = Invocation {
            caller,
            call_request: c.call_request,
            callee: handle,
            progress,
            interruptible: features.call_canceling,
            killed: false,
            started: Instant::now(),
            timer: None,
        };
        reg.invocations.insert(key, invocation);
        key
    }

    /// Sends `message` (a RESULT or an ERROR for the call) to the caller,
    /// here or on its node.
    fn answer(&self, to: &Origin, message: Message) {
        match to {
            Origin::Local(handle) => handle.send(&message),
            Origin::Remote(node, _) => {
                let (call, answer) = match message {
                    Message::Result { request, details, args, kwargs } => {
                        (request, Answer::Result { progress: matches!(details.get("progress"), Some(Value::Bool(true))), args, kwargs })
                    }
                    Message::Error { request, details, error, args, kwargs, .. } => (request, Answer::Error { uri: error, details, args, kwargs }),
                    _ => return,
                };
                let Some(cluster) = &self.cluster else { return };
                if let Err(e) = cluster.send(Some(*node), Control::Answer { realm: self.realm.clone(), call, answer }, None) {
                    tracing::warn!(node, error = %e, "could not send a call's answer to the caller's gateway node; the caller's node fails the call");
                }
            }
        }
    }

    /// Tells the callee's node (if known) that a call is canceled.
    fn tell_cancel(&self, node: Option<u64>, call: Id, mode: CancelMode, reason: Option<&str>) {
        let (Some(node), Some(cluster)) = (node, &self.cluster) else { return };
        let reason = reason.unwrap_or_default().to_string();
        let _ = cluster.send(Some(node), Control::Cancel { realm: self.realm.clone(), from: cluster.node, call, mode, reason }, None);
    }

    /// Counts a finished call (where its caller is: the caller's node
    /// counts calls that crossed nodes).
    fn done(&self, inv: &Invocation, outcome: CallOutcome) {
        if matches!(inv.caller, Origin::Local(_)) {
            self.metrics.call_done(outcome, inv.started);
        }
    }

    /// Cancels a call to a callee here (`reason`: for the INTERRUPT).
    fn cancel_here(&self, reg: &mut Registry, key: (Id, Id), mode: CancelMode, reason: Option<&str>) {
        let interruptible = reg.invocations.get(&key).is_some_and(|i| i.interruptible);
        let mode = if interruptible { mode } else { CancelMode::Skip };
        if mode == CancelMode::Kill {
            let inv = reg.invocations.get_mut(&key).expect("calls and invocations agree");
            if !inv.killed {
                inv.killed = true;
                inv.callee.send(&interrupt(key.1, "kill", reason));
            }
            return;
        }
        let Some(inv) = reg.finish(key) else { return };
        if mode == CancelMode::KillNoWait {
            inv.callee.send(&interrupt(key.1, "killnowait", reason));
        }
        self.answer(&inv.caller, call_error(inv.call_request, err::CANCELED, "the call was canceled"));
        self.done(&inv, CallOutcome::Canceled);
    }

    /// Revokes one callee of `registration` (already out of its callees).
    fn revoked(&self, reg: &mut Registry, registration: Id, old: &Callee, reason: &str) {
        if let Some(p) = reg.peers.get_mut(&old.handle.id) {
            p.registrations.retain(|r| *r != registration);
        }
        if old.features.registration_revocation {
            old.handle.send(&Message::Unregistered { request: 0, details: dict! {"registration" => registration, "reason" => reason} });
        }
        self.metrics.rpc_registrations.dec();
        self.changed();
    }

    /// A call's timeout ran out: the caller gets `wamp.error.timeout`, the
    /// callee an INTERRUPT (when it understands one; on another node, its
    /// node is told).
    fn expire(inner: &Weak<Inner>, caller: Id, request: Id, after: Duration) {
        let Some(inner) = inner.upgrade() else { return };
        let mut reg = inner.lock();
        let message = format!("the callee did not answer within the call's timeout ({} ms)", after.as_millis());
        match reg.calls.get(&(caller, request)).copied() {
            None => {}
            Some(Route::Here(key)) => {
                let Some(mut inv) = reg.finish(key) else { return };
                inv.timer = None;
                if inv.interruptible {
                    inv.callee.send(&interrupt(key.1, "killnowait", Some(err::TIMEOUT)));
                }
                inner.answer(&inv.caller, call_error(inv.call_request, err::TIMEOUT, &message));
                inner.done(&inv, CallOutcome::Timeout);
            }
            Some(Route::Away(call)) => {
                let Some(mut o) = reg.finish_outgoing(call) else { return };
                o.timer = None;
                inner.tell_cancel(Some(o.node), call, CancelMode::KillNoWait, Some(err::TIMEOUT));
                o.caller.send(&call_error(o.call_request, err::TIMEOUT, &message));
                inner.metrics.call_done(CallOutcome::Timeout, o.started);
            }
        }
    }

    /// A call could not be handed to the callee's node.
    fn undelivered(inner: &Weak<Inner>, call: Id, node: u64, e: PublishError) {
        let Some(inner) = inner.upgrade() else { return };
        let mut reg = inner.lock();
        let Some(o) = reg.finish_outgoing(call) else { return };
        let message = match &e {
            PublishError::NoSubscriber(_) => {
                // Nobody listens on its inbox: the node is gone.
                reg.forget_node(node);
                "the callee's gateway node has left the cluster; the call did not run; retry".to_string()
            }
            e => format!("the call could not reach the callee's gateway node ({e}); the call did not run; retry later"),
        };
        o.caller.send(&call_error(o.call_request, err::CALLEE_UNAVAILABLE, &message));
        inner.metrics.call_done(CallOutcome::CalleeLost, o.started);
    }
}

impl Registry {
    /// Ends a call in flight to a callee here: removes it everywhere,
    /// stops its timer.
    fn finish(&mut self, key: (Id, Id)) -> Option<Invocation> {
        let inv = self.invocations.remove(&key)?;
        match &inv.caller {
            Origin::Local(caller) => {
                self.calls.remove(&(caller.id, inv.call_request));
                if let Some(p) = self.peers.get_mut(&caller.id) {
                    p.calls.remove(&inv.call_request);
                }
            }
            Origin::Remote(node, _) => {
                self.remote_calls.remove(&(*node, inv.call_request));
            }
        }
        if let Some(p) = self.peers.get_mut(&key.0) {
            p.invocations.remove(&key.1);
        }
        if let Some(timer) = &inv.timer {
            timer.abort();
        }
        Some(inv)
    }

    /// Ends a call to another node: removes it everywhere, stops its timer.
    fn finish_outgoing(&mut self, call: Id) -> Option<Outgoing> {
        let o = self.outgoing.remove(&call)?;
        self.calls.remove(&(o.caller.id, o.call_request));
        if let Some(p) = self.peers.get_mut(&o.caller.id) {
            p.calls.remove(&o.call_request);
        }
        if let Some(timer) = &o.timer {
            timer.abort();
        }
        Some(o)
    }

    /// Removes `session` from a registration's callees, and the
    /// registration when no callee is left anywhere.
    fn remove_callee(&mut self, registration: Id, session: Id) {
        let Some(r) = self.registrations.get_mut(&registration) else { return };
        r.callees.retain(|c| c.handle.id != session);
        self.drop_if_empty(registration);
    }

    /// Forgets what `node` announced.
    fn forget_node(&mut self, node: u64) {
        for (policy, uri) in self.nodes.remove(&node).unwrap_or_default() {
            let Some(&id) = self.index.get(policy, &uri) else { continue };
            if let Some(r) = self.registrations.get_mut(&id) {
                r.remote.retain(|x| x.node != node);
            }
            self.drop_if_empty(id);
        }
    }

    /// Drops a registration without callees here or elsewhere; one with
    /// only other nodes' callees takes their policy.
    fn drop_if_empty(&mut self, registration: Id) {
        let Some(r) = self.registrations.get_mut(&registration) else { return };
        if r.callees.is_empty() {
            match r.remote.first() {
                Some(other) => r.invoke = other.invoke,
                None => {
                    let (policy, uri) = (r.policy, r.uri.clone());
                    self.registrations.remove(&registration);
                    self.index.remove(policy, &uri);
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let reg = self.registry.get_mut().unwrap_or_else(|e| e.into_inner());
        for timer in reg.invocations.values().filter_map(|i| i.timer.as_ref()).chain(reg.outgoing.values().filter_map(|o| o.timer.as_ref())) {
            timer.abort();
        }
    }
}

/// Ends the calls from other nodes' callers that `which(node, bus session
/// on arrival)` picks, interrupting their callees: their callers' nodes
/// failed them already.
fn abandon_remote(reg: &mut Registry, which: impl Fn(u64, u64) -> bool) {
    let keys: Vec<(Id, Id)> =
        reg.invocations.iter().filter(|(_, i)| matches!(i.caller, Origin::Remote(node, arrived) if which(node, arrived))).map(|(k, _)| *k).collect();
    for key in keys {
        let Some(inv) = reg.finish(key) else { continue };
        if inv.interruptible {
            inv.callee.send(&interrupt(key.1, "killnowait", Some("wamp.close.caller_left")));
        }
    }
}

fn identity_authid(handle: &SessionHandle) -> &str {
    handle.identity.get().map_or("", |i| i.authid.as_str())
}

/// A session's id, authid and authrole, as a callee may learn them.
fn caller_of(handle: &SessionHandle) -> (Id, String, String) {
    match handle.identity.get() {
        Some(i) => (handle.id, i.authid.clone(), i.authrole.clone()),
        None => (handle.id, String::new(), String::new()),
    }
}

/// An INTERRUPT for invocation `request`.
fn interrupt(request: Id, mode: &str, reason: Option<&str>) -> Message {
    let mut options = dict! {"mode" => mode};
    if let Some(reason) = reason {
        options.insert("reason".into(), Value::Str(reason.into()));
    }
    Message::Interrupt { request, options }
}

/// An ERROR for a CALL, with the message as its first argument (what
/// Autobahn shows) and in its details.
fn call_error(request: Id, error: &str, message: &str) -> Message {
    Message::Error {
        request_type: code::CALL,
        request,
        details: dict! {"message" => message},
        error: error.into(),
        args: vec![Value::Str(message.into())],
        kwargs: Dict::new(),
    }
}
