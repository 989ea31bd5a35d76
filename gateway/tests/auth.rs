//! Authentication and authorization over real sockets: good, expired,
//! forged, malformed and missing tokens for each key type; WAMP-CRA;
//! anonymous sessions; every rule shape including prefix and wildcard
//! subscriptions that overlap forbidden topics (on one node and across two
//! nodes on Redis); rate limits; token expiry; Origin; handshake limits;
//! TLS; slowloris; a SUBSCRIBE burst.

use telegraphy_testkit as util;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use telegraphy_gateway::config::{CraUser, RoleConfig};
use telegraphy_gateway::Config;
use telegraphy_gateway::Prepared;
use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::{dict, Dict, Message, Serialization, Value};
use util::{Client, TestGateway};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;
const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/keys").join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, role: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({"sub": sub, "role": role, "exp": exp})
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn rs256(claims: &serde_json::Value, private: &str) -> String {
    let pem = std::fs::read(key_path(private)).unwrap();
    encode(&Header::new(Algorithm::RS256), claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn eddsa(claims: &serde_json::Value, private: &str) -> String {
    let pem = std::fs::read(key_path(private)).unwrap();
    encode(&Header::new(Algorithm::EdDSA), claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

fn role(subscribe: &[&str], publish: &[&str]) -> RoleConfig {
    RoleConfig {
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A gateway that takes HS256 tokens and no anonymous sessions.
fn secured() -> Config {
    let mut c = util::config();
    c.auth.allow_anonymous = false;
    c.roles.clear();
    c.auth.jwt_secret = Some(SECRET.into());
    c.roles.insert("user".into(), role(&["*"], &[]));
    c.roles.insert("staff".into(), role(&["*"], &["*"]));
    c
}

async fn refused(gw: &TestGateway, ticket: &str) -> (String, String, Option<u16>) {
    match Client::join_ticket(gw, JSON, ticket).await {
        Ok(_) => panic!("the ticket was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn hs256_tickets_good_expired_forged_malformed() {
    let gw = TestGateway::start_with(secured()).await;
    let good = hs256(&claims("alice", "staff", now() + 60), SECRET);
    let c = Client::join_ticket(&gw, MSGPACK, &good).await.expect("a good token joins");
    assert_eq!(c.details["authid"], Value::from("alice"));
    assert_eq!(c.details["authrole"], Value::from("staff"));
    assert_eq!(c.details["authmethod"], Value::from("ticket"));
    let Value::Dict(extra) = &c.details["authextra"] else { panic!("authextra") };
    assert!(extra["expires_at"].as_u64().unwrap() > now());

    let cases = [
        (hs256(&claims("alice", "staff", now() - 120), SECRET), err::AUTHENTICATION_FAILED, "expired"),
        (hs256(&claims("alice", "staff", now() + 60), "some-other-secret-that-is-long-enough-000"), err::AUTHENTICATION_FAILED, "signature"),
        ("not-a-jwt".to_string(), err::AUTHENTICATION_FAILED, "JWT"),
        (String::new(), err::AUTHENTICATION_FAILED, "JWT"),
        (hs256(&serde_json::json!({"sub": "alice"}), SECRET), err::AUTHENTICATION_FAILED, "exp"),
        (hs256(&claims("alice", "nosuchrole", now() + 60), SECRET), err::NOT_AUTHORIZED, "nosuchrole"),
        (hs256(&serde_json::json!({"sub": "a", "exp": now() + 60, "subscribe": ["a b"]}), SECRET), err::AUTHENTICATION_FAILED, "subscribe"),
        // A token signed with "none" or RS256 is not accepted for an HS256 key.
        (rs256(&claims("alice", "staff", now() + 60), "rsa_private.pem"), err::AUTHENTICATION_FAILED, "algorithm"),
    ];
    for (ticket, uri, hint) in cases {
        let (reason, message, code) = refused(&gw, &ticket).await;
        assert_eq!(reason, uri, "{message}");
        assert!(message.contains(hint), "`{message}` should mention {hint}");
        assert_eq!(code, Some(close::AUTH_FAILED));
        assert!(!message.contains(&ticket) || ticket.is_empty() || ticket == "not-a-jwt", "the token is never echoed");
    }
    for reason in ["expired", "bad_signature", "malformed", "unknown_role", "wrong_algorithm"] {
        assert!(gw.metric(&format!("telegraphy_auth_failures_total{{reason=\"{reason}\"}}")).await >= 1.0, "{reason} counted");
    }
    // No credentials at all: anonymous is off.
    let mut c = Client::open(&gw, JSON).await;
    c.send(&util::hello("realm1")).await;
    let (reason, code) = c.expect_abort().await;
    assert_eq!((reason.as_str(), code), (err::NO_AUTH_METHOD, Some(close::AUTH_FAILED)));
}

#[test]
fn private_keys_and_bad_files_are_refused_at_startup() {
    let mut config = secured();
    config.auth.jwt_secret = None;
    config.auth.jwt_public_key_file = Some(key_path("rsa_private.pem"));
    let err = Prepared::new(config.clone()).err().expect("a private key is refused").to_string();
    assert!(err.contains("PRIVATE"), "{err}");
    config.auth.jwt_public_key_file = Some(key_path("README.md"));
    assert!(Prepared::new(config).err().expect("not a key").to_string().contains("not a PEM"));
    let mut config = util::config();
    config.tls.cert_file = Some(key_path("README.md"));
    config.tls.key_file = Some(key_path("tls_key.pem"));
    assert!(Prepared::new(config).is_err(), "a bad certificate stops the gateway before it listens");
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let mut config = secured();
    config.auth.jwt_audience = Some("telegraphy".into());
    config.auth.jwt_issuer = Some("https://shop.example".into());
    let gw = TestGateway::start_with(config).await;
    let mut good = claims("bob", "user", now() + 60);
    good["aud"] = "telegraphy".into();
    good["iss"] = "https://shop.example".into();
    assert!(Client::join_ticket(&gw, JSON, &hs256(&good, SECRET)).await.is_ok());
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "another-service".into();
    assert!(refused(&gw, &hs256(&wrong_aud, SECRET)).await.1.contains("audience"));
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(refused(&gw, &hs256(&no_aud, SECRET)).await.0, err::AUTHENTICATION_FAILED);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = "https://evil.example".into();
    assert!(refused(&gw, &hs256(&wrong_iss, SECRET)).await.1.contains("issuer"));
}

#[tokio::test]
async fn rs256_and_eddsa_public_keys() {
    for (public, sign, good_key, forged_key) in [
        ("rsa_public.pem", rs256 as fn(&serde_json::Value, &str) -> String, "rsa_private.pem", "attacker_rsa_private.pem"),
        ("ed25519_public.pem", eddsa, "ed25519_private.pem", "attacker_ed25519_private.pem"),
    ] {
        let mut config = secured();
        config.auth.jwt_secret = None;
        config.auth.jwt_public_key_file = Some(key_path(public));
        let gw = TestGateway::start_with(config).await;
        let c = Client::join_ticket(&gw, JSON, &sign(&claims("carol", "user", now() + 60), good_key)).await;
        assert_eq!(c.expect("a token signed with the trusted key joins").authid(), "carol", "{public}");
        let (reason, message, _) = refused(&gw, &sign(&claims("carol", "user", now() + 60), forged_key)).await;
        assert_eq!(reason, err::AUTHENTICATION_FAILED, "{public}");
        assert!(message.contains("signature"), "{message}");
        let (_, message, _) = refused(&gw, &sign(&claims("carol", "user", now() - 100), good_key)).await;
        assert!(message.contains("expired"), "{message}");
        // An HS256 token "signed" with the public key (algorithm confusion) is refused.
        let pem = std::fs::read_to_string(key_path(public)).unwrap();
        let (reason, _, _) = refused(&gw, &hs256(&claims("carol", "user", now() + 60), &pem)).await;
        assert_eq!(reason, err::AUTHENTICATION_FAILED);
    }
}

#[tokio::test]
async fn wamp_cra_for_services() {
    let mut config = secured();
    config.auth.cra.push(CraUser { authid: "backend".into(), secret: "cra-secret-0123456789".into(), role: "staff".into() });
    let gw = TestGateway::start_with(config).await;
    // Unknown authids are challenged too: the handshake does not reveal who exists.
    for (authid, secret, ok) in
        [("backend", "cra-secret-0123456789", true), ("backend", "wrong-secret-000000000", false), ("nobody", "cra-secret-0123456789", false)]
    {
        let mut c = Client::open(&gw, JSON).await;
        c.send(&util::hello_with("realm1", &["wampcra"], Some(authid))).await;
        let challenge = match c.recv().await {
            Message::Challenge { authmethod, extra } => {
                assert_eq!(authmethod, "wampcra");
                extra["challenge"].as_str().unwrap().to_string()
            }
            other => panic!("expected CHALLENGE, got {other:?}"),
        };
        let signature = telegraphy_gateway::harness::cra_sign(secret, &challenge);
        c.send(&Message::Authenticate { signature, extra: Dict::new() }).await;
        match c.finish_join().await {
            Ok(c) => {
                assert!(ok);
                assert_eq!(c.details["authrole"], Value::from("staff"));
                assert_eq!(c.details["authmethod"], Value::from("wampcra"));
            }
            Err((reason, _, code)) => {
                assert!(!ok);
                assert_eq!((reason.as_str(), code), (err::AUTHENTICATION_FAILED, Some(close::AUTH_FAILED)));
            }
        }
    }
}

#[tokio::test]
async fn anonymous_only_when_configured_with_its_own_role() {
    let mut config = secured();
    config.auth.allow_anonymous = true;
    config.roles.insert("anonymous".into(), role(&["public.*"], &[]));
    let gw = TestGateway::start_with(config).await;
    let mut a = Client::join(&gw, JSON).await;
    assert_eq!(a.details["authrole"], Value::from("anonymous"));
    a.subscribe("public.news", "exact").await;
    a.send(&Message::Subscribe { request: 50, options: Dict::new(), topic: "private.x".into() }).await;
    match a.recv().await {
        Message::Error { error, request: 50, .. } => assert_eq!(error, err::NOT_AUTHORIZED),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Publishing is not in the anonymous role.
    a.send(&Message::Publish { request: 51, options: dict! {"acknowledge" => true}, topic: "public.news".into(), args: vec![], kwargs: Dict::new() })
        .await;
    match a.recv().await {
        Message::Error { error, request: 51, .. } => assert_eq!(error, err::NOT_AUTHORIZED),
        other => panic!("expected ERROR, got {other:?}"),
    }
    assert_eq!(gw.metric("telegraphy_authorization_denied_total{action=\"subscribe\"}").await, 1.0);
    assert_eq!(gw.metric("telegraphy_authorization_denied_total{action=\"publish\"}").await, 1.0);
}

/// Publishes over HTTP `topics` then a marker, and returns what `c` got before the marker.
async fn received_before_marker(gw: &TestGateway, c: &mut Client, topics: &[&str], marker: &str) -> Vec<String> {
    for t in topics {
        assert_eq!(gw.publish_http(serde_json::json!({"topic": t, "args": [t]})).await.0, 200);
    }
    assert_eq!(gw.publish_http(serde_json::json!({"topic": marker, "args": ["marker"]})).await.0, 200);
    let mut got = Vec::new();
    loop {
        let (_, args, _) = c.event().await;
        match args[0].as_str().unwrap() {
            "marker" => return got,
            t => got.push(t.to_string()),
        }
    }
}

/// Every rule shape: exact, prefix and wildcard role patterns, and
/// subscriptions that overlap allowed and forbidden topics.
async fn rule_shapes(gateways: &[TestGateway]) {
    let (sub_node, pub_node) = (&gateways[0], &gateways[gateways.len() - 1]);
    let token = hs256(&claims("dave", "reader", now() + 60), SECRET);
    let mut c = Client::join_ticket(sub_node, JSON, &token).await.unwrap();
    let deny = |c: &mut Client, topic: &'static str, policy: &'static str| {
        let request = c.request_id();
        let options = dict! {"match" => policy};
        (request, Message::Subscribe { request, options, topic: topic.into() })
    };
    for (topic, policy) in [("shop.admin.audit", "exact"), ("shop.admin", "prefix"), ("other..x", "wildcard"), ("shop.orders.7", "exact")] {
        let (request, msg) = deny(&mut c, topic, policy);
        c.send(&msg).await;
        match c.recv().await {
            Message::Error { error, request: r, .. } if r == request => assert_eq!(error, err::NOT_AUTHORIZED, "{topic} {policy}"),
            other => panic!("{topic} {policy}: expected ERROR, got {other:?}"),
        }
    }
    // Allowed: exact, inside the prefix, on the wildcard.
    c.subscribe("shop.news", "exact").await;
    // Overlapping: the prefix `shop` covers shop.public.* (allowed), shop.status.*
    // via the wildcard rule, and shop.admin.* (forbidden): only allowed topics arrive.
    c.subscribe("shop", "prefix").await;
    c.subscribe("shop..x", "wildcard").await;
    let got = received_before_marker(
        pub_node,
        &mut c,
        &["shop.admin.audit", "shop.public.sale", "shop.secret", "shop.status.ok", "shop.admin.x"],
        "shop.news",
    )
    .await;
    // shop.public.sale via the prefix; shop.status.ok via prefix (role wildcard `shop.status.*`);
    // shop.admin.x via neither (forbidden) — the wildcard subscription matches it, but
    // the per-event check drops it.
    assert_eq!(got, vec!["shop.public.sale", "shop.status.ok"], "forbidden topics never arrive");
    // The marker itself came on the exact subscription; the prefix one sends it too.
    assert_eq!(c.event().await.1, vec![Value::from("marker")]);
}

fn reader_config(mut config: Config) -> Config {
    config.roles.insert("reader".into(), role(&["shop.news", "shop.public.*", "shop.status*"], &[]));
    config
}

#[tokio::test]
async fn rule_shapes_on_one_node() {
    let gw = TestGateway::start_with(reader_config(secured())).await;
    rule_shapes(std::slice::from_ref(&gw)).await;
}

#[tokio::test]
async fn rule_shapes_across_two_nodes_on_redis() {
    let mut config = reader_config(secured());
    config.bus = std::env::var("TELEGRAPHY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    config.redis.key_prefix = util::unique("authtest") + ":";
    let nodes = [TestGateway::start_ready(config.clone()).await, TestGateway::start_ready(config).await];
    rule_shapes(&nodes).await;
}

#[tokio::test]
async fn token_claims_narrow_the_role_and_publish_rights() {
    let mut config = secured();
    config.roles.insert(
        "customer".into(),
        RoleConfig { subscribe: vec!["*".into()], publish: vec!["chat.*".into()], publish_rate: 0.0, ..Default::default() },
    );
    let gw = TestGateway::start_with(config).await;
    let mut t = claims("erin", "customer", now() + 60);
    t["subscribe"] = serde_json::json!(["orders.erin.*"]);
    t["publish"] = serde_json::json!(["chat.room1"]);
    let mut c = Client::join_ticket(&gw, JSON, &hs256(&t, SECRET)).await.unwrap();
    c.subscribe("orders.erin.1", "exact").await;
    c.send(&Message::Subscribe { request: 90, options: Dict::new(), topic: "orders.frank.1".into() }).await;
    assert!(matches!(c.recv().await, Message::Error { request: 90, ref error, .. } if error == err::NOT_AUTHORIZED));
    c.subscribe("orders", "prefix").await;
    let got = received_before_marker(&gw, &mut c, &["orders.frank.1", "orders.erin.2"], "orders.erin.1").await;
    assert_eq!(got, vec!["orders.erin.2"]);
    // The marker matched both subscriptions.
    assert_eq!(c.event().await.1, vec![Value::from("marker")]);
    // Publish: the token allows chat.room1 only, the role chat.*.
    c.publish("chat.room1", vec![], Dict::new()).await;
    c.send(&Message::Publish { request: 91, options: dict! {"acknowledge" => true}, topic: "chat.room2".into(), args: vec![], kwargs: Dict::new() })
        .await;
    loop {
        match c.recv().await {
            Message::Error { request: 91, error, .. } => {
                assert_eq!(error, err::NOT_AUTHORIZED);
                break;
            }
            Message::Event { .. } => continue,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    // Black/white-list options need publish_options in the role.
    let mut opts = Dict::new();
    opts.insert("acknowledge".into(), Value::Bool(true));
    opts.insert("eligible".into(), Value::List(vec![Value::UInt(1)]));
    c.send(&Message::Publish { request: 92, options: opts, topic: "chat.room1".into(), args: vec![], kwargs: Dict::new() }).await;
    loop {
        match c.recv().await {
            Message::Error { request: 92, error, .. } => {
                assert_eq!(error, err::NOT_AUTHORIZED);
                break;
            }
            Message::Event { .. } => continue,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn publish_rate_limit_per_role() {
    let mut config = secured();
    config.roles.insert(
        "chatty".into(),
        RoleConfig { subscribe: vec!["*".into()], publish: vec!["*".into()], publish_rate: 1.0, publish_burst: 3, ..Default::default() },
    );
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join_ticket(&gw, JSON, &hs256(&claims("f", "chatty", now() + 60), SECRET)).await.unwrap();
    let mut accepted = 0;
    let mut limited = 0;
    for request in 1..=10 {
        c.send(&Message::Publish { request, options: dict! {"acknowledge" => true}, topic: "t.x".into(), args: vec![], kwargs: Dict::new() }).await;
        match c.recv().await {
            Message::Published { .. } => accepted += 1,
            Message::Error { error, .. } => {
                assert_eq!(error, err::RATE_LIMITED);
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A burst of 3, then about one per second (the loop takes far less than a second).
    assert!((3..=4).contains(&accepted), "accepted {accepted}");
    assert_eq!(accepted + limited, 10);
    assert_eq!(gw.metric("telegraphy_rate_limited_total").await, limited as f64);
}

#[tokio::test]
async fn sessions_end_when_their_token_expires() {
    let mut config = secured();
    config.auth.jwt_leeway = Duration::ZERO;
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join_ticket(&gw, JSON, &hs256(&claims("g", "user", now() + 2), SECRET)).await.unwrap();
    c.subscribe("t.x", "exact").await;
    let goodbye = tokio::time::timeout(Duration::from_secs(6), c.recv()).await.expect("closed at expiry");
    match goodbye {
        Message::Goodbye { reason, .. } => assert_eq!(reason, err::TOKEN_EXPIRED),
        other => panic!("expected GOODBYE, got {other:?}"),
    }
    assert_eq!(c.closed().await.code, Some(close::TOKEN_EXPIRED));
}

async fn upgrade_with(gw: &TestGateway, origin: Option<&str>) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "wamp.2.json".parse().unwrap());
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn origin_allow_list() {
    let mut config = util::config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let gw = TestGateway::start_with(config).await;
    assert_eq!(upgrade_with(&gw, None).await, Ok(()), "non-browser clients send no Origin");
    assert_eq!(upgrade_with(&gw, Some("https://app.example.com")).await, Ok(()));
    assert_eq!(upgrade_with(&gw, Some("https://evil.example.com")).await, Err(403));
    assert_eq!(upgrade_with(&gw, Some("null")).await, Err(403));
    // DNS rebinding: a page from evil.example resolved to the gateway's
    // address sends Origin and Host alike; matching one against the other
    // (the old same-host rule) let it in. The Host header is not trusted.
    assert_eq!(upgrade_with(&gw, Some(&format!("http://{}", gw.addr))).await, Err(403), "Host is not trusted");
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"origin\"}").await, 3.0);

    // The gateway's configured public host is its own origin.
    let mut config = util::config();
    config.allowed_origins = vec!["https://app.example.com".into()];
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.listen = probe.local_addr().unwrap();
    drop(probe);
    config.public_hosts = vec![config.listen.to_string()];
    let gw = TestGateway::start_with(config).await;
    assert_eq!(upgrade_with(&gw, Some(&format!("http://{}", gw.addr))).await, Ok(()), "a page from a public host");
    assert_eq!(upgrade_with(&gw, Some("http://127.0.0.1:1")).await, Err(403), "another port is another origin");
}

#[test]
fn origins_match_configured_hosts_only() {
    use axum::http::HeaderValue;
    use telegraphy_gateway::harness::origin_allowed;
    let o = |s: &'static str| HeaderValue::from_static(s);
    let hosts = vec!["gw.example.com".to_string(), "app.example.com:8443".to_string()];
    assert!(origin_allowed(&[], &hosts, false, &o("https://gw.example.com")));
    assert!(origin_allowed(&[], &hosts, false, &o("https://app.example.com:8443")));
    assert!(!origin_allowed(&[], &hosts, false, &o("https://app.example.com:9999")));
    assert!(!origin_allowed(&[], &hosts, false, &o("https://evil.example.com")));
    assert!(!origin_allowed(&[], &hosts, false, &o("https://gw.example.com.evil.com")));
    // Dev mode (loopback only) serves its demo page from a loopback host.
    assert!(origin_allowed(&[], &[], true, &o("http://127.0.0.1:8080")));
    assert!(origin_allowed(&[], &[], true, &o("http://localhost:8080")));
    assert!(!origin_allowed(&[], &[], false, &o("http://127.0.0.1:8080")));
    assert!(!origin_allowed(&[], &[], true, &o("http://rebind.example.com:8080")));
    assert!(origin_allowed(&["*".into()], &[], false, &o("https://anything.example")));
}

#[tokio::test]
async fn pending_handshakes_and_per_ip_limits() {
    let mut config = util::config();
    config.limits.max_pending_handshakes = 2;
    let gw = TestGateway::start_with(config).await;
    let a = Client::open(&gw, JSON).await;
    let mut b = Client::open(&gw, JSON).await;
    assert_eq!(upgrade_with(&gw, None).await, Err(503), "two handshakes pending already");
    // Once one is established, there is room again.
    b.send(&util::hello("realm1")).await;
    assert!(matches!(b.recv().await, Message::Welcome { .. }));
    let _c = Client::open(&gw, JSON).await;
    drop(a);

    let mut config = util::config();
    config.limits.max_connections_per_ip = 2;
    let gw = TestGateway::start_with(config).await;
    let _x = Client::join(&gw, JSON).await;
    let y = Client::join(&gw, JSON).await;
    assert_eq!(upgrade_with(&gw, None).await, Err(429));
    drop(y);
    util::eventually("slot freed", Duration::from_secs(5), || async { upgrade_with(&gw, None).await.is_ok() }).await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = util::config();
    config.limits.http_header_timeout = Duration::from_millis(500);
    let gw = TestGateway::start_with(config).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Keep trickling a header byte; the server must still give up.
            if s.write_all(b"X").await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return, // a 408 answer, then close
                Err(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server still waits for headers after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn a_burst_of_ten_thousand_subscribes_is_bounded() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    let gw = TestGateway::start().await;
    let mut c = Client::join(&gw, JSON).await;
    for request in 1..=10_000u64 {
        let frame = format!("[32,{request},{{}},\"burst.t{request}\"]");
        if c.ws.feed(Ws::Text(frame.into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    // Either the session keeps up (1000 SUBSCRIBED, then limit errors) or it is
    // closed as a slow consumer; both are bounded outcomes. The node stays up.
    let mut subscribed = 0;
    let mut limited = 0;
    loop {
        match c.next().await {
            Ok(Message::Subscribed { .. }) => subscribed += 1,
            Ok(Message::Error { error, .. }) => {
                assert_eq!(error, err::LIMIT_EXCEEDED);
                limited += 1;
                if subscribed + limited == 10_000 {
                    break;
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(closed) => {
                assert_eq!(closed.code, Some(close::SLOW_CONSUMER), "{closed:?}");
                break;
            }
        }
    }
    assert!(subscribed <= 1000, "the per-session limit holds: {subscribed}");
    assert!(gw.metric("telegraphy_subscriptions").await <= 1000.0);
    let mut other = Client::join(&gw, JSON).await;
    other.subscribe("still.alive", "exact").await;
}

#[tokio::test]
async fn tls_on_the_public_listener() {
    use tokio_rustls::rustls;
    let mut config = util::config();
    config.tls.cert_file = Some(key_path("tls_cert.pem"));
    config.tls.key_file = Some(key_path("tls_key.pem"));
    let gw = TestGateway::start_with(config).await;
    let mut roots = rustls::RootCertStore::empty();
    let cert = std::fs::read(key_path("ca.pem")).unwrap();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&cert) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let stream = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost:{}/ws", gw.addr.port()).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "wamp.2.json".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.expect("WebSocket over TLS");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text(r#"[1,"realm1",{"roles":{"subscriber":{}}}]"#.into())).await.unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().starts_with("[2,"), "{welcome:?}");
    // Over TLS the connection's task encrypts and writes every frame: an
    // event reaches its subscriber, replies and events in order.
    ws.send(tokio_tungstenite::tungstenite::Message::Text(r#"[32,1,{},"tls.topic"]"#.into())).await.unwrap();
    let subscribed = tokio::time::timeout(util::WAIT, ws.next()).await.expect("SUBSCRIBED over TLS").unwrap().unwrap();
    assert!(subscribed.to_text().unwrap().starts_with("[33,1,"), "{subscribed:?}");
    for i in 0..3 {
        let publish = format!(r#"[16,{},{{"exclude_me":false}},"tls.topic",["over tls {i}"]]"#, i + 2);
        ws.send(tokio_tungstenite::tungstenite::Message::Text(publish.into())).await.unwrap();
    }
    for i in 0..3 {
        let event = tokio::time::timeout(util::WAIT, ws.next()).await.expect("EVENT over TLS").unwrap().unwrap();
        let text = event.to_text().unwrap();
        assert!(text.starts_with("[36,") && text.ends_with(&format!(r#"["over tls {i}"]]"#)), "{text}");
    }
    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::get(format!("http://{}/healthz", gw.addr)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// Security review, finding 2: WAMP-CRA told which authids exist (an empty
/// `authrole` in an unknown authid's challenge) and their roles, and its
/// error messages differed. Now a known and an unknown authid see the same
/// challenge shape with a plausible role and the same errors.
#[tokio::test]
async fn cra_answers_known_and_unknown_authids_alike() {
    let mut config = secured();
    config.auth.cra.push(CraUser { authid: "backend".into(), secret: "cra-secret-0123456789".into(), role: "staff".into() });
    let gw = TestGateway::start_with(config).await;
    let challenge_for = |authid: &'static str| {
        let gw = &gw;
        async move {
            let mut c = Client::open(gw, JSON).await;
            c.send(&util::hello_with("realm1", &["wampcra"], Some(authid))).await;
            let Message::Challenge { extra, .. } = c.recv().await else { panic!("expected CHALLENGE") };
            let challenge: serde_json::Value = serde_json::from_str(extra["challenge"].as_str().unwrap()).unwrap();
            (c, challenge)
        }
    };
    let (_, known) = challenge_for("backend").await;
    let (_, unknown) = challenge_for("nobody").await;
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&known), keys(&unknown), "same shape");
    assert_eq!(known["authrole"], "staff");
    assert_eq!(unknown["authrole"], "staff", "an unknown authid gets a configured role, not an empty one");
    // Nonces: 128 bits, never repeated.
    let (_, again) = challenge_for("nobody").await;
    assert_eq!(known["nonce"].as_str().unwrap().len(), 32);
    assert_ne!(again["nonce"], unknown["nonce"]);
    assert_eq!(again["authrole"], unknown["authrole"], "the same role every time");
    // Every failure reads the same: wrong secret, unknown authid, not base64.
    let mut messages = Vec::new();
    for (authid, signature) in
        [("backend", Some("wrong-secret-000000000")), ("nobody", Some("cra-secret-0123456789")), ("backend", None), ("nobody", None)]
    {
        let (mut c, challenge) = challenge_for(authid).await;
        let signature = match signature {
            Some(secret) => telegraphy_gateway::harness::cra_sign(secret, &challenge.to_string()),
            None => "not base64 !".to_string(),
        };
        c.send(&Message::Authenticate { signature, extra: Dict::new() }).await;
        let (reason, message, code) = c.finish_join().await.err().expect("refused");
        assert_eq!((reason.as_str(), code), (err::AUTHENTICATION_FAILED, Some(close::AUTH_FAILED)));
        messages.push(message);
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
}

/// Finding 3: sessions outlived their token by the JWT leeway, and a token
/// expired within the leeway was accepted. Now `exp` is exact.
#[tokio::test]
async fn sessions_end_at_exp_and_expired_tokens_get_no_welcome() {
    let gw = TestGateway::start_with(secured()).await; // default leeway: 30 s
    let (reason, message, _) = refused(&gw, &hs256(&claims("late", "user", now() - 10), SECRET)).await;
    assert_eq!(reason, err::AUTHENTICATION_FAILED);
    assert!(message.contains("expired"), "{message}");
    let mut c = Client::join_ticket(&gw, JSON, &hs256(&claims("g", "user", now() + 4), SECRET)).await.unwrap();
    // Closed at exp, not exp + 30 s.
    let goodbye = tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("closed at exp, not 30 s later");
    assert!(matches!(goodbye, Message::Goodbye { ref reason, .. } if reason == err::TOKEN_EXPIRED), "{goodbye:?}");
}

/// Finding 4: one ticket joined every realm. A `realm` claim binds it, and
/// `auth.require_realm_claim` makes the claim mandatory.
#[tokio::test]
async fn tokens_are_bound_to_their_realms() {
    let mut config = secured();
    config.realms = vec!["realm1".into(), "realm2".into()];
    let gw = TestGateway::start_with(config.clone()).await;
    let token = |realm: serde_json::Value| {
        let mut c = claims("t", "user", now() + 60);
        if !realm.is_null() {
            c["realm"] = realm;
        }
        hs256(&c, SECRET)
    };
    let join = |realm: &'static str, ticket: String| {
        let gw = &gw;
        async move {
            let mut c = Client::open(gw, JSON).await;
            c.send(&util::hello_with(realm, &["ticket"], None)).await;
            let _challenge = c.recv().await;
            c.send(&Message::Authenticate { signature: ticket, extra: Dict::new() }).await;
            c.finish_join().await.map(|_| ()).map_err(|(reason, message, _)| (reason, message))
        }
    };
    assert!(join("realm1", token(serde_json::json!("realm1"))).await.is_ok());
    let (reason, message) = join("realm2", token(serde_json::json!("realm1"))).await.unwrap_err();
    assert_eq!(reason, err::AUTHENTICATION_FAILED);
    assert!(message.contains("realm2"), "{message}");
    assert!(join("realm2", token(serde_json::json!(["realm1", "realm2"]))).await.is_ok());
    assert!(join("realm2", token(serde_json::Value::Null)).await.is_ok(), "no claim, not required: any realm");
    assert_eq!(gw.metric("telegraphy_auth_failures_total{reason=\"wrong_realm\"}").await, 1.0);

    config.auth.require_realm_claim = true;
    let gw = TestGateway::start_with(config).await;
    let (_, message, _) = refused(&gw, &token(serde_json::Value::Null)).await;
    assert!(message.contains("`realm`"), "{message}");
    assert_eq!(gw.metric("telegraphy_auth_failures_total{reason=\"missing_claims\"}").await, 1.0);
}

/// Finding 5: a signed `exp` of 2^63 or more panicked the connection task
/// (no ABORT, and the connection gauge leaked one for good).
#[tokio::test]
async fn an_exp_beyond_any_clock_does_not_panic() {
    let gw = TestGateway::start_with(secured()).await;
    let mut alive = Vec::new();
    for exp in [1u64 << 63, u64::MAX, 1 << 62] {
        let c = Client::join_ticket(&gw, JSON, &hs256(&claims("far", "user", exp), SECRET)).await;
        let mut c = c.unwrap_or_else(|e| panic!("exp {exp}: {e:?}"));
        c.subscribe("t.far", "exact").await;
        alive.push(c);
    }
    util::eventually("gauge back", Duration::from_secs(5), || async { gw.metric("telegraphy_connections").await == 3.0 }).await;
}

/// Finding 5: `alg: none` and missing `sub`/`exp` were counted as
/// `malformed`, so the alerts on `wrong_algorithm` and `missing_claims` missed them.
#[tokio::test]
async fn auth_failure_reasons_are_the_documented_ones() {
    use base64::Engine as _;
    let gw = TestGateway::start_with(secured()).await;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!("{}.{}.", b64(serde_json::json!({"alg": "none", "typ": "JWT"})), b64(claims("mallory", "staff", now() + 60)));
    let cases = [
        (none, "wrong_algorithm"),
        (hs256(&serde_json::json!({"exp": now() + 60}), SECRET), "missing_claims"),
        (hs256(&serde_json::json!({"sub": "a"}), SECRET), "missing_claims"),
    ];
    for (ticket, reason) in cases {
        let before = gw.metric(&format!("telegraphy_auth_failures_total{{reason=\"{reason}\"}}")).await;
        let (uri, _, _) = refused(&gw, &ticket).await;
        assert_eq!(uri, err::AUTHENTICATION_FAILED);
        assert_eq!(gw.metric(&format!("telegraphy_auth_failures_total{{reason=\"{reason}\"}}")).await, before + 1.0, "{reason}");
    }
    assert_eq!(gw.metric("telegraphy_auth_failures_total{reason=\"malformed\"}").await, 0.0);
}

/// Finding 5: subscription ids were handed out in sequence and shared, so
/// a session could tell which topics others held (subscribe, unsubscribe,
/// subscribe again: a held topic kept its id, a free one got a new one).
#[tokio::test]
async fn subscription_ids_do_not_reveal_other_sessions_topics() {
    let gw = TestGateway::start().await;
    let mut other = Client::join(&gw, JSON).await;
    other.subscribe("secret.held", "exact").await;
    let mut probe = Client::join(&gw, JSON).await;
    for topic in ["secret.held", "secret.free"] {
        let first = probe.subscribe(topic, "exact").await;
        probe.unsubscribe(first).await;
        let second = probe.subscribe(topic, "exact").await;
        assert_eq!(first, second, "{topic}: the same id whether or not another session holds it");
        probe.unsubscribe(second).await;
    }
    let held = probe.subscribe("secret.held", "exact").await;
    let free = probe.subscribe("secret.free", "exact").await;
    assert!(held.abs_diff(free) > 1_000_000, "ids are not sequential: {held} {free}");
}

/// Attacks the security review tried that failed, kept failing: header
/// tricks that name another key (`jwk`, `jku`, `kid`) are ignored (the
/// configured key verifies every token), and no client input grows the
/// metric label sets (topics, authids, reasons and origins are never labels).
#[tokio::test]
async fn review_attacks_that_failed_stay_failed() {
    let gw = TestGateway::start_with(secured()).await;
    let attacker_secret = "the-attackers-own-secret-0123456789abcdef";
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("../../../../dev/null".into());
    header.jku = Some("https://attacker.example/keys.json".into());
    header.jwk = Some(serde_json::from_value(serde_json::json!({"kty": "oct", "k": "dGhlLWF0dGFja2Vycy1vd24tc2VjcmV0"})).unwrap());
    let forged = encode(&header, &claims("mallory", "staff", now() + 60), &EncodingKey::from_secret(attacker_secret.as_bytes())).unwrap();
    let (reason, _, code) = refused(&gw, &forged).await;
    assert_eq!((reason.as_str(), code), (err::AUTHENTICATION_FAILED, Some(close::AUTH_FAILED)));
    assert_eq!(gw.metric("telegraphy_auth_failures_total{reason=\"bad_signature\"}").await, 1.0);

    let series = |text: String| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(gw.metrics().await);
    let good = hs256(&claims("alice", "staff", now() + 60), SECRET);
    let mut c = Client::join_ticket(&gw, JSON, &good).await.unwrap();
    for i in 0..50 {
        c.subscribe(&format!("topic.number{i}"), "exact").await;
        let _ = refused(&gw, &hs256(&claims(&format!("user{i}"), "staff", now() - 100), SECRET)).await;
        let _ = upgrade_with(&gw, Some(&format!("https://site{i}.example"))).await;
        let _ = gw.publish_http(serde_json::json!({"topic": format!("t{i}..bad")})).await;
    }
    assert_eq!(series(gw.metrics().await), before, "client input created metric series");
}

/// A token's `name` claim (a display name, for presence) is told back in
/// WELCOME's authextra: trimmed, cut to 100 bytes, left out when empty.
#[tokio::test]
async fn a_display_name_from_the_token() {
    let gw = TestGateway::start_with(secured()).await;
    let join = |name: serde_json::Value| {
        let mut t = claims("ann", "user", now() + 60);
        t["name"] = name;
        let gw = &gw;
        async move { Client::join_ticket(gw, JSON, &hs256(&t, SECRET)).await.expect("joins") }
    };
    let name_of = |c: &Client| match &c.details["authextra"] {
        Value::Dict(extra) => extra.get("name").cloned(),
        other => panic!("authextra: {other:?}"),
    };
    assert_eq!(name_of(&join(serde_json::json!("  Ann Smith ")).await), Some(Value::from("Ann Smith")));
    let long = "é".repeat(80); // 160 bytes
    let cut = name_of(&join(serde_json::json!(long)).await);
    assert_eq!(cut, Some(Value::from("é".repeat(50))), "cut at 100 bytes, on a character boundary");
    assert_eq!(name_of(&join(serde_json::json!("   ")).await), None);
}
