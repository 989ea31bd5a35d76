//! Behind load balancers: the client's address comes from a trusted
//! proxy's `X-Forwarded-For` / `Forwarded` header or PROXY protocol header,
//! and only from a trusted proxy; per-address limits count the client.
//! The PROXY headers here are written by the `ppp` crate's builder (v2)
//! and by hand as the spec spells v1; a real HAProxy and nginx are in
//! tests/chaos/test_load_balancers.py.

use telegraphy_testkit as util;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use util::TestGateway;

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket upgrade over `stream` with extra request headers: the open
/// socket, or the HTTP status and `Retry-After` it was refused with.
async fn upgrade(stream: TcpStream, addr: SocketAddr, headers: &[(&'static str, &str)]) -> Result<WebSocketStream<TcpStream>, (u16, Option<String>)> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "wamp.2.json".parse().unwrap());
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(request, stream)).await.expect("an answer in time") {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => {
            Err((response.status().as_u16(), response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string())))
        }
        Err(e) => panic!("unexpected WebSocket failure: {e}"),
    }
}

async fn ws_from(from: &str, gw: &TestGateway, headers: &[(&'static str, &str)]) -> Result<WebSocketStream<TcpStream>, (u16, Option<String>)> {
    upgrade(connect_from(from, gw.addr).await, gw.addr, headers).await
}

/// One WebSocket per address, so that a second one tells which address counted.
fn one_per_address() -> telegraphy_gateway::Config {
    let mut config = util::config();
    config.limits.max_connections_per_ip = 1;
    config
}

fn behind(trusted: &[&str]) -> telegraphy_gateway::Config {
    let mut config = one_per_address();
    config.proxies.trusted = trusted.iter().map(|s| s.to_string()).collect();
    config
}

const XFF: &str = "x-forwarded-for";

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_change_nothing() {
    let gw = TestGateway::start_with(one_per_address()).await;
    let _first = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.1")]).await.expect("first WebSocket");
    // Another forged client address: still 127.0.0.1's second WebSocket.
    let second = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.2"), ("forwarded", "for=198.51.100.3")]).await;
    assert_eq!(second.err().map(|e| e.0), Some(429));
}

#[tokio::test]
async fn a_trusted_proxy_names_its_clients_in_x_forwarded_for() {
    let gw = TestGateway::start_with(behind(&["127.0.0.1"])).await;
    let _a = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.1")]).await.expect("client .1");
    let _b = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.2")]).await.expect("client .2 through the same balancer");
    // The client forged the leftmost entry; the balancer appended the real address (.1, which has its WebSocket).
    let forged = ws_from("127.0.0.1", &gw, &[(XFF, "203.0.113.50, 198.51.100.1")]).await;
    assert_eq!(forged.err().map(|e| e.0), Some(429), "the forged entry is not believed");
    // A peer that is not trusted sends the same headers: its own address counts.
    let _c = ws_from("127.0.0.2", &gw, &[(XFF, "198.51.100.9")]).await.expect("127.0.0.2's first");
    let again = ws_from("127.0.0.2", &gw, &[(XFF, "198.51.100.10")]).await;
    assert_eq!(again.err().map(|e| e.0), Some(429));
}

#[tokio::test]
async fn forwarded_is_read_only_when_configured_and_then_alone() {
    let mut config = behind(&["127.0.0.1"]);
    config.proxies.header = telegraphy_gateway::config::ClientAddressHeader::Forwarded;
    let gw = TestGateway::start_with(config).await;
    let _a = ws_from("127.0.0.1", &gw, &[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]).await.expect("client 2001:db8::1");
    let _b = ws_from("127.0.0.1", &gw, &[("forwarded", "for=198.51.100.7")]).await.expect("client .7");
    // X-Forwarded-For is not read in this mode: a request with only it is the balancer's own (first one, allowed) ...
    let _c = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.8")]).await.expect("the balancer itself");
    // ... and a second such request is the balancer's second.
    let d = ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.9")]).await;
    assert_eq!(d.err().map(|e| e.0), Some(429));
}

fn proxy_v2(client: &str) -> Vec<u8> {
    let src: SocketAddr = client.parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    ppp::v2::Builder::with_addresses(ppp::v2::Version::Two | ppp::v2::Command::Proxy, ppp::v2::Protocol::Stream, (src, dst)).build().unwrap()
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_and_is_required_from_trusted_peers_only() {
    let mut config = behind(&["127.0.0.1"]);
    config.proxies.proxy_protocol = true;
    config.proxies.header = telegraphy_gateway::config::ClientAddressHeader::None;
    config.limits.http_header_timeout = Duration::from_millis(800);
    let gw = TestGateway::start_with(config).await;

    let mut tcp = connect_from("127.0.0.1", gw.addr).await;
    tcp.write_all(&proxy_v2("198.51.100.1:5000")).await.unwrap();
    let mut a = upgrade(tcp, gw.addr, &[]).await.expect("v2 header, client .1");
    let mut tcp = connect_from("127.0.0.1", gw.addr).await;
    tcp.write_all(b"PROXY TCP4 198.51.100.2 127.0.0.1 5001 8080\r\n").await.unwrap();
    let _b = upgrade(tcp, gw.addr, &[]).await.expect("v1 header, client .2");
    let mut tcp = connect_from("127.0.0.1", gw.addr).await;
    tcp.write_all(&proxy_v2("198.51.100.1:5002")).await.unwrap();
    assert_eq!(upgrade(tcp, gw.addr, &[]).await.err().map(|e| e.0), Some(429), "client .1 has its WebSocket");

    // The session behind the header works like any other.
    use futures_util::{SinkExt, StreamExt};
    a.send(tokio_tungstenite::tungstenite::Message::text(r#"[1,"realm1",{"roles":{"subscriber":{}}}]"#)).await.unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(5), a.next()).await.unwrap().unwrap().unwrap();
    assert!(welcome.to_text().unwrap().starts_with("[2,"), "{welcome}");

    // A trusted peer without the header is closed without a word (a client
    // behind a misconfigured balancer cannot name itself).
    let mut bare = connect_from("127.0.0.1", gw.addr).await;
    bare.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), bare.read_to_end(&mut said)).await.expect("closed in time");
    assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));
    // One that sends nothing is closed at the header timeout.
    let mut idle = connect_from("127.0.0.1", gw.addr).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut said)).await.expect("closed in time");
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"proxy_protocol\"}").await, 2.0);
    // An untrusted peer is never asked for one: a PROXY line from it is not HTTP.
    let _direct = ws_from("127.0.0.2", &gw, &[]).await.expect("a direct client");
    let mut forger = connect_from("127.0.0.3", gw.addr).await;
    forger.write_all(&proxy_v2("198.51.100.50:1")).await.unwrap();
    forger.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), forger.read_to_end(&mut said)).await.expect("closed in time");
    assert!(String::from_utf8_lossy(&said).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&said));
}

#[tokio::test]
async fn new_connections_over_the_rate_hear_429_or_503() {
    let mut config = behind(&["127.0.0.1"]);
    config.limits.max_connections_per_ip = 0;
    config.limits.connection_rate_per_ip = 0.01;
    config.limits.connection_burst_per_ip = 2;
    let gw = TestGateway::start_with(config).await;
    let _held: Vec<_> = [ws_from("127.0.0.2", &gw, &[]).await.unwrap(), ws_from("127.0.0.2", &gw, &[]).await.unwrap()].into();
    let third = ws_from("127.0.0.2", &gw, &[]).await.err();
    assert_eq!(third, Some((429, Some("5".into()))), "over the rate");
    assert!(ws_from("127.0.0.3", &gw, &[]).await.is_ok(), "another address has its own rate");
    // Behind the balancer each client has its own rate too.
    for _ in 0..2 {
        ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.1")]).await.expect("within client .1's burst");
    }
    assert_eq!(ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.1")]).await.err().map(|e| e.0), Some(429));
    assert!(ws_from("127.0.0.1", &gw, &[(XFF, "198.51.100.2")]).await.is_ok());
    // HTTP publishing from a rated-out address is told the same.
    let mut c = connect_from("127.0.0.2", gw.addr).await;
    c.write_all(format!("POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}", util::API_KEY).as_bytes())
        .await
        .unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut said)).await.expect("closed in time");
    assert!(String::from_utf8_lossy(&said).starts_with("HTTP/1.1 429"), "{}", String::from_utf8_lossy(&said));
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"connection_rate_per_ip\"}").await, 3.0);

    // The node-wide rate: 503.
    let mut config = util::config();
    config.limits.connection_rate = 0.01;
    config.limits.connection_burst = 1;
    let gw = TestGateway::start_with(config).await;
    let _one = ws_from("127.0.0.4", &gw, &[]).await.unwrap();
    assert_eq!(ws_from("127.0.0.5", &gw, &[]).await.err(), Some((503, Some("5".into()))));
    assert_eq!(gw.metric("telegraphy_connections_refused_total{reason=\"connection_rate\"}").await, 1.0);
}
