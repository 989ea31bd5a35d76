//! The one configuration struct, read once at startup and validated.
//!
//! Layers, lowest first: built-in defaults, the TOML file (`--config`),
//! `TELEGRAPHY_*` environment variables (nested keys with `__`, e.g.
//! `TELEGRAPHY_LIMITS__MAX_MESSAGE_SIZE`), then command-line flags. Unknown
//! keys and bad values stop the gateway with a message that names the key.
//! Every field's doc comment is user documentation (`docs/configuration.md`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};
use telegraphy_wamp::UriRules;

/// Environment variables under `TELEGRAPHY_` that belong to client tools
/// (the CLI, test harnesses), which the gateway ignores instead of rejecting.
pub(crate) const CLIENT_ENV_VARS: &[&str] =
    &["api_key", "api_key_file", "gateway_url", "gateway_bin", "publish_bin", "timeout", "test_redis", "test_amqp"];

/// Gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the public listener: WebSocket at `/ws`, `POST /publish`,
    /// and the demo page at `/` in dev mode.
    pub listen: SocketAddr,
    /// Address of the admin listener: `/metrics`, `/healthz`, `/readyz`.
    /// Keep it off the public network.
    pub admin_listen: SocketAddr,
    /// Event bus URL: `memory://` (embedded, single node), `redis://HOST:6379/0`
    /// or `amqp://USER:PASS@HOST:5672/VHOST` (many nodes).
    pub bus: String,
    /// Redis bus settings.
    pub redis: RedisConfig,
    /// RabbitMQ bus settings.
    pub amqp: AmqpConfig,
    /// TLS to the bus broker, for `rediss://` and `amqps://` URLs.
    pub bus_tls: BusTlsConfig,
    /// Realms sessions may join (comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub realms: Vec<String>,
    /// URI rules for topics: `loose` (the WAMP default) or `strict`.
    pub uri_rules: UriRulesSetting,
    /// API keys accepted by `POST /publish` and `GET /presence` as
    /// `Authorization: Bearer KEY`. A bare string may publish to every topic
    /// with every option (comma-separated in `TELEGRAPHY_API_KEYS`); a table
    /// (`[[api_keys]]`) names its key, its topics, its options and its rate.
    /// Empty: HTTP publishing is off.
    #[serde(deserialize_with = "api_key_list", skip_serializing)]
    pub api_keys: Vec<ApiKeySetting>,
    /// Development mode: serves the live demo page at `/`, accepts the API
    /// key `dev` when no key is configured, and lets anonymous sessions in,
    /// allowed to publish too. Refused on non-loopback addresses.
    pub dev: bool,
    /// Browser origins allowed to open WebSockets (`https://app.example.com`).
    /// Clients that send no Origin (non-browsers) are always allowed; `"*"`
    /// allows every origin. Pages served from one of `public_hosts` count
    /// as the gateway's own origin.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
    /// Host names (`host` or `host:port`) under which browsers reach this
    /// gateway, e.g. a reverse proxy that serves the web-app and `/ws` on
    /// one host: pages from those hosts may connect. The request's own
    /// `Host` header is never trusted for this (DNS rebinding). With `dev`,
    /// loopback hosts (127.0.0.1, localhost, `[::1]`) are implied.
    #[serde(deserialize_with = "list_or_csv")]
    pub public_hosts: Vec<String>,
    /// TLS on the public listener (for deployments without a terminating proxy).
    pub tls: TlsConfig,
    /// Who may connect, and how.
    pub auth: AuthConfig,
    /// Permissions per role: which topics a role may subscribe and publish to.
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Limits that keep memory bounded and abusers out.
    pub limits: Limits,
    /// Graceful drain on SIGTERM / SIGINT.
    pub shutdown: ShutdownConfig,
    /// Event history: which topics keep recent events for resumes and
    /// `wamp.subscription.get_events`.
    pub history: HistorySettings,
    /// Remote procedure calls the web-app serves over HTTP.
    pub rpc: RpcSettings,
    /// Load balancers and reverse proxies in front of the gateway, whose
    /// word on the client's address is believed.
    pub proxies: ProxiesConfig,
}

/// `[bus_tls]`: TLS to the broker (`rediss://`, `amqps://`). The broker's
/// certificate must name the URL's host; without `ca_file` the system's
/// roots are trusted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusTlsConfig {
    /// CA certificates (PEM) that sign the broker's certificate, trusted
    /// besides the system's roots (a private CA, a managed service's CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate chain (PEM), for brokers that require one.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<std::path::PathBuf>,
}

impl BusTlsConfig {
    /// Reads and checks the files: `what` names the first one that cannot be used.
    fn load(&self) -> Result<telegraphy_bus::BusTls, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ConfigError::Invalid(format!("key `bus_tls.{key}`: cannot read {}: {e}", path.display())))
        };
        let certs = |key: &str, path: &std::path::Path| -> Result<Vec<u8>, ConfigError> {
            let pem = read(key, path)?;
            let n = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map(|c| c.len()).unwrap_or(0);
            if n == 0 {
                return Err(ConfigError::Invalid(format!("key `bus_tls.{key}`: {} holds no PEM certificate", path.display())));
            }
            Ok(pem)
        };
        let ca_pem = self.ca_file.as_deref().map(|p| certs("ca_file", p)).transpose()?;
        let (client_cert_pem, client_key_pem) = match (&self.cert_file, &self.key_file) {
            (None, None) => (None, None),
            (Some(cert), Some(key)) => {
                let cert = certs("cert_file", cert)?;
                let pem = read("key_file", key)?;
                rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| ConfigError::Invalid(format!("key `bus_tls.key_file`: {} is not a PEM private key: {e}", key.display())))?;
                (Some(cert), Some(pem))
            }
            _ => return Err(ConfigError::Invalid("set both `bus_tls.cert_file` and `bus_tls.key_file`, or neither".into())),
        };
        Ok(telegraphy_bus::BusTls { ca_pem, client_cert_pem, client_key_pem })
    }
}

/// `[proxies]`: who may tell the gateway the client's address. Without a
/// trusted proxy every connection's TCP peer is its client, whatever
/// headers it sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxiesConfig {
    /// Addresses or CIDR blocks of the load balancers and reverse proxies
    /// (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`; comma-separated in the
    /// environment). Only connections from these are asked who the client is.
    #[serde(deserialize_with = "list_or_csv")]
    pub trusted: Vec<String>,
    /// The header trusted proxies name the client in: `x-forwarded-for`
    /// (the default), `forwarded` (RFC 7239) or `none`. Only this one is
    /// read; it is walked from the right, past trusted proxies.
    pub header: ClientAddressHeader,
    /// Trusted proxies open every connection with a PROXY protocol header
    /// (v1 or v2: HAProxy `send-proxy-v2`, AWS NLB, nginx `proxy_protocol`).
    /// A trusted peer that sends none is closed; other peers are never
    /// asked for one.
    pub proxy_protocol: bool,
}

/// Which request header carries the client's address from trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most cloud balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
    /// No header: only the PROXY protocol (or the TCP peer) tells.
    None,
}

/// One `api_keys` entry: a bare key, or a table with its own rights.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ApiKeySetting {
    /// A key that may publish to every topic with every option, and read presence.
    Key(String),
    /// A key with its own topics, options and rate (`[[api_keys]]`).
    Entry(ApiKeyConfig),
}

impl From<&str> for ApiKeySetting {
    fn from(key: &str) -> ApiKeySetting {
        ApiKeySetting::Key(key.to_string())
    }
}

impl From<String> for ApiKeySetting {
    fn from(key: String) -> ApiKeySetting {
        ApiKeySetting::Key(key)
    }
}

/// `[[api_keys]]`: a key for one caller (a cron job, the web-app), limited
/// to what it needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Its name in logs and metrics (`cron`, `django`).
    pub name: String,
    /// The key itself; or
    #[serde(default)]
    pub key: Option<String>,
    /// a file holding it (a Kubernetes secret mounted as a file); a trailing
    /// newline is not part of the key.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// Topics it may publish to (role pattern syntax; `*` for every topic).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub publish: Vec<String>,
    /// May it target sessions (`eligible`/`exclude` and their authid and
    /// authrole forms)?
    #[serde(default)]
    pub publish_options: bool,
    /// May it read `GET /presence`?
    #[serde(default)]
    pub presence: bool,
    /// Publishes per second (token bucket); 0 means no limit.
    #[serde(default)]
    pub publish_rate: f64,
    /// Publishes it may send in a burst above the rate (at least 1).
    #[serde(default)]
    pub publish_burst: u32,
}

impl ApiKeyConfig {
    /// The key: `key`, or the content of `key_file` without its trailing newline.
    pub(crate) fn secret(&self) -> Result<String, ConfigError> {
        match (&self.key, &self.key_file) {
            (Some(k), None) => Ok(k.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| trim_newline(&s).to_string())
                .map_err(|e| ConfigError::Invalid(format!("`[[api_keys]]` `{}`: cannot read key_file {}: {e}", self.name, path.display()))),
            _ => Err(ConfigError::Invalid(format!("`[[api_keys]]` `{}`: set exactly one of `key` and `key_file`", self.name))),
        }
    }
}

/// The token bucket of a configured `rate` per second and `burst`: `None`
/// for no limit (a rate of 0, or one too high to express). Every rate
/// setting (roles, API keys, new connections) goes through here.
pub(crate) fn rate_quota(rate: f64, burst: u32) -> Option<governor::Quota> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    Some(governor::Quota::with_period(period)?.allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN)))
}

/// A limiter of [`rate_quota`], or `None` for no limit.
pub(crate) fn rate_limiter(rate: f64, burst: u32) -> Option<governor::DefaultDirectRateLimiter> {
    rate_quota(rate, burst).map(governor::RateLimiter::direct)
}

/// `s` without one trailing newline (`\n` or `\r\n`), as files written by
/// `echo` or editors end.
fn trim_newline(s: &str) -> &str {
    s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(s)
}

/// `[rpc]`: procedures the web-app serves over HTTP (`[[rpc.http]]`): a
/// CALL of one of them becomes a signed POST to the web-app, on whichever
/// node the caller is connected to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcSettings {
    /// The key every HTTP call is signed with (HMAC-SHA256), at least 32
    /// bytes (also `TELEGRAPHY_RPC_SECRET`). The web-app verifies the
    /// signature with the same value (Django: `TELEGRAPHY["RPC_SECRET"]`).
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// The procedures and where they go, first match wins.
    pub http: Vec<HttpCallee>,
}

/// One `[[rpc.http]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpCallee {
    /// The procedures this endpoint serves: a pattern as in roles
    /// (`shop.cart.add`, `shop.*`, `shop..get`).
    pub procedure: String,
    /// Where the calls go: `http://` or `https://`.
    pub url: String,
    /// Longest a call may take (a CALL's own `timeout` may shorten it).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most calls in flight to this endpoint from one node; more are refused
    /// with `telegraphy.error.limit_exceeded`.
    pub max_concurrency: usize,
}

impl Default for HttpCallee {
    fn default() -> Self {
        HttpCallee { procedure: String::new(), url: String::new(), timeout: Duration::from_secs(10), max_concurrency: 64 }
    }
}

/// `[history]`: recent events kept per topic, so that a client that comes
/// back (on any node) gets what it missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Topics that keep history (patterns, as in roles; env: comma-separated).
    /// Empty: none (`--dev`: every topic). Retention works for every topic.
    #[serde(deserialize_with = "list_or_csv")]
    pub topics: Vec<String>,
    /// Events kept per topic.
    pub size: usize,
    /// How long an event is kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most events one resume or one `get_events` call returns; a client
    /// that missed more is told it did not recover.
    pub max_replay: usize,
    /// `memory://`: most topics the node keeps events for.
    pub max_topics: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings { topics: Vec::new(), size: 1000, ttl: Duration::from_secs(300), max_replay: 1000, max_topics: 100_000 }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; TLS is on when this and `key_file` are set.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key.
    pub key_file: Option<std::path::PathBuf>,
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let sessions in without credentials, with `anonymous_role`
    /// (also `TELEGRAPHY_ALLOW_ANONYMOUS`).
    pub allow_anonymous: bool,
    /// The role anonymous sessions get.
    pub anonymous_role: String,
    /// Shared secret for HS256 tokens (also `TELEGRAPHY_JWT_SECRET`). At least 32 bytes.
    #[serde(skip_serializing)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or EdDSA tokens (also
    /// `TELEGRAPHY_JWT_PUBLIC_KEY_FILE`): the gateway never holds a signing key.
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// When set, tokens must name this audience (`aud`).
    pub jwt_audience: Option<String>,
    /// When set, tokens must come from this issuer (`iss`).
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `nbf` (a token minted by a web-app whose
    /// clock runs ahead). Never on `exp`: an expired token gets no WELCOME,
    /// and a session ends at its token's `exp`.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// Tokens must name the realm they may join (claim `realm`: a string or
    /// a list of strings). Without it, a token with no `realm` claim joins
    /// any realm, and one with the claim only the realms it names.
    pub require_realm_claim: bool,
    /// Close a session when its token expires (GOODBYE, close code 4003).
    pub expire_sessions: bool,
    /// WAMP-CRA users, for non-browser clients that hold a secret.
    pub cra: Vec<CraUser>,
}

/// A WAMP-CRA user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CraUser {
    /// The authid the client presents.
    pub authid: String,
    /// The shared secret.
    #[serde(skip_serializing, default)]
    pub secret: String,
    /// The role the session gets.
    pub role: String,
}

/// What a role may do. Patterns: `com.example.orders` (exact),
/// `com.example.orders.*` (prefix: everything starting with `com.example.orders.`),
/// `com..update` (wildcard: any one component), `*` (everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Topics the role may subscribe to (comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub subscribe: Vec<String>,
    /// Topics the role may publish to (comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub publish: Vec<String>,
    /// Procedures the role may call (comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub call: Vec<String>,
    /// Procedures the role may register as a callee: a registration is
    /// allowed only when every procedure it can match is (comma-separated
    /// in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub register: Vec<String>,
    /// Publishes per second per session (token bucket); 0 means no limit.
    pub publish_rate: f64,
    /// Publishes a session may send in a burst above the rate.
    pub publish_burst: u32,
    /// Calls per second per session (token bucket); 0 means no limit.
    pub call_rate: f64,
    /// Calls a session may send in a burst above the rate.
    pub call_burst: u32,
    /// Every call of this role's sessions tells the callee who calls
    /// (`caller`, `caller_authid`, `caller_authrole`), as `disclose_me`
    /// would: for callers that cannot ask (AutobahnPython).
    pub disclose_caller: bool,
    /// May sessions of this role use `exclude`/`eligible` publish options?
    pub publish_options: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: false,
            anonymous_role: "anonymous".into(),
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_audience: None,
            jwt_issuer: None,
            jwt_leeway: Duration::from_secs(30),
            require_realm_claim: false,
            expire_sessions: true,
            cra: Vec::new(),
        }
    }
}

/// Redis bus settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Channels are named `{key_prefix}{realm}:{topic}`; give each
    /// Telegraphy cluster sharing one Redis its own prefix.
    pub key_prefix: String,
    /// Most bytes of events this node's Redis subscriber connections hold
    /// while it is busy; past it the node subscribes again (events in
    /// between are missed), as Redis does past `client-output-buffer-limit`.
    pub buffer_bytes: usize,
}

/// RabbitMQ bus settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// The durable topic exchange events go through.
    pub exchange: String,
    /// Deliveries in flight to this node before it acknowledges them.
    pub prefetch: u16,
    /// Most events waiting in this node's queue; beyond it the oldest are dropped.
    pub queue_max_length: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let d = telegraphy_bus::BusOptions::default();
        RedisConfig { key_prefix: d.redis_key_prefix, buffer_bytes: d.redis_buffer_bytes }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        let d = telegraphy_bus::BusOptions::default();
        AmqpConfig { exchange: d.amqp_exchange, prefetch: d.amqp_prefetch, queue_max_length: d.amqp_queue_max_length }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `telegraphy_gateway=debug,info`...
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// URI rules, as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UriRulesSetting {
    /// Components without whitespace, `.` or `#`.
    Loose,
    /// Components of `[0-9a-z_]` only.
    Strict,
}

impl From<UriRulesSetting> for UriRules {
    fn from(s: UriRulesSetting) -> UriRules {
        match s {
            UriRulesSetting::Loose => UriRules::Loose,
            UriRulesSetting::Strict => UriRules::Strict,
        }
    }
}

/// Limits. Every queue in the gateway is bounded by one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest WebSocket message and `POST /publish` body, in bytes.
    pub max_message_size: usize,
    /// Most connections at once, WebSocket or HTTP, counted from the accept.
    /// When full, the oldest that has not authenticated is shed; when every
    /// one has, new WebSockets are refused with HTTP 503.
    pub max_connections: usize,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Most calls one session may have in flight (waiting for their
    /// result); more are refused with `telegraphy.error.limit_exceeded`.
    pub max_calls_per_session: usize,
    /// Most registrations one session may hold as a callee.
    pub max_registrations_per_session: usize,
    /// Most messages waiting to be written to one session. A session whose
    /// queue is full is closed (code 4000, slow consumer).
    pub outbound_queue_messages: usize,
    /// Most bytes waiting to be written to one session (same policy).
    pub outbound_queue_bytes: usize,
    /// Events waiting for fan-out on this node; publishers wait when full.
    pub bus_queue: usize,
    /// Time a new WebSocket has to finish its WAMP handshake (HELLO, then
    /// authentication) after the upgrade.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Interval between WebSocket pings to each session.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait between attempts to reconnect to the bus broker.
    #[serde(with = "humantime_serde")]
    pub bus_reconnect_max_delay: Duration,
    /// WebSockets that have not finished HELLO/authentication yet; more are
    /// refused with HTTP 503 (keeps handshake floods bounded).
    pub max_pending_handshakes: usize,
    /// Most WebSocket connections from one client IP; 0 means no limit.
    /// Behind a proxy every client shares the proxy's IP unless the proxy
    /// is listed in `[proxies]`.
    pub max_connections_per_ip: usize,
    /// Time a client has to send its HTTP request headers (slowloris
    /// guard), counted from the accept, and on a kept-alive connection
    /// from the end of the previous request.
    #[serde(with = "humantime_serde")]
    pub http_header_timeout: Duration,
    /// Time a `POST /publish` body has to arrive once its API key was accepted.
    #[serde(with = "humantime_serde")]
    pub http_body_timeout: Duration,
    /// Most connections from one client IP that have not authenticated yet
    /// (WebSockets before WELCOME, HTTP requests before a valid API key);
    /// more are closed at accept. 0 means no limit. Behind a proxy every
    /// client shares the proxy's IP unless the proxy is listed in `[proxies]`.
    pub max_unauthenticated_per_ip: usize,
    /// New connections per second this node accepts, from everyone
    /// together (token bucket); 0 means no limit. Shapes a reconnect storm:
    /// clients over it hear HTTP 503 and retry with their backoff.
    pub connection_rate: f64,
    /// New connections accepted in a burst above `connection_rate`.
    pub connection_burst: u32,
    /// New connections per second from one client address (an IPv6 client
    /// counts by its /64); 0 means no limit. Behind trusted proxies
    /// (`[proxies]`) the client's own address counts. Over it: HTTP 429.
    pub connection_rate_per_ip: f64,
    /// New connections from one address in a burst above `connection_rate_per_ip`.
    pub connection_burst_per_ip: u32,
    /// Bytes the kernel may hold for one client (`SO_SNDBUF`; the kernel
    /// doubles it for bookkeeping). Together with `outbound_queue_bytes` it
    /// bounds what a stalled client holds, and keeps a shed client's close
    /// frame deliverable. 0 leaves the kernel's sizing (up to megabytes).
    pub socket_send_buffer: usize,
}

/// Drain settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a signal, how long to stay up answering `/readyz` with 503 before
    /// closing sessions, so load balancers stop sending new clients.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// The process exits at the latest this long after the signal.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid literal"),
            bus: "memory://".into(),
            redis: RedisConfig::default(),
            amqp: AmqpConfig::default(),
            bus_tls: BusTlsConfig::default(),
            realms: vec!["realm1".into()],
            uri_rules: UriRulesSetting::Loose,
            api_keys: Vec::new(),
            dev: false,
            allowed_origins: Vec::new(),
            public_hosts: Vec::new(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            roles: std::collections::BTreeMap::new(),
            log: LogConfig::default(),
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
            history: HistorySettings::default(),
            rpc: RpcSettings::default(),
            proxies: ProxiesConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_connections: 100_000,
            max_subscriptions_per_session: 1_000,
            max_calls_per_session: 100,
            max_registrations_per_session: 100,
            outbound_queue_messages: 1_024,
            outbound_queue_bytes: 1024 * 1024,
            bus_queue: 8_192,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            bus_reconnect_max_delay: Duration::from_secs(10),
            max_pending_handshakes: 10_000,
            max_connections_per_ip: 0,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(10),
            max_unauthenticated_per_ip: 1_000,
            socket_send_buffer: 128 * 1024,
            connection_rate: 0.0,
            connection_burst: 0,
            connection_rate_per_ip: 0.0,
            connection_burst_per_ip: 0,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_delay: Duration::ZERO, drain_timeout: Duration::from_secs(10) }
    }
}

/// Values given on the command line; each one set overrides file and env.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `--bus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// `--realm` (repeatable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realms: Option<Vec<String>>,
    /// `--api-keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<Vec<String>>,
    /// `--uri-rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_rules: Option<UriRulesSetting>,
    /// `--dev`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<bool>,
    /// `--allow-anonymous` (goes to `auth.allow_anonymous`).
    #[serde(skip)]
    pub allow_anonymous: Option<bool>,
    /// `--log-format` / `--log-level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverrides>,
}

/// Log flags.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LogOverrides {
    /// `--log-format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    /// `--log-level`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

/// A configuration that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is unknown, or a value has the wrong type or format.
    #[error("{0}\n  hint: see docs/configuration.md or deploy/telegraphy.toml for every key and its format")]
    Parse(String),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults ← `file` ← `TELEGRAPHY_*` env ← `overrides`, then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed("TELEGRAPHY_"))
    }

    fn load_with_env(file: Option<&Path>, overrides: &Overrides, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist; start without --config to use the defaults, or copy deploy/telegraphy.toml",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let env = env
            .filter(|key| !is_service_link(key.as_str()) && secret_file_target(key.as_str()).is_none())
            .map(|key| env_alias(key.as_str()).into())
            .split("__")
            .ignore(CLIENT_ENV_VARS);
        fig = fig.merge(env);
        for (path, value) in secrets_from_files(std::env::vars())? {
            fig = fig.merge(Serialized::default(&path, value));
        }
        fig = fig.merge(Serialized::defaults(overrides));
        if let Some(allow) = overrides.allow_anonymous {
            fig = fig.merge(Serialized::default("auth.allow_anonymous", allow));
        }
        let config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(e.into_iter().map(|e| format!("configuration error: {e}")).collect::<Vec<_>>().join("\n")))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document alone (no env, no flags), then validates it.
    #[cfg(test)]
    pub(crate) fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Parse(format!("configuration error: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        telegraphy_bus::check_url(&self.bus).map_err(|m| ConfigError::Invalid(format!("key `bus`: {m}")))?;
        let tls = self.bus_tls.load()?;
        if tls.is_set() && !telegraphy_bus::is_tls_url(&self.bus) {
            return invalid(format!(
                "`[bus_tls]` is set but the bus URL `{}` is not a TLS one; use rediss:// or amqps://",
                telegraphy_bus::redact(&self.bus)
            ));
        }
        if self.amqp.exchange.is_empty() || self.amqp.exchange.starts_with("amq.") {
            return invalid("key `amqp.exchange` must be a non-empty name outside RabbitMQ's reserved `amq.` namespace".into());
        }
        if self.redis.buffer_bytes < 1 << 20 {
            return invalid(format!("key `redis.buffer_bytes` is {}; give it at least 1048576 (1 MiB)", self.redis.buffer_bytes));
        }
        if self.amqp.prefetch == 0 || self.amqp.queue_max_length == 0 {
            return invalid("keys `amqp.prefetch` and `amqp.queue_max_length` must be greater than 0".into());
        }
        if let Some(secret) = &self.auth.jwt_secret {
            if secret.len() < 32 {
                return invalid(
                    "key `auth.jwt_secret` (TELEGRAPHY_JWT_SECRET) must be at least 32 bytes; generate one with `openssl rand -hex 32`".into(),
                );
            }
        }
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key_file.is_some() {
            return invalid("set either `auth.jwt_secret` (HS256) or `auth.jwt_public_key_file` (RS256/EdDSA), not both".into());
        }
        if let Some(path) = &self.auth.jwt_public_key_file {
            if !path.exists() {
                return invalid(format!("key `auth.jwt_public_key_file`: {} does not exist", path.display()));
            }
        }
        for user in &self.auth.cra {
            if user.secret.len() < 16 {
                return invalid(format!("`auth.cra` user `{}`: the secret must be at least 16 bytes", user.authid));
            }
        }
        for (name, role) in &self.roles {
            for pattern in role.subscribe.iter().chain(&role.publish) {
                crate::authz::Pattern::parse(pattern).map_err(|e| ConfigError::Invalid(format!("key `roles.{name}`: {e}")))?;
            }
            if role.publish_rate < 0.0 || !role.publish_rate.is_finite() {
                return invalid(format!("key `roles.{name}.publish_rate` must be 0 (no limit) or a positive number"));
            }
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(c), Some(k)) => {
                for p in [c, k] {
                    if !p.exists() {
                        return invalid(format!("TLS file {} does not exist (tls.cert_file / tls.key_file)", p.display()));
                    }
                }
            }
            (None, None) => {}
            _ => return invalid("set both `tls.cert_file` and `tls.key_file`, or neither".into()),
        }
        if self.limits.max_pending_handshakes == 0 || self.limits.http_header_timeout.is_zero() || self.limits.http_body_timeout.is_zero() {
            return invalid(
                "keys `limits.max_pending_handshakes`, `limits.http_header_timeout` and `limits.http_body_timeout` must be greater than 0".into(),
            );
        }
        if self.limits.bus_reconnect_max_delay.is_zero() {
            return invalid("key `limits.bus_reconnect_max_delay` must be longer than 0s".into());
        }
        if self.realms.is_empty() {
            return invalid("key `realms` is empty; name at least one realm, e.g. realms = [\"realm1\"]".into());
        }
        for realm in &self.realms {
            if !telegraphy_wamp::uri::is_valid(realm, UriRules::Loose, telegraphy_wamp::UriKind::Concrete) {
                return invalid(format!("key `realms`: `{realm}` is not a valid WAMP URI (dot-separated, no spaces or `#`)"));
            }
        }
        self.validate_api_keys()?;
        crate::proxy::TrustedProxies::new(&self.proxies.trusted, self.proxies.header, self.proxies.proxy_protocol)
            .map_err(|e| ConfigError::Invalid(format!("key `proxies.trusted`: {e}")))?;
        if self.proxies.proxy_protocol && self.proxies.trusted.is_empty() {
            return invalid(
                "key `proxies.proxy_protocol` is on but `proxies.trusted` is empty: list the balancers' addresses that send the PROXY header".into(),
            );
        }
        for (name, rate) in
            [("limits.connection_rate", self.limits.connection_rate), ("limits.connection_rate_per_ip", self.limits.connection_rate_per_ip)]
        {
            if rate < 0.0 || !rate.is_finite() {
                return invalid(format!("key `{name}` must be 0 (no limit) or a positive number of connections per second"));
            }
        }
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_message_size", l.max_message_size),
            ("limits.max_connections", l.max_connections),
            ("limits.max_subscriptions_per_session", l.max_subscriptions_per_session),
            ("limits.max_calls_per_session", l.max_calls_per_session),
            ("limits.max_registrations_per_session", l.max_registrations_per_session),
            ("limits.outbound_queue_messages", l.outbound_queue_messages),
            ("limits.bus_queue", l.bus_queue),
        ] {
            if value == 0 {
                return invalid(format!("key `{name}` must be greater than 0"));
            }
        }
        if l.max_message_size < 1024 {
            return invalid("key `limits.max_message_size` must be at least 1024 bytes".into());
        }
        if l.outbound_queue_bytes < 2 * l.max_message_size {
            return invalid(format!(
                "key `limits.outbound_queue_bytes` ({}) must be at least twice `limits.max_message_size` ({}): an EVENT can be larger than \
                 the publish that caused it (event details, binary data as base64 in JSON)",
                l.outbound_queue_bytes, l.max_message_size
            ));
        }
        if l.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return invalid(format!("key `limits.max_connections` must be at most {}", tokio::sync::Semaphore::MAX_PERMITS));
        }
        for (name, value) in [("limits.handshake_timeout", l.handshake_timeout), ("limits.ping_interval", l.ping_interval)] {
            if value.is_zero() {
                return invalid(format!("key `{name}` must be longer than 0s"));
            }
        }
        if l.idle_timeout <= l.ping_interval {
            return invalid(format!(
                "key `limits.idle_timeout` ({}) must be longer than `limits.ping_interval` ({}), or idle sessions are closed before they can answer a ping",
                humantime::format_duration(l.idle_timeout),
                humantime::format_duration(l.ping_interval)
            ));
        }
        if self.shutdown.drain_timeout <= self.shutdown.drain_delay {
            return invalid("key `shutdown.drain_timeout` must be longer than `shutdown.drain_delay`".into());
        }
        telegraphy_bus::pattern::PatternSet::parse(&self.history.topics).map_err(|e| ConfigError::Invalid(format!("key `history.topics`: {e}")))?;
        let h = &self.history;
        if !(1..=100_000).contains(&h.size) {
            return invalid(format!("key `history.size` is {}; keep between 1 and 100000 events per topic", h.size));
        }
        if h.ttl.is_zero() || h.max_replay == 0 || h.max_topics == 0 {
            return invalid("keys `history.ttl`, `history.max_replay` and `history.max_topics` must be above zero".into());
        }
        self.validate_rpc()?;
        if self.dev && !(self.listen.ip().is_loopback() && self.admin_listen.ip().is_loopback()) {
            return invalid(format!(
                "dev mode accepts the well-known API key `dev` and is refused on a non-loopback address ({}); drop --dev or listen on 127.0.0.1",
                self.listen
            ));
        }
        Ok(())
    }

    fn validate_api_keys(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        let mut secrets = std::collections::HashSet::new();
        for key in &self.api_keys {
            let secret = match key {
                ApiKeySetting::Key(k) => k.clone(),
                ApiKeySetting::Entry(e) => {
                    if e.name.is_empty() || !names.insert(e.name.as_str()) {
                        return invalid(format!("`[[api_keys]]`: every entry needs its own `name` (`{}` is empty or taken)", e.name));
                    }
                    if e.publish.is_empty() {
                        return invalid(format!(
                            "`[[api_keys]]` `{}`: list the topics it may publish to, e.g. publish = [\"reports.*\"] (`*` for every topic)",
                            e.name
                        ));
                    }
                    for pattern in &e.publish {
                        crate::authz::Pattern::parse(pattern).map_err(|err| ConfigError::Invalid(format!("`[[api_keys]]` `{}`: {err}", e.name)))?;
                    }
                    if e.publish_rate < 0.0 || !e.publish_rate.is_finite() {
                        return invalid(format!("`[[api_keys]]` `{}`: publish_rate must be 0 (no limit) or a positive number", e.name));
                    }
                    e.secret()?
                }
            };
            if secret.len() < 8 && !(self.dev && secret == "dev") {
                return invalid("key `api_keys`: every API key must be at least 8 characters long; generate one with `openssl rand -hex 24`".into());
            }
            if !secrets.insert(secret) {
                return invalid("key `api_keys`: the same key is listed twice; give every caller its own".into());
            }
        }
        Ok(())
    }

    fn validate_rpc(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.rpc.http.is_empty() {
            return Ok(());
        }
        match &self.rpc.secret {
            None => {
                return invalid(
                    "`[[rpc.http]]` needs key `rpc.secret` (TELEGRAPHY_RPC_SECRET): the web-app checks every call's signature with it; \
                     generate one with `openssl rand -hex 32` and give Django the same value as TELEGRAPHY[\"RPC_SECRET\"]"
                        .into(),
                )
            }
            Some(s) if s.len() < 32 => return invalid("key `rpc.secret` (TELEGRAPHY_RPC_SECRET) must be at least 32 bytes".into()),
            Some(_) => {}
        }
        for (n, h) in self.rpc.http.iter().enumerate() {
            let key = format!("rpc.http[{n}]");
            telegraphy_bus::pattern::Pattern::parse(&h.procedure).map_err(|e| ConfigError::Invalid(format!("key `{key}.procedure`: {e}")))?;
            if h.procedure == "*" || h.procedure.starts_with("wamp.") {
                return invalid(format!(
                    "key `{key}.procedure`: `{}` would take the router's own `wamp.` procedures; name your application's",
                    h.procedure
                ));
            }
            let scheme_ok = h.url.starts_with("http://") || h.url.starts_with("https://");
            if !scheme_ok || h.url.parse::<hyper::Uri>().map(|u| u.host().is_none()).unwrap_or(true) {
                return invalid(format!("key `{key}.url`: `{}` is not an http:// or https:// URL", h.url));
            }
            if h.timeout.is_zero() || h.max_concurrency == 0 {
                return invalid(format!("keys `{key}.timeout` and `{key}.max_concurrency` must be above zero"));
            }
        }
        Ok(())
    }

    /// The bus adapter settings, from `redis`, `amqp` and limits.
    pub(crate) fn bus_options(&self, node_id: u64) -> Result<telegraphy_bus::BusOptions, ConfigError> {
        Ok(telegraphy_bus::BusOptions {
            tls: self.bus_tls.load()?,
            redis_key_prefix: self.redis.key_prefix.clone(),
            redis_buffer_bytes: self.redis.buffer_bytes,
            amqp_exchange: self.amqp.exchange.clone(),
            amqp_prefetch: self.amqp.prefetch,
            amqp_queue_max_length: self.amqp.queue_max_length,
            reconnect_max_delay: self.limits.bus_reconnect_max_delay,
            connection_name: format!("telegraphy-gateway-{node_id:016x}"),
            history: self.history_config(),
            ..telegraphy_bus::BusOptions::default()
        })
    }

    /// The history settings in force (`--dev` keeps every topic's history
    /// when no topic is listed). Patterns were checked by `validate`.
    pub(crate) fn history_config(&self) -> telegraphy_bus::HistoryConfig {
        let h = &self.history;
        let topics = if h.topics.is_empty() && self.dev { vec!["*".to_string()] } else { h.topics.clone() };
        telegraphy_bus::HistoryConfig {
            topics: telegraphy_bus::pattern::PatternSet::parse(&topics).unwrap_or_default(),
            size: h.size,
            ttl: h.ttl,
            max_topics: h.max_topics,
        }
    }

    /// Whether anonymous sessions are let in (configured, or dev mode).
    pub(crate) fn anonymous_allowed(&self) -> bool {
        self.auth.allow_anonymous || self.dev
    }

    /// The API keys `POST /publish` accepts (adds `dev` in dev mode when none is set).
    pub(crate) fn effective_api_keys(&self) -> Vec<ApiKeySetting> {
        if self.api_keys.is_empty() && self.dev {
            vec![ApiKeySetting::Key("dev".into())]
        } else {
            self.api_keys.clone()
        }
    }
}

/// The documented short names of some settings in the environment
/// (`TELEGRAPHY_JWT_SECRET` for `auth.jwt_secret`); `key` is without the
/// `TELEGRAPHY_` prefix, and is returned lowercased.
fn env_alias(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    match key.as_str() {
        "jwt_secret" => "auth__jwt_secret".into(),
        "jwt_public_key_file" => "auth__jwt_public_key_file".into(),
        "allow_anonymous" => "auth__allow_anonymous".into(),
        "rpc_secret" => "rpc__secret".into(),
        _ => key,
    }
}

/// Settings whose own names end in `_file` (they hold paths): their
/// environment variables set them, and are not read as files.
const PATH_SETTINGS: &[&str] =
    &["auth__jwt_public_key_file", "tls__cert_file", "tls__key_file", "bus_tls__ca_file", "bus_tls__cert_file", "bus_tls__key_file"];

/// For `X_FILE` (without the `TELEGRAPHY_` prefix), the setting `X` whose
/// value the file holds, as Kubernetes mounts secrets; `None` for other
/// variables, path settings and the client tools' own (`API_KEY_FILE`).
fn secret_file_target(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    let target = lower.strip_suffix("_file")?;
    if target.is_empty() || PATH_SETTINGS.contains(&env_alias(&lower).as_str()) || CLIENT_ENV_VARS.contains(&target) {
        return None;
    }
    Some(env_alias(target))
}

/// The settings set through `TELEGRAPHY_X_FILE` variables among `vars`:
/// (dotted path, the file's content without its trailing newline).
/// Setting both `TELEGRAPHY_X` and `TELEGRAPHY_X_FILE` is refused.
fn secrets_from_files(vars: impl Iterator<Item = (String, String)>) -> Result<Vec<(String, String)>, ConfigError> {
    let vars: Vec<(String, String)> = vars.collect();
    let mut out = Vec::new();
    for (name, path) in &vars {
        let Some(key) = name.strip_prefix("TELEGRAPHY_") else { continue };
        let Some(target) = secret_file_target(key) else { continue };
        if vars.iter().any(|(other, _)| other.strip_prefix("TELEGRAPHY_").is_some_and(|k| env_alias(k) == target)) {
            return Err(ConfigError::Invalid(format!("both {name} and the setting it fills are set; keep one")));
        }
        let value = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid(format!("{name}: cannot read {path}: {e}")))?;
        out.push((target.replace("__", "."), trim_newline(&value).to_string()));
    }
    Ok(out)
}

/// Whether an env var (without the `TELEGRAPHY_` prefix) is one Kubernetes
/// injects for a Service named `telegraphy…` (`TELEGRAPHY_PORT`,
/// `TELEGRAPHY_PORT_8080_TCP_ADDR`, `TELEGRAPHY_METRICS_SERVICE_HOST`, ...):
/// those are not settings and must not stop the gateway.
fn is_service_link(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "port"
        || k.starts_with("port_")
        || k.ends_with("_port")
        || k.contains("_port_")
        || k.starts_with("service_")
        || k.contains("_service_host")
        || k.contains("_service_port")
}

/// `api_keys`: a list of bare keys and `[[api_keys]]` tables, or one
/// comma-separated string of bare keys (`TELEGRAPHY_API_KEYS`). A visitor,
/// not an untagged enum, so that a mistake in a table is named precisely.
fn api_key_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ApiKeySetting>, D::Error> {
    use serde::de::{self, MapAccess, SeqAccess, Visitor};

    fn csv(s: &str) -> Vec<ApiKeySetting> {
        s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| ApiKeySetting::Key(s.into())).collect()
    }

    struct One;
    impl<'de> Visitor<'de> for One {
        type Value = ApiKeySetting;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an API key (a string) or a table with `name`, `key` or `key_file`, and `publish`")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<ApiKeySetting, E> {
            Ok(ApiKeySetting::Key(v.into()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<ApiKeySetting, E> {
            Ok(ApiKeySetting::Key(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<ApiKeySetting, E> {
            Ok(ApiKeySetting::Key(v.to_string()))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ApiKeySetting, A::Error> {
            ApiKeyConfig::deserialize(de::value::MapAccessDeserializer::new(map)).map(ApiKeySetting::Entry)
        }
    }
    struct Setting(ApiKeySetting);
    impl<'de> Deserialize<'de> for Setting {
        fn deserialize<D2: Deserializer<'de>>(d: D2) -> Result<Self, D2::Error> {
            d.deserialize_any(One).map(Setting)
        }
    }

    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Vec<ApiKeySetting>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of API keys and [[api_keys]] tables, or comma-separated keys")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(csv(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(csv(&v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(csv(&v.to_string()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Setting(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(List)
}

/// Accepts a list, or one comma-separated string (handy in env vars).
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    // Environment values that look like numbers arrive as numbers: an API
    // key made of digits only must still read as a string.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Str(String),
        UInt(u64),
        Int(i64),
    }
    impl From<Item> for String {
        fn from(i: Item) -> String {
            match i {
                Item::Str(s) => s,
                Item::UInt(n) => n.to_string(),
                Item::Int(n) => n.to_string(),
            }
        }
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<Item>),
        Csv(Item),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l.into_iter().map(String::from).collect(),
        ListOrCsv::Csv(s) => String::from(s).split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/telegraphy.toml")).unwrap();
        let config = Config::from_toml_str(&text).unwrap();
        assert_eq!(config.realms, vec!["realm1".to_string()]);
        assert_eq!(config.limits.max_message_size, 64 * 1024);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml_str("listne = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
        let err = Config::from_toml_str("[limits]\nmax_msg = 3").unwrap_err().to_string();
        assert!(err.contains("max_msg"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml_str("listen = \"nowhere\"").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
        let err = Config::from_toml_str("[limits]\nhandshake_timeout = \"ten\"").unwrap_err().to_string();
        assert!(err.contains("handshake_timeout"), "{err}");
        let err = Config::from_toml_str("bus = \"kafka://127.0.0.1\"").unwrap_err().to_string();
        assert!(err.contains("memory://") && err.contains("redis://"), "{err}");
        assert!(Config::from_toml_str("bus = \"redis://127.0.0.1:6379/0\"").is_ok());
        assert!(Config::from_toml_str("bus = \"redis+cluster://r1:7000,r2:7000\"").is_ok());
        assert!(Config::from_toml_str("bus = \"redis+sentinel://s1:26379/mymaster\"").is_ok());
        let err = Config::from_toml_str("[redis]\nbuffer_bytes = 1000").unwrap_err().to_string();
        assert!(err.contains("redis.buffer_bytes") && err.contains("1 MiB"), "{err}");
        let err = Config::from_toml_str("[limits]\nidle_timeout = \"1s\"\nping_interval = \"5s\"").unwrap_err().to_string();
        assert!(err.contains("idle_timeout"), "{err}");
        let err = Config::from_toml_str("dev = true\nlisten = \"0.0.0.0:8080\"").unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn env_overrides_file_and_flags_override_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "listen = \"127.0.0.1:1000\"\nrealms = [\"a\"]\n[limits]\nmax_message_size = 2048\n")?;
            jail.set_env("TELEGRAPHY_LISTEN", "127.0.0.1:2000");
            jail.set_env("TELEGRAPHY_API_KEYS", "key-one-1234, key-two-1234");
            jail.set_env("TELEGRAPHY_LIMITS__MAX_MESSAGE_SIZE", "4096");
            jail.set_env("TELEGRAPHY_API_KEY", "client-side-ignored");
            jail.set_env("TELEGRAPHY_REALMS", "12345678");
            let c = Config::load(Some(Path::new("t.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.listen.port(), 2000);
            assert_eq!(c.realms, vec!["12345678".to_string()], "digits-only values stay strings");
            assert_eq!(c.api_keys, vec![ApiKeySetting::from("key-one-1234"), "key-two-1234".into()]);
            assert_eq!(c.limits.max_message_size, 4096);
            let flags = Overrides { listen: Some("127.0.0.1:3000".parse().unwrap()), ..Default::default() };
            let c = Config::load(Some(Path::new("t.toml")), &flags).unwrap();
            assert_eq!(c.listen.port(), 3000);
            // Kubernetes service links for a Service named `telegraphy` are ignored.
            jail.set_env("TELEGRAPHY_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("TELEGRAPHY_PORT_8080_TCP_ADDR", "10.0.0.1");
            jail.set_env("TELEGRAPHY_SERVICE_HOST", "10.0.0.1");
            jail.set_env("TELEGRAPHY_METRICS_SERVICE_PORT_ADMIN", "9090");
            assert!(Config::load(None, &Overrides::default()).is_ok());
            jail.set_env("TELEGRAPHY_LISTN", "127.0.0.1:1");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn api_keys_mix_bare_keys_and_tables_with_their_own_rights() {
        let dir = std::env::temp_dir().join(format!("telegraphy-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cron.key");
        std::fs::write(&file, "cron-key-from-a-file\n").unwrap();
        let toml = format!(
            "api_keys = [\"bare-key-12345\"]\n[[api_keys]]\nname = \"cron\"\nkey_file = \"{}\"\npublish = [\"reports.*\"]\npublish_rate = 2.0\n\
             [[api_keys]]\nname = \"django\"\nkey = \"django-key-12345\"\npublish = \"*\"\npublish_options = true\npresence = true\n",
            file.display()
        );
        // TOML does not allow a key and an array of tables of the same name: tables only.
        let err = Config::from_toml_str(&toml).unwrap_err().to_string();
        assert!(err.contains("api_keys"), "{err}");
        let toml = toml.replace("api_keys = [\"bare-key-12345\"]\n", "");
        let c = Config::from_toml_str(&toml).unwrap();
        let ApiKeySetting::Entry(cron) = &c.api_keys[0] else { panic!("a table") };
        assert_eq!(cron.secret().unwrap(), "cron-key-from-a-file", "the file's trailing newline is not part of the key");
        assert_eq!((cron.publish.clone(), cron.publish_rate, cron.publish_options), (vec!["reports.*".to_string()], 2.0, false));
        let ApiKeySetting::Entry(django) = &c.api_keys[1] else { panic!("a table") };
        assert!(django.presence && django.publish_options);
        // Mistakes are named.
        for (bad, says) in [
            ("[[api_keys]]\nname = \"a\"\nkey = \"aaaaaaaaaaaa\"\n", "list the topics"),
            ("[[api_keys]]\nname = \"a\"\npublish = \"*\"\n", "exactly one of `key` and `key_file`"),
            ("[[api_keys]]\nname = \"a\"\nkey = \"short\"\npublish = \"*\"\n", "at least 8"),
            ("[[api_keys]]\nname = \"a\"\nkey = \"aaaaaaaaaaaa\"\npublish = \"*\"\npublsh_rate = 1\n", "publsh_rate"),
            ("[[api_keys]]\nname = \"a\"\nkey_file = \"/nonexistent/key\"\npublish = \"*\"\n", "cannot read key_file"),
            (
                "[[api_keys]]\nname = \"a\"\nkey = \"aaaaaaaaaaaa\"\npublish = \"*\"\n[[api_keys]]\nname = \"a\"\nkey = \"bbbbbbbbbbbb\"\npublish = \"*\"\n",
                "its own `name`",
            ),
        ] {
            let err = Config::from_toml_str(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bus_tls_files_are_read_and_checked_at_startup() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys");
        let ok = format!("bus = \"rediss://u:p@redis.internal:6380/0\"\n[bus_tls]\nca_file = \"{keys}/ca.pem\"\ncert_file = \"{keys}/tls_cert.pem\"\nkey_file = \"{keys}/tls_key.pem\"\n");
        let c = Config::from_toml_str(&ok).unwrap();
        let tls = c.bus_options(1).unwrap().tls;
        assert!(tls.ca_pem.is_some() && tls.client_cert_pem.is_some() && tls.client_key_pem.is_some());
        for (bad, says) in [
            (ok.replace("rediss://", "redis://"), "not a TLS one; use rediss://"),
            (ok.replace("ca.pem", "missing.pem"), "bus_tls.ca_file`: cannot read"),
            (ok.replace(&format!("ca_file = \"{keys}/ca.pem\""), &format!("ca_file = \"{keys}/tls_key.pem\"")), "holds no PEM certificate"),
            (ok.replace(&format!("key_file = \"{keys}/tls_key.pem\"\n"), ""), "set both `bus_tls.cert_file` and `bus_tls.key_file`"),
        ] {
            let err = Config::from_toml_str(&bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn proxies_are_checked_at_startup() {
        let c =
            Config::from_toml_str("[proxies]\ntrusted = [\"10.0.0.0/8\", \"192.168.1.7\"]\nheader = \"forwarded\"\nproxy_protocol = true\n").unwrap();
        assert_eq!(c.proxies.header, ClientAddressHeader::Forwarded);
        let err = Config::from_toml_str("[proxies]\ntrusted = [\"lb.internal\"]\n").unwrap_err().to_string();
        assert!(err.contains("proxies.trusted") && err.contains("lb.internal"), "{err}");
        let err = Config::from_toml_str("[proxies]\nproxy_protocol = true\n").unwrap_err().to_string();
        assert!(err.contains("proxies.trusted"), "{err}");
        let err = Config::from_toml_str("[proxies]\nheader = \"x-real-ip\"\n").unwrap_err().to_string();
        assert!(err.contains("x-forwarded-for"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn secrets_come_from_files_named_by_file_variables() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("jwt", "a-jwt-secret-of-at-least-32-bytes-long\n")?;
            jail.create_file("keys", "key-one-1234,key-two-1234")?;
            jail.create_file("bus", "redis://user:secret@127.0.0.1:6379/0")?;
            let dir = jail.directory().to_path_buf();
            jail.set_env("TELEGRAPHY_JWT_SECRET_FILE", dir.join("jwt").display().to_string());
            jail.set_env("TELEGRAPHY_API_KEYS_FILE", dir.join("keys").display().to_string());
            jail.set_env("TELEGRAPHY_BUS_FILE", dir.join("bus").display().to_string());
            // A path setting ending in _FILE is a path, and the CLI's own is ignored.
            jail.set_env("TELEGRAPHY_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem");
            jail.set_env("TELEGRAPHY_API_KEY_FILE", "/nonexistent");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("jwt_public_key_file") || err.contains("jwt_secret"), "{err}");
            jail.set_env("TELEGRAPHY_JWT_PUBLIC_KEY_FILE", "");
            std::env::remove_var("TELEGRAPHY_JWT_PUBLIC_KEY_FILE");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.auth.jwt_secret.as_deref(), Some("a-jwt-secret-of-at-least-32-bytes-long"));
            assert_eq!(c.api_keys, vec![ApiKeySetting::from("key-one-1234"), "key-two-1234".into()]);
            assert_eq!(c.bus, "redis://user:secret@127.0.0.1:6379/0");
            // Both ways at once: refused, named.
            jail.set_env("TELEGRAPHY_JWT_SECRET", "another-secret-of-at-least-32-bytes-long");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("TELEGRAPHY_JWT_SECRET_FILE"), "{err}");
            std::env::remove_var("TELEGRAPHY_JWT_SECRET");
            jail.set_env("TELEGRAPHY_RPC_SECRET_FILE", "/nonexistent/rpc");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("TELEGRAPHY_RPC_SECRET_FILE") && err.contains("/nonexistent/rpc"), "{err}");
            Ok(())
        });
    }
}
