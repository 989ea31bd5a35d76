//! What every connection on this node shares: the validated configuration,
//! the realms, the bus, metrics, admission (connection slots and limits)
//! and the lifecycle (draining, shutdown signal); and the bus dispatcher
//! that hands each event to its realm.

use std::sync::Arc;

use telegraphy_bus::{Bus, Envelope, EventStore};
use telegraphy_wamp::{Id, UriRules, MAX_ID};
use tokio::sync::mpsc;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::outbox::Flush;
use crate::realm::Realms;

/// The state of one gateway node.
pub struct Node {
    /// The validated configuration.
    pub config: Config,
    /// Random id of this node, carried in envelopes for `exclude_me`.
    pub id: u64,
    /// The realms this node serves.
    pub(crate) realms: Realms,
    /// Where events go.
    pub bus: Arc<dyn Bus>,
    /// Metric handles.
    pub metrics: Arc<Metrics>,
    /// URI rules, from the config.
    pub uri_rules: UriRules,
    /// API keys accepted by `POST /publish`.
    pub api_keys: Vec<String>,
    /// Verifies credentials and resolves roles.
    pub auth: Authenticator,
    /// Every connection of the public listener, from accept to close
    /// (`limits.max_connections`, unauthenticated ones shed first; pending
    /// handshakes; WebSockets per address).
    pub(crate) admission: Arc<Admission>,
    /// Draining, the shutdown signal, the session tracker.
    pub(crate) lifecycle: Lifecycle,
    /// The bus queue toward the dispatcher, to report its depth.
    bus_queue: mpsc::WeakSender<Envelope>,
}

impl Node {
    /// Builds a node around a bus.
    pub fn new(
        id: u64,
        config: Config,
        auth: Authenticator,
        bus: Arc<dyn Bus>,
        store: Option<Arc<dyn EventStore>>,
        bus_queue: mpsc::WeakSender<Envelope>,
        metrics: Arc<Metrics>,
    ) -> Arc<Node> {
        metrics.max_connections.set(config.limits.max_connections as i64);
        let realms = Realms::new(&config.realms, &bus, store.as_ref(), &metrics, id);
        Arc::new(Node {
            uri_rules: config.uri_rules.into(),
            api_keys: config.effective_api_keys(),
            auth,
            admission: Admission::new(&config.limits, metrics.clone()),
            config,
            id,
            realms,
            bus,
            metrics,
            lifecycle: Lifecycle::default(),
            bus_queue,
        })
    }

    /// Whether the node should receive traffic.
    pub(crate) fn is_ready(&self) -> bool {
        !self.lifecycle.is_draining() && self.bus.is_ready()
    }

    /// Events waiting in the bus queue for fan-out.
    pub(crate) fn bus_queue_depth(&self) -> usize {
        self.bus_queue.upgrade().map(|tx| tx.max_capacity() - tx.capacity()).unwrap_or(0)
    }

    /// Takes events from the bus and fans them out until the bus closes or
    /// the node shuts down.
    pub(crate) async fn run_dispatcher(self: Arc<Self>, mut events: mpsc::Receiver<Envelope>) {
        let mut batch = Vec::with_capacity(64);
        loop {
            batch.clear();
            if events.recv_many(&mut batch, 64).await == 0 {
                return;
            }
            self.metrics.events_received.inc_by(batch.len() as u64);
            // Small fan-outs leave their frames queued until the batch is
            // done: a session then gets the batch's events in one write.
            let mut flush = Flush::default();
            for event in &batch {
                match self.realms.get(&event.realm) {
                    Some(realm) => {
                        realm.dispatch(event, &mut flush);
                    }
                    None => tracing::debug!(realm = %event.realm, "event for a realm this node does not serve; dropped"),
                }
            }
            flush.run();
        }
    }
}

/// A random WAMP global-scope id in `1..=2^53`, for publications (which
/// gate nothing; fast).
pub(crate) fn random_id() -> Id {
    fastrand::u64(1..=MAX_ID)
}

/// A WAMP id in `1..=2^53` from the operating system's cryptographic
/// generator, for session ids: they gate the `eligible`/`exclude` publish
/// options, so they must not be predictable.
pub(crate) fn secure_random_id() -> Id {
    u64::from_le_bytes(secure_random_bytes()) % MAX_ID + 1
}

/// Bytes from the operating system's cryptographic generator.
pub(crate) fn secure_random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The kernel's generator does not fail once the system has booted; if
    // it ever did, there is nothing safe to fall back to.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}
