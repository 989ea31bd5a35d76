//! The subscription meta API (`wamp.subscription.*`) and presence
//! (`telegraphy.presence.*`), on one node and across two nodes on the
//! machine's Redis and RabbitMQ: the procedures answer for the whole
//! cluster, the events come from every node, a role sees only the topics
//! it may read, and `*` reaches none of it.

use telegraphy_testkit as util;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use telegraphy_gateway::config::RoleConfig;
use telegraphy_gateway::Config;
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Message, Serialization, Value};
use util::{Client, SharedBus, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;
const WITHIN: Duration = Duration::from_secs(10);
const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

const META_EVENTS: [&str; 4] =
    ["wamp.subscription.on_create", "wamp.subscription.on_subscribe", "wamp.subscription.on_unsubscribe", "wamp.subscription.on_delete"];

/// Anonymous sessions may do everything and name the meta API and
/// presence; a `viewer` (JWT) may read `public.*` only, and names the
/// subscription meta API and presence.
fn config_on(bus: &SharedBus) -> Config {
    let mut c = util::config();
    c.auth.jwt_secret = Some(SECRET.into());
    let anonymous = c.roles.get_mut("anonymous").expect("the test config has an anonymous role");
    anonymous.call.extend(["wamp.subscription.*".into(), "telegraphy.presence.*".into()]);
    anonymous.subscribe.extend(META_EVENTS.iter().map(|t| t.to_string()).chain(["telegraphy.presence.*".into()]));
    c.roles.insert(
        "viewer".into(),
        RoleConfig {
            subscribe: vec!["public.*".into(), "telegraphy.presence.*".into(), "wamp.subscription.on_create".into()],
            call: vec!["wamp.subscription.*".into(), "telegraphy.presence.get".into()],
            ..Default::default()
        },
    );
    bus.apply(&mut c);
    c
}

fn ticket(authid: &str, role: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    // A display name for presence: the authid in capitals.
    let claims = serde_json::json!({"sub": authid, "role": role, "exp": exp, "name": authid.to_uppercase()});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn uint(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an id: {v:?}"))
}

fn ids(v: &Value) -> BTreeSet<u64> {
    match v {
        Value::List(l) => l.iter().map(uint).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    match v {
        Value::List(l) => l.iter().map(|s| s.as_str().unwrap_or_else(|| panic!("{s:?}")).to_string()).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// The one value a procedure answered.
async fn answer(c: &mut Client, procedure: &str, args: Vec<Value>, kwargs: Dict) -> Value {
    match c.call_answer(procedure, args, kwargs).await {
        Ok(mut args) if args.len() == 1 => args.remove(0),
        other => panic!("{procedure} answered {other:?}"),
    }
}

/// `wamp.subscription.list`'s answer as (exact, prefix, wildcard) id sets.
async fn list(c: &mut Client) -> [BTreeSet<u64>; 3] {
    let Value::Dict(lists) = answer(c, "wamp.subscription.list", vec![], Dict::new()).await else { panic!("list: not a dict") };
    ["exact", "prefix", "wildcard"].map(|p| ids(&lists[p]))
}

/// Polls until `c`'s node lists `exact` and `prefix` subscriptions as given.
async fn until_listed(c: &mut Client, exact: &[u64], prefix: &[u64], what: &str) {
    let want = [exact.iter().copied().collect(), prefix.iter().copied().collect(), BTreeSet::new()];
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let got = list(c).await;
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: listed {got:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next subscription meta event: (which, session, second argument).
async fn meta_event(c: &mut Client, subs: &[u64; 4]) -> (&'static str, u64, Value) {
    let (subscription, args, _) = c.event().await;
    let at = subs.iter().position(|s| *s == subscription).unwrap_or_else(|| panic!("an event on an unexpected subscription: {args:?}"));
    let [session, second] = args.as_slice() else { panic!("{}: {args:?}", META_EVENTS[at]) };
    (META_EVENTS[at], uint(session), second.clone())
}

/// Presence events until `count` is `want`: (everyone who joined, everyone who left).
async fn presence_until(c: &mut Client, want: u64) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut joined, mut left) = (BTreeSet::new(), BTreeSet::new());
    loop {
        let (_, args, _) = c.event().await;
        let [Value::Dict(e)] = args.as_slice() else { panic!("presence event: {args:?}") };
        joined.extend(strings(&e["joined"]));
        left.extend(strings(&e["left"]));
        if uint(&e["count"]) == want {
            assert_eq!(uint(&e["sessions"]), want, "one session per authid here: {e:?}");
            return (joined, left);
        }
    }
}

async fn across_nodes(bus: SharedBus, nodes: usize) {
    let mut gws = Vec::new();
    for _ in 0..nodes {
        gws.push(TestGateway::start_ready(config_on(&bus)).await);
    }
    let (a, b) = (&gws[0], &gws[nodes - 1]);
    let mut admin_a = Client::join(a, JSON).await;
    let mut admin_b = Client::join(b, MSGPACK).await;
    let mut subs = [0; 4];
    for (i, topic) in META_EVENTS.iter().enumerate() {
        subs[i] = admin_a.subscribe(topic, "exact").await;
    }
    let mut watcher = Client::join(a, MSGPACK).await;
    watcher.subscribe("telegraphy.presence.public.page", "exact").await;
    let before = answer(&mut watcher, "telegraphy.presence.get", vec!["public.page".into()], Dict::new()).await;
    let Value::Dict(before) = before else { panic!("presence.get: {before:?}") };
    assert_eq!((uint(&before["count"]), strings(&before["authids"])), (0, BTreeSet::new()));
    // The router's own subscriptions (meta events, presence) are not listed.
    until_listed(&mut admin_b, &[], &[], "nothing yet").await;

    // A session on node B creates a subscription: node A's listener hears
    // on_create, then on_subscribe.
    let mut c1 = Client::join(b, JSON).await;
    let page = c1.subscribe("public.page", "exact").await;
    let (which, session, details) = meta_event(&mut admin_a, &subs).await;
    assert_eq!((which, session), ("wamp.subscription.on_create", c1.session()));
    let Value::Dict(details) = details else { panic!("on_create details: {details:?}") };
    assert_eq!(uint(&details["id"]), page);
    assert_eq!((details["uri"].as_str(), details["match"].as_str()), (Some("public.page"), Some("exact")));
    assert!(details["created"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{details:?}");
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_subscribe", c1.session(), Value::UInt(page)));

    // A session on node A joins it: on_subscribe only.
    let mut c2 = Client::join(a, MSGPACK).await;
    assert_eq!(c2.subscribe("public.page", "exact").await, page, "the same id on every node");
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_subscribe", c2.session(), Value::UInt(page)));
    let mut c3 = Client::join(b, JSON).await;
    let secret = c3.subscribe("secret", "prefix").await;
    assert_eq!(meta_event(&mut admin_a, &subs).await.0, "wamp.subscription.on_create");
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_subscribe", c3.session(), Value::UInt(secret)));

    // Presence followed the two viewers of public.page (batched per tick).
    let (joined, left) = presence_until(&mut watcher, 2).await;
    assert_eq!(joined, BTreeSet::from([c1.authid(), c2.authid()]));
    assert!(left.is_empty(), "{left:?}");

    // Both nodes answer for the whole cluster.
    for admin in [&mut admin_a, &mut admin_b] {
        until_listed(admin, &[page], &[secret], "every node lists both subscriptions").await;
        assert_eq!(answer(admin, "wamp.subscription.lookup", vec!["public.page".into()], Dict::new()).await, Value::UInt(page));
        let prefix = Value::Dict(dict! {"match" => "prefix"});
        assert_eq!(answer(admin, "wamp.subscription.lookup", vec!["secret".into(), prefix], Dict::new()).await, Value::UInt(secret));
        assert_eq!(answer(admin, "wamp.subscription.lookup", vec!["secret".into()], Dict::new()).await, Value::Null, "exact: none");
        assert_eq!(ids(&answer(admin, "wamp.subscription.match", vec!["secret.plans".into()], Dict::new()).await), BTreeSet::from([secret]));
        assert_eq!(answer(admin, "wamp.subscription.match", vec!["other.topic".into()], Dict::new()).await, Value::Null);
        let subscribers = answer(admin, "wamp.subscription.list_subscribers", vec![Value::UInt(page)], Dict::new()).await;
        assert_eq!(ids(&subscribers), BTreeSet::from([c1.session(), c2.session()]));
        assert_eq!(answer(admin, "wamp.subscription.count_subscribers", vec![Value::UInt(page)], Dict::new()).await, Value::UInt(2));
        let Value::Dict(got) = answer(admin, "wamp.subscription.get", vec![Value::UInt(secret)], Dict::new()).await else { panic!("get") };
        assert_eq!((got["uri"].as_str(), got["match"].as_str()), (Some("secret"), Some("prefix")));
        let missing = admin.call_answer("wamp.subscription.get", vec![Value::UInt(12345)], Dict::new()).await;
        assert_eq!(missing, Err(err::NO_SUCH_SUBSCRIPTION.to_string()));
        let Value::Dict(present) = answer(admin, "telegraphy.presence.get", vec!["public.page".into()], Dict::new()).await else { panic!() };
        assert_eq!((uint(&present["count"]), uint(&present["sessions"])), (2, 2));
        assert_eq!(strings(&present["authids"]), BTreeSet::from([c1.authid(), c2.authid()]));
        assert_eq!(present["truncated"], Value::Bool(false));
    }

    // Leaving: on_unsubscribe, and on_delete after the last one.
    c1.unsubscribe(page).await;
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_unsubscribe", c1.session(), Value::UInt(page)));
    let c2_session = c2.session();
    drop(c2);
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_unsubscribe", c2_session, Value::UInt(page)));
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_delete", c2_session, Value::UInt(page)));
    let (joined, left) = presence_until(&mut watcher, 0).await;
    assert!(joined.is_empty(), "{joined:?}");
    assert_eq!(left.len(), 2, "{left:?}");
    // A session on node B that leaves takes its subscriptions with it, everywhere.
    let c3_session = c3.session();
    drop(c3);
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_unsubscribe", c3_session, Value::UInt(secret)));
    assert_eq!(meta_event(&mut admin_a, &subs).await, ("wamp.subscription.on_delete", c3_session, Value::UInt(secret)));
    for admin in [&mut admin_a, &mut admin_b] {
        until_listed(admin, &[], &[], "every subscription is gone everywhere").await;
        let gone = admin.call_answer("wamp.subscription.count_subscribers", vec![Value::UInt(page)], Dict::new()).await;
        assert_eq!(gone, Err(err::NO_SUCH_SUBSCRIPTION.to_string()));
    }
    drop(c1);
    drop(gws);
}

#[tokio::test]
async fn memory_subscription_meta_api_and_presence() {
    across_nodes(SharedBus::Memory, 1).await;
}

#[tokio::test]
async fn redis_subscription_meta_api_and_presence_across_nodes() {
    across_nodes(SharedBus::redis("test-submeta"), 2).await;
}

#[tokio::test]
async fn amqp_subscription_meta_api_and_presence_across_nodes() {
    across_nodes(SharedBus::amqp("telegraphy-test-submeta"), 2).await;
}

/// A role sees only the subscriptions it could make itself: not in the
/// lists, not by id, not in its events; and presence only of topics it may
/// read.
#[tokio::test]
async fn a_role_sees_only_the_topics_it_may_read() {
    let gw = TestGateway::start_with(config_on(&SharedBus::Memory)).await;
    let mut viewer = Client::join_ticket(&gw, JSON, &ticket("vera", "viewer")).await.expect("the viewer joins");
    let on_create = viewer.subscribe("wamp.subscription.on_create", "exact").await;
    let mut other = Client::join(&gw, MSGPACK).await;
    let plans = other.subscribe("secret.plans", "exact").await;
    let news = other.subscribe("public.news", "exact").await;
    let everything = other.subscribe("public", "prefix").await;
    // Its only event: the public subscription's creation.
    let (sub, args, _) = viewer.event().await;
    assert_eq!(sub, on_create);
    let [_, Value::Dict(details)] = args.as_slice() else { panic!("{args:?}") };
    assert_eq!(details["uri"].as_str(), Some("public.news"), "secret.plans was never told; then public.news");
    let [exact, prefix, _] = list(&mut viewer).await;
    assert_eq!(exact, BTreeSet::from([news]));
    // `public` (prefix) would match `public2.x` too, which the viewer may not read.
    assert!(prefix.is_empty() && !prefix.contains(&everything));
    for (procedure, args) in [
        ("wamp.subscription.get", vec![Value::UInt(plans)]),
        ("wamp.subscription.count_subscribers", vec![Value::UInt(plans)]),
        ("wamp.subscription.list_subscribers", vec![Value::UInt(plans)]),
    ] {
        assert_eq!(viewer.call_answer(procedure, args, Dict::new()).await, Err(err::NO_SUCH_SUBSCRIPTION.to_string()), "{procedure}");
    }
    assert_eq!(answer(&mut viewer, "wamp.subscription.lookup", vec!["secret.plans".into()], Dict::new()).await, Value::Null);
    assert_eq!(answer(&mut viewer, "wamp.subscription.match", vec!["secret.plans".into()], Dict::new()).await, Value::Null);
    assert_eq!(answer(&mut viewer, "wamp.subscription.count_subscribers", vec![Value::UInt(news)], Dict::new()).await, Value::UInt(1));
    // Presence: of what it may read only.
    let Value::Dict(p) = answer(&mut viewer, "telegraphy.presence.get", vec!["public.news".into()], Dict::new()).await else { panic!() };
    assert_eq!(strings(&p["authids"]), BTreeSet::from([other.authid()]));
    let refused = viewer.call_answer("telegraphy.presence.get", vec!["secret.plans".into()], Dict::new()).await;
    assert_eq!(refused, Err(err::NOT_AUTHORIZED.to_string()));
    assert_eq!(viewer.subscribe_answer("telegraphy.presence.secret.plans").await, Err(err::NOT_AUTHORIZED.to_string()));
    // The session meta API is not named by the viewer's role.
    assert_eq!(viewer.call_answer("wamp.session.count", vec![], Dict::new()).await, Err(err::NOT_AUTHORIZED.to_string()));
    // Bad input.
    let bad = viewer.call_answer("telegraphy.presence.get", vec!["public.news".into()], dict! {"limit" => 0u64}).await;
    assert_eq!(bad, Err(err::INVALID_ARGUMENT.to_string()));
    assert_eq!(viewer.call_answer("wamp.subscription.get", vec!["x".into()], Dict::new()).await, Err(err::INVALID_ARGUMENT.to_string()));
    assert_eq!(viewer.call_answer("wamp.subscription.nope", vec![], Dict::new()).await, Err(err::NO_SUCH_PROCEDURE.to_string()));
    assert_eq!(viewer.call_answer("telegraphy.presence.nope", vec![], Dict::new()).await, Err(err::NO_SUCH_PROCEDURE.to_string()));
}

/// `*` reaches neither the subscription meta API nor presence, and nobody
/// may publish a presence event or register a router procedure.
#[tokio::test]
async fn star_reaches_neither_the_subscription_meta_api_nor_presence() {
    let gw = TestGateway::start().await;
    let mut c = Client::join(&gw, JSON).await;
    for procedure in ["wamp.subscription.list", "wamp.subscription.count_subscribers", "telegraphy.presence.get"] {
        assert_eq!(c.call_answer(procedure, vec![], Dict::new()).await, Err(err::NOT_AUTHORIZED.to_string()), "{procedure}");
    }
    for topic in ["wamp.subscription.on_create", "telegraphy.presence.public.page"] {
        assert_eq!(c.subscribe_answer(topic).await, Err(err::NOT_AUTHORIZED.to_string()), "{topic}");
    }
    let request = c.request_id();
    let options = dict! {"acknowledge" => true};
    c.send(&Message::Publish { request, options, topic: "telegraphy.presence.x".into(), args: vec![], kwargs: Dict::new() }).await;
    match c.recv().await {
        Message::Error { request_type: code::PUBLISH, error, .. } => assert_eq!(error, err::NOT_AUTHORIZED),
        got => panic!("expected ERROR, got {got:?}"),
    }
    let request = c.request_id();
    c.send(&Message::Register { request, options: Dict::new(), procedure: "telegraphy.presence.get".into() }).await;
    match c.recv().await {
        Message::Error { request_type: code::REGISTER, .. } => {}
        got => panic!("expected ERROR, got {got:?}"),
    }
}

/// `GET /presence` with the API key: the same answer as
/// `telegraphy.presence.get`, for the web-app side; refused without a key,
/// with a clear error for bad input.
#[tokio::test]
async fn the_web_app_asks_for_presence_over_http() {
    let gw = TestGateway::start_with(config_on(&SharedBus::Memory)).await;
    let mut viewers = Vec::new();
    for authid in ["ann", "bo", "bo", "cy", "di", "ed", "fay", "gus", "hal", "ivy"] {
        let mut c = Client::join_ticket(&gw, JSON, &ticket(authid, "viewer")).await.expect("a viewer joins");
        c.subscribe("public.page", "exact").await;
        viewers.push(c);
    }
    let http = reqwest::Client::new();
    let url = format!("http://{}/presence", gw.addr);
    let get = |query: &'static str, key: Option<&'static str>| {
        let mut req = http.get(format!("{url}?{query}"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (status, body) = get("topic=public.page", Some(util::API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let expected = serde_json::json!({
        "topic": "public.page", "count": 9, "sessions": 10,
        "authids": ["ann", "bo", "cy", "di", "ed", "fay", "gus", "hal", "ivy"],
        "names": {"ann": "ANN", "bo": "BO", "cy": "CY", "di": "DI", "ed": "ED", "fay": "FAY", "gus": "GUS", "hal": "HAL", "ivy": "IVY"},
        "truncated": false,
    });
    assert_eq!(body, expected);
    let top = gw.metrics().await;
    assert!(
        top.contains(r#"telegraphy_topic_subscribers_top{match="exact",realm="realm1",topic="public.page"} 10"#),
        "the top topics metric counts the ten sessions: {}",
        top.lines().filter(|l| l.contains("topic_subscribers_top")).collect::<Vec<_>>().join("\n")
    );
    let (status, body) = get("topic=public.page&limit=1&realm=realm1", Some(util::API_KEY)).await;
    assert_eq!((status, &body["authids"], &body["truncated"]), (200, &serde_json::json!(["ann"]), &serde_json::json!(true)));
    assert_eq!(get("topic=public.page", None).await.0, 401);
    assert_eq!(get("topic=public.page", Some("wrong-key")).await.0, 403);
    for bad in ["", "topic=a..b", "topic=x&limit=0", "topic=x&realm=nowhere", "topic=wamp.session.on_join"] {
        let (status, body) = get(bad, Some(util::API_KEY)).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{bad}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: a message says what to fix");
    }
}
