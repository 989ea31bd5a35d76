//! Bad input over a real socket: each case is a byte fixture, and each must
//! end in the documented ABORT / ERROR and close code, count a metric, and
//! leave other sessions untouched.

use telegraphy_testkit as util;

use std::time::Duration;

use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{Message, Serialization, Value};
use tokio_tungstenite::tungstenite::Message as Ws;
use util::{Client, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

/// Sends `frame` on a fresh connection (after HELLO when `join`) and expects
/// ABORT with `reason` and close code `code`.
async fn expect_aborted(gw: &TestGateway, ser: Serialization, join: bool, frame: Ws, reason: &str, code: u16) {
    let mut c = if join { Client::join(gw, ser).await } else { Client::open(gw, ser).await };
    c.send_raw(frame).await;
    let (got_reason, got_code) = c.expect_abort().await;
    assert_eq!(got_reason, reason);
    assert_eq!(got_code, Some(code));
}

fn text(s: &str) -> Ws {
    Ws::Text(s.to_string().into())
}

fn bin(b: &[u8]) -> Ws {
    Ws::Binary(b.to_vec().into())
}

#[tokio::test]
async fn malformed_and_invalid_messages_abort_with_protocol_violation() {
    let gw = TestGateway::start().await;
    // A bystander keeps its subscription through all of this.
    let mut bystander = Client::join(&gw, JSON).await;
    bystander.subscribe("com.bystander", "exact").await;

    let json_cases: &[(&str, bool)] = &[
        ("[1, \"realm1\"", false),                                    // truncated JSON
        ("not json at all", false),                                   // garbage
        ("{\"hello\": 1}", false),                                    // not a list
        ("[]", false),                                                // empty list
        ("[\"HELLO\", \"realm1\", {}]", false),                       // code not an integer
        ("[99, 1, 2]", false),                                        // unknown code
        ("[1, \"realm1\"]", false),                                   // HELLO missing details
        ("[1, 5, {\"roles\": {\"subscriber\": {}}}]", false),         // realm not a string
        ("[1, \"realm1\", {}]", false),                               // HELLO without roles
        ("[32, 1, {}, \"a.b\"]", false),                              // SUBSCRIBE before WELCOME
        ("[1, \"realm1\", {\"roles\": {\"subscriber\": {}}}]", true), // second HELLO
        ("[32, 9007199254740993, {}, \"a.b\"]", true),                // request id above 2^53
        ("[32, 1, {}]", true),                                        // SUBSCRIBE missing topic
        ("[16, 1, [], \"a.b\"]", true),                               // options not a dict
        ("[36, 1, 2, {}]", true),                                     // EVENT sent by a client
        ("[8, 32, 1, {}, \"x.y\"]", true),                            // ERROR for a SUBSCRIBE, from a client
        ("[1, \"realm1\", {\"x\": NaN}]", false),                     // NaN is not JSON
    ];
    for (fixture, join) in json_cases {
        expect_aborted(&gw, JSON, *join, text(fixture), err::PROTOCOL_VIOLATION, close::PROTOCOL_ERROR).await;
    }
    // Deep nesting: a clean error, not a stack overflow.
    let deep = format!("[16, 1, {{}}, \"a.b\", {}{}]", "[".repeat(5000), "]".repeat(5000));
    expect_aborted(&gw, JSON, true, text(&deep), err::PROTOCOL_VIOLATION, close::PROTOCOL_ERROR).await;

    let msgpack_cases: &[(&[u8], bool)] = &[
        (&[0xc1], false),                                                                   // never-used msgpack byte
        (&[0x93, 0x01], false),                                                             // truncated array
        (&[0xdd, 0xff, 0xff, 0xff, 0xff], false),                                           // array claiming 4 billion items
        (&[0xdb, 0xff, 0xff, 0xff, 0xff, 0x61], false),                                     // string claiming 4 GiB
        (&[0x93, 0x01, 0xa1, 0xff, 0x80], false),                                           // realm is invalid UTF-8 (read as binary: not a string)
        (&[0x92, 0x01, 0x80, 0x00], false),                                                 // trailing byte after the message
        (&[0x93, 0x01, 0xa6, b'r', b'e', b'a', b'l', b'm', b'1', 0x81, 0x01, 0x02], false), // dict key not a string
    ];
    for (fixture, join) in msgpack_cases {
        expect_aborted(&gw, MSGPACK, *join, bin(fixture), err::PROTOCOL_VIOLATION, close::PROTOCOL_ERROR).await;
    }

    // The bystander still gets events.
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "com.bystander", "args": [1]})).await;
    assert_eq!(status, 200);
    let (_, args, _) = bystander.event().await;
    assert_eq!(args, vec![Value::UInt(1)]);

    let malformed = gw.metric("telegraphy_protocol_violations_total{kind=\"malformed\"}").await;
    let invalid = gw.metric("telegraphy_protocol_violations_total{kind=\"invalid_message\"}").await;
    let state = gw.metric("telegraphy_protocol_violations_total{kind=\"wrong_state\"}").await;
    assert_eq!(malformed, 3.0 + 1.0 + 6.0, "JSON syntax cases + deep nesting + msgpack syntax cases");
    assert_eq!(invalid, 10.0 + 1.0, "JSON message-level cases + msgpack realm that is not a string");
    assert_eq!(state, 4.0, "SUBSCRIBE before WELCOME, second HELLO, client EVENT, client ERROR");
}

#[tokio::test]
async fn wrong_frame_types_close_with_1003() {
    let gw = TestGateway::start().await;
    expect_aborted(&gw, JSON, true, bin(&[0x91, 0x01]), err::PROTOCOL_VIOLATION, close::UNSUPPORTED_DATA).await;
    expect_aborted(&gw, MSGPACK, true, text("[6, {}, \"wamp.close.close_realm\"]"), err::PROTOCOL_VIOLATION, close::UNSUPPORTED_DATA).await;
    assert_eq!(gw.metric("telegraphy_protocol_violations_total{kind=\"wrong_frame_type\"}").await, 2.0);
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let mut config = util::config();
    config.limits.max_message_size = 4096;
    config.limits.outbound_queue_bytes = 8192;
    let gw = TestGateway::start_with(config).await;
    let big = format!("[16, 1, {{}}, \"a.b\", [\"{}\"]]", "x".repeat(5000));
    expect_aborted(&gw, JSON, true, text(&big), err::MESSAGE_TOO_BIG, close::MESSAGE_TOO_BIG).await;
    assert_eq!(gw.metric("telegraphy_protocol_violations_total{kind=\"too_big\"}").await, 1.0);
    // Just under the limit is fine.
    let mut c = Client::join(&gw, JSON).await;
    let ok = format!("[16, 1, {{\"acknowledge\": true}}, \"a.b\", [\"{}\"]]", "x".repeat(3000));
    c.send_raw(text(&ok)).await;
    assert!(matches!(c.recv().await, Message::Published { request: 1, .. }));
}

#[tokio::test]
async fn unknown_realm_is_refused() {
    let gw = TestGateway::start().await;
    let mut c = Client::open(&gw, JSON).await;
    c.send(&util::hello("no.such.realm")).await;
    let (reason, code) = c.expect_abort().await;
    assert_eq!(reason, err::NO_SUCH_REALM);
    assert_eq!(code, Some(close::NORMAL));
}

#[tokio::test]
async fn hello_must_arrive_in_time() {
    let mut config = util::config();
    config.limits.handshake_timeout = Duration::from_millis(200);
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::open(&gw, JSON).await;
    let (reason, code) = c.expect_abort().await;
    assert_eq!(reason, err::HELLO_TIMEOUT);
    assert_eq!(code, Some(close::HELLO_TIMEOUT));
    assert_eq!(gw.metric("telegraphy_protocol_violations_total{kind=\"hello_timeout\"}").await, 1.0);
}

#[tokio::test]
async fn request_errors_keep_the_session() {
    let mut config = util::config();
    config.limits.max_subscriptions_per_session = 2;
    config.uri_rules = telegraphy_gateway::config::UriRulesSetting::Strict;
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join(&gw, JSON).await;
    let cases: &[(&str, &str)] = &[
        ("[32, 1, {}, \"com.my app\"]", err::INVALID_URI),
        ("[32, 2, {}, \"com..app\"]", err::INVALID_URI),
        ("[32, 3, {}, \"com.MyApp\"]", err::INVALID_URI), // strict rules
        ("[32, 4, {\"match\": \"regex\"}, \"com.app\"]", err::INVALID_ARGUMENT),
        ("[32, 5, {\"match\": 3}, \"com.app\"]", err::INVALID_ARGUMENT),
        ("[34, 6, 12345]", err::NO_SUCH_SUBSCRIPTION),
        ("[16, 7, {\"acknowledge\": true}, \"com..app\"]", err::INVALID_URI),
        ("[16, 8, {\"acknowledge\": true}, \"wamp.session.on_join\"]", err::NOT_AUTHORIZED),
        ("[16, 9, {\"acknowledge\": true, \"exclude\": [\"x\"]}, \"com.app\"]", err::INVALID_ARGUMENT),
        ("[16, 10, {\"acknowledge\": \"yes\"}, \"com.app\"]", err::INVALID_ARGUMENT),
        ("[48, 11, {}, \"com.proc\"]", err::NO_SUCH_PROCEDURE),
        ("[64, 12, {\"match\": \"fuzzy\"}, \"com.proc\"]", err::INVALID_ARGUMENT),
        ("[64, 14, {}, \"com..proc\"]", err::INVALID_URI),
        ("[64, 15, {}, \"wamp.session.count\"]", err::INVALID_URI),
        ("[64, 16, {\"invoke\": \"everyone\"}, \"com.proc\"]", err::INVALID_ARGUMENT),
        ("[66, 17, 12345]", err::NO_SUCH_REGISTRATION),
        ("[48, 18, {\"timeout\": \"soon\"}, \"com.proc\"]", err::INVALID_ARGUMENT),
        ("[48, 19, {}, \"wamp.session.count\"]", err::NOT_AUTHORIZED),
        ("[48, 20, {}, \"wamp.registration.list\"]", err::NO_SUCH_PROCEDURE),
        ("[49, 21, {\"mode\": \"explode\"}]", err::INVALID_ARGUMENT),
    ];
    for (fixture, expected) in cases {
        c.send_raw(text(fixture)).await;
        match c.recv().await {
            Message::Error { error, .. } => assert_eq!(&error, expected, "fixture {fixture}"),
            other => panic!("fixture {fixture}: expected ERROR, got {other:?}"),
        }
    }
    // A publish without acknowledge that fails is silent (per the spec)...
    c.send_raw(text("[16, 13, {}, \"com..app\"]")).await;
    // ...and the session is still fine: the subscription limit applies.
    let first = c.subscribe("com.a", "exact").await;
    c.subscribe("com.b", "exact").await;
    c.send_raw(text("[32, 20, {}, \"com.c\"]")).await;
    match c.recv().await {
        Message::Error { request, error, .. } => {
            assert_eq!(request, 20);
            assert_eq!(error, err::LIMIT_EXCEEDED);
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Re-subscribing to a held subscription returns the same id and does not count twice.
    let again = c.subscribe("com.a", "exact").await;
    assert_eq!(again, first);
}

#[tokio::test]
async fn handshake_without_wamp_subprotocol_is_refused() {
    let gw = TestGateway::start().await;
    let resp = reqwest::Client::new()
        .get(gw.ws_url().replace("ws://", "http://"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "mqtt, wamp.1.json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(body.contains("wamp.2.json") && body.contains("mqtt"), "{body}");
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"subprotocol\"}").await, 1.0);
}
