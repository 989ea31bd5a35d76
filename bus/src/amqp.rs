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
//! * One task owns the connection; on loss it reconnects with capped,
//!   jittered backoff, declares a fresh queue and re-binds everything.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use telegraphy_wamp::MatchPolicy;
use tokio_util::sync::CancellationToken;

use crate::interest::{Interest, Interests};
use crate::supervisor::Supervisor;
use crate::{redact, Bus, BusError, BusOptions, Delivery, Envelope, Inbound, PublishError, Ticket};

/// Acknowledge after this many deliveries (or on the tick below).
const ACK_BATCH: u64 = 64;
/// Outstanding acknowledgements are sent at least this often.
const ACK_TICK: Duration = Duration::from_millis(50);
/// AMQP routing keys are short strings.
const MAX_ROUTING_KEY: usize = 255;

/// The RabbitMQ bus.
pub struct AmqpBus {
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    redacted: String,
    options: BusOptions,
    interests: Interests,
    /// The confirm-mode channel publishes go through; `None` while disconnected.
    publisher: Mutex<Option<Channel>>,
    /// A publish-only client's connection, kept open as long as the bus.
    connection: Mutex<Option<Connection>>,
    stop: CancellationToken,
    metrics: crate::BusMetrics,
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

fn classify(url: &str, e: lapin::Error) -> BusError {
    let reason = e.to_string();
    if reason.contains("ACCESS_REFUSED") || reason.to_lowercase().contains("access refused") || reason.contains("NOT_ALLOWED") {
        BusError::Auth { url: redact(url), reason }
    } else {
        BusError::Connect { url: redact(url), reason }
    }
}

async fn open_publisher(url: &str, options: &BusOptions) -> Result<(Connection, Channel), BusError> {
    let conn = Connection::connect(url, ConnectionProperties::default().with_connection_name(options.connection_name.as_str().into()))
        .await
        .map_err(|e| classify(url, e))?;
    let channel = conn.create_channel().await.map_err(|e| classify(url, e))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| classify(url, e))?;
    channel
        .exchange_declare(
            options.amqp_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BusError::Connect {
            url: redact(url),
            reason: format!(
                "cannot declare the topic exchange `{}` ({e}); if it exists with another type, pick another name (amqp.exchange)",
                options.amqp_exchange
            ),
        })?;
    Ok((conn, channel))
}

impl AmqpBus {
    /// A node's RabbitMQ bus; connects (and reconnects) in the background.
    pub fn start(url: &str, options: &BusOptions, inbound: Inbound) -> Result<AmqpBus, BusError> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url))))?;
        let shared = Arc::new(Shared {
            url: url.to_string(),
            redacted: redact(url),
            options: options.clone(),
            interests: Interests::default(),
            publisher: Mutex::new(None),
            connection: Mutex::new(None),
            stop: CancellationToken::new(),
            metrics: inbound.metrics.clone(),
        });
        tokio::spawn(run(shared.clone(), inbound));
        Ok(AmqpBus { shared })
    }

    /// A publish-only RabbitMQ bus, connected now.
    pub async fn connect_publisher(url: &str, options: &BusOptions) -> Result<AmqpBus, BusError> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url))))?;
        let (conn, channel) = tokio::time::timeout(options.connect_timeout, open_publisher(url, options))
            .await
            .map_err(|_| BusError::Connect { url: redact(url), reason: format!("no answer within {:?}", options.connect_timeout) })??;
        let metrics = crate::BusMetrics::unregistered();
        metrics.connected.set(1);
        let shared = Arc::new(Shared {
            url: url.to_string(),
            redacted: redact(url),
            options: options.clone(),
            interests: Interests::default(),
            publisher: Mutex::new(Some(channel)),
            connection: Mutex::new(Some(conn)),
            stop: CancellationToken::new(),
            metrics,
        });
        shared.interests.set_connected(true);
        Ok(AmqpBus { shared })
    }
}

impl Shared {
    /// Sends one event (in order with the events sent before it) and
    /// returns the broker's pending answer, to be awaited with [`Shared::confirmed`].
    async fn send(&self, event: &Envelope, delivery: Delivery) -> Result<PublisherConfirm, PublishError> {
        let key = routing_key(&event.realm, &event.topic);
        if key.len() > MAX_ROUTING_KEY {
            return Err(PublishError::Rejected(format!(
                "realm and topic make a {}-byte AMQP routing key; RabbitMQ allows {MAX_ROUTING_KEY}",
                key.len()
            )));
        }
        let channel = self.publisher.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(channel) = channel else {
            self.metrics.publish_errors.inc();
            return Err(PublishError::Unavailable(format!("not connected to RabbitMQ at {}", self.redacted)));
        };
        let payload = event.encode();
        let send = channel.basic_publish(
            self.options.amqp_exchange.as_str().into(),
            key.as_str().into(),
            // `mandatory`: RabbitMQ returns an event no queue is bound for.
            BasicPublishOptions { mandatory: delivery == Delivery::Subscribed, ..Default::default() },
            &payload,
            BasicProperties::default().with_content_type("application/x-telegraphy-envelope".into()),
        );
        // A broker that stops answering fails the publish instead of hanging it.
        tokio::time::timeout(self.options.connect_timeout, send)
            .await
            .map_err(|_| self.failed(format!("could not send it within {:?}", self.options.connect_timeout)))?
            .map_err(|e| self.failed(e.to_string()))
    }

    /// Awaits the broker's answer to an event [`Shared::send`] sent.
    async fn confirmed(&self, topic: &str, confirm: PublisherConfirm, delivery: Delivery) -> Result<(), PublishError> {
        let confirm = tokio::time::timeout(self.options.connect_timeout, confirm)
            .await
            .map_err(|_| self.failed(format!("no confirmation within {:?}", self.options.connect_timeout)))?
            .map_err(|e| self.failed(e.to_string()))?;
        match confirm {
            Confirmation::Ack(Some(_)) if delivery == Delivery::Subscribed => {
                Err(PublishError::NoSubscriber(format!("no node is subscribed to `{topic}` (RabbitMQ returned it: no queue is bound for it)")))
            }
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => Err(self.failed("the broker refused it (nack)".into())),
            Confirmation::NotRequested => Err(self.failed("publisher confirms are off on this channel".into())),
        }
    }

    fn failed(&self, e: String) -> PublishError {
        self.metrics.publish_errors.inc();
        PublishError::Unavailable(format!("RabbitMQ at {} did not take the event: {e}", self.redacted))
    }
}

impl Bus for AmqpBus {
    fn publish(&self, event: Envelope, delivery: Delivery) -> BoxFuture<'_, Result<(), PublishError>> {
        async move {
            let confirm = self.shared.send(&event, delivery).await?;
            self.shared.confirmed(&event.topic, confirm, delivery).await
        }
        .boxed()
    }

    /// Sends every event in order, then awaits the confirms together: one
    /// round trip for the batch instead of one per event.
    fn publish_batch(&self, events: Vec<Envelope>, delivery: Delivery) -> BoxFuture<'_, Vec<Result<(), PublishError>>> {
        async move {
            let s = &self.shared;
            let mut sent = Vec::with_capacity(events.len());
            for event in &events {
                sent.push(s.send(event, delivery).await);
            }
            let answers = events.iter().zip(sent).map(|(event, sent)| async move {
                match sent {
                    Ok(confirm) => s.confirmed(&event.topic, confirm, delivery).await,
                    Err(e) => Err(e),
                }
            });
            futures_util::future::join_all(answers).await
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
        self.shared.interests.is_connected()
    }

    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn shutdown(&self) {
        self.shared.stop.cancel();
        // A publish-only client's connection closes when dropped.
        self.shared.connection.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

async fn run(s: Arc<Shared>, inbound: Inbound) {
    let probe = s.url.parse::<lapin::uri::AMQPUri>().ok().map(|u| (u.authority.host, u.authority.port));
    let mut supervisor = Supervisor::new("RabbitMQ", s.redacted.clone(), s.options.reconnect_max_delay, probe);
    let mut more = !s.stop.is_cancelled();
    while more {
        let outcome = session(&s, &inbound, &mut supervisor).await;
        *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = None;
        more = supervisor.session_ended(outcome, &s.stop, &s.interests, &s.metrics).await;
    }
}

async fn session(s: &Shared, inbound: &Inbound, supervisor: &mut Supervisor) -> Result<(), String> {
    let timeout = s.options.connect_timeout;
    let (conn, publisher) = tokio::time::timeout(timeout, open_publisher(&s.url, &s.options))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let result = consume(s, inbound, supervisor, &conn, publisher).await;
    let _ = conn.close(200, "telegraphy node closing".into()).await;
    result
}

async fn consume(s: &Shared, inbound: &Inbound, supervisor: &mut Supervisor, conn: &Connection, publisher: Channel) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    let channel = conn.create_channel().await.map_err(e)?;
    channel.basic_qos(s.options.amqp_prefetch, BasicQosOptions::default()).await.map_err(e)?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(s.options.amqp_queue_max_length.min(i32::MAX as u32) as i32));
    args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    let queue =
        channel.queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, args).await.map_err(e)?;
    let queue_name = queue.name().clone();
    let mut consumer =
        channel.basic_consume(queue_name.clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await.map_err(e)?;
    // Publishes go through `publisher` only once every binding is in force
    // again (below): until then they fail fast, as the node is not ready.
    let mut publisher = Some(publisher);
    let exchange = s.options.amqp_exchange.as_str();
    let mut applied: HashSet<String> = HashSet::new();
    let mut applied_version = None;
    let mut connected = false;
    let mut unacked: Option<u64> = None;
    let mut pending = 0u64;
    let mut tick = tokio::time::interval(ACK_TICK);
    loop {
        if applied_version != Some(s.interests.version()) {
            let (version, desired) = s.interests.snapshot();
            let want: HashSet<String> = desired.iter().map(binding_key).collect();
            for key in want.difference(&applied) {
                channel
                    .queue_bind(queue_name.clone(), exchange.into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default())
                    .await
                    .map_err(e)?;
            }
            for key in applied.difference(&want) {
                channel.queue_unbind(queue_name.clone(), exchange.into(), key.as_str().into(), FieldTable::default()).await.map_err(e)?;
            }
            applied = want;
            applied_version = Some(version);
            s.metrics.interests.set(applied.len() as i64);
            s.interests.mark_applied(version);
        }
        if !connected {
            connected = true;
            *s.publisher.lock().unwrap_or_else(|e| e.into_inner()) = publisher.take();
            supervisor.up(&s.interests, &s.metrics, applied.len());
        }
        tokio::select! {
            _ = s.stop.cancelled() => return Ok(()),
            _ = s.interests.changed() => {}
            _ = tick.tick(), if pending > 0 => {
                if let Some(tag) = unacked.take() {
                    channel.basic_ack(tag, BasicAckOptions { multiple: true }).await.map_err(e)?;
                    pending = 0;
                }
            }
            delivery = consumer.next() => {
                let delivery = match delivery {
                    None => return Err("the consumer was cancelled".into()),
                    Some(Err(err)) => return Err(err.to_string()),
                    Some(Ok(d)) => d,
                };
                let tag = delivery.delivery_tag;
                if let Some(event) = inbound.decode(&delivery.data) {
                    if inbound.deliver(event).await.is_err() {
                        return Ok(());
                    }
                }
                unacked = Some(tag);
                pending += 1;
                if pending >= ACK_BATCH {
                    channel.basic_ack(tag, BasicAckOptions { multiple: true }).await.map_err(e)?;
                    unacked = None;
                    pending = 0;
                }
            }
        }
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
