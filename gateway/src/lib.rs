//! Telegraphy gateway node: a WAMP v2 router (broker and dealer) over WebSocket, fed by an
//! event bus, so that any number of stateless nodes can serve browsers.
//!
//! # Layout
//!
//! * [`config`]: the one [`Config`] struct (TOML file,
//!   `TELEGRAPHY_*` env, flags), validated at startup.
//! * [`server`]: listeners, routes and the single owner of shutdown/drain.
//! * [`listener`]: the public accept loop (TLS, admission, peer address).
//! * [`admission`]: every accepted connection's slot, phase deadlines, and
//!   shedding the oldest unauthenticated connections when full.
//! * [`proxy`]: the client's address behind trusted load balancers
//!   (`X-Forwarded-For`, `Forwarded`, the PROXY protocol).
//! * [`connection`]: the WebSocket upgrade and the one task that serves each connection.
//! * [`session`]: the WAMP session state machine (HELLO to GOODBYE).
//! * [`auth`]: authentication (JWT tickets, WAMP-CRA, anonymous) and roles.
//! * [`authz`]: permission patterns and the subscribe/publish checks.
//! * [`realm`]: a realm and what it owns (its broker, dealer and event
//!   store; its session registry next).
//! * [`broker`]: the broker role of a realm: subscriptions, bus interest
//!   and event fan-out (encode once per subscription and serializer, write
//!   the same bytes to every subscriber).
//! * [`dealer`]: the dealer role of a realm: registrations (best match and
//!   invocation policy) and calls in flight between callers and callees.
//! * [`cluster`]: what nodes tell each other over the bus's control
//!   channel: their registrations (heartbeats), calls that cross nodes,
//!   and their sessions (deltas and snapshots).
//! * [`members`]: each realm's directory: its sessions, here and on the
//!   other nodes, and the other nodes' subscriptions (the session and
//!   subscription meta APIs).
//! * [`presence`]: who is on a topic, cluster-wide
//!   (`telegraphy.presence.get`, batched `telegraphy.presence.<topic>` events).
//! * [`http_callee`]: procedures the web-app serves over HTTP
//!   (`[[rpc.http]]`): signed POSTs, JSON or NDJSON answers.
//! * [`match_index`]: which (match policy, pattern) entries a URI matches,
//!   for subscriptions and registrations.
//! * [`outbox`]: each session's sending side: queue limits, the
//!   slow-consumer policy, the close signal; the fan-out's `Flush` and the
//!   write shards that write large fan-outs on every core.
//! * [`wire`]: a connection's socket, shared by hyper, tungstenite and the
//!   gateway's own writers (the fan-out writes straight to it), in order.
//! * [`publish`]: `POST /publish` for the web-app side.
//! * [`node`]: state shared by every connection; the bus dispatcher.
//! * [`continuity`]: the dispatcher's memory of each history topic's last
//!   position, so that events the node missed on the bus are read from the
//!   event store and delivered in order.
//! * [`lifecycle`]: draining flag, shutdown signal and session tracker
//!   (the drain itself is run by [`server`]).
//! * [`metrics`]: Prometheus metric names and handles.
//!
//! The WAMP codec lives in `telegraphy-wamp` and the bus in `telegraphy-bus`.
//!
//! # What other crates see
//!
//! The binary's needs: [`Config`] (and the [`config`] types it holds),
//! [`Gateway`] (bind, run, drain), [`Prepared`], [`StartError`] and
//! [`shutdown_signal`]. Every module is private; the few internals that the
//! instruction benchmark, the fuzz targets and the integration tests drive
//! directly are re-exported from the hidden `harness` module, so the
//! compiler reports anything nobody uses.

// The layout above is for maintainers (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

mod admission;
mod auth;
mod authz;
mod broker;
mod cluster;
pub mod config;
mod connection;
mod continuity;
mod dealer;
mod http_callee;
mod lifecycle;
mod listener;
mod match_index;
mod members;
mod metrics;
mod node;
mod outbox;
mod presence;
mod proxy;
mod publish;
mod realm;
mod server;
mod session;
mod wire;

pub use config::Config;
pub use listener::TlsError;
pub use server::{shutdown_signal, Gateway, Prepared, StartError};

/// Internals that the instruction benchmark (`bench/src/bin/telegraphy-instr.rs`),
/// the fuzz targets and the integration tests drive directly. Not an API: it
/// changes with the code it exposes.
#[doc(hidden)]
pub mod harness {
    pub use crate::auth::{cra_sign, Authenticator};
    pub use crate::broker::{Broker, SessionHandle};
    pub use crate::connection::origin_allowed;
    pub use crate::metrics::Metrics;
    pub use crate::node::{Node, NodeBus};
    pub use crate::outbox::{Flush, Outbox, WriteShards};
    pub use crate::publish::parse_body;
    pub use crate::session::{Flow, Session};
    pub use crate::wire::{data_frame, Wire};
}
