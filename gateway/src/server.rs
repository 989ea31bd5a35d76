//! The listeners and the node's lifecycle, start to drain. This module is
//! the one owner of shutdown:
//!
//! 1. a signal (SIGTERM / SIGINT) or the caller's trigger arrives;
//! 2. the node turns not ready (`/readyz` 503) and refuses new WebSockets;
//! 3. after `shutdown.drain_delay` the public listener stops accepting and
//!    every session gets GOODBYE `wamp.close.system_shutdown` and close code
//!    1012 (reconnect to another node);
//! 4. [`Gateway::run`] returns when every session ended, or at `shutdown.drain_timeout`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::Router;
use telegraphy_bus::{BusMetrics, Envelope, Inbound};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::node::{Node, NodeBus};
use crate::{connection, publish};

const DEMO_PAGE: &str = include_str!("../assets/demo.html");

/// Connections the kernel may hold for the public listener before they are
/// accepted (capped by `net.core.somaxconn`). `TcpListener::bind` uses 128,
/// which a burst of new clients overflows: the kernel then drops their
/// handshakes and they retry after a second.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the public listener with [`LISTEN_BACKLOG`].
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As TcpListener::bind does on Unix: restarting next to old connections works.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A gateway whose listeners are bound, ready to [`run`](Gateway::run).
pub struct Gateway {
    node: Arc<Node>,
    /// TLS for the public listener, when configured, and its reloadable certificate.
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<crate::listener::Certificate>)>,
    events: mpsc::Receiver<Envelope>,
    public: TcpListener,
    admin: TcpListener,
}

/// Why a gateway could not start. Each keeps its source error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration's values.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate or key.
    #[error("invalid configuration: {0}")]
    Tls(#[from] crate::listener::TlsError),
    /// The bus URL or its options.
    #[error(transparent)]
    Bus(#[from] telegraphy_bus::BusError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}); is another process using it?")]
    Listen {
        /// The configuration key (`listen`, `admin_listen`).
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the configuration is at fault (the binary exits 2 then).
    pub fn is_configuration(&self) -> bool {
        matches!(self, StartError::Config(_) | StartError::Tls(_))
    }
}

/// A configuration checked the way the gateway will use it: its values
/// ([`Config::validate`]), then its keys, roles, CRA users and TLS files
/// loaded, once. A bad key so stops the gateway before it listens.
pub struct Prepared {
    config: Config,
    auth: Authenticator,
    tls: Option<(tokio_rustls::TlsAcceptor, Arc<crate::listener::Certificate>)>,
}

impl Prepared {
    /// Validates `config` and loads what it points to.
    pub fn new(config: Config) -> Result<Prepared, StartError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config)?;
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => {
                let certificate = crate::listener::Certificate::load(cert, key)?;
                Some((certificate.acceptor()?, certificate))
            }
            _ => None,
        };
        Ok(Prepared { config, auth, tls })
    }
}

impl Gateway {
    /// Builds the node and binds both listeners (so bind errors surface here).
    pub async fn bind(config: Config) -> Result<Gateway, StartError> {
        Gateway::bind_prepared(Prepared::new(config)?).await
    }

    /// [`Gateway::bind`] for a configuration already prepared.
    pub async fn bind_prepared(prepared: Prepared) -> Result<Gateway, StartError> {
        let Prepared { config, auth, tls } = prepared;
        let metrics = Arc::new(Metrics::new());
        let (tx, events) = mpsc::channel(config.limits.bus_queue);
        let queue = tx.downgrade();
        let inbound = Inbound::new(tx, BusMetrics::register(metrics.registry()));
        let bus_sessions = inbound.sessions();
        let node_id = fastrand::u64(1..);
        let telegraphy_bus::Started { bus, store } = telegraphy_bus::start(&config.bus, &config.bus_options(node_id)?, inbound)?;
        let public = bind_listener(config.listen).map_err(|source| StartError::Listen { key: "listen", addr: config.listen, source })?;
        let admin = TcpListener::bind(config.admin_listen).await.map_err(|source| StartError::Listen {
            key: "admin_listen",
            addr: config.admin_listen,
            source,
        })?;
        let node = Node::new(node_id, config, auth, NodeBus { bus, store, queue, sessions: bus_sessions }, metrics);
        Ok(Gateway { node, tls, events, public, admin })
    }

    /// The bound public address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.public.local_addr().expect("bound listener has an address")
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener has an address")
    }

    /// The node (for tests and embedding).
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Gateway { node, tls, events, public, admin } = self;
        let config = &node.config;
        let scheme = if config.tls.cert_file.is_some() { "wss" } else { "ws" };
        tracing::info!(
            listen = %public.local_addr()?,
            admin_listen = %admin.local_addr()?,
            bus = node.bus.kind(),
            realms = ?config.realms,
            max_connections = config.limits.max_connections,
            dev = config.dev,
            "gateway listening: WebSocket at {scheme}://{}/ws",
            public.local_addr()?
        );
        if config.dev {
            tracing::info!("dev mode: open http://{}/ for the live demo; HTTP publish key is `dev`", public.local_addr()?);
        }
        let dispatcher = tokio::spawn(node.clone().run_dispatcher(events));
        let cluster = node.cluster.clone().map(|c| tokio::spawn(c.run(node.clone())).abort_handle());
        let presence = tokio::spawn(crate::presence::run(node.clone())).abort_handle();
        let (tls, certificate) = tls.map_or((None, None), |(acceptor, certificate)| (Some(acceptor), Some(certificate)));
        let certificate_watch = certificate
            .map(|c| tokio::spawn(crate::listener::watch_certificate(c, node.metrics.clone(), node.lifecycle.shutdown.clone())).abort_handle());

        let mut app = Router::new()
            .route("/ws", get(connection::upgrade))
            .route("/publish", post(publish::publish))
            .route("/presence", get(crate::presence::http))
            .layer(DefaultBodyLimit::max(config.limits.max_message_size + 1))
            .layer(axum::middleware::from_fn_with_state(node.admission.clone(), crate::listener::admit_request));
        if config.dev {
            app = app.route("/", get(|| async { Html(DEMO_PAGE) })).route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
        }
        let app = app.with_state(node.clone());
        let admin_app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(node.clone());

        // Admin stays up through the drain so probes and scrapes see it.
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin_task = {
            let stop = admin_stop.clone();
            tokio::spawn(async move { axum::serve(admin, admin_app).with_graceful_shutdown(async move { stop.cancelled().await }).await })
        };

        let limits = crate::listener::ListenLimits {
            header_timeout: config.limits.http_header_timeout,
            idle_timeout: config.limits.idle_timeout,
            send_buffer: config.limits.socket_send_buffer,
        };
        let mut serve = tokio::spawn(crate::listener::serve(
            public,
            tls,
            app,
            node.lifecycle.shutdown.clone(),
            node.admission.clone(),
            limits,
            node.metrics.clone(),
        ));
        let early_exit = tokio::select! {
            _ = shutdown => None,
            r = &mut serve => Some(r),
        };
        if let Some(result) = early_exit {
            // The public server stopped on its own: nothing to drain.
            node.lifecycle.shutdown.cancel();
            dispatcher.abort();
            presence.abort();
            if let Some(task) = certificate_watch {
                task.abort();
            }
            if let Some(task) = cluster {
                task.abort();
            }
            node.bus.shutdown();
            admin_stop.cancel();
            return match result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(format!("the public listener task failed: {e}"))),
            };
        }
        let deadline = Instant::now() + node.config.shutdown.drain_timeout;
        node.lifecycle.start_draining();
        tracing::info!(
            drain_delay = ?node.config.shutdown.drain_delay,
            drain_timeout = ?node.config.shutdown.drain_timeout,
            "shutdown requested: not ready any more; closing sessions after the drain delay"
        );
        tokio::time::sleep(node.config.shutdown.drain_delay).await;
        // Stop accepting and tell every session to say goodbye.
        node.lifecycle.shutdown.cancel();
        node.lifecycle.sessions.close();
        tracing::info!(sessions = node.metrics.connections.get(), "draining sessions");
        if tokio::time::timeout_at(deadline, node.lifecycle.sessions.wait()).await.is_err() {
            tracing::warn!(remaining = node.metrics.connections.get(), "drain deadline reached with sessions still open; exiting anyway");
        }
        if tokio::time::timeout_at(deadline, &mut serve).await.is_err() {
            tracing::warn!("drain deadline reached with HTTP requests in flight; exiting anyway");
            serve.abort();
        }
        if let (Some(task), Some(c)) = (cluster, &node.cluster) {
            // Sessions are closed: what they answered is on its way; then
            // the other nodes forget this one at once.
            task.abort();
            c.goodbye().await;
        }
        dispatcher.abort();
        presence.abort();
        if let Some(task) = certificate_watch {
            task.abort();
        }
        node.bus.shutdown();
        admin_stop.cancel();
        let _ = admin_task.await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    // Gauges that are cheaper to read at scrape time than to keep current.
    node.metrics.ready.set(i64::from(node.is_ready()));
    node.metrics.bus_queue_depth.set(node.bus_queue_depth() as i64);
    node.metrics.admitted_connections.set(node.admission.admitted() as i64);
    node.metrics.cluster_sessions.set(node.realms.iter().map(|(_, realm)| realm.members.count(None)).sum::<usize>() as i64);
    // Ten series per realm at most: the topics leave as others overtake them.
    node.metrics.topic_subscribers_top.reset();
    for (name, realm) in node.realms.iter() {
        let mut all: Vec<_> = crate::members::everywhere(realm, |_, _| true).into_values().collect();
        all.sort_by(|a, b| b.sessions.len().cmp(&a.sessions.len()).then_with(|| a.uri.cmp(&b.uri)));
        for s in all.into_iter().take(crate::metrics::TOP_TOPICS).filter(|s| s.sessions.len() >= crate::metrics::TOP_TOPICS_MIN_SUBSCRIBERS) {
            node.metrics.topic_subscribers_top.with_label_values(&[name.as_str(), &s.uri, s.policy.as_str()]).set(s.sessions.len() as i64);
        }
    }
    if let Some((events, bytes)) = node.store_held() {
        node.metrics.history_held_events.set(events as i64);
        node.metrics.history_held_bytes.set(bytes as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], node.metrics.render())
}

async fn readyz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !node.bus.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
