//! The dealer role of a realm (WAMP RPC): registrations, and the calls in
//! flight between callers and callees on this node.
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Id, MatchPolicy, Message, Value};

use crate::broker::SessionHandle;
use crate::match_index::MatchIndex;
use crate::metrics::{CallOutcome, Metrics};

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

    fn name(self) -> &'static str {
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
pub(crate) struct Dealer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    metrics: Arc<Metrics>,
    limits: DealerLimits,
}

#[derive(Default)]
struct Registry {
    /// (match policy, procedure or pattern) → registration id.
    index: MatchIndex<Id>,
    registrations: HashMap<Id, Registration>,
    /// Calls in flight, by (callee session, INVOCATION request id).
    invocations: HashMap<(Id, Id), Invocation>,
    /// The same calls, by (caller session, CALL request id).
    calls: HashMap<(Id, Id), (Id, Id)>,
    /// What each session that took part holds.
    peers: HashMap<Id, Peer>,
}

struct Registration {
    policy: MatchPolicy,
    uri: Arc<str>,
    invoke: Invoke,
    /// In the order they registered.
    callees: Vec<Callee>,
    /// The next callee for `roundrobin`.
    cursor: usize,
}

struct Callee {
    handle: Arc<SessionHandle>,
    features: CalleeFeatures,
    disclose_caller: bool,
}

struct Invocation {
    caller: Arc<SessionHandle>,
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

impl Dealer {
    /// A dealer with no registrations.
    pub(crate) fn new(metrics: Arc<Metrics>, limits: DealerLimits) -> Dealer {
        Dealer { inner: Arc::new(Inner { registry: Mutex::new(Registry::default()), metrics, limits }) }
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
                    if let Some(p) = reg.peers.get_mut(&old.handle.id) {
                        p.registrations.retain(|r| *r != id);
                    }
                    if old.features.registration_revocation {
                        let reason = "replaced by a new registration of the same authid (force_reregister)";
                        old.handle.send(&Message::Unregistered { request: 0, details: dict! {"registration" => id, "reason" => reason} });
                    }
                    self.inner.metrics.rpc_registrations.dec();
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
                reg.registrations.insert(id, Registration { policy: r.policy, uri, invoke: r.invoke, callees: Vec::new(), cursor: 0 });
                id
            }
        };
        let registration = reg.registrations.get_mut(&id).expect("just found or made");
        registration.callees.push(Callee { handle: callee.clone(), features, disclose_caller: r.disclose_caller });
        reg.peers.entry(callee.id).or_default().registrations.push(id);
        self.inner.metrics.rpc_registrations.inc();
        Ok(id)
    }

    /// Checks a REGISTER against an existing registration of the same
    /// (policy, URI); returns the callees `force_reregister` replaces.
    fn join_existing(&self, reg: &mut Registry, id: Id, callee: &Arc<SessionHandle>, r: &Registering) -> Result<Vec<Callee>, Refused> {
        let existing = reg.registrations.get_mut(&id).expect("the index and the registrations agree");
        if existing.callees.iter().any(|c| c.handle.id == callee.id) {
            return Err((err::PROCEDURE_ALREADY_EXISTS, format!("this session already registered `{}`", r.procedure)));
        }
        if r.force_reregister {
            let authid = identity_authid(callee);
            if !authid.is_empty() && existing.callees.iter().all(|c| identity_authid(&c.handle) == authid) {
                existing.cursor = 0;
                return Ok(std::mem::take(&mut existing.callees));
            }
        }
        if existing.invoke == Invoke::Single || r.invoke == Invoke::Single {
            return Err((
                err::PROCEDURE_ALREADY_EXISTS,
                format!(
                    "`{}` is already registered (invoke `{}`); to share it, every callee registers with the same invoke policy, e.g. roundrobin",
                    r.procedure,
                    existing.invoke.name()
                ),
            ));
        }
        if existing.invoke != r.invoke {
            return Err((
                err::PROCEDURE_EXISTS_WITH_DIFFERENT_INVOCATION_POLICY,
                format!("`{}` is registered with invoke `{}`, not `{}`", r.procedure, existing.invoke.name(), r.invoke.name()),
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
        Ok(())
    }

    /// Routes a call: an INVOCATION to one callee of the best matching
    /// registration. The answer comes later ([`Dealer::yielded`],
    /// [`Dealer::failed`]); a refusal here is the caller's ERROR.
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
        let Some((policy, &registration)) = reg.index.best_match(&c.procedure) else {
            return Err((
                err::NO_SUCH_PROCEDURE,
                format!("no callee has registered `{}` (calls reach callees connected to the same gateway node)", c.procedure),
            ));
        };
        let r = reg.registrations.get_mut(&registration).expect("the index and the registrations agree");
        let at = match r.invoke {
            Invoke::Single | Invoke::First => 0,
            Invoke::Last => r.callees.len() - 1,
            Invoke::Random => fastrand::usize(..r.callees.len()),
            Invoke::RoundRobin => {
                let at = r.cursor % r.callees.len();
                r.cursor = at + 1;
                at
            }
        };
        let callee = &r.callees[at];
        let (handle, features, disclose) = (callee.handle.clone(), callee.features, callee.disclose_caller || c.disclose_me);
        let mut details = Dict::new();
        if policy != MatchPolicy::Exact {
            details.insert("procedure".into(), Value::Str(c.procedure.clone()));
        }
        let progress = c.receive_progress && features.progressive_call_results;
        if progress {
            details.insert("receive_progress".into(), Value::Bool(true));
        }
        if disclose {
            details.insert("caller".into(), Value::UInt(caller.id));
            if let Some(who) = caller.identity.get() {
                details.insert("caller_authid".into(), Value::Str(who.authid.clone()));
                details.insert("caller_authrole".into(), Value::Str(who.authrole.clone()));
            }
        }
        let peer = reg.peers.entry(handle.id).or_default();
        peer.last_invocation = if peer.last_invocation >= telegraphy_wamp::MAX_ID { 1 } else { peer.last_invocation + 1 };
        let request = peer.last_invocation;
        peer.invocations.insert(request);
        let key = (handle.id, request);
        handle.send(&Message::Invocation { request, registration, details, args: c.args, kwargs: c.kwargs });
        let timer = c.timeout.map(|after| {
            let inner = Arc::downgrade(&self.inner);
            let (caller_id, call_request) = (caller.id, c.request);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                Inner::expire(&inner, caller_id, call_request, after);
            })
            .abort_handle()
        });
        reg.invocations.insert(
            key,
            Invocation {
                caller: caller.clone(),
                call_request: c.request,
                callee: handle,
                progress,
                interruptible: features.call_canceling,
                killed: false,
                started: Instant::now(),
                timer,
            },
        );
        reg.calls.insert((caller.id, c.request), key);
        reg.peers.entry(caller.id).or_default().calls.insert(c.request);
        self.inner.metrics.rpc_calls_in_flight.inc();
        Ok(())
    }

    /// A callee's YIELD: a progressive result goes to the caller (when it
    /// asked for them), the final one ends the call. A YIELD for no call in
    /// flight (canceled, timed out, answered) is dropped.
    pub(crate) fn yielded(&self, callee: Id, request: Id, progress: bool, args: Vec<Value>, kwargs: Dict) {
        let mut reg = self.inner.lock();
        if progress {
            if let Some(inv) = reg.invocations.get(&(callee, request)).filter(|i| i.progress && !i.killed) {
                let result = Message::Result { request: inv.call_request, details: dict! {"progress" => true}, args, kwargs };
                inv.caller.send(&result);
            }
            return;
        }
        let Some(inv) = reg.finish((callee, request)) else { return };
        if inv.killed {
            let message = "the call was canceled; the callee had answered already";
            inv.caller.send(&call_error(inv.call_request, err::CANCELED, message));
            self.inner.metrics.call_done(CallOutcome::Canceled, inv.started);
        } else {
            inv.caller.send(&Message::Result { request: inv.call_request, details: Dict::new(), args, kwargs });
            self.inner.metrics.call_done(CallOutcome::Result, inv.started);
        }
    }

    /// A callee's ERROR for an invocation: the caller gets it as the
    /// call's ERROR (same URI, details and payload).
    pub(crate) fn failed(&self, callee: Id, request: Id, details: Dict, error: String, args: Vec<Value>, kwargs: Dict) {
        let mut reg = self.inner.lock();
        let Some(inv) = reg.finish((callee, request)) else { return };
        let outcome = if inv.killed { CallOutcome::Canceled } else { CallOutcome::Error };
        let error = if inv.killed && error != err::CANCELED { err::CANCELED.to_string() } else { error };
        inv.caller.send(&Message::Error { request_type: code::CALL, request: inv.call_request, details, error, args, kwargs });
        self.inner.metrics.call_done(outcome, inv.started);
    }

    /// A caller's CANCEL. Unknown or finished calls are ignored (the
    /// answer may be on its way).
    pub(crate) fn cancel(&self, caller: Id, request: Id, mode: CancelMode) {
        let mut reg = self.inner.lock();
        let Some(&key) = reg.calls.get(&(caller, request)) else { return };
        let interruptible = reg.invocations.get(&key).is_some_and(|i| i.interruptible);
        let mode = if interruptible { mode } else { CancelMode::Skip };
        if mode == CancelMode::Kill {
            let inv = reg.invocations.get_mut(&key).expect("calls and invocations agree");
            if !inv.killed {
                inv.killed = true;
                inv.callee.send(&Message::Interrupt { request: key.1, options: dict! {"mode" => "kill"} });
            }
            return;
        }
        let Some(inv) = reg.finish(key) else { return };
        if mode == CancelMode::KillNoWait {
            inv.callee.send(&Message::Interrupt { request: key.1, options: dict! {"mode" => "killnowait"} });
        }
        inv.caller.send(&call_error(inv.call_request, err::CANCELED, "the call was canceled"));
        self.inner.metrics.call_done(CallOutcome::Canceled, inv.started);
    }

    /// A session left: its calls are abandoned (their callees interrupted),
    /// the calls it was serving fail for their callers, and its
    /// registrations go. Idempotent.
    pub(crate) fn leave(&self, session: Id) {
        let mut reg = self.inner.lock();
        let Some(peer) = reg.peers.remove(&session) else { return };
        for request in peer.calls {
            let Some(&key) = reg.calls.get(&(session, request)) else { continue };
            let Some(inv) = reg.finish(key) else { continue };
            if inv.interruptible {
                inv.callee
                    .send(&Message::Interrupt { request: key.1, options: dict! {"mode" => "killnowait", "reason" => "wamp.close.caller_left"} });
            }
            self.inner.metrics.call_done(CallOutcome::Canceled, inv.started);
        }
        for request in peer.invocations {
            let Some(inv) = reg.finish((session, request)) else { continue };
            let message = "the callee's session ended before it answered; the call may or may not have run";
            inv.caller.send(&call_error(inv.call_request, err::CANCELED, message));
            self.inner.metrics.call_done(CallOutcome::CalleeLost, inv.started);
        }
        for registration in peer.registrations {
            reg.remove_callee(registration, session);
            self.inner.metrics.rpc_registrations.dec();
        }
    }

    /// Calls `session` has in flight to WAMP callees.
    pub(crate) fn calls_of(&self, session: Id) -> usize {
        self.inner.lock().peers.get(&session).map_or(0, |p| p.calls.len())
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
        debug_assert_eq!(reg.calls.len(), reg.invocations.len());
        reg.calls.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves consistent-enough maps:
        // every update is a few inserts and removes.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call's timeout ran out: the caller gets `wamp.error.timeout`, the
    /// callee an INTERRUPT (when it understands one).
    fn expire(inner: &Weak<Inner>, caller: Id, request: Id, after: Duration) {
        let Some(inner) = inner.upgrade() else { return };
        let mut reg = inner.lock();
        let Some(&key) = reg.calls.get(&(caller, request)) else { return };
        let Some(mut inv) = reg.finish(key) else { return };
        inv.timer = None;
        if inv.interruptible {
            inv.callee.send(&Message::Interrupt { request: key.1, options: dict! {"mode" => "killnowait", "reason" => err::TIMEOUT} });
        }
        let message = format!("the callee did not answer within the call's timeout ({} ms)", after.as_millis());
        inv.caller.send(&call_error(inv.call_request, err::TIMEOUT, &message));
        inner.metrics.call_done(CallOutcome::Timeout, inv.started);
    }
}

impl Registry {
    /// Ends a call in flight: removes it everywhere, stops its timer.
    fn finish(&mut self, key: (Id, Id)) -> Option<Invocation> {
        let inv = self.invocations.remove(&key)?;
        self.calls.remove(&(inv.caller.id, inv.call_request));
        if let Some(p) = self.peers.get_mut(&inv.caller.id) {
            p.calls.remove(&inv.call_request);
        }
        if let Some(p) = self.peers.get_mut(&key.0) {
            p.invocations.remove(&key.1);
        }
        if let Some(timer) = &inv.timer {
            timer.abort();
        }
        Some(inv)
    }

    /// Removes `session` from a registration's callees, and the
    /// registration when it has none left.
    fn remove_callee(&mut self, registration: Id, session: Id) {
        let Some(r) = self.registrations.get_mut(&registration) else { return };
        r.callees.retain(|c| c.handle.id != session);
        if r.callees.is_empty() {
            let (policy, uri) = (r.policy, r.uri.clone());
            self.registrations.remove(&registration);
            self.index.remove(policy, &uri);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let reg = self.registry.get_mut().unwrap_or_else(|e| e.into_inner());
        for inv in reg.invocations.values() {
            if let Some(timer) = &inv.timer {
                timer.abort();
            }
        }
    }
}

fn identity_authid(handle: &SessionHandle) -> &str {
    handle.identity.get().map_or("", |i| i.authid.as_str())
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
