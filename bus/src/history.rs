//! Event history and retention: where each event of a history topic sits
//! in its topic's one cluster-wide order, and the [`EventStore`] that keeps
//! recent events (and retained ones) for resumes and
//! `wamp.subscription.get_events`.
//!
//! # Positions and publication ids
//!
//! An event of a history topic gets a [`Position`] when it is published:
//! the log's `epoch` (random, new whenever the log starts from nothing:
//! first use, expiry, a store reset) and its `offset`. `memory://` and
//! Redis number each topic 1, 2, 3, … (so a hole means missed events);
//! RabbitMQ uses its stream's offsets, one sequence shared by every history
//! topic (a topic's offsets increase but skip). The position is assigned
//! with the publish, whoever publishes, so every node sees the same order.
//!
//! The publication id subscribers see *is* the position
//! (`offset << 16 | epoch`, see [`Position::publication`]), so a client
//! that remembers the last publication id it got can resume from it on any
//! node, with standard WAMP (`get_events(after_publication=…)`) or with
//! the `_after_publication` SUBSCRIBE option. An id from another epoch, or
//! one older than what the store still keeps, resumes as "not recovered":
//! never a partial list.
//!
//! # The `EventStore` contract
//!
//! * **Order**: [`EventStore::read`] returns a topic's events oldest first,
//!   in position order, the order live delivery used.
//! * **Bounds**: a topic keeps at most `size` events, none older than
//!   `ttl`; the page says what is kept (`first`, `head`), so a reader can
//!   tell a complete range from a trimmed one.
//! * **What is kept**: events whose filter names session ids (`eligible`,
//!   `exclude`) are never kept: session ids do not survive a reconnect, so
//!   replaying such an event could reach the wrong session. They are
//!   delivered live only. Filters by authid and authrole are kept and
//!   applied again to every reader.
//! * **Retention**: the most recent retained events of a topic (one per
//!   distinct filter, newest first, a few at most), so that a subscriber
//!   gets the newest one it may receive.
//! * **Outage**: a store that cannot be reached fails the read with
//!   [`StoreError::Unavailable`]; the caller then reports "not recovered".

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use telegraphy_wamp::{Id, MAX_ID};

use crate::pattern::PatternSet;
use crate::Envelope;

/// Which topics keep history, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    /// Topics that keep history (empty: none; retention works anyway).
    pub topics: PatternSet,
    /// Events kept per topic.
    pub size: usize,
    /// How long an event is kept.
    pub ttl: Duration,
    /// Most topics a store inside the node (`memory://`) keeps a log for;
    /// beyond it new topics are not kept (counted, logged).
    pub max_topics: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig { topics: PatternSet::default(), size: 1000, ttl: Duration::from_secs(300), max_topics: 100_000 }
    }
}

impl HistoryConfig {
    /// Whether `topic` keeps history.
    pub fn keeps(&self, topic: &str) -> bool {
        self.topics.matches(topic)
    }
}

/// Bits of a publication id that hold the epoch.
const EPOCH_BITS: u32 = 16;

/// The largest offset a publication id can carry (2^37 - 1: at 1,000
/// events per second on one topic, 4 years).
pub const MAX_OFFSET: u64 = (MAX_ID >> EPOCH_BITS) - 1;

/// Where an event sits in its topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The log's incarnation (never 0).
    pub epoch: u16,
    /// 1 for the log's first event, then one more per event.
    pub offset: u64,
}

impl Position {
    /// The publication id subscribers see for this event.
    pub fn publication(self) -> Id {
        (self.offset << EPOCH_BITS) | u64::from(self.epoch)
    }

    /// The position a publication id stands for, when it can stand for one.
    /// Offset 0 is the place before a log's first event (the position a
    /// subscriber gets for a topic nothing was published to yet). Ids of
    /// events without history decode too, to positions no store holds: a
    /// resume from one reports "not recovered".
    pub fn from_publication(id: Id) -> Option<Position> {
        let epoch = (id & 0xFFFF) as u16;
        let offset = id >> EPOCH_BITS;
        (epoch != 0 && id <= MAX_ID).then_some(Position { epoch, offset })
    }
}

/// A read from a topic's log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The log's epoch; `None` when the topic has no log (nothing kept).
    pub epoch: Option<u16>,
    /// Offset of the oldest event still kept (`head + 1` when none is).
    pub first: u64,
    /// Offset of the newest event (0 before the first).
    pub head: u64,
    /// The events read, oldest first, with their positions set.
    pub events: Vec<Envelope>,
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now; retry later.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
}

/// Recent events and retained events (see the module docs for the contract).
pub trait EventStore: Send + Sync + 'static {
    /// The events of `topic` after `after` (exclusive; `None`: the newest
    /// `limit`), oldest first, at most `limit`. When `after` is from another
    /// epoch the page has no events (and says the log's epoch).
    fn read(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> BoxFuture<'_, Result<Page, StoreError>>;

    /// The topic's current position (its newest event, offset 0 before the
    /// first), starting its log when the topic keeps history and has none:
    /// a subscriber resumes from it even if nothing is published before it
    /// goes away. `None` when the topic keeps no history.
    fn head(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Option<Position>, StoreError>>;

    /// The topic's retained events, newest first.
    fn retained(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Vec<Envelope>, StoreError>>;

    /// Which topics keep history.
    fn config(&self) -> &HistoryConfig;

    /// A short name for logs and metrics (`memory`, `redis`, `amqp`).
    fn kind(&self) -> &'static str;

    /// What this process holds for the store: (events, bytes of their
    /// envelopes), history and retained together. `None` when the events
    /// live in the broker (its own metrics tell).
    fn held(&self) -> Option<(u64, u64)> {
        None
    }

    /// Whether a node's live path can skip events this store kept, so that
    /// the node must fill gaps from it (Redis: pub/sub misses what was
    /// published while the node was disconnected). False when live
    /// delivery reads the store itself (`memory://`, the RabbitMQ stream).
    fn live_path_may_skip(&self) -> bool {
        false
    }
}

/// What a resume from a position comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Every event after the position, oldest first (maybe none).
    Recovered(Vec<Envelope>),
    /// Some events after the position are no longer kept (or the log was
    /// reset, or more were missed than may be replayed): the client must
    /// reload its state.
    Lost,
}

/// Decides a resume from `after`, given a page read with
/// `read(after, max + 1)`: recovered only when nothing between `after` and
/// the head was trimmed and at most `max` events were missed.
pub fn resume(page: Page, after: Position, max: usize) -> Resume {
    let same_log = page.epoch == Some(after.epoch);
    let known = after.offset <= page.head;
    let nothing_trimmed = after.offset + 1 >= page.first;
    if same_log && known && nothing_trimmed && page.events.len() <= max {
        Resume::Recovered(page.events)
    } else {
        Resume::Lost
    }
}

/// Whether an event may be kept at all (see the contract).
pub fn keepable(event: &Envelope) -> bool {
    !crate::control::is_control(event) && event.filter.exclude.is_empty() && event.filter.eligible.is_none()
}

/// Retained events kept per topic (newest first), for subscribers that
/// may not receive the newest one.
const RETAINED_PER_TOPIC: usize = 4;

/// The store inside the node: a bounded ring per topic. For `memory://` it
/// numbers each topic's events itself ([`MemoryStore::new`]); for
/// `amqp://` it indexes a broker stream whose offsets number the events of
/// every history topic together ([`MemoryStore::numbered_by_stream`]).
pub struct MemoryStore {
    config: HistoryConfig,
    logs: Mutex<Logs>,
}

#[derive(Default)]
struct Logs {
    by_topic: HashMap<(String, String), Log>,
    /// Appends since the last sweep of expired logs.
    since_sweep: usize,
    /// Events not kept because `max_topics` logs exist.
    refused: u64,
    /// Events held (history and retained) and their in-memory bytes.
    events: u64,
    bytes: u64,
    /// Set when a broker stream numbers the events.
    stream: Option<Stream>,
}

/// Where the store stands in the broker's stream it indexes.
#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    /// The stream's epoch (0 until the first [`MemoryStore::stream_reset`]).
    epoch: u16,
    /// The first offset read since the reset: the index is complete from it.
    start: Option<u64>,
    /// The newest offset read.
    head: u64,
}

impl Stream {
    /// The stream was read up to `offset`.
    fn passed(&mut self, offset: u64) {
        self.start.get_or_insert(offset);
        self.head = self.head.max(offset);
    }
}

struct Log {
    epoch: u16,
    head: u64,
    /// (kept at, in-memory bytes, event).
    events: VecDeque<(Instant, u64, Envelope)>,
    retained: VecDeque<(u64, Envelope)>,
    /// Last append or position handed out: an empty log lives `ttl` after it.
    touched: Instant,
    /// The offset of the newest event dropped by [`Log::trim`] (0: none).
    trimmed: u64,
}

impl Log {
    fn new() -> Log {
        Log { epoch: fastrand::u16(1..), head: 0, events: VecDeque::new(), retained: VecDeque::new(), touched: Instant::now(), trimmed: 0 }
    }

    /// Drops events beyond `size` or older than `ttl`; returns their count and bytes.
    fn trim(&mut self, config: &HistoryConfig, now: Instant) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        while self.events.len() > config.size || self.events.front().is_some_and(|(at, _, _)| now.duration_since(*at) > config.ttl) {
            if let Some((_, size, e)) = self.events.pop_front() {
                n += 1;
                bytes += size;
                self.trimmed = self.trimmed.max(e.position.map_or(0, |p| p.offset));
            }
        }
        (n, bytes)
    }

    fn first(&self) -> u64 {
        self.events.front().and_then(|(_, _, e)| e.position).map(|p| p.offset).unwrap_or(self.head + 1)
    }

    /// Keeps `event` at the end of the log (kept at `at`), then trims.
    fn push(&mut self, config: &HistoryConfig, at: Instant, now: Instant, event: &Envelope, delta: &mut Delta) {
        let size = event.footprint();
        self.events.push_back((at, size, event.clone()));
        delta.added(size);
        delta.dropped(self.trim(config, now));
    }

    /// Keeps `event` as retained (newest first, one per filter).
    fn retain(&mut self, event: &Envelope, delta: &mut Delta) {
        let before = self.retained.len();
        let mut freed = 0;
        self.retained.retain(|(s, e)| {
            let keep = e.filter != event.filter;
            if !keep {
                freed += s;
            }
            keep
        });
        delta.dropped(((before - self.retained.len()) as u64, freed));
        let size = event.footprint();
        self.retained.push_front((size, event.clone()));
        delta.added(size);
        while self.retained.len() > RETAINED_PER_TOPIC {
            if let Some((s, _)) = self.retained.pop_back() {
                delta.dropped((1, s));
            }
        }
    }
}

/// Events and bytes one change to the store added and dropped.
#[derive(Default)]
struct Delta {
    added: (u64, u64),
    dropped: (u64, u64),
}

impl Delta {
    fn added(&mut self, bytes: u64) {
        self.added = (self.added.0 + 1, self.added.1 + bytes);
    }

    fn dropped(&mut self, (n, bytes): (u64, u64)) {
        self.dropped = (self.dropped.0 + n, self.dropped.1 + bytes);
    }
}

impl Logs {
    /// Counts what a change added and dropped.
    fn account(&mut self, d: Delta) {
        self.events = self.events + d.added.0 - d.dropped.0;
        self.bytes = self.bytes + d.added.1 - d.dropped.1;
    }

    /// Every 1,024 calls, drops expired events and the logs left empty.
    fn sweep(&mut self, config: &HistoryConfig, now: Instant) {
        self.since_sweep += 1;
        if self.since_sweep < 1024 {
            return;
        }
        self.since_sweep = 0;
        let (mut n, mut bytes) = (0, 0);
        self.by_topic.retain(|_, log| {
            let (dn, db) = log.trim(config, now);
            n += dn;
            bytes += db;
            !log.events.is_empty() || !log.retained.is_empty() || now.duration_since(log.touched) < config.ttl
        });
        self.account(Delta { dropped: (n, bytes), ..Delta::default() });
    }

    /// The topic's log, made when missing unless `max_topics` logs exist
    /// (then `None`: counted, logged now and then).
    fn log(&mut self, config: &HistoryConfig, realm: &str, topic: &str) -> Option<&mut Log> {
        let key = (realm.to_string(), topic.to_string());
        if !self.by_topic.contains_key(&key) && self.by_topic.len() >= config.max_topics {
            self.refused += 1;
            if self.refused.is_power_of_two() {
                tracing::warn!(
                    topics = config.max_topics,
                    refused = self.refused,
                    "the history store holds history.max_topics topics; new topics are delivered live but not kept"
                );
            }
            return None;
        }
        Some(self.by_topic.entry(key).or_insert_with(Log::new))
    }
}

impl MemoryStore {
    /// An empty store that numbers each topic's events itself (`memory://`).
    pub fn new(config: HistoryConfig) -> MemoryStore {
        MemoryStore { config, logs: Mutex::new(Logs::default()) }
    }

    /// An empty index of a broker stream (`amqp://`): events come with
    /// their stream offsets ([`MemoryStore::insert`]), one sequence for
    /// every history topic, so a topic's offsets increase but skip.
    pub fn numbered_by_stream(config: HistoryConfig) -> MemoryStore {
        MemoryStore { config, logs: Mutex::new(Logs { stream: Some(Stream::default()), ..Logs::default() }) }
    }

    /// Gives `event` its position (when its topic keeps history) and keeps
    /// it; keeps it as retained when it asks to be. The caller hands events
    /// to the node in the order of these calls.
    pub fn append(&self, event: &mut Envelope) {
        let history = self.config.keeps(&event.topic) && keepable(event);
        let retain = event.retain && keepable(event);
        if !history && !retain {
            return;
        }
        let now = Instant::now();
        let mut guard = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let logs = &mut *guard;
        logs.sweep(&self.config, now);
        let Some(log) = logs.log(&self.config, &event.realm, &event.topic) else { return };
        let mut delta = Delta::default();
        if history {
            delta.dropped(log.trim(&self.config, now));
            if log.events.is_empty() && log.head > 0 {
                // Everything expired: a new log, so that old positions
                // cannot be mistaken for recoverable ones.
                let retained = std::mem::take(&mut log.retained);
                *log = Log::new();
                log.retained = retained;
            }
            log.touched = now;
            if log.head < MAX_OFFSET {
                log.head += 1;
                let position = Position { epoch: log.epoch, offset: log.head };
                event.position = Some(position);
                event.publication = position.publication();
                log.push(&self.config, now, now, event, &mut delta);
            }
        }
        if retain {
            log.retain(event, &mut delta);
        }
        logs.account(delta);
    }

    /// Starts the index of a stream over: `epoch` names the stream, and
    /// nothing read before counts any more.
    pub fn stream_reset(&self, epoch: u16) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        *logs = Logs { stream: Some(Stream { epoch, start: None, head: 0 }), refused: logs.refused, ..Logs::default() };
    }

    /// The epoch and newest offset of the stream indexed so far (`None`
    /// for a store that numbers its own events).
    pub fn stream_head(&self) -> Option<(u16, u64)> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).stream.map(|s| (s.epoch, s.head))
    }

    /// Keeps an event read from the stream at `offset` (1 and up): sets its
    /// position and publication id from the offset, keeps it when its
    /// topic keeps history (unless it is older than `ttl`) or it is
    /// retained. Offsets must come in increasing order.
    pub fn insert(&self, event: &mut Envelope, offset: u64) {
        let now = Instant::now();
        let mut guard = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let logs = &mut *guard;
        let Some(stream) = logs.stream.as_mut() else { return };
        stream.passed(offset);
        let position = Position { epoch: stream.epoch, offset };
        event.position = Some(position);
        event.publication = position.publication();
        let history = self.config.keeps(&event.topic) && keepable(event);
        let retain = event.retain && keepable(event);
        if !history && !retain {
            return;
        }
        logs.sweep(&self.config, now);
        let age = Duration::from_micros(crate::now_us().saturating_sub(event.published_at_us));
        let at = now.checked_sub(age).unwrap_or(now);
        let Some(log) = logs.log(&self.config, &event.realm, &event.topic) else { return };
        let mut delta = Delta::default();
        if history {
            log.touched = now;
            if age > self.config.ttl {
                // Read back from a stream that keeps more than `ttl`.
                log.trimmed = offset;
            } else {
                log.push(&self.config, at, now, event, &mut delta);
            }
        }
        if retain {
            log.retain(event, &mut delta);
        }
        logs.account(delta);
    }

    /// The stream moved to `offset` with something that is not an event of
    /// a history topic (a marker, another topic's event).
    pub fn stream_passed(&self, offset: u64) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = logs.stream.as_mut() {
            stream.passed(offset);
        }
    }

    /// Events kept, over all topics.
    pub fn kept(&self) -> usize {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).by_topic.values().map(|l| l.events.len()).sum()
    }

    fn read_now(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> Page {
        let now = Instant::now();
        let mut guard = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let logs = &mut *guard;
        let stream = logs.stream;
        let (n, bytes, page) = match logs.by_topic.get_mut(&(realm.to_string(), topic.to_string())) {
            None => match stream {
                // A topic the stream has not carried since the index started.
                Some(st) if st.epoch != 0 && self.config.keeps(topic) => {
                    (0, 0, Page { epoch: Some(st.epoch), first: st.start.unwrap_or(st.head + 1), head: st.head, events: Vec::new() })
                }
                _ => return Page::default(),
            },
            Some(log) => {
                let (n, bytes) = log.trim(&self.config, now);
                let mut page = match stream {
                    Some(st) => {
                        Page { epoch: Some(st.epoch), first: st.start.unwrap_or(st.head + 1).max(log.trimmed + 1), head: st.head, events: Vec::new() }
                    }
                    None if log.events.is_empty() && log.retained.is_empty() && log.head == 0 => Page::default(),
                    None => Page { epoch: Some(log.epoch), first: log.first(), head: log.head, events: Vec::new() },
                };
                if page.epoch.is_some() {
                    let offset_of = |e: &Envelope| e.position.map(|p| p.offset).unwrap_or(0);
                    match after {
                        Some(p) if Some(p.epoch) != page.epoch => {}
                        Some(p) => {
                            page.events = log.events.iter().map(|(_, _, e)| e).filter(|e| offset_of(e) > p.offset).take(limit).cloned().collect()
                        }
                        None => {
                            let skip = log.events.len().saturating_sub(limit);
                            page.events = log.events.iter().skip(skip).map(|(_, _, e)| e.clone()).collect();
                        }
                    }
                }
                (n, bytes, page)
            }
        };
        logs.account(Delta { dropped: (n, bytes), ..Delta::default() });
        page
    }
}

impl MemoryStore {
    fn head_now(&self, realm: &str, topic: &str) -> Option<Position> {
        if !self.config.keeps(topic) {
            return None;
        }
        let now = Instant::now();
        let mut guard = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let logs = &mut *guard;
        if let Some(st) = logs.stream {
            // One sequence for every topic: the newest offset read.
            return (st.epoch != 0).then_some(Position { epoch: st.epoch, offset: st.head });
        }
        let key = (realm.to_string(), topic.to_string());
        if !logs.by_topic.contains_key(&key) && logs.by_topic.len() >= self.config.max_topics {
            return None;
        }
        let log = logs.by_topic.entry(key).or_insert_with(Log::new);
        log.touched = now;
        let (n, bytes) = log.trim(&self.config, now);
        let head = Position { epoch: log.epoch, offset: log.head };
        logs.account(Delta { dropped: (n, bytes), ..Delta::default() });
        Some(head)
    }
}

impl EventStore for MemoryStore {
    fn head(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Option<Position>, StoreError>> {
        let head = self.head_now(realm, topic);
        async move { Ok(head) }.boxed()
    }

    fn read(&self, realm: &str, topic: &str, after: Option<Position>, limit: usize) -> BoxFuture<'_, Result<Page, StoreError>> {
        let page = self.read_now(realm, topic, after, limit);
        async move { Ok(page) }.boxed()
    }

    fn retained(&self, realm: &str, topic: &str) -> BoxFuture<'_, Result<Vec<Envelope>, StoreError>> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let found = logs
            .by_topic
            .get(&(realm.to_string(), topic.to_string()))
            .map(|l| l.retained.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default();
        async move { Ok(found) }.boxed()
    }

    fn config(&self) -> &HistoryConfig {
        &self.config
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn held(&self) -> Option<(u64, u64)> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        Some((logs.events, logs.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Filter;

    fn config(size: usize) -> HistoryConfig {
        HistoryConfig { topics: PatternSet::parse(&["h.*"]).unwrap(), size, ttl: Duration::from_secs(60), max_topics: 3 }
    }

    fn event(topic: &str, n: u64) -> Envelope {
        Envelope {
            realm: "realm1".into(),
            publication: 7,
            topic: topic.into(),
            args: vec![telegraphy_wamp::Value::UInt(n)],
            kwargs: Default::default(),
            filter: Filter::default(),
            publisher: None,
            published_at_us: 0,
            retain: false,
            position: None,
        }
    }

    fn numbers(events: &[Envelope]) -> Vec<u64> {
        events.iter().map(|e| e.args[0].as_u64().unwrap()).collect()
    }

    fn block_on<T>(f: BoxFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("the memory store answers at once")
    }

    #[test]
    fn publication_ids_round_trip_and_stay_in_the_wamp_range() {
        for p in [Position { epoch: 1, offset: 1 }, Position { epoch: u16::MAX, offset: MAX_OFFSET }] {
            let id = p.publication();
            assert!((1..=MAX_ID).contains(&id), "{id}");
            assert_eq!(Position::from_publication(id), Some(p));
        }
        assert_eq!(Position::from_publication(0), None);
        assert_eq!(Position::from_publication(5), Some(Position { epoch: 5, offset: 0 }), "offset 0: before the first event");
        assert_eq!(Position::from_publication(1 << 16), None, "epoch 0 is no position");
    }

    #[test]
    fn positions_follow_publish_order_and_ids_are_the_positions() {
        let store = MemoryStore::new(config(10));
        let mut ids = Vec::new();
        for n in 1..=3 {
            let mut e = event("h.a", n);
            store.append(&mut e);
            let p = e.position.expect("a history topic gets a position");
            assert_eq!((p.offset, e.publication), (n, p.publication()));
            ids.push(e.publication);
        }
        let mut other = event("x.a", 9);
        store.append(&mut other);
        assert_eq!((other.position, other.publication), (None, 7), "topics without history are left alone");
        let after = Position::from_publication(ids[0]).unwrap();
        let page = block_on(store.read("realm1", "h.a", Some(after), 10)).unwrap();
        assert_eq!(numbers(&page.events), vec![2, 3]);
        assert_eq!(resume(page, after, 10), Resume::Recovered(vec![event_at(&store, 2), event_at(&store, 3)]));
    }

    fn event_at(store: &MemoryStore, offset: u64) -> Envelope {
        let page = block_on(store.read("realm1", "h.a", None, 100)).unwrap();
        page.events.into_iter().find(|e| e.position.unwrap().offset == offset).unwrap()
    }

    #[test]
    fn a_trimmed_range_another_epoch_or_too_many_missed_is_lost_never_partial() {
        let store = MemoryStore::new(config(3));
        let mut first = None;
        for n in 1..=5 {
            let mut e = event("h.a", n);
            store.append(&mut e);
            first.get_or_insert(e.position.unwrap());
        }
        let first = first.unwrap();
        // Offsets 3..=5 are kept; a resume after 1 misses 2.
        let page = block_on(store.read("realm1", "h.a", Some(first), 10)).unwrap();
        assert_eq!((page.first, page.head), (3, 5));
        assert_eq!(resume(page, first, 10), Resume::Lost);
        // After 2: 3, 4, 5 are all kept.
        let two = Position { offset: 2, ..first };
        assert!(matches!(resume(block_on(store.read("realm1", "h.a", Some(two), 10)).unwrap(), two, 10), Resume::Recovered(v) if v.len() == 3));
        // More missed than may be replayed.
        assert_eq!(resume(block_on(store.read("realm1", "h.a", Some(two), 3)).unwrap(), two, 2), Resume::Lost);
        // At the head: nothing missed.
        let head = Position { offset: 5, ..first };
        assert_eq!(resume(block_on(store.read("realm1", "h.a", Some(head), 10)).unwrap(), head, 10), Resume::Recovered(vec![]));
        // Another epoch, or a position past the head (a random id).
        let other = Position { epoch: first.epoch.wrapping_add(1).max(1), offset: 4 };
        assert_eq!(resume(block_on(store.read("realm1", "h.a", Some(other), 10)).unwrap(), other, 10), Resume::Lost);
        let ahead = Position { offset: 99, ..first };
        assert_eq!(resume(block_on(store.read("realm1", "h.a", Some(ahead), 10)).unwrap(), ahead, 10), Resume::Lost);
        // An unknown topic.
        assert_eq!(resume(block_on(store.read("realm1", "h.zz", Some(first), 10)).unwrap(), first, 10), Resume::Lost);
    }

    #[test]
    fn a_subscriber_that_saw_nothing_resumes_from_the_head_it_was_given() {
        let store = MemoryStore::new(config(10));
        let head = block_on(store.head("realm1", "h.quiet")).unwrap().expect("a history topic has a head");
        assert_eq!(head.offset, 0, "nothing published yet");
        assert_eq!(Position::from_publication(head.publication()), Some(head));
        for n in 1..=2 {
            store.append(&mut event("h.quiet", n));
        }
        let page = block_on(store.read("realm1", "h.quiet", Some(head), 10)).unwrap();
        assert!(matches!(resume(page, head, 10), Resume::Recovered(v) if numbers(&v) == vec![1, 2]), "same epoch: everything since");
        assert_eq!(block_on(store.head("realm1", "x.none")).unwrap(), None, "no history for this topic");
    }

    #[test]
    fn session_targeted_events_are_never_kept_and_topics_are_bounded() {
        let store = MemoryStore::new(config(10));
        let mut targeted = event("h.a", 1);
        targeted.filter.eligible = Some(vec![42]);
        targeted.retain = true;
        store.append(&mut targeted);
        assert_eq!(targeted.position, None);
        assert_eq!(store.kept(), 0);
        assert!(block_on(store.retained("realm1", "h.a")).unwrap().is_empty());
        for t in ["h.1", "h.2", "h.3", "h.4"] {
            store.append(&mut event(t, 1));
        }
        assert_eq!(store.kept(), 3, "max_topics is 3: the fourth topic is not kept");
        let (events, bytes) = store.held().unwrap();
        assert_eq!(events, 3);
        let envelope = std::mem::size_of::<Envelope>() as u64;
        assert!(bytes > 3 * envelope && bytes < 3 * (envelope + 200), "{bytes} bytes for three small envelopes of {envelope} B");
    }

    #[test]
    fn a_stream_index_resumes_across_offsets_that_skip() {
        let store = MemoryStore::numbered_by_stream(HistoryConfig { size: 2, ..config(10) });
        assert_eq!(block_on(store.head("realm1", "h.a")).unwrap(), None, "no epoch before the stream is read");
        store.stream_reset(7);
        let insert = |topic: &str, n: u64, offset: u64| {
            let mut e = event(topic, n);
            e.published_at_us = crate::now_us();
            store.insert(&mut e, offset);
            e
        };
        assert_eq!(insert("h.a", 1, 3).publication, Position { epoch: 7, offset: 3 }.publication());
        store.stream_passed(4);
        insert("h.b", 1, 5);
        insert("h.a", 2, 8);
        insert("x.live", 1, 9);
        insert("h.a", 3, 12);
        assert_eq!(block_on(store.head("realm1", "h.quiet")).unwrap(), Some(Position { epoch: 7, offset: 12 }));
        let from = |offset| {
            let after = Position { epoch: 7, offset };
            resume(block_on(store.read("realm1", "h.a", Some(after), 11)).unwrap(), after, 10)
        };
        assert!(matches!(from(3), Resume::Recovered(v) if numbers(&v) == vec![2, 3]));
        assert!(matches!(from(2), Resume::Lost), "size 2: offset 3 was dropped");
        let b = |offset| {
            let after = Position { epoch: 7, offset };
            resume(block_on(store.read("realm1", "h.b", Some(after), 11)).unwrap(), after, 10)
        };
        assert!(matches!(b(2), Resume::Recovered(v) if numbers(&v) == vec![1]), "2 is just before the first offset read");
        assert!(matches!(b(1), Resume::Lost), "offset 2 was never read");
        assert!(matches!(from(12), Resume::Recovered(v) if v.is_empty()));
        assert!(matches!(from(13), Resume::Lost), "past the head");
        let quiet = Position { epoch: 7, offset: 9 };
        assert!(
            matches!(resume(block_on(store.read("realm1", "h.quiet", Some(quiet), 11)).unwrap(), quiet, 10), Resume::Recovered(v) if v.is_empty())
        );
        insert("h.a", 4, 14);
        assert!(matches!(from(3), Resume::Lost), "size 2: offset 8 was dropped");
        assert!(matches!(from(8), Resume::Recovered(v) if numbers(&v) == vec![3, 4]));
        let mut old = event("h.a", 5);
        old.published_at_us = crate::now_us() - 120_000_000;
        store.insert(&mut old, 20);
        assert!(matches!(from(14), Resume::Lost), "an event older than ttl read back is not kept, and counts as dropped");
        let other_epoch = Position { epoch: 8, offset: 14 };
        assert!(matches!(resume(block_on(store.read("realm1", "h.a", Some(other_epoch), 11)).unwrap(), other_epoch, 10), Resume::Lost));
        store.stream_reset(9);
        assert_eq!(store.kept(), 0);
        assert!(matches!(from(14), Resume::Lost), "a new epoch");
    }

    #[test]
    fn held_bytes_grow_with_the_payload() {
        let store = MemoryStore::new(config(10));
        store.append(&mut event("h.small", 1));
        let (_, small) = store.held().unwrap();
        let mut big = event("h.big", 1);
        big.kwargs.insert("body".into(), telegraphy_wamp::Value::Str("x".repeat(10_000)));
        big.args.push(telegraphy_wamp::Value::List(vec![telegraphy_wamp::Value::Str("y".repeat(1_000))]));
        store.append(&mut big);
        let (_, both) = store.held().unwrap();
        assert!(both - small > 11_000 && both - small < 11_000 + 2 * small, "{small} then {both}");
    }

    #[test]
    fn retained_events_keep_the_newest_per_filter() {
        let store = MemoryStore::new(config(10));
        for (n, only) in [(1, None), (2, Some("alice")), (3, None)] {
            let mut e = event("x.r", n);
            e.retain = true;
            e.filter.eligible_authid = only.map(|a| vec![a.to_string()]);
            store.append(&mut e);
        }
        let retained = block_on(store.retained("realm1", "x.r")).unwrap();
        assert_eq!(numbers(&retained), vec![3, 2], "newest first; the open event 1 was replaced by 3");
        assert_eq!(store.held().unwrap().0, 2, "the replaced retained event is no longer counted");
        assert_eq!(store.kept(), 0, "x.r keeps no history, only its retained events");
    }
}
