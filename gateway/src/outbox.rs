//! The bounded queue of frames waiting to be written to one session.
//!
//! Bounded twice: by message count (the channel) and by bytes (a counter).
//! Policy when full: the frame is dropped, counted, and the session is
//! closed with code 4000 (slow consumer) — a client that reconnects can
//! recover, while a router that buffers without bound would fall over.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::ws::Message as WsMessage;
use telegraphy_wamp::codes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The sending side, shared by the session's reader, the hub and the writer.
pub struct Outbox {
    /// Frames for the writer task; its capacity is the count limit.
    tx: mpsc::Sender<WsMessage>,
    /// Bytes queued and not yet written.
    queued_bytes: AtomicUsize,
    /// The byte limit.
    max_bytes: usize,
    /// Set once, when the session must close; read by the writer.
    close_code: AtomicU16,
    /// Cancelled when the session must close (slow consumer, protocol error,
    /// drain); the reader and writer both watch it.
    closing: CancellationToken,
    /// Whether the slow-consumer close was already counted.
    overflowed: AtomicBool,
    /// The session's last message (ABORT, GOODBYE), written in the same
    /// flush as the close frame so a client that closes at once still sees
    /// the gateway's close code.
    last_words: std::sync::Mutex<Option<WsMessage>>,
    metrics: Arc<Metrics>,
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
    /// A new outbox and the receiver its writer drains.
    pub fn new(max_messages: usize, max_bytes: usize, metrics: Arc<Metrics>) -> (Outbox, mpsc::Receiver<WsMessage>) {
        let (tx, rx) = mpsc::channel(max_messages.max(1));
        let outbox = Outbox {
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            close_code: AtomicU16::new(0),
            closing: CancellationToken::new(),
            overflowed: AtomicBool::new(false),
            last_words: std::sync::Mutex::new(None),
            metrics,
        };
        (outbox, rx)
    }

    /// Queues a frame without waiting. On overflow the session is closed.
    pub fn push(&self, frame: WsMessage) -> Result<(), PushError> {
        if self.closing.is_cancelled() {
            return Err(PushError::Closed);
        }
        let len = frame_len(&frame);
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflow();
            return Err(PushError::Full);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.overflow();
                Err(PushError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(PushError::Closed)
            }
        }
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
        self.closing.cancel();
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

    /// Resolves when the session must close.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// The writer reports bytes it has written.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
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
        let (outbox, _rx) = Outbox::new(2, 1 << 20, metrics.clone());
        assert_eq!(outbox.push(WsMessage::Text("a".into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Text("b".into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Text("c".into())), Err(PushError::Full));
        assert_eq!(outbox.close_code(), Some(codes::close::SLOW_CONSUMER));
        assert!(outbox.closing().is_cancelled());
        assert_eq!(outbox.push(WsMessage::Text("d".into())), Err(PushError::Closed));
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
        assert_eq!(metrics.queue_drops.get(), 1);
    }

    #[test]
    fn overflow_by_bytes() {
        let metrics = Arc::new(Metrics::new());
        let (outbox, mut rx) = Outbox::new(100, 10, metrics);
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 6].into())), Ok(()));
        // The writer drains and reports; room comes back.
        let f = rx.try_recv().unwrap();
        outbox.written(frame_len(&f));
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 10].into())), Ok(()));
        assert_eq!(outbox.push(WsMessage::Binary(vec![0; 1].into())), Err(PushError::Full));
    }
}
