//! Procedures the web-app serves over HTTP (`[[rpc.http]]`): a CALL of one
//! of them becomes a signed `POST` to the web-app, made by the node the
//! caller is connected to (no state shared between nodes).
//!
//! # The request
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! Accept: application/json, application/x-ndjson
//! X-Telegraphy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(rpc.secret, "<t>.<body>")>
//!
//! {"procedure": "shop.cart.add", "realm": "realm1", "args": [...], "kwargs": {...},
//!  "caller": {"session": 123, "authid": "alice", "authrole": "user"}, "receive_progress": false}
//! ```
//!
//! The web-app checks the signature and refuses a timestamp older than a
//! short window (the Python helper: 60 s), so a captured request cannot be
//! replayed later.
//!
//! # The answer
//!
//! A JSON object: `{"result": v}` (one value; `null`: none), or
//! `{"args": [...], "kwargs": {...}}`, or `{"error": "<uri>", "args": [...],
//! "kwargs": {...}}` for a WAMP error (any HTTP status). With
//! `Content-Type: application/x-ndjson`, one such object per line: lines
//! with `"progress": true` are progressive results, the last line is the
//! final answer. An HTTP error without an error URI, an unreadable answer
//! or one larger than `limits.max_message_size` is
//! `telegraphy.error.callee_failed`; a web-app that cannot be reached,
//! `telegraphy.error.callee_unavailable`; too slow, `wamp.error.timeout`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use telegraphy_bus::pattern::Pattern;
use telegraphy_wamp::codes::uri as err;
use telegraphy_wamp::{uri, Dict, Id, UriKind, UriRules, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::RpcSettings;

/// The header that carries the timestamp and the signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-telegraphy-signature";

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The result.
    Result { args: Vec<Value>, kwargs: Dict },
    /// A WAMP error (the web-app's, or the gateway's about the web-app).
    Error { uri: String, args: Vec<Value>, kwargs: Dict },
}

impl Answer {
    fn failed(uri: &str, message: String) -> Answer {
        Answer::Error { uri: uri.to_string(), args: vec![Value::Str(message)], kwargs: Dict::new() }
    }
}

/// Who calls (always sent: the web-app decides what the caller may do).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Caller {
    pub session: Id,
    pub authid: String,
    pub authrole: String,
}

/// One call for the web-app.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct HttpCall {
    pub procedure: String,
    pub realm: String,
    pub args: Vec<Value>,
    pub kwargs: Dict,
    pub caller: Caller,
    pub receive_progress: bool,
}

struct Endpoint {
    pattern: Pattern,
    url: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

/// The `[[rpc.http]]` endpoints of a node.
pub(crate) struct HttpCallees {
    endpoints: Vec<Endpoint>,
    client: reqwest::Client,
    secret: Vec<u8>,
    max_answer: usize,
}

impl HttpCallees {
    /// The endpoints of a validated configuration; `None` when there are none.
    pub(crate) fn from_config(rpc: &RpcSettings, max_answer: usize) -> Option<Arc<HttpCallees>> {
        if rpc.http.is_empty() {
            return None;
        }
        let endpoints = rpc
            .http
            .iter()
            .map(|h| Endpoint {
                pattern: Pattern::parse(&h.procedure).expect("validated at startup"),
                url: h.url.clone(),
                timeout: h.timeout,
                permits: Arc::new(Semaphore::new(h.max_concurrency)),
            })
            .collect();
        let client = reqwest::Client::builder()
            .user_agent(concat!("telegraphy-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        let secret = rpc.secret.clone().unwrap_or_default().into_bytes();
        Some(Arc::new(HttpCallees { endpoints, client, secret, max_answer }))
    }

    /// The endpoint serving `procedure` (the first that matches).
    pub(crate) fn find(&self, procedure: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| e.pattern.matches(procedure))
    }

    /// A slot for one call to endpoint `at`, unless it has as many in flight
    /// as `max_concurrency` allows.
    pub(crate) fn try_acquire(&self, at: usize) -> Option<OwnedSemaphorePermit> {
        self.endpoints[at].permits.clone().try_acquire_owned().ok()
    }

    /// Makes the call; `progress(args, kwargs)` gets each progressive result.
    /// `timeout` (the CALL's option) may shorten the endpoint's own.
    pub(crate) async fn call(&self, at: usize, call: &HttpCall, timeout: Option<Duration>, mut progress: impl FnMut(Vec<Value>, Dict)) -> Answer {
        let endpoint = &self.endpoints[at];
        let limit = timeout.map_or(endpoint.timeout, |t| t.min(endpoint.timeout));
        match tokio::time::timeout(limit, self.exchange(endpoint, call, &mut progress)).await {
            Ok(answer) => answer,
            Err(_) => Answer::failed(err::TIMEOUT, format!("the web-app did not answer {} within {} ms", call.procedure, limit.as_millis())),
        }
    }

    async fn exchange(&self, endpoint: &Endpoint, call: &HttpCall, progress: &mut impl FnMut(Vec<Value>, Dict)) -> Answer {
        let body = serde_json::to_vec(call).expect("WAMP values serialize to JSON");
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let request = self
            .client
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json, application/x-ndjson")
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, &body))
            .body(body);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let message =
                    format!("the web-app at {} could not be reached for {}: {}", endpoint.url, call.procedure, telegraphy_bus::error_chain(&e));
                return Answer::failed(err::CALLEE_UNAVAILABLE, message);
            }
        };
        let status = response.status();
        let ndjson = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-ndjson"));
        let failed = |what: String| Answer::failed(err::CALLEE_FAILED, format!("the web-app's answer to {}: {what}", call.procedure));
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            let chunk = match stream.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return failed(format!("the answer broke off: {}", telegraphy_bus::error_chain(&e))),
                None => break,
            };
            total += chunk.len();
            if total > self.max_answer {
                return failed(format!("larger than {} bytes (limits.max_message_size)", self.max_answer));
            }
            buffer.extend_from_slice(&chunk);
            if ndjson {
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match read_line(&line) {
                        Ok(Line::Progress(args, kwargs)) => progress(args, kwargs),
                        Ok(Line::Final(answer)) => return answer,
                        Err(what) => return failed(what),
                    }
                }
            }
        }
        if ndjson {
            if buffer.iter().all(u8::is_ascii_whitespace) {
                return failed("the stream ended without a final line".into());
            }
            return match read_line(&buffer) {
                Ok(Line::Final(answer)) => answer,
                Ok(Line::Progress(..)) => failed("the stream ended with a progress line, without a final one".into()),
                Err(what) => failed(what),
            };
        }
        // An error URI counts at any status; anything else only with a 2xx.
        match (read_answer(&buffer), status.is_success()) {
            (Ok((answer @ Answer::Error { .. }, _)), _) | (Ok((answer, _)), true) => answer,
            (_, false) => failed(format!("HTTP {status}, without an error URI")),
            (Err(what), true) => failed(what),
        }
    }
}

enum Line {
    Progress(Vec<Value>, Dict),
    Final(Answer),
}

fn read_line(line: &[u8]) -> Result<Line, String> {
    Ok(match read_answer(line)? {
        (Answer::Result { args, kwargs }, true) => Line::Progress(args, kwargs),
        (other, _) => Line::Final(other),
    })
}

/// Reads one answer object (see the module docs), and its `progress` flag.
fn read_answer(bytes: &[u8]) -> Result<(Answer, bool), String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let serde_json::Value::Object(mut object) = value else { return Err("not a JSON object".into()) };
    let progress = object.remove("progress").and_then(|p| p.as_bool()).unwrap_or(false);
    let args = match object.remove("args") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(list @ serde_json::Value::Array(_)) => serde_json::from_value(list).map_err(|e| format!("args: {e}"))?,
        Some(_) => return Err("`args` is not a list".into()),
    };
    let kwargs = match object.remove("kwargs") {
        None | Some(serde_json::Value::Null) => Dict::new(),
        Some(map @ serde_json::Value::Object(_)) => serde_json::from_value(map).map_err(|e| format!("kwargs: {e}"))?,
        Some(_) => return Err("`kwargs` is not an object".into()),
    };
    if let Some(error) = object.remove("error") {
        let Some(uri) = error.as_str().filter(|u| uri::is_valid(u, UriRules::Loose, UriKind::Concrete)) else {
            return Err(format!("`error` must be an error URI such as \"shop.error.out_of_stock\", got {error}"));
        };
        return Ok((Answer::Error { uri: uri.to_string(), args, kwargs }, progress));
    }
    let answer = match object.remove("result") {
        None | Some(serde_json::Value::Null) => Answer::Result { args, kwargs },
        Some(result) => {
            let value: Value = serde_json::from_value(result).map_err(|e| format!("result: {e}"))?;
            Answer::Result { args: vec![value], kwargs }
        }
    };
    Ok((answer, progress))
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub(crate) fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let answer = |bytes: &[u8]| read_answer(bytes).map(|(a, _)| a);
        let result = |args: Vec<Value>| Answer::Result { args, kwargs: Dict::new() };
        assert_eq!(answer(br#"{"result": 5}"#).unwrap(), result(vec![Value::UInt(5)]));
        assert_eq!(answer(br#"{"result": null}"#).unwrap(), result(vec![]));
        assert_eq!(answer(br#"{}"#).unwrap(), result(vec![]));
        let both = answer(br#"{"args": [1, "a"], "kwargs": {"k": true}}"#).unwrap();
        assert_eq!(
            both,
            Answer::Result { args: vec![Value::UInt(1), Value::Str("a".into())], kwargs: Dict::from_iter([("k".to_string(), Value::Bool(true))]) }
        );
        let error = answer(br#"{"error": "shop.error.out_of_stock", "args": ["apple"]}"#).unwrap();
        assert_eq!(error, Answer::Error { uri: "shop.error.out_of_stock".into(), args: vec![Value::Str("apple".into())], kwargs: Dict::new() });
        assert!(answer(br#"{"error": "not a uri"}"#).unwrap_err().contains("error URI"));
        assert!(answer(br#"[1]"#).is_err());
        assert!(answer(br#"{"args": 3}"#).is_err());
        assert!(answer(b"<html>").unwrap_err().contains("not JSON"));
        assert!(matches!(read_line(br#"{"progress": true, "result": 50}"#), Ok(Line::Progress(a, _)) if a == vec![Value::UInt(50)]));
        assert!(matches!(read_line(br#"{"result": "done"}"#), Ok(Line::Final(Answer::Result { .. }))));
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Python: hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        let expected = "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163";
        assert_eq!(signature(b"secret", 1_700_000_000, b"{}"), expected);
    }
}
