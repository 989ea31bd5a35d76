//! Test support for the integration tests of `telegraphy-gateway` and
//! `telegraphy-publish`: a real gateway on ephemeral ports, and a small raw
//! WAMP client over a real WebSocket (tokio-tungstenite), so tests can send
//! exact bytes and see exact replies and close codes.
//!
//! The gateways it starts use whatever bus their [`Config`] names (the
//! embedded memory bus by default, or the machine's Redis and RabbitMQ);
//! nothing here flushes or stops a broker. Tests import it as
//! `use telegraphy_testkit as util;`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use telegraphy_gateway::{Config, Gateway};
use telegraphy_wamp::{Dict, Message, Serialization, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The API key [`config`] accepts for `POST /publish`.
pub const API_KEY: &str = "test-key-123456";
/// How long [`Client`] waits for a frame before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A gateway running in this process on ephemeral ports; dropping it
/// triggers its drain.
pub struct TestGateway {
    /// The node's id (as in envelopes and metrics).
    pub node_id: u64,
    /// The WebSocket and `POST /publish` listener.
    pub addr: SocketAddr,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// Fires the shutdown future the gateway runs with.
    stop: Option<oneshot::Sender<()>>,
    /// The gateway's run task, for tests that wait for the drain to end.
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A config for tests: ephemeral ports, an API key, and anonymous sessions
/// with every right (the auth tests build their own).
pub fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![API_KEY.into()],
        ..Config::default()
    };
    c.auth.allow_anonymous = true;
    c.roles.insert(
        "anonymous".into(),
        telegraphy_gateway::config::RoleConfig {
            subscribe: vec!["*".into()],
            publish: vec!["*".into()],
            call: vec!["*".into()],
            register: vec!["*".into()],
            publish_options: true,
            ..Default::default()
        },
    );
    c
}

impl TestGateway {
    /// Starts a node with [`config`].
    pub async fn start() -> TestGateway {
        Self::start_with(config()).await
    }

    /// Starts a node with `config` (which must validate).
    pub async fn start_with(config: Config) -> TestGateway {
        config.validate().expect("test config is valid");
        let gw = Gateway::bind(config).await.expect("bind");
        let (addr, admin) = (gw.local_addr(), gw.admin_addr());
        let node_id = gw.node().id;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        TestGateway { node_id, addr, admin, stop: Some(tx), task: Some(task) }
    }

    /// Starts a node and waits until `/readyz` says ready (bus connected).
    pub async fn start_ready(config: Config) -> TestGateway {
        let gw = Self::start_with(config).await;
        assert!(gw.wait_ready(true, Duration::from_secs(20)).await, "gateway did not become ready");
        gw
    }

    /// Polls `/readyz` until it answers `ready` (200) or not (503).
    pub async fn wait_ready(&self, ready: bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("http://{}/readyz", self.admin)).await {
                if (r.status() == 200) == ready {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The WebSocket URL (`ws://addr/ws`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Triggers the drain (like SIGTERM).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin)).await.unwrap().text().await.unwrap()
    }

    /// The value of one metric sample line (`name{labels}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap())).unwrap_or(0.0)
    }

    /// `POST /publish` with [`API_KEY`]: the status and the JSON answer.
    pub async fn publish_http(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        Self::publish_http_to(self.addr, body).await
    }

    /// `POST /publish` with [`API_KEY`] to the node listening on `addr` (for
    /// tests that keep only a node's address).
    pub async fn publish_http_to(addr: SocketAddr, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new().post(format!("http://{addr}/publish")).bearer_auth(API_KEY).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A raw WAMP client.
pub struct Client {
    /// The WebSocket, for tests that send or read raw frames.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The serializer negotiated by subprotocol.
    pub ser: Serialization,
    /// The session id from WELCOME (0 before joining).
    pub session: u64,
    /// WELCOME's details (authid, authrole, roles...).
    pub details: Dict,
    /// The next request id [`Client::request_id`] hands out.
    next_request: u64,
    /// Messages read while waiting for something else (an EVENT that came
    /// before its PUBLISHED: WAMP does not order the two).
    stash: std::collections::VecDeque<Message>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub struct Closed {
    /// The close code, if the close frame had one.
    pub code: Option<u16>,
    /// The close reason, or the transport error.
    pub reason: String,
}

impl Client {
    /// Opens a WebSocket with the serializer's subprotocol (no HELLO yet).
    pub async fn open(gw: &TestGateway, ser: Serialization) -> Client {
        let mut req = gw.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(ser.subprotocol()));
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.expect("WebSocket connect");
        assert_eq!(resp.headers().get("sec-websocket-protocol").unwrap(), ser.subprotocol());
        Client { ws, ser, session: 0, details: Dict::new(), next_request: 1, stash: Default::default() }
    }

    /// Opens and joins `realm1`.
    pub async fn join(gw: &TestGateway, ser: Serialization) -> Client {
        Client::join_with(gw, ser, hello("realm1")).await
    }

    /// Opens and joins `realm1` as a caller and callee announcing every
    /// dealer feature Autobahn announces (progressive results, canceling,
    /// timeouts, caller identification, shared and pattern registrations,
    /// revocation).
    pub async fn join_rpc(gw: &TestGateway, ser: Serialization) -> Client {
        let features: Dict = [
            "progressive_call_results",
            "call_canceling",
            "call_timeout",
            "caller_identification",
            "shared_registration",
            "pattern_based_registration",
            "registration_revocation",
        ]
        .into_iter()
        .map(|f| (f.to_string(), Value::Bool(true)))
        .collect();
        let role = Value::Dict(Dict::from_iter([("features".to_string(), Value::Dict(features))]));
        let roles: Dict = ["caller", "callee", "subscriber", "publisher"].into_iter().map(|r| (r.to_string(), role.clone())).collect();
        let details = Dict::from_iter([("roles".to_string(), Value::Dict(roles))]);
        Client::join_with(gw, ser, Message::Hello { realm: "realm1".into(), details }).await
    }

    /// Opens and joins with `hello`.
    pub async fn join_with(gw: &TestGateway, ser: Serialization, hello: Message) -> Client {
        let mut c = Client::open(gw, ser).await;
        c.send(&hello).await;
        match c.recv().await {
            Message::Welcome { session, details } => {
                c.session = session;
                c.details = details;
            }
            other => panic!("expected WELCOME, got {other:?}"),
        }
        c
    }

    /// WELCOME's details.
    pub fn details(&self) -> &Dict {
        &self.details
    }

    /// The session id WELCOME gave.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Registers `procedure` with `options`; returns the registration id
    /// (panics on an ERROR).
    pub async fn register(&mut self, procedure: &str, options: Dict) -> u64 {
        let request = self.request_id();
        self.send(&Message::Register { request, options, procedure: procedure.into() }).await;
        match self.recv().await {
            Message::Registered { request: r, registration } if r == request => registration,
            other => panic!("REGISTER {procedure}: expected REGISTERED, got {other:?}"),
        }
    }

    /// Sends a CALL; returns its request id.
    pub async fn call(&mut self, procedure: &str, args: Vec<Value>, options: Dict) -> u64 {
        let request = self.request_id();
        self.send(&Message::Call { request, options, procedure: procedure.into(), args, kwargs: Dict::new() }).await;
        request
    }

    /// The authid WELCOME gave.
    pub fn authid(&self) -> String {
        self.details["authid"].as_str().unwrap().to_string()
    }

    /// A fresh request id.
    pub fn request_id(&mut self) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        r
    }

    /// Keeps a message for the next [`Client::next`] / [`Client::recv`]
    /// (an event that arrived while the test waited for something else).
    pub fn keep(&mut self, m: Message) {
        self.stash.push_back(m);
    }

    /// Encodes `msg` with the session's serializer and sends it.
    pub async fn send(&mut self, msg: &Message) {
        let bytes = self.ser.encode(msg).unwrap();
        let frame = if self.ser.is_binary() { Ws::Binary(bytes) } else { Ws::Text(String::from_utf8(bytes.to_vec()).unwrap().into()) };
        self.ws.send(frame).await.unwrap();
    }

    /// Sends a frame as is.
    pub async fn send_raw(&mut self, frame: Ws) {
        self.ws.send(frame).await.unwrap();
    }

    /// The next WAMP message (skips pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Message {
        match self.next().await {
            Ok(m) => m,
            Err(closed) => panic!("expected a message, connection closed: {closed:?}"),
        }
    }

    /// The next WAMP message, or how the connection closed.
    pub async fn next(&mut self) -> Result<Message, Closed> {
        if let Some(m) = self.stash.pop_front() {
            return Ok(m);
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<Message, Closed> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for a frame");
            match frame {
                Some(Ok(Ws::Text(t))) => return Ok(Serialization::Json.decode(t.as_bytes()).unwrap()),
                Some(Ok(Ws::Binary(b))) => return Ok(Serialization::Msgpack.decode(&b).unwrap()),
                Some(Ok(Ws::Close(c))) => {
                    return Err(Closed { code: c.as_ref().map(|c| u16::from(c.code)), reason: c.map(|c| c.reason.to_string()).unwrap_or_default() })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Closed { code: None, reason: e.to_string() }),
                None => return Err(Closed { code: None, reason: "stream ended".into() }),
            }
        }
    }

    /// Reads until the connection closes; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            if let Err(c) = self.next().await {
                return c;
            }
        }
    }

    /// ABORT reason, then the close code.
    pub async fn expect_abort(&mut self) -> (String, Option<u16>) {
        let reason = match self.next().await {
            Ok(Message::Abort { reason, .. }) => reason,
            other => panic!("expected ABORT, got {other:?}"),
        };
        (reason, self.closed().await.code)
    }

    /// SUBSCRIBE with a match policy; returns the subscription id.
    pub async fn subscribe(&mut self, topic: &str, policy: &str) -> u64 {
        let request = self.request_id();
        let mut options = Dict::new();
        options.insert("match".into(), policy.into());
        self.send(&Message::Subscribe { request, options, topic: topic.into() }).await;
        match self.recv().await {
            Message::Subscribed { request: r, subscription } if r == request => subscription,
            other => panic!("expected SUBSCRIBED, got {other:?}"),
        }
    }

    /// SUBSCRIBE (exact) that may be refused: the subscription id, or the
    /// ERROR's URI.
    pub async fn subscribe_answer(&mut self, topic: &str) -> Result<u64, String> {
        let request = self.request_id();
        self.send(&Message::Subscribe { request, options: Dict::new(), topic: topic.into() }).await;
        match self.recv().await {
            Message::Subscribed { request: r, subscription } if r == request => Ok(subscription),
            Message::Error { request_type: telegraphy_wamp::code::SUBSCRIBE, request: r, error, .. } if r == request => Err(error),
            other => panic!("SUBSCRIBE {topic}: expected SUBSCRIBED or ERROR, got {other:?}"),
        }
    }

    /// UNSUBSCRIBE; waits for UNSUBSCRIBED.
    pub async fn unsubscribe(&mut self, subscription: u64) {
        let request = self.request_id();
        self.send(&Message::Unsubscribe { request, subscription }).await;
        match self.recv().await {
            Message::Unsubscribed { request: r } if r == request => {}
            other => panic!("expected UNSUBSCRIBED, got {other:?}"),
        }
    }

    /// PUBLISH with acknowledge; returns the publication id.
    pub async fn publish(&mut self, topic: &str, args: Vec<Value>, mut options: Dict) -> u64 {
        let request = self.request_id();
        options.insert("acknowledge".into(), Value::Bool(true));
        self.send(&Message::Publish { request, options, topic: topic.into(), args, kwargs: Dict::new() }).await;
        loop {
            match self.read().await {
                Ok(Message::Published { request: r, publication }) if r == request => return publication,
                // The event of this very publication may overtake its PUBLISHED.
                Ok(event @ Message::Event { .. }) => self.stash.push_back(event),
                other => panic!("expected PUBLISHED, got {other:?}"),
            }
        }
    }

    /// CALLs `procedure` and waits for its answer: the RESULT's args, or
    /// the ERROR's URI. Events that arrive meanwhile are kept, in order.
    pub async fn call_answer(&mut self, procedure: &str, args: Vec<Value>, kwargs: Dict) -> Result<Vec<Value>, String> {
        let request = self.request_id();
        self.send(&Message::Call { request, options: Dict::new(), procedure: procedure.into(), args, kwargs }).await;
        let mut events = Vec::new();
        let answer = loop {
            match self.read().await.unwrap_or_else(|c| panic!("{procedure}: the connection closed: {c:?}")) {
                Message::Result { request: r, args, .. } if r == request => break Ok(args),
                Message::Error { request_type: telegraphy_wamp::code::CALL, request: r, error, .. } if r == request => break Err(error),
                event @ Message::Event { .. } => events.push(event),
                other => panic!("{procedure}: unexpected {other:?}"),
            }
        };
        self.stash.extend(events);
        answer
    }

    /// The next EVENT: (subscription, args, details).
    pub async fn event(&mut self) -> (u64, Vec<Value>, Dict) {
        match self.recv().await {
            Message::Event { subscription, args, details, .. } => (subscription, args, details),
            other => panic!("expected EVENT, got {other:?}"),
        }
    }
}

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// Waits until `check` holds (polling), or panics with `what`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// HELLO offering `methods` (and an authid hint).
pub fn hello_with(realm: &str, methods: &[&str], authid: Option<&str>) -> Message {
    let Message::Hello { realm, mut details } = hello(realm) else { unreachable!() };
    details.insert("authmethods".into(), Value::List(methods.iter().map(|m| Value::from(*m)).collect()));
    if let Some(a) = authid {
        details.insert("authid".into(), a.into());
    }
    Message::Hello { realm, details }
}

impl Client {
    /// Opens and authenticates with a ticket; on refusal returns the ABORT
    /// reason, its message and the close code.
    pub async fn join_ticket(gw: &TestGateway, ser: Serialization, ticket: &str) -> Result<Client, (String, String, Option<u16>)> {
        let mut c = Client::open(gw, ser).await;
        c.send(&hello_with("realm1", &["ticket"], None)).await;
        match c.recv().await {
            Message::Challenge { authmethod, .. } => assert_eq!(authmethod, "ticket"),
            Message::Abort { reason, details } => {
                let code = c.closed().await.code;
                return Err((reason, details.get("message").and_then(|m| m.as_str()).unwrap_or("").into(), code));
            }
            other => panic!("expected CHALLENGE, got {other:?}"),
        }
        c.send(&Message::Authenticate { signature: ticket.into(), extra: Dict::new() }).await;
        c.finish_join().await
    }

    /// Reads WELCOME (or ABORT) after authentication.
    pub async fn finish_join(mut self) -> Result<Client, (String, String, Option<u16>)> {
        match self.recv().await {
            Message::Welcome { session, details } => {
                self.session = session;
                self.details = details;
                Ok(self)
            }
            Message::Abort { reason, details } => {
                let code = self.closed().await.code;
                Err((reason, details.get("message").and_then(|m| m.as_str()).unwrap_or("").into(), code))
            }
            other => panic!("expected WELCOME or ABORT, got {other:?}"),
        }
    }
}

/// HELLO for `realm` with the subscriber and publisher roles.
pub fn hello(realm: &str) -> Message {
    let mut roles = Dict::new();
    roles.insert("subscriber".into(), Value::Dict(Dict::new()));
    roles.insert("publisher".into(), Value::Dict(Dict::new()));
    let mut details = Dict::new();
    details.insert("roles".into(), Value::Dict(roles));
    Message::Hello { realm: realm.into(), details }
}

/// A close code as a number.
pub fn close_code(c: CloseCode) -> u16 {
    c.into()
}

/// Test exchanges are durable like real ones: delete them afterwards.
pub async fn delete_exchange(amqp_url: &str, exchange: &str) {
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.exchange_delete(exchange.into(), lapin::options::ExchangeDeleteOptions::default()).await.unwrap();
    // Nodes declare the control exchange beside it.
    let control = format!("{exchange}.control");
    channel.exchange_delete(control.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// A RabbitMQ exchange of a test, and what nodes declare beside it (the
/// history streams `{exchange}.history`, `{exchange}.history-epoch`, the
/// control exchange `{exchange}.control`): all
/// deleted when dropped, also when the test fails (they are durable and
/// live on the machine's shared broker).
pub struct AmqpExchange {
    /// The broker's URL.
    pub url: String,
    /// The exchange's name (unique per test).
    pub name: String,
}

impl AmqpExchange {
    /// A unique exchange name on the broker at `url` (nothing declared yet).
    pub fn new(url: &str, prefix: &str) -> AmqpExchange {
        AmqpExchange { url: url.to_string(), name: unique(prefix) }
    }
}

impl Drop for AmqpExchange {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A runtime of its own: drop may run inside or outside one.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async {
                let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await else { return };
                for queue in [format!("{name}.history"), format!("{name}.history-epoch")] {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = channel.queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default()).await;
                    }
                }
                for exchange in [name.clone(), format!("{name}.control")] {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = channel.exchange_delete(exchange.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await;
                    }
                }
                let _ = conn.close(200, "done".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The machine's shared Redis (`TELEGRAPHY_TEST_REDIS` overrides it).
pub fn redis_url() -> String {
    std::env::var("TELEGRAPHY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The machine's shared RabbitMQ (`TELEGRAPHY_TEST_AMQP` overrides it).
pub fn amqp_url() -> String {
    std::env::var("TELEGRAPHY_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Where a test's nodes meet: one node's memory bus, a Redis key prefix of
/// their own on the shared Redis, or an exchange of their own on the
/// shared RabbitMQ (deleted when dropped).
pub enum SharedBus {
    /// `memory://`: one node.
    Memory,
    /// The shared Redis, under this key prefix.
    Redis(String),
    /// The shared RabbitMQ, on this exchange.
    Amqp(AmqpExchange),
}

impl SharedBus {
    /// A unique key prefix on the shared Redis.
    pub fn redis(prefix: &str) -> SharedBus {
        SharedBus::Redis(unique(prefix) + ":")
    }

    /// A unique exchange on the shared RabbitMQ.
    pub fn amqp(prefix: &str) -> SharedBus {
        SharedBus::Amqp(AmqpExchange::new(&amqp_url(), prefix))
    }

    /// The test config ([`config`]) on this bus.
    pub fn config(&self) -> Config {
        let mut c = config();
        self.apply(&mut c);
        c
    }

    /// `N` ready nodes on this bus, with the test config.
    pub async fn nodes<const N: usize>(&self) -> [TestGateway; N] {
        let mut nodes = Vec::with_capacity(N);
        for _ in 0..N {
            nodes.push(TestGateway::start_ready(self.config()).await);
        }
        nodes.try_into().unwrap_or_else(|_| unreachable!("N nodes were started"))
    }

    /// Points `c` at this bus (and lets it reconnect quickly).
    pub fn apply(&self, c: &mut Config) {
        c.limits.bus_reconnect_max_delay = Duration::from_millis(500);
        match self {
            SharedBus::Memory => {}
            SharedBus::Redis(prefix) => {
                c.bus = redis_url();
                c.redis.key_prefix = prefix.clone();
            }
            SharedBus::Amqp(exchange) => {
                c.bus = exchange.url.clone();
                c.amqp.exchange = exchange.name.clone();
            }
        }
    }
}

/// A private redis-server on a free port, to stop and start at will (fault
/// tests never touch the machine's shared Redis). Stopped by PID when
/// dropped, also when a test fails.
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
    /// With persistence: the directory of its append-only file.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// A server that keeps nothing on disk.
    pub fn start() -> RedisServer {
        let mut s = RedisServer { port: free_port(), child: None, dir: None };
        s.spawn();
        s
    }

    /// A server with an append-only file, so that a restart keeps its data
    /// (as a production Redis does).
    pub fn start_persistent() -> RedisServer {
        let dir = std::env::temp_dir().join(unique("telegraphy-redis"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut s = RedisServer { port: free_port(), child: None, dir: Some(dir) };
        s.spawn();
        s
    }

    /// Starts the process (again, on the same port and directory).
    pub fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", port.as_str(), "--bind", "127.0.0.1", "--save", ""];
        let dir = self.dir.as_ref().map(|d| d.display().to_string());
        match &dir {
            Some(d) => args.extend(["--appendonly", "yes", "--appendfsync", "always", "--dir", d.as_str()]),
            None => args.extend(["--appendonly", "no"]),
        }
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private redis-server did not start");
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The URL to reach it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
