//! History and retention on RabbitMQ, with nothing but RabbitMQ.
//!
//! * **One stream queue** per topic exchange, `{exchange}.history`
//!   (`x-queue-type: stream`, `x-max-age` = `history.ttl`, small segments
//!   so that age retention is fine-grained), bound to the exchange with
//!   the history patterns. Every event of a history topic lands in it once,
//!   whoever published it (a node, the CLI, a library), in the order
//!   RabbitMQ took it: the **stream offset is the position** (offset + 1,
//!   so that 0 means "before the first"), one sequence for every history
//!   topic. Publishers need no change and no configuration.
//! * **Every node reads the whole stream** and keeps an index of it in
//!   memory ([`MemoryStore::numbered_by_stream`]: the last `size` events
//!   per topic, none older than `ttl`); it delivers history topics'
//!   events *from the stream*, not from its own queue, so live delivery and
//!   history share one order and one publication id. After a reconnect it
//!   reads on from the offset after the last one it took: a node's outage
//!   or a broker restart loses nothing the stream kept.
//! * **The epoch** names the stream: the first message of a second stream,
//!   `{exchange}.history-epoch` (no retention, a few bytes), which the
//!   first node to find it empty writes (two nodes racing both write, and
//!   both read the first). A broker that lost its data starts a new epoch,
//!   so old positions resume as "not recovered", never as wrong events.
//! * **Caught up**: at each session start a node writes a marker message to
//!   the stream (type [`MARKER`]) and counts as caught up once it read its
//!   own marker back: everything published before is then in its index.
//!   Resumes wait for that (at most [`CATCH_UP_WAIT`]) so that a client
//!   moving to a node that is still reading is not told "lost".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use tokio::sync::watch;

use crate::history::{Page, StoreError};
use crate::pattern::{Pattern, PatternSet};
use crate::supervisor::SessionError;
use crate::{BusOptions, Envelope, EventStore, HistoryConfig, MemoryStore, Position};

/// The AMQP `type` of the marker messages nodes write to the stream.
pub(crate) const MARKER: &str = "telegraphy.history-marker";
/// How long a resume or `get_events` waits for the node to catch up with
/// the stream before it answers from what it has.
pub(crate) const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// Stream segment size: RabbitMQ drops whole segments when they age out.
const SEGMENT_BYTES: i64 = 8_000_000;
/// Stream deliveries in flight to the node.
const STREAM_PREFETCH: u16 = 1000;

/// The stream of history topics' events.
pub(crate) fn stream_name(exchange: &str) -> String {
    format!("{exchange}.history")
}

/// The stream whose first message is the epoch.
pub(crate) fn epoch_stream_name(exchange: &str) -> String {
    format!("{exchange}.history-epoch")
}

/// Binding keys that route every history topic of any realm to the stream
/// (routing keys are `{realm}.{topic}`, and a realm may have dots, hence
/// `#.`). They may route a little more (a topic that only ends like a
/// pattern; a prefix ending inside a word binds the whole word); the node
/// skips events of topics that keep no history.
pub(crate) fn binding_keys(topics: &PatternSet) -> Vec<String> {
    let mut keys: Vec<String> = topics
        .0
        .iter()
        .map(|p| match p {
            Pattern::All => "#".to_string(),
            Pattern::Exact(t) => format!("#.{t}"),
            Pattern::Wildcard(w) => format!("#.{}", w.split('.').map(|c| if c.is_empty() { "*" } else { c }).collect::<Vec<_>>().join(".")),
            Pattern::Prefix(p) => match p.strip_suffix('.') {
                Some(whole) => format!("#.{whole}.#"),
                None => match p.rsplit_once('.') {
                    Some((words, _partial)) => format!("#.{words}.*.#"),
                    None => "#".to_string(),
                },
            },
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// How far the node has read the stream, for readers waiting on it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Progress {
    /// The node read its own marker of the current session.
    caught_up: bool,
    epoch: u16,
    head: u64,
}

/// The node's side of the history stream, shared by its sessions and its
/// [`AmqpStore`].
pub(crate) struct StreamState {
    pub(crate) index: Arc<MemoryStore>,
    progress: watch::Sender<Progress>,
    /// The next offset (ours: stream offset + 1) to read, once one was read.
    next: Mutex<Option<u64>>,
}

impl StreamState {
    pub(crate) fn new(config: HistoryConfig) -> StreamState {
        StreamState {
            index: Arc::new(MemoryStore::numbered_by_stream(config)),
            progress: watch::Sender::new(Progress::default()),
            next: Mutex::new(None),
        }
    }

    /// The session ended: readers wait for the next one to catch up.
    pub(crate) fn session_ended(&self) {
        self.progress.send_if_modified(|p| std::mem::replace(&mut p.caught_up, false));
    }

    fn moved(&self, offset: u64, caught_up: bool) {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset + 1);
        self.progress.send_modify(|p| {
            p.head = p.head.max(offset);
            p.caught_up |= caught_up;
        });
    }
}

/// The [`EventStore`] of `amqp://`: the node's index of the stream.
pub struct AmqpStore {
    pub(crate) state: Arc<StreamState>,
}

impl AmqpStore {
    /// Waits until the node caught up with the stream (and, for `after`,
    /// read up to it), at most [`CATCH_UP_WAIT`].
    async fn caught_up(&self, after: Option<Position>) -> Result<(), StoreError> {
        let mut rx = self.state.progress.subscribe();
        let ready = |p: &Progress| p.caught_up && after.is_none_or(|a| a.epoch != p.epoch || a.offset <= p.head);
        let waited = tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(ready)).await.is_ok_and(|r| r.is_ok());
        if waited || rx.borrow().caught_up {
            Ok(())
        } else {
            Err(StoreError::Unavailable("this node has not caught up with the history stream in RabbitMQ yet".into()))
        }
    }
}

impl EventStore for AmqpStore {
    fn read(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> BoxFuture<'_, Result<Page, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move {
            self.caught_up(after).await?;
            self.state.index.read(&realm, &topic, after, limit).await
        }
        .boxed()
    }

    fn head(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Option<Position>, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move {
            self.caught_up(None).await?;
            self.state.index.head(&realm, &topic).await
        }
        .boxed()
    }

    fn retained(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Vec<Envelope>, StoreError>> {
        let (realm, topic) = (realm.to_string(), topic.to_string());
        async move {
            self.caught_up(None).await?;
            self.state.index.retained(&realm, &topic).await
        }
        .boxed()
    }

    fn config(&self) -> &HistoryConfig {
        self.state.index.config()
    }

    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn held(&self) -> Option<(u64, u64)> {
        self.state.index.held()
    }
}

/// A session's reading of the stream.
pub(crate) struct Reader {
    pub(crate) consumer: Consumer,
    pub(crate) channel: Channel,
    marker: u64,
    unacked: Option<u64>,
    /// Events the node delivered live while the stream could not be read:
    /// the stream's copies are kept, not delivered again.
    delivered_live: DeliveredLive,
}

/// The publications of history topics a node delivered live, from its own
/// queue, while the history stream could not be read (RabbitMQ had not
/// restarted it after a crash). When the stream is back, the reader starts
/// where it stopped and reads them too: they are kept in the history then,
/// but not delivered a second time. Bounded: past [`DeliveredLive::MAX`]
/// the ones beyond are not remembered (and would be delivered twice),
/// which is logged.
#[derive(Debug, Default)]
pub(crate) struct DeliveredLive {
    ids: std::collections::HashSet<u64>,
    overflowed: bool,
}

impl DeliveredLive {
    /// The most publications remembered (about 4 MB).
    pub(crate) const MAX: usize = 100_000;

    /// A history topic's event went out live.
    pub(crate) fn record(&mut self, publication: u64) {
        if self.ids.len() < Self::MAX {
            self.ids.insert(publication);
        } else if !std::mem::replace(&mut self.overflowed, true) {
            tracing::warn!(
                "more than {} history events were delivered live while the history stream was unavailable; those beyond may be delivered twice when it is back",
                Self::MAX
            );
        }
    }

    /// Whether `publication` went out live already (then it is forgotten).
    pub(crate) fn seen(&mut self, publication: u64) -> bool {
        self.ids.remove(&publication)
    }
}

/// What one stream delivery was.
pub(crate) enum Read {
    /// An event of a history topic, positioned and kept: deliver it.
    Event(Box<Envelope>),
    /// Nothing to deliver (a marker, a topic without history, bad bytes).
    Nothing,
}

/// Declares the two streams (keeping existing ones as they are), binds the
/// history patterns, learns the epoch, writes this session's marker and
/// starts reading where the node left off (from the start on a new epoch).
/// `publisher` is a confirm-mode channel.
pub(crate) async fn start(
    conn: &Connection,
    publisher: &Channel,
    options: &BusOptions,
    state: &StreamState,
    delivered_live: &mut DeliveredLive,
) -> Result<Reader, SessionError> {
    let exchange = options.amqp_exchange.as_str();
    let (stream, epochs) = (stream_name(exchange), epoch_stream_name(exchange));
    let ttl = format!("{}s", options.history.ttl.as_secs().max(1));
    declare_stream(
        conn,
        &stream,
        &[("x-max-age", AMQPValue::LongString(ttl.as_str().into())), ("x-stream-max-segment-size-bytes", AMQPValue::LongLongInt(SEGMENT_BYTES))],
    )
    .await?;
    declare_stream(conn, &epochs, &[]).await?;
    let channel = conn.create_channel().await?;
    for key in binding_keys(&options.history.topics) {
        channel.queue_bind(stream.as_str().into(), exchange.into(), key.as_str().into(), QueueBindOptions::default(), FieldTable::default()).await?;
    }
    let epoch = read_epoch(conn, publisher, &epochs).await?;
    let next = {
        let mut next = state.next.lock().unwrap_or_else(|e| e.into_inner());
        if state.index.stream_head().map(|(e, _)| e) != Some(epoch) {
            state.index.stream_reset(epoch);
            *next = None;
            state.progress.send_replace(Progress { caught_up: false, epoch, head: 0 });
        }
        *next
    };
    let marker = fastrand::u64(..);
    let props = BasicProperties::default().with_type(MARKER.into());
    let confirm =
        publisher.basic_publish("".into(), stream.as_str().into(), BasicPublishOptions::default(), &marker.to_be_bytes(), props).await?.await?;
    if !matches!(confirm, Confirmation::Ack(_)) {
        return Err(SessionError::AmqpRefused("history stream's marker"));
    }
    channel.basic_qos(STREAM_PREFETCH, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    // Ours are stream offsets + 1: the next one to read is stream offset `next - 1`.
    let from = match next {
        Some(n) => AMQPValue::LongLongInt((n - 1) as i64),
        None => AMQPValue::LongString("first".into()),
    };
    args.insert("x-stream-offset".into(), from);
    let consumer = channel.basic_consume(stream.as_str().into(), "".into(), BasicConsumeOptions::default(), args).await?;
    // Taken only now: a start that failed leaves them for the next one.
    Ok(Reader { consumer, channel, marker, unacked: None, delivered_live: std::mem::take(delivered_live) })
}

/// Declares a durable stream queue; one that exists with other arguments
/// (an older `ttl`) is kept as it is, with a warning.
async fn declare_stream(conn: &Connection, name: &str, extra: &[(&str, AMQPValue)]) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    for (k, v) in extra {
        args.insert((*k).into(), v.clone());
    }
    let channel = conn.create_channel().await?;
    let declared = channel.queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await;
    if let Err(e) = declared {
        // PRECONDITION_FAILED closed that channel: check it exists on another.
        let passive = conn.create_channel().await?;
        passive.queue_declare(name.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await?;
        tracing::warn!(stream = name, error = %e, "the history stream exists with other settings (an earlier history.ttl?); keeping them. Delete the stream to apply new ones (this drops the history it keeps)");
        let _ = passive.close(200, "".into()).await;
    } else {
        let _ = channel.close(200, "".into()).await;
    }
    Ok(())
}

/// The epoch: the first message of the epoch stream, written now if there is none.
async fn read_epoch(conn: &Connection, publisher: &Channel, epochs: &str) -> Result<u16, lapin::Error> {
    if let Some(epoch) = first_message(conn, epochs, Duration::from_millis(300)).await? {
        return Ok(epoch);
    }
    let candidate = fastrand::u16(1..);
    publisher
        .basic_publish("".into(), epochs.into(), BasicPublishOptions::default(), &candidate.to_be_bytes(), BasicProperties::default())
        .await?
        .await?;
    match first_message(conn, epochs, Duration::from_secs(5)).await? {
        Some(epoch) => Ok(epoch),
        None => {
            tracing::warn!(stream = epochs, "could not read back the history epoch within 5 s; using this node's own (if another node picked another, resumes across them are told they did not recover until the next reconnect)");
            Ok(candidate)
        }
    }
}

async fn first_message(conn: &Connection, stream: &str, wait: Duration) -> Result<Option<u16>, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let mut consumer = channel.basic_consume(stream.into(), "".into(), BasicConsumeOptions { no_ack: false, ..Default::default() }, args).await?;
    let first = match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(Ok(d))) => <[u8; 2]>::try_from(d.data.as_slice()).ok().map(u16::from_be_bytes).filter(|&e| e != 0),
        Ok(Some(Err(e))) => return Err(e),
        _ => None,
    };
    let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
    let _ = channel.close(200, "".into()).await;
    Ok(first)
}

impl Reader {
    /// Takes one delivery of the stream: positions and indexes it.
    pub(crate) fn take(&mut self, d: &lapin::message::Delivery, state: &StreamState, inbound: &crate::Inbound) -> Read {
        self.unacked = Some(d.delivery_tag);
        let offset = match d.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset")) {
            Some(AMQPValue::LongLongInt(o)) if *o >= 0 => *o as u64 + 1,
            _ => return Read::Nothing,
        };
        if d.properties.kind().as_ref().is_some_and(|k| k.as_str() == MARKER) {
            let ours = d.data.as_slice() == self.marker.to_be_bytes();
            if ours {
                // Everything after our marker was published once the
                // stream was read again: none of it went out live.
                self.delivered_live = DeliveredLive::default();
            }
            state.index.stream_passed(offset);
            state.moved(offset, ours);
            return Read::Nothing;
        }
        let read = match inbound.decode(&d.data) {
            Some(mut event) if state.index.config().keeps(&event.topic) => {
                let again = self.delivered_live.seen(event.publication);
                state.index.insert(&mut event, offset);
                if again {
                    Read::Nothing
                } else {
                    Read::Event(Box::new(event))
                }
            }
            _ => {
                state.index.stream_passed(offset);
                Read::Nothing
            }
        };
        state.moved(offset, false);
        read
    }

    /// Acknowledges what was taken (streams need it to send more).
    pub(crate) async fn ack(&mut self) -> Result<(), lapin::Error> {
        if let Some(tag) = self.unacked.take() {
            self.channel.basic_ack(tag, lapin::options::BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_delivered_live_are_recognised_once_and_the_memory_is_bounded() {
        let mut live = DeliveredLive::default();
        live.record(7);
        assert!(live.seen(7), "delivered live: the stream's copy is not delivered again");
        assert!(!live.seen(7), "only once: a later event with the same id would be new");
        assert!(!live.seen(8));
        for id in 0..DeliveredLive::MAX as u64 + 10 {
            live.record(id);
        }
        assert_eq!(live.ids.len(), DeliveredLive::MAX);
        assert!(live.overflowed);
    }

    #[test]
    fn history_patterns_become_binding_keys_for_any_realm() {
        let keys = |p: &[&str]| binding_keys(&PatternSet::parse(p).unwrap());
        assert_eq!(keys(&["com.app.orders"]), vec!["#.com.app.orders"]);
        assert_eq!(keys(&["com.app.*"]), vec!["#.com.app.#"]);
        assert_eq!(keys(&["com.app*"]), vec!["#.com.*.#"], "a prefix inside a word binds the whole word");
        assert_eq!(keys(&["com..update"]), vec!["#.com.*.update"]);
        assert_eq!(keys(&["*", "a.b"]), vec!["#", "#.a.b"]);
        assert_eq!(keys(&["a.b.*", "a.b.*"]), vec!["#.a.b.#"]);
    }
}
