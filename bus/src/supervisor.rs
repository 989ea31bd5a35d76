//! The connection lifecycle both broker adapters share: readiness, the
//! reconnect metrics, capped jittered backoff, and what is logged when.
//! Each adapter's task runs `while supervisor.session_ended(..).await { session }`
//! and its session calls [`Supervisor::up`] once subscriptions or bindings
//! are in force (and only then installs its publishing connection, so that
//! no publish is acknowledged before the node's own interests are restored).
//! A publish-only client ([`crate::connect_publisher`]) runs the same task
//! with sessions that only publish: it too turns not ready when its broker
//! goes away and reconnects by itself.
//!
//! A session's publishing connection is checked beside it ([`Watched`]):
//! when that connection breaks while the rest of the session looks fine (a
//! publish-only client has nothing else; a node's PUBLISH connection or
//! channel can fail alone), the session ends and the next one starts.
//!
//! Reconnects are prompt: the first retry comes after at most 50 ms, and
//! while the broker refuses TCP connections its port is probed every
//! [`PROBE_EVERY`], so the node reconnects as soon as the broker is back
//! instead of sleeping out a long backoff delay.
//!
//! Logging: one warning when an outage starts, one line when it ends (with
//! its duration); the failed attempts in between are debug lines.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::interest::Interests;
use crate::BusMetrics;

/// Why a broker session ended: the text goes into the outage warning (after
/// "cannot connect to the … bus yet" or "… bus disconnected"), and the
/// broker's own error stays reachable as its source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The broker did not answer within `connect_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting to Redis, or a command of the session, failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// Redis's PUBLISH connection stopped answering.
    #[error("the publishing connection failed: {0}")]
    RedisPublishing(#[source] redis::RedisError),
    /// Redis closed the subscriber connection.
    #[error("the subscriber connection closed")]
    RedisSubscriberClosed,
    /// Redis is not what the URL asks for: no Sentinel named the primary,
    /// the primary was demoted, the server lacks RESP3 (the text says which).
    #[error("{0}")]
    Setup(String),
    /// A Redis Cluster's slots moved or are not served (the text says which).
    #[error("{0}")]
    Cluster(String),
    /// The node fell further behind its Redis subscriptions than its buffer holds.
    #[error(
        "this node fell further behind its Redis subscriptions than redis.buffer_bytes holds; subscribing again (events in \
         between are missed; history topics are filled from the store)"
    )]
    Behind,
    /// RabbitMQ could not be connected to, or the publishing channels or
    /// exchange not set up (the text says which). Boxed: it is the largest.
    #[error("{0}")]
    AmqpOpen(#[source] Box<crate::amqp::OpenError>),
    /// A RabbitMQ operation of the session failed.
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    /// The node's RabbitMQ consumer ended (RabbitMQ cancelled it).
    #[error("the consumer was cancelled")]
    AmqpConsumerCancelled,
    /// The RabbitMQ connection closed.
    #[error("the connection closed")]
    AmqpConnectionClosed,
    /// A RabbitMQ publishing channel closed (RabbitMQ closes a channel on
    /// some errors); names which.
    #[error("the {0} channel closed")]
    AmqpChannelClosed(&'static str),
    /// RabbitMQ refused a message the session needs (nack); names which.
    #[error("RabbitMQ refused the {0} (nack)")]
    AmqpRefused(&'static str),
}

impl From<crate::amqp::OpenError> for SessionError {
    fn from(e: crate::amqp::OpenError) -> SessionError {
        SessionError::AmqpOpen(Box::new(e))
    }
}

/// What an adapter task serves, for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// A gateway node's bus: it consumes and publishes.
    Node,
    /// A publish-only client (the CLI, the publisher library).
    Publisher,
}

/// Connection state of one adapter task.
pub(crate) struct Supervisor {
    /// `Redis` or `RabbitMQ`, for log lines.
    broker: &'static str,
    /// Whose connection this is, for log lines.
    client: Client,
    /// The broker URL without its password.
    url: String,
    backoff: Backoff,
    /// Since when the adapter is disconnected (`None` while connected).
    down_since: Option<Instant>,
    /// Whether the adapter has never been connected yet.
    first: bool,
    /// The broker's TCP address, probed while it refuses connections.
    probe: Option<(String, u16)>,
    /// Failed attempts in the current outage (logged with the recovery).
    attempts: u32,
}

/// How long a session whose publishing side broke still takes what its
/// consuming side had already received before it starts over: a broker that
/// went away acknowledged those events, and they are on their way to the
/// node's subscribers. A consumer the broker closed ends sooner.
pub(crate) const DRAIN_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// How often the broker's port is probed while it refuses connections.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

impl Supervisor {
    pub(crate) fn new(broker: &'static str, client: Client, url: String, max_delay: Duration, probe: Option<(String, u16)>) -> Supervisor {
        Supervisor {
            broker,
            client,
            url,
            backoff: Backoff::new(Duration::from_millis(50), max_delay),
            down_since: None,
            first: true,
            probe,
            attempts: 0,
        }
    }

    /// The session is connected and every interest is in force.
    pub(crate) fn up(&mut self, interests: &Interests, metrics: &BusMetrics, applied: usize) {
        self.backoff.reset();
        interests.set_connected(true);
        metrics.connected.set(1);
        let down_for = self.down_since.take().map(|since| since.elapsed());
        let attempts = std::mem::take(&mut self.attempts);
        if let (Some(d), false) = (down_for, self.first) {
            metrics.reconnects.inc();
            metrics.disconnected_seconds.inc_by(d.as_secs_f64());
        }
        match (self.first, down_for, self.client) {
            (true, None, _) => tracing::info!(bus = %self.url, "{} bus connected", self.broker),
            (true, Some(d), _) => tracing::info!(bus = %self.url, waited = ?d, attempts, "{} bus connected; this node is ready", self.broker),
            (false, d, Client::Node) => tracing::info!(
                bus = %self.url, interests = applied, down_for = ?d.unwrap_or_default(), attempts,
                "{} bus reconnected; subscriptions restored, this node is ready again", self.broker
            ),
            (false, d, Client::Publisher) => tracing::info!(
                bus = %self.url, down_for = ?d.unwrap_or_default(), attempts,
                "{} bus reconnected; this publisher takes events again", self.broker
            ),
        }
        self.first = false;
    }

    /// A session ended: `Ok` means the adapter was stopped (returns false:
    /// no next session); an error marks the adapter down and waits the
    /// backoff delay, or until `stop` (returns whether to start another).
    pub(crate) async fn session_ended(
        &mut self,
        outcome: Result<(), SessionError>,
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
        let backoff = tokio::time::sleep(delay);
        tokio::pin!(backoff);
        // While the broker refuses connections, watch for its return: a
        // node is back within one probe interval of its broker. When it
        // answers but the session failed (starting up, refusing us), the
        // backoff delay is the right wait.
        let probe = match &self.probe {
            Some(addr) if !stop.is_cancelled() && !reachable(addr).await => Some(addr.clone()),
            _ => None,
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut backoff => return !stop.is_cancelled(),
                _ = tokio::time::sleep(PROBE_EVERY), if probe.is_some() => {
                    if reachable(probe.as_ref().expect("probing")).await {
                        tracing::debug!(bus = %self.url, "{} accepts connections again; reconnecting now", self.broker);
                        // The broker just came back: if it is still starting
                        // up, retry it from short delays again.
                        self.backoff.reset();
                        return !stop.is_cancelled();
                    }
                }
            }
        }
    }

    /// The session ended with `error`: marks the adapter down and returns how
    /// long to wait before the next attempt.
    fn down(&mut self, interests: &Interests, metrics: &BusMetrics, error: &SessionError) -> Duration {
        interests.set_connected(false);
        metrics.connected.set(0);
        metrics.interests.set(0);
        let delay = self.backoff.next_delay();
        self.attempts += 1;
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            if self.first {
                let hint = if crate::is_certificate_error(error) { format!("; the TLS check failed: {}", crate::TLS_HINT) } else { String::new() };
                tracing::warn!(
                    bus = %self.url, error = %error,
                    "cannot connect to the {} bus yet{hint}; this node is not ready until it does (retrying in the background)", self.broker
                );
            } else if self.client == Client::Node {
                tracing::warn!(
                    bus = %self.url, error = %error,
                    "{} bus disconnected; this node is not ready and refuses publishes until it reconnects (retrying in the background)",
                    self.broker
                );
            } else {
                tracing::warn!(
                    bus = %self.url, error = %error,
                    "{} bus disconnected; this publisher refuses events until it reconnects (retrying in the background)",
                    self.broker
                );
            }
        } else {
            tracing::debug!(bus = %self.url, error = %error, retry_in = ?delay, attempt = self.attempts, "{} bus still unreachable", self.broker);
        }
        delay
    }
}

/// Whether the broker accepts a TCP connection at `addr` now.
async fn reachable((host, port): &(String, u16)) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), *port))).await, Ok(Ok(_)))
}

/// A check of a session's publishing side, run in a task of its own beside
/// the session, so that the session's loop pays nothing per event for it:
/// the session waits on [`Watched::ended`] where it waited on the adapter's
/// stop token.
pub(crate) struct Watched {
    /// Cancelled when the adapter stops or the check failed.
    ended: CancellationToken,
    /// Why the check failed.
    failure: Arc<Mutex<Option<SessionError>>>,
    task: tokio::task::AbortHandle,
}

impl Watched {
    /// Runs `check` (resolving with a reason once the publishing side
    /// broke) until the adapter's `stop` or the returned value is dropped.
    pub(crate) fn spawn(stop: &CancellationToken, check: impl Future<Output = SessionError> + Send + 'static) -> Watched {
        let ended = stop.child_token();
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (ended, failure) = (ended.clone(), failure.clone());
            async move {
                tokio::select! {
                    _ = ended.cancelled() => {}
                    why = check => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                        ended.cancel();
                    }
                }
            }
        })
        .abort_handle();
        Watched { ended, failure, task }
    }

    /// Cancelled when the adapter stops or the check failed; then
    /// [`Watched::outcome`] says which.
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    /// The session's outcome once [`Watched::ended`] fired: `Ok` when the
    /// adapter stopped, else why the publishing side broke.
    pub(crate) fn outcome(&self) -> Result<(), SessionError> {
        match self.failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn session_errors_say_what_happened_and_keep_their_source() {
        assert_eq!(SessionError::Timeout(Duration::from_secs(5)).to_string(), "no answer within 5s");
        assert_eq!(SessionError::AmqpChannelClosed("mandatory publishing").to_string(), "the mandatory publishing channel closed");
        assert!(SessionError::AmqpConnectionClosed.source().is_none());

        let redis = || redis::RedisError::from((redis::ErrorKind::IoError, "broken pipe"));
        let e = SessionError::RedisPublishing(redis());
        assert_eq!(e.to_string(), format!("the publishing connection failed: {}", redis()));
        assert_eq!(e.source().and_then(|s| s.downcast_ref::<redis::RedisError>()).map(|r| r.kind()), Some(redis::ErrorKind::IoError));

        let e = SessionError::from(lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(e.to_string(), lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)).to_string());
        let lapin = e.source().and_then(|s| s.downcast_ref::<lapin::Error>()).expect("the lapin error is the source");
        assert!(lapin.is_io_error());
    }
}
