//! The dealer roles of a session: REGISTER, UNREGISTER, YIELD and ERROR as
//! a callee; CALL and CANCEL as a caller. This module reads and checks the
//! messages (options, URIs, rights, rates); [`crate::dealer`] routes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use super::{flag_option, Session, State};
use crate::dealer::{CalleeFeatures, Calling, CancelMode, Invoke, Registering};
use crate::http_callee::{Answer, Caller, HttpCall};
use crate::metrics::CallOutcome;

use super::broker::GET_EVENTS;

/// The dealer role's state for one session: what it announced as a callee,
/// and its calls to the web-app over HTTP (each a task, by CALL request id).
/// Its registrations and WAMP calls live in the realm's dealer, keyed by the
/// session id. Both go in [`Session::cleanup`].
#[derive(Debug, Default)]
pub(super) struct DealerState {
    pub(super) features: CalleeFeatures,
    pub(super) http_calls: Arc<Mutex<HttpCalls>>,
}

/// A session's calls to the web-app: CALL request id → (task, start).
type HttpCalls = HashMap<Id, (tokio::task::AbortHandle, Instant)>;

impl DealerState {
    /// Stops every HTTP call of a session that ended.
    pub(super) fn leave(&self, metrics: &crate::metrics::Metrics) {
        for (_, (task, started)) in lock(&self.http_calls).drain() {
            task.abort();
            metrics.http_call_error("canceled");
            metrics.call_done(CallOutcome::Canceled, started);
        }
    }
}

fn lock(calls: &Mutex<HttpCalls>) -> std::sync::MutexGuard<'_, HttpCalls> {
    calls.lock().unwrap_or_else(|e| e.into_inner())
}

/// A string option (absent or null: `None`).
fn text<'a>(options: &'a Dict, key: &str) -> Result<Option<&'a str>, String> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(v) => Err(format!("option `{key}` must be a string, got {}", v.type_name())),
    }
}

fn read_register(options: &Dict, procedure: String) -> Result<Registering, String> {
    let policy = match text(options, "match")? {
        None => MatchPolicy::Exact,
        Some(s) => MatchPolicy::parse(s).ok_or_else(|| format!("unknown match policy `{s}`; use exact, prefix or wildcard"))?,
    };
    let invoke = match text(options, "invoke")? {
        None => Invoke::Single,
        Some(s) => Invoke::parse(s).ok_or_else(|| format!("unknown invoke policy `{s}`; use single, roundrobin, random, first or last"))?,
    };
    Ok(Registering {
        policy,
        procedure,
        invoke,
        disclose_caller: flag_option(options, "disclose_caller")?,
        force_reregister: flag_option(options, "force_reregister")?,
    })
}

fn read_call(request: Id, options: &Dict, procedure: String, args: Vec<Value>, kwargs: Dict) -> Result<Calling, String> {
    let timeout = match options.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::UInt(0)) => None,
        Some(Value::UInt(ms)) => Some(std::time::Duration::from_millis(*ms)),
        // Some clients send a float (JavaScript numbers).
        Some(Value::Float(ms)) if ms.is_finite() && *ms >= 0.0 => Some(std::time::Duration::from_millis(*ms as u64)).filter(|d| !d.is_zero()),
        Some(v) => return Err(format!("option `timeout` must be a number of milliseconds (0: none), got {}", v.type_name())),
    };
    Ok(Calling {
        request,
        procedure,
        args,
        kwargs,
        receive_progress: flag_option(options, "receive_progress")?,
        disclose_me: flag_option(options, "disclose_me")?,
        timeout,
        other_calls: 0,
    })
}

impl Session {
    /// REGISTER.
    pub(super) fn register(&mut self, request: Id, options: Dict, procedure: String) {
        let r = match read_register(&options, procedure) {
            Ok(r) => r,
            Err(message) => return self.error(code::REGISTER, request, err::INVALID_ARGUMENT, &message),
        };
        if !uri::is_valid(&r.procedure, self.node.uri_rules, UriKind::Pattern(r.policy)) {
            let message = format!("`{}` is not a valid procedure for a {} registration", r.procedure, r.policy);
            return self.error(code::REGISTER, request, err::INVALID_URI, &message);
        }
        if telegraphy_bus::is_reserved_topic(&r.procedure) {
            let message = format!(
                "procedures under `wamp.` and `{}` are the router's own; register under your application's prefix",
                telegraphy_bus::PRESENCE_PREFIX
            );
            return self.error(code::REGISTER, request, err::INVALID_URI, &message);
        }
        if r.policy == MatchPolicy::Exact && self.node.http_callees.as_ref().is_some_and(|h| h.find(&r.procedure).is_some()) {
            let message = format!("`{}` is served by the web-app over HTTP ([[rpc.http]]); register another procedure", r.procedure);
            return self.error(code::REGISTER, request, err::PROCEDURE_ALREADY_EXISTS, &message);
        }
        let State::Established { realm, rights, dealer, .. } = &self.state else { return };
        if !rights.permissions.may_register(r.policy, &r.procedure) {
            self.node.metrics.denied_register.inc();
            let message = format!("your role may not register `{}` ({}; roles.NAME.register)", r.procedure, r.policy);
            return self.error(code::REGISTER, request, err::NOT_AUTHORIZED, &message);
        }
        match realm.dealer.register(&self.handle, dealer.features, r) {
            Ok(registration) => self.send(&Message::Registered { request, registration }),
            Err((error, message)) => self.error(code::REGISTER, request, error, &message),
        }
    }

    /// UNREGISTER.
    pub(super) fn unregister(&mut self, request: Id, registration: Id) {
        let State::Established { realm, .. } = &self.state else { return };
        match realm.dealer.unregister(self.handle.id, registration) {
            Ok(()) => self.send(&Message::Unregistered { request, details: Dict::new() }),
            Err((error, message)) => self.error(code::UNREGISTER, request, error, &message),
        }
    }

    /// CALL: the router's own procedures, or a callee's.
    pub(super) async fn call(&mut self, request: Id, options: Dict, procedure: String, args: Vec<Value>, kwargs: Dict) {
        if procedure == GET_EVENTS {
            return self.get_events(request, args, kwargs).await;
        }
        if telegraphy_bus::is_reserved_topic(&procedure) {
            // The session and subscription meta APIs, presence.
            return self.router_call(request, &procedure, args, kwargs);
        }
        if let Err((outcome, error, message)) = self.route_call(request, options, procedure, args, kwargs) {
            self.node.metrics.call_answered_here(outcome);
            self.error(code::CALL, request, error, &message);
        }
    }

    fn route_call(
        &mut self,
        request: Id,
        options: Dict,
        procedure: String,
        args: Vec<Value>,
        kwargs: Dict,
    ) -> Result<(), (CallOutcome, &'static str, String)> {
        let refused = |error: &'static str, message: String| (CallOutcome::Refused, error, message);
        if !uri::is_valid(&procedure, self.node.uri_rules, UriKind::Concrete) {
            return Err(refused(err::INVALID_URI, format!("`{procedure}` is not a valid procedure URI")));
        }
        let State::Established { realm, rights, .. } = &self.state else { return Ok(()) };
        if !rights.permissions.may_call(&procedure) {
            self.node.metrics.denied_call.inc();
            return Err(refused(err::NOT_AUTHORIZED, format!("your role may not call `{procedure}` (roles.NAME.call)")));
        }
        if rights.call_limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            self.node.metrics.rate_limited.inc();
            return Err(refused(err::RATE_LIMITED, "you call faster than your role allows (roles.NAME.call_rate); slow down".into()));
        }
        let disclose = rights.disclose_caller;
        let State::Established { dealer, .. } = &self.state else { return Ok(()) };
        let http_in_flight = lock(&dealer.http_calls).len();
        let mut calling = read_call(request, &options, procedure, args, kwargs).map_err(|m| refused(err::INVALID_ARGUMENT, m))?;
        calling.other_calls = http_in_flight;
        calling.disclose_me |= disclose;
        if let Some(at) = self.node.http_callees.as_ref().and_then(|h| h.find(&calling.procedure)) {
            let wamp_in_flight = realm.dealer.calls_of(self.handle.id);
            return self.call_over_http(at, calling, wamp_in_flight + http_in_flight);
        }
        realm.dealer.call(&self.handle, calling).map_err(|(error, message)| {
            let outcome = if error == err::NO_SUCH_PROCEDURE { CallOutcome::NoSuchProcedure } else { CallOutcome::Refused };
            (outcome, error, message)
        })
    }

    /// A call of a procedure the web-app serves (`[[rpc.http]]`): a task
    /// makes the request and answers the caller; CANCEL and the session's
    /// end abort it.
    fn call_over_http(&mut self, at: usize, c: Calling, in_flight: usize) -> Result<(), (CallOutcome, &'static str, String)> {
        let refused = |error: &'static str, message: String| (CallOutcome::Refused, error, message);
        let max = self.node.config.limits.max_calls_per_session;
        if in_flight >= max {
            return Err(refused(
                err::LIMIT_EXCEEDED,
                format!("this session has {in_flight} calls in flight, the most one session may have (limits.max_calls_per_session)"),
            ));
        }
        let State::Established { realm, dealer, .. } = &self.state else { return Ok(()) };
        let callees = self.node.http_callees.clone().expect("found an endpoint");
        let Some(permit) = callees.try_acquire(at) else {
            self.node.metrics.http_call_error("unavailable");
            return Err(refused(
                err::LIMIT_EXCEEDED,
                format!("the web-app has as many calls of `{}` in flight as `rpc.http.max_concurrency` allows; retry later", c.procedure),
            ));
        };
        let identity = self.handle.identity.get();
        let call = HttpCall {
            procedure: c.procedure,
            realm: realm.name.clone(),
            args: c.args,
            kwargs: c.kwargs,
            caller: Caller {
                session: self.handle.id,
                authid: identity.map(|i| i.authid.clone()).unwrap_or_default(),
                authrole: identity.map(|i| i.authrole.clone()).unwrap_or_default(),
            },
            receive_progress: c.receive_progress,
        };
        let (handle, metrics, calls, request, timeout) =
            (self.handle.clone(), self.node.metrics.clone(), dealer.http_calls.clone(), c.request, c.timeout);
        let mut tasks = lock(&dealer.http_calls);
        metrics.rpc_calls_in_flight.inc();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let progress =
                |args, kwargs| handle.send(&Message::Result { request, details: telegraphy_wamp::dict! {"progress" => true}, args, kwargs });
            let answer = callees.call(at, &call, timeout, progress).await;
            metrics.rpc_http_duration.observe(started.elapsed().as_secs_f64());
            // Removed first: a CANCEL that finds nothing does not answer twice.
            if lock(&calls).remove(&request).is_none() {
                return;
            }
            let outcome = match answer {
                Answer::Result { args, kwargs } => {
                    handle.send(&Message::Result { request, details: Dict::new(), args, kwargs });
                    CallOutcome::Result
                }
                Answer::Error { uri, args, kwargs } => {
                    let (reason, outcome) = match uri.as_str() {
                        err::CALLEE_UNAVAILABLE => ("unavailable", CallOutcome::Error),
                        err::CALLEE_FAILED => ("failed", CallOutcome::Error),
                        err::TIMEOUT => ("timeout", CallOutcome::Timeout),
                        _ => ("error", CallOutcome::Error),
                    };
                    metrics.http_call_error(reason);
                    handle.send(&Message::Error { request_type: code::CALL, request, details: Dict::new(), error: uri, args, kwargs });
                    outcome
                }
            };
            metrics.call_done(outcome, started);
        });
        tasks.insert(request, (task.abort_handle(), Instant::now()));
        Ok(())
    }

    /// CANCEL (default mode: `killnowait`).
    pub(super) fn cancel(&mut self, request: Id, options: Dict) {
        let mode = match text(&options, "mode") {
            Ok(None) => CancelMode::KillNoWait,
            Ok(Some(s)) => match CancelMode::parse(s) {
                Some(m) => m,
                None => {
                    let message = format!("unknown cancel mode `{s}`; use skip, kill or killnowait");
                    return self.error(code::CANCEL, request, err::INVALID_ARGUMENT, &message);
                }
            },
            Err(message) => return self.error(code::CANCEL, request, err::INVALID_ARGUMENT, &message),
        };
        let State::Established { realm, dealer, .. } = &self.state else { return };
        let http = lock(&dealer.http_calls).remove(&request);
        if let Some((task, started)) = http {
            // Dropping the request closes its connection: the web-app sees the client go.
            task.abort();
            self.node.metrics.http_call_error("canceled");
            self.node.metrics.call_done(CallOutcome::Canceled, started);
            let message = "the call was canceled; the web-app's request was aborted";
            return self.error(code::CALL, request, err::CANCELED, message);
        }
        realm.dealer.cancel(self.handle.id, request, mode);
    }

    /// YIELD from a callee.
    pub(super) fn yielded(&mut self, request: Id, options: Dict, args: Vec<Value>, kwargs: Dict) {
        let progress = matches!(options.get("progress"), Some(Value::Bool(true)));
        let State::Established { realm, .. } = &self.state else { return };
        realm.dealer.yielded(self.handle.id, request, progress, args, kwargs);
    }

    /// ERROR from a callee, for an INVOCATION.
    pub(super) fn invocation_failed(&mut self, request: Id, details: Dict, error: String, args: Vec<Value>, kwargs: Dict) {
        let State::Established { realm, .. } = &self.state else { return };
        realm.dealer.failed(self.handle.id, request, details, error, args, kwargs);
    }
}
