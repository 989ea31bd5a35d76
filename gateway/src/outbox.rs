//! The bounded queue of frames waiting to be written to one session.
//!
//! Bounded twice: by message count and by bytes (a counter).
//! Policy when full: the frame is dropped, counted, and the session is
//! closed with code 4000 (slow consumer) — a client that reconnects can
//! recover, while a router that buffers without bound would fall over.
//!
//! The queue is a `VecDeque` behind a mutex plus a `Notify`, not a tokio
//! channel: an idle session then holds no queue memory at all (a bounded
//! tokio channel allocates a 32-slot block and a cache-padded header up
//! front, about 2 KiB per session), and the connection's task takes everything queued
//! in one swap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Message as WsMessage;
use telegraphy_wamp::codes;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// The sending side, shared by the session, the hub and the connection's task.
pub struct Outbox {
    /// Frames for the connection's task, and the bytes not yet written.
    /// Both behind one lock, on one cache line: the fan-out touches them for
    /// every delivery, the connection's task once per batch, from another
    /// core (a separate atomic counter was a second cache miss per delivery).
    queue: Mutex<Queue>,
    /// The count limit.
    max_messages: usize,
    /// Wakes the connection's task when the queue stops being empty or the
    /// session must close (one waiter: `notify_one` keeps the wake-up if
    /// the task is busy elsewhere).
    wake: Notify,
    /// The byte limit.
    max_bytes: usize,
    /// Set once, when the session must close; read by the connection's task.
    close_code: AtomicU16,
    /// Set when the session must close (slow consumer, protocol error,
    /// drain, the peer left).
    closing: AtomicBool,
    /// Whether the slow-consumer close was already counted.
    overflowed: AtomicBool,
    /// The session's last message (ABORT, GOODBYE), written in the same
    /// flush as the close frame so a client that closes at once still sees
    /// the gateway's close code.
    last_words: std::sync::Mutex<Option<WsMessage>>,
    metrics: Arc<Metrics>,
}

/// The state behind the outbox's lock.
#[derive(Default)]
struct Queue {
    frames: VecDeque<WsMessage>,
    /// Bytes queued or taken for writing, and not yet written.
    bytes: usize,
}

/// What [`Outbox::ready`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Frames were moved into the batch.
    Frames,
    /// The session must close.
    Closing,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full; the session is now closing as a slow consumer.
    Full,
    /// The session is already closing.
    Closed,
}

impl Outbox {
    /// A new, empty outbox.
    pub fn new(max_messages: usize, max_bytes: usize, metrics: Arc<Metrics>) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            max_messages: max_messages.max(1),
            wake: Notify::new(),
            max_bytes,
            close_code: AtomicU16::new(0),
            closing: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            last_words: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// Queues a frame without waiting. On overflow the session is closed.
    pub fn push(&self, frame: WsMessage) -> Result<(), PushError> {
        if self.is_closing() {
            return Err(PushError::Closed);
        }
        let len = frame_len(&frame);
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.bytes + len > self.max_bytes || queue.frames.len() >= self.max_messages {
            drop(queue);
            self.overflow();
            return Err(PushError::Full);
        }
        let was_empty = queue.frames.is_empty();
        queue.frames.push_back(frame);
        queue.bytes += len;
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Waits until frames are queued or the session must close. Frames are
    /// moved, all of them, into `batch` (which the caller empties before the
    /// next call); closing wins over frames.
    pub async fn ready(&self, batch: &mut VecDeque<WsMessage>) -> Ready {
        loop {
            // Register interest before looking, so a push in between is not missed.
            let notified = self.wake.notified();
            if self.is_closing() {
                return Ready::Closing;
            }
            {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if !queue.frames.is_empty() {
                    std::mem::swap(&mut queue.frames, batch);
                    return Ready::Frames;
                }
            }
            notified.await;
        }
    }

    /// Resolves once the session must close (while a batch is being written).
    pub async fn closed(&self) {
        loop {
            let notified = self.wake.notified();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Moves whatever is queued into `batch` without waiting.
    pub fn drain_into(&self, batch: &mut VecDeque<WsMessage>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        batch.append(&mut queue.frames);
    }

    fn overflow(&self) {
        self.metrics.queue_drops.inc();
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            self.metrics.slow_consumer_closes.inc();
            self.close(codes::close::SLOW_CONSUMER);
        }
    }

    /// Asks the session to close with `code` (the first code asked wins).
    pub fn close(&self, code: u16) {
        let _ = self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Sets the message written just before the close frame.
    pub fn set_last_words(&self, frame: WsMessage) {
        *self.last_words.lock().unwrap_or_else(|e| e.into_inner()) = Some(frame);
    }

    /// Takes the message to write just before the close frame.
    pub fn take_last_words(&self) -> Option<WsMessage> {
        self.last_words.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The close code asked for, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Whether the session must close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The connection's task reports bytes it has written.
    pub fn written(&self, bytes: usize) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.bytes = queue.bytes.saturating_sub(bytes);
    }
}

/// The payload size a frame counts for.
pub fn frame_len(frame: &WsMessage) -> usize {
    match frame {
        WsMessage::Text(t) => t.len(),
        WsMessage::Binary(b) => b.len(),
        WsMessage::Ping(b) | WsMessage::Pong(b) => b.len(),
        WsMessage::Close(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_by_count_closes_as_slow_consumer() {
        let metrics = Arc::new(Metrics::new());
        let outbox = Outbox::new(2, 1 << 20, metrics.clone());
        assert_eq!(outbox.push(WsMessage::Text("a".into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Text("b".into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Text("c".into())), Err(PushError::Full));
        assert_eq!(outbox.close_code(), Some(codes::close::SLOW_CONSUMER));
        assert!(outbox.is_closing());
        assert_eq!(outbox.push(WsMessage::Text("d".into())), Err(PushError::Closed));
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        assert_eq!(metrics.queue_drops.get(), 1);
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_and_waits_when_empty() {
        let outbox = Arc::new(Outbox::new(10, 1 << 20, Arc::new(Metrics::new())));
        let mut batch = VecDeque::new();
        outbox.push(WsMessage::Text("a".into())).unwrap();
        outbox.push(WsMessage::Text("b".into())).unwrap();
        assert_eq!(outbox.ready(&mut batch).await, Ready::Frames);
        assert_eq!(batch.len(), 2);
        batch.clear();
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut batch = VecDeque::new();
                assert_eq!(outbox.ready(&mut batch).await, Ready::Frames);
                batch.len()
            })
        };
        tokio::task::yield_now().await;
        outbox.push(WsMessage::Text("c".into())).unwrap();
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap(), 1);
    }

    #[tokio::test]
    async fn closing_wakes_the_task_wins_over_frames_and_stays_set() {
        let outbox = Arc::new(Outbox::new(10, 1 << 20, Arc::new(Metrics::new())));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.closed().await })
        };
        tokio::task::yield_now().await;
        outbox.push(WsMessage::Text("a".into())).unwrap();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a frame is not a close");
        outbox.close(4000);
        outbox.close(1000);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // Already set: resolves at once, and closing wins over queued frames.
        outbox.closed().await;
        let mut batch = VecDeque::new();
        assert_eq!(outbox.ready(&mut batch).await, Ready::Closing);
        assert_eq!(outbox.close_code(), Some(4000), "the first code asked wins");
        assert_eq!(outbox.push(WsMessage::Text("b".into())), Err(PushError::Closed));
    }

    #[test]
    fn overflow_by_bytes() {
        let metrics = Arc::new(Metrics::new());
        let outbox = Outbox::new(100, 10, metrics);
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 6].into())), Ok(()));
        // The writer drains and reports; room comes back.
        let mut batch = VecDeque::new();
        outbox.drain_into(&mut batch);
        let f = batch.pop_front().unwrap();
        outbox.written(frame_len(&f));
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 10].into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 1].into())), Err(PushError::Full));
    }
}
