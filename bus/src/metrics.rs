//! Metrics every bus adapter keeps (registered in the gateway's registry;
//! a publisher-only client keeps them unregistered).

use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Metric names.
pub mod name {
    /// 1 while the adapter is connected to its broker.
    pub const CONNECTED: &str = "telegraphy_bus_connected";
    /// Successful reconnects after a lost connection.
    pub const RECONNECTS: &str = "telegraphy_bus_reconnects_total";
    /// Seconds spent disconnected from the broker.
    pub const DISCONNECTED_SECONDS: &str = "telegraphy_bus_disconnected_seconds_total";
    /// Envelopes that could not be used, by cause.
    pub const DECODE_ERRORS: &str = "telegraphy_bus_decode_errors_total";
    /// Events taken from the broker.
    pub const RECEIVED: &str = "telegraphy_bus_events_received_total";
    /// Duplicate deliveries dropped (Redis: a channel and a pattern both matched).
    pub const DUPLICATES: &str = "telegraphy_bus_duplicates_dropped_total";
    /// Publishes the broker did not accept.
    pub const PUBLISH_ERRORS: &str = "telegraphy_bus_publish_errors_total";
    /// Broker subscriptions or bindings in force for this node's sessions
    /// (its control channel's two not counted).
    pub const INTERESTS: &str = "telegraphy_bus_interests";
    /// Time from publish to this node taking the event off the bus.
    pub const LAG: &str = "telegraphy_bus_lag_seconds";
}

/// Bus metric handles.
#[allow(missing_docs)]
#[derive(Clone)]
pub struct BusMetrics {
    pub connected: IntGauge,
    pub reconnects: IntCounter,
    pub disconnected_seconds: Counter,
    decode_errors: IntCounterVec,
    pub received: IntCounter,
    pub duplicates: IntCounter,
    pub publish_errors: IntCounter,
    pub interests: IntGauge,
    pub lag: Histogram,
}

impl BusMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> BusMetrics {
        let m = BusMetrics::unregistered();
        let cs: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.connected.clone()),
            Box::new(m.reconnects.clone()),
            Box::new(m.disconnected_seconds.clone()),
            Box::new(m.decode_errors.clone()),
            Box::new(m.received.clone()),
            Box::new(m.duplicates.clone()),
            Box::new(m.publish_errors.clone()),
            Box::new(m.interests.clone()),
            Box::new(m.lag.clone()),
        ];
        for c in cs {
            registry.register(c).expect("bus metrics registered once");
        }
        m
    }

    /// Metrics nobody scrapes (publish-only clients).
    pub fn unregistered() -> BusMetrics {
        let decode_errors = IntCounterVec::new(Opts::new(name::DECODE_ERRORS, "Unusable envelopes, by cause."), &["cause"]).expect("valid");
        for cause in ["malformed", "unsupported_version"] {
            decode_errors.with_label_values(&[cause]);
        }
        BusMetrics {
            connected: IntGauge::new(name::CONNECTED, "1 while connected to the bus broker.").expect("valid"),
            reconnects: IntCounter::new(name::RECONNECTS, "Reconnects to the bus broker.").expect("valid"),
            disconnected_seconds: Counter::new(name::DISCONNECTED_SECONDS, "Seconds spent disconnected from the bus broker.").expect("valid"),
            decode_errors,
            received: IntCounter::new(name::RECEIVED, "Events taken from the bus.").expect("valid"),
            duplicates: IntCounter::new(name::DUPLICATES, "Duplicate bus deliveries dropped.").expect("valid"),
            publish_errors: IntCounter::new(name::PUBLISH_ERRORS, "Publishes the bus did not accept.").expect("valid"),
            interests: IntGauge::new(name::INTERESTS, "Broker subscriptions or bindings in force.").expect("valid"),
            lag: Histogram::with_opts(
                HistogramOpts::new(name::LAG, "Publish to bus receive time.")
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            )
            .expect("valid"),
        }
    }

    /// Counts an unusable envelope.
    pub fn decode_error(&self, cause: &'static str) {
        self.decode_errors.with_label_values(&[cause]).inc();
    }

    /// The count for one decode-error cause (tests and logs).
    pub fn decode_errors(&self, cause: &'static str) -> u64 {
        self.decode_errors.with_label_values(&[cause]).get()
    }
}
