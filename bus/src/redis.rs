//! `redis://host:port/db`: Redis pub/sub.
//!
//! * Each event is PUBLISHed on the channel `{key_prefix}{realm}:{topic}`.
//! * A node subscribes only to what its sessions need: SUBSCRIBE for exact
//!   subscriptions, PSUBSCRIBE for prefix (`…:a.b*`) and wildcard (`…:a.*.c`)
//!   ones. Redis glob patterns are wider than WAMP's (a `*` also matches
//!   dots); the node re-checks every topic, so that only costs traffic.
//! * When a channel and a pattern (or two patterns) match one event, Redis
//!   delivers it once per match; the adapter drops the copies by publication
//!   id so each node sees each event once.
//! * One task owns the subscriber connection: it reconnects with capped,
//!   jittered backoff and re-subscribes the node's whole interest set.
//! * The PUBLISH connection is watched too (a PING every [`PING_EVERY`], and
//!   at once after a publish failed): when it breaks, the session ends and the
//!   same task reconnects. A publish-only client ([`RedisBus::connect_publisher`])
//!   runs that task with only the PUBLISH connection.
//! * Every publish runs [`PUBLISH_SCRIPT`] (a Lua script): it gives events
//!   of history topics their position, keeps them in a stream per topic
//!   and retained events in a list per topic, and PUBLISHes, in one atomic
//!   step, whoever publishes. Nodes write the history topics into Redis
//!   (`{key_prefix}history`) so that publishers need no configuration;
//!   [`RedisStore`] reads the streams back (see `docs/bus.md`).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::MultiplexedConnection;
use telegraphy_wamp::{Id, MatchPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::history::{keepable, Page, StoreError};
use crate::interest::{Interest, Interests};
use crate::supervisor::{Client, SessionError, Supervisor, Watched, DRAIN_AFTER_FAILURE};
use crate::{redact, Bus, BusError, BusOptions, Delivery, Envelope, EventStore, HistoryConfig, Inbound, Position, PublishError, Ticket};

/// The Lua script every publish runs (history, retention, PUBLISH).
pub const PUBLISH_SCRIPT: &str = include_str!("redis/publish.lua");

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT));

/// The keys of one topic: history settings, stream, log meta, retained list, channel.
fn keys(prefix: &str, realm: &str, topic: &str) -> [String; 5] {
    [
        format!("{prefix}history"),
        format!("{prefix}h:{realm}:{topic}"),
        format!("{prefix}hm:{realm}:{topic}"),
        format!("{prefix}r:{realm}:{topic}"),
        channel(prefix, realm, topic),
    ]
}

/// The script call that publishes `event`.
fn invocation(prefix: &str, event: &Envelope) -> redis::ScriptInvocation<'static> {
    let mut call = SCRIPT.prepare_invoke();
    for key in keys(prefix, &event.realm, &event.topic) {
        call.key(key);
    }
    call.arg(event.encode()).arg(&event.topic).arg(u8::from(event.retain)).arg(u8::from(keepable(event))).arg(fastrand::u16(1..));
    call
}

/// The publication id subscribers get, from the script's answer.
fn published_id(event: &Envelope, epoch: u16, offset: u64) -> Id {
    if offset > 0 && epoch > 0 {
        Position { epoch, offset }.publication()
    } else {
        event.publication
    }
}

/// How many recent publication ids the duplicate filter remembers. Copies
/// of one event arrive back to back, so a small window is plenty.
const DEDUP_WINDOW: usize = 4096;
/// How often the PUBLISH connection is checked. A connection Redis closed
/// fails its next command at once, so this bounds how long a bus that lost
/// only that connection (a publish-only client, whose broker restarted)
/// still says it is ready.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The Redis bus.
pub struct RedisBus {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    url: String,
    options: BusOptions,
    interests: Interests,
    /// The connection PUBLISH goes through; `None` while disconnected.
    publisher: Mutex<Option<MultiplexedConnection>>,
    /// Wakes the session's check of the PUBLISH connection: a publish failed.
    check_now: Arc<Notify>,
    stop: CancellationToken,
    metrics: crate::BusMetrics,
}

/// A Redis subscription: a channel or a glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Sub {
    Channel(String),
    Pattern(String),
}

/// The channel an event of `realm` / `topic` is published on.
pub fn channel(prefix: &str, realm: &str, topic: &str) -> String {
    format!("{prefix}{realm}:{topic}")
}

fn glob_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn subscription_for(prefix: &str, i: &Interest) -> Sub {
    match i.policy {
        MatchPolicy::Exact => Sub::Channel(channel(prefix, &i.realm, &i.pattern)),
        MatchPolicy::Prefix => {
            let mut p = String::new();
            glob_escape(&channel(prefix, &i.realm, &i.pattern), &mut p);
            p.push('*');
            Sub::Pattern(p)
        }
        MatchPolicy::Wildcard => {
            let mut p = String::new();
            glob_escape(&format!("{prefix}{}:", i.realm), &mut p);
            for (n, component) in i.pattern.split('.').enumerate() {
                if n > 0 {
                    p.push('.');
                }
                if component.is_empty() {
                    p.push('*');
                } else {
                    glob_escape(component, &mut p);
                }
            }
            Sub::Pattern(p)
        }
    }
}

/// What a PUBLISH that `receivers` subscriptions got means for the caller.
fn answer(event: &Envelope, channel: &str, receivers: i64, delivery: Delivery) -> Result<(), PublishError> {
    if delivery == Delivery::Subscribed && receivers == 0 {
        return Err(PublishError::NoSubscriber(format!("no node is subscribed to `{}` (Redis channel {channel})", event.topic)));
    }
    Ok(())
}

/// Timeouts for the PUBLISH connection: a broker that stops answering
/// fails the publish (the caller reports it) instead of hanging it.
fn connection_config(options: &BusOptions) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_connection_timeout(options.connect_timeout).set_response_timeout(options.connect_timeout)
}

/// A client for `url`; a `rediss://` one trusts `tls.ca_pem` besides the
/// system's roots and shows the client certificate when one is set.
fn open(url: &str, tls: &crate::BusTls) -> Result<redis::Client, BusError> {
    let invalid = |e: redis::RedisError| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url)));
    if !crate::is_tls_url(url) {
        return redis::Client::open(url).map_err(invalid);
    }
    crate::install_crypto_provider();
    let client_tls = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        _ => None,
    };
    redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert: tls.ca_pem.clone() }).map_err(invalid)
}

fn connect_error(url: &str, e: redis::RedisError) -> BusError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        BusError::Auth { url: redact(url), source: e.into() }
    } else if crate::is_certificate_error(&e) {
        BusError::Tls { url: redact(url), source: e.into() }
    } else {
        BusError::Connect { url: redact(url), source: e.into() }
    }
}

/// The event store of a Redis bus: the streams and lists the publish
/// script writes, read through the bus's PUBLISH connection.
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl RedisStore {
    fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let s = &self.shared;
        let conn = s.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
        conn.ok_or_else(|| StoreError::Unavailable(format!("not connected to Redis at {}", s.url)))
    }

    fn unavailable(&self, e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(format!("Redis at {}: {e}", self.shared.url))
    }

    async fn read_now(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> Result<Page, StoreError> {
        let s = &self.shared;
        let mut conn = self.connection()?;
        let [_, stream, meta, _, _] = keys(&s.options.redis_key_prefix, realm, topic);
        let (epoch, head): (Option<u16>, Option<u64>) =
            redis::cmd("HMGET").arg(&meta).arg("epoch").arg("head").query_async(&mut conn).await.map_err(|e| self.unavailable(e))?;
        let (Some(epoch), Some(head)) = (epoch, head) else { return Ok(Page::default()) };
        let mut page = Page { epoch: Some(epoch), first: head + 1, head, events: Vec::new() };
        type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;
        let entries: Entries = match after {
            Some(p) if p.epoch != epoch => Ok(Vec::new()),
            Some(p) => {
                redis::cmd("XRANGE").arg(&stream).arg(format!("(0-{}", p.offset)).arg("+").arg("COUNT").arg(limit).query_async(&mut conn).await
            }
            None => redis::cmd("XREVRANGE").arg(&stream).arg("+").arg("-").arg("COUNT").arg(limit).query_async(&mut conn).await,
        }
        .map_err(|e| self.unavailable(e))?;
        let oldest_kept = crate::now_us().saturating_sub(s.options.history.ttl.as_micros() as u64);
        for (_, fields) in entries {
            let Some((_, bytes)) = fields.into_iter().find(|(k, _)| k == "e") else { continue };
            match Envelope::decode(&bytes) {
                Ok(e) if e.published_at_us >= oldest_kept => page.events.push(e),
                Ok(_) => {}
                Err(e) => tracing::warn!(topic, error = %e, "an event kept in Redis is not readable; skipped"),
            }
        }
        if after.is_none() {
            page.events.reverse();
        }
        // What is kept starts at the oldest readable event within its ttl
        // (with `after`: the first one after it, which a resume needs).
        match (after, page.events.first().and_then(|e| e.position)) {
            (Some(p), Some(first)) if p.epoch == epoch => page.first = first.offset,
            (None, Some(first)) => page.first = first.offset,
            _ => {}
        }
        Ok(page)
    }

    async fn retained_now(&self, realm: &str, topic: &str) -> Result<Vec<Envelope>, StoreError> {
        let mut conn = self.connection()?;
        let [_, _, _, list, _] = keys(&self.shared.options.redis_key_prefix, realm, topic);
        let raw: Vec<Vec<u8>> = redis::cmd("LRANGE").arg(&list).arg(0).arg(3).query_async(&mut conn).await.map_err(|e| self.unavailable(e))?;
        Ok(raw.iter().filter_map(|b| Envelope::decode(b).ok()).collect())
    }
}

impl RedisStore {
    async fn head_now(&self, realm: &str, topic: &str) -> Result<Option<Position>, StoreError> {
        let s = &self.shared;
        if !s.options.history.keeps(topic) {
            return Ok(None);
        }
        let mut conn = self.connection()?;
        let [_, _, meta, _, _] = keys(&s.options.redis_key_prefix, realm, topic);
        // Start the log if there is none (the publish script keeps an
        // existing one), and keep it for `ttl` like a published event would.
        let (epoch, head): (Option<u16>, Option<u64>) = redis::pipe()
            .cmd("HSETNX")
            .arg(&meta)
            .arg("epoch")
            .arg(fastrand::u16(1..))
            .ignore()
            .cmd("HSETNX")
            .arg(&meta)
            .arg("head")
            .arg(0)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&meta)
            .arg(s.options.history.ttl.as_millis() as u64)
            .ignore()
            .cmd("HMGET")
            .arg(&meta)
            .arg("epoch")
            .arg("head")
            .query_async::<((Option<u16>, Option<u64>),)>(&mut conn)
            .await
            .map(|(r,)| r)
            .map_err(|e| self.unavailable(e))?;
        Ok(epoch.zip(head).map(|(epoch, offset)| Position { epoch, offset }))
    }
}

impl EventStore for RedisStore {
    fn head(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Option<Position>, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move { self.head_now(&realm, &topic).await }.boxed()
    }

    fn read(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> BoxFuture<'_, Result<Page, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move { self.read_now(&realm, &topic, after, limit).await }.boxed()
    }

    fn retained(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Vec<Envelope>, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move { self.retained_now(&realm, &topic).await }.boxed()
    }

    fn config(&self) -> &HistoryConfig {
        &self.shared.options.history
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn live_path_may_skip(&self) -> bool {
        true
    }
}

impl RedisBus {
    /// The event store beside this bus.
    pub fn store(&self) -> RedisStore {
        RedisStore { shared: self.shared.clone() }
    }

    /// A node's Redis bus; connects (and reconnects) in the background.
    pub fn start(url: &str, options: &BusOptions, inbound: Inbound) -> Result<RedisBus, BusError> {
        let shared = Arc::new(Shared::new(open(url, &options.tls)?, url, options, inbound.metrics.clone()));
        let supervisor = Supervisor::new("Redis", Client::Node, shared.url.clone(), options.reconnect_max_delay, probe(&shared.client));
        tokio::spawn(run(shared.clone(), Some(inbound), supervisor, None));
        Ok(RedisBus { shared })
    }

    /// A publish-only Redis bus, connected now: fails fast when Redis cannot
    /// be reached within `connect_timeout`. From then on it is supervised
    /// like a node's bus: not ready while Redis is gone, reconnected by itself.
    pub async fn connect_publisher(url: &str, options: &BusOptions) -> Result<RedisBus, BusError> {
        let client = open(url, &options.tls)?;
        let conn = tokio::time::timeout(options.connect_timeout, client.get_multiplexed_async_connection_with_config(&connection_config(options)))
            .await
            .map_err(|_| BusError::Connect { url: redact(url), source: crate::ConnectTimeout(options.connect_timeout).into() })?
            .map_err(|e| connect_error(url, e))?;
        let shared = Arc::new(Shared::new(client, url, options, crate::BusMetrics::unregistered()));
        let mut supervisor = Supervisor::new("Redis", Client::Publisher, shared.url.clone(), options.reconnect_max_delay, probe(&shared.client));
        // Ready before this returns: the first session is this connection.
        *shared.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        supervisor.up(&shared.interests, &shared.metrics, 0);
        tokio::spawn(run(shared.clone(), None, supervisor, Some(conn)));
        Ok(RedisBus { shared })
    }
}

impl Shared {
    fn new(client: redis::Client, url: &str, options: &BusOptions, metrics: crate::BusMetrics) -> Shared {
        Shared {
            client,
            url: redact(url),
            options: options.clone(),
            interests: Interests::default(),
            publisher: Mutex::new(None),
            check_now: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            metrics,
        }
    }

    /// A PUBLISH failed: counts it, and has the session check its connection now.
    fn failed(&self, n: u64) {
        self.metrics.publish_errors.inc_by(n);
        self.check_now.notify_one();
    }
}

impl Bus for RedisBus {
    fn publish(&self, event: Envelope, delivery: Delivery) -> BoxFuture<'_, Result<Id, PublishError>> {
        async move {
            let s = &self.shared;
            let conn = s.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(mut conn) = conn else {
                s.metrics.publish_errors.inc();
                return Err(PublishError::Unavailable(format!("not connected to Redis at {}", s.url)));
            };
            let name = channel(&s.options.redis_key_prefix, &event.realm, &event.topic);
            let result: redis::RedisResult<(i64, u16, u64)> = invocation(&s.options.redis_key_prefix, &event).invoke_async(&mut conn).await;
            // Redis answers how many subscriptions (channels and patterns,
            // of every node) got the event, and its position if kept.
            let (receivers, epoch, offset) = result.map_err(|e| {
                s.failed(1);
                PublishError::Unavailable(format!("Redis at {} did not take the event: {e}", s.url))
            })?;
            answer(&event, &name, receivers, delivery).map(|()| published_id(&event, epoch, offset))
        }
        .boxed()
    }

    /// One pipeline: every PUBLISH in order, one round trip.
    fn publish_batch(&self, events: Vec<Envelope>, delivery: Delivery) -> BoxFuture<'_, Vec<Result<Id, PublishError>>> {
        async move {
            let s = &self.shared;
            let n = events.len();
            let conn = s.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(mut conn) = conn else {
                s.metrics.publish_errors.inc_by(n as u64);
                return (0..n).map(|_| Err(PublishError::Unavailable(format!("not connected to Redis at {}", s.url)))).collect();
            };
            let mut pipe = redis::pipe();
            // Loading a loaded script is cheap; it makes the batch safe
            // after a Redis restart or a SCRIPT FLUSH.
            pipe.load_script(&SCRIPT).ignore();
            let calls: Vec<_> = events.iter().map(|e| invocation(&s.options.redis_key_prefix, e)).collect();
            for call in &calls {
                pipe.invoke_script(call);
            }
            let answers: redis::RedisResult<Vec<(i64, u16, u64)>> = pipe.query_async(&mut conn).await;
            match answers {
                Ok(counts) if counts.len() == n => events
                    .iter()
                    .zip(counts)
                    .map(|(event, (receivers, epoch, offset))| {
                        answer(event, &channel(&s.options.redis_key_prefix, &event.realm, &event.topic), receivers, delivery)
                            .map(|()| published_id(event, epoch, offset))
                    })
                    .collect(),
                other => {
                    s.failed(n as u64);
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(c) => format!("{} answers to {n} commands", c.len()),
                    };
                    (0..n).map(|_| Err(PublishError::Unavailable(format!("Redis at {} did not take the event: {why}", s.url)))).collect()
                }
            }
        }
        .boxed()
    }

    fn add_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) -> Ticket {
        self.shared.interests.add(Interest { realm: realm.into(), policy, pattern: pattern.into() })
    }

    fn remove_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) {
        self.shared.interests.remove(&Interest { realm: realm.into(), policy, pattern: pattern.into() })
    }

    fn interest_applied(&self, ticket: Ticket) -> BoxFuture<'_, ()> {
        self.shared.interests.wait_applied(ticket).boxed()
    }

    fn is_ready(&self) -> bool {
        // Not after shutdown(), whatever a session still finishing reports.
        self.shared.interests.is_connected() && !self.shared.stop.is_cancelled()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn shutdown(&self) {
        self.shared.stop.cancel();
        // Publishes fail from now on, not once the task noticed.
        *self.shared.publisher.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Redis's TCP address, probed by the supervisor while Redis refuses connections.
fn probe(client: &redis::Client) -> Option<(String, u16)> {
    match &client.get_connection_info().addr {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

/// The adapter task: connect, (a node:) reconcile and consume; on loss,
/// back off and start over. `inbound` is `None` for a publish-only client,
/// whose first session is `installed`, the connection it was created with.
async fn run(s: Arc<Shared>, inbound: Option<Inbound>, mut supervisor: Supervisor, mut installed: Option<MultiplexedConnection>) {
    let mut more = !s.stop.is_cancelled();
    while more {
        let outcome = match &inbound {
            Some(inbound) => node_session(&s, inbound, &mut supervisor).await,
            None => publisher_session(&s, &mut supervisor, installed.take()).await,
        };
        *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = None;
        more = supervisor.session_ended(outcome, &s.stop, &s.interests, &s.metrics).await;
    }
}

/// Tells publishers which topics keep history: the publish script reads
/// it. Every node writes its own settings when it connects (the cluster's
/// nodes share one configuration; the last one to connect wins).
async fn write_history_settings(options: &BusOptions, conn: &mut MultiplexedConnection) -> Result<(), SessionError> {
    let h = &options.history;
    let topics: Vec<String> = h.topics.0.iter().map(ToString::to_string).collect();
    redis::cmd("HSET")
        .arg(format!("{}history", options.redis_key_prefix))
        .arg("topics")
        .arg(topics.join("\n"))
        .arg("size")
        .arg(h.size)
        .arg("ttl_ms")
        .arg(h.ttl.as_millis() as u64)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Opens the PUBLISH connection.
async fn connect_publishing(s: &Shared) -> Result<MultiplexedConnection, SessionError> {
    let timeout = s.options.connect_timeout;
    Ok(tokio::time::timeout(timeout, s.client.get_multiplexed_async_connection_with_config(&connection_config(&s.options)))
        .await
        .map_err(|_| SessionError::Timeout(timeout))??)
}

/// Resolves, with the reason, once the PUBLISH connection stopped
/// answering: checked every [`PING_EVERY`], and at once after a publish
/// failed (`check_now`).
async fn check(check_now: Arc<Notify>, mut conn: MultiplexedConnection) -> SessionError {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PING_EVERY) => {}
            _ = check_now.notified() => {}
        }
        if let Err(e) = redis::cmd("PING").query_async::<()>(&mut conn).await {
            return SessionError::RedisPublishing(e);
        }
    }
}

/// A publish-only client's session: the PUBLISH connection, installed and
/// watched until it fails or the bus stops.
async fn publisher_session(s: &Shared, supervisor: &mut Supervisor, installed: Option<MultiplexedConnection>) -> Result<(), SessionError> {
    let conn = match installed {
        Some(conn) => conn,
        None => {
            let conn = connect_publishing(s).await?;
            *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            supervisor.up(&s.interests, &s.metrics, 0);
            conn
        }
    };
    let watched = Watched::spawn(&s.stop, check(s.check_now.clone(), conn));
    watched.ended().cancelled().await;
    watched.outcome()
}

/// A node's session: subscribe to every interest, then install the PUBLISH
/// connection and consume until either connection fails or the bus stops.
async fn node_session(s: &Shared, inbound: &Inbound, supervisor: &mut Supervisor) -> Result<(), SessionError> {
    let timeout = s.options.connect_timeout;
    let pubsub = tokio::time::timeout(timeout, s.client.get_async_pubsub()).await.map_err(|_| SessionError::Timeout(timeout))??;
    let mut conn = connect_publishing(s).await?;
    write_history_settings(&s.options, &mut conn).await?;
    let watched = Watched::spawn(&s.stop, check(s.check_now.clone(), conn.clone()));
    let (mut sink, mut stream) = pubsub.split();
    // Publishes go through `conn` only once every interest is subscribed
    // again (below): until then they fail fast, as the node is not ready.
    let mut conn = Some(conn);
    let mut applied: HashSet<Sub> = HashSet::new();
    let mut applied_version = None;
    let mut seen = Recent::default();
    let mut connected = false;
    loop {
        if applied_version != Some(s.interests.version()) {
            let (version, desired) = s.interests.snapshot();
            let want: HashSet<Sub> = desired.iter().map(|i| subscription_for(&s.options.redis_key_prefix, i)).collect();
            for sub in want.difference(&applied) {
                match sub {
                    Sub::Channel(c) => sink.subscribe(c).await,
                    Sub::Pattern(p) => sink.psubscribe(p).await,
                }?;
            }
            for sub in applied.difference(&want) {
                match sub {
                    Sub::Channel(c) => sink.unsubscribe(c).await,
                    Sub::Pattern(p) => sink.punsubscribe(p).await,
                }?;
            }
            applied = want;
            applied_version = Some(version);
            // The node's own inbox and the all-nodes topic are not its sessions' interests.
            let control = desired.iter().filter(|i| i.realm == crate::control::CONTROL_REALM).count();
            s.metrics.interests.set(applied.len().saturating_sub(control) as i64);
            s.interests.mark_applied(version);
        }
        if !connected {
            connected = true;
            *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = conn.take();
            supervisor.up(&s.interests, &s.metrics, applied.len());
            inbound.session_started();
        }
        tokio::select! {
            _ = watched.ended().cancelled() => {
                let outcome = watched.outcome();
                if outcome.is_err() {
                    // The PUBLISH connection broke (Redis went away, most
                    // often): what the subscriber connection has already
                    // received was published before, and may have been
                    // acknowledged; deliver it before starting over.
                    let until = tokio::time::Instant::now() + DRAIN_AFTER_FAILURE;
                    while let Ok(Some(msg)) = tokio::time::timeout_at(until, stream.next()).await {
                        if take(s, inbound, &mut seen, &msg).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                return outcome;
            }
            _ = s.interests.changed() => {}
            msg = stream.next() => {
                let Some(msg) = msg else { return Err(SessionError::RedisSubscriberClosed) };
                if take(s, inbound, &mut seen, &msg).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Hands one received message to the node, unless it is a copy of one just
/// delivered (a topic matched by two subscriptions of the node arrives twice).
async fn take(s: &Shared, inbound: &Inbound, seen: &mut Recent, msg: &redis::Msg) -> Result<(), crate::inbound::Closed> {
    let Some(event) = inbound.decode(msg.get_payload_bytes()) else { return Ok(()) };
    if !seen.first_time(event.publication) {
        s.metrics.duplicates.inc();
        return Ok(());
    }
    inbound.deliver(event).await
}

/// The last [`DEDUP_WINDOW`] publication ids a session delivered.
#[derive(Default)]
struct Recent {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Recent {
    /// Remembers `id`; false when it was already remembered.
    fn first_time(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() == DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(policy: MatchPolicy, p: &str) -> Interest {
        Interest { realm: "realm1".into(), policy, pattern: p.into() }
    }

    #[test]
    fn channel_and_pattern_names() {
        let pre = "tg:";
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Exact, "a.b")), Sub::Channel("tg:realm1:a.b".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Prefix, "a.b")), Sub::Pattern("tg:realm1:a.b*".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Wildcard, "a..c")), Sub::Pattern("tg:realm1:a.*.c".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Wildcard, ".b.")), Sub::Pattern("tg:realm1:*.b.*".into()));
        // Glob characters in URIs are escaped, never interpreted.
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Prefix, "a[1]?")), Sub::Pattern("tg:realm1:a\\[1\\]\\?*".into()));
    }
}
