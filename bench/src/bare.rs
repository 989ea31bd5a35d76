//! The broker alone: a bare consumer of the same bus messages a gateway
//! node consumes, as the ceiling of the bus path.
//!
//! It subscribes exactly as a node does for the workload's topics (one
//! Redis channel per topic on one connection; one exclusive RabbitMQ queue
//! with one binding per topic, the adapter's prefetch and batched
//! acknowledgements), decodes each envelope (it must, to read the event's
//! sequence number and timestamp; the gateway does the same work) and
//! counts it. No WebSocket, no sessions: what it reaches is what the
//! broker and its client library move on this machine.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use telegraphy_bus::envelope::Envelope;
use telegraphy_wamp::Value;
use tokio::task::JoinHandle;

use crate::load::{now_us, Shared, RING};

/// The realm the benchmark's gateways serve.
const REALM: &str = "realm1";

/// Counts one consumed message in `shared` (as a subscriber's EVENT would be).
fn count(shared: &Shared, payload: &[u8]) {
    let Ok(env) = Envelope::decode(payload) else {
        shared.decode_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let num = |v: Option<&Value>| match v {
        Some(Value::UInt(n)) => Some(*n),
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let (Some(ts), Some(seq)) = (num(env.args.first()), num(env.args.get(1))) else {
        shared.decode_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = now_us();
    shared.counts[seq as usize % RING].fetch_add(1, Ordering::Relaxed);
    shared.delivered.fetch_add(1, Ordering::Relaxed);
    shared.last_us.fetch_max(now, Ordering::Relaxed);
    if ts >= shared.record_from_us.load(Ordering::Relaxed) {
        shared.record(seq as usize, now.saturating_sub(ts).max(1));
    }
    shared.progress.notify_one();
}

/// Subscribes a bare consumer to `topics` on the bus at `url` (Redis key
/// prefix / AMQP exchange `namespace`), and returns its reading task.
pub async fn consume(url: &str, namespace: &str, topics: &[String], shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    if url.starts_with("redis") {
        redis_consumer(url, namespace, topics, shared).await
    } else if url.starts_with("amqp") {
        amqp_consumer(url, namespace, topics, shared).await
    } else {
        bail!("the bare consumer needs a redis:// or amqp:// bus, not {url}")
    }
}

async fn redis_consumer(url: &str, namespace: &str, topics: &[String], shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    let prefix = format!("{namespace}:");
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await.context("connecting the bare Redis consumer")?;
    let channels: Vec<String> = topics.iter().map(|t| telegraphy_bus::redis::channel(&prefix, REALM, t)).collect();
    for chunk in channels.chunks(1000) {
        pubsub.subscribe(chunk).await?;
    }
    Ok(tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while let Some(msg) = stream.next().await {
            count(&shared, msg.get_payload_bytes());
        }
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
    }))
}

async fn amqp_consumer(url: &str, namespace: &str, topics: &[String], shared: Arc<Shared>) -> anyhow::Result<JoinHandle<()>> {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let defaults = telegraphy_bus::BusOptions::default();
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.context("connecting the bare AMQP consumer")?;
    let channel = conn.create_channel().await?;
    channel.basic_qos(defaults.amqp_prefetch, BasicQosOptions::default()).await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(namespace.into(), lapin::ExchangeKind::Topic, durable, FieldTable::default()).await?;
    let queue = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
        .await?;
    for t in topics {
        let key = telegraphy_bus::amqp::routing_key(REALM, t);
        channel.queue_bind(queue.name().clone(), namespace.into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default()).await?;
    }
    let mut consumer = channel.basic_consume(queue.name().clone(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    Ok(tokio::spawn(async move {
        let _conn = conn;
        // Acknowledged in batches (every 64 deliveries or 10 ms), as the adapter does.
        let mut unacked: Option<u64> = None;
        let mut n = 0u64;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(10), consumer.next()).await;
            match next {
                Ok(Some(Ok(delivery))) => {
                    count(&shared, &delivery.data);
                    n += 1;
                    unacked = Some(delivery.delivery_tag);
                    if n % 64 == 0 {
                        if let Some(tag) = unacked.take() {
                            let _ = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await;
                        }
                    }
                }
                Ok(_) => break,
                Err(_) => {
                    if let Some(tag) = unacked.take() {
                        let _ = channel.basic_ack(tag, BasicAckOptions { multiple: true }).await;
                    }
                }
            }
        }
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
    }))
}
