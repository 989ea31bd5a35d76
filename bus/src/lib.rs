//! The event bus behind Telegraphy gateway nodes.
//!
//! Every event, whoever publishes it (a browser over WAMP, the web-app over
//! HTTP, the CLI), travels as an [`Envelope`] through a [`Bus`]; each node
//! consumes the bus and fans events out to its own sessions. Nodes hold no
//! state another node needs, so any number can run behind a load balancer.
//!
//! # Layout
//!
//! * [`envelope`]: the [`Envelope`] (one event with its routing options).
//! * [`memory`]: [`MemoryBus`], the embedded single-node bus (the default).
//!
//! # The `Bus` contract
//!
//! * **Delivery**: at most once. An event that [`Bus::publish`] accepted is
//!   delivered to every consuming node that is connected and has declared
//!   an interest matching the topic; a node that is disconnected at that
//!   moment misses it (recovery is layered above the bus).
//! * **Ordering**: events from one publisher connection arrive at each node
//!   in publish order. No order holds between different publishers.
//! * **Acceptance**: `publish` resolves `Ok` only once the bus took the
//!   event (for brokers: the broker confirmed it). It never reports success
//!   for an event the bus did not accept.
//! * **Interest**: a node calls [`Bus::add_interest`] / [`Bus::remove_interest`]
//!   as its sessions subscribe and unsubscribe; a bus may deliver more than
//!   was asked for (the hub re-checks every topic), never less.
//! * **Backpressure**: each adapter's inbound queue toward the node is
//!   bounded; when it is full, `publish` waits (memory) — documented per
//!   adapter.

pub mod envelope;
pub mod memory;

use futures_util::future::BoxFuture;
use telegraphy_wamp::MatchPolicy;

pub use envelope::{Envelope, Filter, Publisher};
pub use memory::MemoryBus;

/// Why the bus did not accept an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bus is not reachable or not running; the event was not accepted.
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
}

/// An event bus (see the crate docs for the contract every adapter keeps).
pub trait Bus: Send + Sync + 'static {
    /// Hands one event to the bus; resolves once the bus accepted it.
    fn publish(&self, event: Envelope) -> BoxFuture<'_, Result<(), PublishError>>;

    /// This node needs events whose topic matches `pattern` under `policy`.
    /// Called once per distinct (policy, pattern) when its first local
    /// subscriber arrives.
    fn add_interest(&self, policy: MatchPolicy, pattern: &str);

    /// This node no longer needs (policy, pattern): its last local
    /// subscriber left.
    fn remove_interest(&self, policy: MatchPolicy, pattern: &str);

    /// Whether the bus is connected and accepting events (feeds `/readyz`).
    fn is_ready(&self) -> bool;

    /// A short name for logs (`memory`, `redis`, `amqp`).
    fn kind(&self) -> &'static str;
}

/// Parses a bus URL and says which adapter it names, or why it cannot be used.
pub fn check_url(url: &str) -> Result<&'static str, String> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "memory" => Ok("memory"),
        "redis" | "rediss" | "amqp" | "amqps" => Err(format!(
            "bus `{url}`: the {scheme} bus is not available in this version yet; use `memory://` (the embedded single-node bus)"
        )),
        _ => Err(format!(
            "bus `{url}` is not a bus URL this gateway knows; use `memory://` (the embedded single-node bus)"
        )),
    }
}
