//! The HTTP callee (`[[rpc.http]]`) against a small web-app in this test
//! (axum): the signed request and what it carries, results, the web-app's
//! error URIs, HTTP errors, NDJSON progressive results, timeouts, CANCEL
//! aborting the request, an unreachable web-app, the concurrency limit,
//! rights. The Django side (a real Django server) is tested in
//! `python/tests/test_django_rpc.py`.

use telegraphy_testkit as util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use telegraphy_gateway::config::HttpCallee;
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{code, dict, Dict, Message, Serialization, Value};
use util::{Client, TestGateway};

const SECRET: &str = "an-rpc-secret-for-the-tests-0123456789";
const JSON: Serialization = Serialization::Json;

/// What the web-app saw.
#[derive(Default)]
struct Seen {
    bodies: Vec<serde_json::Value>,
    bad_signatures: usize,
    /// Set when a slow request's handler was dropped (the gateway went away).
    aborted: usize,
}

type Shared = Arc<Mutex<Seen>>;

struct DropGuard(Shared);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().aborted += 1;
    }
}

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("x-telegraphy-signature").and_then(|v| v.to_str().ok()) else { return false };
    let mut parts = header.split(',');
    let (Some(t), Some(v1)) = (parts.next().and_then(|p| p.strip_prefix("t=")), parts.next().and_then(|p| p.strip_prefix("v1="))) else {
        return false;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if t.parse::<u64>().map_or(true, |t| now.abs_diff(t) > 60) {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    hex == v1
}

async fn web_app(State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !verify(&headers, &body) {
        seen.lock().unwrap().bad_signatures += 1;
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    let call: serde_json::Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().bodies.push(call.clone());
    let json = |status: StatusCode, v: serde_json::Value| (status, [("content-type", "application/json")], v.to_string()).into_response();
    match call["procedure"].as_str().unwrap() {
        "web.add" => json(StatusCode::OK, serde_json::json!({"result": call["args"][0].as_i64().unwrap() + call["args"][1].as_i64().unwrap()})),
        "web.whoami" => json(
            StatusCode::OK,
            serde_json::json!({"args": [call["caller"]["authid"], call["caller"]["authrole"]], "kwargs": {"session": call["caller"]["session"]}}),
        ),
        "web.fail" => {
            json(StatusCode::CONFLICT, serde_json::json!({"error": "web.error.taken", "args": ["the name is taken"], "kwargs": {"name": "bob"}}))
        }
        "web.crash" => (StatusCode::INTERNAL_SERVER_ERROR, "Traceback (most recent call last): ...").into_response(),
        "web.garbage" => (StatusCode::OK, [("content-type", "application/json")], "{not json").into_response(),
        "web.stream" => {
            let lines = "{\"progress\": true, \"result\": 1}\n{\"progress\": true, \"args\": [2]}\n{\"result\": \"done\"}\n";
            (StatusCode::OK, [("content-type", "application/x-ndjson")], lines).into_response()
        }
        "web.slow" | "web.busy" => {
            let guard = DropGuard(seen.clone());
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(guard);
            json(StatusCode::OK, serde_json::json!({"result": "late"}))
        }
        other => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "wamp.error.no_such_procedure", "args": [format!("no {other}")]})),
    }
    .map(Body::from)
}

async fn start_web_app() -> (SocketAddr, Shared) {
    let seen: Shared = Default::default();
    let app = Router::new().route("/rpc", post(web_app)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn config(web: SocketAddr, unreachable: u16) -> telegraphy_gateway::Config {
    let mut config = util::config();
    config.rpc.secret = Some(SECRET.into());
    config.rpc.http = vec![
        HttpCallee { procedure: "web.busy".into(), url: format!("http://{web}/rpc"), max_concurrency: 1, ..HttpCallee::default() },
        HttpCallee { procedure: "web.*".into(), url: format!("http://{web}/rpc"), timeout: Duration::from_secs(5), ..HttpCallee::default() },
        HttpCallee { procedure: "down.*".into(), url: format!("http://127.0.0.1:{unreachable}/rpc"), ..HttpCallee::default() },
    ];
    config
}

async fn reply(c: &mut Client, request: u64) -> Message {
    match c.recv().await {
        m @ (Message::Result { request: r, .. } | Message::Error { request: r, .. }) if r == request => m,
        other => panic!("expected the answer to {request}, got {other:?}"),
    }
}

async fn error_of(c: &mut Client, request: u64) -> (String, Vec<Value>, Dict) {
    match reply(c, request).await {
        Message::Error { request_type: code::CALL, error, args, kwargs, .. } => (error, args, kwargs),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn results_errors_and_what_the_web_app_gets() {
    let (web, seen) = start_web_app().await;
    let gw = TestGateway::start_with(config(web, closed_port())).await;
    let mut c = Client::join_rpc(&gw, JSON).await;

    let request = c.call("web.add", vec![Value::UInt(2), Value::UInt(40)], Dict::new()).await;
    match reply(&mut c, request).await {
        Message::Result { args, .. } => assert_eq!(args, vec![Value::UInt(42)]),
        other => panic!("{other:?}"),
    }
    let body = seen.lock().unwrap().bodies.last().cloned().unwrap();
    assert_eq!(body["procedure"], "web.add");
    assert_eq!(body["realm"], "realm1");
    assert_eq!(body["args"], serde_json::json!([2, 40]));
    assert_eq!(body["caller"]["session"], c.session());
    assert_eq!(body["caller"]["authid"], c.authid());
    assert_eq!(body["caller"]["authrole"], "anonymous");

    let request = c.call("web.whoami", vec![], Dict::new()).await;
    match reply(&mut c, request).await {
        Message::Result { args, kwargs, .. } => {
            assert_eq!(args, vec![Value::Str(c.authid()), Value::Str("anonymous".into())]);
            assert_eq!(kwargs, dict! {"session" => c.session()});
        }
        other => panic!("{other:?}"),
    }

    // The web-app's error URI, args and kwargs, whatever the HTTP status.
    let request = c.call("web.fail", vec![], Dict::new()).await;
    let (error, args, kwargs) = error_of(&mut c, request).await;
    assert_eq!((error.as_str(), args, kwargs), ("web.error.taken", vec![Value::Str("the name is taken".into())], dict! {"name" => "bob"}));
    // An HTTP error without one, and an unreadable answer: callee_failed.
    for (procedure, says) in [("web.crash", "HTTP 500"), ("web.garbage", "not JSON")] {
        let request = c.call(procedure, vec![], Dict::new()).await;
        let (error, args, _) = error_of(&mut c, request).await;
        assert_eq!(error, err::CALLEE_FAILED, "{procedure}");
        assert!(args[0].as_str().unwrap().contains(says), "{procedure}: {args:?}");
    }
    // The web-app down: callee_unavailable, at once.
    let request = c.call("down.anything", vec![], Dict::new()).await;
    let (error, args, _) = error_of(&mut c, request).await;
    assert_eq!(error, err::CALLEE_UNAVAILABLE);
    assert!(args[0].as_str().unwrap().contains("could not be reached"), "{args:?}");

    assert_eq!(seen.lock().unwrap().bad_signatures, 0, "every request was signed with rpc.secret");
    assert_eq!(gw.metric("telegraphy_rpc_http_errors_total{reason=\"failed\"}").await, 2.0);
    assert_eq!(gw.metric("telegraphy_rpc_http_errors_total{reason=\"unavailable\"}").await, 1.0);
    assert_eq!(gw.metric("telegraphy_rpc_calls_in_flight").await, 0.0);
}

#[tokio::test]
async fn ndjson_answers_are_progressive_results() {
    let (web, _) = start_web_app().await;
    let gw = TestGateway::start_with(config(web, closed_port())).await;
    let mut c = Client::join_rpc(&gw, JSON).await;
    let request = c.call("web.stream", vec![], dict! {"receive_progress" => true}).await;
    for want in [Value::UInt(1), Value::UInt(2)] {
        match reply(&mut c, request).await {
            Message::Result { details, args, .. } => assert_eq!((details, args), (dict! {"progress" => true}, vec![want])),
            other => panic!("{other:?}"),
        }
    }
    match reply(&mut c, request).await {
        Message::Result { details, args, .. } => assert_eq!((details, args), (Dict::new(), vec![Value::Str("done".into())])),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn timeouts_and_cancel_abort_the_request() {
    let (web, seen) = start_web_app().await;
    let gw = TestGateway::start_with(config(web, closed_port())).await;
    let mut c = Client::join_rpc(&gw, JSON).await;

    let request = c.call("web.slow", vec![], dict! {"timeout" => 300u64}).await;
    let (error, ..) = error_of(&mut c, request).await;
    assert_eq!(error, err::TIMEOUT);

    let request = c.call("web.slow", vec![], Dict::new()).await;
    util::eventually("the web-app got the slow call", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().bodies.len();
        async move { n == 2 }
    })
    .await;
    c.send(&Message::Cancel { request, options: Dict::new() }).await;
    let (error, ..) = error_of(&mut c, request).await;
    assert_eq!(error, err::CANCELED);
    util::eventually("both requests were aborted (the web-app saw the client go)", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().aborted;
        async move { n == 2 }
    })
    .await;

    // A session that leaves aborts its requests too.
    let mut other = Client::join_rpc(&gw, JSON).await;
    other.call("web.slow", vec![], Dict::new()).await;
    util::eventually("the web-app got it", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().bodies.len();
        async move { n == 3 }
    })
    .await;
    drop(other);
    util::eventually("aborted when its caller left", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().aborted;
        async move { n == 3 }
    })
    .await;
    util::eventually("no call in flight", Duration::from_secs(5), || async { gw.metric("telegraphy_rpc_calls_in_flight").await == 0.0 }).await;
}

#[tokio::test]
async fn concurrency_limit_rights_and_registrations() {
    let (web, seen) = start_web_app().await;
    let mut config = config(web, closed_port());
    config.roles.get_mut("anonymous").unwrap().call = vec!["web.*".into()];
    let gw = TestGateway::start_with(config).await;
    let mut c = Client::join_rpc(&gw, JSON).await;

    // web.busy allows one call in flight: the second is refused at once.
    let slow = c.call("web.busy", vec![], Dict::new()).await;
    util::eventually("the first web.busy reached the web-app", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().bodies.len();
        async move { n == 1 }
    })
    .await;
    let second = c.call("web.busy", vec![], Dict::new()).await;
    let (error, ..) = error_of(&mut c, second).await;
    assert_eq!(error, err::LIMIT_EXCEEDED);
    c.send(&Message::Cancel { request: slow, options: Dict::new() }).await;
    assert_eq!(error_of(&mut c, slow).await.0, err::CANCELED);

    // Rights apply before anything is sent.
    let request = c.call("down.x", vec![], Dict::new()).await;
    assert_eq!(error_of(&mut c, request).await.0, err::NOT_AUTHORIZED);
    // A WAMP callee cannot take a procedure the web-app serves.
    let request = c.request_id();
    c.send(&Message::Register { request, options: Dict::new(), procedure: "web.add".into() }).await;
    assert!(matches!(c.recv().await, Message::Error { error, .. } if error == err::PROCEDURE_ALREADY_EXISTS));
}

#[test]
fn the_configuration_is_checked() {
    let mut config = util::config();
    config.rpc.http = vec![HttpCallee { procedure: "shop.*".into(), url: "http://127.0.0.1:8000/rpc".into(), ..HttpCallee::default() }];
    let text = config.validate().unwrap_err().to_string();
    assert!(text.contains("rpc.secret") && text.contains("RPC_SECRET"), "{text}");
    config.rpc.secret = Some("short".into());
    assert!(config.validate().unwrap_err().to_string().contains("32 bytes"));
    config.rpc.secret = Some(SECRET.into());
    config.validate().unwrap();
    for (procedure, url, says) in [
        ("shop.*", "ftp://x/rpc", "http://"),
        ("wamp.*", "http://x/rpc", "wamp."),
        ("*", "http://x/rpc", "wamp."),
        ("a.*.b", "http://x/rpc", "procedure"),
    ] {
        config.rpc.http[0] = HttpCallee { procedure: procedure.into(), url: url.into(), ..HttpCallee::default() };
        let text = config.validate().unwrap_err().to_string();
        assert!(text.contains(says), "{procedure} {url}: {text}");
    }
}
