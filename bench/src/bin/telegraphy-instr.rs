//! Workloads for instruction counting (`bench/instructions/run.py` runs each
//! under valgrind's callgrind at two sizes; the difference divided by the
//! difference in units is the cost of one unit, setup cancelled out).
//!
//! Everything that is measured runs in this process on a current-thread
//! runtime, so the same binary and input give the same count; the other
//! ends of the sockets, and the publishers of bus events, live in a helper
//! process (this binary again, `hold` / `publish`) that valgrind does not
//! trace. Units:
//!
//! * `fanout-gateway`: one EVENT delivered, through the gateway's own
//!   [`Broker::dispatch`], outboxes, wires and write shards (which write
//!   subscriptions of more than 128 sessions), to N real loopback sockets.
//!   After each batch the workload waits until the shards have written it,
//!   so every delivery is its own write, as in the ceiling; with
//!   `--batch K`, K events per dispatcher batch (each session's share of a
//!   batch is one write);
//! * `fanout-ceiling`: the same delivery done as cheaply as possible: the
//!   EVENT encoded once, the same frame written to every socket;
//! * `decode`: one WAMP message decoded (a mix of PUBLISH, SUBSCRIBE, EVENT);
//! * `session-setup`: one session from HELLO with a JWT ticket to WELCOME
//!   to SUBSCRIBED, through the gateway's [`Session`] state machine;
//! * `call`: one remote procedure call on one node, through the caller's
//!   and the callee's [`Session`]s and the realm's dealer: CALL in,
//!   INVOCATION out to the callee's socket, YIELD in, RESULT out to the
//!   caller's socket;
//! * `bus-redis`, `bus-amqp`: one event consumed from the broker by the
//!   bus adapter and handed to the node (publishers run beforehand, in
//!   the helper process, so the adapter reads a full socket);
//! * `bus-ceiling-redis`, `bus-ceiling-amqp`: the same events consumed by
//!   the bare client library (redis-rs pub/sub, lapin with the same
//!   acknowledgement batching), which is the least any consumer pays.

// The binary's own items; `pub` is not an interface here.
#![allow(unreachable_pub)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use telegraphy_bus::{BusMetrics, BusOptions, Envelope, Inbound, MemoryBus};
use telegraphy_gateway::harness::Metrics;
use telegraphy_gateway::harness::{data_frame, Wire};
use telegraphy_gateway::harness::{Broker, SessionHandle};
use telegraphy_gateway::harness::{Flush, Outbox, WriteShards};
use telegraphy_wamp::{Dict, EventRef, MatchPolicy, Message, Serialization, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const TOPIC: &str = "bench.instr.topic";
const REALM: &str = "realm1";
const SECRET: &str = "an-instruction-count-secret-0123456789";

#[derive(Parser)]
#[command(name = "telegraphy-instr", about = "Workloads for instruction counts (see bench/instructions/run.py)")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Clone, Copy, ValueEnum)]
enum Ser {
    Json,
    Msgpack,
}

impl Ser {
    fn get(self) -> Serialization {
        match self {
            Ser::Json => Serialization::Json,
            Ser::Msgpack => Serialization::Msgpack,
        }
    }
}

#[derive(Subcommand)]
enum What {
    /// EVENTs delivered through the gateway's broker to N sockets.
    FanoutGateway {
        #[arg(long)]
        subscribers: usize,
        #[arg(long, value_enum)]
        ser: Ser,
        #[arg(long)]
        events: u64,
        /// Events dispatched per batch (one flush of the small fan-outs'
        /// queued frames per batch, as the node's dispatcher does with what
        /// it takes from the bus at once).
        #[arg(long, default_value_t = 1)]
        batch: u64,
    },
    /// The same deliveries by the bare minimum (encode once, write the frame to each socket).
    FanoutCeiling {
        #[arg(long)]
        subscribers: usize,
        #[arg(long, value_enum)]
        ser: Ser,
        #[arg(long)]
        events: u64,
    },
    /// WAMP messages decoded.
    Decode {
        #[arg(long, value_enum)]
        ser: Ser,
        #[arg(long)]
        messages: u64,
    },
    /// Sessions from HELLO (JWT ticket) to SUBSCRIBED.
    SessionSetup {
        #[arg(long)]
        sessions: usize,
    },
    /// Remote procedure calls on one node (CALL → INVOCATION → YIELD → RESULT).
    Call {
        #[arg(long, value_enum)]
        ser: Ser,
        #[arg(long)]
        calls: u64,
    },
    /// Events consumed from Redis by the bus adapter.
    BusRedis {
        #[arg(long)]
        url: String,
        #[arg(long)]
        events: u64,
    },
    /// Events consumed from RabbitMQ by the bus adapter.
    BusAmqp {
        #[arg(long)]
        url: String,
        #[arg(long)]
        events: u64,
    },
    /// Events consumed from Redis by a bare redis-rs pub/sub client.
    BusCeilingRedis {
        #[arg(long)]
        url: String,
        #[arg(long)]
        events: u64,
    },
    /// Events consumed from RabbitMQ by a bare lapin consumer.
    BusCeilingAmqp {
        #[arg(long)]
        url: String,
        #[arg(long)]
        events: u64,
    },
    /// (helper) Opens `n` connections to `addr` and reads them until they close.
    Hold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        n: usize,
    },
    /// (helper) Publishes `events` numbered events onto a bus.
    Publish {
        #[arg(long)]
        url: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        events: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let What::Hold { addr, n } = cli.what {
        // The helper may use every core; what it does is not measured.
        return tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(hold(addr, n));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.what {
        What::FanoutGateway { subscribers, ser, events, batch } => rt.block_on(fanout_gateway(subscribers, ser.get(), events, batch)),
        What::FanoutCeiling { subscribers, ser, events } => rt.block_on(fanout_ceiling(subscribers, ser.get(), events)),
        What::Decode { ser, messages } => decode(ser.get(), messages),
        What::SessionSetup { sessions } => rt.block_on(session_setup(sessions)),
        What::Call { ser, calls } => rt.block_on(call(ser.get(), calls)),
        What::BusRedis { url, events } => bus(&rt, BusKind::Redis, &url, events),
        What::BusAmqp { url, events } => bus(&rt, BusKind::Amqp, &url, events),
        What::BusCeilingRedis { url, events } => bus_ceiling_redis(&rt, &url, events),
        What::BusCeilingAmqp { url, events } => bus_ceiling_amqp(&rt, &url, events),
        What::Publish { url, prefix, exchange, events } => rt.block_on(publish(url, prefix, exchange, events)),
        What::Hold { .. } => unreachable!("handled above"),
    }
}

/// This binary, for the helper process (under valgrind, `current_exe` may
/// name valgrind's tool; the driver sets `TELEGRAPHY_INSTR_EXE`).
fn helper_exe() -> anyhow::Result<std::path::PathBuf> {
    match std::env::var_os("TELEGRAPHY_INSTR_EXE") {
        Some(p) => Ok(p.into()),
        None => Ok(std::env::current_exe()?),
    }
}

/// The helper side of `n` connections: connects, then reads and drops
/// everything until the other side closes.
async fn hold(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(s.read(&mut buf).await, Ok(k) if k > 0) {}
        }));
    }
    for r in readers {
        let _ = r.await;
    }
    Ok(())
}

/// `n` server-side sockets whose client ends a helper process holds (so
/// this process keeps one file per socket and does no reading).
async fn sockets(n: usize) -> anyhow::Result<(Vec<TcpStream>, std::process::Child)> {
    // Blocking accepts on a deep backlog: one system call per connection,
    // whatever the helper's timing (a non-blocking accept loop's spurious
    // wake-ups would make the count vary from run to run).
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(4096)?.into_std()?;
    listener.set_nonblocking(false)?;
    let addr = listener.local_addr()?;
    let helper = Command::new(helper_exe()?)
        .args(["hold", "--addr", &addr.to_string(), "--n", &n.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("start the helper process")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        out.push(TcpStream::from_std(s)?);
    }
    // tokio learns that a new socket is writable from its first poll;
    // before that, `try_write` would report WouldBlock without trying.
    for s in &out {
        s.writable().await?;
    }
    Ok((out, helper))
}

fn envelope(n: u64) -> Envelope {
    Envelope {
        realm: REALM.into(),
        publication: 1_000_000 + n,
        topic: TOPIC.into(),
        args: vec![Value::UInt(n), Value::Str("a small payload, as model events carry".into())],
        kwargs: Dict::new(),
        filter: Default::default(),
        publisher: None,
        published_at_us: 0,
        retain: false,
        position: None,
    }
}

fn memory_bus() -> (Arc<dyn telegraphy_bus::Bus>, tokio::sync::mpsc::Receiver<Envelope>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (Arc::new(MemoryBus::new(Inbound::new(tx, BusMetrics::unregistered()))), rx)
}

async fn fanout_gateway(subscribers: usize, ser: Serialization, events: u64, batch: u64) -> anyhow::Result<()> {
    let (socks, mut helper) = sockets(subscribers).await?;
    let metrics = Arc::new(Metrics::new());
    let (bus, _rx) = memory_bus();
    let hub = Broker::new(REALM, bus, metrics.clone(), 1);
    let mut handles = Vec::with_capacity(subscribers);
    for (i, s) in socks.into_iter().enumerate() {
        let outbox = Outbox::new(Wire::tcp(s), ser.index(), 1024, 1 << 20, metrics.clone());
        let handle = Arc::new(SessionHandle { id: i as u64 + 1, serialization: ser, identity: OnceLock::new(), outbox, client: None });
        hub.subscribe(&handle, MatchPolicy::Exact, TOPIC, None, false);
        handles.push(handle);
    }
    // Each session's writer, as the connection task runs it.
    let writers: Vec<_> = handles
        .iter()
        .map(|h| {
            let h = h.clone();
            tokio::spawn(async move { h.outbox.serve_writes().await })
        })
        .collect();
    // As the node's dispatcher does.
    let shards = WriteShards::start();
    let mut flush = Flush::with_shards(shards.clone());
    for n in 0..events {
        let delivered = hub.dispatch(&envelope(n), &mut flush);
        if delivered != subscribers {
            bail!("event {n} reached {delivered} of {subscribers} sessions");
        }
        if (n + 1) % batch.max(1) == 0 || n + 1 == events {
            flush.run();
            // The writers of this batch finish before the next one: every
            // delivery is its own write, as in the ceiling program (nothing
            // piles up behind a shard that has not run yet).
            shards.idle().await;
        }
    }
    while handles.iter().any(|h| h.outbox.is_backed_up()) {
        tokio::task::yield_now().await;
    }
    // What the shards sent, counted by them.
    let sent = metrics.events_delivered.get();
    if sent != events * subscribers as u64 {
        bail!("{sent} EVENTs sent, not {} ({events} events to {subscribers} sessions)", events * subscribers as u64);
    }
    for h in &handles {
        h.outbox.close(1000);
    }
    for w in writers {
        let _ = w.await;
    }
    drop(handles);
    drop(hub);
    let _ = helper.wait();
    Ok(())
}

async fn fanout_ceiling(subscribers: usize, ser: Serialization, events: u64) -> anyhow::Result<()> {
    let (socks, mut helper) = sockets(subscribers).await?;
    let details = Dict::new();
    for n in 0..events {
        let e = envelope(n);
        let event = EventRef { subscription: 7, publication: e.publication, details: &details, args: &e.args, kwargs: &e.kwargs };
        let frame: Bytes = data_frame(ser.encode(&event)?, ser.is_binary());
        for s in &socks {
            // Loopback buffers hold everything this workload writes.
            if s.try_write(&frame)? != frame.len() {
                bail!("a short write; the workload is too large for the socket buffers");
            }
        }
    }
    drop(socks);
    let _ = helper.wait();
    Ok(())
}

fn decode(ser: Serialization, messages: u64) -> anyhow::Result<()> {
    let mut kwargs = Dict::new();
    kwargs.insert("id".into(), Value::UInt(42));
    kwargs.insert("name".into(), Value::Str("a task".into()));
    let mix = [
        Message::Publish {
            request: 7,
            options: telegraphy_wamp::dict! {"acknowledge" => true},
            topic: "com.example.tasks.updated".into(),
            args: vec![Value::UInt(1), Value::Str("x".into())],
            kwargs: kwargs.clone(),
        },
        Message::Subscribe { request: 8, options: telegraphy_wamp::dict! {"match" => "prefix"}, topic: "com.example.tasks".into() },
        Message::Event { subscription: 9, publication: 10, details: Dict::new(), args: vec![Value::UInt(3)], kwargs },
    ];
    let encoded: Vec<Bytes> = mix.iter().map(|m| ser.encode(m)).collect::<Result<_, _>>()?;
    let mut ok = 0u64;
    for i in 0..messages {
        let bytes = &encoded[(i % encoded.len() as u64) as usize];
        ok += u64::from(ser.decode(std::hint::black_box(bytes)).is_ok());
    }
    if ok != messages {
        bail!("{} messages did not decode", messages - ok);
    }
    Ok(())
}

/// A node on the memory bus with `config`, its metrics, and the receiving
/// end of its bus queue (kept by the caller for as long as the node runs).
#[allow(clippy::type_complexity)]
fn memory_node(
    config: telegraphy_gateway::Config,
) -> anyhow::Result<(Arc<telegraphy_gateway::harness::Node>, Arc<Metrics>, tokio::sync::mpsc::Receiver<Envelope>)> {
    config.validate()?;
    let auth = telegraphy_gateway::harness::Authenticator::from_config(&config)?;
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let bus: Arc<dyn telegraphy_bus::Bus> = Arc::new(MemoryBus::new(Inbound::new(tx.clone(), BusMetrics::unregistered())));
    let parts = telegraphy_gateway::harness::NodeBus { bus, store: None, queue: tx.downgrade(), sessions: Default::default() };
    Ok((telegraphy_gateway::harness::Node::new(1, config, auth, parts, metrics.clone()), metrics, rx))
}

async fn session_setup(sessions: usize) -> anyhow::Result<()> {
    use telegraphy_gateway::harness::{Flow, Session};
    let (socks, mut helper) = sockets(sessions).await?;
    let mut config = telegraphy_gateway::Config::default();
    config.auth.jwt_secret = Some(SECRET.into());
    let (node, metrics, _bus_queue) = memory_node(config)?;
    let ticket = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let json = Serialization::Json;
    let hello = br#"[1,"realm1",{"roles":{"subscriber":{},"publisher":{}},"authmethods":["ticket"],"authid":"alice"}]"#.to_vec();
    let authenticate = format!(r#"[5,"{ticket}",{{}}]"#).into_bytes();
    let subscribe = format!(r#"[32,1,{{}},"{TOPIC}"]"#).into_bytes();
    let mut held = Vec::with_capacity(sessions);
    for (i, s) in socks.into_iter().enumerate() {
        let outbox = Outbox::new(Wire::tcp(s), json.index(), 1024, 1 << 20, metrics.clone());
        let handle = Arc::new(SessionHandle { id: i as u64 + 1, serialization: json, identity: OnceLock::new(), outbox, client: None });
        let mut session = Session::new(node.clone(), handle);
        for payload in [&hello, &authenticate, &subscribe] {
            if session.handle_payload(payload).await != Flow::Continue {
                bail!("session {i} was refused");
            }
        }
        if !session.is_established() {
            bail!("session {i} is not established");
        }
        held.push(session);
    }
    drop(held);
    let _ = helper.wait();
    Ok(())
}

async fn call(ser: Serialization, calls: u64) -> anyhow::Result<()> {
    use telegraphy_gateway::harness::{Flow, Session};
    let (socks, mut helper) = sockets(2).await?;
    let mut config = telegraphy_gateway::Config::default();
    config.auth.allow_anonymous = true;
    let anonymous = config.roles.entry("anonymous".into()).or_default();
    anonymous.call = vec!["*".into()];
    anonymous.register = vec!["*".into()];
    let (node, metrics, _bus_queue) = memory_node(config)?;
    let mut sessions = Vec::with_capacity(2);
    for (i, s) in socks.into_iter().enumerate() {
        let outbox = Outbox::new(Wire::tcp(s), ser.index(), 1024, 1 << 20, metrics.clone());
        let handle = Arc::new(SessionHandle { id: i as u64 + 1, serialization: ser, identity: OnceLock::new(), outbox, client: None });
        sessions.push(Session::new(node.clone(), handle));
    }
    let encode = |m: &Message| ser.encode(m).map(|b| b.to_vec()).map_err(|e| anyhow::anyhow!("encode: {}", e.0));
    let roles = |role: &str| {
        let mut roles = Dict::new();
        roles.insert(role.into(), Value::Dict(Dict::new()));
        let mut details = Dict::new();
        details.insert("roles".into(), Value::Dict(roles));
        Message::Hello { realm: REALM.into(), details }
    };
    let [callee, caller] = &mut sessions[..] else { unreachable!("two sessions") };
    let register = Message::Register { request: 1, options: Dict::new(), procedure: "com.example.add".into() };
    for (session, payloads) in [(&mut *callee, vec![encode(&roles("callee"))?, encode(&register)?]), (&mut *caller, vec![encode(&roles("caller"))?])]
    {
        for payload in payloads {
            if session.handle_payload(&payload).await != Flow::Continue {
                bail!("a session was refused");
            }
        }
    }
    for n in 1..=calls {
        let args = vec![Value::UInt(n), Value::Str("a small payload, as model events carry".into())];
        let call = Message::Call { request: n, options: Dict::new(), procedure: "com.example.add".into(), args: args.clone(), kwargs: Dict::new() };
        let yielded = Message::Yield { request: n, options: Dict::new(), args, kwargs: Dict::new() };
        if caller.handle_payload(&encode(&call)?).await != Flow::Continue || callee.handle_payload(&encode(&yielded)?).await != Flow::Continue {
            bail!("call {n} failed");
        }
    }
    drop(sessions);
    let _ = helper.wait();
    Ok(())
}

#[derive(Clone, Copy)]
enum BusKind {
    Redis,
    Amqp,
}

fn bus(rt: &tokio::runtime::Runtime, kind: BusKind, url: &str, events: u64) -> anyhow::Result<()> {
    let id = std::process::id();
    let prefix = format!("instr{id}:");
    let exchange = format!("telegraphy-instr-{id}");
    let options = BusOptions { redis_key_prefix: prefix.clone(), amqp_exchange: exchange.clone(), ..BusOptions::default() };
    let (tx, mut rx) = tokio::sync::mpsc::channel(8192);
    let inbound = Inbound::new(tx, BusMetrics::unregistered());
    let bus: Arc<dyn telegraphy_bus::Bus> = rt.block_on(async {
        let bus: Arc<dyn telegraphy_bus::Bus> = match kind {
            BusKind::Redis => Arc::new(telegraphy_bus::redis::RedisBus::start(url, &options, inbound)?),
            BusKind::Amqp => Arc::new(telegraphy_bus::amqp::AmqpBus::start(url, &options, inbound)?),
        };
        let ticket = bus.add_interest(REALM, MatchPolicy::Exact, TOPIC);
        let started = tokio::time::Instant::now();
        while !bus.is_ready() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("the bus at {url} did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bus.interest_applied(ticket).await;
        anyhow::Ok(bus)
    })?;
    // The publisher runs to completion while this process is not polling:
    // the events wait in the broker and the socket buffers.
    run_publisher(url, &prefix, &exchange, events)?;
    rt.block_on(async {
        for n in 0..events {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(_)) => {}
                _ => bail!("only {n} of {events} events arrived"),
            }
        }
        bus.shutdown();
        anyhow::Ok(())
    })?;
    if let BusKind::Amqp = kind {
        // The test exchange is not left on the broker.
        rt.block_on(async {
            if let Ok(conn) = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
                if let Ok(ch) = conn.create_channel().await {
                    let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
                    let _ = ch.exchange_delete(format!("{exchange}.control").as_str().into(), Default::default()).await;
                }
                let _ = conn.close(200, "done".into()).await;
            }
        });
    }
    Ok(())
}

/// Runs the helper publisher to completion (while this process does not poll).
fn run_publisher(url: &str, prefix: &str, exchange: &str, events: u64) -> anyhow::Result<()> {
    let status = Command::new(helper_exe()?)
        .args(["publish", "--url", url, "--prefix", prefix, "--exchange", exchange, "--events", &events.to_string()])
        .status()?;
    if !status.success() {
        bail!("the publisher failed");
    }
    Ok(())
}

fn bus_ceiling_redis(rt: &tokio::runtime::Runtime, url: &str, events: u64) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let prefix = format!("instrc{}:", std::process::id());
    let channel = telegraphy_bus::redis::channel(&prefix, REALM, TOPIC);
    let client = redis::Client::open(url)?;
    let mut pubsub = rt.block_on(async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        anyhow::Ok(pubsub)
    })?;
    run_publisher(url, &prefix, "unused", events)?;
    rt.block_on(async {
        let mut stream = pubsub.on_message();
        for n in 0..events {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(msg)) => {
                    std::hint::black_box(msg.get_payload_bytes());
                }
                _ => bail!("only {n} of {events} events arrived"),
            }
        }
        anyhow::Ok(())
    })
}

fn bus_ceiling_amqp(rt: &tokio::runtime::Runtime, url: &str, events: u64) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let exchange = format!("telegraphy-instrc-{}", std::process::id());
    let (conn, channel, mut consumer) = rt.block_on(async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel.basic_qos(1000, BasicQosOptions::default()).await?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(exchange.as_str().into(), lapin::ExchangeKind::Topic, durable, FieldTable::default()).await?;
        let queue = channel
            .queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await?;
        let key = telegraphy_bus::amqp::routing_key(REALM, TOPIC);
        channel
            .queue_bind(queue.name().clone(), exchange.as_str().into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
        let consumer = channel.basic_consume(queue.name().clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
        anyhow::Ok((conn, channel, consumer))
    })?;
    run_publisher(url, "unused", &exchange, events)?;
    rt.block_on(async {
        // Acknowledged in batches of 64, as the adapter does.
        for n in 0..events {
            match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    std::hint::black_box(&delivery.data);
                    if (n + 1) % 64 == 0 || n + 1 == events {
                        channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true }).await?;
                    }
                }
                _ => bail!("only {n} of {events} events arrived"),
            }
        }
        let _ = channel.exchange_delete(exchange.as_str().into(), Default::default()).await;
        let _ = channel.exchange_delete(format!("{exchange}.control").as_str().into(), Default::default()).await;
        let _ = conn.close(200, "done".into()).await;
        anyhow::Ok(())
    })
}

async fn publish(url: String, prefix: String, exchange: String, events: u64) -> anyhow::Result<()> {
    let options = BusOptions { redis_key_prefix: prefix, amqp_exchange: exchange, ..BusOptions::default() };
    let publisher = telegraphy_publisher::Publisher::connect_with(&url, &options).await?;
    let mut n = 0;
    while n < events {
        let batch: Vec<_> = (n..(n + 256).min(events))
            .map(|i| telegraphy_publisher::Event::new(TOPIC).realm(REALM).arg(i).arg("a small payload, as model events carry"))
            .collect();
        n += batch.len() as u64;
        for answer in publisher.publish_batch(batch).await {
            answer?;
        }
    }
    publisher.close();
    Ok(())
}
