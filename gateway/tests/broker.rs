//! Broker behaviour over real sockets: match policies, publish options,
//! HTTP publish, limits, slow consumers, drain and metrics.

use telegraphy_testkit as util;

use std::time::Duration;

use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{dict, Dict, Message, Serialization, Value};
use util::{Client, TestGateway, API_KEY};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

fn ids(list: &[u64]) -> Value {
    Value::List(list.iter().map(|i| Value::UInt(*i)).collect())
}

fn strs(list: &[&str]) -> Value {
    Value::List(list.iter().map(|s| Value::Str(s.to_string())).collect())
}

#[tokio::test]
async fn match_policies_and_shared_subscriptions() {
    let gw = TestGateway::start().await;
    let mut a = Client::join(&gw, JSON).await;
    let mut b = Client::join(&gw, MSGPACK).await;
    let exact = a.subscribe("com.app.user.update", "exact").await;
    let prefix = a.subscribe("com.app.user", "prefix").await;
    let wildcard = a.subscribe("com.app..update", "wildcard").await;
    // Same (topic, policy) from another session: same subscription id.
    assert_eq!(b.subscribe("com.app.user", "prefix").await, prefix);
    assert_ne!(exact, prefix);

    let mut p = Client::join(&gw, JSON).await;
    p.publish("com.app.user.update", vec!["u".into()], Dict::new()).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (sub, args, details) = a.event().await;
        assert_eq!(args, vec![Value::from("u")]);
        got.push((sub, details.get("topic").cloned()));
    }
    let mut want = vec![(exact, None), (prefix, Some("com.app.user.update".into())), (wildcard, Some("com.app.user.update".into()))];
    got.sort_by_key(|(s, _)| *s);
    want.sort_by_key(|(s, _)| *s);
    assert_eq!(got, want);
    let (sub, args, details) = b.event().await;
    assert_eq!((sub, args, details.get("topic").cloned()), (prefix, vec![Value::from("u")], Some("com.app.user.update".into())));

    // Topics that match only some policies.
    p.publish("com.app.order.update", vec![1u64.into()], Dict::new()).await; // wildcard only
    p.publish("com.app.user2", vec![2u64.into()], Dict::new()).await; // prefix only (string prefix)
    let (s1, a1, _) = a.event().await;
    let (s2, a2, _) = a.event().await;
    assert_eq!((s1, a1), (wildcard, vec![Value::UInt(1)]));
    assert_eq!((s2, a2), (prefix, vec![Value::UInt(2)]));
    assert_eq!(b.event().await.1, vec![Value::UInt(2)]);
    assert_eq!(gw.metric("telegraphy_topics").await, 3.0);
    assert_eq!(gw.metric("telegraphy_subscriptions").await, 4.0);
}

#[tokio::test]
async fn publisher_exclusion_and_identification() {
    let gw = TestGateway::start().await;
    let mut a = Client::join(&gw, JSON).await;
    let mut b = Client::join(&gw, MSGPACK).await;
    a.subscribe("t.x", "exact").await;
    b.subscribe("t.x", "exact").await;
    // exclude_me defaults to true: a does not get its own event, b does.
    a.publish("t.x", vec![1u64.into()], Dict::new()).await;
    assert_eq!(b.event().await.1, vec![Value::UInt(1)]);
    // exclude_me false + disclose_me: a gets it, with the publisher named.
    a.publish("t.x", vec![2u64.into()], dict! {"exclude_me" => false, "disclose_me" => true}).await;
    let (_, args, details) = a.event().await;
    assert_eq!(args, vec![Value::UInt(2)], "a's first event is the second publication: the first was excluded");
    assert_eq!(details["publisher"], Value::UInt(a.session));
    assert_eq!(details["publisher_authid"], Value::Str(a.authid()));
    assert_eq!(details["publisher_authrole"], Value::from("anonymous"));
    let (_, args, details) = b.event().await;
    assert_eq!(args, vec![Value::UInt(2)]);
    assert_eq!(details["publisher"], Value::UInt(a.session));
    // Without disclose_me nobody learns the publisher.
    a.publish("t.x", vec![3u64.into()], Dict::new()).await;
    assert!(!b.event().await.2.contains_key("publisher"));
}

#[tokio::test]
async fn black_and_white_listing() {
    let gw = TestGateway::start().await;
    let mut p = Client::join(&gw, JSON).await;
    let mut a = Client::join(&gw, JSON).await;
    let mut b = Client::join(&gw, MSGPACK).await;
    a.subscribe("t.y", "exact").await;
    b.subscribe("t.y", "exact").await;
    let aid = a.session;
    let bauth = b.authid();
    let cases: Vec<(&str, Value, bool, bool)> = vec![
        ("exclude", ids(&[aid]), false, true),
        ("eligible", ids(&[aid]), true, false),
        ("eligible", ids(&[]), false, false),
        ("exclude_authid", strs(&[&bauth]), true, false),
        ("eligible_authid", strs(&[&bauth]), false, true),
        ("exclude_authrole", strs(&["anonymous"]), false, false),
        ("eligible_authrole", strs(&["anonymous"]), true, true),
        ("eligible_authrole", strs(&["admin"]), false, false),
    ];
    for (n, (option, value, to_a, to_b)) in cases.into_iter().enumerate() {
        let mut opts = Dict::new();
        opts.insert(option.into(), value);
        p.publish("t.y", vec![Value::UInt(n as u64)], opts).await;
        // A marker every subscriber gets orders the check: whatever arrives
        // before the marker is what the filtered publication delivered.
        p.publish("t.y", vec![Value::from("marker")], Dict::new()).await;
        for (client, expected, name) in [(&mut a, to_a, "a"), (&mut b, to_b, "b")] {
            let first = client.event().await.1;
            if expected {
                assert_eq!(first, vec![Value::UInt(n as u64)], "{option}: {name} should receive");
                assert_eq!(client.event().await.1, vec![Value::from("marker")]);
            } else {
                assert_eq!(first, vec![Value::from("marker")], "{option}: {name} should not receive");
            }
        }
    }
    // Same options over HTTP.
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "t.y", "args": ["http"], "options": {"exclude": [aid]}})).await;
    assert_eq!(status, 200);
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "t.y", "args": ["all"]})).await;
    assert_eq!(status, 200);
    assert_eq!(a.event().await.1, vec![Value::from("all")]);
    assert_eq!(b.event().await.1, vec![Value::from("http")]);
}

/// A large fan-out's frames are written by the write shards (a claim on
/// the socket's next write when nothing waits): a reply the session sends
/// meanwhile must not overtake an EVENT it was already sent. AutobahnPython
/// treats an EVENT after UNSUBSCRIBED as a protocol error.
#[tokio::test]
async fn no_event_after_unsubscribed_in_a_large_fanout() {
    let gw = TestGateway::start().await;
    let mut others = Vec::new();
    for _ in 0..140 {
        let mut c = Client::join(&gw, JSON).await;
        c.subscribe("fanout.race", "exact").await;
        others.push(c);
    }
    let mut a = Client::join(&gw, JSON).await;
    let sub = a.subscribe("fanout.race", "exact").await;
    let mut p = Client::join(&gw, JSON).await;
    let flood = tokio::spawn(async move {
        for n in 0..400u64 {
            p.publish("fanout.race", vec![n.into()], Dict::new()).await;
        }
        p
    });
    for _ in 0..20 {
        a.event().await;
    }
    a.send(&Message::Unsubscribe { request: 77, subscription: sub }).await;
    let mut last = None;
    loop {
        match a.recv().await {
            Message::Event { subscription, args, .. } => {
                assert_eq!(subscription, sub);
                last = args.first().cloned();
            }
            Message::Unsubscribed { request: 77 } => break,
            other => panic!("expected EVENT or UNSUBSCRIBED, got {other:?}"),
        }
    }
    let _p = flood.await.unwrap();
    // The flood is over: anything still to come would be an EVENT after UNSUBSCRIBED.
    match tokio::time::timeout(Duration::from_millis(300), a.next()).await {
        Err(_) => {}
        Ok(m) => panic!("after UNSUBSCRIBED (last event {last:?}): {m:?}"),
    }
    // Everyone else got all 400, in order.
    for (i, c) in others.iter_mut().enumerate() {
        for n in 0..400u64 {
            assert_eq!(c.event().await.1, vec![Value::UInt(n)], "subscriber {i}");
        }
    }
}

#[tokio::test]
async fn unsubscribe_and_goodbye() {
    let gw = TestGateway::start().await;
    let mut a = Client::join(&gw, JSON).await;
    let mut b = Client::join(&gw, JSON).await;
    let sub = a.subscribe("t.z", "exact").await;
    b.subscribe("t.z", "exact").await;
    a.send(&Message::Unsubscribe { request: 99, subscription: sub }).await;
    assert_eq!(a.recv().await, Message::Unsubscribed { request: 99 });
    a.subscribe("t.marker", "exact").await;
    let mut p = Client::join(&gw, JSON).await;
    p.publish("t.z", vec![1u64.into()], Dict::new()).await;
    p.publish("t.marker", vec![2u64.into()], Dict::new()).await;
    assert_eq!(b.event().await.1, vec![Value::UInt(1)]);
    assert_eq!(a.event().await.1, vec![Value::UInt(2)], "no event after UNSUBSCRIBED");

    a.send(&Message::Goodbye { details: Dict::new(), reason: err::CLOSE_REALM.into() }).await;
    assert_eq!(a.recv().await, Message::Goodbye { details: Dict::new(), reason: err::GOODBYE_AND_OUT.into() });
    assert_eq!(a.closed().await.code, Some(close::NORMAL));
    // Once b leaves, the subscription is gone too.
    drop(b);
    let mut left = 1.0;
    for _ in 0..50 {
        left = gw.metric("telegraphy_topics").await;
        if left == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0.0);
}

#[tokio::test]
async fn http_publish_errors() {
    let gw = TestGateway::start().await;
    let url = format!("http://{}/publish", gw.addr);
    let http = reqwest::Client::new();
    let post = |key: Option<&str>, body: String| {
        let mut req = http.post(&url).header("content-type", "application/json").body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let check = |resp: reqwest::Response, status: u16, error: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    check(post(None, "{\"topic\":\"a.b\"}".into()).await.unwrap(), 401, "missing_api_key").await;
    check(post(Some("wrong-key-000"), "{\"topic\":\"a.b\"}".into()).await.unwrap(), 403, "invalid_api_key").await;
    for bad in [
        "",
        "[1]",
        "{\"topic\": 3}",
        "{\"args\": []}",
        "{\"topic\":\"a..b\"}",
        "{\"topic\":\"a.b\",\"args\":{}}",
        "{\"topic\":\"a.b\",\"extra\":1}",
        "{\"topic\":\"a.b\",\"options\":{\"eligible\":\"x\"}}",
        "{\"topic\":\"a.b\",\"realm\":\"nope\"}",
    ] {
        check(post(Some(API_KEY), bad.into()).await.unwrap(), 400, "bad_request").await;
    }
    let big = format!("{{\"topic\":\"a.b\",\"args\":[\"{}\"]}}", "x".repeat(70_000));
    check(post(Some(API_KEY), big).await.unwrap(), 413, "too_large").await;
    let huge = format!("{{\"topic\":\"a.b\",\"args\":[\"{}\"]}}", "x".repeat(3_000_000));
    check(post(Some(API_KEY), huge).await.unwrap(), 413, "too_large").await;
    let (status, body) = gw.publish_http(serde_json::json!({"topic": "a.b", "args": [1], "kwargs": {"k": "v"}})).await;
    assert_eq!(status, 200);
    assert!(body["id"].as_u64().is_some_and(|id| id > 0 && id <= 1 << 53));
    assert_eq!(gw.metric("telegraphy_events_published_total{source=\"http\"}").await, 1.0);
    assert_eq!(gw.metric("telegraphy_http_publish_errors_total{status=\"400\"}").await, 9.0);
}

/// Small subscriptions have their events written straight from the
/// fan-out; large ones (over 128 local subscribers) go through each
/// session's task. Both reach everyone, in publication order, on both
/// serializers.
#[tokio::test]
async fn small_and_large_fanouts_reach_everyone_in_order() {
    let gw = TestGateway::start().await;
    let mut big = Vec::new();
    for i in 0..150 {
        let mut c = Client::join(&gw, if i % 2 == 0 { JSON } else { MSGPACK }).await;
        c.subscribe("fanout.big", "exact").await;
        big.push(c);
    }
    let mut small = Client::join(&gw, MSGPACK).await;
    small.subscribe("fanout.small", "exact").await;
    let mut publisher = Client::join(&gw, JSON).await;
    for n in 0..20u64 {
        let topic = if n % 2 == 0 { "fanout.big" } else { "fanout.small" };
        publisher.publish(topic, vec![n.into()], Dict::new()).await;
    }
    for (i, c) in big.iter_mut().enumerate() {
        for n in (0..20u64).step_by(2) {
            assert_eq!(c.event().await.1, vec![Value::UInt(n)], "subscriber {i}");
        }
    }
    for n in (1..20u64).step_by(2) {
        assert_eq!(small.event().await.1, vec![Value::UInt(n)]);
    }
    assert_eq!(gw.metric("telegraphy_events_delivered_total").await, 150.0 * 10.0 + 10.0);
}

#[tokio::test]
async fn slow_consumer_is_closed_and_counted() {
    let mut config = util::config();
    config.limits.outbound_queue_messages = 8;
    config.limits.outbound_queue_bytes = 256 * 1024;
    let gw = TestGateway::start_with(config).await;
    let mut slow = Client::join(&gw, MSGPACK).await;
    slow.subscribe("flood", "exact").await;
    let mut fast = Client::join(&gw, JSON).await;
    fast.subscribe("flood.done", "exact").await;
    // The slow client stops reading; 40 MiB of events cannot fit in socket buffers.
    let payload = "x".repeat(32 * 1024);
    let http = reqwest::Client::new();
    for _ in 0..1200 {
        let resp = http
            .post(format!("http://{}/publish", gw.addr))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({"topic": "flood", "args": [payload]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        if gw.metric("telegraphy_slow_consumer_closes_total").await >= 1.0 {
            break;
        }
    }
    assert_eq!(gw.metric("telegraphy_slow_consumer_closes_total").await, 1.0);
    assert_eq!(gw.metric("telegraphy_queue_drops_total{reason=\"queue_full\"}").await, 1.0);
    // Only `slow` subscribes to "flood": every delivery counted is its.
    let delivered = gw.metric("telegraphy_events_delivered_total").await;
    // Other sessions are untouched.
    gw.publish_http(serde_json::json!({"topic": "flood.done", "args": ["ok"]})).await;
    assert_eq!(fast.event().await.1, vec![Value::from("ok")]);
    // The slow client, once it reads again (within the close timeout), gets
    // what the kernel held for it and then its close frame: the send buffer
    // is bounded (limits.socket_send_buffer), so the close frame fits.
    let mut received = 0u64;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Ok(Message::Event { .. }) => received += 1,
                Ok(_) => {}
                Err(c) => return c,
            }
        }
    })
    .await
    .expect("slow consumer connection ends");
    assert_eq!(closed.code, Some(close::SLOW_CONSUMER), "{closed:?}");
    assert_eq!(gw.metric("telegraphy_disconnects_total{code=\"4000\"}").await, 1.0, "the close frame was written");
    assert_eq!(gw.metric("telegraphy_close_unsent_total{code=\"4000\"}").await, 0.0);
    // Accounting: what was written or queued for it, less what was
    // discarded with its backlog (what the task had not written yet when
    // the session closed; may be nothing), is exactly what it received.
    let discarded = gw.metric("telegraphy_queue_drops_total{reason=\"discarded\"}").await;
    assert_eq!(received as f64, delivered - discarded, "received {received}, delivered {delivered}, discarded {discarded}");
}

#[tokio::test]
async fn connection_limit() {
    let mut config = util::config();
    config.limits.max_connections = 1;
    let gw = TestGateway::start_with(config).await;
    let _first = Client::join(&gw, JSON).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.ws_url()).unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "wamp.2.json".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"max_connections\"}").await, 1.0);
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let mut config = util::config();
    config.limits.ping_interval = Duration::from_millis(100);
    config.limits.idle_timeout = Duration::from_millis(400);
    let gw = TestGateway::start_with(config).await;
    // A client that reads (and so answers pings) stays.
    let mut alive = Client::join(&gw, JSON).await;
    alive.subscribe("t.alive", "exact").await;
    // A client that stops reading never answers pings and is closed.
    let mut silent = Client::join(&gw, JSON).await;
    let reader = tokio::spawn(async move {
        // Reading drives automatic pong replies.
        alive.event().await
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.publish_http(serde_json::json!({"topic": "t.alive", "args": [1]})).await;
    assert_eq!(reader.await.unwrap().1, vec![Value::UInt(1)]);
    let (reason, code) = silent.expect_abort().await;
    assert_eq!(reason, err::IDLE_TIMEOUT);
    assert_eq!(code, Some(close::IDLE_TIMEOUT));
}

#[tokio::test]
async fn drain_says_goodbye_and_exits_in_time() {
    let mut config = util::config();
    config.shutdown.drain_delay = Duration::from_millis(300);
    config.shutdown.drain_timeout = Duration::from_secs(3);
    let mut gw = TestGateway::start_with(config).await;
    let mut a = Client::join(&gw, JSON).await;
    let mut b = Client::join(&gw, MSGPACK).await;
    let ready = |gw: &TestGateway| {
        let url = format!("http://{}/readyz", gw.admin);
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&gw).await, 200);
    let started = std::time::Instant::now();
    gw.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready(&gw).await, 503, "not ready during the drain delay");
    // New WebSockets are refused while draining.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.ws_url()).unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "wamp.2.json".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    for c in [&mut a, &mut b] {
        match c.recv().await {
            Message::Goodbye { reason, .. } => assert_eq!(reason, err::SYSTEM_SHUTDOWN),
            other => panic!("expected GOODBYE, got {other:?}"),
        }
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(close::SERVICE_RESTART));
    }
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("gateway exits").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "exited before the drain deadline once sessions closed");
}

#[tokio::test]
async fn metrics_expose_the_documented_names() {
    let gw = TestGateway::start().await;
    let mut a = Client::join(&gw, JSON).await;
    a.subscribe("m.x", "exact").await;
    a.publish("m.x", vec![], dict! {"exclude_me" => false}).await;
    a.event().await;
    let text = gw.metrics().await;
    for name in [
        "telegraphy_connections 1",
        "telegraphy_sessions 1",
        "telegraphy_sessions_total 1",
        "telegraphy_subscriptions 1",
        "telegraphy_topics 1",
        "telegraphy_messages_in_total{serializer=\"json\"} 3",
        "telegraphy_events_published_total{source=\"wamp\"} 1",
        "telegraphy_events_delivered_total 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing `{name}` in:\n{text}");
    }
    assert!(gw.metric("telegraphy_bytes_out_total{serializer=\"json\"}").await > 0.0);
    // The event only: nobody listens to wamp.session.on_join, so it is not published.
    assert_eq!(gw.metric("telegraphy_fanout_duration_seconds_count").await, 1.0);
    let health = reqwest::get(format!("http://{}/healthz", gw.admin)).await.unwrap();
    assert_eq!(health.status(), 200);
}
