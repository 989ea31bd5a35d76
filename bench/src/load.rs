//! The load engine: opens subscriber sessions, publishes through a chosen
//! path at a fixed rate or as fast as a bounded window allows, and counts
//! what arrives (deliveries, latency from the payload's timestamp, losses).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use telegraphy_wamp::Serialization;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::wamp::{self, Auth, Incoming, Session};
use crate::ws::Target;

/// Ring of per-event delivery counters (sequence numbers modulo this).
pub const RING: usize = 1 << 16;
const HIST_SHARDS: usize = 32;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A latency histogram in microseconds (1 µs .. 10 min, 3 digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Counters every receiver updates.
pub struct Shared {
    /// EVENTs with our payload received.
    pub delivered: AtomicU64,
    /// Deliveries per sequence number (mod [`RING`]).
    pub counts: Vec<AtomicU32>,
    /// Latest delivery time (µs since epoch).
    pub last_us: AtomicU64,
    /// Sessions that ended while the benchmark ran.
    pub disconnects: AtomicU64,
    /// Payloads that did not decode.
    pub decode_errors: AtomicU64,
    /// Publishes that failed.
    pub publish_errors: AtomicU64,
    /// Woken after each batch of deliveries.
    pub progress: Notify,
    hist: Vec<Mutex<Histogram<u64>>>,
    /// Record latencies only for events published at or after this (µs); 0 = all.
    pub record_from_us: AtomicU64,
}

impl Shared {
    /// Fresh counters.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            delivered: AtomicU64::new(0),
            counts: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            last_us: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            progress: Notify::new(),
            hist: (0..HIST_SHARDS).map(|_| Mutex::new(histogram())).collect(),
            record_from_us: AtomicU64::new(0),
        })
    }

    /// Records one latency (µs) in histogram shard `shard`.
    pub fn record(&self, shard: usize, us: u64) {
        self.hist[shard % HIST_SHARDS].lock().expect("histogram").saturating_record(us);
    }

    /// Forgets every delivery and latency recorded so far.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.delivered.store(0, Ordering::Relaxed);
        for h in &self.hist {
            h.lock().expect("histogram").reset();
        }
    }

    /// All latencies recorded so far.
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = histogram();
        for s in &self.hist {
            h.add(&*s.lock().expect("histogram")).expect("same bounds");
        }
        h
    }
}

/// How clients connect.
#[derive(Clone)]
pub struct ClientSpec {
    /// Router endpoints; sessions are spread round-robin over them.
    pub targets: Vec<Target>,
    /// Serializer.
    pub ser: Serialization,
    /// Realm.
    pub realm: String,
    /// HS256 secret: sessions present JWT tickets when set.
    pub jwt_secret: Option<String>,
    /// Source addresses, round-robin.
    pub sources: Vec<IpAddr>,
    /// Handshakes in flight at once.
    pub concurrency: usize,
}

impl ClientSpec {
    /// Credentials for session `i` (role `user`), or for the publisher.
    pub fn auth(&self, i: usize, publisher: bool) -> anyhow::Result<Auth> {
        let Some(secret) = &self.jwt_secret else { return Ok(Auth::Anonymous) };
        let authid = if publisher { "bench-publisher".to_string() } else { format!("bench-user-{i}") };
        let role = if publisher { crate::router::PUBLISHER_ROLE } else { "user" };
        Ok(Auth::Ticket { token: mint(secret, &authid, role)?, authid })
    }

    /// Target and source address for session `i`.
    pub fn route(&self, i: usize) -> (&Target, Option<IpAddr>) {
        (&self.targets[i % self.targets.len()], self.sources.get(i % self.sources.len().max(1)).copied())
    }
}

/// Mints an HS256 token valid for two hours.
pub fn mint(secret: &str, sub: &str, role: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 7200;
    let claims = serde_json::json!({"sub": sub, "role": role, "exp": exp});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Result of opening many sessions.
pub struct Opened {
    /// Sessions, each with its index.
    pub sessions: Vec<(usize, Session)>,
    /// Sessions that could not be opened.
    pub failures: usize,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Time from TCP connect to WELCOME (and SUBSCRIBED when subscribing), µs.
    pub handshake: Histogram<u64>,
}

/// Opens sessions `range`, each subscribed to `topic(i)` when given, with
/// at most `spec.concurrency` handshakes in flight and, when `rate > 0`,
/// at most `rate` new sessions per second.
pub async fn open_sessions(
    spec: &ClientSpec,
    range: std::ops::Range<usize>,
    topic: Option<Arc<dyn Fn(usize) -> String + Send + Sync>>,
    rate: f64,
    timeout: Duration,
) -> anyhow::Result<Opened> {
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut set = JoinSet::new();
    let started = Instant::now();
    let count = range.len();
    for (k, i) in range.enumerate() {
        if rate > 0.0 {
            tokio::time::sleep_until((started + Duration::from_secs_f64(k as f64 / rate)).into()).await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (target, source) = spec.route(i);
        let (target, ser, realm) = (target.clone(), spec.ser, spec.realm.clone());
        let auth = spec.auth(i, false)?;
        let topic = topic.clone();
        set.spawn(async move {
            let t = Instant::now();
            let r = tokio::time::timeout(timeout, async {
                let mut s = wamp::open(&target, source, ser, &realm, &auth).await?;
                if let Some(topic) = topic {
                    s.subscribe(&topic(i)).await?;
                }
                anyhow::Ok(s)
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("handshake timed out after {timeout:?}")));
            drop(permit);
            (i, t.elapsed(), r)
        });
    }
    let mut sessions = Vec::with_capacity(count);
    let mut failures = 0;
    let mut first_error = None;
    let mut handshake = histogram();
    while let Some(joined) = set.join_next().await {
        let (i, took, r) = joined.context("a connect task panicked")?;
        match r {
            Ok(s) => {
                handshake.saturating_record(took.as_micros() as u64);
                sessions.push((i, s));
            }
            Err(e) => {
                failures += 1;
                if first_error.is_none() {
                    first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    Ok(Opened { sessions, failures, first_error, elapsed: started.elapsed(), handshake })
}

/// Reads a subscriber's socket until it ends: counts and times every
/// benchmark EVENT, answers pings.
pub async fn receive(mut s: Session, shared: Arc<Shared>, shard: usize) {
    let ser = s.ser;
    let shard = shard % HIST_SHARDS;
    let mut lat: Vec<u64> = Vec::with_capacity(64);
    loop {
        match s.ws.read_more().await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = now_us();
        lat.clear();
        let mut bad = 0;
        let record_from = shared.record_from_us.load(Ordering::Relaxed);
        let parsed = s.ws.parse(|_, payload| match wamp::decode_incoming(ser, payload) {
            Ok(Incoming::Event(e)) => {
                shared.counts[e.seq as usize % RING].fetch_add(1, Ordering::Relaxed);
                if e.ts_us >= record_from {
                    lat.push(now.saturating_sub(e.ts_us).max(1));
                } else {
                    lat.push(0);
                }
            }
            Ok(_) => {}
            Err(_) => bad += 1,
        });
        if parsed.is_err() {
            break;
        }
        if bad > 0 {
            shared.decode_errors.fetch_add(bad, Ordering::Relaxed);
        }
        if !lat.is_empty() {
            shared.delivered.fetch_add(lat.len() as u64, Ordering::Relaxed);
            shared.last_us.fetch_max(now, Ordering::Relaxed);
            {
                let mut h = shared.hist[shard].lock().expect("histogram");
                for &l in &lat {
                    if l > 0 {
                        h.saturating_record(l);
                    }
                }
            }
            shared.progress.notify_one();
        }
        if s.ws.flush_control().await.is_err() || s.ws.closed {
            break;
        }
    }
    shared.disconnects.fetch_add(1, Ordering::Relaxed);
}

/// Keeps an idle session alive (answers pings) until it ends.
pub async fn idle(mut s: Session, shared: Arc<Shared>) {
    loop {
        match s.ws.read_more().await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if s.ws.parse(|_, _| {}).is_err() || s.ws.flush_control().await.is_err() || s.ws.closed {
            break;
        }
    }
    shared.disconnects.fetch_add(1, Ordering::Relaxed);
}

/// Which way events enter the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishPath {
    /// A WAMP publisher session (works with any WAMP router).
    Wamp,
    /// `POST /publish` with an API key.
    Http,
    /// `telegraphy-publish --stdin` (onto the bus, or to the gateway's HTTP endpoint).
    Cli,
    /// Straight onto Redis with the Rust publisher library.
    Redis,
    /// Straight onto RabbitMQ with the Rust publisher library.
    Amqp,
}

/// Where non-WAMP publishers go.
#[derive(Clone, Default)]
pub struct PublishTargets {
    /// `http://…` of a gateway's public listener.
    pub http_url: Option<String>,
    /// API key for it.
    pub api_key: Option<String>,
    /// Bus URL (Redis or RabbitMQ) for bus publishers.
    pub bus_url: Option<String>,
    /// Redis key prefix / AMQP exchange of the gateways.
    pub namespace: String,
    /// `telegraphy-publish`.
    pub cli_bin: Option<PathBuf>,
}

/// A publisher on one of the [`PublishPath`]s.
pub enum Publisher {
    Wamp { session: Session, buf: Vec<u8> },
    Http { client: reqwest::Client, url: String, key: String, sem: Arc<Semaphore> },
    Cli { tx: Option<std::sync::mpsc::SyncSender<String>>, child: std::process::Child, writer: Option<std::thread::JoinHandle<()>> },
    Bus { publisher: telegraphy_publisher::Publisher, sem: Arc<Semaphore>, in_flight: usize },
}

const IN_FLIGHT: usize = 64;

/// Publishes in flight straight onto the bus. The publisher library
/// pipelines them on one connection; with 64 the publisher's rate was its
/// round trip to the broker (which grows with whatever else the load
/// generator does), not what the broker or the gateway can take.
fn bus_in_flight() -> usize {
    std::env::var("BENCH_BUS_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(IN_FLIGHT)
}

impl Publisher {
    /// Connects the publisher.
    pub async fn new(path: PublishPath, spec: &ClientSpec, to: &PublishTargets) -> anyhow::Result<Publisher> {
        Ok(match path {
            PublishPath::Wamp => {
                let (target, source) = spec.route(0);
                let session = wamp::open(target, source, spec.ser, &spec.realm, &spec.auth(0, true)?).await.context("publisher session")?;
                Publisher::Wamp { session, buf: Vec::with_capacity(1024) }
            }
            PublishPath::Http => Publisher::Http {
                client: reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).build()?,
                url: format!("{}/publish", to.http_url.clone().context("the http path needs a gateway (or --http-url)")?),
                key: to.api_key.clone().context("the http path needs an API key")?,
                sem: Arc::new(Semaphore::new(IN_FLIGHT)),
            },
            PublishPath::Cli => {
                let bin = to.cli_bin.clone().context("the cli path needs telegraphy-publish")?;
                let mut cmd = std::process::Command::new(bin);
                match &to.bus_url {
                    Some(bus) if !bus.starts_with("memory") => {
                        cmd.args(["--bus", bus, "--redis-key-prefix", &format!("{}:", to.namespace), "--amqp-exchange", &to.namespace]);
                    }
                    _ => {
                        cmd.args(["--gateway", to.http_url.as_deref().context("the cli path needs a gateway or a bus")?]);
                        cmd.env("TELEGRAPHY_API_KEY", to.api_key.clone().unwrap_or_default());
                    }
                }
                cmd.arg("--stdin").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
                let mut child = cmd.spawn().context("starting telegraphy-publish")?;
                let mut stdin = child.stdin.take().expect("piped");
                let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
                let writer = std::thread::spawn(move || {
                    use std::io::Write as _;
                    while let Ok(line) = rx.recv() {
                        if stdin.write_all(line.as_bytes()).is_err() {
                            break;
                        }
                        // Flush per line only when nothing else is waiting.
                        let mut more = false;
                        while let Ok(l) = rx.try_recv() {
                            more = true;
                            if stdin.write_all(l.as_bytes()).is_err() {
                                return;
                            }
                        }
                        let _ = more;
                        let _ = stdin.flush();
                    }
                });
                Publisher::Cli { tx: Some(tx), child, writer: Some(writer) }
            }
            PublishPath::Redis | PublishPath::Amqp => {
                let url = to.bus_url.clone().context("bus publishing needs a bus URL")?;
                let want = if path == PublishPath::Redis { "redis" } else { "amqp" };
                if !url.starts_with(want) {
                    bail!("publish path {want} needs a {want}:// bus, the gateways use {url}");
                }
                let options = telegraphy_bus::BusOptions {
                    redis_key_prefix: format!("{}:", to.namespace),
                    amqp_exchange: to.namespace.clone(),
                    connection_name: "telegraphy-bench".into(),
                    ..Default::default()
                };
                let publisher = telegraphy_publisher::Publisher::connect_with(&url, &options).await?;
                Publisher::Bus { publisher, sem: Arc::new(Semaphore::new(bus_in_flight())), in_flight: bus_in_flight() }
            }
        })
    }

    /// Publishes event `seq` (timestamped now) to `topic`.
    pub async fn publish(&mut self, topic: &str, seq: u64, pad: &Arc<str>, shared: &Arc<Shared>) -> anyhow::Result<()> {
        match self {
            Publisher::Wamp { session, buf } => {
                buf.clear();
                session.publish_frame(buf, topic, now_us(), seq, pad)?;
                session.ws.send_raw(buf).await?;
            }
            Publisher::Http { client, url, key, sem } => {
                let permit = sem.clone().acquire_owned().await?;
                let body = serde_json::json!({"topic": topic, "args": [now_us(), seq, &**pad]});
                let req = client.post(url.as_str()).bearer_auth(key.as_str()).json(&body);
                let shared = shared.clone();
                tokio::spawn(async move {
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {}
                        _ => {
                            shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
            Publisher::Cli { tx, .. } => {
                let line = format!("{}\n", serde_json::json!({"topic": topic, "args": [now_us(), seq, &**pad]}));
                let tx = tx.clone().context("the CLI stopped")?;
                tokio::task::spawn_blocking(move || tx.send(line)).await?.map_err(|_| anyhow::anyhow!("telegraphy-publish exited"))?;
            }
            Publisher::Bus { publisher, sem, .. } => {
                let permit = sem.clone().acquire_owned().await?;
                let event = telegraphy_publisher::Event::new(topic).arg(now_us()).arg(seq).arg(pad.to_string());
                let publisher = publisher.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    if publisher.publish(event).await.is_err() {
                        shared.publish_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    /// Waits for publishes in flight; ends the CLI.
    pub async fn finish(self) {
        match self {
            Publisher::Wamp { .. } => {}
            Publisher::Http { sem, .. } => {
                let _ = sem.acquire_many(IN_FLIGHT as u32).await;
            }
            Publisher::Bus { sem, in_flight, .. } => {
                let _ = sem.acquire_many(in_flight as u32).await;
            }
            Publisher::Cli { mut tx, mut child, mut writer } => {
                tx.take();
                tokio::task::spawn_blocking(move || {
                    if let Some(w) = writer.take() {
                        let _ = w.join();
                    }
                    let _ = child.wait();
                })
                .await
                .ok();
            }
        }
    }
}

/// The workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Subscriber sessions.
    pub subscribers: usize,
    /// Distinct topics; subscriber `i` takes topic `i % topics`, event `s` goes to topic `s % topics`.
    pub topics: usize,
    /// Publish path.
    pub path: PublishPath,
    /// Events per second; 0 = as fast as the window allows.
    pub rate: f64,
    /// How long to publish.
    pub duration: Duration,
    /// Events in flight (not yet delivered to all their subscribers) in max mode.
    pub window: usize,
    /// Padding bytes in each event.
    pub payload: usize,
    /// Latencies of events published in the first `warmup` are not recorded.
    pub warmup: Duration,
}

impl Workload {
    /// Topic name `k`.
    pub fn topic(&self, k: usize) -> String {
        if self.topics <= 1 {
            "bench.fanout".to_string()
        } else {
            format!("bench.t{k}")
        }
    }

    /// The default window: about 64k deliveries in flight.
    pub fn default_window(subscribers: usize, topics: usize) -> usize {
        let per_topic = (subscribers / topics.max(1)).max(1);
        (65536 / per_topic).clamp(2, 16384)
    }
}

/// What one load run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    /// Sessions that subscribed.
    pub subscribers: usize,
    /// Subscriber sessions that failed to open.
    pub connect_failures: usize,
    /// Time to open and subscribe every session, s.
    pub setup_s: f64,
    /// Events published.
    pub events: u64,
    /// Events per second published.
    pub events_per_s: f64,
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// expected − delivered (when positive).
    pub lost: u64,
    /// Delivered per second, from the first publish to the last delivery.
    pub delivered_per_s: f64,
    /// Seconds from the first publish to the last delivery.
    pub elapsed_s: f64,
    /// Latency percentiles, µs.
    pub latency_us: Latency,
    /// Subscriber sessions that ended during the run.
    pub disconnects: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Window waits that gave up (deliveries missing after 2 s).
    pub window_timeouts: u64,
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// From a histogram.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Subscribes, then publishes and measures. `on_ready` runs once every
/// subscriber is in place (to take the "before" sample).
pub async fn run(spec: &ClientSpec, w: &Workload, to: &PublishTargets, mut on_phase: impl FnMut(&str)) -> anyhow::Result<LoadResult> {
    let shared = Shared::new();
    let topic_w = w.clone();
    let opened =
        open_sessions(spec, 0..w.subscribers, Some(Arc::new(move |i| topic_w.topic(i % topic_w.topics.max(1)))), 0.0, Duration::from_secs(60))
            .await?;
    if opened.failures > 0 {
        eprintln!(
            "warning: {} of {} subscribers failed to open; first error: {}",
            opened.failures,
            w.subscribers,
            opened.first_error.as_deref().unwrap_or("")
        );
    }
    if opened.sessions.is_empty() {
        bail!("no subscriber could connect: {}", opened.first_error.unwrap_or_default());
    }
    // Expected deliveries per topic, from the sessions that did subscribe.
    let t = w.topics.max(1);
    let mut subs_per_topic = vec![0u32; t];
    for (i, _) in &opened.sessions {
        subs_per_topic[i % t] += 1;
    }
    let subscribers = opened.sessions.len();
    let setup_s = opened.elapsed.as_secs_f64();
    let mut receivers = JoinSet::new();
    for (i, s) in opened.sessions {
        receivers.spawn(receive(s, shared.clone(), i));
    }
    let result = measure(spec, w, to, &shared, &subs_per_topic, &mut on_phase).await;
    receivers.abort_all();
    while receivers.join_next().await.is_some() {}
    Ok(LoadResult { subscribers, connect_failures: opened.failures, setup_s, ..result? })
}

/// The measuring half of [`run`], for any receivers that update `shared`
/// (subscriber sessions, or a bare broker consumer): publishes the
/// workload (windowed by what `shared` counted for each event, expecting
/// `subs_per_topic[k]` deliveries of an event to topic `k`), waits for
/// what is in flight, and reports.
pub async fn measure(
    spec: &ClientSpec,
    w: &Workload,
    to: &PublishTargets,
    shared: &Arc<Shared>,
    subs_per_topic: &[u32],
    on_phase: &mut impl FnMut(&str),
) -> anyhow::Result<LoadResult> {
    let t = subs_per_topic.len().max(1);
    let subscribers = subs_per_topic.iter().map(|&n| n as usize).sum::<usize>();
    let mut publisher = Publisher::new(w.path, spec, to).await?;
    let topics: Vec<String> = (0..t).map(|k| w.topic(k)).collect();
    let shared = shared.clone();
    let pad: Arc<str> = Arc::from("x".repeat(w.payload));
    // Let the sockets settle (SUBSCRIBED is sent before the router routes on some peers).
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_phase("publish");
    let window = if w.window == 0 { Workload::default_window(subscribers, t) } else { w.window }.min(RING / 2);
    let started = Instant::now();
    let first_us = now_us();
    shared.record_from_us.store(first_us + w.warmup.as_micros() as u64, Ordering::Relaxed);
    let mut seq: u64 = 0;
    let mut expected: u64 = 0;
    let mut window_timeouts = 0u64;
    while started.elapsed() < w.duration {
        if w.rate > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / w.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        } else if seq >= window as u64 {
            let k = seq - window as u64;
            let want = subs_per_topic[k as usize % t];
            let slot = &shared.counts[k as usize % RING];
            let wait_started = Instant::now();
            while slot.load(Ordering::Relaxed) < want {
                if wait_started.elapsed() > Duration::from_secs(2) {
                    window_timeouts += 1;
                    break;
                }
                tokio::select! {
                    _ = shared.progress.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
        let k = seq as usize % t;
        shared.counts[seq as usize % RING].store(0, Ordering::Relaxed);
        publisher.publish(&topics[k], seq, &pad, &shared).await?;
        expected += u64::from(subs_per_topic[k]);
        seq += 1;
    }
    let publish_elapsed = started.elapsed();
    publisher.finish().await;
    on_phase("drain");
    // Wait for what is still in flight: until everything arrived, or no progress for 3 s.
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut still = Instant::now();
    while shared.delivered.load(Ordering::Relaxed) < expected && still.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = shared.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still = Instant::now();
        }
    }
    on_phase("done");
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let last_us = shared.last_us.load(Ordering::Relaxed).max(first_us + 1);
    let elapsed_s = (last_us - first_us) as f64 / 1e6;
    let disconnects = shared.disconnects.load(Ordering::Relaxed);
    Ok(LoadResult {
        subscribers,
        connect_failures: 0,
        setup_s: 0.0,
        events: seq,
        events_per_s: seq as f64 / publish_elapsed.as_secs_f64(),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        delivered_per_s: delivered as f64 / elapsed_s,
        elapsed_s,
        latency_us: Latency::of(&shared.latency()),
        disconnects,
        publish_errors: shared.publish_errors.load(Ordering::Relaxed),
        window_timeouts,
    })
}
