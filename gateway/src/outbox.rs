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

/// The sessions a fan-out left frames for, written out once the batch of
/// events is done, so a session gets a batch's events in one write and
/// nobody is woken per delivery. [`Flush::run`] writes the small
/// fan-outs' sessions itself and hands the large fan-outs' to the
/// [`WriteShards`], which write them on every core; it also runs when the
/// flush is dropped, so no frame waits past its batch.
#[derive(Default)]
pub struct Flush {
    /// Sessions of small fan-outs: written by the caller of `run`.
    here: Vec<Arc<Wire>>,
    /// The large fan-outs' work, by write shard, in order.
    away: Vec<Vec<Work>>,
    /// The address of the frame the last `Work::Frame` of each shard's
    /// list carries (compared, never followed; 0 for none).
    away_frame: Vec<usize>,
    shards: Option<Arc<WriteShards>>,
}

/// What a write shard does, in order.
enum Work {
    /// The frame the `Claimed` entries after it are for.
    Frame(SharedFrame),
    /// Write the frame this wire's next write was claimed for.
    Claimed(Arc<Wire>),
    /// Write what this wire has queued.
    Flush(Arc<Wire>),
}

impl Flush {
    /// A flush that hands large fan-outs to `shards`. Without shards
    /// ([`Flush::default`]), large fan-outs wake each session's task.
    pub fn with_shards(shards: Arc<WriteShards>) -> Flush {
        let n = shards.shards.len();
        Flush { here: Vec::new(), away: (0..n).map(|_| Vec::new()).collect(), away_frame: vec![0; n], shards: Some(shards) }
    }

    /// Remembers a wire that holds deferred frames (once per wire until
    /// it is flushed).
    #[inline]
    fn defer(&mut self, wire: &Arc<Wire>, fanout: usize) {
        if fanout <= DIRECT_WRITE_MAX || self.away.is_empty() {
            self.here.push(wire.clone());
        } else {
            let n = self.away.len();
            self.away[wire.shard(n)].push(Work::Flush(wire.clone()));
        }
    }

    /// Hands a wire whose next write was claimed for `frame` to its shard.
    #[inline]
    fn claimed(&mut self, wire: &Arc<Wire>, frame: &SharedFrame) {
        let n = self.away.len();
        let i = wire.shard(n);
        let list = &mut self.away[i];
        let frame_at = Arc::as_ptr(frame) as usize;
        if self.away_frame[i] != frame_at {
            self.away_frame[i] = frame_at;
            list.push(Work::Frame(frame.clone()));
        }
        list.push(Work::Claimed(wire.clone()));
    }

    /// Writes every small fan-out's deferred frames (what the kernel does
    /// not take goes to the session's task) and hands the large ones' to
    /// the write shards.
    pub fn run(&mut self) {
        for wire in self.here.drain(..) {
            wire.flush();
        }
        if let Some(shards) = &self.shards {
            for ((shard, work), frame) in shards.shards.iter().zip(&mut self.away).zip(&mut self.away_frame) {
                if !work.is_empty() {
                    shard.take(work);
                }
                *frame = 0;
            }
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.run();
    }
}

/// Tasks that write the frames of large fan-outs, one per runtime worker
/// (the way centrifuge shards its hub). For a session with nothing queued
/// the fan-out only claims the socket's next write ([`Wire::send_claiming`])
/// and the shard writes the shared frame straight to the socket; for one
/// with frames waiting it queues the frame and the shard writes the
/// session's queue. Each shard gets its list once per batch of events, so a
/// fan-out to 1,000 sessions costs a few wake-ups, not 1,000, and its
/// writes still run on every core.
///
/// Bounded: a wire holds at most one claim and is on at most one flush
/// list at a time, so a shard's list never holds more than three entries
/// per session (a frame entry precedes at least one claim). The tasks stop
/// when the `WriteShards` is dropped (its owner is the node's
/// dispatcher), and what they were handed is written then.
pub struct WriteShards {
    shards: Box<[Arc<Shard>]>,
}

struct Shard {
    work: Mutex<Vec<Work>>,
    /// Lists handed over and not yet written (see [`WriteShards::is_idle`];
    /// counted under `work`'s lock when handed over and taken).
    busy: std::sync::atomic::AtomicUsize,
    wake: tokio::sync::Notify,
    stopped: std::sync::atomic::AtomicBool,
}

impl Shard {
    /// Adds `work` to the shard's list (leaving `work` empty, and with a
    /// spare allocation when the shard's list was empty) and wakes it.
    fn take(&self, work: &mut Vec<Work>) {
        {
            let mut list = self.work.lock().unwrap_or_else(|e| e.into_inner());
            if list.is_empty() {
                std::mem::swap(&mut *list, work);
            } else {
                list.append(work);
            }
            self.busy.fetch_add(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    async fn run(&self) {
        let mut taken = Vec::new();
        loop {
            self.wake.notified().await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let lists = {
                let mut list = self.work.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *list, &mut taken);
                self.busy.load(Ordering::Relaxed)
            };
            do_work(&mut taken);
            self.busy.fetch_sub(lists, Ordering::Relaxed);
            if taken.capacity() > 4096 {
                // A burst is over: give its memory back.
                taken = Vec::new();
            }
        }
    }
}

/// Writes what `work` says, in order, leaving it empty.
fn do_work(work: &mut Vec<Work>) {
    let mut frame: Option<SharedFrame> = None;
    for item in work.drain(..) {
        match item {
            Work::Frame(f) => frame = Some(f),
            Work::Claimed(wire) => match &frame {
                Some(f) => wire.write_claimed(f),
                None => unreachable!("a claim is listed after its frame"),
            },
            Work::Flush(wire) => wire.flush(),
        }
    }
}

impl WriteShards {
    /// Starts one shard per worker of the current tokio runtime.
    pub fn start() -> Arc<WriteShards> {
        let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
        let shards: Box<[Arc<Shard>]> = (0..workers)
            .map(|_| {
                Arc::new(Shard {
                    work: Mutex::new(Vec::new()),
                    busy: Default::default(),
                    wake: tokio::sync::Notify::new(),
                    stopped: Default::default(),
                })
            })
            .collect();
        for shard in shards.iter() {
            let shard = shard.clone();
            tokio::spawn(async move { shard.run().await });
        }
        Arc::new(WriteShards { shards })
    }
}

impl WriteShards {
    /// Whether every list handed over was taken by its shard (the
    /// instruction benchmark waits for this after each batch, so that it
    /// measures one write per delivery, as the ceiling program does).
    pub fn is_idle(&self) -> bool {
        self.shards.iter().all(|s| s.busy.load(Ordering::Relaxed) == 0)
    }
}

impl Drop for WriteShards {
    fn drop(&mut self) {
        for shard in self.shards.iter() {
            shard.stopped.store(true, Ordering::Release);
            shard.wake.notify_one();
            // What was handed over is still written: the frames were
            // accepted, and a claim left unwritten would hold its
            // session's writes back for good.
            let mut work = std::mem::take(&mut *shard.work.lock().unwrap_or_else(|e| e.into_inner()));
            do_work(&mut work);
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

    /// Sends an EVENT frame of a fan-out to `fanout` sessions: queued
    /// until `flush` runs (at the end of the batch of events), which writes
    /// a small fan-out's sessions itself and has the write shards write a
    /// large one's. Without write shards a large fan-out wakes each
    /// session's task instead. The caller counts what it sent
    /// (`messages_out`, `bytes_out`), once per event rather than per frame.
    ///
    /// Inlined into the fan-out loop: it runs once per delivery (the
    /// instruction budgets in `bench/instructions` watch it).
    #[inline(always)]
    pub(crate) fn push_event(&self, frame: &SharedFrame, fanout: usize, flush: &mut Flush) -> Result<(), PushError> {
        if self.is_closing() {
            return self.refuse_closing();
        }
        // Two matches rather than one over either send: with one, the small
        // fan-out's path costs 2.6% more instructions (bench/instructions).
        if fanout > DIRECT_WRITE_MAX {
            if flush.shards.is_none() {
                return self.send(frame, When::Task);
            }
            return match self.wire.send_claiming(frame, self.max_messages, self.max_bytes) {
                Sent::Claimed => {
                    flush.claimed(&self.wire, frame);
                    Ok(())
                }
                Sent::Written | Sent::Queued => Ok(()),
                Sent::Deferred => {
                    flush.defer(&self.wire, fanout);
                    Ok(())
                }
                Sent::Full => self.overflowed(),
            };
        }
        match self.wire.send_later(frame, self.max_messages, self.max_bytes) {
            Sent::Written | Sent::Queued | Sent::Claimed => Ok(()),
            Sent::Deferred => {
                flush.defer(&self.wire, fanout);
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
            Sent::Written | Sent::Queued | Sent::Deferred | Sent::Claimed => Ok(()),
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
                result = self.wire.drain_unclaimed() => {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_shards_deliver_a_large_fan_out_in_order_and_list_each_session_once() {
        let sessions = DIRECT_WRITE_MAX + 72;
        let mut pairs = Vec::new();
        for _ in 0..sessions {
            pairs.push(outbox(1024, usize::MAX).await);
        }
        let shards = WriteShards::start();
        assert_eq!(shards.shards.len(), 2, "one shard per worker");
        let mut flush = Flush::with_shards(shards);
        let frames: Vec<SharedFrame> = (0..50u32).map(|i| Arc::new(data_frame(format!("[36,1,{i},{{}}]").into_bytes(), false))).collect();
        // Two batches of 25 events: a session is handed to its shard once
        // (a claim for its first event; the rest queue behind it), however
        // many events it got (in the second batch only if a shard wrote it
        // since: until then its new frames ride on the write promised).
        for (i, batch) in frames.chunks(25).enumerate() {
            for frame in batch {
                for (outbox, _, _) in &pairs {
                    outbox.push_event(frame, sessions, &mut flush).unwrap();
                }
            }
            assert!(flush.here.is_empty(), "a large fan-out is not written by the dispatcher");
            let listed = flush.away.iter().flatten().filter(|w| !matches!(w, Work::Frame(_))).count();
            if i == 0 {
                assert_eq!(listed, sessions, "each session listed once");
            } else {
                assert!(listed <= sessions, "{listed} entries for {sessions} sessions");
            }
            flush.run();
        }
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        for (_, _, client) in &mut pairs {
            let mut got = vec![0u8; expected.len()];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got)).await.expect("the shards wrote the frames").unwrap();
            assert!(got == expected, "frames missing or out of order");
        }
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
