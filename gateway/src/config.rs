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
pub(crate) const CLIENT_ENV_VARS: &[&str] = &["api_key", "gateway_url", "gateway_bin", "publish_bin", "timeout", "test_redis", "test_amqp"];

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
    /// Realms sessions may join (comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub realms: Vec<String>,
    /// URI rules for topics: `loose` (the WAMP default) or `strict`.
    pub uri_rules: UriRulesSetting,
    /// API keys accepted by `POST /publish` as `Authorization: Bearer KEY`
    /// (comma-separated in `TELEGRAPHY_API_KEYS`). Empty: HTTP publishing is off.
    #[serde(deserialize_with = "list_or_csv", skip_serializing)]
    pub api_keys: Vec<String>,
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
        RedisConfig { key_prefix: telegraphy_bus::BusOptions::default().redis_key_prefix }
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
    /// Behind a proxy every client shares the proxy's IP: enforce it there.
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
    /// client shares the proxy's IP: raise it or enforce it there.
    pub max_unauthenticated_per_ip: usize,
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
        // The documented short names of the auth settings.
        let env = env
            .filter(|key| !is_service_link(key.as_str()))
            .map(|key| match key.as_str().to_ascii_lowercase().as_str() {
                "jwt_secret" => "auth__jwt_secret".into(),
                "jwt_public_key_file" => "auth__jwt_public_key_file".into(),
                "allow_anonymous" => "auth__allow_anonymous".into(),
                "rpc_secret" => "rpc__secret".into(),
                _ => key.into(),
            })
            .split("__")
            .ignore(CLIENT_ENV_VARS);
        fig = fig.merge(env).merge(Serialized::defaults(overrides));
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
        if self.amqp.exchange.is_empty() || self.amqp.exchange.starts_with("amq.") {
            return invalid("key `amqp.exchange` must be a non-empty name outside RabbitMQ's reserved `amq.` namespace".into());
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
        for key in &self.api_keys {
            if key.len() < 8 && !(self.dev && key == "dev") {
                return invalid("key `api_keys`: every API key must be at least 8 characters long; generate one with `openssl rand -hex 24`".into());
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
    pub(crate) fn bus_options(&self, node_id: u64) -> telegraphy_bus::BusOptions {
        telegraphy_bus::BusOptions {
            redis_key_prefix: self.redis.key_prefix.clone(),
            amqp_exchange: self.amqp.exchange.clone(),
            amqp_prefetch: self.amqp.prefetch,
            amqp_queue_max_length: self.amqp.queue_max_length,
            reconnect_max_delay: self.limits.bus_reconnect_max_delay,
            connection_name: format!("telegraphy-gateway-{node_id:016x}"),
            history: self.history_config(),
            ..telegraphy_bus::BusOptions::default()
        }
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
    pub(crate) fn effective_api_keys(&self) -> Vec<String> {
        if self.api_keys.is_empty() && self.dev {
            vec!["dev".into()]
        } else {
            self.api_keys.clone()
        }
    }
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
            assert_eq!(c.api_keys, vec!["key-one-1234".to_string(), "key-two-1234".to_string()]);
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
}
