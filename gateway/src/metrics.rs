//! Prometheus metrics: names as constants, labels few and bounded.
//!
//! Hot paths never look labels up: handles are resolved once here and
//! stored in [`Metrics`]; per-serializer counters are indexed by
//! [`Serialization::index`].

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use telegraphy_wamp::Serialization;

/// Metric names (the dashboard and alert rules query these).
pub(crate) mod name {
    /// Open WebSocket connections.
    pub(crate) const CONNECTIONS: &str = "telegraphy_connections";
    /// Connections refused at accept or at the WebSocket upgrade, by reason.
    pub(crate) const CONNECTIONS_REFUSED: &str = "telegraphy_connections_refused_total";
    /// Established WAMP sessions.
    pub(crate) const SESSIONS: &str = "telegraphy_sessions";
    /// WAMP sessions established since start.
    pub(crate) const SESSIONS_TOTAL: &str = "telegraphy_sessions_total";
    /// Close frames written, by WebSocket close code.
    pub(crate) const DISCONNECTS: &str = "telegraphy_disconnects_total";
    /// Session subscriptions held (one per session and subscription).
    pub(crate) const SUBSCRIPTIONS: &str = "telegraphy_subscriptions";
    /// Distinct (topic, match policy) subscriptions on this node.
    pub(crate) const TOPICS: &str = "telegraphy_topics";
    /// WAMP messages received, by serializer.
    pub(crate) const MESSAGES_IN: &str = "telegraphy_messages_in_total";
    /// WAMP messages sent, by serializer.
    pub(crate) const MESSAGES_OUT: &str = "telegraphy_messages_out_total";
    /// Payload bytes received, by serializer.
    pub(crate) const BYTES_IN: &str = "telegraphy_bytes_in_total";
    /// Payload bytes sent, by serializer.
    pub(crate) const BYTES_OUT: &str = "telegraphy_bytes_out_total";
    /// Events accepted by the bus, by source (`wamp`, `http`).
    pub(crate) const EVENTS_PUBLISHED: &str = "telegraphy_events_published_total";
    /// Events taken from the bus and fanned out on this node.
    pub(crate) const EVENTS_RECEIVED: &str = "telegraphy_events_received_total";
    /// EVENT messages written or queued to sessions.
    pub(crate) const EVENTS_DELIVERED: &str = "telegraphy_events_delivered_total";
    /// Resumes (`_after_publication`), by outcome (`recovered`: true/false).
    pub(crate) const HISTORY_RESUMES: &str = "telegraphy_history_resumes_total";
    /// Events sent again to resuming sessions.
    pub(crate) const HISTORY_REPLAYED: &str = "telegraphy_history_replayed_events_total";
    /// Events the node holds for history and retention (memory://, amqp://).
    pub(crate) const HISTORY_HELD_EVENTS: &str = "telegraphy_history_held_events";
    /// About how many bytes of memory those events hold.
    pub(crate) const HISTORY_HELD_BYTES: &str = "telegraphy_history_held_bytes";
    /// Gaps in a topic's offsets a node filled from the event store.
    pub(crate) const HISTORY_GAP_FILLS: &str = "telegraphy_history_gap_fills_total";
    /// Time to fan one event out to every local subscriber's queue.
    pub(crate) const FANOUT_DURATION: &str = "telegraphy_fanout_duration_seconds";
    /// Protocol violations, by kind.
    pub(crate) const PROTOCOL_VIOLATIONS: &str = "telegraphy_protocol_violations_total";
    /// Sessions closed because their outbound queue was full.
    pub(crate) const SLOW_CONSUMER_CLOSES: &str = "telegraphy_slow_consumer_closes_total";
    /// Messages a session never got, by reason: `queue_full` (the message
    /// that found the queue full), `discarded` (still queued when a slow
    /// consumer was closed), `closing` (for a session already closing).
    pub(crate) const QUEUE_DROPS: &str = "telegraphy_queue_drops_total";
    /// Closes whose close frame could not be written (the peer was gone or
    /// did not read within the close timeout), by the close code meant.
    pub(crate) const CLOSE_UNSENT: &str = "telegraphy_close_unsent_total";
    /// Connections accepted on the public listener and not closed yet
    /// (WebSocket or HTTP, authenticated or not).
    pub(crate) const ADMITTED_CONNECTIONS: &str = "telegraphy_admitted_connections";
    /// Unauthenticated connections closed to make room (all slots taken, or
    /// out of file descriptors).
    pub(crate) const CONNECTIONS_SHED: &str = "telegraphy_connections_shed_total";
    /// Sessions refused at authentication, by reason.
    pub(crate) const AUTH_FAILURES: &str = "telegraphy_auth_failures_total";
    /// SUBSCRIBE / PUBLISH / CALL / REGISTER refused by authorization, by action.
    pub(crate) const AUTHORIZATION_DENIED: &str = "telegraphy_authorization_denied_total";
    /// Publishes refused by a role's rate limit.
    pub(crate) const RATE_LIMITED: &str = "telegraphy_rate_limited_total";
    /// 1 while the node wants traffic (`/readyz` 200), 0 while draining or
    /// disconnected from its bus.
    pub(crate) const READY: &str = "telegraphy_ready";
    /// Always 1; the `version` label says which build runs (rollouts).
    pub(crate) const BUILD_INFO: &str = "telegraphy_build_info";
    /// `limits.max_connections` of this node (for utilisation).
    pub(crate) const MAX_CONNECTIONS: &str = "telegraphy_max_connections";
    /// Events waiting in this node's bus queue for fan-out.
    pub(crate) const BUS_QUEUE_DEPTH: &str = "telegraphy_bus_queue_depth";
    /// HTTP publish requests refused, by status code.
    pub(crate) const HTTP_PUBLISH_ERRORS: &str = "telegraphy_http_publish_errors_total";
    pub(crate) const API_KEY_REFUSED: &str = "telegraphy_api_key_refused_total";
    pub(crate) const TLS_RELOADS: &str = "telegraphy_tls_reloads_total";
    /// Calls (RPC) by outcome: `result`, `error` (the callee's), `canceled`,
    /// `timeout`, `callee_lost`, `no_such_procedure`, `refused`
    /// (authorization, rate, limits, bad options).
    pub(crate) const RPC_CALLS: &str = "telegraphy_rpc_calls_total";
    /// Time from CALL to the call's end (result, error, cancel, timeout),
    /// for calls that reached a callee.
    pub(crate) const RPC_CALL_DURATION: &str = "telegraphy_rpc_call_duration_seconds";
    /// Calls waiting for their callee on this node.
    pub(crate) const RPC_CALLS_IN_FLIGHT: &str = "telegraphy_rpc_calls_in_flight";
    /// Registrations held by callees on this node (one per callee and
    /// registration).
    pub(crate) const RPC_REGISTRATIONS: &str = "telegraphy_rpc_registrations";
    /// Gateway nodes this node hears from on the bus, itself included.
    pub(crate) const CLUSTER_NODES: &str = "telegraphy_cluster_nodes";
    /// Sessions of every node, as this node knows them (the session meta API's count).
    pub(crate) const CLUSTER_SESSIONS: &str = "telegraphy_cluster_sessions";
    /// The realm's ten topics with the most subscribers, cluster-wide, as
    /// this node knows them (`realm`, `topic`, `match`; read at scrape time).
    pub(crate) const TOPIC_SUBSCRIBERS_TOP: &str = "telegraphy_topic_subscribers_top";
    /// Control messages from other nodes this node could not read.
    pub(crate) const CLUSTER_UNREADABLE: &str = "telegraphy_cluster_unreadable_messages_total";
    /// Time the web-app took to answer a call served over HTTP.
    pub(crate) const RPC_HTTP_DURATION: &str = "telegraphy_rpc_http_duration_seconds";
    /// Calls served over HTTP that did not end with a result, by reason:
    /// `error` (the web-app's error URI), `unavailable`, `failed`,
    /// `timeout`, `canceled`.
    pub(crate) const RPC_HTTP_ERRORS: &str = "telegraphy_rpc_http_errors_total";
}

/// How a call ended (the `outcome` label of `telegraphy_rpc_calls_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// The callee's final result.
    Result,
    /// The callee's error.
    Error,
    /// Canceled by the caller (or the caller left).
    Canceled,
    /// The call's timeout ran out.
    Timeout,
    /// The callee's session ended before it answered.
    CalleeLost,
    /// No registration matched.
    NoSuchProcedure,
    /// Refused before routing: authorization, rate, limits, options.
    Refused,
}

/// The `outcome` labels, in [`CallOutcome`] order.
const CALL_OUTCOMES: [&str; 7] = ["result", "error", "canceled", "timeout", "callee_lost", "no_such_procedure", "refused"];

/// The close codes the gateway sends (exported at 0 from the start).
pub(crate) const DISCONNECT_CODES: [u16; 11] = [1000, 1002, 1003, 1007, 1009, 1012, 4000, 4001, 4002, 4003, 4500];

/// Every `reason` label of `telegraphy_auth_failures_total` (exported at 0
/// from the start, so dashboards and alerts see the series).
pub(crate) const AUTH_FAILURE_REASONS: [&str; 13] = [
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_audience",
    "wrong_issuer",
    "wrong_algorithm",
    "missing_claims",
    "malformed",
    "unknown_role",
    "no_method",
    "cra_failed",
    "origin",
    "wrong_realm",
];

/// Why a session never got a message (the `reason` label of
/// `telegraphy_queue_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The message found the session's queue full (the session is then
    /// closed as a slow consumer).
    QueueFull,
    /// Still queued when a slow consumer was closed.
    Discarded,
    /// For a session already closing.
    Closing,
}

/// The `reason` labels, in [`DropReason`] order.
pub(crate) const DROP_REASONS: [&str; 3] = ["queue_full", "discarded", "closing"];

/// Protocol violation kinds (the `kind` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Violation {
    /// Not valid JSON / msgpack.
    Malformed,
    /// Valid data, not a valid WAMP message (code, arity, types).
    InvalidMessage,
    /// A message not allowed in the session's state.
    WrongState,
    /// A binary frame on a JSON session or a text frame on msgpack.
    WrongFrameType,
    /// Larger than `limits.max_message_size`.
    TooBig,
    /// HELLO did not come in time.
    HelloTimeout,
}

impl Violation {
    const ALL: [Violation; 6] = [
        Violation::Malformed,
        Violation::InvalidMessage,
        Violation::WrongState,
        Violation::WrongFrameType,
        Violation::TooBig,
        Violation::HelloTimeout,
    ];
    fn label(self) -> &'static str {
        match self {
            Violation::Malformed => "malformed",
            Violation::InvalidMessage => "invalid_message",
            Violation::WrongState => "wrong_state",
            Violation::WrongFrameType => "wrong_frame_type",
            Violation::TooBig => "too_big",
            Violation::HelloTimeout => "hello_timeout",
        }
    }
}

/// Every metric handle the gateway updates.
#[allow(missing_docs)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    connections_refused: IntCounterVec,
    pub sessions: IntGauge,
    pub sessions_total: IntCounter,
    disconnects: IntCounterVec,
    pub subscriptions: IntGauge,
    pub topics: IntGauge,
    pub messages_in: [IntCounter; 2],
    pub messages_out: [IntCounter; 2],
    pub bytes_in: [IntCounter; 2],
    pub bytes_out: [IntCounter; 2],
    pub published_wamp: IntCounter,
    pub published_http: IntCounter,
    pub events_received: IntCounter,
    pub events_delivered: IntCounter,
    pub fanout_duration: Histogram,
    /// Resumes that did not recover (`[0]`) and that did (`[1]`).
    pub resumes: [IntCounter; 2],
    pub history_replayed: IntCounter,
    pub history_gap_fills: IntCounter,
    pub history_held_events: IntGauge,
    pub history_held_bytes: IntGauge,
    violations: [IntCounter; 6],
    pub slow_consumer_closes: IntCounter,
    pub queue_drops: [IntCounter; 3],
    close_unsent: IntCounterVec,
    pub admitted_connections: IntGauge,
    pub shed_connections: IntCounter,
    http_publish_errors: IntCounterVec,
    api_key_refused: IntCounterVec,
    tls_reloads: IntCounterVec,
    auth_failures: IntCounterVec,
    pub denied_subscribe: IntCounter,
    pub denied_publish: IntCounter,
    pub denied_call: IntCounter,
    pub denied_register: IntCounter,
    pub rate_limited: IntCounter,
    pub ready: IntGauge,
    pub max_connections: IntGauge,
    pub bus_queue_depth: IntGauge,
    rpc_calls: [IntCounter; 7],
    rpc_call_duration: Histogram,
    pub rpc_calls_in_flight: IntGauge,
    pub rpc_registrations: IntGauge,
    pub rpc_http_duration: Histogram,
    rpc_http_errors: IntCounterVec,
    pub cluster_nodes: IntGauge,
    pub cluster_sessions: IntGauge,
    pub topic_subscribers_top: prometheus::IntGaugeVec,
    pub cluster_unreadable: IntCounter,
}

/// How many topics `telegraphy_topic_subscribers_top` shows per realm.
pub(crate) const TOP_TOPICS: usize = 10;

/// Subscribers a topic needs before `telegraphy_topic_subscribers_top`
/// names it: a topic is client input, and one client alone must not put
/// labels into the metrics (the security review's rule); a topic ten
/// sessions follow is the application's.
pub(crate) const TOP_TOPICS_MIN_SUBSCRIBERS: usize = 10;

fn per_serializer(registry: &Registry, name: &str, help: &str) -> [IntCounter; 2] {
    let vec = IntCounterVec::new(Opts::new(name, help), &["serializer"]).expect("valid metric");
    registry.register(Box::new(vec.clone())).expect("unique metric");
    Serialization::ALL.map(|s| vec.with_label_values(&[s.label()]))
}

impl Metrics {
    /// Creates and registers every metric (plus process CPU and memory).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        #[cfg(target_os = "linux")]
        reg(Box::new(prometheus::process_collector::ProcessCollector::for_self()));

        let published = counter_vec(name::EVENTS_PUBLISHED, "Events accepted by the bus, by source.", "source");
        let resumes = counter_vec(name::HISTORY_RESUMES, "Resumes from a publication (_after_publication), by outcome.", "recovered");
        let violations_vec = counter_vec(name::PROTOCOL_VIOLATIONS, "WAMP protocol violations, by kind.", "kind");
        let fanout_duration = Histogram::with_opts(
            HistogramOpts::new(
                name::FANOUT_DURATION,
                "Time to fan one event out to every local subscriber (written to small subscriptions, queued for large ones).",
            )
            .buckets(vec![0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )
        .expect("valid metric");
        reg(Box::new(fanout_duration.clone()));
        let rpc_calls = counter_vec(name::RPC_CALLS, "Calls (RPC), by outcome.", "outcome");
        let rpc_call_duration = Histogram::with_opts(
            HistogramOpts::new(name::RPC_CALL_DURATION, "Time from CALL to its end, for calls that reached a callee.")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        reg(Box::new(rpc_call_duration.clone()));
        let rpc_http_duration = Histogram::with_opts(
            HistogramOpts::new(name::RPC_HTTP_DURATION, "Time the web-app took to answer a call served over HTTP.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        reg(Box::new(rpc_http_duration.clone()));
        let rpc_http_errors = counter_vec(name::RPC_HTTP_ERRORS, "Calls served over HTTP that did not end with a result, by reason.", "reason");
        for reason in ["error", "unavailable", "failed", "timeout", "canceled"] {
            rpc_http_errors.with_label_values(&[reason]);
        }
        let denied = counter_vec(name::AUTHORIZATION_DENIED, "SUBSCRIBE/PUBLISH/CALL/REGISTER refused by authorization, by action.", "action");
        let auth_failures = counter_vec(name::AUTH_FAILURES, "Sessions refused at authentication, by reason.", "reason");
        for reason in AUTH_FAILURE_REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        let build_info = prometheus::IntGaugeVec::new(Opts::new(name::BUILD_INFO, "Build information (always 1)."), &["version"]).expect("valid");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        reg(Box::new(build_info));
        let connections_refused =
            counter_vec(name::CONNECTIONS_REFUSED, "Connections refused (at accept or at the WebSocket upgrade), by reason.", "reason");
        for reason in [
            "draining",
            "subprotocol",
            "max_connections",
            "origin",
            "pending_handshakes",
            "per_ip",
            "unauthenticated_per_ip",
            "connection_rate",
            "connection_rate_per_ip",
            "proxy_protocol",
        ] {
            connections_refused.with_label_values(&[reason]);
        }
        let disconnects = counter_vec(name::DISCONNECTS, "Close frames written to clients, by close code.", "code");
        let close_unsent = counter_vec(name::CLOSE_UNSENT, "Closes whose close frame could not be written, by close code.", "code");
        for code in DISCONNECT_CODES {
            disconnects.with_label_values(&[&code.to_string()]);
            close_unsent.with_label_values(&[&code.to_string()]);
        }
        let queue_drops = counter_vec(name::QUEUE_DROPS, "Messages sessions never got, by reason.", "reason");
        let http_publish_errors = counter_vec(name::HTTP_PUBLISH_ERRORS, "HTTP publish requests refused, by status.", "status");
        for status in ["400", "401", "403", "408", "409", "413", "429", "503"] {
            http_publish_errors.with_label_values(&[status]);
        }
        let api_key_refused = IntCounterVec::new(
            Opts::new(
                name::API_KEY_REFUSED,
                "HTTP requests with a valid API key that the key may not make, by key name and reason (topic, options, rate, presence).",
            ),
            &["api_key", "reason"],
        )
        .expect("valid metric");
        reg(Box::new(api_key_refused.clone()));
        let tls_reloads = counter_vec(name::TLS_RELOADS, "TLS certificate reloads of the public listener, by result (ok, error).", "result");
        for result in ["ok", "error"] {
            tls_reloads.with_label_values(&[result]);
        }
        Metrics {
            api_key_refused,
            tls_reloads,
            ready: gauge(name::READY, "1 while the node wants traffic (/readyz 200)."),
            max_connections: gauge(name::MAX_CONNECTIONS, "limits.max_connections of this node."),
            bus_queue_depth: gauge(name::BUS_QUEUE_DEPTH, "Events waiting in this node's bus queue for fan-out."),
            connections_refused,
            disconnects,
            http_publish_errors,
            auth_failures,
            denied_subscribe: denied.with_label_values(&["subscribe"]),
            denied_publish: denied.with_label_values(&["publish"]),
            denied_call: denied.with_label_values(&["call"]),
            denied_register: denied.with_label_values(&["register"]),
            rate_limited: counter(name::RATE_LIMITED, "Publishes refused by a rate limit."),
            connections: gauge(name::CONNECTIONS, "Open WebSocket connections."),
            sessions: gauge(name::SESSIONS, "Established WAMP sessions."),
            sessions_total: counter(name::SESSIONS_TOTAL, "WAMP sessions established since start."),
            subscriptions: gauge(name::SUBSCRIPTIONS, "Subscriptions held by sessions."),
            topics: gauge(name::TOPICS, "Distinct (topic, match policy) subscriptions."),
            messages_in: per_serializer(&registry, name::MESSAGES_IN, "WAMP messages received."),
            messages_out: per_serializer(&registry, name::MESSAGES_OUT, "WAMP messages sent."),
            bytes_in: per_serializer(&registry, name::BYTES_IN, "WAMP payload bytes received."),
            bytes_out: per_serializer(&registry, name::BYTES_OUT, "WAMP payload bytes sent."),
            published_wamp: published.with_label_values(&["wamp"]),
            published_http: published.with_label_values(&["http"]),
            events_received: counter(name::EVENTS_RECEIVED, "Events taken from the bus for fan-out."),
            events_delivered: counter(name::EVENTS_DELIVERED, "EVENT messages written or queued to sessions."),
            fanout_duration,
            violations: Violation::ALL.map(|v| violations_vec.with_label_values(&[v.label()])),
            slow_consumer_closes: counter(name::SLOW_CONSUMER_CLOSES, "Sessions closed for not keeping up."),
            queue_drops: DROP_REASONS.map(|r| queue_drops.with_label_values(&[r])),
            resumes: ["false", "true"].map(|r| resumes.with_label_values(&[r])),
            history_replayed: counter(name::HISTORY_REPLAYED, "Events sent again: to resuming sessions, and after gaps a node filled."),
            history_held_events: gauge(
                name::HISTORY_HELD_EVENTS,
                "Events this node holds for history and retention (memory://: its store; amqp://: its index of the history stream).",
            ),
            history_held_bytes: gauge(name::HISTORY_HELD_BYTES, "About how many bytes of memory those events hold (memory:// and amqp://)."),
            history_gap_fills: counter(name::HISTORY_GAP_FILLS, "Gaps in a topic's offsets this node filled from the event store."),
            close_unsent,
            admitted_connections: gauge(name::ADMITTED_CONNECTIONS, "Connections accepted and not closed yet (WebSocket or HTTP)."),
            shed_connections: counter(name::CONNECTIONS_SHED, "Unauthenticated connections closed to make room."),
            rpc_calls: CALL_OUTCOMES.map(|o| rpc_calls.with_label_values(&[o])),
            rpc_call_duration,
            rpc_calls_in_flight: gauge(name::RPC_CALLS_IN_FLIGHT, "Calls waiting for their callee on this node."),
            rpc_registrations: gauge(name::RPC_REGISTRATIONS, "Registrations held by callees on this node."),
            rpc_http_duration,
            rpc_http_errors,
            cluster_nodes: gauge(name::CLUSTER_NODES, "Gateway nodes this node hears from on the bus, itself included (1 on the memory bus)."),
            cluster_sessions: gauge(
                name::CLUSTER_SESSIONS,
                "WAMP sessions of every gateway node on the bus, as this node knows them (the session meta API's count; read at scrape time).",
            ),
            topic_subscribers_top: {
                let vec = prometheus::IntGaugeVec::new(
                    Opts::new(
                        name::TOPIC_SUBSCRIBERS_TOP,
                        "Subscribers (sessions, on every gateway node) of the realm's ten most followed subscriptions that have at least ten, as this node knows them; at most ten series per realm (read at scrape time).",
                    ),
                    &["realm", "topic", "match"],
                )
                .expect("valid metric");
                registry.register(Box::new(vec.clone())).expect("unique metric");
                vec
            },
            cluster_unreadable: counter(name::CLUSTER_UNREADABLE, "Control messages from other gateway nodes this node could not read."),
            registry,
        }
    }

    /// The registry, for metrics other crates keep (the bus).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a protocol violation.
    pub(crate) fn violation(&self, kind: Violation) {
        self.violations[kind as usize].inc();
    }

    /// Counts a refused authentication (`reason` is one of [`AUTH_FAILURE_REASONS`]).
    pub(crate) fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a close: its close frame was written (`sent`), or not.
    pub(crate) fn disconnect(&self, code: u16, sent: bool) {
        let counter = if sent { &self.disconnects } else { &self.close_unsent };
        counter.with_label_values(&[&code.to_string()]).inc();
    }

    /// Counts `n` messages a session never got.
    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        self.queue_drops[reason as usize].inc_by(n);
    }

    /// Counts a refused WebSocket upgrade (`reason` is a fixed word).
    pub(crate) fn refused(&self, reason: &'static str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a call that reached a callee and ended.
    pub(crate) fn call_done(&self, outcome: CallOutcome, started: std::time::Instant) {
        self.rpc_calls_in_flight.dec();
        self.rpc_calls[outcome as usize].inc();
        self.rpc_call_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Counts a call served over HTTP that did not end with a result
    /// (`reason`: error, unavailable, failed, timeout, canceled).
    pub(crate) fn http_call_error(&self, reason: &'static str) {
        self.rpc_http_errors.with_label_values(&[reason]).inc();
    }

    /// Counts a call that reached no callee: one refused, or one the router
    /// answered itself (the session meta API).
    pub(crate) fn call_answered_here(&self, outcome: CallOutcome) {
        self.rpc_calls[outcome as usize].inc();
    }

    /// Counts a request an API key may not make (`key`: its configured name).
    pub(crate) fn api_key_refused(&self, key: &str, reason: &'static str) {
        self.api_key_refused.with_label_values(&[key, reason]).inc();
    }

    /// Counts a certificate reload of the public listener.
    pub(crate) fn tls_reload(&self, ok: bool) {
        self.tls_reloads.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
    }

    /// Counts a refused HTTP publish.
    pub(crate) fn http_publish_error(&self, status: u16) {
        self.http_publish_errors.with_label_values(&[&status.to_string()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding of metrics cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
