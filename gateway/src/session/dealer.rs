//! The dealer roles of a session: REGISTER, UNREGISTER, YIELD and ERROR as
//! a callee; CALL and CANCEL as a caller. This module reads and checks the
//! messages (options, URIs, rights, rates); [`crate::dealer`] routes them.

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use super::{Session, State};
use crate::dealer::{CalleeFeatures, Calling, CancelMode, Invoke, Registering};
use crate::metrics::CallOutcome;

use super::broker::GET_EVENTS;
/// Procedures under this prefix are the router's own.
const RESERVED: &str = "wamp.";

/// The dealer role's state for one session: what it announced as a callee.
/// Its registrations and calls live in the realm's dealer, keyed by the
/// session id, and go in [`Session::cleanup`].
#[derive(Debug, Default)]
pub(super) struct DealerState {
    pub(super) features: CalleeFeatures,
}

/// A boolean option (absent or null: false).
fn flag(options: &Dict, key: &str) -> Result<bool, String> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| format!("option `{key}` must be a boolean, got {}", v.type_name())),
    }
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
        disclose_caller: flag(options, "disclose_caller")?,
        force_reregister: flag(options, "force_reregister")?,
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
        receive_progress: flag(options, "receive_progress")?,
        disclose_me: flag(options, "disclose_me")?,
        timeout,
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
        if r.procedure.starts_with(RESERVED) {
            let message = format!("procedures under `{RESERVED}` are the router's own; register under your application's prefix");
            return self.error(code::REGISTER, request, err::INVALID_URI, &message);
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
        if let Err((outcome, error, message)) = self.route_call(request, options, procedure, args, kwargs) {
            self.node.metrics.call_refused(outcome);
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
        if procedure.starts_with(RESERVED) {
            let message = format!("no procedure `{procedure}` here: the router answers `{GET_EVENTS}` of its own procedures");
            return Err((CallOutcome::NoSuchProcedure, err::NO_SUCH_PROCEDURE, message));
        }
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
        let calling = read_call(request, &options, procedure, args, kwargs).map_err(|m| refused(err::INVALID_ARGUMENT, m))?;
        realm.dealer.call(&self.handle, calling).map_err(|(error, message)| {
            let outcome = if error == err::NO_SUCH_PROCEDURE { CallOutcome::NoSuchProcedure } else { CallOutcome::Refused };
            (outcome, error, message)
        })
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
        let State::Established { realm, .. } = &self.state else { return };
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
