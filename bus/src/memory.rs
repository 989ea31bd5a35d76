//! `memory://`: the embedded bus. Events go straight to this node's
//! dispatcher through its bounded queue. Single node only; no external
//! service needed.
//!
//! Queue policy: when the node's queue is full, `publish` waits for room,
//! so publishers (WAMP sessions, HTTP requests) slow down to the node's
//! fan-out speed instead of growing memory.

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use telegraphy_wamp::MatchPolicy;

use crate::{Bus, Envelope, Inbound, PublishError, Ticket};

/// The embedded single-node bus.
pub struct MemoryBus {
    inbound: Inbound,
}

impl MemoryBus {
    /// A bus that hands every published event to `inbound`.
    pub fn new(inbound: Inbound) -> MemoryBus {
        inbound.metrics.connected.set(1);
        MemoryBus { inbound }
    }
}

impl Bus for MemoryBus {
    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), PublishError>> {
        async move { self.inbound.deliver(event).await.map_err(|_| PublishError::Unavailable("the node is shutting down".into())) }.boxed()
    }

    fn add_interest(&self, _realm: &str, _policy: MatchPolicy, _pattern: &str) -> Ticket {
        0
    }

    fn remove_interest(&self, _realm: &str, _policy: MatchPolicy, _pattern: &str) {}

    fn interest_applied(&self, _ticket: Ticket) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn shutdown(&self) {}
}
