//! The hand-off of consumed events to the node: decode (counting and
//! logging unusable envelopes once per cause), measure bus lag, and send
//! through the node's bounded queue (waiting when it is full).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{BusMetrics, Envelope, EnvelopeError};

/// The node's side of the bus.
#[derive(Clone)]
pub struct Inbound {
    tx: mpsc::Sender<Envelope>,
    /// Bus metrics (shared with the adapter).
    pub metrics: BusMetrics,
    logged: Arc<[AtomicBool; 2]>,
    sessions: Arc<BusSessions>,
}

/// Counts the adapter's consuming sessions (connects and reconnects, every
/// interest in force), and wakes the node when one starts: it then reads
/// what its history topics missed from the event store.
#[derive(Default)]
pub struct BusSessions {
    count: AtomicU64,
    changed: tokio::sync::Notify,
}

impl BusSessions {
    /// Sessions so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once a session started since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The node stopped consuming.
#[derive(Debug)]
pub struct Closed;

impl Inbound {
    /// An inbound feeding `tx`.
    pub fn new(tx: mpsc::Sender<Envelope>, metrics: BusMetrics) -> Inbound {
        Inbound { tx, metrics, logged: Arc::new([AtomicBool::new(false), AtomicBool::new(false)]), sessions: Arc::default() }
    }

    /// The adapter's consuming sessions (see [`BusSessions`]).
    pub fn sessions(&self) -> Arc<BusSessions> {
        self.sessions.clone()
    }

    /// The adapter's consuming session is up, with every interest in force.
    pub fn session_started(&self) {
        self.sessions.count.fetch_add(1, Ordering::Release);
        self.sessions.changed.notify_one();
    }

    /// Decodes bytes from the broker; `None` (counted, logged once per cause)
    /// when they are not a usable envelope.
    pub fn decode(&self, bytes: &[u8]) -> Option<Envelope> {
        match Envelope::decode(bytes) {
            Ok(e) => Some(e),
            Err(e) => {
                self.metrics.decode_error(e.cause());
                let slot = match e {
                    EnvelopeError::Malformed(_) => 0,
                    EnvelopeError::UnsupportedVersion(_) => 1,
                };
                if !self.logged[slot].swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "skipping an event from the bus that this node cannot read \
                         (logged once; telegraphy_bus_decode_errors_total counts them all)"
                    );
                }
                None
            }
        }
    }

    /// Passes an event to the node, waiting while its queue is full.
    pub async fn deliver(&self, event: Envelope) -> Result<(), Closed> {
        self.received(&event);
        self.tx.send(event).await.map_err(|_| Closed)
    }

    /// Waits for room in the node's queue and holds it: the event put into
    /// the [`Slot`] later takes it without waiting. A bus that must order
    /// its deliveries under a lock (the memory bus with history) reserves
    /// first, then locks, orders and delivers without awaiting.
    pub async fn reserve(&self) -> Result<Slot<'_>, Closed> {
        let permit = self.tx.reserve().await.map_err(|_| Closed)?;
        Ok(Slot { permit, inbound: self })
    }

    fn received(&self, event: &Envelope) {
        // Messages between nodes are not events.
        if crate::control::is_control(event) {
            return;
        }
        self.metrics.received.inc();
        let now = crate::now_us();
        if event.published_at_us > 0 && now >= event.published_at_us {
            self.metrics.lag.observe((now - event.published_at_us) as f64 / 1e6);
        }
    }
}

/// Room for one event in the node's queue (see [`Inbound::reserve`]).
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Envelope>,
    inbound: &'a Inbound,
}

impl Slot<'_> {
    /// Hands `event` to the node, at once.
    pub fn deliver(self, event: Envelope) {
        self.inbound.received(&event);
        self.permit.send(event);
    }
}
