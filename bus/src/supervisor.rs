//! The connection lifecycle both broker adapters share: readiness, the
//! reconnect metrics, capped jittered backoff, and what is logged when.
//! Each adapter's task runs `while supervisor.session_ended(..).await { session }`
//! and its session calls [`Supervisor::up`] once subscriptions or bindings
//! are in force.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::interest::Interests;
use crate::BusMetrics;

/// Connection state of one adapter task.
pub(crate) struct Supervisor {
    /// `Redis` or `RabbitMQ`, for log lines.
    broker: &'static str,
    /// The broker URL without its password.
    url: String,
    backoff: Backoff,
    /// Since when the adapter is disconnected (`None` while connected).
    down_since: Option<Instant>,
    /// Whether the adapter has never been connected yet.
    first: bool,
}

impl Supervisor {
    pub(crate) fn new(broker: &'static str, url: String, max_delay: Duration) -> Supervisor {
        Supervisor { broker, url, backoff: Backoff::new(Duration::from_millis(100), max_delay), down_since: None, first: true }
    }

    /// The session is connected and every interest is in force.
    pub(crate) fn up(&mut self, interests: &Interests, metrics: &BusMetrics, applied: usize) {
        self.backoff.reset();
        interests.set_connected(true);
        metrics.connected.set(1);
        if let Some(since) = self.down_since.take() {
            if !self.first {
                metrics.reconnects.inc();
                metrics.disconnected_seconds.inc_by(since.elapsed().as_secs_f64());
            }
        }
        if self.first {
            tracing::info!(bus = %self.url, "{} bus connected", self.broker);
        } else {
            tracing::info!(bus = %self.url, interests = applied, "{} bus reconnected; subscriptions restored", self.broker);
        }
        self.first = false;
    }

    /// A session ended: `Ok` means the adapter was stopped (returns false:
    /// no next session); an error marks the adapter down and waits the
    /// backoff delay, or until `stop` (returns whether to start another).
    pub(crate) async fn session_ended(
        &mut self,
        outcome: Result<(), String>,
        stop: &CancellationToken,
        interests: &Interests,
        metrics: &BusMetrics,
    ) -> bool {
        let error = match outcome {
            Ok(()) => {
                interests.set_connected(false);
                return false;
            }
            Err(e) => e,
        };
        let delay = self.down(interests, metrics, &error);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => !stop.is_cancelled(),
        }
    }

    /// The session ended with `error`: marks the adapter down and returns how
    /// long to wait before the next attempt.
    fn down(&mut self, interests: &Interests, metrics: &BusMetrics, error: &str) -> Duration {
        interests.set_connected(false);
        metrics.connected.set(0);
        metrics.interests.set(0);
        self.down_since.get_or_insert_with(Instant::now);
        let delay = self.backoff.next_delay();
        tracing::warn!(
            bus = %self.url, error, retry_in = ?delay,
            "{} bus disconnected; this node is not ready until it reconnects", self.broker
        );
        delay
    }
}
