//! The control channel: messages between gateway nodes (calls across the
//! cluster, registration announcements), carried by the same [`Bus`] as
//! events, in a realm of their own.
//!
//! A control message is an [`Envelope`] whose realm is [`CONTROL_REALM`]
//! (not a valid WAMP URI, so no configured realm can collide with it) and
//! whose topic is a node's inbox ([`node_topic`]) or [`ALL_NODES`]. Its
//! payload is the envelope's `args`; what they mean is the node's business.
//! Each node adds an interest in its own inbox and in [`ALL_NODES`], so
//! the [`Bus`] contract carries over unchanged:
//!
//! * **Ordering**: messages from one node reach another in the order sent.
//! * **Delivery**: at most once; sending with [`crate::Delivery::Subscribed`]
//!   fails with [`crate::PublishError::NoSubscriber`] when the addressed node
//!   is gone (Redis: no subscriber on its channel; RabbitMQ: its queue, which
//!   goes with its connection, is not there), which tells a node quickly
//!   that another one died.
//! * Control messages are never kept by an event store ([`is_control`] makes
//!   them not keepable) and never reach a session. On RabbitMQ they go
//!   through an exchange of their own (`{amqp.exchange}.control`), so the
//!   history stream's bindings never see them.

use telegraphy_wamp::Value;

use crate::{now_us, Envelope, Filter};

/// The realm of control messages.
pub const CONTROL_REALM: &str = "#cluster";

/// The topic every node listens to.
pub const ALL_NODES: &str = "nodes";

/// The topic of one node's inbox.
pub fn node_topic(node: u64) -> String {
    format!("node.{node}")
}

/// Whether `event` is a control message.
pub fn is_control(event: &Envelope) -> bool {
    event.realm == CONTROL_REALM
}

/// A control message to `topic` ([`node_topic`] or [`ALL_NODES`]).
pub fn message(topic: String, args: Vec<Value>) -> Envelope {
    Envelope {
        realm: CONTROL_REALM.to_string(),
        publication: fastrand::u64(1..=telegraphy_wamp::MAX_ID),
        topic,
        args,
        kwargs: Default::default(),
        filter: Filter::default(),
        publisher: None,
        published_at_us: now_us(),
        retain: false,
        position: None,
    }
}
