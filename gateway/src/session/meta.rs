//! The session meta API (wamp-proto, "Session Meta API"): `wamp.session.count`,
//! `list`, `get`, `kill`, `kill_by_authid`, `kill_by_authrole` and
//! `kill_all`, answered from the realm's members on every node
//! ([`crate::members`]), so the answers are cluster-wide; and testaments
//! (`add_testament`, `flush_testaments`), kept with the session's entry on
//! every node so that another node publishes them if this one dies. A role
//! reaches them only with a `call` pattern that names them
//! (`wamp.session.*`): `*` alone does not reach the router's procedures.

use std::collections::BTreeMap;

use telegraphy_bus::is_reserved_topic;
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, uri, Dict, Id, MatchPolicy, Message, UriKind, Value};

use super::{Session, State};
use crate::authz::{Decision, Permissions};
use crate::broker::LocalSubscription;
use crate::cluster::{Control, KillTarget};
use crate::members::kill_here;
use crate::metrics::CallOutcome;
use crate::realm::Realm;

/// The session meta procedures' common prefix.
pub(super) const PREFIX: &str = crate::members::META_PREFIX;

/// The subscription meta procedures' common prefix.
pub(super) const SUBSCRIPTION_PREFIX: &str = crate::members::SUBSCRIPTION_PREFIX;

/// The reason a killed session's GOODBYE gives when the caller names none.
const KILLED_DEFAULT: &str = "wamp.close.normal";

/// The procedures the router answers itself (`wamp.subscription.get_events`
/// is answered with the history, elsewhere).
const ROUTER_PROCEDURES: &[&str] = &[
    "wamp.session.count",
    "wamp.session.list",
    "wamp.session.get",
    "wamp.session.kill",
    "wamp.session.kill_by_authid",
    "wamp.session.kill_by_authrole",
    "wamp.session.kill_all",
    "wamp.session.add_testament",
    "wamp.session.flush_testaments",
    "wamp.subscription.list",
    "wamp.subscription.lookup",
    "wamp.subscription.match",
    "wamp.subscription.get",
    "wamp.subscription.list_subscribers",
    "wamp.subscription.count_subscribers",
    crate::presence::GET,
];

type Answer = Result<Vec<Value>, (&'static str, String)>;

/// `filter_authroles`: absent or null (every role), or a list of strings.
fn roles_filter(args: &[Value]) -> Result<Option<Vec<String>>, (&'static str, String)> {
    match args.first() {
        None | Some(Value::Null) => Ok(None),
        Some(Value::List(roles)) => roles
            .iter()
            .map(|r| match r {
                Value::Str(s) => Ok(s.clone()),
                other => Err((err::INVALID_ARGUMENT, format!("filter_authroles must be a list of strings, found {}", other.type_name()))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err((err::INVALID_ARGUMENT, format!("filter_authroles must be a list of strings, got {}", other.type_name()))),
    }
}

fn session_arg(args: &[Value]) -> Result<Id, (&'static str, String)> {
    match args.first() {
        Some(Value::UInt(id)) => Ok(*id),
        _ => Err((err::INVALID_ARGUMENT, "the first argument must be a session id".into())),
    }
}

fn text_arg(args: &[Value], what: &str) -> Result<String, (&'static str, String)> {
    match args.first() {
        Some(Value::Str(s)) => Ok(s.clone()),
        _ => Err((err::INVALID_ARGUMENT, format!("the first argument must be the {what} (a string)"))),
    }
}

/// A testament's `scope`: true for `detached`, false for `destroyed` (the default).
fn scope(kwargs: &Dict) -> Result<bool, (&'static str, String)> {
    match kwargs.get("scope") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Str(s)) if s == "destroyed" => Ok(false),
        Some(Value::Str(s)) if s == "detached" => Ok(true),
        Some(_) => Err((err::INVALID_ARGUMENT, "`scope` must be `destroyed` or `detached`".into())),
    }
}

impl Session {
    /// `wamp.session.add_testament(topic, args, kwargs)`: the event is
    /// published when the session ends, also if its node dies. The topic
    /// must be one the session may publish to.
    fn add_testament(&self, realm: &crate::realm::Realm, args: Vec<Value>, kwargs: &Dict) -> Answer {
        let detached = scope(kwargs)?;
        let mut it = args.into_iter();
        let topic = match it.next() {
            Some(Value::Str(t)) => t,
            _ => return Err((err::INVALID_ARGUMENT, "the first argument must be the testament's topic".into())),
        };
        let args = match it.next() {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::List(a)) => a,
            Some(_) => return Err((err::INVALID_ARGUMENT, "the second argument must be the event's args (a list)".into())),
        };
        let event_kwargs = match it.next() {
            None | Some(Value::Null) => Dict::new(),
            Some(Value::Dict(k)) => k,
            Some(_) => return Err((err::INVALID_ARGUMENT, "the third argument must be the event's kwargs (a dict)".into())),
        };
        if let Err(e) = telegraphy_bus::check_topic(&topic, self.node.uri_rules) {
            return Err((err::INVALID_URI, format!("testament topic: {e}")));
        }
        let State::Established { rights, .. } = &self.state else { return Ok(vec![]) };
        if !rights.permissions.may_publish(&topic) {
            return Err((err::NOT_AUTHORIZED, format!("your role may not publish to `{topic}`, so it cannot leave a testament there")));
        }
        let mut full = false;
        let testament = crate::members::Testament { detached, topic, args, kwargs: event_kwargs };
        self.node.member_changed(realm, self.handle.id, |m| {
            if m.testaments.len() >= crate::members::MAX_TESTAMENTS {
                full = true;
            } else {
                m.testaments.push(testament);
            }
        });
        if full {
            let most = crate::members::MAX_TESTAMENTS;
            return Err((err::LIMIT_EXCEEDED, format!("this session holds {most} testaments, the most one may; flush some first")));
        }
        Ok(vec![])
    }

    /// A CALL of one of the router's procedures: the session and
    /// subscription meta APIs, presence.
    pub(super) fn router_call(&mut self, request: Id, procedure: &str, args: Vec<Value>, kwargs: Dict) {
        let State::Established { realm, rights, .. } = &self.state else { return };
        if !ROUTER_PROCEDURES.contains(&procedure) {
            // Unknown whatever the role: not worth a "not authorized".
            self.node.metrics.call_answered_here(CallOutcome::NoSuchProcedure);
            let message = format!(
                "no procedure `{procedure}` here: the router's own are the session meta API (`wamp.session.*`), the subscription meta API (`wamp.subscription.*`) and `{}`",
                crate::presence::GET
            );
            return self.error(code::CALL, request, err::NO_SUCH_PROCEDURE, &message);
        }
        if !rights.permissions.may_call(procedure) {
            self.node.metrics.denied_call.inc();
            self.node.metrics.call_answered_here(CallOutcome::Refused);
            let family = procedure.rsplit_once('.').map_or(procedure, |(f, _)| f);
            let message = format!(
                "your role may not call `{procedure}`: the router's procedures need a call pattern that names them, e.g. roles.NAME.call = [\"{family}.*\"] (`*` alone does not reach them)"
            );
            return self.error(code::CALL, request, err::NOT_AUTHORIZED, &message);
        }
        if rights.call_limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            // Meta calls count against the role's call rate like any call
            // (add_testament sends a message to every node).
            self.node.metrics.rate_limited.inc();
            self.node.metrics.call_answered_here(CallOutcome::Refused);
            return self.error(code::CALL, request, err::RATE_LIMITED, "you call faster than your role allows (roles.NAME.call_rate); slow down");
        }
        let realm = realm.clone();
        let permissions = rights.permissions.clone();
        let answer = if let Some(name) = procedure.strip_prefix(SUBSCRIPTION_PREFIX) {
            subscription_meta(&realm, &permissions, name, &args, &kwargs)
        } else if procedure == crate::presence::GET {
            presence_get(&realm, &permissions, &args, &kwargs)
        } else {
            // The rest of ROUTER_PROCEDURES: the session meta API.
            self.session_meta(&realm, procedure, args, kwargs)
        };
        match answer {
            Ok(args) => {
                self.node.metrics.call_answered_here(CallOutcome::Result);
                self.send(&Message::Result { request, details: Dict::new(), args, kwargs: Dict::new() });
            }
            Err((error, message)) => {
                self.node.metrics.call_answered_here(if error == err::NO_SUCH_PROCEDURE { CallOutcome::NoSuchProcedure } else { CallOutcome::Error });
                self.error(code::CALL, request, error, &message);
            }
        }
    }

    /// A `wamp.session.*` procedure.
    fn session_meta(&mut self, realm: &crate::realm::Realm, procedure: &str, args: Vec<Value>, kwargs: Dict) -> Answer {
        let me = self.handle.id;
        match &procedure[PREFIX.len()..] {
            "count" => roles_filter(&args).map(|f| vec![Value::UInt(realm.members.count(f.as_deref()) as u64)]),
            "list" => roles_filter(&args)
                .map(|f| vec![Value::List(realm.members.select(f.as_deref(), |_| true).into_iter().map(|m| Value::UInt(m.session)).collect())]),
            "get" => session_arg(&args).and_then(|id| match realm.members.find(id) {
                Some(m) => Ok(vec![Value::Dict(m.details())]),
                None => Err((err::NO_SUCH_SESSION, format!("no session {id} in this realm"))),
            }),
            kill @ ("kill" | "kill_by_authid" | "kill_by_authrole" | "kill_all") => self.kill(realm, kill, &args, &kwargs, me),
            "add_testament" => self.add_testament(realm, args, &kwargs),
            "flush_testaments" => scope(&kwargs).map(|detached| {
                self.node.member_changed(realm, me, |m| m.testaments.retain(|t| t.detached != detached));
                vec![]
            }),
            other => Err((
                err::NO_SUCH_PROCEDURE,
                format!(
                    "no session meta procedure `{PREFIX}{other}`: count, list, get, kill, kill_by_authid, kill_by_authrole, kill_all, add_testament, flush_testaments"
                ),
            )),
        }
    }

    /// `kill`, `kill_by_authid`, `kill_by_authrole`, `kill_all`: this
    /// node's sessions are closed now, the other nodes' through the cluster.
    fn kill(&self, realm: &crate::realm::Realm, which: &str, args: &[Value], kwargs: &Dict, me: Id) -> Answer {
        let reason = match kwargs.get("reason") {
            None | Some(Value::Null) => KILLED_DEFAULT.to_string(),
            Some(Value::Str(r)) if !r.is_empty() && uri::is_valid(r, self.node.uri_rules, UriKind::Concrete) => r.clone(),
            Some(_) => return Err((err::INVALID_URI, "`reason` must be a valid, non-empty URI".into())),
        };
        let message = match kwargs.get("message") {
            None | Some(Value::Null) => String::new(),
            Some(Value::Str(m)) => m.clone(),
            Some(_) => return Err((err::INVALID_ARGUMENT, "`message` must be a string".into())),
        };
        let target = match which {
            "kill" => KillTarget::Session(session_arg(args)?),
            "kill_by_authid" => KillTarget::Authid(text_arg(args, "authid")?),
            "kill_by_authrole" => KillTarget::Authrole(text_arg(args, "authrole")?),
            _ => KillTarget::All,
        };
        let named = |m: &crate::members::Member| match &target {
            KillTarget::Session(id) => m.session == *id,
            KillTarget::Authid(a) => m.authid == *a,
            KillTarget::Authrole(r) => m.authrole == *r,
            KillTarget::All => true,
        };
        let doomed = realm.members.select(None, |m| m.session != me && named(m));
        if let KillTarget::Session(id) = target {
            if doomed.is_empty() {
                return Err((err::NO_SUCH_SESSION, format!("no other session {id} in this realm")));
            }
        }
        kill_here(realm, &target, me, &reason, &message);
        if let Some(cluster) = &self.node.cluster {
            let kill = Control::Kill { from: cluster.node, realm: realm.name.clone(), target: target.clone(), except: me, reason, message };
            if let Err(e) = cluster.send(None, kill, None) {
                return Err((err::BUS_UNAVAILABLE, format!("this node's sessions were closed, the other nodes' could not be told ({e}); retry")));
            }
        }
        Ok(match target {
            KillTarget::Session(_) => vec![],
            KillTarget::Authid(_) => vec![Value::List(doomed.iter().map(|m| Value::UInt(m.session)).collect())],
            KillTarget::Authrole(_) | KillTarget::All => vec![Value::UInt(doomed.len() as u64)],
        })
    }
}

/// Every subscription of the realm, on any node, that the caller could make
/// itself (a role sees only topics it may read), by id.
fn visible(realm: &Realm, permissions: &Permissions, mut keep: impl FnMut(MatchPolicy, &str) -> bool) -> BTreeMap<Id, LocalSubscription> {
    crate::members::everywhere(realm, |policy, uri| permissions.subscribe(policy, uri) == Decision::Full && keep(policy, uri))
}

/// Subscription `id`, cluster-wide, if the caller may see it.
fn one(realm: &Realm, permissions: &Permissions, args: &[Value]) -> Result<LocalSubscription, (&'static str, String)> {
    let id = match args.first() {
        Some(Value::UInt(id)) => *id,
        _ => return Err((err::INVALID_ARGUMENT, "the first argument must be a subscription id".into())),
    };
    let mut all = BTreeMap::new();
    for s in realm.broker.describe(id).into_iter().chain(realm.members.subscription_away(id)) {
        crate::members::merge(&mut all, s);
    }
    all.remove(&id)
        .filter(|s| !is_reserved_topic(&s.uri) && permissions.subscribe(s.policy, &s.uri) == Decision::Full)
        .ok_or_else(|| (err::NO_SUCH_SUBSCRIPTION, format!("no subscription {id} in this realm")))
}

fn topic_arg(args: &[Value]) -> Result<&str, (&'static str, String)> {
    match args.first() {
        Some(Value::Str(t)) => Ok(t),
        _ => Err((err::INVALID_ARGUMENT, "the first argument must be a topic URI".into())),
    }
}

/// A `wamp.subscription.*` procedure (`get_events` is answered elsewhere).
fn subscription_meta(realm: &Realm, permissions: &Permissions, name: &str, args: &[Value], kwargs: &Dict) -> Answer {
    match name {
        "list" => {
            let mut lists: BTreeMap<&str, Vec<Value>> = [("exact", vec![]), ("prefix", vec![]), ("wildcard", vec![])].into_iter().collect();
            for s in visible(realm, permissions, |_, _| true).into_values() {
                lists.entry(s.policy.as_str()).or_default().push(Value::UInt(s.id));
            }
            Ok(vec![Value::Dict(lists.into_iter().map(|(k, v)| (k.to_string(), Value::List(v))).collect())])
        }
        "lookup" => {
            let topic = topic_arg(args)?;
            let options = match args.get(1) {
                None | Some(Value::Null) => kwargs,
                Some(Value::Dict(d)) => d,
                Some(_) => return Err((err::INVALID_ARGUMENT, "the second argument must be the options (a dict)".into())),
            };
            let policy = match options.get("match") {
                None | Some(Value::Null) => MatchPolicy::Exact,
                Some(Value::Str(m)) => MatchPolicy::parse(m).ok_or_else(|| (err::INVALID_ARGUMENT, format!("unknown match policy `{m}`; use exact, prefix or wildcard")))?,
                Some(_) => return Err((err::INVALID_ARGUMENT, "`match` must be a string".into())),
            };
            let found = visible(realm, permissions, |p, uri| p == policy && uri == topic).into_keys().next();
            Ok(vec![found.map_or(Value::Null, Value::UInt)])
        }
        "match" => {
            let topic = topic_arg(args)?;
            let ids: Vec<Value> = visible(realm, permissions, |policy, uri| policy.matches(uri, topic)).into_keys().map(Value::UInt).collect();
            Ok(vec![if ids.is_empty() { Value::Null } else { Value::List(ids) }])
        }
        "get" => one(realm, permissions, args).map(|s| vec![Value::Dict(crate::members::subscription_details(s.id, s.policy, &s.uri, s.created_us))]),
        "list_subscribers" => one(realm, permissions, args).map(|s| vec![Value::List(s.sessions.into_iter().map(Value::UInt).collect())]),
        "count_subscribers" => one(realm, permissions, args).map(|s| vec![Value::UInt(s.sessions.len() as u64)]),
        other => Err((
            err::NO_SUCH_PROCEDURE,
            format!(
                "no subscription meta procedure `{SUBSCRIPTION_PREFIX}{other}`: list, lookup, match, get, list_subscribers, count_subscribers, get_events"
            ),
        )),
    }
}

/// `telegraphy.presence.get(topic, limit?)`: who is on `topic`,
/// cluster-wide; only for a caller that may subscribe to `topic` itself.
fn presence_get(realm: &Realm, permissions: &Permissions, args: &[Value], kwargs: &Dict) -> Answer {
    use crate::presence::{DEFAULT_LIMIT, MAX_LIMIT};
    let topic = topic_arg(args)?;
    let limit = match kwargs.get("limit").or(args.get(1)) {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
            _ => return Err((err::INVALID_ARGUMENT, format!("`limit` must be an integer from 1 to {MAX_LIMIT}"))),
        },
    };
    if is_reserved_topic(topic) || permissions.subscribe(MatchPolicy::Exact, topic) != Decision::Full {
        return Err((err::NOT_AUTHORIZED, format!("you may see who is on `{topic}` only if your role may subscribe to `{topic}` itself")));
    }
    Ok(vec![Value::Dict(crate::presence::present(realm, topic).answer(topic, limit))])
}
