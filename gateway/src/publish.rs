//! `POST /publish`: the web-app side publishes an event over HTTP.
//!
//! Body: `{"topic": "...", "args": [...], "kwargs": {...}, "options": {...},
//! "realm": "...", "require_subscriber": false}` (only `topic` is required).
//! Answer: `{"id": N}` once the bus accepted the event (and, with
//! `require_subscriber`, once a node subscribed to the topic got it), or
//! `{"error": "...", "message": "..."}`.
//!
//! The API key is checked before a byte of the body is read, and the body
//! must arrive within `limits.http_body_timeout`: a client without a key
//! cannot hold the connection by announcing a body it never sends.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;
use telegraphy_bus::{check_topic, now_us, Delivery, Envelope, Filter, JsonOptions, PublishError, PublishRequest};
use telegraphy_wamp::{Dict, Value};

use crate::admission::Ticket;
use crate::config::ApiKeySetting;
use crate::node::{random_id, Node};

/// An HTTP publish failure: status, a stable error code and a message.
pub(crate) struct PublishFailure(pub StatusCode, pub &'static str, pub String);

impl PublishFailure {
    fn bad(message: impl Into<String>) -> Self {
        PublishFailure(StatusCode::BAD_REQUEST, "bad_request", message.into())
    }
}

/// The handler.
pub(crate) async fn publish(State(node): State<Arc<Node>>, Extension(ticket): Extension<Arc<Ticket>>, headers: HeaderMap, body: Body) -> Response {
    // The key is checked first, before the body is read: callers without
    // one learn nothing else and cannot hold the connection.
    let result = match node.api_keys.authorize(&headers) {
        Err(e) => Err(e),
        Ok(key) => {
            // A valid key: the connection is the web-app's, never shed.
            ticket.trust();
            match key.take_publish() {
                Err(why) => Err(refuse(&node, &key, why, "")),
                Ok(()) => match read_body(&node, body).await {
                    Ok(body) => handle(&node, &key, &body).await,
                    Err(e) => Err(e),
                },
            }
        }
    };
    match result {
        Ok(id) => (StatusCode::OK, Json(json!({ "id": id }))).into_response(),
        Err(PublishFailure(status, error, message)) => {
            node.metrics.http_publish_error(status.as_u16());
            (status, Json(json!({ "error": error, "message": message }))).into_response()
        }
    }
}

/// Reads the body within `limits.http_body_timeout` and `limits.max_message_size`.
async fn read_body(node: &Node, body: Body) -> Result<axum::body::Bytes, PublishFailure> {
    let limits = &node.config.limits;
    match tokio::time::timeout(limits.http_body_timeout, axum::body::to_bytes(body, limits.max_message_size)).await {
        Err(_) => Err(PublishFailure(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {:?} (limits.http_body_timeout)", limits.http_body_timeout),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => Err(too_large(node, None)),
        Ok(Err(e)) => Err(PublishFailure::bad(format!("could not read the body: {e}"))),
    }
}

/// Counts and words a refusal of an authenticated key.
pub(crate) fn refuse(node: &Node, key: &Authorized<'_>, why: KeyRefusal, topic: &str) -> PublishFailure {
    node.metrics.api_key_refused(key.name(), why.as_str());
    key.refused(why, topic)
}

async fn handle(node: &Node, key: &Authorized<'_>, body: &[u8]) -> Result<u64, PublishFailure> {
    if body.len() > node.config.limits.max_message_size {
        return Err(too_large(node, Some(body.len())));
    }
    let default_realm = &node.config.realms[0];
    let request =
        parse_body(body, default_realm, |r| node.realms.get(r).is_some(), node.uri_rules).map_err(|e| PublishFailure::bad(e.to_string()))?;
    let HttpPublish { realm, topic, args, kwargs, filter, require_subscriber, retain } = request;
    key.may_publish(&topic, &filter).map_err(|why| refuse(node, key, why, &topic))?;
    let event =
        Envelope { realm, publication: random_id(), topic, args, kwargs, filter, publisher: None, published_at_us: now_us(), retain, position: None };
    let delivery = if require_subscriber { Delivery::Subscribed } else { Delivery::Accepted };
    let publication = node.bus.publish(event, delivery).await.map_err(|e| match e {
        PublishError::Unavailable(_) => PublishFailure(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", format!("{e}; retry later")),
        PublishError::Rejected(_) => PublishFailure::bad(e.to_string()),
        PublishError::NoSubscriber(_) => PublishFailure(StatusCode::CONFLICT, "no_subscriber", e.to_string()),
    })?;
    node.metrics.published_http.inc();
    Ok(publication)
}

/// A `POST /publish` body, read and checked against this gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPublish {
    /// The realm (the first configured one when the body names none).
    pub realm: String,
    /// The topic URI.
    pub topic: String,
    /// Positional payload.
    pub args: Vec<Value>,
    /// Keyword payload.
    pub kwargs: Dict,
    /// Black/white lists (the other options have no effect without a
    /// publishing session).
    pub filter: Filter,
    /// Succeed only if a node subscribed to the topic got the event.
    pub require_subscriber: bool,
    /// Keep it as the topic's retained event.
    pub retain: bool,
}

/// Why a `POST /publish` body was refused; the text is the message for the client.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not a publish request (JSON, fields, options).
    #[error(transparent)]
    Request(#[from] telegraphy_bus::RequestError),
    /// The body names a realm this gateway does not serve.
    #[error("realm `{0}` does not exist on this gateway")]
    UnknownRealm(String),
    /// The topic is malformed or reserved.
    #[error(transparent)]
    Topic(#[from] telegraphy_bus::TopicError),
}

/// Reads a publish body with the shared codec ([`PublishRequest::from_json`])
/// and checks it against this gateway: the realm must exist, the topic
/// must follow `rules` and not be reserved. Pure, so it can be fuzzed and property-tested.
pub fn parse_body(
    body: &[u8],
    default_realm: &str,
    realm_exists: impl Fn(&str) -> bool,
    rules: telegraphy_wamp::UriRules,
) -> Result<HttpPublish, BodyError> {
    let request = PublishRequest::from_json(body, JsonOptions::Wamp)?;
    let PublishRequest { topic, args, kwargs, options, realm, require_subscriber } = request;
    let realm = match realm {
        None => default_realm.to_string(),
        Some(r) if realm_exists(&r) => r,
        Some(r) => return Err(BodyError::UnknownRealm(r)),
    };
    check_topic(&topic, rules)?;
    let (filter, retain) = options.map(|o| (o.filter, o.retain)).unwrap_or_default();
    Ok(HttpPublish { realm, topic, args, kwargs, filter, require_subscriber: require_subscriber.unwrap_or(false), retain })
}

fn too_large(node: &Node, len: Option<usize>) -> PublishFailure {
    let size = len.map(|l| format!("{l} bytes")).unwrap_or_else(|| "too large".into());
    PublishFailure(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is {size}; the limit is {} bytes (limits.max_message_size)", node.config.limits.max_message_size),
    )
}

/// The API keys `POST /publish` and `GET /presence` accept.
pub(crate) struct ApiKeys(Vec<ApiKey>);

/// One accepted key and what it may do.
struct ApiKey {
    /// Its name in logs and metrics (`default` for bare keys).
    name: String,
    secret: String,
    /// `None`: every topic, every option, presence (a bare key).
    rights: Option<KeyRights>,
}

struct KeyRights {
    publish: crate::authz::PatternSet,
    publish_options: bool,
    presence: bool,
    rate: Option<governor::DefaultDirectRateLimiter>,
}

/// What a request was let do by its key.
pub(crate) struct Authorized<'a>(&'a ApiKey);

impl ApiKeys {
    /// The configured keys (with `dev` in dev mode when none is set). Keys
    /// from files were read once by [`Config::validate`]; one that cannot
    /// be read now is left out, and said so.
    pub(crate) fn from_config(config: &crate::config::Config) -> ApiKeys {
        let keys = config
            .effective_api_keys()
            .into_iter()
            .filter_map(|setting| match setting {
                ApiKeySetting::Key(secret) => Some(ApiKey { name: "default".into(), secret, rights: None }),
                ApiKeySetting::Entry(e) => {
                    let secret = match e.secret() {
                        Ok(s) => s,
                        Err(err) => {
                            tracing::error!("{err}; this key is not accepted");
                            return None;
                        }
                    };
                    let rate = crate::config::rate_limiter(e.publish_rate, e.publish_burst);
                    let publish = crate::authz::PatternSet::parse(&e.publish).unwrap_or_default();
                    Some(ApiKey {
                        name: e.name,
                        secret,
                        rights: Some(KeyRights { publish, publish_options: e.publish_options, presence: e.presence, rate }),
                    })
                }
            })
            .collect();
        ApiKeys(keys)
    }

    /// Checks the request's API key (`Authorization: Bearer KEY`), in
    /// constant time over every configured key.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<Authorized<'_>, PublishFailure> {
        if self.0.is_empty() {
            return Err(PublishFailure(
                StatusCode::FORBIDDEN,
                "publishing_disabled",
                "HTTP publishing is off on this gateway: configure api_keys (TELEGRAPHY_API_KEYS)".into(),
            ));
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(PublishFailure(StatusCode::UNAUTHORIZED, "missing_api_key", "send the API key as `Authorization: Bearer KEY`".into()));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| PublishFailure(StatusCode::UNAUTHORIZED, "missing_api_key", "the Authorization header must be `Bearer KEY`".into()))?;
        let mut found = None;
        for candidate in &self.0 {
            if bool::from(candidate.secret.as_bytes().ct_eq(key.as_bytes())) {
                found = Some(candidate);
            }
        }
        found
            .map(Authorized)
            .ok_or_else(|| PublishFailure(StatusCode::FORBIDDEN, "invalid_api_key", "this API key is not accepted by this gateway".into()))
    }
}

impl Authorized<'_> {
    /// The key's name, for logs and metrics.
    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }

    /// Takes one publish from the key's rate.
    fn take_publish(&self) -> Result<(), KeyRefusal> {
        match self.0.rights.as_ref().and_then(|r| r.rate.as_ref()) {
            Some(limiter) if limiter.check().is_err() => Err(KeyRefusal::Rate),
            _ => Ok(()),
        }
    }

    /// Whether the key may publish `topic` with `filter`.
    fn may_publish(&self, topic: &str, filter: &Filter) -> Result<(), KeyRefusal> {
        let Some(rights) = &self.0.rights else { return Ok(()) };
        if !rights.publish.matches(topic) {
            return Err(KeyRefusal::Topic);
        }
        if !filter.is_open() && !rights.publish_options {
            return Err(KeyRefusal::Options);
        }
        Ok(())
    }

    /// Whether the key may read `GET /presence`.
    pub(crate) fn may_read_presence(&self) -> Result<(), KeyRefusal> {
        match &self.0.rights {
            Some(r) if !r.presence => Err(KeyRefusal::Presence),
            _ => Ok(()),
        }
    }

    /// The answer to a request the key may not make (counted by [`refuse`]).
    fn refused(&self, why: KeyRefusal, topic: &str) -> PublishFailure {
        let name = &self.0.name;
        let (status, code, message) = match why {
            KeyRefusal::Topic => (
                StatusCode::FORBIDDEN,
                "topic_not_allowed",
                format!("API key `{name}` may not publish to `{topic}`; add the topic to its `publish` patterns in [[api_keys]]"),
            ),
            KeyRefusal::Options => (
                StatusCode::FORBIDDEN,
                "options_not_allowed",
                format!("API key `{name}` may not target sessions (eligible/exclude options); set publish_options = true in its [[api_keys]] entry"),
            ),
            KeyRefusal::Rate => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("API key `{name}` publishes faster than its publish_rate; slow down and retry"),
            ),
            KeyRefusal::Presence => (
                StatusCode::FORBIDDEN,
                "presence_not_allowed",
                format!("API key `{name}` may not read presence; set presence = true in its [[api_keys]] entry"),
            ),
        };
        tracing::info!(api_key = %name, topic, reason = why.as_str(), "HTTP request refused: {message}");
        PublishFailure(status, code, message)
    }
}

/// Why a key was refused a request it authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyRefusal {
    Topic,
    Options,
    Rate,
    Presence,
}

impl KeyRefusal {
    fn as_str(self) -> &'static str {
        match self {
            KeyRefusal::Topic => "topic",
            KeyRefusal::Options => "options",
            KeyRefusal::Rate => "rate",
            KeyRefusal::Presence => "presence",
        }
    }
}
