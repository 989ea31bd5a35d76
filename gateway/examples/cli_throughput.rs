//! Rough figure: events per second from `telegraphy-publish --stdin`
//! through a bus to a subscriber on another gateway node.
//!
//! `cargo build --release -p telegraphy-publish --example cli_throughput -p telegraphy-gateway`
//! `target/release/examples/cli_throughput BUS_URL PATH/TO/telegraphy-publish [EVENTS]`

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use telegraphy_gateway::{Config, Gateway};
use telegraphy_wamp::{Dict, Message, Serialization, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as Ws;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bus = args.get(1).expect("usage: cli_throughput BUS_URL CLI_PATH [EVENTS]").clone();
    let cli = args.get(2).expect("usage: cli_throughput BUS_URL CLI_PATH [EVENTS]").clone();
    let n: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(20_000);
    let prefix = format!("bench-{:x}", fastrand::u64(..));
    let mut urls = Vec::new();
    for _ in 0..2 {
        let mut config = Config { bus: bus.clone(), ..Config::default() };
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.redis.key_prefix = format!("{prefix}:");
        config.amqp.exchange = prefix.clone();
        let gw = Gateway::bind(config).await.unwrap();
        urls.push((format!("ws://{}/ws", gw.local_addr()), gw.admin_addr()));
        tokio::spawn(gw.run(std::future::pending()));
    }
    for (_, admin) in &urls {
        loop {
            if reqwest::get(format!("http://{admin}/readyz")).await.map(|r| r.status() == 200).unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The subscriber is on node 2; the CLI publishes straight onto the bus.
    let mut req = urls[1].0.as_str().into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "wamp.2.msgpack".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let ser = Serialization::Msgpack;
    let mut roles = Dict::new();
    roles.insert("subscriber".into(), Value::Dict(Dict::new()));
    let mut details = Dict::new();
    details.insert("roles".into(), Value::Dict(roles));
    ws.send(Ws::Binary(ser.encode(&Message::Hello { realm: "realm1".into(), details }).unwrap())).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.send(Ws::Binary(ser.encode(&Message::Subscribe { request: 1, options: Dict::new(), topic: "bench.cli".into() }).unwrap())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&format!("{{\"topic\": \"bench.cli\", \"args\": [{i}]}}\n"));
    }
    let started = Instant::now();
    let mut child = Command::new(&cli)
        .args(["--bus", &bus, "--redis-key-prefix", &format!("{prefix}:"), "--amqp-exchange", &prefix, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the CLI runs");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(lines.as_bytes()).unwrap());
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("events keep coming") {
            Some(Ok(Ws::Binary(_))) => got += 1,
            Some(Ok(_)) => {}
            other => panic!("subscriber ended: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let status = child.wait().unwrap();
    println!(
        "bus={} events={n} received={got} elapsed={:.3}s events_per_sec={:.0} cli_exit={}",
        bus.split("://").next().unwrap(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        status.code().unwrap_or(-1)
    );
}
