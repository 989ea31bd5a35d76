//! The event bus behind Telegraphy gateway nodes.
//!
//! Every event, whoever publishes it (a browser over WAMP, the web-app over
//! HTTP, the CLI), travels as an [`Envelope`] through a [`Bus`]; each node
//! consumes the bus and fans events out to its own sessions. Nodes hold no
//! state another node needs, so any number can run behind a load balancer.
//!
//! # Layout
//!
//! * [`envelope`]: the [`Envelope`] and its versioned msgpack bytes, and
//!   [`now_us`], the clock events are stamped with.
//! * [`request`]: what a publisher asks for, in every form it arrives in:
//!   the JSON [`PublishRequest`] (`POST /publish` bodies, CLI lines), WAMP
//!   [`PublishOptions`], the subscriber [`Filter`] they share, and which
//!   topics may be published to ([`check_topic`]). Every publishing path
//!   (gateway, library, CLI) reads and writes requests through it.
//! * [`history`]: positions in a topic's one cluster-wide order, and the
//!   [`EventStore`] beside the bus that keeps recent and retained events
//!   (its contract is written there); [`MemoryStore`] for `memory://`.
//! * [`memory`]: `memory://`, the embedded single-node bus (the default).
//! * [`redis`]: `redis://`, Redis pub/sub.
//! * [`amqp`]: `amqp://`, a RabbitMQ topic exchange.
//! * [`control`]: messages between nodes (calls across the cluster),
//!   carried by the bus in a realm of their own.
//! * [`pattern`]: the topic-pattern syntax of the configuration and of
//!   tokens (role rights, token claims, history topics).
//! * [`interest`]: the node's desired (realm, policy, pattern) set, which
//!   broker adapters reconcile their subscriptions or bindings with.
//! * [`inbound`]: the hand-off of consumed events to the node (decode,
//!   count, bounded queue).
//! * [`backoff`], [`metrics`]: reconnect delays and bus metrics; a private
//!   `supervisor` holds the reconnect bookkeeping both broker adapters share.
//!
//! # The `Bus` contract
//!
//! * **Delivery**: at most once. An event that [`Bus::publish`] accepted is
//!   delivered once to every node that is connected and whose interests
//!   match the topic; a node that is disconnected at that moment misses it,
//!   and a broker that dies between accepting an event and passing it on
//!   loses it (recovery is layered above the bus: [`EventStore`]). A node
//!   session whose publishing side broke delivers what its consuming side
//!   already received before it starts over.
//! * **Ordering**: events published through one bus handle, one after the
//!   other, reach each node in that order. Nothing orders different publishers.
//! * **Acceptance**: `publish` resolves `Ok` only once the broker took the
//!   event (Redis answered PUBLISH; RabbitMQ confirmed it). It never
//!   reports success for an event the bus did not accept.
//! * **Readiness**: a node's bus accepts publishes only while it is ready,
//!   that is connected *and* with every interest in force at the broker
//!   again after a reconnect. An event a node acknowledged therefore reaches
//!   that node's own subscribers.
//! * **Routing** ([`Delivery::Subscribed`]): on request, `publish` also
//!   makes sure at least one node subscribed to the topic got the event
//!   (Redis: PUBLISH's receiver count; RabbitMQ: `mandatory` and the
//!   broker's return of an unroutable event; memory: this node's
//!   interests), and fails with [`PublishError::NoSubscriber`] otherwise.
//!   Interests are coarser than sessions' subscriptions (a node re-checks
//!   each topic, Redis globs are wider than WAMP's patterns), so "a node
//!   got it" can mean a node whose sessions then filter it out.
//! * **Interest**: a node calls [`Bus::add_interest`] / [`Bus::remove_interest`]
//!   as its first session subscribes to a (policy, pattern) and its last
//!   leaves. A bus may deliver more than was asked for (the node re-checks
//!   every topic), never less, except where `docs/bus.md` says so.
//!   [`Bus::interest_applied`] resolves once an interest is in force at the
//!   broker, so a SUBSCRIBED reply means "events published from now on reach you".
//! * **Outages**: adapters reconnect on their own with capped, jittered
//!   backoff and re-apply every interest; [`Bus::is_ready`] is false
//!   meanwhile and `publish` fails fast with [`PublishError::Unavailable`].
//!   Publish-only clients ([`connect_publisher`]) too.
//! * **Backpressure**: events consumed from a broker go to the node through
//!   a bounded queue; when it is full the adapter stops reading (RabbitMQ
//!   then stops at the prefetch limit; on Redis the subscriber connections
//!   fill a buffer of [`BusOptions::redis_buffer_bytes`] (and at most
//!   [`redis::PUSH_QUEUE`] events), and a full one starts the session over,
//!   as Redis does past `client-output-buffer-limit pubsub`).

pub mod amqp;
pub mod backoff;
pub mod control;
pub mod envelope;
pub mod history;
pub mod inbound;
pub mod interest;
pub mod memory;
pub mod metrics;
pub mod pattern;
pub mod redis;
pub mod request;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use telegraphy_wamp::{Id, MatchPolicy};

pub use envelope::{now_us, Envelope, EnvelopeError, Publisher, FORMAT_VERSION};
pub use history::{EventStore, HistoryConfig, MemoryStore, Position};
pub use inbound::Inbound;
pub use interest::Ticket;
pub use memory::MemoryBus;
pub use metrics::BusMetrics;
pub use request::{
    check_topic, is_reserved_topic, Filter, JsonOptions, OptionError, PublishOptions, PublishRequest, RequestError, TopicError, PRESENCE_PREFIX,
};

/// What [`Bus::publish`] makes sure of before it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// The broker took the event (the default): at most once, to every
    /// node subscribed at that moment, which may be none.
    #[default]
    Accepted,
    /// The broker took it *and* at least one node subscribed to its topic
    /// got it; otherwise the publish fails with [`PublishError::NoSubscriber`].
    Subscribed,
}

/// Why the bus did not accept an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker is not reachable or the node is stopping; retry later.
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused this event (it would refuse it again).
    #[error("the event bus refused the event: {0}")]
    Rejected(String),
    /// [`Delivery::Subscribed`] was asked and no node subscribed to the
    /// topic got the event (the broker took it and dropped it).
    #[error("no subscriber got the event: {0}")]
    NoSubscriber(String),
}

/// Why a bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL names no bus this build knows, or is malformed.
    #[error("{0}")]
    InvalidUrl(String),
    /// The broker could not be reached (publish-only clients connect eagerly).
    #[error("cannot connect to the bus at {url}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// What went wrong: the broker client's error, a [`ConnectTimeout`],
        /// or an [`ExchangeError`].
        #[source]
        source: BoxError,
    },
    /// The broker's TLS certificate was not accepted.
    #[error("the bus at {url} failed the TLS check: {TLS_HINT}")]
    Tls {
        /// The URL, without its password.
        url: String,
        /// What rustls said (unknown issuer, not valid for the name, ...).
        #[source]
        source: BoxError,
    },
    /// The broker refused the credentials.
    #[error("the bus at {url} refused the credentials")]
    Auth {
        /// The URL, without its password.
        url: String,
        /// What the broker said (the broker client's error).
        #[source]
        source: BoxError,
    },
}

/// The cause a [`BusError`] keeps: the broker client's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The broker did not answer a connect within the configured time.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub struct ConnectTimeout(pub std::time::Duration);

/// RabbitMQ refused to declare the topic exchange (most often: one of that
/// name exists with another type).
#[derive(Debug, thiserror::Error)]
#[error("cannot declare the topic exchange `{exchange}`; if it exists with another type, pick another name (amqp.exchange)")]
pub struct ExchangeError {
    /// The exchange's name.
    pub exchange: String,
    /// What RabbitMQ said.
    #[source]
    pub source: BoxError,
}

/// `error` and its causes on one line, outermost first, joined by `": "`:
/// what a user reads when only one line is printed.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// An event bus (see the crate docs for the contract every adapter keeps).
pub trait Bus: Send + Sync + 'static {
    /// Hands one event to the bus; resolves once the bus accepted it (and,
    /// with [`Delivery::Subscribed`], once a node subscribed to it got it).
    /// Fails fast with [`PublishError::Unavailable`] while not ready.
    /// Answers the publication id subscribers get (the event's own, or its
    /// history position's when its topic keeps history).
    fn publish(&self, event: Envelope, delivery: Delivery) -> BoxFuture<'_, Result<Id, PublishError>>;

    /// Publishes `events` in order and answers for each, like as many
    /// [`Bus::publish`] calls one after the other; brokers overlap their
    /// round trips (a Redis pipeline, RabbitMQ confirms awaited together).
    /// The caller bounds the batch (the events in flight).
    fn publish_batch(&self, events: Vec<Envelope>, delivery: Delivery) -> BoxFuture<'_, Vec<Result<Id, PublishError>>> {
        async move {
            let mut answers = Vec::with_capacity(events.len());
            for event in events {
                answers.push(self.publish(event, delivery).await);
            }
            answers
        }
        .boxed()
    }

    /// This node needs events of `realm` whose topic matches `pattern` under
    /// `policy`. Returns a ticket for [`Bus::interest_applied`].
    fn add_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) -> Ticket;

    /// This node no longer needs (realm, policy, pattern).
    fn remove_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str);

    /// Resolves once the interest behind `ticket` is in force at the broker
    /// (at once while the bus is disconnected: it is re-applied on reconnect).
    fn interest_applied(&self, ticket: Ticket) -> BoxFuture<'_, ()>;

    /// Whether the bus is connected and accepting events (feeds `/readyz`).
    fn is_ready(&self) -> bool;

    /// A short name for logs (`memory`, `redis`, `amqp`).
    fn kind(&self) -> &'static str;

    /// Stops background work (consumers, reconnects). Idempotent. A broker
    /// adapter is not ready afterwards and fails publishes with
    /// `Unavailable`; the memory bus has nothing to stop.
    fn shutdown(&self);
}

/// The kinds of bus, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// `memory://`.
    Memory,
    /// `redis://host:port/db`, or `rediss://` over TLS; a Redis Cluster
    /// (`redis+cluster://h1:p1,h2:p2`) or a primary found through Sentinel
    /// (`redis+sentinel://s1:26379,s2:26379/NAME`).
    Redis,
    /// `amqp://user:pass@host:port/vhost`, or `amqps://` over TLS.
    Amqp,
}

/// TLS to the broker (`rediss://`, `amqps://`): whom to trust and who we
/// are, as PEM. Without a CA the system's roots are trusted; the server's
/// name (the URL's host) is always checked against its certificate.
#[derive(Clone, Default, PartialEq)]
pub struct BusTls {
    /// CA certificates (PEM) trusted besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain (PEM), for brokers that ask for one.
    pub client_cert_pem: Option<Vec<u8>>,
    /// Its private key (PEM).
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for BusTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTls")
            .field("ca", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client_cert_pem.as_ref().map(|c| c.len()))
            .field("client_key", &self.client_key_pem.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl BusTls {
    /// Whether anything is configured.
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.client_cert_pem.is_some()
    }
}

/// rustls on ring for every TLS connection to a broker (redis-rs asks the
/// process for its provider; this build has only ring).
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What to check when a broker's certificate is refused.
pub(crate) const TLS_HINT: &str = "its certificate must be signed by a CA this client trusts (the system's, or bus_tls.ca_file / \
     --bus-ca-file) and name the URL's host";

/// Whether a connection error is a refused server certificate.
pub(crate) fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.to_string().contains("peer certificate") {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `url` asks for TLS (`rediss://`, `amqps://`, and the cluster
/// and Sentinel forms `rediss+cluster://`, `rediss+sentinel://`).
pub fn is_tls_url(url: &str) -> bool {
    matches!(url.split_once("://").map(|(s, _)| s), Some("rediss" | "amqps" | "rediss+cluster" | "rediss+sentinel"))
}

/// A URL that lists several hosts (`scheme://user:pass@h1:p1,h2:p2/tail`),
/// taken apart.
pub(crate) struct Hosts {
    /// `user:pass@`, or empty.
    pub(crate) userinfo: String,
    /// `host:port` per listed host, in order.
    pub(crate) hosts: Vec<String>,
    /// What follows the hosts: the path and query, from the `/` or `?` on.
    pub(crate) tail: String,
}

/// Splits a URL that lists several hosts; an empty one is refused.
pub(crate) fn split_hosts(url: &str) -> Result<Hosts, String> {
    let (_, rest) = url.split_once("://").ok_or("not a URL")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hosts: Vec<String> = hosts.split(',').map(|h| h.trim().to_string()).collect();
    if hosts.iter().any(String::is_empty) {
        return Err("an empty host in the list of hosts".into());
    }
    Ok(Hosts { userinfo, hosts, tail: tail.to_string() })
}

/// Settings of the broker adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct BusOptions {
    /// Redis: channels are named `{key_prefix}{realm}:{topic}`.
    pub redis_key_prefix: String,
    /// Redis: most bytes of events a node's subscriber connections hold for
    /// it while it is busy; beyond that it starts its session over.
    pub redis_buffer_bytes: usize,
    /// RabbitMQ: the durable topic exchange events go through.
    pub amqp_exchange: String,
    /// RabbitMQ: deliveries in flight to one node before it acknowledges.
    pub amqp_prefetch: u16,
    /// RabbitMQ: most events waiting in one node's queue; beyond it the
    /// oldest are dropped (`x-overflow: drop-head`).
    pub amqp_queue_max_length: u32,
    /// Longest wait between reconnect attempts.
    pub reconnect_max_delay: Duration,
    /// How long a connection attempt (and a broker's answer to a publish)
    /// may take; a publish-only client's first connect gives up after it.
    pub connect_timeout: Duration,
    /// Name this client gives its broker connection (RabbitMQ shows it).
    pub connection_name: String,
    /// Which topics keep history, and how much (nodes only).
    pub history: HistoryConfig,
    /// TLS to the broker, for `rediss://` and `amqps://` URLs.
    pub tls: BusTls,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            redis_key_prefix: "telegraphy:".into(),
            redis_buffer_bytes: 64 << 20,
            amqp_exchange: "telegraphy".into(),
            amqp_prefetch: 1000,
            amqp_queue_max_length: 100_000,
            reconnect_max_delay: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            connection_name: "telegraphy".into(),
            history: HistoryConfig::default(),
            tls: BusTls::default(),
        }
    }
}

/// Why a bus URL cannot be used ([`check_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The scheme names no bus this build knows.
    #[error(
        "bus `{url}` is not a bus URL; use memory:// (embedded, single node), redis://HOST:6379/0 (rediss:// for TLS), \
         redis+cluster://HOST:7000,HOST2:7000 (a Redis Cluster), redis+sentinel://HOST:26379,HOST2:26379/NAME (Sentinel) or \
         amqp://USER:PASS@HOST:5672/VHOST (amqps:// for TLS)"
    )]
    NotABus {
        /// The URL, without its password.
        url: String,
    },
}

/// Which bus a URL names, or why it cannot be used.
pub fn check_url(url: &str) -> Result<BusKind, UrlError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "memory" => Ok(BusKind::Memory),
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel" | "rediss+sentinel" => Ok(BusKind::Redis),
        "amqp" | "amqps" => Ok(BusKind::Amqp),
        _ => Err(UrlError::NotABus { url: redact(url) }),
    }
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Starts a node's bus: it publishes, and it consumes into `inbound`.
/// Broker adapters connect in the background (the node starts not ready
/// and becomes ready once connected).
pub fn start(url: &str, options: &BusOptions, inbound: Inbound) -> Result<Started, BusError> {
    Ok(match check_url(url).map_err(|e| BusError::InvalidUrl(e.to_string()))? {
        BusKind::Memory => {
            let store = Arc::new(MemoryStore::new(options.history.clone()));
            Started { bus: Arc::new(MemoryBus::with_store(inbound, store.clone())), store: Some(store) }
        }
        BusKind::Redis => {
            let bus = redis::RedisBus::start(url, options, inbound)?;
            let store: Arc<dyn EventStore> = Arc::new(bus.store());
            Started { bus: Arc::new(bus), store: Some(store) }
        }
        BusKind::Amqp => {
            let bus = amqp::AmqpBus::start(url, options, inbound)?;
            let store = bus.store().map(|s| Arc::new(s) as Arc<dyn EventStore>);
            Started { bus: Arc::new(bus), store }
        }
    })
}

/// A node's bus, and the event store beside it when the bus has one.
pub struct Started {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// History and retention (`None`: this bus keeps no events yet).
    pub store: Option<Arc<dyn EventStore>>,
}

/// Connects a publish-only bus (for the CLI and the publisher library):
/// fails fast when the broker cannot be reached within `connect_timeout`.
/// Once connected it is supervised like a node's bus: when the broker goes
/// away it turns not ready and fails publishes fast with
/// [`PublishError::Unavailable`], and it reconnects by itself (capped,
/// jittered backoff), so one handle can live as long as the program.
pub async fn connect_publisher(url: &str, options: &BusOptions) -> Result<Arc<dyn Bus>, BusError> {
    match check_url(url).map_err(|e| BusError::InvalidUrl(e.to_string()))? {
        BusKind::Memory => Err(BusError::InvalidUrl(
            "memory:// lives inside one gateway process; publish through the gateway's HTTP endpoint (--gateway URL) instead".into(),
        )),
        BusKind::Redis => Ok(Arc::new(redis::RedisBus::connect_publisher(url, options).await?)),
        BusKind::Amqp => Ok(Arc::new(amqp::AmqpBus::connect_publisher(url, options).await?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(check_url("memory://"), Ok(BusKind::Memory));
        assert_eq!(check_url("redis://127.0.0.1:6379/0"), Ok(BusKind::Redis));
        assert_eq!(check_url("rediss://user:secret@redis.internal:6380/0"), Ok(BusKind::Redis));
        assert_eq!(check_url("amqp://guest:guest@127.0.0.1:5672/%2f"), Ok(BusKind::Amqp));
        assert_eq!(check_url("amqps://u:secret@h/v"), Ok(BusKind::Amqp));
        assert!(is_tls_url("amqps://u:secret@h/v") && !is_tls_url("amqp://h"));
        assert_eq!(check_url("redis+cluster://u:secret@h1:7000,h2:7000"), Ok(BusKind::Redis));
        assert_eq!(check_url("rediss+sentinel://s1:26379,s2:26379/mymaster"), Ok(BusKind::Redis));
        assert!(is_tls_url("rediss+cluster://h:7000") && !is_tls_url("redis+sentinel://h/m"));
        assert_eq!(redact("redis+cluster://u:secret@h1:7000,h2:7000"), "redis+cluster://u:***@h1:7000,h2:7000");
        assert!(matches!(check_url("kafka://x"), Err(UrlError::NotABus { .. })));
        let text = check_url("kafka://u:secret@x").unwrap_err().to_string();
        assert!(text.contains("redis://") && text.contains("rediss://") && !text.contains("secret"), "{text}");
        assert_eq!(redact("amqp://guest:guest@h:5672/v"), "amqp://guest:***@h:5672/v");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        let tls = BusTls { client_key_pem: Some(b"-----BEGIN PRIVATE KEY-----secret".to_vec()), ..Default::default() };
        assert!(!format!("{tls:?}").contains("secret"));
    }
}
