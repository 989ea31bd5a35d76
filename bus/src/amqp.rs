//! `amqp://user:pass@host:port/vhost`: RabbitMQ through lapin.
//!
//! * Events go to one durable **topic exchange** (`amqp_exchange`), routing
//!   key `{realm}.{topic}`, with publisher confirms: `publish` succeeds only
//!   when RabbitMQ acknowledged the event.
//! * Each node declares its own exclusive, auto-delete queue, capped at
//!   `amqp_queue_max_length` events (beyond it the oldest are dropped), and
//!   binds only the routing keys its sessions need: exact `a.b.c` →
//!   `realm.a.b.c`; prefix `a.b` → `realm.a.b.#`; wildcard `a..c` →
//!   `realm.a.*.c`. RabbitMQ delivers an event once per queue however many
//!   bindings match, so no duplicates.
//! * Prefix subscriptions route whole components across nodes: prefix
//!   `a.b` gets `a.b` and `a.b.x…`, but not `a.bc` published on another
//!   node (the topic-exchange semantics; see `docs/bus.md`).
//! * Deliveries are acknowledged (in batches) only after the node took
//!   them, and at most `amqp_prefetch` are in flight: a slow node makes
//!   RabbitMQ hold events instead of this process buffering them.
//! * Publishes go through two confirm-mode channels: `Delivery::Accepted`
//!   events straight through one, `Delivery::Subscribed` (`mandatory`)
//!   events through the other, whose returns are matched to their events by
//!   message id (see [`mandatory`] for why).
//! * One task owns the connection; on loss it reconnects with capped,
//!   jittered backoff, declares a fresh queue and re-binds everything. It
//!   also ends the session when a publishing channel closed (RabbitMQ closes
//!   a channel on some errors), so publishes never keep failing on a dead
//!   channel. A publish-only client ([`AmqpBus::connect_publisher`]) runs
//!   the same task with a session that only publishes.
//! * Control messages between nodes ([`crate::control`]) go through a
//!   second topic exchange, `{amqp_exchange}.control`, routing key their
//!   topic; each node binds its inbox and the all-nodes topic to its queue.
//! * With history topics, a node also reads the history stream beside the
//!   exchange and delivers those topics' events from it (see [`history`]).

mod history;
mod mandatory;

pub use history::AmqpStore;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use telegraphy_wamp::{Id, MatchPolicy};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::control::{is_control, CONTROL_REALM};
use crate::interest::{Interest, Interests};
use crate::supervisor::{Client, SessionError, Supervisor, Watched, DRAIN_AFTER_FAILURE};
use crate::{redact, Bus, BusError, BusOptions, Delivery, Envelope, Inbound, PublishError, Ticket};
use mandatory::{Mandatory, Request};

/// Acknowledge after this many deliveries (or on the tick below).
const ACK_BATCH: u64 = 64;
/// Outstanding acknowledgements are sent at least this often.
const ACK_TICK: Duration = Duration::from_millis(50);
/// AMQP routing keys are short strings.
const MAX_ROUTING_KEY: usize = 255;
/// How often a session checks that its publishing channels are open.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The `content_type` of every event this adapter publishes.
const CONTENT_TYPE: &str = "application/x-telegraphy-envelope";

/// The RabbitMQ bus.
pub struct AmqpBus {
    shared: Arc<Shared>,
}

struct Shared {
    /// One URL per broker address (`amqp://u:p@h1,h2/v` lists two).
    urls: Vec<String>,
    /// The address the next connection tries first: the one that worked
    /// last, or the next one after a session ended.
    next: std::sync::atomic::AtomicUsize,
    redacted: String,
    options: BusOptions,
    interests: Interests,
    /// The confirm-mode channel `Delivery::Accepted` publishes go through;
    /// `None` while disconnected.
    publisher: Mutex<Option<Channel>>,
    /// Where `Delivery::Subscribed` publishes go (a channel of their own);
    /// `None` while disconnected.
    mandatory: Mutex<Option<Mandatory>>,
    /// Wakes the session's check of its publishing channels: a publish failed.
    check_now: Arc<Notify>,
    stop: CancellationToken,
    metrics: crate::BusMetrics,
    /// A node's reading of the history stream, when topics keep history.
    history: Option<Arc<history::StreamState>>,
}

/// A connection and the two confirm-mode channels events are published on.
struct Publishing {
    conn: Connection,
    /// For `Delivery::Accepted`.
    accepted: Channel,
    /// For `Delivery::Subscribed` (`mandatory`), owned by a [`Mandatory`] task.
    mandatory: Channel,
}

/// The exchange control messages go through.
pub fn control_exchange(exchange: &str) -> String {
    format!("{exchange}.control")
}

/// The routing key of an event.
pub fn routing_key(realm: &str, topic: &str) -> String {
    format!("{realm}.{topic}")
}

/// The binding key for an interest.
pub fn binding_key(i: &Interest) -> String {
    match i.policy {
        MatchPolicy::Exact => routing_key(&i.realm, &i.pattern),
        MatchPolicy::Prefix => {
            let p = i.pattern.strip_suffix('.').unwrap_or(&i.pattern);
            format!("{}.{p}.#", i.realm)
        }
        MatchPolicy::Wildcard => {
            let words: Vec<&str> = i.pattern.split('.').map(|w| if w.is_empty() { "*" } else { w }).collect();
            format!("{}.{}", i.realm, words.join("."))
        }
    }
}

/// Why [`open_publisher`] failed. A node logs its text while it cannot
/// connect; a publish-only client gets it as the [`BusError`] it converts
/// to (same text).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// RabbitMQ refused the credentials, or the user's access to the vhost
    /// ([`refused`]).
    #[error("the bus at {url} refused the credentials: {source}")]
    Refused {
        /// The URL, without its password.
        url: String,
        source: lapin::Error,
    },
    /// Connecting, or opening a publishing channel, failed otherwise.
    #[error("cannot connect to the bus at {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        source: lapin::Error,
    },
    /// RabbitMQ refused to declare the topic exchange.
    #[error("cannot connect to the bus at {url}: cannot declare the topic exchange `{exchange}` ({source}); if it exists with another type, pick another name (amqp.exchange)")]
    Exchange {
        /// The URL, without its password.
        url: String,
        /// The exchange's name (`amqp.exchange`).
        exchange: String,
        source: lapin::Error,
    },
}

impl From<OpenError> for BusError {
    fn from(e: OpenError) -> BusError {
        match e {
            OpenError::Refused { url, source } => BusError::Auth { url, source: source.into() },
            OpenError::Connect { url, source } if crate::is_certificate_error(&source) => BusError::Tls { url, source: source.into() },
            OpenError::Connect { url, source } => BusError::Connect { url, source: source.into() },
            OpenError::Exchange { url, exchange, source } => {
                BusError::Connect { url, source: crate::ExchangeError { exchange, source: source.into() }.into() }
            }
        }
    }
}

/// Whether RabbitMQ refused the credentials: `ACCESS_REFUSED` (403) when
/// the login fails (RabbitMQ says so with a `connection.close` because
/// lapin announces the `authentication_failure_close` capability), or
/// `NOT_ALLOWED` (530) when the user may not use the vhost.
fn refused(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED))
        }
        _ => false,
    }
}

/// Opens a connection to `url` named after this client; an `amqps://` one
/// trusts `options.tls.ca_pem` besides the system's roots and shows the
/// client certificate when one is set.
pub(crate) async fn connect(url: &str, options: &BusOptions) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(options.connection_name.as_str().into());
    let tls = &options.tls;
    if !crate::is_tls_url(url) {
        return Connection::connect(url, properties).await;
    }
    crate::install_crypto_provider();
    let config = lapin::tcp::OwnedTLSConfig {
        identity: match (&tls.client_cert_pem, &tls.client_key_pem) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 { pem: cert.clone(), key: key.clone() }),
            _ => None,
        },
        cert_chain: tls.ca_pem.as_ref().map(|pem| String::from_utf8_lossy(pem).into_owned()),
    };
    Connection::connect_with_config(url, properties, config, lapin::runtime::default_runtime()?).await
}

/// The broker addresses of a bus URL: `amqp://USER:PASS@HOST1:5672,HOST2:5673/VHOST`
/// (a RabbitMQ cluster) is two URLs with the same credentials, vhost and
/// query; a URL with one host is itself. Each is checked as an AMQP URI.
pub(crate) fn addresses(url: &str) -> Result<Vec<String>, BusError> {
    let invalid = |e: String| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url)));
    let scheme = url.split_once("://").map(|(s, _)| s).ok_or_else(|| invalid("not a URL".into()))?;
    let split = crate::split_hosts(url).map_err(invalid)?;
    split
        .hosts
        .iter()
        .map(|host| {
            let one = format!("{scheme}://{}{host}{}", split.userinfo, split.tail);
            one.parse::<lapin::uri::AMQPUri>().map_err(invalid)?;
            Ok(one)
        })
        .collect()
}

/// Opens a publishing connection to the first of `urls` that answers, from
/// `first` on, each within `connect_timeout`: its index and the connection,
/// or the last address's failure (`None` when it did not answer in time).
async fn open_any(urls: &[String], first: usize, options: &BusOptions) -> Result<(usize, Publishing), (usize, Option<OpenError>)> {
    let mut last = (first, None);
    for k in 0..urls.len() {
        let i = (first + k) % urls.len();
        match tokio::time::timeout(options.connect_timeout, open_publisher(&urls[i], options)).await {
            Ok(Ok(p)) => return Ok((i, p)),
            Ok(Err(e)) => {
                if urls.len() > 1 {
                    tracing::debug!(bus = %redact(&urls[i]), error = %e, "RabbitMQ broker unavailable; trying the next address");
                }
                last = (i, Some(e));
            }
            Err(_) => last = (i, None),
        }
    }
    Err(last)
}

/// The [`OpenError`] for a failed connect or channel of `url`.
fn connect_error(url: &str, source: lapin::Error) -> OpenError {
    if refused(&source) {
        OpenError::Refused { url: redact(url), source }
    } else {
        OpenError::Connect { url: redact(url), source }
    }
}

async fn open_publisher(url: &str, options: &BusOptions) -> Result<Publishing, OpenError> {
    let conn = connect(url, options).await.map_err(|e| connect_error(url, e))?;
    let confirm_channel = || async {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<Channel, lapin::Error>(channel)
    };
    let accepted = confirm_channel().await.map_err(|e| connect_error(url, e))?;
    let mandatory = confirm_channel().await.map_err(|e| connect_error(url, e))?;
    accepted
        .exchange_declare(
            options.amqp_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|source| OpenError::Exchange { url: redact(url), exchange: options.amqp_exchange.clone(), source })?;
    let control = control_exchange(&options.amqp_exchange);
    accepted
        .exchange_declare(
            control.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|source| OpenError::Exchange { url: redact(url), exchange: control, source })?;
    Ok(Publishing { conn, accepted, mandatory })
}

/// The broker's TCP address, probed by the supervisor while it refuses connections.
/// The broker's address to probe while it refuses connections; none for a
/// list of brokers (each reconnect tries them all, from the next one).
fn probe(urls: &[String]) -> Option<(String, u16)> {
    match urls {
        [one] => one.parse::<lapin::uri::AMQPUri>().ok().map(|u| (u.authority.host, u.authority.port)),
        _ => None,
    }
}

impl AmqpBus {
    /// A node's RabbitMQ bus; connects (and reconnects) in the background.
    pub fn start(url: &str, options: &BusOptions, inbound: Inbound) -> Result<AmqpBus, BusError> {
        let urls = addresses(url)?;
        let probe = probe(&urls);
        let mut shared = Shared::new(url, urls, options, inbound.metrics.clone());
        if !options.history.topics.is_empty() {
            shared.history = Some(Arc::new(history::StreamState::new(options.history.clone())));
        }
        let shared = Arc::new(shared);
        let supervisor = Supervisor::new("RabbitMQ", Client::Node, shared.redacted.clone(), options.reconnect_max_delay, probe);
        tokio::spawn(run(shared.clone(), Some(inbound), supervisor, None));
        Ok(AmqpBus { shared })
    }

    /// The node's event store: its index of the history stream (`None`
    /// when no topic keeps history).
    pub fn store(&self) -> Option<AmqpStore> {
        self.shared.history.clone().map(|state| AmqpStore { state })
    }

    /// A publish-only RabbitMQ bus, connected now: fails fast when RabbitMQ
    /// cannot be reached within `connect_timeout`. From then on it is
    /// supervised like a node's bus: not ready while RabbitMQ is gone,
    /// reconnected by itself.
    pub async fn connect_publisher(url: &str, options: &BusOptions) -> Result<AmqpBus, BusError> {
        let urls = addresses(url)?;
        let probe = probe(&urls);
        let (first, publishing) = open_any(&urls, 0, options).await.map_err(|(i, e)| match e {
            Some(e) => BusError::from(e),
            None => BusError::Connect { url: redact(&urls[i]), source: crate::ConnectTimeout(options.connect_timeout).into() },
        })?;
        let shared = Arc::new(Shared::new(url, urls, options, crate::BusMetrics::unregistered()));
        shared.next.store(first, std::sync::atomic::Ordering::Relaxed);
        let mut supervisor = Supervisor::new("RabbitMQ", Client::Publisher, shared.redacted.clone(), options.reconnect_max_delay, probe);
        // Ready before this returns: the first session is this connection.
        shared.install(&publishing);
        supervisor.up(&shared.interests, &shared.metrics, 0);
        tokio::spawn(run(shared.clone(), None, supervisor, Some(publishing)));
        Ok(AmqpBus { shared })
    }
}

impl Shared {
    fn new(url: &str, urls: Vec<String>, options: &BusOptions, metrics: crate::BusMetrics) -> Shared {
        Shared {
            urls,
            next: std::sync::atomic::AtomicUsize::new(0),
            redacted: redact(url),
            options: options.clone(),
            interests: Interests::default(),
            publisher: Mutex::new(None),
            mandatory: Mutex::new(None),
            check_now: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            metrics,
            history: None,
        }
    }

    /// Lets publishes through `p`'s channels (until the session ends).
    fn install(&self, p: &Publishing) {
        let exchanges = [self.options.amqp_exchange.clone(), control_exchange(&self.options.amqp_exchange)];
        let mandatory = Mandatory::start(p.mandatory.clone(), exchanges, self.redacted.clone());
        *self.mandatory.lock().unwrap_or_else(|e| e.into_inner()) = Some(mandatory);
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.accepted.clone());
    }

    /// Publishes fail fast from now on (the session ended).
    fn uninstall(&self) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.mandatory.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn not_connected(&self) -> PublishError {
        self.metrics.publish_errors.inc();
        PublishError::Unavailable(format!("not connected to RabbitMQ at {}", self.redacted))
    }

    /// Sends one `Delivery::Accepted` event (in order with the events sent
    /// before it) and returns the broker's pending answer, to be awaited
    /// with [`Shared::confirmed`].
    async fn send(&self, event: &Envelope) -> Result<PublisherConfirm, PublishError> {
        let key = checked_routing_key(event)?;
        let channel = self.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(channel) = channel else { return Err(self.not_connected()) };
        let payload = event.encode();
        let control;
        let exchange = if is_control(event) {
            control = control_exchange(&self.options.amqp_exchange);
            control.as_str()
        } else {
            self.options.amqp_exchange.as_str()
        };
        let send = channel.basic_publish(
            exchange.into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default().with_content_type(CONTENT_TYPE.into()),
        );
        // A broker that stops answering fails the publish instead of hanging it.
        tokio::time::timeout(self.options.connect_timeout, send)
            .await
            .map_err(|_| self.failed(format!("could not send it within {:?}", self.options.connect_timeout)))?
            .map_err(|e| self.failed(e.to_string()))
    }

    /// Awaits the broker's answer to an event [`Shared::send`] sent.
    async fn confirmed(&self, confirm: PublisherConfirm) -> Result<(), PublishError> {
        let confirm = tokio::time::timeout(self.options.connect_timeout, confirm)
            .await
            .map_err(|_| self.failed(format!("no confirmation within {:?}", self.options.connect_timeout)))?
            .map_err(|e| self.failed(e.to_string()))?;
        match confirm {
            // Not `mandatory`: RabbitMQ never returns these.
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => Err(self.failed("the broker refused it (nack)".into())),
            Confirmation::NotRequested => Err(self.failed("publisher confirms are off on this channel".into())),
        }
    }

    /// Hands one `Delivery::Subscribed` event to the mandatory channel's task
    /// (in order with the events handed before it) and returns where its
    /// answer will come, to be awaited with [`Shared::routed`].
    async fn send_mandatory(&self, event: &Envelope) -> Result<oneshot::Receiver<Result<(), PublishError>>, PublishError> {
        let routing_key = checked_routing_key(event)?;
        let mandatory = self.mandatory.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(mandatory) = mandatory else { return Err(self.not_connected()) };
        let (answer, answered) = oneshot::channel();
        let request = Request {
            publication: event.publication,
            topic: event.topic.clone(),
            routing_key,
            payload: event.encode(),
            control: is_control(event),
            answer,
        };
        match tokio::time::timeout(self.options.connect_timeout, mandatory.send(request)).await {
            Ok(Ok(())) => Ok(answered),
            Ok(Err(())) => Err(self.not_connected()),
            Err(_) => Err(self.failed(format!("could not send it within {:?}", self.options.connect_timeout))),
        }
    }

    /// Awaits the answer to an event [`Shared::send_mandatory`] sent: `Ok`
    /// once RabbitMQ confirmed it and did not return it.
    async fn routed(&self, answered: oneshot::Receiver<Result<(), PublishError>>) -> Result<(), PublishError> {
        match tokio::time::timeout(self.options.connect_timeout, answered).await {
            Err(_) => Err(self.failed(format!("no confirmation within {:?}", self.options.connect_timeout))),
            Ok(Err(_)) => Err(self.failed("the connection closed before RabbitMQ answered".into())),
            Ok(Ok(Err(e @ PublishError::NoSubscriber(_)))) => Err(e),
            Ok(Ok(Err(e))) => {
                self.metrics.publish_errors.inc();
                self.check_now.notify_one();
                Err(e)
            }
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// A publish failed: counts it, and has the session check its channels now.
    fn failed(&self, e: String) -> PublishError {
        self.metrics.publish_errors.inc();
        self.check_now.notify_one();
        PublishError::Unavailable(format!("RabbitMQ at {} did not take the event: {e}", self.redacted))
    }
}

/// The event's routing key, or why RabbitMQ would refuse it.
fn checked_routing_key(event: &Envelope) -> Result<String, PublishError> {
    let key = if is_control(event) { event.topic.clone() } else { routing_key(&event.realm, &event.topic) };
    if key.len() > MAX_ROUTING_KEY {
        return Err(PublishError::Rejected(format!("realm and topic make a {}-byte AMQP routing key; RabbitMQ allows {MAX_ROUTING_KEY}", key.len())));
    }
    Ok(key)
}

impl Bus for AmqpBus {
    fn publish(&self, event: Envelope, delivery: Delivery) -> BoxFuture<'_, Result<Id, PublishError>> {
        async move {
            let s = &self.shared;
            match delivery {
                Delivery::Accepted => s.confirmed(s.send(&event).await?).await,
                Delivery::Subscribed => s.routed(s.send_mandatory(&event).await?).await,
            }
            .map(|()| event.publication)
        }
        .boxed()
    }

    /// Sends every event in order, then awaits the answers together: one
    /// round trip for the batch instead of one per event (`Subscribed`:
    /// about one round of the mandatory channel).
    fn publish_batch(&self, events: Vec<Envelope>, delivery: Delivery) -> BoxFuture<'_, Vec<Result<Id, PublishError>>> {
        async move {
            let s = &self.shared;
            match delivery {
                Delivery::Accepted => {
                    let mut sent = Vec::with_capacity(events.len());
                    for event in &events {
                        sent.push(s.send(event).await);
                    }
                    futures_util::future::join_all(
                        sent.into_iter().zip(&events).map(|(sent, e)| async move { s.confirmed(sent?).await.map(|()| e.publication) }),
                    )
                    .await
                }
                Delivery::Subscribed => {
                    let mut sent = Vec::with_capacity(events.len());
                    for event in &events {
                        sent.push(s.send_mandatory(event).await);
                    }
                    futures_util::future::join_all(
                        sent.into_iter().zip(&events).map(|(sent, e)| async move { s.routed(sent?).await.map(|()| e.publication) }),
                    )
                    .await
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
        "amqp"
    }

    fn shutdown(&self) {
        self.shared.stop.cancel();
        // Publishes fail from now on, not once the task noticed.
        self.shared.uninstall();
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// The adapter task: connect, (a node:) bind and consume; on loss, back
/// off and start over. `inbound` is `None` for a publish-only client, whose
/// first session is `installed`, the connection it was created with.
async fn run(s: Arc<Shared>, inbound: Option<Inbound>, mut supervisor: Supervisor, mut installed: Option<Publishing>) {
    let mut more = !s.stop.is_cancelled();
    while more {
        let outcome = session(&s, inbound.as_ref(), &mut supervisor, installed.take()).await;
        more = supervisor.session_ended(outcome, &s.stop, &s.interests, &s.metrics).await;
    }
}

async fn session(s: &Shared, inbound: Option<&Inbound>, supervisor: &mut Supervisor, installed: Option<Publishing>) -> Result<(), SessionError> {
    let already_installed = installed.is_some();
    let publishing = match installed {
        Some(p) => p,
        None => {
            let first = s.next.load(std::sync::atomic::Ordering::Relaxed);
            let (i, p) = open_any(&s.urls, first, &s.options).await.map_err(|(_, e)| match e {
                Some(e) => SessionError::from(e),
                None => SessionError::Timeout(s.options.connect_timeout),
            })?;
            s.next.store(i, std::sync::atomic::Ordering::Relaxed);
            p
        }
    };
    let result = match inbound {
        Some(inbound) => consume(s, inbound, supervisor, &publishing).await,
        None => publish_only(s, supervisor, &publishing, already_installed).await,
    };
    s.uninstall();
    if let Some(state) = &s.history {
        state.session_ended();
    }
    // The broker that was in use just failed us: a cluster's next broker
    // is tried first.
    let n = s.urls.len();
    let _ = s.next.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |i| Some((i + 1) % n));
    let _ = publishing.conn.close(200, "telegraphy client closing".into()).await;
    result
}

/// Checks `p`'s connection and publishing channels beside the session.
fn watch(s: &Shared, p: &Publishing) -> Watched {
    Watched::spawn(&s.stop, check(s.check_now.clone(), p.conn.status().clone(), [p.accepted.clone(), p.mandatory.clone()]))
}

/// Resolves, with the reason, once the connection or a publishing channel
/// closed: checked every [`CHECK_EVERY`], and at once after a publish
/// failed (`check_now`).
async fn check(check_now: Arc<Notify>, connection: lapin::ConnectionStatus, channels: [Channel; 2]) -> SessionError {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = check_now.notified() => {}
        }
        if !connection.connected() {
            return SessionError::AmqpConnectionClosed;
        }
        for (what, channel) in ["publishing", "mandatory publishing"].into_iter().zip(&channels) {
            if !channel.status().connected() {
                return SessionError::AmqpChannelClosed(what);
            }
        }
    }
}

/// A publish-only client's session: its channels, installed (unless they
/// already are) and watched until they fail or the bus stops.
async fn publish_only(s: &Shared, supervisor: &mut Supervisor, publishing: &Publishing, installed: bool) -> Result<(), SessionError> {
    if !installed {
        s.install(publishing);
        supervisor.up(&s.interests, &s.metrics, 0);
    }
    let watched = watch(s, publishing);
    watched.ended().cancelled().await;
    watched.outcome()
}

/// A node's session: declare its queue, bind every interest, then install
/// the publishing channels and consume until something fails or the bus stops.
async fn consume(s: &Shared, inbound: &Inbound, supervisor: &mut Supervisor, publishing: &Publishing) -> Result<(), SessionError> {
    let conn = &publishing.conn;
    let watched = watch(s, publishing);
    let channel = conn.create_channel().await?;
    channel.basic_qos(s.options.amqp_prefetch, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(s.options.amqp_queue_max_length.min(i32::MAX as u32) as i32));
    args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    let queue = channel.queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, args).await?;
    let queue_name = queue.name().clone();
    let mut consumer = channel.basic_consume(queue_name.clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    // The history stream, once it could be opened. While it cannot (RabbitMQ
    // has not restarted it yet after a crash), history topics are bound to
    // this node's queue like the others: live, without history.
    let mut reader: Option<history::Reader> = None;
    // History events delivered live while the stream could not be read.
    let mut delivered_live = history::DeliveredLive::default();
    let mut retry_history = tokio::time::Instant::now();
    let mut history_down = false;
    let mut stream_pending = 0u64;
    // Publishes go through `publishing` only once every binding is in force
    // again (below): until then they fail fast, as the node is not ready.
    let exchange = s.options.amqp_exchange.as_str();
    let control = control_exchange(exchange);
    // (control exchange?, binding key)
    let mut applied: HashSet<(bool, String)> = HashSet::new();
    let mut applied_version = None;
    let mut connected = false;
    let mut unacked: Option<u64> = None;
    let mut pending = 0u64;
    let mut tick = tokio::time::interval(ACK_TICK);
    loop {
        if let (None, Some(state)) = (&reader, &s.history) {
            if tokio::time::Instant::now() >= retry_history {
                match history::start(conn, &publishing.accepted, &s.options, state, &mut delivered_live).await {
                    Ok(r) => {
                        if history_down {
                            tracing::info!(stream = %history::stream_name(exchange), "the history stream is available again; history topics keep history again");
                        }
                        history_down = false;
                        reader = Some(r);
                        applied_version = None;
                    }
                    Err(e) => {
                        retry_history = tokio::time::Instant::now() + HISTORY_RETRY;
                        if !std::mem::replace(&mut history_down, true) {
                            tracing::warn!(
                                stream = %history::stream_name(exchange),
                                error = %e,
                                "the history stream in RabbitMQ is unavailable; history topics are delivered live, without history, until it is back (retrying every 5 s)"
                            );
                        }
                    }
                }
            }
        }
        let streaming = reader.is_some();
        if applied_version != Some(s.interests.version()) {
            let (version, desired) = s.interests.snapshot();
            // Exact topics that keep history come from the stream only.
            let want: HashSet<(bool, String)> = desired
                .iter()
                .filter(|i| !(streaming && i.policy == MatchPolicy::Exact && s.options.history.keeps(&i.pattern)))
                .map(|i| if i.realm == CONTROL_REALM { (true, i.pattern.clone()) } else { (false, binding_key(i)) })
                .collect();
            let exchange_of = |control_key: bool| if control_key { control.as_str() } else { exchange };
            for (c, key) in want.difference(&applied) {
                channel
                    .queue_bind(queue_name.clone(), exchange_of(*c).into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default())
                    .await?;
            }
            for (c, key) in applied.difference(&want) {
                channel.queue_unbind(queue_name.clone(), exchange_of(*c).into(), key.as_str().into(), FieldTable::default()).await?;
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
            s.install(publishing);
            supervisor.up(&s.interests, &s.metrics, applied.len());
        }
        tokio::select! {
            _ = watched.ended().cancelled() => {
                let outcome = watched.outcome();
                if outcome.is_err() {
                    // The connection or a publishing channel broke: the
                    // deliveries already received were confirmed to their
                    // publishers; hand them to the node before starting over
                    // (the broker takes no acknowledgement any more, and the
                    // node's queue goes with the connection).
                    let until = tokio::time::Instant::now() + DRAIN_AFTER_FAILURE;
                    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(until, consumer.next()).await {
                        if let Some(event) = inbound.decode(&delivery.data) {
                            if inbound.deliver(event).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                return outcome;
            }
            _ = s.interests.changed() => {}
            _ = tokio::time::sleep_until(retry_history), if reader.is_none() && s.history.is_some() => {}
            _ = tick.tick(), if pending > 0 || stream_pending > 0 => {
                if let Some(tag) = unacked.take() {
                    channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
                    pending = 0;
                }
                if let Some(reader) = reader.as_mut() {
                    reader.ack().await?;
                    stream_pending = 0;
                }
            }
            delivery = next_from_stream(&mut reader) => {
                let delivery = match delivery {
                    None => return Err(SessionError::AmqpConsumerCancelled),
                    Some(Err(err)) => return Err(err.into()),
                    Some(Ok(d)) => d,
                };
                if let (Some(r), Some(state)) = (reader.as_mut(), &s.history) {
                    if let history::Read::Event(event) = r.take(&delivery, state, inbound) {
                        if inbound.deliver(*event).await.is_err() {
                            return Ok(());
                        }
                    }
                    stream_pending += 1;
                    if stream_pending >= ACK_BATCH {
                        r.ack().await?;
                        stream_pending = 0;
                    }
                }
            }
            delivery = consumer.next() => {
                let delivery = match delivery {
                    None => return Err(SessionError::AmqpConsumerCancelled),
                    Some(Err(err)) => return Err(err.into()),
                    Some(Ok(d)) => d,
                };
                let tag = delivery.delivery_tag;
                // A history topic's event also reached this queue through a
                // prefix or wildcard binding: the stream delivers it.
                if let Some(event) = inbound.decode(&delivery.data).filter(|e| is_control(e) || !(streaming && s.options.history.keeps(&e.topic))) {
                    if !streaming && s.history.is_some() && !is_control(&event) && s.options.history.keeps(&event.topic) {
                        // The stream will read it too once it is back.
                        delivered_live.record(event.publication);
                    }
                    if inbound.deliver(event).await.is_err() {
                        return Ok(());
                    }
                }
                unacked = Some(tag);
                pending += 1;
                if pending >= ACK_BATCH {
                    channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?;
                    unacked = None;
                    pending = 0;
                }
            }
        }
    }
}

/// How often a session retries a history stream that could not be opened.
const HISTORY_RETRY: Duration = Duration::from_secs(5);

/// The next delivery of the history stream; never, without one.
async fn next_from_stream(reader: &mut Option<history::Reader>) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match reader {
        Some(r) => r.consumer.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod address_tests {
    use super::addresses;

    #[test]
    fn a_url_may_list_several_brokers() {
        assert_eq!(addresses("amqp://g:g@h:5672/%2f").unwrap(), vec!["amqp://g:g@h:5672/%2f"]);
        assert_eq!(
            addresses("amqps://u:p@rabbit-0:5671, rabbit-1:5671,rabbit-2/%2f?heartbeat=10").unwrap(),
            vec!["amqps://u:p@rabbit-0:5671/%2f?heartbeat=10", "amqps://u:p@rabbit-1:5671/%2f?heartbeat=10", "amqps://u:p@rabbit-2/%2f?heartbeat=10"]
        );
        assert_eq!(addresses("amqp://a,b").unwrap(), vec!["amqp://a", "amqp://b"]);
        let err = addresses("amqp://u:secret@a,,b/v").unwrap_err().to_string();
        assert!(err.contains("empty host") && !err.contains("secret"), "{err}");
        assert!(addresses("amqp://u:p@a:notaport/v").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(policy: MatchPolicy, p: &str) -> Interest {
        Interest { realm: "realm1".into(), policy, pattern: p.into() }
    }

    #[test]
    fn binding_keys() {
        assert_eq!(binding_key(&i(MatchPolicy::Exact, "a.b.c")), "realm1.a.b.c");
        assert_eq!(binding_key(&i(MatchPolicy::Prefix, "a.b")), "realm1.a.b.#");
        assert_eq!(binding_key(&i(MatchPolicy::Prefix, "a.b.")), "realm1.a.b.#");
        assert_eq!(binding_key(&i(MatchPolicy::Wildcard, "a..c")), "realm1.a.*.c");
        assert_eq!(binding_key(&i(MatchPolicy::Wildcard, ".b.")), "realm1.*.b.*");
    }
}
