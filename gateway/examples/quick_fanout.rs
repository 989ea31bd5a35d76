//! A quick fan-out figure: N WAMP subscribers (real WebSocket clients) on one
//! topic, one WAMP publisher sending K events as fast as the bus accepts
//! them; prints deliveries per second. The benchmark harness (`bench/`)
//! measures properly; this is the smoke figure.
//!
//! `cargo run --release -p telegraphy-gateway --example quick_fanout -- [N] [K] [json|msgpack]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use telegraphy_gateway::{Config, Gateway};
use telegraphy_wamp::{Dict, Message, Serialization, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, ser: Serialization) -> Socket {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", ser.subprotocol().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut roles = Dict::new();
    roles.insert("subscriber".into(), Value::Dict(Dict::new()));
    roles.insert("publisher".into(), Value::Dict(Dict::new()));
    let mut details = Dict::new();
    details.insert("roles".into(), Value::Dict(roles));
    send(&mut ws, ser, &Message::Hello { realm: "realm1".into(), details }).await;
    recv(&mut ws, ser).await;
    ws
}

async fn send(ws: &mut Socket, ser: Serialization, msg: &Message) {
    let bytes = ser.encode(msg).unwrap();
    let frame = if ser.is_binary() { Ws::Binary(bytes) } else { Ws::Text(String::from_utf8(bytes.to_vec()).unwrap().into()) };
    ws.send(frame).await.unwrap();
}

async fn recv(ws: &mut Socket, ser: Serialization) -> Message {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Ws::Text(t) => return ser.decode(t.as_bytes()).unwrap(),
            Ws::Binary(b) => return ser.decode(&b).unwrap(),
            _ => continue,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let k: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(500);
    let ser = match args.get(3).map(String::as_str) {
        Some("msgpack") => Serialization::Msgpack,
        _ => Serialization::Json,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), admin_listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
        config.limits.outbound_queue_messages = 100_000;
        config.limits.outbound_queue_bytes = 64 << 20;
        let gw = Gateway::bind(config).await.unwrap();
        let url = format!("ws://{}/ws", gw.local_addr());
        tokio::spawn(gw.run(std::future::pending()));

        let done = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n);
        let (finish_tx, mut finish_rx) = tokio::sync::mpsc::channel::<Instant>(n);
        for _ in 0..n {
            let url = url.clone();
            let ready = ready_tx.clone();
            let finish = finish_tx.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut ws = connect(&url, ser).await;
                let mut options = Dict::new();
                options.insert("match".into(), "exact".into());
                send(&mut ws, ser, &Message::Subscribe { request: 1, options, topic: "bench.topic".into() }).await;
                recv(&mut ws, ser).await;
                ready.send(()).await.unwrap();
                let mut got = 0;
                while got < k {
                    if let Message::Event { .. } = recv(&mut ws, ser).await {
                        got += 1;
                    }
                }
                done.fetch_add(got, Ordering::Relaxed);
                finish.send(Instant::now()).await.unwrap();
            });
        }
        for _ in 0..n {
            ready_rx.recv().await.unwrap();
        }
        let mut publisher = connect(&url, ser).await;
        let payload = Value::Str("x".repeat(100));
        let start = Instant::now();
        for i in 0..k {
            send(
                &mut publisher,
                ser,
                &Message::Publish {
                    request: i + 1,
                    options: Dict::new(),
                    topic: "bench.topic".into(),
                    args: vec![Value::UInt(i), payload.clone()],
                    kwargs: Dict::new(),
                },
            )
            .await;
        }
        let publish_done = start.elapsed();
        let mut last = start;
        for _ in 0..n {
            let t = tokio::time::timeout(Duration::from_secs(120), finish_rx.recv()).await.expect("all delivered").unwrap();
            last = last.max(t);
        }
        let elapsed = last - start;
        let delivered = done.load(Ordering::Relaxed);
        println!(
            "subscribers={n} events={k} serializer={} delivered={delivered} elapsed={:.3}s publish_loop={:.3}s deliveries_per_sec={:.0}",
            ser.label(),
            elapsed.as_secs_f64(),
            publish_done.as_secs_f64(),
            delivered as f64 / elapsed.as_secs_f64()
        );
    });
}
