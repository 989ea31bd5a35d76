//! `memory://`: the embedded bus. Events go straight to this node's
//! dispatcher through its bounded queue. Single node only; no external
//! service needed.
//!
//! History: with a [`MemoryStore`], each event is given its position and
//! kept, and handed to the node, under one lock, so positions follow the
//! order subscribers see.
//!
//! Queue policy: when the node's queue is full, `publish` waits for room,
//! so publishers (WAMP sessions, HTTP requests) slow down to the node's
//! fan-out speed instead of growing memory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use telegraphy_wamp::MatchPolicy;

use telegraphy_wamp::Id;

use crate::interest::Interest;
use crate::{Bus, Delivery, Envelope, EventStore as _, Inbound, MemoryStore, PublishError, Ticket};

/// The embedded single-node bus.
pub struct MemoryBus {
    inbound: Inbound,
    /// The node's interests, for [`Delivery::Subscribed`].
    interests: Mutex<HashSet<Interest>>,
    /// Keeps history and retained events, when set; `order` makes the
    /// store's order the delivery order.
    store: Option<(Arc<MemoryStore>, Mutex<()>)>,
}

impl MemoryBus {
    /// A bus that hands every published event to `inbound`.
    pub fn new(inbound: Inbound) -> MemoryBus {
        inbound.metrics.connected.set(1);
        MemoryBus { inbound, interests: Mutex::new(HashSet::new()), store: None }
    }

    /// A bus that keeps events in `store` as it hands them on.
    pub fn with_store(inbound: Inbound, store: Arc<MemoryStore>) -> MemoryBus {
        MemoryBus { store: Some((store, Mutex::new(()))), ..MemoryBus::new(inbound) }
    }

    fn routed(&self, event: &Envelope) -> bool {
        let interests = self.interests.lock().unwrap_or_else(|e| e.into_inner());
        interests.iter().any(|i| i.realm == event.realm && i.policy.matches(&i.pattern, &event.topic))
    }
}

impl Bus for MemoryBus {
    fn publish(&self, mut event: Envelope, delivery: Delivery) -> BoxFuture<'_, Result<Id, PublishError>> {
        async move {
            if delivery == Delivery::Subscribed && !self.routed(&event) {
                return Err(PublishError::NoSubscriber(format!("no session on this node is subscribed to `{}`", event.topic)));
            }
            let closed = |_| PublishError::Unavailable("the node is shutting down".into());
            match &self.store {
                Some((store, order)) if event.retain || store.config().keeps(&event.topic) => {
                    // Positions must reach the node in the order they were
                    // given: room in the queue first (the only wait), then
                    // position and hand over under one short lock.
                    let slot = self.inbound.reserve().await.map_err(closed)?;
                    let _in_order = order.lock().unwrap_or_else(|e| e.into_inner());
                    store.append(&mut event);
                    let id = event.publication;
                    slot.deliver(event);
                    Ok(id)
                }
                _ => {
                    let id = event.publication;
                    self.inbound.deliver(event).await.map_err(closed)?;
                    Ok(id)
                }
            }
        }
        .boxed()
    }

    fn add_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) -> Ticket {
        self.interests.lock().unwrap_or_else(|e| e.into_inner()).insert(Interest { realm: realm.into(), policy, pattern: pattern.into() });
        0
    }

    fn remove_interest(&self, realm: &str, policy: MatchPolicy, pattern: &str) {
        self.interests.lock().unwrap_or_else(|e| e.into_inner()).remove(&Interest { realm: realm.into(), policy, pattern: pattern.into() });
    }

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
