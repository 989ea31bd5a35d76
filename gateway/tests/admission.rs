//! Connections that never authenticate: every one has a deadline for each
//! phase, counts against the limits from its accept, and is shed first
//! when the node is full, so an attacker holding sockets cannot lock logins
//! out (security review, finding 1). Each test here failed before the
//! admission layer: idle sockets and unsent bodies were held forever.

use telegraphy_testkit as util;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use telegraphy_wamp::{Message, Serialization};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use util::{Client, TestGateway, API_KEY};

const JSON: Serialization = Serialization::Json;

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads until the server closes; returns what it sent (panics after `within`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the connection in time");
    all
}

fn fast_deadlines() -> telegraphy_gateway::Config {
    let mut config = util::config();
    config.limits.http_header_timeout = Duration::from_millis(500);
    config.limits.http_body_timeout = Duration::from_millis(500);
    config
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let gw = TestGateway::start_with(fast_deadlines()).await;
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    let said = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(said.is_empty(), "closed without a word: {}", String::from_utf8_lossy(&said));
}

#[tokio::test]
async fn publish_without_a_key_is_refused_before_its_body_is_read() {
    let gw = TestGateway::start().await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    // A body announced and never sent: the key is checked first.
    c.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    let said = read_until_closed(&mut c, Duration::from_secs(5)).await;
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("HTTP/1.1 401"), "{said}");
    assert!(said.contains("missing_api_key"), "{said}");
}

#[tokio::test]
async fn a_body_that_never_comes_times_out() {
    let gw = TestGateway::start_with(fast_deadlines()).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 1000\r\n\r\n{{\"topic\":");
    c.write_all(head.as_bytes()).await.unwrap();
    let said = read_until_closed(&mut c, Duration::from_secs(10)).await;
    let said = String::from_utf8_lossy(&said);
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("limits.http_body_timeout"), "{said}");
}

#[tokio::test]
async fn a_kept_alive_connection_must_send_its_next_request_in_time() {
    let gw = TestGateway::start_with(fast_deadlines()).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    // A request without a key (401), then nothing: closed after the header timeout.
    c.write_all(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    let said = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&said).starts_with("HTTP/1.1 401"));
}

#[tokio::test]
async fn the_oldest_unauthenticated_connections_make_room_for_logins() {
    let mut config = util::config();
    config.limits.max_connections = 4;
    let gw = TestGateway::start_with(config).await;
    // Two established sessions (trusted), subscribed.
    let mut a = Client::join(&gw, JSON).await;
    a.subscribe("t.kept", "exact").await;
    let _b = Client::join(&gw, JSON).await;
    // An attacker fills the node with sockets that say nothing.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // A login still works, and so does the web-app's HTTP publish...
    let mut c = Client::join(&gw, JSON).await;
    c.subscribe("t.new", "exact").await;
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "t.kept", "args": [1]})).await;
    assert_eq!(status, 200);
    // ...and the established sessions were not the ones shed.
    assert_eq!(a.event().await.1, vec![telegraphy_wamp::Value::from(1u64)]);
    assert!(gw.metric("telegraphy_connections_shed_total").await >= 8.0);
    // The oldest idle sockets were closed without a word.
    let said = read_until_closed(&mut idle[0], Duration::from_secs(5)).await;
    assert!(said.is_empty());
}

#[tokio::test]
async fn unauthenticated_connections_per_address_are_capped() {
    let mut config = util::config();
    config.limits.max_unauthenticated_per_ip = 3;
    let gw = TestGateway::start_with(config).await;
    let _held: Vec<TcpStream> = futures_util::future::join_all((0..3).map(|_| connect_from("127.0.0.1", gw.addr))).await;
    util::eventually("three admitted", Duration::from_secs(5), || async { gw.metric("telegraphy_admitted_connections").await == 3.0 }).await;
    // The fourth from the same address is closed at accept...
    let mut fourth = connect_from("127.0.0.1", gw.addr).await;
    assert!(read_until_closed(&mut fourth, Duration::from_secs(5)).await.is_empty());
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"unauthenticated_per_ip\"}").await, 1.0);
    // ...while another address logs in.
    let mut other = connect_from("127.0.0.2", gw.addr).await;
    other.write_all(b"GET /publish HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 12];
    other.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 405");
}

/// Every way a connection's task can end gives its `telegraphy_connections`
/// slot back (the gauge was decremented by hand at the end of the task, so
/// a panicking task leaked one for good).
#[tokio::test]
async fn the_connection_gauge_comes_back_on_every_way_out() {
    let mut config = util::config();
    config.limits.handshake_timeout = Duration::from_millis(300);
    config.limits.max_connections = 3;
    let gw = TestGateway::start_with(config).await;
    // GOODBYE.
    let mut c = Client::join(&gw, JSON).await;
    c.send(&Message::Goodbye { details: Default::default(), reason: "wamp.close.close_realm".into() }).await;
    let _ = c.closed().await;
    // A close frame from the client.
    let mut c = Client::join(&gw, JSON).await;
    c.send_raw(tokio_tungstenite::tungstenite::Message::Close(None)).await;
    let _ = c.closed().await;
    // Both answered with a close frame, and counted as written.
    util::eventually("closes counted", Duration::from_secs(5), || async { gw.metric("telegraphy_disconnects_total{code=\"1000\"}").await == 2.0 })
        .await;
    assert_eq!(gw.metric("telegraphy_close_unsent_total{code=\"1000\"}").await, 0.0);
    // The client vanishes (TCP drop, no close frame).
    drop(Client::join(&gw, JSON).await);
    // A protocol violation.
    let mut c = Client::join(&gw, JSON).await;
    c.send_raw(tokio_tungstenite::tungstenite::Message::Text("not json".into())).await;
    let _ = c.closed().await;
    // HELLO never comes.
    let mut c = Client::open(&gw, JSON).await;
    let _ = c.closed().await;
    // Shed to make room (the node holds 3).
    util::eventually("the earlier connections closed", Duration::from_secs(10), || async {
        gw.metric("telegraphy_admitted_connections").await == 0.0
    })
    .await;
    let mut _shed = Vec::new();
    for _ in 0..3 {
        _shed.push(Client::open(&gw, JSON).await);
    }
    let _last = Client::join(&gw, JSON).await;
    drop(_shed);
    drop(_last);
    util::eventually("every connection counted out", Duration::from_secs(10), || async {
        gw.metric("telegraphy_connections").await == 0.0 && gw.metric("telegraphy_admitted_connections").await == 0.0
    })
    .await;
}
