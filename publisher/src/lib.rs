//! Publish Telegraphy events from Rust: straight onto the bus (Redis,
//! RabbitMQ) or through a gateway's `POST /publish` endpoint.
//!
//! ```no_run
//! # async fn run() -> Result<(), telegraphy_publisher::Error> {
//! use telegraphy_publisher::{Event, Publisher};
//! let publisher = Publisher::connect("redis://127.0.0.1:6379/0").await?;
//! let id = publisher.publish(Event::new("com.example.orders.created").arg(42u64)).await?;
//! println!("published {id}");
//! # Ok(()) }
//! ```
//!
//! `publish` returns the publication id only once the bus accepted the
//! event (Redis answered; RabbitMQ confirmed; the gateway answered 200).
//! Errors say what to fix; match on [`Error::kind`].
//!
//! Keep one [`Publisher`] for the life of the program (a web app: in its
//! state, cloned into handlers). `connect` fails at once when the broker
//! cannot be reached; afterwards the handle reconnects by itself when the
//! broker goes away and comes back, and meanwhile `publish` fails fast with
//! [`ErrorKind::Unavailable`] (retry later) instead of hanging.
//!
//! # Layout
//!
//! One file: [`Publisher`] (a cloneable handle), [`Event`] (a builder) and
//! [`Error`] with its [`ErrorKind`].

use std::sync::Arc;
use std::time::Duration;

use telegraphy_bus::{check_topic, now_us, Bus, BusError, BusOptions, Delivery, Envelope, Filter, PublishError, PublishOptions, PublishRequest};
use telegraphy_wamp::{Dict, Id, UriRules, Value, MAX_ID};

/// The realm events go to unless the event names another.
pub const DEFAULT_REALM: &str = "realm1";

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The event or the URL is malformed: fix the input.
    InvalidInput,
    /// The bus or gateway could not be reached, or is not accepting events
    /// now: retry later.
    Unavailable,
    /// Credentials were refused (broker password, API key), or the broker's
    /// TLS certificate was not accepted: fix the configuration.
    Unauthorized,
    /// The bus or gateway refused this event and would refuse it again.
    Rejected,
    /// The event asked for a subscriber ([`Event::require_subscriber`]) and
    /// no node subscribed to its topic got it.
    NoSubscriber,
}

/// A publishing failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<BusError> for Error {
    fn from(e: BusError) -> Error {
        let kind = match e {
            BusError::InvalidUrl(_) => ErrorKind::InvalidInput,
            BusError::Connect { .. } => ErrorKind::Unavailable,
            BusError::Auth { .. } | BusError::Tls { .. } => ErrorKind::Unauthorized,
        };
        Error::new(kind, telegraphy_bus::error_chain(&e))
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Error {
        let kind = match e {
            PublishError::Unavailable(_) => ErrorKind::Unavailable,
            PublishError::Rejected(_) => ErrorKind::Rejected,
            PublishError::NoSubscriber(_) => ErrorKind::NoSubscriber,
        };
        Error::new(kind, e.to_string())
    }
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The topic URI.
    pub topic: String,
    /// Positional payload.
    pub args: Vec<Value>,
    /// Keyword payload.
    pub kwargs: Dict,
    /// Which subscribers may receive it (black/white lists).
    pub filter: Filter,
    /// The realm; [`DEFAULT_REALM`] when `None`.
    pub realm: Option<String>,
    /// Succeed only if at least one node subscribed to the topic got the
    /// event (otherwise [`ErrorKind::NoSubscriber`]); see `docs/bus.md`.
    pub require_subscriber: bool,
    /// Keep it as the topic's retained event: a subscriber that asks
    /// (`get_retained`) gets it at once.
    pub retain: bool,
}

impl Event {
    /// An event on `topic` with no payload.
    pub fn new(topic: impl Into<String>) -> Event {
        Event {
            topic: topic.into(),
            args: Vec::new(),
            kwargs: Dict::new(),
            filter: Filter::default(),
            realm: None,
            require_subscriber: false,
            retain: false,
        }
    }

    /// Appends a positional argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Event {
        self.args.push(value.into());
        self
    }

    /// Sets a keyword argument.
    pub fn kwarg(mut self, key: impl Into<String>, value: impl Into<Value>) -> Event {
        self.kwargs.insert(key.into(), value.into());
        self
    }

    /// Sets the realm.
    pub fn realm(mut self, realm: impl Into<String>) -> Event {
        self.realm = Some(realm.into());
        self
    }

    /// Succeed only if a node subscribed to the topic got the event.
    pub fn require_subscriber(mut self, yes: bool) -> Event {
        self.require_subscriber = yes;
        self
    }

    /// Keep it as the topic's retained event.
    pub fn retain(mut self, yes: bool) -> Event {
        self.retain = yes;
        self
    }

    fn delivery(&self) -> Delivery {
        if self.require_subscriber {
            Delivery::Subscribed
        } else {
            Delivery::Accepted
        }
    }

    fn envelope(self) -> Envelope {
        Envelope {
            realm: self.realm.unwrap_or_else(|| DEFAULT_REALM.to_string()),
            publication: fastrand::u64(1..=MAX_ID),
            topic: self.topic,
            args: self.args,
            kwargs: self.kwargs,
            filter: self.filter,
            publisher: None,
            published_at_us: now_us(),
            retain: self.retain,
            position: None,
        }
    }

    /// The event as a `POST /publish` body. Without a realm the gateway
    /// picks its first one.
    fn request(self) -> PublishRequest {
        PublishRequest {
            topic: self.topic,
            args: self.args,
            kwargs: self.kwargs,
            options: Some(PublishOptions { filter: self.filter, retain: self.retain, ..PublishOptions::default() }),
            realm: self.realm,
            require_subscriber: self.require_subscriber.then_some(true),
        }
    }

    fn check(&self) -> Result<(), Error> {
        // The gateway may apply strict rules too; it answers for itself.
        check_topic(&self.topic, UriRules::Loose).map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))
    }
}

/// A handle that publishes events; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Bus(Arc<dyn Bus>),
    Http { client: reqwest::Client, endpoint: String, api_key: String },
}

impl Publisher {
    /// Connects straight to a bus (`redis://…` or `amqp://…`) with default options.
    pub async fn connect(bus_url: &str) -> Result<Publisher, Error> {
        Publisher::connect_with(bus_url, &BusOptions::default()).await
    }

    /// Connects straight to a bus with the given options (key prefix,
    /// exchange, connect timeout); they must match the gateways'.
    pub async fn connect_with(bus_url: &str, options: &BusOptions) -> Result<Publisher, Error> {
        let bus = telegraphy_bus::connect_publisher(bus_url, options).await?;
        Ok(Publisher { transport: Transport::Bus(bus) })
    }

    /// Publishes through a gateway's HTTP endpoint (`http://host:8080`).
    pub fn gateway(url: &str, api_key: &str, timeout: Duration) -> Result<Publisher, Error> {
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::new(ErrorKind::InvalidInput, format!("gateway URL `{url}` must start with http:// or https://")));
        }
        if base.starts_with("https://") {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "https gateway URLs are not supported by this build yet; publish over http on a private network, or straight to the bus",
            ));
        }
        if api_key.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "publishing through a gateway needs an API key (TELEGRAPHY_API_KEY)"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("cannot set up the HTTP client: {e}")))?;
        let endpoint = if base.ends_with("/publish") { base.to_string() } else { format!("{base}/publish") };
        Ok(Publisher { transport: Transport::Http { client, endpoint, api_key: api_key.to_string() } })
    }

    /// Publishes one event; returns its publication id once it was accepted.
    pub async fn publish(&self, event: Event) -> Result<Id, Error> {
        event.check()?;
        match &self.transport {
            Transport::Bus(bus) => {
                let delivery = event.delivery();
                Ok(bus.publish(event.envelope(), delivery).await?)
            }
            Transport::Http { client, endpoint, api_key } => http_publish(client, endpoint, api_key, event).await,
        }
    }

    /// Publishes several events in order and answers for each, in order.
    /// On a bus the round trips overlap (a Redis pipeline, RabbitMQ
    /// confirms awaited together), so a batch of N costs about one round
    /// trip; through a gateway they go one request after the other. The
    /// batch is what is in flight at once: keep it bounded (the CLI uses
    /// `--window`).
    pub async fn publish_batch(&self, events: Vec<Event>) -> Vec<Result<Id, Error>> {
        let mut answers: Vec<Option<Result<Id, Error>>> = Vec::with_capacity(events.len());
        let Transport::Bus(bus) = &self.transport else {
            let mut out = Vec::with_capacity(events.len());
            for event in events {
                out.push(self.publish(event).await);
            }
            return out;
        };
        // Bad events are answered at once; the rest go out together, per
        // delivery mode (in order within each).
        let mut pending: Vec<(usize, Envelope, Delivery)> = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            match event.check() {
                Err(e) => answers.push(Some(Err(e))),
                Ok(()) => {
                    let delivery = event.delivery();
                    let envelope = event.envelope();
                    pending.push((i, envelope, delivery));
                    answers.push(None);
                }
            }
        }
        let mut start = 0;
        while start < pending.len() {
            // A run of events with the same delivery mode is one batch.
            let delivery = pending[start].2;
            let end = pending[start..].iter().position(|p| p.2 != delivery).map_or(pending.len(), |k| start + k);
            let run: Vec<Envelope> = pending[start..end].iter().map(|p| p.1.clone()).collect();
            let results = bus.publish_batch(run, delivery).await;
            for (p, result) in pending[start..end].iter().zip(results) {
                answers[p.0] = Some(result.map_err(Error::from));
            }
            start = end;
        }
        answers.into_iter().map(|a| a.expect("every event answered")).collect()
    }

    /// Whether a publish can be accepted now. Straight to a bus: whether the
    /// connection to the broker is up (it reconnects by itself; while it is
    /// down, publishes fail at once with [`ErrorKind::Unavailable`]), so a
    /// web-app can report it in its own health check. Through a gateway:
    /// always true (each publish is its own HTTP request).
    pub fn is_ready(&self) -> bool {
        match &self.transport {
            Transport::Bus(bus) => bus.is_ready(),
            Transport::Http { .. } => true,
        }
    }

    /// Closes the bus connection and stops reconnecting; publishes through
    /// this handle (and its clones) fail with [`ErrorKind::Unavailable`] afterwards.
    pub fn close(&self) {
        if let Transport::Bus(bus) = &self.transport {
            bus.shutdown();
        }
    }
}

async fn http_publish(client: &reqwest::Client, endpoint: &str, api_key: &str, event: Event) -> Result<Id, Error> {
    let body = event.request().to_json();
    let response =
        client.post(endpoint).bearer_auth(api_key).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await.map_err(
            |e| {
                let what = if e.is_timeout() { "did not answer in time" } else { "cannot be reached" };
                Error::new(ErrorKind::Unavailable, format!("the gateway at {endpoint} {what}: {e}"))
            },
        )?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let message = parsed["message"].as_str().map(String::from).unwrap_or_else(|| text.trim().to_string());
    match status.as_u16() {
        200 => parsed["id"]
            .as_u64()
            .ok_or_else(|| Error::new(ErrorKind::Rejected, format!("the gateway at {endpoint} answered 200 without a publication id"))),
        401 | 403 => Err(Error::new(ErrorKind::Unauthorized, format!("the gateway refused the API key: {message}"))),
        400 | 413 => Err(Error::new(ErrorKind::InvalidInput, format!("the gateway refused the event: {message}"))),
        404 => Err(Error::new(ErrorKind::InvalidInput, format!("{endpoint} is not a Telegraphy publish endpoint (HTTP 404); check the gateway URL"))),
        409 if parsed["error"] == "no_subscriber" => Err(Error::new(ErrorKind::NoSubscriber, message)),
        503 => Err(Error::new(ErrorKind::Unavailable, format!("the gateway cannot take events now: {message}"))),
        other => Err(Error::new(ErrorKind::Unavailable, format!("the gateway answered HTTP {other}: {message}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_checked() {
        assert!(Event::new("com.example.x").check().is_ok());
        assert_eq!(Event::new("com..x").check().unwrap_err().kind(), ErrorKind::InvalidInput);
        let reserved = Event::new("wamp.session.on_join").check().unwrap_err();
        assert_eq!(reserved.kind(), ErrorKind::InvalidInput);
        assert_eq!(reserved.to_string(), "topics under `wamp.` and `telegraphy.presence.` are reserved for the router");
        assert!(Event::new("telegraphy.presence.shop.order.7").check().is_err(), "presence events are the router's");
    }

    #[test]
    fn the_http_body_is_the_documented_json() {
        let mut event = Event::new("com.example.x").arg(1u64).arg(Value::Bin(vec![0, 255])).kwarg("k", "v").realm("r").require_subscriber(true);
        event.filter = Filter { exclude: vec![7], eligible_authrole: Some(vec!["admin".into()]), ..Filter::default() };
        assert_eq!(
            String::from_utf8(event.request().to_json()).unwrap(),
            r#"{"args":[1,"\u0000AP8="],"kwargs":{"k":"v"},"options":{"eligible_authrole":["admin"],"exclude":[7]},"realm":"r","require_subscriber":true,"topic":"com.example.x"}"#
        );
        // Without a realm the gateway picks its first; an open filter is an empty object.
        assert_eq!(String::from_utf8(Event::new("a.b").request().to_json()).unwrap(), r#"{"args":[],"kwargs":{},"options":{},"topic":"a.b"}"#);
    }

    #[test]
    fn gateway_urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(Publisher::gateway("http://127.0.0.1:8080", "key", t).is_ok());
        assert_eq!(Publisher::gateway("127.0.0.1:8080", "key", t).err().unwrap().kind(), ErrorKind::InvalidInput);
        assert_eq!(Publisher::gateway("http://h", "", t).err().unwrap().kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn is_ready_follows_the_bus_connection() {
        let publisher = Publisher::connect("redis://127.0.0.1:6379/0").await.expect("the machine's Redis");
        assert!(publisher.is_ready(), "connected: ready");
        publisher.close();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while publisher.is_ready() {
            assert!(std::time::Instant::now() < deadline, "still ready 5 s after close()");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(publisher.publish(Event::new("com.example.x")).await.unwrap_err().kind(), ErrorKind::Unavailable);
        assert!(Publisher::gateway("http://127.0.0.1:9", "key", Duration::from_secs(1)).unwrap().is_ready());
    }

    #[tokio::test]
    async fn memory_bus_is_refused_with_advice() {
        let err = Publisher::connect("memory://").await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("--gateway"), "{err}");
    }
}
