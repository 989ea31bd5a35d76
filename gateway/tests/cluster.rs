//! Several gateway nodes on one real bus (the machine's Redis and
//! RabbitMQ): every subscriber on every node gets each event exactly once,
//! publish options hold across nodes, nodes only receive what their
//! sessions need, and broker outages are survived.
//!
//! Each test uses its own Redis key prefix / RabbitMQ exchange, so tests
//! never see each other's events. Set TELEGRAPHY_TEST_REDIS /
//! TELEGRAPHY_TEST_AMQP to point at other brokers.

use telegraphy_testkit as util;

use std::process::Command;
use std::time::{Duration, Instant};

use telegraphy_gateway::Config;
use telegraphy_wamp::{dict, Dict, Serialization, Value};
use util::{eventually, unique, Client, RedisServer, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;
const SLOW: Duration = Duration::from_secs(20);

fn redis_url() -> String {
    std::env::var("TELEGRAPHY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn amqp_url() -> String {
    std::env::var("TELEGRAPHY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[derive(Clone)]
enum Bus {
    Redis { url: String, prefix: String },
    Amqp { url: String, exchange: String },
}

impl Bus {
    fn redis() -> Bus {
        Bus::Redis { url: redis_url(), prefix: unique("test") + ":" }
    }
    fn amqp() -> Bus {
        Bus::Amqp { url: amqp_url(), exchange: unique("telegraphy-test") }
    }
    fn config(&self) -> Config {
        let mut c = util::config();
        c.limits.bus_reconnect_max_delay = Duration::from_millis(500);
        match self {
            Bus::Redis { url, prefix } => {
                c.bus = url.clone();
                c.redis.key_prefix = prefix.clone();
            }
            Bus::Amqp { url, exchange } => {
                c.bus = url.clone();
                c.amqp.exchange = exchange.clone();
            }
        }
        c
    }
}

/// Receives the next event's first argument, then checks that nothing else
/// was delivered before `marker` (so duplicates would be caught).
async fn expect_once(c: &mut Client, expected: Value) {
    assert_eq!(c.event().await.1, vec![expected.clone()], "session {}", c.session);
}

async fn expect_marker(c: &mut Client, marker: &str) {
    let got = c.event().await.1;
    assert_eq!(got, vec![Value::from(marker)], "session {}: expected the marker, got {got:?} (a duplicate or a leaked event)", c.session);
}

async fn three_nodes(bus: Bus) {
    let nodes =
        [TestGateway::start_ready(bus.config()).await, TestGateway::start_ready(bus.config()).await, TestGateway::start_ready(bus.config()).await];
    let mut a = Client::join(&nodes[0], JSON).await;
    let mut b = Client::join(&nodes[1], MSGPACK).await;
    let mut c = Client::join(&nodes[2], JSON).await;
    // d holds overlapping subscriptions (exact + prefix + wildcard) on one node:
    // one EVENT per subscription, but the node must get the event only once.
    let mut d = Client::join(&nodes[2], MSGPACK).await;
    for s in [&mut a, &mut b, &mut c] {
        s.subscribe("t.cluster.x", "exact").await;
    }
    let d_exact = d.subscribe("t.cluster.x", "exact").await;
    let d_prefix = d.subscribe("t.cluster", "prefix").await;
    let d_wild = d.subscribe("t..x", "wildcard").await;
    let marker = |nodes: &[TestGateway; 3]| {
        let addr = nodes[0].addr;
        async move {
            let (status, _) = util::TestGateway::publish_http_to(addr, serde_json::json!({"topic": "t.cluster.x", "args": ["marker"]})).await;
            assert_eq!(status, 200);
        }
    };

    // 1. HTTP publish to node 0 reaches every node once.
    let (status, _) = nodes[0].publish_http(serde_json::json!({"topic": "t.cluster.x", "args": [1]})).await;
    assert_eq!(status, 200);
    for s in [&mut a, &mut b, &mut c] {
        expect_once(s, Value::UInt(1)).await;
    }
    let mut subs = Vec::new();
    for _ in 0..3 {
        let (sub, args, _) = d.event().await;
        assert_eq!(args, vec![Value::UInt(1)]);
        subs.push(sub);
    }
    subs.sort();
    let mut want = vec![d_exact, d_prefix, d_wild];
    want.sort();
    assert_eq!(subs, want);
    marker(&nodes).await;
    for s in [&mut a, &mut b, &mut c] {
        expect_marker(s, "marker").await;
    }
    for _ in 0..3 {
        expect_marker(&mut d, "marker").await;
    }

    // 2. A WAMP publish from node 1: exclude_me holds across nodes.
    b.publish("t.cluster.x", vec![Value::UInt(2)], Dict::new()).await;
    for s in [&mut a, &mut c] {
        expect_once(s, Value::UInt(2)).await;
    }
    for _ in 0..3 {
        expect_once(&mut d, Value::UInt(2)).await;
    }
    marker(&nodes).await;
    expect_marker(&mut b, "marker").await;
    for s in [&mut a, &mut c] {
        expect_marker(s, "marker").await;
    }
    for _ in 0..3 {
        expect_marker(&mut d, "marker").await;
    }

    // 3. disclose_me and exclude_me=false across nodes.
    b.publish("t.cluster.x", vec![Value::UInt(3)], dict! {"exclude_me" => false, "disclose_me" => true}).await;
    let (_, args, details) = b.event().await;
    assert_eq!(args, vec![Value::UInt(3)]);
    let (_, args, details_a) = a.event().await;
    assert_eq!(args, vec![Value::UInt(3)]);
    assert_eq!(details_a["publisher"], Value::UInt(b.session));
    assert_eq!(details["publisher"], Value::UInt(b.session));
    c.event().await;
    for _ in 0..3 {
        d.event().await;
    }

    // 4. eligible / exclude_authid from one node about sessions on others.
    let mut options = Dict::new();
    options.insert("eligible".into(), Value::List(vec![Value::UInt(c.session)]));
    a.publish("t.cluster.x", vec![Value::UInt(4)], options).await;
    let (status, _) =
        nodes[1].publish_http(serde_json::json!({"topic": "t.cluster.x", "args": [5], "options": {"exclude_authid": [c.authid()]}})).await;
    assert_eq!(status, 200);
    expect_once(&mut c, Value::UInt(4)).await;
    expect_once(&mut b, Value::UInt(5)).await;
    for _ in 0..3 {
        expect_once(&mut d, Value::UInt(5)).await;
    }
    marker(&nodes).await;
    for s in [&mut b, &mut c] {
        expect_marker(s, "marker").await;
    }
    // a published 4 (excluded from its own event) and was not excluded from 5.
    expect_once(&mut a, Value::UInt(5)).await;
    expect_marker(&mut a, "marker").await;
}

#[tokio::test]
async fn redis_three_nodes_each_event_once() {
    three_nodes(Bus::redis()).await;
}

#[tokio::test]
async fn amqp_three_nodes_each_event_once() {
    let bus = Bus::amqp();
    three_nodes(bus.clone()).await;
    let Bus::Amqp { exchange, .. } = bus else { unreachable!() };
    util::delete_exchange(&amqp_url(), &exchange).await;
}

async fn redis_numsub(url: &str, channel: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(&mut conn).await.unwrap();
    reply.1
}

async fn redis_patterns(url: &str, prefix: &str) -> Vec<String> {
    // PUBSUB has no pattern listing; CLIENT LIST shows psub counts only.
    // Publishing to a channel returns how many subscribers (channel + pattern) got it.
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::new();
    for topic in ["t.route.a", "t.route.b", "t.other"] {
        let n: i64 = redis::cmd("PUBLISH").arg(format!("{prefix}realm1:{topic}")).arg("probe").query_async(&mut conn).await.unwrap();
        out.push(format!("{topic}={n}"));
    }
    out
}

#[tokio::test]
async fn redis_nodes_subscribe_only_to_what_their_sessions_need() {
    let bus = Bus::redis();
    let Bus::Redis { url, prefix } = bus.clone() else { unreachable!() };
    let n1 = TestGateway::start_ready(bus.config()).await;
    let n2 = TestGateway::start_ready(bus.config()).await;
    let mut a = Client::join(&n1, JSON).await;
    let mut b = Client::join(&n2, JSON).await;
    let channel_a = format!("{prefix}realm1:t.route.a");
    let channel_b = format!("{prefix}realm1:t.route.b");
    assert_eq!(redis_numsub(&url, &channel_a).await, 0);
    let sub = a.subscribe("t.route.a", "exact").await;
    // SUBSCRIBED is sent once the broker routes the topic: no waiting needed.
    assert_eq!(redis_numsub(&url, &channel_a).await, 1, "only node 1 subscribes to its channel");
    assert_eq!(redis_numsub(&url, &channel_b).await, 0, "nobody asked for t.route.b");
    b.subscribe("t.route", "prefix").await;
    // The raw probes count deliveries: a's channel + b's pattern for t.route.a,
    // b's pattern alone for t.route.b, nobody for t.other. (The probes are not
    // envelopes: the nodes count them as decode errors and carry on.)
    assert_eq!(redis_patterns(&url, &prefix).await, vec!["t.route.a=2", "t.route.b=1", "t.other=0"]);
    eventually("decode errors counted", SLOW, || async {
        n1.metric("telegraphy_bus_decode_errors_total{cause=\"malformed\"}").await == 1.0
            && n2.metric("telegraphy_bus_decode_errors_total{cause=\"malformed\"}").await == 2.0
    })
    .await;
    // Nodes keep consuming after garbage.
    let (status, _) = n2.publish_http(serde_json::json!({"topic": "t.route.a", "args": ["after garbage"]})).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.1, vec![Value::from("after garbage")]);
    assert_eq!(b.event().await.1, vec![Value::from("after garbage")]);
    // The last subscriber leaving removes the broker subscription.
    a.send(&telegraphy_wamp::Message::Unsubscribe { request: 77, subscription: sub }).await;
    assert_eq!(a.recv().await, telegraphy_wamp::Message::Unsubscribed { request: 77 });
    eventually("channel unsubscribed", SLOW, || async { redis_numsub(&url, &channel_a).await == 0 }).await;
    assert_eq!(n1.metric("telegraphy_bus_interests").await, 0.0);
    assert_eq!(n2.metric("telegraphy_bus_interests").await, 1.0);
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs (RabbitMQ is installed)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bindings_of(exchange: &str) -> Vec<String> {
    let out = rabbitmqctl(&["list_bindings", "-q", "--no-table-headers", "source_name", "routing_key"]);
    let mut keys: Vec<String> =
        out.lines().filter_map(|l| l.split_once('\t')).filter(|(src, _)| *src == exchange).map(|(_, key)| key.to_string()).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn amqp_nodes_bind_only_what_their_sessions_need() {
    let bus = Bus::amqp();
    let Bus::Amqp { exchange, .. } = bus.clone() else { unreachable!() };
    let n1 = TestGateway::start_ready(bus.config()).await;
    let n2 = TestGateway::start_ready(bus.config()).await;
    let mut a = Client::join(&n1, JSON).await;
    let mut b = Client::join(&n2, JSON).await;
    a.subscribe("t.route.a", "exact").await;
    b.subscribe("t.route", "prefix").await;
    b.subscribe("t..b", "wildcard").await;
    assert_eq!(bindings_of(&exchange), vec!["realm1.t.*.b", "realm1.t.route.#", "realm1.t.route.a"]);
    assert_eq!(n1.metric("telegraphy_bus_interests").await, 1.0);
    assert_eq!(n2.metric("telegraphy_bus_interests").await, 2.0);
    // An event nobody on node 1 wants never reaches node 1.
    let before = n1.metric("telegraphy_bus_events_received_total").await;
    let (status, _) = n1.publish_http(serde_json::json!({"topic": "t.route.b", "args": [1]})).await;
    assert_eq!(status, 200);
    assert_eq!(b.event().await.1, vec![Value::UInt(1)]);
    assert_eq!(b.event().await.1, vec![Value::UInt(1)], "b holds two matching subscriptions");
    let (status, _) = n2.publish_http(serde_json::json!({"topic": "t.route.a", "args": [2]})).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.1, vec![Value::UInt(2)]);
    assert_eq!(n1.metric("telegraphy_bus_events_received_total").await - before, 1.0, "node 1 got t.route.a only");
    drop(a);
    drop(b);
    eventually("bindings removed", SLOW, || async { bindings_of(&exchange).is_empty() }).await;
    util::delete_exchange(&amqp_url(), &exchange).await;
}

#[tokio::test]
async fn redis_outage_is_survived() {
    let mut server = RedisServer::start();
    let bus = Bus::Redis { url: server.url(), prefix: "outage:".into() };
    let n1 = TestGateway::start_ready(bus.config()).await;
    let n2 = TestGateway::start_ready(bus.config()).await;
    let mut a = Client::join(&n1, JSON).await;
    let mut b = Client::join(&n2, MSGPACK).await;
    a.subscribe("t.outage", "exact").await;
    b.subscribe("t", "prefix").await;

    server.kill();
    assert!(n1.wait_ready(false, SLOW).await, "node 1 not ready while Redis is down");
    assert!(n2.wait_ready(false, SLOW).await, "node 2 not ready while Redis is down");
    let (status, body) = n1.publish_http(serde_json::json!({"topic": "t.outage", "args": [1]})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "bus_unavailable");
    // Sessions stay connected through the outage.
    let mut p = Client::join(&n1, JSON).await;
    let request = p.request_id();
    p.send(&telegraphy_wamp::Message::Publish {
        request,
        options: dict! {"acknowledge" => true},
        topic: "t.outage".into(),
        args: vec![],
        kwargs: Dict::new(),
    })
    .await;
    match p.recv().await {
        telegraphy_wamp::Message::Error { error, .. } => assert_eq!(error, telegraphy_wamp::codes::uri::BUS_UNAVAILABLE),
        other => panic!("expected ERROR, got {other:?}"),
    }

    server.spawn();
    assert!(n1.wait_ready(true, SLOW).await, "node 1 ready again");
    assert!(n2.wait_ready(true, SLOW).await, "node 2 ready again");
    let (status, _) = n1.publish_http(serde_json::json!({"topic": "t.outage", "args": ["after"]})).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.1, vec![Value::from("after")], "subscriptions restored on node 1");
    assert_eq!(b.event().await.1, vec![Value::from("after")], "pattern subscriptions restored on node 2");
    assert!(n1.metric("telegraphy_bus_reconnects_total").await >= 1.0);
    assert!(n1.metric("telegraphy_bus_disconnected_seconds_total").await > 0.0);
    assert_eq!(n1.metric("telegraphy_bus_connected").await, 1.0);
}

#[tokio::test]
async fn amqp_connection_loss_is_survived() {
    let bus = Bus::amqp();
    let n1 = TestGateway::start_ready(bus.config()).await;
    let n2 = TestGateway::start_ready(bus.config()).await;
    let mut a = Client::join(&n1, JSON).await;
    let mut b = Client::join(&n2, MSGPACK).await;
    a.subscribe("t.loss", "exact").await;
    b.subscribe("t.loss", "exact").await;
    // Close node 1's broker connection only (it names itself after its node id).
    let name = format!("telegraphy-gateway-{:016x}", n1.node_id);
    let listing = rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"]);
    let pid = listing
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("connection {name} not listed:\n{listing}"))
        .to_string();
    rabbitmqctl(&["close_connection", &pid, "telegraphy test: connection loss"]);
    eventually("node 1 reconnected", SLOW, || async { n1.metric("telegraphy_bus_reconnects_total").await >= 1.0 }).await;
    assert!(n1.wait_ready(true, SLOW).await);
    let (status, _) = n2.publish_http(serde_json::json!({"topic": "t.loss", "args": ["after"]})).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.1, vec![Value::from("after")], "bindings restored on node 1");
    assert_eq!(b.event().await.1, vec![Value::from("after")]);
    let Bus::Amqp { exchange, .. } = bus else { unreachable!() };
    util::delete_exchange(&amqp_url(), &exchange).await;
}

/// One numbered publish: when it was sent, and whether the node answered 200.
struct Attempt {
    n: u64,
    sent: Instant,
    acked: bool,
}

/// Publishes numbered events through `node`'s HTTP endpoint, one after the
/// other, until `stop`.
async fn publish_numbered(node: std::net::SocketAddr, topic: String, stop: tokio_util::sync::CancellationToken) -> Vec<Attempt> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut attempts = Vec::new();
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let sent = Instant::now();
        let resp = http
            .post(format!("http://{node}/publish"))
            .bearer_auth(util::API_KEY)
            .json(&serde_json::json!({"topic": topic, "args": [n]}))
            .send()
            .await;
        match resp.map(|r| r.status().as_u16()) {
            Ok(200) => attempts.push(Attempt { n, sent, acked: true }),
            Ok(503) | Err(_) => {
                attempts.push(Attempt { n, sent, acked: false });
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            Ok(other) => panic!("unexpected HTTP {other}"),
        }
    }
    attempts
}

/// Security of the delivery contract (fault run, finding 1): a reconnecting
/// node answered 200 to publishes before its own subscriptions were back,
/// and lost them. With many subscriptions to restore, publish through the
/// node while its broker connection comes back: every acknowledged event
/// reaches the node's own subscriber.
///
/// `fault` returns the instant just before the broker went away. The publish
/// in flight at that moment may be acknowledged by a broker that dies
/// before it passes the event on (at most once: Redis pub/sub and an
/// exclusive RabbitMQ queue keep nothing; history closes that window, see
/// `gateway/tests/history.rs`): the last publish acknowledged before the
/// first refused one may be missing. Every other acknowledged event must
/// arrive.
async fn no_publish_is_acknowledged_before_interests_are_restored(bus: Bus, fault: impl AsyncFnOnce(&TestGateway) -> Instant) {
    let node = TestGateway::start_ready(bus.config()).await;
    let topic = unique("t.numbered");
    let mut sub = Client::join(&node, JSON).await;
    sub.subscribe(&topic, "exact").await;
    // Many interests make restoring them take a while.
    let mut many = Client::join(&node, MSGPACK).await;
    for i in 0..300 {
        many.subscribe(&format!("t.many.{i}"), "exact").await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(publish_numbered(node.addr, topic.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gone_from = fault(&node).await;
    assert!(node.wait_ready(true, SLOW).await, "ready again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let attempts = publisher.await.unwrap();
    let acked: Vec<u64> = attempts.iter().filter(|a| a.acked).map(|a| a.n).collect();
    let first_refused = attempts.iter().find(|a| !a.acked && a.sent >= gone_from).map(|a| a.n);
    assert!(first_refused.is_some(), "publishes were refused while the broker was away");
    let crossing = acked.iter().copied().filter(|&n| Some(n) < first_refused).max();
    assert!(acked.len() > 10, "publishes went through before and after: {}", acked.len());
    // A marker after the last: everything acked must have arrived before it.
    let (status, body) = node.publish_http(serde_json::json!({"topic": topic, "args": ["end"]})).await;
    assert_eq!(status, 200, "{body}");
    let mut got = Vec::new();
    loop {
        let args = sub.event().await.1;
        match args.first() {
            Some(Value::Str(s)) if s == "end" => break,
            Some(v) => got.push(v.as_u64().unwrap()),
            None => panic!("an event without a number"),
        }
    }
    let received: std::collections::HashSet<u64> = got.iter().copied().collect();
    assert_eq!(received.len(), got.len(), "no duplicates");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    let lost: Vec<u64> = acked.iter().copied().filter(|&n| !received.contains(&n) && Some(n) != crossing).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events never reached the node's own subscriber: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_acknowledges_nothing_it_then_loses() {
    let mut server = RedisServer::start();
    let bus = Bus::Redis { url: server.url(), prefix: unique("restart") + ":" };
    no_publish_is_acknowledged_before_interests_are_restored(bus, async |_: &TestGateway| {
        let gone_from = Instant::now();
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.spawn();
        gone_from
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_reconnect_acknowledges_nothing_it_then_loses() {
    let bus = Bus::amqp();
    let Bus::Amqp { exchange, .. } = bus.clone() else { unreachable!() };
    // The broker closes the node's connection (as when a RabbitMQ node
    // restarts); the machine's broker itself keeps running.
    no_publish_is_acknowledged_before_interests_are_restored(bus, async |node: &TestGateway| {
        let name = format!("telegraphy-gateway-{:016x}", node.node_id);
        let listing = rabbitmqctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"]);
        let pid = listing.lines().find(|l| l.contains(&name)).and_then(|l| l.split('\t').next()).expect("the node's connection").to_string();
        let gone_from = Instant::now();
        rabbitmqctl(&["close_connection", &pid, "telegraphy test: broker restart"]);
        gone_from
    })
    .await;
    util::delete_exchange(&amqp_url(), &exchange).await;
}
