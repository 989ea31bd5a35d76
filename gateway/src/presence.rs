//! Presence: who is on a topic, cluster-wide, for applications ("who else
//! is viewing this order", "how many people follow this topic").
//!
//! A session is *present* on topic `T` while it holds an exact
//! subscription to `T`, on any node; it counts once per session, and is
//! named by its authid. The answer comes from the realm's directory
//! ([`crate::members`]: this node's broker, and the other nodes'
//! subscriptions as their deltas bring them), so it costs nothing on the
//! bus beyond the directory itself.
//!
//! * `telegraphy.presence.get(topic, limit?)` answers
//!   `{topic, count, sessions, authids, names, truncated}`: `count` distinct
//!   authids, `sessions` subscribed sessions, `authids` the first `limit`
//!   of them (sorted; default 100, at most 1,000), `names` the display
//!   names of those that have one (the token's `name` claim).
//! * A subscription to `telegraphy.presence.<T>` gets, at most once per
//!   [`TICK`] and only when something changed,
//!   `{topic, joined, left, names, count, sessions}`: the authids that
//!   appeared and disappeared since the last event (at most [`MAX_LISTED`]
//!   of each; `count` and `sessions` are always exact), with the names of
//!   those who joined. Each node makes these
//!   events for its own listeners from its own view of the directory: a
//!   page with 10,000 viewers costs its listeners one event per tick, not
//!   one per viewer.
//!
//! Both need a role pattern that names `telegraphy.presence.` (`*` alone
//! does not reach it) and the right to subscribe to `T` itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use telegraphy_bus::PRESENCE_PREFIX;
use telegraphy_wamp::{dict, Dict, MatchPolicy, Value};

use crate::node::Node;
use crate::realm::Realm;

/// The presence procedure.
pub(crate) const GET: &str = "telegraphy.presence.get";

/// How often presence events go out (at most; only on change).
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Most authids one presence event names in `joined` and in `left`.
pub(crate) const MAX_LISTED: usize = 100;

/// The default and the largest `limit` of `telegraphy.presence.get`.
pub(crate) const DEFAULT_LIMIT: usize = 100;
pub(crate) const MAX_LIMIT: usize = 1000;

/// Who is on one topic: per authid, its sessions and display name.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Present {
    pub by_authid: BTreeMap<String, (u32, Option<String>)>,
    pub sessions: usize,
}

impl Present {
    fn add(&mut self, authid: &str, name: Option<&str>) {
        let entry = self.by_authid.entry(authid.to_string()).or_default();
        entry.0 += 1;
        if entry.1.is_none() {
            entry.1 = name.map(str::to_string);
        }
        self.sessions += 1;
    }

    /// The display names of `authids` that have one.
    fn names<'a>(&self, authids: impl Iterator<Item = &'a String>) -> Dict {
        authids.filter_map(|a| self.by_authid.get(a).and_then(|(_, n)| n.clone()).map(|n| (a.clone(), Value::Str(n)))).collect()
    }

    /// `telegraphy.presence.get`'s answer.
    pub(crate) fn answer(&self, topic: &str, limit: usize) -> Dict {
        let listed: Vec<&String> = self.by_authid.keys().take(limit).collect();
        dict! {
            "topic" => topic.to_string(),
            "count" => self.by_authid.len() as u64,
            "sessions" => self.sessions as u64,
            "truncated" => self.by_authid.len() > limit,
            "names" => Value::Dict(self.names(listed.iter().copied())),
            "authids" => Value::List(listed.into_iter().map(|a| Value::Str(a.clone())).collect()),
        }
    }
}

/// Who is on `topic` in `realm`, on every node as this node knows it.
pub(crate) fn present(realm: &Realm, topic: &str) -> Present {
    let mut present = Present::default();
    let id =
        realm.broker.subscription_id(MatchPolicy::Exact, topic).unwrap_or_else(|| crate::broker::stable_id(&realm.name, MatchPolicy::Exact, topic));
    realm.broker.subscriber_identities(id, |who| present.add(&who.authid, who.name.as_deref()));
    realm.members.subscriber_authids_away(id, MatchPolicy::Exact, topic, |a, name| present.add(a, name));
    present
}

/// The presence event for a change from `before` to `now`, if anything changed.
fn event(topic: &str, before: &Present, now: &Present) -> Option<Dict> {
    if before == now {
        return None;
    }
    let listed = |from: &'_ Present, without: &Present| -> Vec<String> {
        from.by_authid.keys().filter(|a| !without.by_authid.contains_key(*a)).take(MAX_LISTED).cloned().collect()
    };
    let (joined, left) = (listed(now, before), listed(before, now));
    let strings = |l: Vec<String>| Value::List(l.into_iter().map(Value::Str).collect());
    Some(dict! {
        "topic" => topic.to_string(),
        "names" => Value::Dict(now.names(joined.iter())),
        "joined" => strings(joined),
        "left" => strings(left),
        "count" => now.by_authid.len() as u64,
        "sessions" => now.sessions as u64,
    })
}

/// A realm's followed topics and what their listeners were last told.
#[derive(Default)]
pub(crate) struct Watch {
    told: Mutex<HashMap<String, Present>>,
    /// The directory generation presence was last computed at.
    seen: AtomicU64,
}

impl Watch {
    /// A session of this node now follows `topic`'s presence: changes from
    /// now on are told (what is there now, `telegraphy.presence.get` says).
    pub(crate) fn follow(&self, realm: &Realm, topic: &str) {
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        if !told.contains_key(topic) {
            told.insert(topic.to_string(), present(realm, topic));
        }
    }

    /// Sends each followed topic's change since the last tick.
    fn tick(&self, realm: &Realm) {
        let generation = realm.members.generation();
        if self.seen.load(Ordering::Relaxed) == generation {
            return;
        }
        self.seen.store(generation, Ordering::Relaxed);
        let followed: Vec<Arc<str>> = realm
            .broker
            .subscriptions(|policy, uri| policy == MatchPolicy::Exact && uri.starts_with(PRESENCE_PREFIX))
            .into_iter()
            .map(|s| s.uri)
            .collect();
        let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
        told.retain(|topic, _| followed.iter().any(|f| f[PRESENCE_PREFIX.len()..] == **topic));
        for channel in followed {
            let topic = &channel[PRESENCE_PREFIX.len()..];
            let now = present(realm, topic);
            if let Some(change) = told.get(topic).and_then(|before| event(topic, before, &now)) {
                realm.broker.dispatch_router_event(&channel, vec![Value::Dict(change)], Dict::new(), None);
            }
            told.insert(topic.to_string(), now);
        }
    }
}

/// `GET /presence?topic=T[&realm=R][&limit=N]` with the API key: the same
/// answer as `telegraphy.presence.get`, for the web-app side (a cron
/// report, a server-rendered page).
pub(crate) async fn http(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    axum::extract::Extension(ticket): axum::extract::Extension<Arc<crate::admission::Ticket>>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<HttpQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let answer = (|| {
        let key = node.api_keys.authorize(&headers).map_err(|f| (f.0, f.1, f.2))?;
        key.may_read_presence().map_err(|why| {
            let f = crate::publish::refuse(&node, &key, why, "");
            (f.0, f.1, f.2)
        })?;
        ticket.trust();
        let bad = |m: String| (StatusCode::BAD_REQUEST, "bad_request", m);
        let axum::extract::Query(q) = query.map_err(|e| bad(format!("{e}; ask GET /presence?topic=TOPIC[&realm=REALM][&limit=N]")))?;
        let realm_name = q.realm.as_deref().unwrap_or(&node.config.realms[0]);
        let realm = node.realms.get(realm_name).ok_or_else(|| bad(format!("this gateway serves no realm `{realm_name}`")))?;
        if !telegraphy_wamp::uri::is_valid(&q.topic, node.uri_rules, telegraphy_wamp::UriKind::Concrete)
            || telegraphy_bus::is_reserved_topic(&q.topic)
        {
            return Err(bad(format!("`{}` is not a topic URI", q.topic)));
        }
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad(format!("`limit` must be from 1 to {MAX_LIMIT}")));
        }
        Ok(present(realm, &q.topic).answer(&q.topic, limit))
    })();
    match answer {
        Ok(dict) => (StatusCode::OK, axum::Json(Value::Dict(dict))).into_response(),
        Err((status, error, message)) => (status, axum::Json(serde_json::json!({"error": error, "message": message}))).into_response(),
    }
}

/// `GET /presence`'s query string.
#[derive(serde::Deserialize)]
pub(crate) struct HttpQuery {
    topic: String,
    realm: Option<String>,
    limit: Option<usize>,
}

/// Sends presence events every [`TICK`] until the node aborts it.
pub(crate) async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (_, realm) in node.realms.iter() {
            realm.presence.tick(realm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(who: &[&str]) -> Present {
        let mut p = Present::default();
        for a in who {
            p.add(a, (*a == "cy").then_some("Cy Young"));
        }
        p
    }

    #[test]
    fn an_event_names_who_came_and_went_and_counts_exactly() {
        let before = present(&["ann", "bob", "bob"]);
        let now = present(&["bob", "cy"]);
        let e = event("t", &before, &now).unwrap();
        assert_eq!(e["joined"], Value::List(vec![Value::Str("cy".into())]));
        assert_eq!(e["left"], Value::List(vec![Value::Str("ann".into())]));
        assert_eq!(e["names"], Value::Dict(dict! {"cy" => "Cy Young"}), "the names of those who joined");
        assert_eq!((e["count"].clone(), e["sessions"].clone()), (Value::UInt(2), Value::UInt(2)));
        assert_eq!(event("t", &now, &now), None, "nothing changed: no event");
        // A second tab of someone already there changes the session count only.
        let e = event("t", &now, &present(&["bob", "cy", "cy"])).unwrap();
        assert_eq!((e["joined"].clone(), e["sessions"].clone()), (Value::List(vec![]), Value::UInt(3)));
    }

    #[test]
    fn a_burst_is_listed_up_to_the_cap_and_counted_in_full() {
        let many: Vec<String> = (0..10_000).map(|i| format!("user{i:05}")).collect();
        let now = present(&many.iter().map(String::as_str).collect::<Vec<_>>());
        let e = event("t", &Present::default(), &now).unwrap();
        let len = |v: &Value| match v {
            Value::List(l) => l.len(),
            other => panic!("not a list: {other:?}"),
        };
        assert_eq!(len(&e["joined"]), MAX_LISTED);
        assert_eq!(e["count"], Value::UInt(10_000));
        let answer = now.answer("t", DEFAULT_LIMIT);
        assert_eq!(answer["truncated"], Value::Bool(true));
        assert_eq!(len(&answer["authids"]), DEFAULT_LIMIT);
    }
}
