//! The embedded bus: events go straight to this node's dispatcher through a
//! bounded queue. Single node only; it needs no external service.
//!
//! Queue policy: when the queue toward the dispatcher is full, `publish`
//! waits for room, so publishers (WAMP sessions, HTTP requests) slow down to
//! the node's fan-out speed instead of growing memory.

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use telegraphy_wamp::MatchPolicy;
use tokio::sync::mpsc;

use crate::{Bus, Envelope, PublishError};

/// The embedded single-node bus.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    /// Bounded queue to the node's dispatcher.
    tx: mpsc::Sender<Envelope>,
}

impl MemoryBus {
    /// A bus whose events arrive on the returned receiver; `capacity` bounds
    /// the events in flight.
    pub fn new(capacity: usize) -> (MemoryBus, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (MemoryBus { tx }, rx)
    }
}

impl Bus for MemoryBus {
    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        async move {
            self.tx
                .send(event)
                .await
                .map_err(|_| PublishError::Unavailable("the node is shutting down".into()))
        }
        .boxed()
    }

    fn add_interest(&self, _policy: MatchPolicy, _pattern: &str) {}

    fn remove_interest(&self, _policy: MatchPolicy, _pattern: &str) {}

    fn is_ready(&self) -> bool {
        !self.tx.is_closed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
