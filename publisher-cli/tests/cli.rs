//! `telegraphy-publish` run as a user runs it: the built binary, against
//! real gateway nodes on the machine's Redis and RabbitMQ (and over HTTP).

use telegraphy_testkit as util;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use telegraphy_gateway::Config;
use telegraphy_wamp::{Serialization, Value};
use util::{unique, Client, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_telegraphy-publish");

fn redis_url() -> String {
    std::env::var("TELEGRAPHY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn amqp_url() -> String {
    std::env::var("TELEGRAPHY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A bus under test and the CLI flags that reach it.
struct Bus {
    config: Config,
    flags: Vec<String>,
    /// The test exchange to delete afterwards (RabbitMQ).
    exchange: Option<String>,
}

fn redis_bus() -> Bus {
    let prefix = unique("cli") + ":";
    let mut config = util::config();
    config.bus = redis_url();
    config.redis.key_prefix = prefix.clone();
    Bus { config, flags: vec!["--bus".into(), redis_url(), "--redis-key-prefix".into(), prefix], exchange: None }
}

fn amqp_bus() -> Bus {
    let exchange = unique("telegraphy-cli-test");
    let mut config = util::config();
    config.bus = amqp_url();
    config.amqp.exchange = exchange.clone();
    Bus { config, flags: vec!["--bus".into(), amqp_url(), "--amqp-exchange".into(), exchange.clone()], exchange: Some(exchange) }
}

/// Runs the CLI with `args`, feeding `stdin`, with a clean environment.
async fn cli(args: &[String], stdin: &str) -> Output {
    let args = args.to_vec();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(&args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI runs");
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn with(flags: &[String], more: &[&str]) -> Vec<String> {
    flags.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect()
}

/// Three nodes, a subscriber on each; events from the CLI, from HTTP to one
/// node and from a WAMP session on another: each subscriber gets each once.
async fn three_nodes_with_cli(bus: Bus) {
    let nodes = [
        TestGateway::start_ready(bus.config.clone()).await,
        TestGateway::start_ready(bus.config.clone()).await,
        TestGateway::start_ready(bus.config.clone()).await,
    ];
    let mut subs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let ser = if i % 2 == 0 { Serialization::Json } else { Serialization::Msgpack };
        let mut c = Client::join(node, ser).await;
        c.subscribe("t.cli", "prefix").await;
        subs.push(c);
    }
    // One event from the CLI reaches every node once.
    let out = cli(&with(&bus.flags, &["t.cli.one", "[1, \"two\"]", "{\"k\": true}"]), "").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the CLI prints the publication id");
    for c in &mut subs {
        match c.recv().await {
            telegraphy_wamp::Message::Event { publication, args, kwargs, details, .. } => {
                assert_eq!(publication, id);
                assert_eq!(args, vec![Value::UInt(1), Value::from("two")]);
                assert_eq!(kwargs.get("k"), Some(&Value::Bool(true)));
                assert_eq!(details.get("topic"), Some(&Value::from("t.cli.one")));
            }
            other => panic!("expected EVENT, got {other:?}"),
        }
    }
    // The same nodes, the same subscribers: an HTTP publish to node 1 and a
    // WAMP publish from node 3 (exclude_me holds across the cluster).
    let (status, _) = nodes[0].publish_http(serde_json::json!({"topic": "t.cli.http", "args": ["http"]})).await;
    assert_eq!(status, 200);
    for c in &mut subs {
        assert_eq!(c.event().await.1, vec![Value::from("http")]);
    }
    subs[2].publish("t.cli.wamp", vec![Value::from("wamp")], telegraphy_wamp::Dict::new()).await;
    for c in &mut subs[..2] {
        assert_eq!(c.event().await.1, vec![Value::from("wamp")]);
    }
    // A batch on stdin, with per-line options and a bad line in the middle.
    let eligible = subs[1].session;
    let batch = format!(
        "{{\"topic\": \"t.cli.b\", \"args\": [\"first\"]}}\n\
         not json\n\
         {{\"topic\": \"t.cli.b\", \"args\": [\"only node 1\"], \"options\": {{\"eligible\": [{eligible}]}}}}\n\
         {{\"topic\": \"t.cli.b\", \"args\": [\"last\"]}}\n"
    );
    let out = cli(&with(&bus.flags, &["--stdin"]), &batch).await;
    assert_eq!(out.status.code(), Some(2), "a bad line makes the batch exit 2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3, "three events published");
    for (i, c) in subs.iter_mut().enumerate() {
        // Node 3's publisher did not get its own "wamp" event: its next one is "first".
        assert_eq!(c.event().await.1, vec![Value::from("first")]);
        if i == 1 {
            assert_eq!(c.event().await.1, vec![Value::from("only node 1")]);
        }
        assert_eq!(c.event().await.1, vec![Value::from("last")]);
    }
    if let Some(exchange) = &bus.exchange {
        util::delete_exchange(&amqp_url(), exchange).await;
    }
}

#[tokio::test]
async fn cli_publishes_through_redis_to_every_node() {
    three_nodes_with_cli(redis_bus()).await;
}

#[tokio::test]
async fn cli_publishes_through_rabbitmq_to_every_node() {
    three_nodes_with_cli(amqp_bus()).await;
}

#[tokio::test]
async fn cli_and_gateways_take_a_list_of_rabbitmq_brokers() {
    // The first broker of the list is down: nodes and the CLI go to the next.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let live = amqp_url();
    let (creds, rest) = live.split_once('@').unwrap();
    let cluster = format!("{creds}@127.0.0.1:{dead},{rest}");
    let mut bus = amqp_bus();
    bus.config.bus = cluster.clone();
    bus.flags[1] = cluster;
    three_nodes_with_cli(bus).await;
}

#[tokio::test]
async fn cli_publishes_through_a_gateway_http_endpoint() {
    let gw = TestGateway::start().await;
    let mut c = Client::join(&gw, Serialization::Json).await;
    c.subscribe("t.http", "exact").await;
    let base = format!("http://{}", gw.addr);
    let out = cli(&["--gateway".into(), base.clone(), "--api-key".into(), util::API_KEY.into(), "t.http".into(), "[\"hi\"]".into()], "").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.event().await.1, vec![Value::from("hi")]);
    let out = cli(&["--gateway".into(), base.clone(), "--api-key".into(), "wrong-key-123".into(), "t.http".into()], "").await;
    assert_eq!(out.status.code(), Some(4), "refused credentials: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("API key"));
    // The key from a file, as a mounted secret (with its trailing newline).
    let file = std::env::temp_dir().join(format!("telegraphy-cli-key-{}", std::process::id()));
    std::fs::write(&file, format!("{}\n", util::API_KEY)).unwrap();
    let path = file.display().to_string();
    let out = cli(&["--gateway".into(), base.clone(), "--api-key-file".into(), path.clone(), "t.http".into(), "[\"from a file\"]".into()], "").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.event().await.1, vec![Value::from("from a file")]);
    std::fs::remove_file(&file).unwrap();
    let out = cli(&["--gateway".into(), base, "--api-key-file".into(), path.clone(), "t.http".into()], "").await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&path), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn cli_reports_bad_input_and_unreachable_buses() {
    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move { cli(&args, "").await }
    };
    // Bad input: exit 2 with a one-line reason.
    for args in [
        vec!["--bus", "redis://127.0.0.1:6379/0", "t.x", "not json"],
        vec!["--bus", "redis://127.0.0.1:6379/0", "t.x", "{\"a\": 1}"],
        vec!["--bus", "redis://127.0.0.1:6379/0", "bad..topic"],
        vec!["--bus", "kafka://x", "t.x"],
        vec!["--bus", "memory://", "t.x"],
        vec!["t.x"],
    ] {
        let out = run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("telegraphy-publish: "), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    }
    // Nothing listens on this port: exit 3, within the timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for url in [format!("redis://127.0.0.1:{port}/0"), format!("amqp://guest:guest@127.0.0.1:{port}/%2f")] {
        let started = Instant::now();
        let out = run(&["--bus", &url, "--timeout", "2s", "t.x"]).await;
        assert_eq!(out.status.code(), Some(3), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let out = run(&["--gateway", &format!("http://127.0.0.1:{port}"), "--api-key", "some-key-123", "t.x"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // Wrong RabbitMQ password: exit 4.
    let out = run(&["--bus", "amqp://guest:wrong-password@127.0.0.1:5672/%2f", "t.x"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("wrong-password"), "passwords never printed");
}

#[tokio::test]
async fn cli_exits_non_zero_during_a_bus_outage() {
    // A private Redis that the test stops.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(up);
    let ok = cli(&["--bus".into(), url.clone(), "t.x".into()], "").await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    server.kill().unwrap();
    server.wait().unwrap();
    let out = cli(&["--bus".into(), url, "--timeout".into(), "1s".into(), "t.x".into()], "").await;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `--require-subscriber`: exit 6 when no node subscribes to the topic, 0
/// when one does; the same through a gateway's HTTP endpoint (409
/// `no_subscriber` there).
async fn require_subscriber(bus: Bus) {
    let node = TestGateway::start_ready(bus.config.clone()).await;
    let mut c = Client::join(&node, Serialization::Json).await;
    c.subscribe("t.req.held", "exact").await;
    let out = cli(&with(&bus.flags, &["--require-subscriber", "t.req.nobody"]), "").await;
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node is subscribed"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&with(&bus.flags, &["--require-subscriber", "t.req.held", "[1]"]), "").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.event().await.1, vec![Value::UInt(1)]);
    // Without the flag, an event nobody subscribes to is simply accepted.
    assert!(cli(&with(&bus.flags, &["t.req.nobody"]), "").await.status.success());
    // In a batch, per line.
    let lines = "{\"topic\": \"t.req.held\", \"args\": [2], \"require_subscriber\": true}\n\
                 {\"topic\": \"t.req.nobody\", \"require_subscriber\": true}\n\
                 {\"topic\": \"t.req.held\", \"args\": [3]}\n";
    let out = cli(&with(&bus.flags, &["--stdin"]), lines).await;
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    assert_eq!(c.event().await.1, vec![Value::UInt(2)]);
    assert_eq!(c.event().await.1, vec![Value::UInt(3)]);
    // HTTP: 409 no_subscriber.
    let (status, body) = node.publish_http(serde_json::json!({"topic": "t.req.nobody", "require_subscriber": true})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("no_subscriber")), "{body}");
    let (status, _) = node.publish_http(serde_json::json!({"topic": "t.req.held", "args": [4], "require_subscriber": true})).await;
    assert_eq!(status, 200);
    assert_eq!(c.event().await.1, vec![Value::UInt(4)]);
    if let Some(exchange) = &bus.exchange {
        util::delete_exchange(&amqp_url(), exchange).await;
    }
}

#[tokio::test]
async fn require_subscriber_on_redis() {
    require_subscriber(redis_bus()).await;
}

#[tokio::test]
async fn require_subscriber_on_rabbitmq() {
    require_subscriber(amqp_bus()).await;
}

#[tokio::test]
async fn require_subscriber_on_the_memory_bus_over_http() {
    let gw = TestGateway::start().await;
    let mut c = Client::join(&gw, Serialization::Json).await;
    c.subscribe("t.mem", "prefix").await;
    let (status, body) = gw.publish_http(serde_json::json!({"topic": "u.other", "require_subscriber": true})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("no_subscriber")), "{body}");
    let (status, _) = gw.publish_http(serde_json::json!({"topic": "t.mem.x", "args": [1], "require_subscriber": true})).await;
    assert_eq!(status, 200);
    assert_eq!(c.event().await.1, vec![Value::UInt(1)]);
}

/// A large batch on stdin goes through in windows: every line's id printed
/// once, in order, and every event received in order.
async fn stdin_batch_in_windows(bus: Bus) {
    let node = TestGateway::start_ready(bus.config.clone()).await;
    let mut c = Client::join(&node, Serialization::Msgpack).await;
    c.subscribe("t.win", "exact").await;
    let n = 3000u64;
    let lines: String = (1..=n).map(|i| format!("{{\"topic\": \"t.win\", \"args\": [{i}]}}\n")).collect();
    let out = cli(&with(&bus.flags, &["--stdin", "--window", "100"]), &lines).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u64> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len() as u64, n);
    for i in 1..=n {
        match c.recv().await {
            telegraphy_wamp::Message::Event { publication, args, .. } => {
                assert_eq!(args, vec![Value::UInt(i)], "in order");
                assert_eq!(publication, ids[i as usize - 1], "ids printed in line order");
            }
            other => panic!("expected EVENT, got {other:?}"),
        }
    }
    if let Some(exchange) = &bus.exchange {
        util::delete_exchange(&amqp_url(), exchange).await;
    }
}

#[tokio::test]
async fn stdin_batches_pipeline_on_redis() {
    stdin_batch_in_windows(redis_bus()).await;
}

#[tokio::test]
async fn stdin_batches_pipeline_on_rabbitmq() {
    stdin_batch_in_windows(amqp_bus()).await;
}
