//! The sending side of one session: its limits and its close signal, over
//! the connection's [`Wire`].
//!
//! A frame is written at once when it can be (see [`crate::wire`] for who
//! writes what); otherwise it waits in the wire's queue for the
//! connection's task. That queue is bounded twice: by
//! message count and by bytes. Policy when full: the frame is dropped,
//! counted, and the session is closed with code 4000 (slow consumer): a
//! client that reconnects can recover, while a router that buffers without
//! bound would fall over.
//!
//! An idle session holds no queue memory: the queue is an empty `VecDeque`
//! until the kernel refuses bytes.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use telegraphy_wamp::codes;

use crate::metrics::{DropReason, Metrics};
use crate::wire::{Sent, SharedFrame, When, Wire};

/// Fan-outs to at most this many local sessions have their frames written
/// by the fan-out's own task at the end of the batch; larger ones by the
/// write shards, on every core (`docs/benchmarks.md`).
pub(crate) const DIRECT_WRITE_MAX: usize = 128;

/// The sending side, shared by the session, the hub and the connection's task.
pub struct Outbox {
    wire: Arc<Wire>,
    /// The count limit of the queue.
    max_messages: usize,
    /// The byte limit of the queue.
    max_bytes: usize,
    /// Set once (0 until then), when the session must close: slow consumer,
    /// protocol error, drain, the peer left.
    close_code: AtomicU16,
    /// The session's last message (ABORT, GOODBYE), written just before the
    /// close frame so a client that closes at once still sees the
    /// gateway's close code.
    last_words: Mutex<Option<Bytes>>,
    /// Index of the session's serializer in the per-serializer counters.
    si: usize,
    metrics: Arc<Metrics>,
}

/// What [`Outbox::serve_writes`] ended with.
#[derive(Debug)]
pub enum Ended {
    /// The session must close.
    Closing,
    /// Writing to the socket failed: the peer is gone.
    Failed(std::io::Error),
}

/// Why a frame was not sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue was full; the session is now closing as a slow consumer.
    Full,
    /// The session is already closing.
    Closed,
}

/// A fan-out's batch of events, on its way to the sessions: small fan-outs
/// leave their frames queued and [`Flush::run`] writes each of those
/// sessions once the batch is done (one write per session per batch);
/// large ones are handed whole to the [`WriteShards`], which walk their
/// sessions on every core. `run` also runs when the flush is dropped, so no
/// frame waits past its batch.
///
/// Order per session: a session is walked by one shard only (its part, see
/// [`WriteShards`]), and a shard does its lists in order. A fan-out that the
/// dispatcher writes itself would overtake a shard still busy with an earlier
/// event, so once a batch hands anything to the shards, or finds them busy,
/// the rest of the batch goes to them too ([`Flush::goes_to_shards`]).
#[derive(Default)]
pub struct Flush {
    /// Sessions of small fan-outs: written by the caller of `run`.
    here: Vec<Arc<Wire>>,
    /// Fan-outs for the shards, in order: each shard walks its part of each.
    away: Vec<Arc<dyn ShardWork>>,
    /// Set once this batch hands work to the shards: the rest of it goes
    /// there too.
    routed: bool,
    shards: Option<Arc<WriteShards>>,
}

/// A fan-out a write shard walks: the part of its sessions that is the
/// shard's.
pub(crate) trait ShardWork: Send + Sync {
    /// Sends to the sessions of part `part` (see [`PARTS`]) through
    /// [`Outbox::push_walked`]; returns how many sessions it walked.
    fn walk_part(&self, part: usize, out: &mut Walked) -> usize;
}

/// Sessions are split into this many parts by id (`id % PARTS`); write
/// shard `i` of `n` walks the parts `p` with `p % n == i`. A fixed number,
/// so a subscription can keep its sessions grouped by part without knowing
/// how many shards there are; a machine with more cores than parts leaves
/// the extra shards idle.
pub(crate) const PARTS: usize = 16;

/// The part of session `id`.
#[inline]
pub(crate) fn part_of(id: u64) -> usize {
    (id % PARTS as u64) as usize
}

/// What a shard's walks leave behind.
pub(crate) struct Walked {
    /// Whether the shard has one walk to do (an event to one fan-out): a
    /// session with nothing queued then gets its frame written at once;
    /// with several, frames are queued and each session written once for
    /// all of them.
    pub(crate) direct: bool,
    /// Sessions whose frames were queued: written once the shard has
    /// walked the part for every walk at hand.
    later: Vec<Arc<Wire>>,
}

impl Flush {
    /// A flush that hands large fan-outs to `shards`. Without shards
    /// ([`Flush::default`]), large fan-outs wake each session's task.
    pub fn with_shards(shards: Arc<WriteShards>) -> Flush {
        Flush { here: Vec::new(), away: Vec::new(), routed: false, shards: Some(shards) }
    }

    /// Whether the fan-out of the event at hand, to `fanout` local
    /// sessions, goes to the write shards: a large one does, and so does
    /// everything after it in this batch, or while the shards are still
    /// writing an earlier batch (anything written here could overtake
    /// them).
    #[inline]
    pub(crate) fn goes_to_shards(&mut self, fanout: usize) -> bool {
        let Some(shards) = &self.shards else { return false };
        if !self.routed && (fanout > DIRECT_WRITE_MAX || !shards.is_idle()) {
            self.routed = true;
        }
        self.routed
    }

    /// Hands a fan-out to the write shards (after [`Flush::goes_to_shards`] said so).
    pub(crate) fn hand(&mut self, work: Arc<dyn ShardWork>) {
        self.away.push(work);
    }

    /// Remembers a wire that holds deferred frames (once per wire until
    /// it is flushed).
    #[inline]
    fn defer(&mut self, wire: &Arc<Wire>) {
        self.here.push(wire.clone());
    }

    /// Writes every small fan-out's deferred frames (what the kernel does
    /// not take goes to the session's task), then hands the large ones to
    /// the write shards.
    pub fn run(&mut self) {
        for wire in self.here.drain(..) {
            wire.flush();
        }
        self.routed = false;
        if self.away.is_empty() {
            return;
        }
        let list: Arc<[Arc<dyn ShardWork>]> = self.away.drain(..).collect();
        if let Some(shards) = &self.shards {
            for shard in shards.shards.iter() {
                shard.take(list.clone());
            }
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.run();
    }
}

/// Tasks that walk the sessions of large fan-outs and write to them, one
/// per runtime worker (the way centrifuge shards its hub): the dispatcher
/// only encodes an event and hands it over, and a fan-out to 1,000 sessions
/// costs each shard one wake-up, not 1,000, and runs on every core. Each
/// shard walks only its parts of the sessions ([`PARTS`]), so a session's
/// frames are written by one shard, in order.
///
/// Bounded: the dispatcher hands at most one list per batch of bus events
/// (one entry per (event, large subscription)) and waits before the next
/// once a shard is more than [`MAX_WALKS_BEHIND`] walks behind
/// ([`WriteShards::room`]); the bus's bounded queue then holds what comes.
/// The tasks stop when the `WriteShards` is dropped (its owner is the
/// node's dispatcher), and what they were handed is written then.
pub struct WriteShards {
    shards: Box<[Arc<Shard>]>,
    /// Woken when a shard finished walks ([`WriteShards::room`]).
    room: Arc<tokio::sync::Notify>,
}

type List = Arc<[Arc<dyn ShardWork>]>;

/// The dispatcher waits before it hands more once a shard is this many
/// walks (events × subscriptions) behind: the bus's bounded queue then
/// takes the backlog, with its documented policy.
const MAX_WALKS_BEHIND: usize = 1024;

/// A write shard walks at most this many (events × subscriptions) at once,
/// unless one list of the dispatcher's holds more: the most the dispatcher
/// takes from the bus in one batch.
const WALKS_PER_WRITE: usize = 64;

/// A write shard yields to the runtime after walking about this many
/// sessions (a walk of 10,000 sessions yields about ten times).
const SESSIONS_PER_YIELD: usize = 1024;

struct Shard {
    /// The parts of the sessions this shard walks.
    parts: Vec<usize>,
    work: Mutex<std::collections::VecDeque<List>>,
    /// Walks handed over and not yet done (see [`WriteShards::is_idle`]).
    busy: std::sync::atomic::AtomicUsize,
    wake: tokio::sync::Notify,
    stopped: std::sync::atomic::AtomicBool,
}

impl Shard {
    /// Adds `list` to the shard's lists and wakes it.
    fn take(&self, list: List) {
        self.busy.fetch_add(list.len(), Ordering::AcqRel);
        self.work.lock().unwrap_or_else(|e| e.into_inner()).push_back(list);
        self.wake.notify_one();
    }

    async fn run(&self, room: &tokio::sync::Notify) {
        let mut out = Walked { direct: false, later: Vec::new() };
        let mut walking = Vec::new();
        loop {
            self.wake.notified().await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let (mut slot, mut since_yield) = (0, 0);
            while let Some(walked) = self.step(&mut slot, &mut walking, &mut out, room) {
                // A long walk lets the dispatcher (and the IO driver that
                // feeds it) run every so often: what the bus brought
                // meanwhile then joins this walk at its next part instead
                // of waiting for the walk's end.
                since_yield += walked;
                if since_yield >= SESSIONS_PER_YIELD {
                    since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// Walks what was handed over to the end, without yielding (when the
    /// shards stop).
    fn walk_all(&self, room: &tokio::sync::Notify) {
        let (mut slot, mut walking) = (0, Vec::new());
        let mut out = Walked { direct: false, later: Vec::new() };
        while self.step(&mut slot, &mut walking, &mut out, room).is_some() {}
    }

    /// Walks one part of the sessions (the one at `slot` of this shard's)
    /// for everything handed over, and writes the sessions it queued
    /// frames for; how many sessions it walked, `None` when there was
    /// nothing to walk. What is handed
    /// over meanwhile joins at the next part: a session not reached yet
    /// gets the newer events in the same write, the parts already walked
    /// get them when the walk comes round to them again. A session's
    /// events stay in order: walks join in the order they were handed over
    /// and each part is walked for all of them in that order.
    fn step(&self, slot: &mut usize, walking: &mut Vec<(Arc<dyn ShardWork>, usize)>, out: &mut Walked, room: &tokio::sync::Notify) -> Option<usize> {
        {
            // Lists join whole, while the walks stay within one batch's
            // worth: a session's queue then holds no more events from a
            // shard than from the dispatcher's own writes.
            let mut lists = self.work.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(list) = lists.front().filter(|l| walking.is_empty() || walking.len() + l.len() <= WALKS_PER_WRITE) {
                walking.extend(list.iter().map(|w| (w.clone(), *slot)));
                lists.pop_front();
            }
        }
        if walking.is_empty() {
            if out.later.capacity() > 4096 {
                // A burst is over: give its memory back.
                out.later = Vec::new();
            }
            return None;
        }
        let Some(&part) = self.parts.get(*slot) else {
            // More shards than parts: nothing is this shard's.
            self.done(walking.len(), room);
            walking.clear();
            return Some(0);
        };
        out.direct = walking.len() == 1;
        let mut walked = 0;
        for (work, _) in walking.iter() {
            walked += work.walk_part(part, out);
        }
        out.write_later();
        *slot = (*slot + 1) % self.parts.len();
        // A walk that started at this slot has been round every part.
        let before = walking.len();
        walking.retain(|(_, start)| *start != *slot);
        self.done(before - walking.len(), room);
        Some(walked)
    }

    fn done(&self, walks: usize, room: &tokio::sync::Notify) {
        if walks > 0 {
            // Release: what the walks wrote is done before a dispatcher
            // that sees the shard idle writes on its own.
            let was = self.busy.fetch_sub(walks, Ordering::Release);
            let now = was - walks;
            // Waiters wait for an idle shard or one within the limit: woken
            // only when that changes, not per walk.
            if now == 0 || (was > MAX_WALKS_BEHIND && now <= MAX_WALKS_BEHIND) {
                room.notify_waiters();
            }
        }
    }
}

impl Walked {
    /// Writes the sessions whose frames were queued.
    fn write_later(&mut self) {
        for wire in self.later.drain(..) {
            wire.flush();
        }
    }
}

impl WriteShards {
    /// Starts one shard per worker of the current tokio runtime.
    pub fn start() -> Arc<WriteShards> {
        let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        let shards: Box<[Arc<Shard>]> = (0..workers)
            .map(|index| {
                Arc::new(Shard {
                    parts: (index..PARTS).step_by(workers).collect(),
                    work: Mutex::new(Default::default()),
                    busy: Default::default(),
                    wake: tokio::sync::Notify::new(),
                    stopped: Default::default(),
                })
            })
            .collect();
        let shards = Arc::new(WriteShards { shards, room: Arc::new(tokio::sync::Notify::new()) });
        for shard in shards.shards.iter() {
            let (shard, room) = (shard.clone(), shards.room.clone());
            tokio::spawn(async move { shard.run(&room).await });
        }
        shards
    }

    /// Whether every walk handed over was done (the dispatcher writes
    /// small fan-outs itself only then).
    pub fn is_idle(&self) -> bool {
        self.shards.iter().all(|s| s.busy.load(Ordering::Acquire) == 0)
    }

    /// Resolves once no shard is more than [`MAX_WALKS_BEHIND`] walks
    /// behind (the dispatcher waits for it before its next batch).
    pub async fn room(&self) {
        self.until_behind(MAX_WALKS_BEHIND).await
    }

    /// Resolves once every walk handed over is done (the instruction
    /// benchmark waits for it after each batch, without spinning).
    pub async fn idle(&self) {
        self.until_behind(0).await
    }

    async fn until_behind(&self, walks: usize) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shards.iter().all(|s| s.busy.load(Ordering::Acquire) <= walks) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for WriteShards {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            shard.stopped.store(true, Ordering::Release);
            shard.wake.notify_one();
            // What was handed over is still written: the frames were
            // accepted.
            shard.walk_all(&self.room);
        }
    }
}

impl Outbox {
    /// An outbox over `wire` for a session whose serializer has index `si`.
    pub fn new(wire: Arc<Wire>, si: usize, max_messages: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Outbox {
        Outbox { wire, max_messages: max_messages.max(1), max_bytes, close_code: AtomicU16::new(0), last_words: Mutex::new(None), si, metrics }
    }

    /// Sends a complete WebSocket frame without waiting: written now if the
    /// kernel takes it, queued otherwise. On overflow the session is closed.
    pub(crate) fn push(&self, frame: &Bytes) -> Result<(), PushError> {
        if self.is_closing() {
            return Err(PushError::Closed);
        }
        self.send(frame, When::Now)?;
        self.count_sent(frame);
        Ok(())
    }

    /// Sends an EVENT frame of a fan-out to `fanout` sessions that the
    /// caller writes itself: queued until `flush` runs (at the end of the
    /// batch of events). A fan-out too large for that, when there are no
    /// write shards, wakes each session's task instead. The caller counts
    /// what it sent (`messages_out`, `bytes_out`), once per event rather
    /// than per frame.
    ///
    /// Inlined into the fan-out loop: it runs once per delivery (the
    /// instruction budgets in `bench/instructions` watch it).
    #[inline(always)]
    pub(crate) fn push_event(&self, frame: &SharedFrame, fanout: usize, flush: &mut Flush) -> Result<(), PushError> {
        if self.is_closing() {
            return self.refuse_closing();
        }
        if fanout > DIRECT_WRITE_MAX {
            return self.send(frame, When::Task);
        }
        match self.wire.send_later(frame, self.max_messages, self.max_bytes) {
            Sent::Written | Sent::Queued => Ok(()),
            Sent::Deferred => {
                flush.defer(&self.wire);
                Ok(())
            }
            Sent::Full => self.overflowed(),
        }
    }

    /// A write shard's [`Outbox::push_event`]: with one walk in its list
    /// (`out.direct`), a session with nothing queued gets the frame written
    /// now; otherwise it is queued and the session written once the
    /// shard's list is done. `DIRECT` says which when the caller knows it
    /// (its loop then has no branch on it); otherwise `out.direct` does.
    /// Runs once per delivery.
    #[inline(always)]
    pub(crate) fn push_walked<const DIRECT: bool>(&self, frame: &SharedFrame, out: &mut Walked) -> Result<(), PushError> {
        if self.is_closing() {
            return self.refuse_closing();
        }
        let sent = if DIRECT || out.direct {
            self.wire.send_first(frame, self.max_messages, self.max_bytes)
        } else {
            self.wire.send_later(frame, self.max_messages, self.max_bytes)
        };
        match sent {
            Sent::Written | Sent::Queued => Ok(()),
            Sent::Deferred => {
                out.later.push(self.wire.clone());
                Ok(())
            }
            Sent::Full => self.overflowed(),
        }
    }

    #[cold]
    fn refuse_closing(&self) -> Result<(), PushError> {
        self.metrics.dropped(DropReason::Closing, 1);
        Err(PushError::Closed)
    }

    #[cold]
    fn overflowed(&self) -> Result<(), PushError> {
        self.overflow();
        Err(PushError::Full)
    }

    fn send(&self, frame: &Bytes, when: When) -> Result<(), PushError> {
        match self.wire.send(frame, self.max_messages, self.max_bytes, when) {
            Sent::Full => {
                self.overflow();
                Err(PushError::Full)
            }
            Sent::Written | Sent::Queued | Sent::Deferred => Ok(()),
        }
    }

    /// The connection task's share of writing: writes out what the kernel
    /// did not take at once, whenever the socket can take more, until the
    /// session must close or the socket fails.
    pub async fn serve_writes(&self) -> Ended {
        loop {
            if self.is_closing() {
                return Ended::Closing;
            }
            // A close asked while the socket is full (a shed slow consumer)
            // must not wait for the client to read: the wake-up interrupts
            // the drain (which keeps its place in the queue) and is checked.
            tokio::select! {
                result = self.wire.drain() => {
                    if let Err(e) = result {
                        return Ended::Failed(e);
                    }
                    if self.is_closing() {
                        return Ended::Closing;
                    }
                    self.wire.notified().await;
                }
                _ = self.wire.notified() => {}
            }
        }
    }

    /// Whether frames wait for the socket to become writable (the client
    /// is not reading fast enough).
    pub fn is_backed_up(&self) -> bool {
        self.wire.is_backed_up()
    }

    /// Writes the end of the session: what is still queued (unless the
    /// session closes as a slow consumer: its backlog is the problem) and
    /// the last words. The close frame itself is tungstenite's to write.
    pub(crate) async fn finish(&self) -> std::io::Result<()> {
        if self.close_code() == Some(codes::close::SLOW_CONSUMER) {
            let discarded = self.wire.discard_queued();
            self.metrics.dropped(DropReason::Discarded, discarded as u64);
        }
        if let Some(last) = self.last_words.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.count_sent(&last);
            self.wire.push_unbounded(last);
        }
        self.wire.drain().await
    }

    /// The session ends without its last frames reaching the client (the
    /// close timed out): what is still queued, a partly written frame
    /// included, is counted as discarded.
    pub(crate) fn abandon(&self) {
        let left = self.wire.discard_all();
        self.metrics.dropped(DropReason::Discarded, left as u64);
    }

    fn count_sent(&self, frame: &Bytes) {
        self.metrics.messages_out[self.si].inc();
        self.metrics.bytes_out[self.si].inc_by(frame.len() as u64);
    }

    /// Closes the session as a slow consumer (counted).
    pub(crate) fn overflow(&self) {
        self.metrics.dropped(DropReason::QueueFull, 1);
        if self.close(codes::close::SLOW_CONSUMER) {
            self.metrics.slow_consumer_closes.inc();
        }
    }

    /// Asks the session to close with `code`. The first code asked wins;
    /// returns whether it was this one.
    pub fn close(&self, code: u16) -> bool {
        debug_assert_ne!(code, 0, "0 means not closing");
        let first = self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if first {
            self.wire.notify();
        }
        first
    }

    /// Sets the frame written just before the close frame.
    pub(crate) fn set_last_words(&self, frame: Bytes) {
        *self.last_words.lock().unwrap_or_else(|e| e.into_inner()) = Some(frame);
    }

    /// The close code asked for, if any.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Whether the session must close.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::data_frame;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// An outbox over a real loopback connection, and the client's socket.
    async fn outbox(max_messages: usize, max_bytes: usize) -> (Arc<Outbox>, Arc<Metrics>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        (Arc::new(Outbox::new(Wire::tcp(server), 0, max_messages, max_bytes, metrics.clone())), metrics, client)
    }

    /// Pushes 256 KiB frames to a client that does not read until one is refused.
    fn flood(outbox: &Outbox) -> usize {
        let frame = data_frame(vec![b'x'; 256 * 1024], false);
        for i in 0..10_000 {
            if outbox.push(&frame).is_err() {
                return i;
            }
        }
        panic!("2.5 GiB went into a socket nobody reads");
    }

    /// A fan-out the shards walk: its sessions, by id.
    struct Sessions {
        outboxes: Vec<(u64, Arc<Outbox>)>,
        frame: SharedFrame,
        /// The parts walked.
        walked: std::sync::Mutex<Vec<usize>>,
    }

    impl ShardWork for Sessions {
        fn walk_part(&self, part: usize, out: &mut Walked) -> usize {
            self.walked.lock().unwrap().push(part);
            let mut n = 0;
            for (id, outbox) in &self.outboxes {
                if part_of(*id) == part {
                    outbox.push_walked::<false>(&self.frame, out).unwrap();
                    n += 1;
                }
            }
            n
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_shards_walk_each_session_once_in_order_and_hold_small_fan_outs_back_while_busy() {
        let sessions = DIRECT_WRITE_MAX + 72;
        let mut pairs = Vec::new();
        for _ in 0..sessions {
            pairs.push(outbox(1024, usize::MAX).await);
        }
        let shards = WriteShards::start();
        assert_eq!(shards.shards.len(), 2, "one shard per worker");
        let mut flush = Flush::with_shards(shards.clone());
        let frames: Vec<SharedFrame> = (0..50u32).map(|i| Arc::new(data_frame(format!("[36,1,{i},{{}}]").into_bytes(), false))).collect();
        let outboxes: Vec<(u64, Arc<Outbox>)> = pairs.iter().enumerate().map(|(i, (o, _, _))| (i as u64 + 1, o.clone())).collect();
        let mut walks = Vec::new();
        // Batches of one event (each session written at once), then of
        // several (queued, each session written once per batch).
        for batch in [&frames[..1], &frames[1..2], &frames[2..25], &frames[25..]] {
            for frame in batch {
                assert!(flush.goes_to_shards(sessions), "a large fan-out goes to the shards");
                let walk = Arc::new(Sessions { outboxes: outboxes.clone(), frame: frame.clone(), walked: Default::default() });
                flush.hand(walk.clone());
                walks.push(walk);
                assert!(flush.goes_to_shards(1), "after a large fan-out, the rest of the batch goes to the shards too");
            }
            flush.run();
        }
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for (_, _, client) in &mut pairs {
            let mut got = vec![0u8; expected.len()];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got)).await.expect("the shards wrote the frames").unwrap();
            assert!(got == expected, "frames missing or out of order");
        }
        for walk in &walks {
            let mut walked = walk.walked.lock().unwrap().clone();
            walked.sort_unstable();
            assert_eq!(walked, (0..PARTS).collect::<Vec<_>>(), "each part walked once per event");
        }
        while !shards.is_idle() {
            tokio::task::yield_now().await;
        }
        assert!(!flush.goes_to_shards(1), "with the shards idle a small fan-out is written by the dispatcher");
    }

    /// A walk of `sessions` sessions per part that writes nothing and
    /// notes, per part, whether `other` had run by then.
    struct Long {
        sessions: usize,
        other: Arc<AtomicBool>,
        seen: Mutex<Vec<bool>>,
    }

    impl ShardWork for Long {
        fn walk_part(&self, _part: usize, _out: &mut Walked) -> usize {
            self.seen.lock().unwrap().push(self.other.load(Ordering::Relaxed));
            self.sessions
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_long_walk_lets_other_tasks_on_its_worker_run() {
        // One worker: the shard and the other task share it, as a
        // connection task (pings, a health check) shares a busy shard's.
        let shards = WriteShards::start();
        let other = Arc::new(AtomicBool::new(false));
        let walk = Arc::new(Long { sessions: 1000, other: other.clone(), seen: Mutex::new(Vec::new()) });
        let mut flush = Flush::with_shards(shards.clone());
        flush.hand(walk.clone());
        flush.run();
        let ran = other.clone();
        tokio::spawn(async move { ran.store(true, Ordering::Relaxed) });
        shards.idle().await;
        let seen = walk.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), PARTS, "every part walked once");
        assert!(!seen[0], "the walk started before the other task");
        assert!(seen.contains(&true), "the other task ran only after a walk of {} sessions: {seen:?}", PARTS * 1000);
    }

    #[tokio::test]
    async fn overflow_by_count_closes_as_slow_consumer() {
        let (outbox, metrics, _client) = outbox(2, usize::MAX).await;
        flood(&outbox);
        assert_eq!(outbox.close_code(), Some(codes::close::SLOW_CONSUMER));
        assert!(outbox.is_closing());
        assert_eq!(outbox.push(&data_frame(b"d".to_vec(), false)), Err(PushError::Closed));
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        assert_eq!(metrics.queue_drops[DropReason::QueueFull as usize].get(), 1);
        outbox.push_event(&Arc::new(data_frame(b"e".to_vec(), false)), 1, &mut Flush::default()).unwrap_err();
        assert_eq!(metrics.queue_drops[DropReason::Closing as usize].get(), 1, "an event for a closing session is counted");
        assert!(matches!(outbox.serve_writes().await, Ended::Closing), "closing wins over the backlog");
    }

    #[tokio::test]
    async fn a_close_does_not_wait_for_a_full_socket() {
        let (outbox, _, _client) = outbox(10_000, usize::MAX).await;
        let frame = data_frame(vec![b'x'; 256 * 1024], false);
        while !outbox.is_backed_up() {
            outbox.push(&frame).unwrap();
        }
        outbox.push(&frame).unwrap();
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.serve_writes().await })
        };
        // The writer is stuck on the full socket (the client reads nothing).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!writer.is_finished());
        outbox.close(codes::close::SLOW_CONSUMER);
        let ended = tokio::time::timeout(Duration::from_secs(2), writer).await.expect("the close wakes the writer").unwrap();
        assert!(matches!(ended, Ended::Closing));
        // Giving up on the client counts what it never got, the frame cut
        // mid-write included.
        let queued = outbox.wire.queued_frames();
        outbox.abandon();
        assert_eq!(outbox.metrics.queue_drops[DropReason::Discarded as usize].get(), queued as u64);
        assert!(queued >= 1);
    }

    #[tokio::test]
    async fn overflow_by_bytes() {
        let (outbox, metrics, _client) = outbox(usize::MAX, 600 * 1024).await;
        let accepted = flood(&outbox);
        assert!(accepted >= 2, "the kernel and then the queue took frames");
        assert_eq!(outbox.close_code(), Some(codes::close::SLOW_CONSUMER));
        assert_eq!(metrics.messages_out[0].get(), accepted as u64);
        assert_eq!(metrics.bytes_out[0].get(), accepted as u64 * data_frame(vec![b'x'; 256 * 1024], false).len() as u64);
    }

    #[tokio::test]
    async fn the_task_writes_the_backlog_in_order_when_the_client_reads() {
        let (outbox, _, mut client) = outbox(10_000, usize::MAX).await;
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let mut payload = vec![b'.'; 64 * 1024];
            payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
            let frame = data_frame(payload, false);
            expected.extend_from_slice(&frame);
            outbox.push(&frame).unwrap();
        }
        assert!(outbox.is_backed_up(), "12.5 MiB fit in the kernel at once");
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.serve_writes().await })
        };
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(20), client.read_exact(&mut got)).await.unwrap().unwrap();
        assert!(got == expected, "bytes arrived out of order or torn");
        assert!(!outbox.is_backed_up());
        outbox.close(codes::close::NORMAL);
        assert!(matches!(tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap(), Ended::Closing));
    }

    #[tokio::test]
    async fn finish_drops_a_slow_consumers_backlog_but_not_its_last_words() {
        let (outbox, _, mut client) = outbox(4, usize::MAX).await;
        let accepted = flood(&outbox);
        let last = data_frame(b"[6,{},\"wamp.close.slow\"]".to_vec(), false);
        outbox.set_last_words(last.clone());
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        tokio::time::timeout(Duration::from_secs(20), outbox.finish()).await.unwrap().unwrap();
        let discarded = outbox.metrics.queue_drops[DropReason::Discarded as usize].get();
        drop(outbox);
        let all = tokio::time::timeout(Duration::from_secs(20), reader).await.unwrap().unwrap();
        assert!(all.ends_with(&last), "the last words come last");
        // Whole frames only (a started one is finished), then the last words;
        // of the four queued frames the client saw nothing of, none came.
        let frame_len = data_frame(vec![b'x'; 256 * 1024], false).len();
        let events = all.len() - last.len();
        assert_eq!(events % frame_len, 0, "a torn frame");
        assert!(events / frame_len + 3 <= accepted, "{} of {accepted} frames written: the backlog was not dropped", events / frame_len);
        assert_eq!(events / frame_len + discarded as usize, accepted, "every accepted frame was either written or counted as discarded");
    }
}
