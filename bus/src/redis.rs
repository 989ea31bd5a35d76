//! `redis://host:port/db`: Redis pub/sub; also a Redis Cluster
//! (`redis+cluster://`, sharded pub/sub) and a primary found through
//! Sentinel (`redis+sentinel://`), see [`target`] and [`cluster`].
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
//! * On a Redis Cluster a topic's keys and channel share one hash tag, exact
//!   subscriptions are sharded (SSUBSCRIBE on one connection per primary),
//!   patterns go through classic pub/sub and a registry ([`cluster`]), and
//!   the topology is checked every [`TOPOLOGY_EVERY`]: a slot that moved
//!   or a primary that failed over starts the session over. Order holds per
//!   topic (different topics live on different shards).
//! * Through Sentinel, every session asks the Sentinels for the primary
//!   first, and the PUBLISH connection's check asks `ROLE`: a primary that
//!   was demoted ends the session.

mod cluster;
mod target;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use redis::aio::MultiplexedConnection;
use telegraphy_wamp::{Id, MatchPolicy};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::history::{keepable, Page, StoreError};
use crate::interest::{Interest, Interests};
use crate::supervisor::{Client, SessionError, Supervisor, Watched, DRAIN_AFTER_FAILURE};
use crate::{redact, Bus, BusError, BusOptions, Delivery, Envelope, EventStore, HistoryConfig, Inbound, Position, PublishError, Ticket};
use cluster::{Addr, SlotMap};
use target::Target;

/// The Lua script every publish runs (history, retention, PUBLISH).
pub const PUBLISH_SCRIPT: &str = include_str!("redis/publish.lua");

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT));

/// The keys of one topic: history settings, stream, log meta, retained list,
/// channel. On a Redis Cluster they share the hash tag `{realm:topic}` (one
/// shard holds them all), the first is only declared (publishers pass the
/// settings, which live in another slot) and the channel is a shard channel.
fn keys(prefix: &str, realm: &str, topic: &str, cluster: bool) -> [String; 5] {
    if cluster {
        let tag = format!("{{{realm}:{topic}}}");
        return [
            format!("{prefix}history:{tag}"),
            format!("{prefix}h:{tag}"),
            format!("{prefix}hm:{tag}"),
            format!("{prefix}r:{tag}"),
            format!("{prefix}{tag}"),
        ];
    }
    [
        format!("{prefix}history"),
        format!("{prefix}h:{realm}:{topic}"),
        format!("{prefix}hm:{realm}:{topic}"),
        format!("{prefix}r:{realm}:{topic}"),
        channel(prefix, realm, topic),
    ]
}

/// What a publisher on a Redis Cluster passes the script besides the event:
/// the history settings, and what the pattern registry says.
struct View {
    read_at: Instant,
    topics: String,
    size: String,
    ttl_ms: String,
    patterns: Vec<Interest>,
}

/// The script call that publishes `event`, and whether (on a cluster) it
/// also goes to classic pub/sub for a node's pattern.
fn invocation(prefix: &str, event: &Envelope, cluster: Option<&View>) -> (redis::ScriptInvocation<'static>, bool) {
    let mut call = SCRIPT.prepare_invoke();
    for key in keys(prefix, &event.realm, &event.topic, cluster.is_some()) {
        call.key(key);
    }
    call.arg(event.encode()).arg(&event.topic).arg(u8::from(event.retain)).arg(u8::from(keepable(event))).arg(fastrand::u16(1..));
    let mut matched = false;
    if let Some(view) = cluster {
        matched = cluster::pattern_matches(&view.patterns, &event.realm, &event.topic);
        let classic = if matched { channel(prefix, &event.realm, &event.topic) } else { String::new() };
        call.arg(&view.topics).arg(&view.size).arg(&view.ttl_ms).arg(classic);
    }
    (call, matched)
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
/// Most push messages (events) a node's subscriber connections hold for it
/// while it is busy, whatever their size ([`BusOptions::redis_buffer_bytes`]
/// bounds their bytes); beyond either the node starts its session over, as
/// Redis itself drops a subscriber past `client-output-buffer-limit pubsub`.
pub const PUSH_QUEUE: usize = 1 << 20;
/// Most push messages a session handles in a row before it looks at its
/// other duties (interest changes, the PUBLISH connection's health).
const PUSH_BATCH: usize = 256;
/// How often a node on a Redis Cluster checks which primary serves the
/// slots of its shard channels (a slot moved, a replica took over).
pub const TOPOLOGY_EVERY: Duration = Duration::from_secs(2);

/// The connection commands go through: to one server, or routed across a
/// Redis Cluster by redis-rs (MOVED, ASK, failover).
#[derive(Clone)]
enum Conn {
    One(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a redis::Pipeline, offset: usize, count: usize) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis bus.
pub struct RedisBus {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    /// Routes commands across a Redis Cluster (`None` otherwise).
    routing: Option<redis::cluster::ClusterClient>,
    url: String,
    options: BusOptions,
    interests: Interests,
    /// The connection PUBLISH goes through; `None` while disconnected.
    publisher: Mutex<Option<Conn>>,
    /// Cluster: the history settings and registered patterns, as last read.
    view: tokio::sync::Mutex<Option<Arc<View>>>,
    /// Cluster: this node's field in the pattern registry.
    node_id: String,
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
    /// A shard channel (Redis Cluster).
    Shard(String),
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

fn subscription_for(prefix: &str, i: &Interest, cluster: bool) -> Sub {
    match i.policy {
        MatchPolicy::Exact if cluster => Sub::Shard(keys(prefix, &i.realm, &i.pattern, true)[4].clone()),
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
/// (The channel's name is only written out for the error.)
fn answer(s: &Shared, event: &Envelope, receivers: i64, delivery: Delivery) -> Result<(), PublishError> {
    if delivery == Delivery::Subscribed && receivers == 0 {
        let [.., channel] = s.keys(&event.realm, &event.topic);
        return Err(PublishError::NoSubscriber(format!("no node is subscribed to `{}` (Redis channel {channel})", event.topic)));
    }
    Ok(())
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
    fn connection(&self) -> Result<Conn, StoreError> {
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
        let [_, stream, meta, _, _] = s.keys(realm, topic);
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
        let [_, _, _, list, _] = self.shared.keys(realm, topic);
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
        let [_, _, meta, _, _] = s.keys(realm, topic);
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
        let shared = Arc::new(Shared::new(url, options, inbound.metrics.clone())?);
        let supervisor = Supervisor::new("Redis", Client::Node, shared.url.clone(), options.reconnect_max_delay, shared.target.probe());
        tokio::spawn(run(shared.clone(), Some(inbound), supervisor, None));
        Ok(RedisBus { shared })
    }

    /// A publish-only Redis bus, connected now: fails fast when Redis cannot
    /// be reached within `connect_timeout`. From then on it is supervised
    /// like a node's bus: not ready while Redis is gone, reconnected by itself.
    pub async fn connect_publisher(url: &str, options: &BusOptions) -> Result<RedisBus, BusError> {
        let shared = Arc::new(Shared::new(url, options, crate::BusMetrics::unregistered())?);
        let conn = connect_publishing(&shared, None).await.map_err(|e| match e {
            SessionError::Redis(e) => connect_error(url, e),
            SessionError::Timeout(t) => BusError::Connect { url: redact(url), source: crate::ConnectTimeout(t).into() },
            other => BusError::Connect { url: redact(url), source: other.into() },
        })?;
        let mut supervisor = Supervisor::new("Redis", Client::Publisher, shared.url.clone(), options.reconnect_max_delay, shared.target.probe());
        // Ready before this returns: the first session is this connection.
        *shared.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        supervisor.up(&shared.interests, &shared.metrics, 0);
        tokio::spawn(run(shared.clone(), None, supervisor, Some(conn)));
        Ok(RedisBus { shared })
    }
}

impl Shared {
    fn new(url: &str, options: &BusOptions, metrics: crate::BusMetrics) -> Result<Shared, BusError> {
        let target = Target::parse(url, &options.tls)?;
        let routing = match &target {
            Target::Cluster(c) => {
                if options.redis_key_prefix.contains(['{', '}']) {
                    return Err(BusError::InvalidUrl(format!(
                        "redis.key_prefix `{}` holds a brace; on a Redis Cluster the keys' hash tags need a prefix without `{{` or `}}`",
                        options.redis_key_prefix
                    )));
                }
                Some(c.routing_client(options)?)
            }
            _ => None,
        };
        Ok(Shared {
            target,
            routing,
            url: redact(url),
            options: options.clone(),
            interests: Interests::default(),
            publisher: Mutex::new(None),
            view: tokio::sync::Mutex::new(None),
            node_id: format!("{:016x}", fastrand::u64(..)),
            check_now: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            metrics,
        })
    }

    fn is_cluster(&self) -> bool {
        self.routing.is_some()
    }

    /// The keys of one topic (see [`keys`]).
    fn keys(&self, realm: &str, topic: &str) -> [String; 5] {
        keys(&self.options.redis_key_prefix, realm, topic, self.is_cluster())
    }

    /// The pattern registry (a hash: one field per node).
    fn registry(&self) -> String {
        format!("{}patterns", self.options.redis_key_prefix)
    }

    /// Cluster: the history settings and registered patterns, read again
    /// when the copy is older than [`cluster::REGISTRY_FRESH`].
    async fn view(&self, conn: &mut Conn) -> redis::RedisResult<Arc<View>> {
        let mut cached = self.view.lock().await;
        if let Some(v) = cached.as_ref().filter(|v| v.read_at.elapsed() < cluster::REGISTRY_FRESH) {
            return Ok(v.clone());
        }
        // The copy counts from before the question: what was written
        // before this instant is in the answer.
        let read_at = Instant::now();
        let (topics, size, ttl_ms): (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}history", self.options.redis_key_prefix))
            .arg("topics")
            .arg("size")
            .arg("ttl_ms")
            .query_async(conn)
            .await?;
        let entries: BTreeMap<String, String> = redis::cmd("HGETALL").arg(self.registry()).query_async(conn).await?;
        let view = Arc::new(View {
            read_at,
            topics: topics.unwrap_or_default(),
            size: size.unwrap_or_default(),
            ttl_ms: ttl_ms.unwrap_or_default(),
            patterns: cluster::live_patterns(&entries, crate::now_us() / 1000),
        });
        *cached = Some(view.clone());
        Ok(view)
    }

    /// Publishes one event through `conn`: Redis's answer (receivers,
    /// epoch, offset), receivers counting a registered pattern on a cluster.
    async fn publish_one(&self, conn: &mut Conn, event: &Envelope) -> redis::RedisResult<(i64, u16, u64)> {
        let prefix = &self.options.redis_key_prefix;
        let view = if self.is_cluster() { Some(self.view(conn).await?) } else { None };
        let (call, matched) = invocation(prefix, event, view.as_deref());
        let (receivers, epoch, offset): (i64, u16, u64) = call.invoke_async(conn).await?;
        // On a cluster PUBLISH counts the receivers of one node only; a
        // registered pattern means a node takes the event.
        Ok((receivers + i64::from(matched), epoch, offset))
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
            // Redis answers how many subscriptions (channels and patterns,
            // of every node) got the event, and its position if kept.
            let (receivers, epoch, offset) = s.publish_one(&mut conn, &event).await.map_err(|e| {
                s.failed(1);
                PublishError::Unavailable(format!("Redis at {} did not take the event: {e}", s.url))
            })?;
            answer(s, &event, receivers, delivery).map(|()| published_id(&event, epoch, offset))
        }
        .boxed()
    }

    /// One pipeline: every PUBLISH in order, one round trip. On a Redis
    /// Cluster each topic's events go in order, topics side by side (they
    /// live on different shards).
    fn publish_batch(&self, events: Vec<Envelope>, delivery: Delivery) -> BoxFuture<'_, Vec<Result<Id, PublishError>>> {
        async move {
            let s = &self.shared;
            let n = events.len();
            let conn = s.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some(mut conn) = conn else {
                s.metrics.publish_errors.inc_by(n as u64);
                return (0..n).map(|_| Err(PublishError::Unavailable(format!("not connected to Redis at {}", s.url)))).collect();
            };
            let answered = |event: &Envelope, result: redis::RedisResult<(i64, u16, u64)>| match result {
                Ok((receivers, epoch, offset)) => answer(s, event, receivers, delivery).map(|()| published_id(event, epoch, offset)),
                Err(e) => Err(PublishError::Unavailable(format!("Redis at {} did not take the event: {e}", s.url))),
            };
            if s.is_cluster() {
                let mut by_topic: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
                for (i, e) in events.iter().enumerate() {
                    by_topic.entry((&e.realm, &e.topic)).or_default().push(i);
                }
                let runs = by_topic.into_values().map(|indices| {
                    let mut conn = conn.clone();
                    let events = &events;
                    async move {
                        let mut out = Vec::with_capacity(indices.len());
                        for i in indices {
                            out.push((i, s.publish_one(&mut conn, &events[i]).await));
                        }
                        out
                    }
                });
                let mut results: Vec<Option<Result<Id, PublishError>>> = (0..n).map(|_| None).collect();
                for (i, result) in futures_util::future::join_all(runs).await.into_iter().flatten() {
                    if result.is_err() {
                        s.failed(1);
                    }
                    results[i] = Some(answered(&events[i], result));
                }
                return results.into_iter().map(|r| r.expect("every event answered")).collect();
            }
            let mut pipe = redis::pipe();
            // Loading a loaded script is cheap; it makes the batch safe
            // after a Redis restart or a SCRIPT FLUSH.
            pipe.load_script(&SCRIPT).ignore();
            let calls: Vec<_> = events.iter().map(|e| invocation(&s.options.redis_key_prefix, e, None).0).collect();
            for call in &calls {
                pipe.invoke_script(call);
            }
            let answers: redis::RedisResult<Vec<(i64, u16, u64)>> = pipe.query_async(&mut conn).await;
            match answers {
                Ok(counts) if counts.len() == n => events.iter().zip(counts).map(|(event, c)| answered(event, Ok(c))).collect(),
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

/// The adapter task: connect, (a node:) reconcile and consume; on loss,
/// back off and start over. `inbound` is `None` for a publish-only client,
/// whose first session is `installed`, the connection it was created with.
async fn run(s: Arc<Shared>, inbound: Option<Inbound>, mut supervisor: Supervisor, mut installed: Option<Conn>) {
    let mut more = !s.stop.is_cancelled();
    while more {
        let outcome = match (&inbound, &s.target) {
            (Some(inbound), Target::Cluster(cluster)) => cluster_session(&s, cluster, inbound, &mut supervisor).await,
            (Some(inbound), _) => node_session(&s, inbound, &mut supervisor).await,
            (None, _) => publisher_session(&s, &mut supervisor, installed.take()).await,
        };
        *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = None;
        more = supervisor.session_ended(outcome, &s.stop, &s.interests, &s.metrics).await;
    }
}

/// Tells publishers which topics keep history: the publish script reads
/// it. Every node writes its own settings when it connects (the cluster's
/// nodes share one configuration; the last one to connect wins).
async fn write_history_settings(options: &BusOptions, conn: &mut Conn) -> Result<(), SessionError> {
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

/// Timeouts for a connection: a broker that stops answering fails the
/// command (the caller reports it) instead of hanging it.
fn connection_config(options: &BusOptions) -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_connection_timeout(options.connect_timeout).set_response_timeout(options.connect_timeout)
}

/// The server of this session: the one of the URL, or the primary the
/// Sentinels name now (`None` on a cluster).
async fn server(s: &Shared) -> Result<Option<redis::Client>, SessionError> {
    match &s.target {
        Target::Single(client) => Ok(Some(client.clone())),
        Target::Sentinel(sentinel) => Ok(Some(sentinel.primary(s.options.connect_timeout).await?)),
        Target::Cluster(_) => Ok(None),
    }
}

/// Opens the PUBLISH connection, to `client` (or, with `None`, to the
/// session's server, or across the cluster).
async fn connect_publishing(s: &Shared, client: Option<redis::Client>) -> Result<Conn, SessionError> {
    let timeout = s.options.connect_timeout;
    let client = match client {
        Some(c) => Some(c),
        None => server(s).await?,
    };
    let opened = async {
        match (client, &s.routing) {
            (Some(client), _) => client.get_multiplexed_async_connection_with_config(&connection_config(&s.options)).await.map(Conn::One),
            (None, Some(routing)) => routing.get_async_connection().await.map(Conn::Cluster),
            (None, None) => unreachable!("a server or a cluster"),
        }
    };
    Ok(tokio::time::timeout(timeout, opened).await.map_err(|_| SessionError::Timeout(timeout))??)
}

/// Whether `ROLE`'s answer says primary.
fn is_primary(role: &redis::Value) -> bool {
    matches!(role, redis::Value::Array(fields) if matches!(fields.first(), Some(redis::Value::BulkString(r)) if r == b"master"))
}

/// Resolves, with the reason, once the PUBLISH connection stopped
/// answering: checked every [`PING_EVERY`], and at once after a publish
/// failed (`check_now`). Through Sentinel it asks `ROLE` instead of PING:
/// a primary demoted by a failover ends the session too.
async fn check(check_now: Arc<Notify>, mut conn: Conn, sentinel: bool) -> SessionError {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PING_EVERY) => {}
            _ = check_now.notified() => {}
        }
        if sentinel {
            match redis::cmd("ROLE").query_async::<redis::Value>(&mut conn).await {
                Err(e) => return SessionError::RedisPublishing(e),
                Ok(role) if !is_primary(&role) => {
                    return SessionError::Setup("the server is no longer the primary (a failover); asking the Sentinels again".into())
                }
                Ok(_) => {}
            }
        } else if let Err(e) = redis::cmd("PING").query_async::<()>(&mut conn).await {
            return SessionError::RedisPublishing(e);
        }
    }
}

/// Watches the session's PUBLISH connection.
fn watch(s: &Shared, conn: &Conn) -> Watched {
    Watched::spawn(&s.stop, check(s.check_now.clone(), conn.clone(), matches!(s.target, Target::Sentinel(_))))
}

/// A publish-only client's session: the PUBLISH connection, installed and
/// watched until it fails or the bus stops.
async fn publisher_session(s: &Shared, supervisor: &mut Supervisor, installed: Option<Conn>) -> Result<(), SessionError> {
    let conn = match installed {
        Some(conn) => conn,
        None => {
            let conn = connect_publishing(s, None).await?;
            *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            supervisor.up(&s.interests, &s.metrics, 0);
            conn
        }
    };
    let watched = watch(s, &conn);
    watched.ended().cancelled().await;
    watched.outcome()
}

/// The push messages (events, a shard channel's end, the connection's loss)
/// of a node's subscriber connections, in a queue bounded by
/// [`BusOptions::redis_buffer_bytes`] and [`PUSH_QUEUE`]: the connections'
/// reader tasks hand them over without waiting, and a full queue marks the
/// session as fallen behind (it then starts over, as Redis itself drops a
/// subscriber past `client-output-buffer-limit pubsub`).
struct Pushes {
    rx: tokio::sync::mpsc::Receiver<redis::PushInfo>,
    /// Bytes of the events in the queue.
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    behind: Arc<std::sync::atomic::AtomicBool>,
    /// Signalled when the queue overflows, to end a session that waits for
    /// room in the node's own queue meanwhile.
    overflow: Arc<Notify>,
}

impl Pushes {
    /// The queue, and the connection settings that fill it.
    /// Confirmations of the session's own (un)subscribes are not queued
    /// (a node subscribing 10,000 channels gets as many): only events, the
    /// connection's loss, and a shard channel's `sunsubscribe` that is not
    /// in `leaving` (Redis ended it: its slot moved).
    fn new(options: &BusOptions, leaving: Leaving) -> (Pushes, redis::AsyncConnectionConfig) {
        let (tx, rx) = tokio::sync::mpsc::channel::<redis::PushInfo>(PUSH_QUEUE);
        let behind = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let overflow = Arc::new(Notify::new());
        let (fell_behind, tell, held, limit) = (behind.clone(), overflow.clone(), bytes.clone(), options.redis_buffer_bytes);
        let config = connection_config(options).set_push_sender(move |push: redis::PushInfo| {
            use redis::PushKind as K;
            match push.kind {
                K::Subscribe | K::PSubscribe | K::SSubscribe | K::Unsubscribe | K::PUnsubscribe => return Ok(()),
                K::SUnsubscribe => {
                    let channel = match push.data.first() {
                        Some(redis::Value::BulkString(c)) => c.as_slice(),
                        _ => &[],
                    };
                    if leaving.lock().unwrap_or_else(|e| e.into_inner()).remove(channel) {
                        return Ok(());
                    }
                }
                _ => {}
            }
            let size = payload(&push).map_or(0, <[u8]>::len);
            let over = held.fetch_add(size, std::sync::atomic::Ordering::Relaxed) + size > limit;
            let sent = if over { Err(()) } else { tx.try_send(push).map_err(|_| ()) };
            if sent.is_err() {
                held.fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                if !fell_behind.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tell.notify_one();
                }
            }
            sent
        });
        (Pushes { rx, bytes, behind, overflow }, config)
    }

    /// The next push message if one is queued already.
    fn try_next(&mut self) -> Result<Option<redis::PushInfo>, SessionError> {
        let Ok(push) = self.rx.try_recv() else { return Ok(None) };
        self.accept(push).map(Some)
    }

    /// A push message taken off the queue: its bytes leave the buffer; an
    /// error once the queue overflowed.
    fn accept(&self, push: redis::PushInfo) -> Result<redis::PushInfo, SessionError> {
        self.bytes.fetch_sub(payload(&push).map_or(0, <[u8]>::len), std::sync::atomic::Ordering::Relaxed);
        if self.behind.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SessionError::Behind);
        }
        Ok(push)
    }

    /// Handles `first` and what else is queued already (up to
    /// [`PUSH_BATCH`]) without going back to the session's select: fewer
    /// wakeups when several connections feed the queue. `Some` ends the
    /// session with that outcome.
    ///
    /// A pattern's copy of an event whose (classic) channel is in `exact`
    /// is dropped: the node takes that topic from its shard channel only. A
    /// cluster delivers classic messages late (over its bus between nodes),
    /// so after a (re)subscription a pattern's copy of an event published
    /// before the shard subscription could arrive after newer events.
    async fn deliver(
        &mut self,
        first: redis::PushInfo,
        s: &Shared,
        inbound: &Inbound,
        seen: &mut Recent,
        exact: &HashSet<Vec<u8>>,
    ) -> Option<Result<(), SessionError>> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(push) = next.take() {
            match push.kind {
                redis::PushKind::Disconnection => return Some(Err(SessionError::RedisSubscriberClosed)),
                // Not one this node left (those are not queued): its slot moved.
                redis::PushKind::SUnsubscribe => {
                    let channel = match push.data.first() {
                        Some(redis::Value::BulkString(c)) => String::from_utf8_lossy(c).into_owned(),
                        _ => String::new(),
                    };
                    return Some(Err(SessionError::Cluster(format!("Redis ended the subscription to {channel} (its slot moved)"))));
                }
                _ if is_relayed_copy(&push, exact) => {}
                _ => {
                    if let Some(bytes) = payload(&push) {
                        if let Err(ended) = self.take(s, inbound, seen, bytes).await {
                            return Some(ended.outcome());
                        }
                    }
                }
            }
            handled += 1;
            if handled < PUSH_BATCH {
                match self.try_next() {
                    Ok(more) => next = more,
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        None
    }

    /// Hands one event to the node, unless the queue overflows meanwhile
    /// (the node is stuck): then the session ends.
    async fn take(&self, s: &Shared, inbound: &Inbound, seen: &mut Recent, bytes: &[u8]) -> Result<(), Ended> {
        // Biased: while the node's queue has room the event goes at once and
        // the overflow signal is never polled (no waiter registered).
        tokio::select! {
            biased;
            taken = take(s, inbound, seen, bytes) => taken.map_err(|_| Ended::Closed),
            _ = self.overflow.notified() => Err(Ended::Behind),
        }
    }

    /// The next push message; an error once the queue overflowed or every
    /// connection is gone.
    async fn next(&mut self) -> Result<redis::PushInfo, SessionError> {
        let push = self.rx.recv().await.ok_or(SessionError::RedisSubscriberClosed)?;
        self.accept(push)
    }

    /// Delivers what already arrived, for up to [`DRAIN_AFTER_FAILURE`]: a
    /// broker that went away acknowledged those events. False when the node closed.
    async fn drain(&mut self, s: &Shared, inbound: &Inbound, seen: &mut Recent, exact: &HashSet<Vec<u8>>) -> bool {
        let until = tokio::time::Instant::now() + DRAIN_AFTER_FAILURE;
        while let Ok(Some(push)) = tokio::time::timeout_at(until, self.rx.recv()).await {
            if is_relayed_copy(&push, exact) {
                continue;
            }
            if let Some(bytes) = payload(&push) {
                if take(s, inbound, seen, bytes).await.is_err() {
                    return false;
                }
            }
        }
        true
    }
}

/// Whether `push` is a pattern's copy of an event of a topic the node takes
/// from its shard channel (`exact`: those topics' classic channels).
fn is_relayed_copy(push: &redis::PushInfo, exact: &HashSet<Vec<u8>>) -> bool {
    push.kind == redis::PushKind::PMessage && matches!(push.data.get(1), Some(redis::Value::BulkString(c)) if exact.contains(c))
}

/// Shard channels a session unsubscribes from: Redis confirms those, and any
/// other `sunsubscribe` means a slot moved.
type Leaving = Arc<Mutex<HashSet<Vec<u8>>>>;

/// How many (un)subscribe commands go in one pipeline.
const SUBSCRIBE_BATCH: usize = 1000;

/// Sends `command` for each of `names`, pipelined by [`SUBSCRIBE_BATCH`]
/// (one channel per command: each is confirmed once).
async fn each(conn: &mut MultiplexedConnection, command: &str, names: &[&str]) -> Result<(), SessionError> {
    for chunk in names.chunks(SUBSCRIBE_BATCH) {
        let mut pipe = redis::pipe();
        for name in chunk {
            pipe.cmd(command).arg(*name).ignore();
        }
        pipe.exec_async(conn).await?;
    }
    Ok(())
}

/// Why handing an event to the node stopped the session.
enum Ended {
    /// The node closed its queue (it is stopping).
    Closed,
    /// The push queue overflowed while the node was not taking events.
    Behind,
}

impl Ended {
    /// The session's outcome.
    fn outcome(self) -> Result<(), SessionError> {
        match self {
            Ended::Closed => Ok(()),
            Ended::Behind => Err(SessionError::Behind),
        }
    }
}

/// A node's session: subscribe to every interest, then install the PUBLISH
/// connection and consume until either connection fails or the bus stops.
/// The subscriber connection speaks RESP3 (Redis 6 or newer): its events
/// arrive as push messages, into a bounded queue.
async fn node_session(s: &Shared, inbound: &Inbound, supervisor: &mut Supervisor) -> Result<(), SessionError> {
    let timeout = s.options.connect_timeout;
    let client = server(s).await?.expect("one server");
    let (mut pushes, config) = Pushes::new(&s.options, Leaving::default());
    let subscriber = target::with_resp3(&client)?;
    let mut sink = tokio::time::timeout(timeout, subscriber.get_multiplexed_async_connection_with_config(&config))
        .await
        .map_err(|_| SessionError::Timeout(timeout))?
        .map_err(resp3_refused)?;
    let mut conn = connect_publishing(s, Some(client)).await?;
    write_history_settings(&s.options, &mut conn).await?;
    let watched = watch(s, &conn);
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
            let want: HashSet<Sub> = desired.iter().map(|i| subscription_for(&s.options.redis_key_prefix, i, false)).collect();
            for (changed, channels, patterns) in
                [(want.difference(&applied), "SUBSCRIBE", "PSUBSCRIBE"), (applied.difference(&want), "UNSUBSCRIBE", "PUNSUBSCRIBE")]
            {
                let (mut by_channel, mut by_pattern) = (Vec::new(), Vec::new());
                for sub in changed {
                    match sub {
                        Sub::Channel(c) | Sub::Shard(c) => by_channel.push(c.as_str()),
                        Sub::Pattern(p) => by_pattern.push(p.as_str()),
                    }
                }
                each(&mut sink, channels, &by_channel).await?;
                each(&mut sink, patterns, &by_pattern).await?;
            }
            applied = want;
            applied_version = Some(version);
            s.metrics.interests.set(sessions_interests(&desired, applied.len()));
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
                // The PUBLISH connection broke (Redis went away, most
                // often): what the subscriber connection has already
                // received was published before, and may have been
                // acknowledged; deliver it before starting over.
                if outcome.is_err() && !pushes.drain(s, inbound, &mut seen, &HashSet::new()).await {
                    return Ok(());
                }
                return outcome;
            }
            _ = s.interests.changed() => {}
            push = pushes.next() => {
                // One server delivers a pattern's copy and a channel's in order.
                if let Some(end) = pushes.deliver(push?, s, inbound, &mut seen, &HashSet::new()).await {
                    return end;
                }
            }
        }
    }
}

/// A subscriber connection refused: a server without RESP3 (Redis 5 or
/// older) is named as such.
fn resp3_refused(e: redis::RedisError) -> SessionError {
    if e.to_string().to_ascii_lowercase().contains("hello") {
        SessionError::Setup(format!("Redis refused RESP3 ({e}); Telegraphy needs Redis 6 or newer"))
    } else {
        SessionError::Redis(e)
    }
}

/// How many of `applied` subscriptions serve sessions: the node's own inbox
/// and the all-nodes topic are not its sessions' interests.
fn sessions_interests(desired: &HashSet<Interest>, applied: usize) -> i64 {
    let control = desired.iter().filter(|i| i.realm == crate::control::CONTROL_REALM).count();
    applied.saturating_sub(control) as i64
}

/// A node's connections to a Redis Cluster's primaries for sharded pub/sub
/// (one per primary that serves a subscribed channel), and one to any node
/// for classic pattern subscriptions; every push message of every one of
/// them goes to one queue.
struct Shards<'a> {
    cluster: &'a target::Cluster,
    config: redis::AsyncConnectionConfig,
    conns: HashMap<Addr, MultiplexedConnection>,
    classic: Option<MultiplexedConnection>,
}

impl Shards<'_> {
    async fn open(&self, addr: &Addr) -> Result<MultiplexedConnection, SessionError> {
        let client = self.cluster.node(&addr.0, addr.1).map_err(|e| SessionError::Cluster(e.to_string()))?;
        Ok(client.get_multiplexed_async_connection_with_config(&self.config).await?)
    }

    /// The connection to the primary at `addr`, opened when needed.
    async fn primary(&mut self, addr: &Addr) -> Result<&mut MultiplexedConnection, SessionError> {
        if !self.conns.contains_key(addr) {
            let conn = self.open(addr).await?;
            self.conns.insert(addr.clone(), conn);
        }
        Ok(self.conns.get_mut(addr).expect("just opened"))
    }

    /// The connection for pattern subscriptions (to the first primary).
    async fn classic(&mut self, slots: &SlotMap) -> Result<&mut MultiplexedConnection, SessionError> {
        if self.classic.is_none() {
            let addr = slots.primary(0).ok_or_else(|| SessionError::Cluster("no primary serves slot 0".into()))?.clone();
            self.classic = Some(self.open(&addr).await?);
        }
        Ok(self.classic.as_mut().expect("just opened"))
    }
}

/// The cluster's slot map, asked of any node.
async fn slot_map(conn: &mut Conn, seed_host: &str) -> Result<SlotMap, SessionError> {
    let reply: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    SlotMap::from_reply(&reply, seed_host).map_err(SessionError::Cluster)
}

/// The payload of a pub/sub push message, if it is one.
fn payload(push: &redis::PushInfo) -> Option<&[u8]> {
    let bytes = match push.kind {
        redis::PushKind::Message | redis::PushKind::SMessage => push.data.get(1),
        redis::PushKind::PMessage => push.data.get(2),
        _ => None,
    };
    match bytes {
        Some(redis::Value::BulkString(b)) => Some(b),
        _ => None,
    }
}

/// A node's session on a Redis Cluster: exact interests as shard channels
/// on their primaries, patterns on one connection and in the registry;
/// ends when a connection fails, a slot moves or a primary changes.
async fn cluster_session(s: &Shared, cluster: &target::Cluster, inbound: &Inbound, supervisor: &mut Supervisor) -> Result<(), SessionError> {
    let timeout = s.options.connect_timeout;
    let prefix = &s.options.redis_key_prefix;
    let mut conn = connect_publishing(s, None).await?;
    write_history_settings(&s.options, &mut conn).await?;
    let seed_host = cluster.seed_host();
    let mut slots = slot_map(&mut conn, &seed_host).await?;
    let watched = watch(s, &conn);
    // The session's own commands (registry, slot map) share the connection.
    let mut own = conn.clone();
    let leaving = Leaving::default();
    let (mut pushes, config) = Pushes::new(&s.options, leaving.clone());
    let mut shards = Shards { cluster, config, conns: HashMap::new(), classic: None };
    let mut conn = Some(conn);
    // Each subscription, with the primary a shard channel is on.
    let mut applied: HashMap<Sub, Option<Addr>> = HashMap::new();
    let mut registered: Vec<Interest> = Vec::new();
    // The classic channels of the topics this node takes from shard channels.
    let mut exact: HashSet<Vec<u8>> = HashSet::new();
    // A version applied but not yet in force: a new pattern waits until
    // every publisher has read the registry again.
    let mut pending: Option<(tokio::time::Instant, crate::Ticket)> = None;
    let mut applied_version = None;
    let mut seen = Recent::default();
    let mut connected = false;
    let mut heartbeat = tokio::time::interval(cluster::REGISTRY_HEARTBEAT);
    let mut topology = tokio::time::interval(TOPOLOGY_EVERY);
    topology.reset();
    loop {
        if applied_version != Some(s.interests.version()) {
            let (version, desired) = s.interests.snapshot();
            let want: HashSet<Sub> = desired.iter().map(|i| subscription_for(prefix, i, true)).collect();
            // New shard channels, by the primary that serves them; new patterns.
            let mut to_subscribe: HashMap<Addr, Vec<&str>> = HashMap::new();
            let mut new_patterns: Vec<&str> = Vec::new();
            for sub in want.iter().filter(|w| !applied.contains_key(*w)) {
                match sub {
                    Sub::Shard(c) => {
                        let slot = cluster::slot(c);
                        let addr = slots.primary(slot).ok_or_else(|| SessionError::Cluster(format!("no primary serves slot {slot}")))?;
                        to_subscribe.entry(addr.clone()).or_default().push(c);
                    }
                    Sub::Pattern(p) | Sub::Channel(p) => new_patterns.push(p),
                }
            }
            for (addr, channels) in &to_subscribe {
                let conn = tokio::time::timeout(timeout, shards.primary(addr)).await.map_err(|_| SessionError::Timeout(timeout))??;
                each(conn, "SSUBSCRIBE", channels).await?;
            }
            if !new_patterns.is_empty() {
                let conn = tokio::time::timeout(timeout, shards.classic(&slots)).await.map_err(|_| SessionError::Timeout(timeout))??;
                each(conn, "PSUBSCRIBE", &new_patterns).await?;
            }
            let added: Vec<(Sub, Option<Addr>)> = to_subscribe
                .into_iter()
                .flat_map(|(addr, channels)| channels.into_iter().map(move |c| (Sub::Shard(c.to_string()), Some(addr.clone()))))
                .chain(new_patterns.into_iter().map(|p| (Sub::Pattern(p.to_string()), None)))
                .collect();
            applied.extend(added);
            // Gone ones, likewise.
            let mut to_leave: HashMap<Addr, Vec<String>> = HashMap::new();
            let mut old_patterns: Vec<String> = Vec::new();
            for (sub, at) in applied.iter().filter(|(k, _)| !want.contains(*k)) {
                match (sub, at) {
                    (Sub::Shard(c), Some(addr)) => to_leave.entry(addr.clone()).or_default().push(c.clone()),
                    (Sub::Pattern(p) | Sub::Channel(p) | Sub::Shard(p), _) => old_patterns.push(p.clone()),
                }
            }
            applied.retain(|k, _| want.contains(k));
            for (addr, channels) in &to_leave {
                leaving.lock().unwrap_or_else(|e| e.into_inner()).extend(channels.iter().map(|c| c.clone().into_bytes()));
                let names: Vec<&str> = channels.iter().map(String::as_str).collect();
                each(shards.primary(addr).await?, "SUNSUBSCRIBE", &names).await?;
            }
            if !old_patterns.is_empty() {
                let names: Vec<&str> = old_patterns.iter().map(String::as_str).collect();
                each(shards.classic(&slots).await?, "PUNSUBSCRIBE", &names).await?;
            }
            exact = desired.iter().filter(|i| !cluster::is_pattern(i)).map(|i| channel(prefix, &i.realm, &i.pattern).into_bytes()).collect();
            let mut patterns: Vec<Interest> = desired.iter().filter(|i| cluster::is_pattern(i)).cloned().collect();
            patterns.sort_by(|a, b| (&a.realm, &a.pattern).cmp(&(&b.realm, &b.pattern)));
            let grew = patterns.iter().any(|p| !registered.contains(p));
            if patterns != registered {
                register(s, &mut own, &patterns).await?;
                registered = patterns;
            }
            applied_version = Some(version);
            s.metrics.interests.set(sessions_interests(&desired, applied.len()));
            if grew {
                pending = Some((tokio::time::Instant::now() + cluster::REGISTRY_WAIT, version));
            } else if let Some((until, _)) = pending {
                pending = Some((until, version));
            } else {
                s.interests.mark_applied(version);
            }
        }
        if !connected {
            connected = true;
            *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = conn.take();
            supervisor.up(&s.interests, &s.metrics, applied.len());
            inbound.session_started();
        }
        let hold = pending.map(|(until, _)| until);
        tokio::select! {
            _ = watched.ended().cancelled() => {
                let outcome = watched.outcome();
                // As on one server: deliver what already arrived.
                if outcome.is_err() && !pushes.drain(s, inbound, &mut seen, &exact).await {
                    return Ok(());
                }
                return outcome;
            }
            _ = s.interests.changed() => {}
            _ = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {
                if let Some((_, version)) = pending.take() {
                    s.interests.mark_applied(version);
                }
            }
            _ = heartbeat.tick() => {
                if !registered.is_empty() {
                    register(s, &mut own, &registered).await?;
                }
            }
            _ = topology.tick() => {
                // A slot that moved or a primary that changed: subscribe again.
                if let Ok(now) = slot_map(&mut own, &seed_host).await {
                    slots = now;
                    for (sub, at) in &applied {
                        if let (Sub::Shard(c), Some(addr)) = (sub, at) {
                            if slots.primary(cluster::slot(c)) != Some(addr) {
                                return Err(SessionError::Cluster(format!("the slot of {c} is served by another primary now")));
                            }
                        }
                    }
                }
            }
            push = pushes.next() => {
                if let Some(end) = pushes.deliver(push?, s, inbound, &mut seen, &exact).await {
                    return end;
                }
            }
        }
    }
}

/// Writes this node's entry of the pattern registry (or removes it when it
/// has no pattern), and removes the entries of nodes that stopped writing.
async fn register(s: &Shared, conn: &mut Conn, patterns: &[Interest]) -> Result<(), SessionError> {
    let now_ms = crate::now_us() / 1000;
    let key = s.registry();
    if patterns.is_empty() {
        redis::cmd("HDEL").arg(&key).arg(&s.node_id).exec_async(conn).await?;
    } else {
        let expires = now_ms + cluster::REGISTRY_TTL.as_millis() as u64;
        let entry = cluster::entry(expires, &patterns.iter().collect::<Vec<_>>());
        redis::cmd("HSET").arg(&key).arg(&s.node_id).arg(entry).exec_async(conn).await?;
    }
    let entries: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    let dead = cluster::expired(&entries, now_ms);
    if !dead.is_empty() {
        redis::cmd("HDEL").arg(&key).arg(dead).exec_async(conn).await?;
    }
    Ok(())
}

/// Hands one received message to the node, unless it is a copy of one just
/// delivered (a topic matched by two subscriptions of the node arrives twice).
async fn take(s: &Shared, inbound: &Inbound, seen: &mut Recent, bytes: &[u8]) -> Result<(), crate::inbound::Closed> {
    let Some(event) = inbound.decode(bytes) else { return Ok(()) };
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
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Exact, "a.b"), false), Sub::Channel("tg:realm1:a.b".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Exact, "a.b"), true), Sub::Shard("tg:{realm1:a.b}".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Prefix, "a.b"), true), Sub::Pattern("tg:realm1:a.b*".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Prefix, "a.b"), false), Sub::Pattern("tg:realm1:a.b*".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Wildcard, "a..c"), false), Sub::Pattern("tg:realm1:a.*.c".into()));
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Wildcard, ".b."), false), Sub::Pattern("tg:realm1:*.b.*".into()));
        // Glob characters in URIs are escaped, never interpreted.
        assert_eq!(subscription_for(pre, &i(MatchPolicy::Prefix, "a[1]?"), false), Sub::Pattern("tg:realm1:a\\[1\\]\\?*".into()));
    }
}
