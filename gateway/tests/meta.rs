//! The session meta API (`wamp.session.*`), on one node and across nodes on
//! the machine's Redis and RabbitMQ: count, list, get, the kills, the
//! on_join / on_leave events, and who may use them (a role's patterns must
//! name them; `*` does not reach them).

use telegraphy_testkit as util;

use std::time::Duration;

use telegraphy_gateway::Config;
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{dict, Dict, Message, Serialization, Value};
use util::{Client, SharedBus, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;
const WITHIN: Duration = Duration::from_secs(10);

/// The test config, with the anonymous role also naming the meta API
/// (`*` alone does not reach it).
fn meta_config() -> Config {
    let mut c = util::config();
    let role = c.roles.get_mut("anonymous").expect("the test config has an anonymous role");
    role.call.push("wamp.session.*".into());
    role.subscribe.extend(["wamp.session.on_join".into(), "wamp.session.on_leave".into()]);
    c
}

fn config_on(bus: &SharedBus) -> Config {
    let mut c = meta_config();
    bus.apply(&mut c);
    c
}

/// Calls a meta procedure; the RESULT's args, or the ERROR's URI.
async fn meta(c: &mut Client, procedure: &str, args: Vec<Value>, kwargs: Dict) -> Result<Vec<Value>, String> {
    c.call_answer(procedure, args, kwargs).await
}

async fn count(c: &mut Client, filter: Option<Vec<&str>>) -> u64 {
    let args = filter.map(|f| vec![Value::List(f.into_iter().map(Value::from).collect())]).unwrap_or_default();
    match meta(c, "wamp.session.count", args, Dict::new()).await.expect("count").as_slice() {
        [Value::UInt(n)] => *n,
        other => panic!("count answered {other:?}"),
    }
}

async fn list(c: &mut Client) -> Vec<u64> {
    match meta(c, "wamp.session.list", vec![], Dict::new()).await.expect("list").as_slice() {
        [Value::List(ids)] => {
            let mut ids: Vec<u64> = ids.iter().map(|v| if let Value::UInt(n) = v { *n } else { panic!("{v:?}") }).collect();
            ids.sort_unstable();
            ids
        }
        other => panic!("list answered {other:?}"),
    }
}

async fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// Polls `list` and `count` until `done` holds (within [`WITHIN`]).
async fn until(c: &mut Client, done: impl Fn(Vec<u64>, u64) -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let ids = list(c).await;
        let n = count(c, None).await;
        if done(ids, n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next session meta event about a session not in `skip`:
/// (subscription, session, args).
async fn next_meta(c: &mut Client, skip: &std::collections::HashSet<u64>) -> (u64, u64, Vec<Value>) {
    loop {
        let (subscription, args, _) = c.event().await;
        let session = match args.first() {
            Some(Value::Dict(details)) => details.get("session").and_then(Value::as_u64),
            Some(Value::UInt(id)) => Some(*id),
            _ => None,
        }
        .unwrap_or_else(|| panic!("a session meta event without a session: {args:?}"));
        if !skip.contains(&session) {
            return (subscription, session, args);
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
    let on_join = admin_a.subscribe("wamp.session.on_join", "exact").await;
    let on_leave = admin_a.subscribe("wamp.session.on_leave", "exact").await;
    // Node B publishes its sessions' joins once it heard of a listener
    // (announced at once): probe until a join on B reaches A.
    let mut probes = std::collections::HashSet::new();
    loop {
        let probe = Client::join(b, JSON).await;
        probes.insert(probe.session());
        // (An earlier probe's on_leave may come first: skipped.)
        let joined = async {
            loop {
                let (sub, session, _) = next_meta(&mut admin_a, &std::collections::HashSet::new()).await;
                assert!(probes.contains(&session), "only probes came and went so far");
                if sub == on_join {
                    return session;
                }
            }
        };
        let seen = tokio::time::timeout(Duration::from_millis(300), joined).await;
        drop(probe);
        if seen.is_ok() {
            break;
        }
    }

    let mut target = Client::join(b, JSON).await;
    let other = Client::join(a, MSGPACK).await;
    let everyone = sorted(&[admin_a.session(), admin_b.session(), target.session(), other.session()]).await;
    // Every node answers for the whole cluster (within a delta period).
    for admin in [&mut admin_a, &mut admin_b] {
        until(admin, |ids, _| ids == everyone, "wamp.session.list on every node").await;
        assert_eq!(count(admin, None).await, 4);
        assert_eq!(count(admin, Some(vec!["anonymous"])).await, 4);
        assert_eq!(count(admin, Some(vec!["user", "nobody"])).await, 0);
    }
    for gw in [a, b] {
        assert_eq!(gw.metric("telegraphy_cluster_sessions").await, 4.0, "the gauge counts every node's sessions");
    }
    // The joins on both nodes reached the subscriber on node A.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let (sub, session, args) = next_meta(&mut admin_a, &probes).await;
        assert_eq!(sub, on_join, "{args:?}");
        let [Value::Dict(details)] = args.as_slice() else { panic!("on_join: {args:?}") };
        joined.push(session);
        assert_eq!(details.get("authrole"), Some(&Value::from("anonymous")), "{details:?}");
        assert_eq!(details.get("authmethod"), Some(&Value::from("anonymous")), "{details:?}");
    }
    assert!(joined.contains(&target.session()) && joined.contains(&other.session()), "{joined:?}");

    // get: a session on the other node.
    let got = meta(&mut admin_a, "wamp.session.get", vec![Value::UInt(target.session())], Dict::new()).await.expect("get");
    let [Value::Dict(details)] = got.as_slice() else { panic!("get: {got:?}") };
    assert_eq!(details.get("session"), Some(&Value::UInt(target.session())));
    assert_eq!(details.get("authid"), Some(&Value::Str(target.authid())));
    let missing = meta(&mut admin_a, "wamp.session.get", vec![Value::UInt(12345)], Dict::new()).await;
    assert_eq!(missing, Err(err::NO_SUCH_SESSION.to_string()));

    // kill from node A closes a session on node B, with the reason given.
    let kwargs = dict! {"reason" => "com.example.kicked", "message" => "bye"};
    meta(&mut admin_a, "wamp.session.kill", vec![Value::UInt(target.session())], kwargs).await.expect("kill");
    match target.next().await {
        Ok(Message::Goodbye { reason, details }) => {
            assert_eq!(reason, "com.example.kicked");
            assert_eq!(details.get("message"), Some(&Value::from("bye")));
        }
        other => panic!("the killed session expected GOODBYE, got {other:?}"),
    }
    let (sub, session, args) = next_meta(&mut admin_a, &probes).await;
    assert_eq!((sub, session), (on_leave, target.session()), "on_leave of the killed session: {args:?}");
    let expected: Vec<u64> = everyone.iter().copied().filter(|s| *s != target.session()).collect();
    for admin in [&mut admin_a, &mut admin_b] {
        until(admin, |ids, _| ids == expected, "the killed session leaves every answer").await;
    }
    // Killing oneself, or nobody: no_such_session.
    let me = admin_a.session();
    assert_eq!(meta(&mut admin_a, "wamp.session.kill", vec![Value::UInt(me)], Dict::new()).await, Err(err::NO_SUCH_SESSION.to_string()));
    assert_eq!(
        meta(&mut admin_a, "wamp.session.kill", vec![Value::UInt(target.session())], Dict::new()).await,
        Err(err::NO_SUCH_SESSION.to_string()),
        "already gone"
    );
    // kill_by_authid: the other node's admin kills the session on node A.
    let mut other = other;
    let killed = meta(&mut admin_b, "wamp.session.kill_by_authid", vec![Value::Str(other.authid())], Dict::new()).await.expect("kill_by_authid");
    assert_eq!(killed, vec![Value::List(vec![Value::UInt(other.session())])]);
    match other.next().await {
        Ok(Message::Goodbye { reason, .. }) => assert_eq!(reason, err::CLOSE_NORMAL),
        got => panic!("expected GOODBYE, got {got:?}"),
    }
    drop(gws);
}

#[tokio::test]
async fn memory_session_meta_api() {
    across_nodes(SharedBus::Memory, 1).await;
}

#[tokio::test]
async fn redis_session_meta_api_across_nodes() {
    across_nodes(SharedBus::redis("test-meta"), 2).await;
}

#[tokio::test]
async fn amqp_session_meta_api_across_nodes() {
    across_nodes(SharedBus::amqp("telegraphy-test-meta"), 2).await;
}

/// `*` does not reach the meta API: calls and subscriptions are refused,
/// and a prefix subscription that covers `wamp.` gets no meta event.
#[tokio::test]
async fn star_does_not_reach_the_meta_api() {
    let gw = TestGateway::start().await;
    let mut c = Client::join(&gw, JSON).await;
    for procedure in ["wamp.session.count", "wamp.session.list", "wamp.session.kill_all"] {
        assert_eq!(meta(&mut c, procedure, vec![], Dict::new()).await, Err(err::NOT_AUTHORIZED.to_string()), "{procedure}");
    }
    assert_eq!(c.subscribe_answer("wamp.session.on_join").await, Err(err::NOT_AUTHORIZED.to_string()));
    // A prefix covering everything: events, but never a meta event.
    c.subscribe("w", "prefix").await;
    let joiner = Client::join(&gw, JSON).await;
    drop(joiner);
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "w.marker", "args": ["marker"]})).await;
    assert_eq!(status, 200);
    let (_, args, _) = c.event().await;
    assert_eq!(args, vec![Value::from("marker")], "no meta event before the marker");
}

/// A role that names the meta API may use it on `memory://` too; a token
/// cannot widen it (claims only narrow).
#[tokio::test]
async fn a_role_that_names_the_meta_api_uses_it() {
    let gw = TestGateway::start_with(meta_config()).await;
    let mut admin = Client::join(&gw, JSON).await;
    assert_eq!(count(&mut admin, None).await, 1);
    let _others = [Client::join(&gw, JSON).await, Client::join(&gw, MSGPACK).await];
    assert_eq!(count(&mut admin, None).await, 3);
    let n = meta(&mut admin, "wamp.session.kill_all", vec![], Dict::new()).await.expect("kill_all");
    assert_eq!(n, vec![Value::UInt(2)]);
    until(&mut admin, |_, n| n == 1, "only the caller is left").await;
    let bad = meta(&mut admin, "wamp.session.kill", vec![Value::UInt(1)], dict! {"reason" => "not a uri!"}).await;
    assert_eq!(bad, Err(err::INVALID_URI.to_string()));
}

/// Testaments: published when their session ends (`detached` first, then
/// `destroyed`, each in the order added); flushed ones are not; only on
/// topics the session may publish to; at most 16.
#[tokio::test]
async fn testaments_are_published_when_the_session_ends() {
    let gw = TestGateway::start_with(meta_config()).await;
    let mut watcher = Client::join(&gw, JSON).await;
    watcher.subscribe("t.gone", "prefix").await;
    let mut leaving = Client::join(&gw, MSGPACK).await;
    let add = |topic: &str, word: &str, scope: &str| {
        (vec![Value::from(topic), Value::List(vec![Value::from(word)]), Value::Dict(dict! {"who" => "me"})], dict! {"scope" => scope})
    };
    for (topic, word, scope) in [("t.gone.a", "first", "destroyed"), ("t.gone.b", "flushed", "detached"), ("t.gone.c", "second", "destroyed")] {
        let (args, kwargs) = add(topic, word, scope);
        assert_eq!(meta(&mut leaving, "wamp.session.add_testament", args, kwargs).await, Ok(vec![]));
    }
    assert_eq!(meta(&mut leaving, "wamp.session.flush_testaments", vec![], dict! {"scope" => "detached"}).await, Ok(vec![]));
    let (args, kwargs) = add("t.gone.d", "detached", "detached");
    assert_eq!(meta(&mut leaving, "wamp.session.add_testament", args, kwargs).await, Ok(vec![]));
    // Refused: a reserved topic, a bad scope.
    let (args, kwargs) = add("wamp.session.on_join", "x", "destroyed");
    assert_eq!(meta(&mut leaving, "wamp.session.add_testament", args, kwargs).await, Err(err::INVALID_URI.to_string()));
    let (args, _) = add("t.gone.e", "x", "destroyed");
    assert_eq!(meta(&mut leaving, "wamp.session.add_testament", args, dict! {"scope" => "later"}).await, Err(err::INVALID_ARGUMENT.to_string()));
    drop(leaving);
    let mut got = Vec::new();
    for _ in 0..3 {
        let Message::Event { args, kwargs, .. } = watcher.recv().await else { panic!("expected EVENT") };
        assert_eq!(kwargs, dict! {"who" => "me"});
        got.push(args[0].clone());
    }
    assert_eq!(
        got,
        vec![Value::from("detached"), Value::from("first"), Value::from("second")],
        "detached first, then in order; the flushed one never"
    );

    // At most 16 per session.
    let mut many = Client::join(&gw, JSON).await;
    for n in 0..16 {
        let (args, kwargs) = add("t.many", &n.to_string(), "destroyed");
        assert_eq!(meta(&mut many, "wamp.session.add_testament", args, kwargs).await, Ok(vec![]));
    }
    let (args, kwargs) = add("t.many", "17", "destroyed");
    assert_eq!(meta(&mut many, "wamp.session.add_testament", args, kwargs).await, Err(err::LIMIT_EXCEEDED.to_string()));
}

/// A role may leave testaments only on topics it may publish to.
#[tokio::test]
async fn a_testament_needs_the_right_to_publish_its_topic() {
    let mut config = meta_config();
    config.roles.get_mut("anonymous").unwrap().publish = vec!["mine.*".into()];
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join(&gw, JSON).await;
    let refused = meta(&mut c, "wamp.session.add_testament", vec![Value::from("theirs.x")], Dict::new()).await;
    assert_eq!(refused, Err(err::NOT_AUTHORIZED.to_string()));
    assert_eq!(meta(&mut c, "wamp.session.add_testament", vec![Value::from("mine.x")], Dict::new()).await, Ok(vec![]));
}

/// Meta calls count against the role's call rate (a testament change is a
/// message to every node).
#[tokio::test]
async fn meta_calls_count_against_the_call_rate() {
    let mut config = meta_config();
    let role = config.roles.get_mut("anonymous").unwrap();
    role.call_rate = 0.5;
    role.call_burst = 2;
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join(&gw, JSON).await;
    for _ in 0..2 {
        assert_eq!(meta(&mut c, "wamp.session.add_testament", vec![Value::from("t.x")], Dict::new()).await, Ok(vec![]));
    }
    let third = meta(&mut c, "wamp.session.flush_testaments", vec![], Dict::new()).await;
    assert_eq!(third, Err(err::RATE_LIMITED.to_string()));
}

/// A realm is a wall: a session of another realm cannot be seen, counted or
/// killed, not even by `kill_all`.
#[tokio::test]
async fn the_meta_api_stops_at_the_realm() {
    let mut config = meta_config();
    config.realms = vec!["realm1".into(), "realm2".into()];
    let gw = TestGateway::start_with(config).await;
    let mut target = Client::join(&gw, JSON).await;
    let mut other = Client::join_with(&gw, MSGPACK, util::hello("realm2")).await;
    assert_eq!(count(&mut other, None).await, 1, "only itself in realm2");
    let id = Value::UInt(target.session());
    assert_eq!(meta(&mut other, "wamp.session.get", vec![id.clone()], Dict::new()).await, Err(err::NO_SUCH_SESSION.to_string()));
    assert_eq!(meta(&mut other, "wamp.session.kill", vec![id], Dict::new()).await, Err(err::NO_SUCH_SESSION.to_string()));
    assert_eq!(meta(&mut other, "wamp.session.kill_all", vec![], Dict::new()).await, Ok(vec![Value::UInt(0)]));
    // The realm1 session is untouched: it still talks to the router.
    assert_eq!(count(&mut target, None).await, 1);
}
