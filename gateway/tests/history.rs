//! Event history and retention on the embedded bus, over real sockets:
//! resume with `_after_publication`, `wamp.subscription.get_events`,
//! `get_retained`, and what they refuse.

use telegraphy_testkit as util;

use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, Dict, Message, Serialization, Value};
use util::{Client, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

async fn gateway() -> TestGateway {
    let mut config = util::config();
    config.history.topics = vec!["h.*".into()];
    config.history.size = 5;
    config.history.max_replay = 4;
    TestGateway::start_with(config).await
}

fn options_of(pairs: &[(&str, Value)]) -> Dict {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// SUBSCRIBE with `options`; returns the id and every EVENT up to and
/// including the `_recovered` marker.
async fn subscribe_with(c: &mut Client, topic: &str, opts: Dict) -> (u64, Vec<Message>) {
    let request = c.request_id();
    c.send(&Message::Subscribe { request, options: opts, topic: topic.into() }).await;
    let id = match c.recv().await {
        Message::Subscribed { subscription, .. } => subscription,
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    };
    let mut events = Vec::new();
    loop {
        let m = c.recv().await;
        let last = matches!(&m, Message::Event { details, .. } if details.contains_key("_recovered"));
        events.push(m);
        if last {
            break;
        }
    }
    (id, events)
}

/// The next message, which must be the EVENT `[n]`: its publication id.
async fn event_numbered(c: &mut Client, n: u64) -> u64 {
    match c.recv().await {
        Message::Event { publication, args, .. } => {
            assert_eq!(args, vec![Value::UInt(n)]);
            publication
        }
        other => panic!("expected EVENT, got {other:?}"),
    }
}

fn numbers(events: &[Message]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|m| match m {
            Message::Event { args, details, .. } if !details.contains_key("_recovered") => args.first().and_then(Value::as_u64),
            _ => None,
        })
        .collect()
}

fn recovered(events: &[Message]) -> Option<bool> {
    events.iter().find_map(|m| match m {
        Message::Event { details, .. } => details.get("_recovered").and_then(Value::as_bool),
        _ => None,
    })
}

async fn call(c: &mut Client, args: Vec<Value>, kwargs: Dict) -> Result<Vec<Value>, String> {
    let request = c.request_id();
    c.send(&Message::Call { request, options: Dict::new(), procedure: "wamp.subscription.get_events".into(), args, kwargs }).await;
    match c.recv().await {
        Message::Result { args, .. } => match args.into_iter().next() {
            Some(Value::List(list)) => Ok(list),
            other => panic!("get_events answers one list, got {other:?}"),
        },
        Message::Error { request_type: code::CALL, error, .. } => Err(error),
        other => panic!("expected RESULT or ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_that_comes_back_gets_exactly_what_it_missed_then_live_events() {
    let gw = gateway().await;
    let topic = util::unique("h.resume");
    let mut publisher = Client::join(&gw, JSON).await;
    let mut first = Client::join(&gw, MSGPACK).await;
    let sub = first.subscribe(&topic, "exact").await;
    publisher.publish(&topic, vec![Value::UInt(1)], Dict::new()).await;
    let last_seen = event_numbered(&mut first, 1).await;
    drop(first);
    for n in 2..=4 {
        publisher.publish(&topic, vec![Value::UInt(n)], Dict::new()).await;
    }
    // Back on a new connection: the same subscription id, the three missed
    // events in order, the marker, then live events.
    let mut back = Client::join(&gw, JSON).await;
    let (again, events) = subscribe_with(&mut back, &topic, options_of(&[("_after_publication", Value::UInt(last_seen))])).await;
    assert_eq!(again, sub, "subscription ids are derived from realm, policy and topic");
    assert_eq!((numbers(&events), recovered(&events)), (vec![2, 3, 4], Some(true)));
    let fifth = publisher.publish(&topic, vec![Value::UInt(5)], Dict::new()).await;
    match back.recv().await {
        Message::Event { publication, args, .. } => assert_eq!((publication, args), (fifth, vec![Value::UInt(5)]), "PUBLISHED and EVENT agree"),
        other => panic!("expected EVENT, got {other:?}"),
    }
    // From the newest position: nothing missed, recovered.
    let mut up_to_date = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut up_to_date, &topic, options_of(&[("_after_publication", Value::UInt(fifth))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![], Some(true)));
}

#[tokio::test]
async fn a_position_that_is_gone_or_too_far_back_is_not_recovered_never_partial() {
    let gw = gateway().await;
    let topic = util::unique("h.gone");
    let mut publisher = Client::join(&gw, JSON).await;
    let mut ids = Vec::new();
    for n in 1..=8 {
        ids.push(publisher.publish(&topic, vec![Value::UInt(n)], Dict::new()).await);
    }
    // size 5: events 4..=8 are kept; after 2 means 3 is gone.
    let mut c = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut c, &topic, options_of(&[("_after_publication", Value::UInt(ids[1]))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![], Some(false)));
    // After 3: 4..=8 are kept, but 5 events exceed max_replay (4).
    let mut c = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut c, &topic, options_of(&[("_after_publication", Value::UInt(ids[2]))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![], Some(false)));
    // After 4: 5..=8, four events, recovered.
    let mut c = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut c, &topic, options_of(&[("_after_publication", Value::UInt(ids[3]))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![5, 6, 7, 8], Some(true)));
    // An id that was never a position on this topic.
    let mut c = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut c, &topic, options_of(&[("_after_publication", Value::UInt(12345))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![], Some(false)));
    // Not an id at all: a clear error.
    let request = c.request_id();
    c.send(&Message::Subscribe { request, options: options_of(&[("_after_publication", Value::Str("x".into()))]), topic: topic.clone() }).await;
    match c.recv().await {
        Message::Error { request_type: code::SUBSCRIBE, error, .. } => assert_eq!(error, err::INVALID_ARGUMENT),
        other => panic!("expected ERROR, got {other:?}"),
    }
    assert_eq!(gw.metric("telegraphy_history_resumes_total{recovered=\"false\"}").await, 3.0);
    assert_eq!(gw.metric("telegraphy_history_resumes_total{recovered=\"true\"}").await, 1.0);
    // size 5: this topic holds 5 events (other tests use their own gateway).
    assert_eq!(gw.metric("telegraphy_history_held_events").await, 5.0);
    assert!(gw.metric("telegraphy_history_held_bytes").await > 5.0 * 30.0);
}

#[tokio::test]
async fn get_events_answers_the_spec_shape_and_applies_the_audience_again() {
    let gw = gateway().await;
    let topic = util::unique("h.get");
    let mut publisher = Client::join(&gw, JSON).await;
    let mut reader = Client::join(&gw, MSGPACK).await;
    let sub = reader.subscribe(&topic, "exact").await;
    let me = reader.authid();
    publisher.publish(&topic, vec![Value::UInt(1)], Dict::new()).await;
    // Only for someone else: never replayed to the reader.
    publisher.publish(&topic, vec![Value::UInt(2)], options_of(&[("eligible_authid", Value::List(vec![Value::Str("someone-else".into())]))])).await;
    publisher.publish(&topic, vec![Value::UInt(3)], options_of(&[("eligible_authid", Value::List(vec![Value::Str(me)]))])).await;
    // Session-targeted: live only, never kept.
    publisher.publish(&topic, vec![Value::UInt(4)], options_of(&[("eligible", Value::List(vec![Value::UInt(1)]))])).await;
    for expected in [1, 3] {
        assert_eq!(reader.event().await.1, vec![Value::UInt(expected)]);
    }
    let list = call(&mut reader, vec![Value::UInt(sub)], Dict::new()).await.unwrap();
    let got: Vec<u64> = list.iter().filter_map(first_arg).collect();
    assert_eq!(got, vec![1, 3]);
    let first = &list[0];
    for key in ["timestamp", "subscription", "publication", "details", "args", "kwargs"] {
        assert!(field(first, key).is_some(), "{key} missing from {first:?}");
    }
    assert_eq!(field(first, "subscription").and_then(Value::as_u64), Some(sub));
    assert!(field(first, "timestamp").and_then(Value::as_str).is_some_and(|t| t.ends_with('Z') && t.contains('T')));
    // Crossbar.io's positional limit, reverse, and after_publication.
    let newest = call(&mut reader, vec![Value::UInt(sub), Value::UInt(1)], options_of(&[("reverse", Value::Bool(true))])).await.unwrap();
    assert_eq!(newest.iter().filter_map(first_arg).collect::<Vec<_>>(), vec![3]);
    let after_first = field(first, "publication").and_then(Value::as_u64).unwrap();
    let rest = call(&mut reader, vec![Value::UInt(sub)], options_of(&[("after_publication", Value::UInt(after_first))])).await.unwrap();
    assert_eq!(rest.len(), 1);
    // Refusals: a huge limit, a subscription not held, another procedure.
    assert_eq!(call(&mut reader, vec![Value::UInt(sub)], options_of(&[("limit", Value::UInt(1_000_000))])).await, Err(err::INVALID_ARGUMENT.into()));
    assert_eq!(call(&mut publisher, vec![Value::UInt(sub)], Dict::new()).await, Err(err::NO_SUCH_SUBSCRIPTION.into()));
    let request = reader.request_id();
    reader.send(&Message::Call { request, options: Dict::new(), procedure: "com.example.add".into(), args: vec![], kwargs: Dict::new() }).await;
    match reader.recv().await {
        Message::Error { error, .. } => assert_eq!(error, err::NO_SUCH_PROCEDURE),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

/// The first positional argument of a get_events entry.
fn first_arg(v: &Value) -> Option<u64> {
    match field(v, "args") {
        Some(Value::List(a)) => a.first().and_then(Value::as_u64),
        _ => None,
    }
}

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Dict(d) => d.get(key),
        _ => None,
    }
}

#[tokio::test]
async fn retained_events_reach_late_subscribers_that_ask_and_only_those_that_may_see_them() {
    let gw = gateway().await;
    // Retention works for topics without history too.
    let topic = util::unique("r.sensor");
    let mut publisher = Client::join(&gw, JSON).await;
    publisher.publish(&topic, vec![Value::UInt(20)], options_of(&[("retain", Value::Bool(true))])).await;
    publisher.publish(&topic, vec![Value::UInt(21)], options_of(&[("retain", Value::Bool(true))])).await;
    publisher.publish(&topic, vec![Value::UInt(99)], Dict::new()).await;
    let mut late = Client::join(&gw, MSGPACK).await;
    let request = late.request_id();
    late.send(&Message::Subscribe { request, options: options_of(&[("get_retained", Value::Bool(true))]), topic: topic.clone() }).await;
    assert!(matches!(late.recv().await, Message::Subscribed { .. }));
    match late.recv().await {
        Message::Event { args, details, .. } => {
            assert_eq!(args, vec![Value::UInt(21)], "the newest retained event");
            assert_eq!(details.get("retained"), Some(&Value::Bool(true)));
        }
        other => panic!("expected the retained EVENT, got {other:?}"),
    }
    // A subscriber that does not ask gets nothing until the next event.
    let mut plain = Client::join(&gw, JSON).await;
    plain.subscribe(&topic, "exact").await;
    publisher.publish(&topic, vec![Value::UInt(22)], Dict::new()).await;
    assert_eq!(plain.event().await.1, vec![Value::UInt(22)]);
    // A retained event only for someone else is not handed to others.
    let secret = util::unique("r.secret");
    publisher
        .publish(
            &secret,
            vec![Value::UInt(7)],
            options_of(&[("retain", Value::Bool(true)), ("eligible_authid", Value::List(vec![Value::Str("x".into())]))]),
        )
        .await;
    let mut other = Client::join(&gw, JSON).await;
    let request = other.request_id();
    other.send(&Message::Subscribe { request, options: options_of(&[("get_retained", Value::Bool(true))]), topic: secret.clone() }).await;
    assert!(matches!(other.recv().await, Message::Subscribed { .. }));
    publisher.publish(&secret, vec![Value::UInt(8)], Dict::new()).await;
    assert_eq!(other.event().await.1, vec![Value::UInt(8)], "the first event it sees is the live one");
}

fn redis_url() -> String {
    std::env::var("TELEGRAPHY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

#[tokio::test]
async fn on_redis_a_client_resumes_on_another_node_whoever_published() {
    let prefix = util::unique("test-history") + ":";
    let config = || {
        let mut c = util::config();
        c.bus = redis_url();
        c.redis.key_prefix = prefix.clone();
        c.history.topics = vec!["h.*".into()];
        c.history.size = 5;
        c.history.max_replay = 4;
        c
    };
    let a = TestGateway::start_ready(config()).await;
    let b = TestGateway::start_ready(config()).await;
    let topic = util::unique("h.redis");
    let mut on_b = Client::join(&b, JSON).await;
    let mut first = Client::join(&a, MSGPACK).await;
    let sub = first.subscribe(&topic, "exact").await;
    let one = on_b.publish(&topic, vec![Value::UInt(1)], Dict::new()).await;
    assert_eq!(event_numbered(&mut first, 1).await, one, "PUBLISHED and EVENT agree across nodes");
    drop(first);
    // Missed events, through every path: WAMP on node B, HTTP on node A,
    // and a publisher writing straight onto Redis (the CLI's and the Rust
    // publisher's path), which knows nothing of the history settings.
    on_b.publish(&topic, vec![Value::UInt(2)], Dict::new()).await;
    let (status, _) = a.publish_http(serde_json::json!({"topic": topic, "args": [3]})).await;
    assert_eq!(status, 200);
    let options = telegraphy_bus::BusOptions { redis_key_prefix: prefix.clone(), ..Default::default() };
    let direct = telegraphy_bus::connect_publisher(&redis_url(), &options).await.expect("Redis is reachable");
    let event = telegraphy_bus::Envelope {
        realm: "realm1".into(),
        publication: 99,
        topic: topic.clone(),
        args: vec![Value::UInt(4)],
        kwargs: Dict::new(),
        filter: Default::default(),
        publisher: None,
        published_at_us: telegraphy_bus::now_us(),
        retain: true,
        position: None,
    };
    let four = direct.publish(event, telegraphy_bus::Delivery::Accepted).await.unwrap();
    assert!(telegraphy_bus::Position::from_publication(four).is_some_and(|p| p.offset == 4), "the script gave the direct publish its position");
    // Back on node B: the same subscription id, exactly 2, 3, 4.
    let mut back = Client::join(&b, JSON).await;
    let (again, events) = subscribe_with(&mut back, &topic, options_of(&[("_after_publication", Value::UInt(one))])).await;
    assert_eq!(again, sub);
    assert_eq!((numbers(&events), recovered(&events)), (vec![2, 3, 4], Some(true)));
    on_b.publish(&topic, vec![Value::UInt(5)], Dict::new()).await;
    assert_eq!(back.event().await.1, vec![Value::UInt(5)]);
    // get_events reads the same stream; the retained event is there too.
    let list = call(&mut back, vec![Value::UInt(sub)], Dict::new()).await.unwrap();
    assert_eq!(list.iter().filter_map(first_arg).collect::<Vec<_>>(), vec![2, 3, 4, 5], "size 5 keeps 1..=5; max_replay 4 returns the newest 4");
    let mut late = Client::join(&a, JSON).await;
    let request = late.request_id();
    late.send(&Message::Subscribe { request, options: options_of(&[("get_retained", Value::Bool(true))]), topic: topic.clone() }).await;
    assert!(matches!(late.recv().await, Message::Subscribed { .. }));
    match late.recv().await {
        Message::Event { args, details, publication, .. } => {
            assert_eq!((args, publication), (vec![Value::UInt(4)], four));
            assert_eq!(details.get("retained"), Some(&Value::Bool(true)));
        }
        other => panic!("expected the retained EVENT, got {other:?}"),
    }
    direct.shutdown();
}

fn amqp_url() -> String {
    std::env::var("TELEGRAPHY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn amqp_config(exchange: &util::AmqpExchange) -> telegraphy_gateway::Config {
    let mut c = util::config();
    c.bus = exchange.url.clone();
    c.amqp.exchange = exchange.name.clone();
    c.history.topics = vec!["h.*".into()];
    c.history.size = 5;
    c.history.max_replay = 4;
    c.limits.bus_reconnect_max_delay = std::time::Duration::from_millis(300);
    c
}

fn envelope(topic: &str, n: u64, retain: bool) -> telegraphy_bus::Envelope {
    telegraphy_bus::Envelope {
        realm: "realm1".into(),
        publication: fastrand::u64(1..(1 << 53)),
        topic: topic.into(),
        args: vec![Value::UInt(n)],
        kwargs: Dict::new(),
        filter: Default::default(),
        publisher: None,
        published_at_us: telegraphy_bus::now_us(),
        retain,
        position: None,
    }
}

/// RabbitMQ keeps history in a stream queue beside the exchange; the
/// publishers know nothing of it.
#[tokio::test]
async fn on_rabbitmq_a_client_resumes_on_another_node_whoever_published() {
    let exchange = util::AmqpExchange::new(&amqp_url(), "test-history");
    let a = TestGateway::start_ready(amqp_config(&exchange)).await;
    let b = TestGateway::start_ready(amqp_config(&exchange)).await;
    let topic = util::unique("h.amqp");
    let mut on_b = Client::join(&b, JSON).await;
    // Sees every event on node A live: once it has one, node A read it.
    let mut witness = Client::join(&a, JSON).await;
    witness.subscribe(&topic, "exact").await;
    let mut first = Client::join(&a, MSGPACK).await;
    let sub = first.subscribe(&topic, "exact").await;
    on_b.publish(&topic, vec![Value::UInt(1)], Dict::new()).await;
    let one = event_numbered(&mut first, 1).await;
    drop(first);
    // Missed events, through every path: WAMP on node B, HTTP on node A,
    // and a publisher writing straight onto RabbitMQ (the CLI's and the
    // Rust publisher's path).
    on_b.publish(&topic, vec![Value::UInt(2)], Dict::new()).await;
    let (status, _) = a.publish_http(serde_json::json!({"topic": topic, "args": [3]})).await;
    assert_eq!(status, 200);
    let options = telegraphy_bus::BusOptions { amqp_exchange: exchange.name.clone(), ..Default::default() };
    let direct = telegraphy_bus::connect_publisher(&exchange.url, &options).await.expect("RabbitMQ is reachable");
    direct.publish(envelope(&topic, 4, true), telegraphy_bus::Delivery::Accepted).await.unwrap();
    // Back on node B: the same subscription id, exactly 2, 3, 4. Node B
    // replays what it has read of the stream; an event RabbitMQ confirmed
    // that is still on its way to B follows the marker, live, in order.
    let mut back = Client::join(&b, JSON).await;
    let (again, mut events) = subscribe_with(&mut back, &topic, options_of(&[("_after_publication", Value::UInt(one))])).await;
    assert_eq!(again, sub);
    assert_eq!(recovered(&events), Some(true));
    while numbers(&events).len() < 3 {
        events.push(back.recv().await);
    }
    assert_eq!(numbers(&events), vec![2, 3, 4], "exactly what it missed, in order");
    let four = events
        .iter()
        .find_map(|m| match m {
            Message::Event { publication, args, .. } if args.first() == Some(&Value::UInt(4)) => Some(*publication),
            _ => None,
        })
        .unwrap();
    on_b.publish(&topic, vec![Value::UInt(5)], Dict::new()).await;
    assert_eq!(back.event().await.1, vec![Value::UInt(5)], "then live events, once");
    for n in 1..=5 {
        assert_eq!(witness.event().await.1, vec![Value::UInt(n)], "node A read up to 5");
    }
    // get_events reads the same index; the retained event is there too.
    let list = call(&mut back, vec![Value::UInt(sub)], Dict::new()).await.unwrap();
    assert_eq!(list.iter().filter_map(first_arg).collect::<Vec<_>>(), vec![2, 3, 4, 5], "size 5 keeps 1..=5; max_replay 4 returns the newest 4");
    let mut late = Client::join(&a, JSON).await;
    let request = late.request_id();
    late.send(&Message::Subscribe { request, options: options_of(&[("get_retained", Value::Bool(true))]), topic: topic.clone() }).await;
    assert!(matches!(late.recv().await, Message::Subscribed { .. }));
    match late.recv().await {
        Message::Event { args, details, publication, .. } => {
            assert_eq!((args, publication), (vec![Value::UInt(4)], four), "one publication id on every node and path");
            assert_eq!(details.get("retained"), Some(&Value::Bool(true)));
        }
        other => panic!("expected the retained EVENT, got {other:?}"),
    }
    // A node started now reads the stream back: it resumes the same client.
    let c = TestGateway::start_ready(amqp_config(&exchange)).await;
    let mut third = Client::join(&c, MSGPACK).await;
    let (_, events) = subscribe_with(&mut third, &topic, options_of(&[("_after_publication", Value::UInt(one))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![2, 3, 4, 5], Some(true)));
    direct.shutdown();
}

/// A client away longer than `history.ttl` is told it did not recover, on
/// Redis (the topic's log expired: a new epoch) and on RabbitMQ (the node's
/// index drops events older than `ttl`), never given a partial list.
#[tokio::test]
async fn a_client_away_longer_than_the_ttl_is_told_it_did_not_recover() {
    let exchange = util::AmqpExchange::new(&amqp_url(), "test-history-ttl");
    let prefix = util::unique("test-history-ttl") + ":";
    let short = |mut c: telegraphy_gateway::Config| {
        c.history.ttl = std::time::Duration::from_secs(1);
        c
    };
    let redis = {
        let mut c = util::config();
        c.bus = redis_url();
        c.redis.key_prefix = prefix.clone();
        c.history.topics = vec!["h.*".into()];
        short(c)
    };
    for config in [redis, short(amqp_config(&exchange))] {
        let bus = config.bus.clone();
        let node = TestGateway::start_ready(config).await;
        let topic = util::unique("h.ttl");
        let mut publisher = Client::join(&node, JSON).await;
        let mut first = Client::join(&node, JSON).await;
        first.subscribe(&topic, "exact").await;
        publisher.publish(&topic, vec![Value::UInt(1)], Dict::new()).await;
        let one = event_numbered(&mut first, 1).await;
        drop(first);
        publisher.publish(&topic, vec![Value::UInt(2)], Dict::new()).await;
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let mut back = Client::join(&node, JSON).await;
        let (_, events) = subscribe_with(&mut back, &topic, options_of(&[("_after_publication", Value::UInt(one))])).await;
        assert_eq!((numbers(&events), recovered(&events)), (vec![], Some(false)), "{bus}: event 2 is older than the ttl");
    }
}

/// A node's connection to RabbitMQ is closed while a publisher sends
/// numbered events straight onto RabbitMQ: the subscriber, whose WebSocket
/// stays up on node A, gets every acknowledged event, in order, once each:
/// the node reads the stream on from where it stopped.
#[tokio::test]
async fn rabbitmq_connection_loss_loses_nothing_the_stream_kept() {
    let exchange = util::AmqpExchange::new(&amqp_url(), "test-history-fault");
    let a = TestGateway::start_ready(amqp_config(&exchange)).await;
    let mut sub = Client::join(&a, JSON).await;
    sub.subscribe("h.fault", "exact").await;
    let options = telegraphy_bus::BusOptions { amqp_exchange: exchange.name.clone(), ..Default::default() };
    let publisher = telegraphy_bus::connect_publisher(&exchange.url, &options).await.expect("RabbitMQ is reachable");
    let mut acknowledged = Vec::new();
    let closer = {
        let name = format!("telegraphy-gateway-{:016x}", a.node_id);
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let listing = std::process::Command::new("rabbitmqctl")
                .args(["list_connections", "-q", "--no-table-headers", "pid", "client_properties"])
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
            let pid = listing.lines().find(|l| l.contains(&name)).and_then(|l| l.split('\t').next()).expect("node A's connection").to_string();
            let closed =
                std::process::Command::new("rabbitmqctl").args(["close_connection", &pid, "telegraphy test: connection loss"]).status().unwrap();
            assert!(closed.success());
        })
    };
    let mut n = 0;
    while !closer.is_finished() || n < 200 {
        n += 1;
        if publisher.publish(envelope("h.fault", n, false), telegraphy_bus::Delivery::Accepted).await.is_ok() {
            acknowledged.push(n);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    closer.await.unwrap();
    util::eventually("node A reconnected", std::time::Duration::from_secs(20), || async { a.metric("telegraphy_bus_reconnects_total").await >= 1.0 })
        .await;
    // And events published after it came back arrive too.
    for _ in 0..20 {
        n += 1;
        if publisher.publish(envelope("h.fault", n, false), telegraphy_bus::Delivery::Accepted).await.is_ok() {
            acknowledged.push(n);
        }
    }
    let last = *acknowledged.last().unwrap();
    let mut received = Vec::new();
    while received.last() != Some(&last) {
        let (_, args, _) = tokio::time::timeout(std::time::Duration::from_secs(20), sub.event())
            .await
            .unwrap_or_else(|_| panic!("waiting for event {last}; got {} events, the last {:?}", received.len(), received.last()));
        received.push(args[0].as_u64().unwrap());
    }
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, once each: {received:?}");
    let missing: Vec<_> = acknowledged.iter().filter(|n| !received.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");
    publisher.shutdown();
}

/// A node's own bus outage (its connections to Redis dropped) and a Redis
/// restart, while a publisher sends numbered events straight onto Redis: the
/// subscriber, whose WebSocket stays up on node A, gets every event the
/// publisher had acknowledged, in order, once each, without reconnecting.
#[tokio::test]
async fn redis_outages_lose_nothing_the_store_kept() {
    let mut redis = util::RedisServer::start_persistent();
    let config = || {
        let mut c = util::config();
        c.bus = redis.url();
        c.redis.key_prefix = "fault:".into();
        c.history.topics = vec!["h.*".into()];
        c.limits.bus_reconnect_max_delay = std::time::Duration::from_millis(300);
        c
    };
    let a = TestGateway::start_ready(config()).await;
    let _b = TestGateway::start_ready(config()).await;
    let mut sub = Client::join(&a, JSON).await;
    sub.subscribe("h.fault", "exact").await;

    let options = telegraphy_bus::BusOptions { redis_key_prefix: "fault:".into(), ..Default::default() };
    let publisher = telegraphy_bus::connect_publisher(&redis.url(), &options).await.expect("the private Redis is up");
    let publish = |n: u64| {
        let publisher = publisher.clone();
        async move {
            let event = telegraphy_bus::Envelope {
                realm: "realm1".into(),
                publication: n,
                topic: "h.fault".into(),
                args: vec![Value::UInt(n)],
                kwargs: Dict::new(),
                filter: Default::default(),
                publisher: None,
                published_at_us: telegraphy_bus::now_us(),
                retain: false,
                position: None,
            };
            publisher.publish(event, telegraphy_bus::Delivery::Accepted).await.is_ok()
        }
    };
    let url = redis.url();
    let mut acknowledged = Vec::new();
    let mut n = 0;
    let pause = std::time::Duration::from_millis(10);
    let step = |ok: bool, n: u64, acknowledged: &mut Vec<u64>| {
        if ok {
            acknowledged.push(n);
        }
    };
    // Phase 1: normal.
    for _ in 0..50 {
        n += 1;
        step(publish(n).await, n, &mut acknowledged);
        tokio::time::sleep(pause).await;
    }
    // Phase 2: every node loses its subscriber connection (a network blip
    // between the nodes and Redis); publishing goes on meanwhile.
    let killed: i64 = {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap()
    };
    assert!(killed >= 1, "node A's subscriber connection was dropped ({killed})");
    for _ in 0..50 {
        n += 1;
        step(publish(n).await, n, &mut acknowledged);
        tokio::time::sleep(pause).await;
    }
    // Phase 3: Redis itself restarts (its append-only file keeps the history).
    redis.kill();
    for _ in 0..10 {
        n += 1;
        step(publish(n).await, n, &mut acknowledged);
        tokio::time::sleep(pause).await;
    }
    redis.spawn();
    for _ in 0..100 {
        n += 1;
        step(publish(n).await, n, &mut acknowledged);
        tokio::time::sleep(pause).await;
    }
    let last = *acknowledged.last().expect("some events were acknowledged");
    assert!(acknowledged.len() >= 150, "the publisher got most events through ({} of {n})", acknowledged.len());
    let mut received = Vec::new();
    while received.last() != Some(&last) {
        let (_, args, _) = tokio::time::timeout(std::time::Duration::from_secs(20), sub.event())
            .await
            .unwrap_or_else(|_| panic!("waiting for event {last}; got {} events, the last {:?}", received.len(), received.last()));
        received.push(args[0].as_u64().unwrap());
    }
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, once each: {received:?}");
    let missing: Vec<_> = acknowledged.iter().filter(|n| !received.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged but never delivered: {missing:?}");
    publisher.shutdown();
}

#[tokio::test]
async fn a_subscriber_that_saw_nothing_resumes_from_the_position_it_was_given() {
    let gw = gateway().await;
    let topic = util::unique("h.quiet");
    let mut first = Client::join(&gw, JSON).await;
    let request = first.request_id();
    first.send(&Message::Subscribe { request, options: options_of(&[("_position", Value::Bool(true))]), topic: topic.clone() }).await;
    assert!(matches!(first.recv().await, Message::Subscribed { .. }));
    let position = match first.recv().await {
        Message::Event { publication, details, args, .. } => {
            assert_eq!((details.get("_position"), args.len()), (Some(&Value::Bool(true)), 0));
            publication
        }
        other => panic!("expected the _position EVENT, got {other:?}"),
    };
    drop(first);
    let mut publisher = Client::join(&gw, JSON).await;
    for n in 1..=2 {
        publisher.publish(&topic, vec![Value::UInt(n)], Dict::new()).await;
    }
    let mut back = Client::join(&gw, JSON).await;
    let (_, events) = subscribe_with(&mut back, &topic, options_of(&[("_after_publication", Value::UInt(position))])).await;
    assert_eq!((numbers(&events), recovered(&events)), (vec![1, 2], Some(true)));
    // A topic without history gets no position.
    let mut other = Client::join(&gw, JSON).await;
    let request = other.request_id();
    let plain = util::unique("x.plain");
    other.send(&Message::Subscribe { request, options: options_of(&[("_position", Value::Bool(true))]), topic: plain.clone() }).await;
    assert!(matches!(other.recv().await, Message::Subscribed { .. }));
    publisher.publish(&plain, vec![Value::UInt(9)], Dict::new()).await;
    assert_eq!(other.event().await.1, vec![Value::UInt(9)], "the first event it sees is the live one");
}
