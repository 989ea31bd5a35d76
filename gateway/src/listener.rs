//! The public listener: accepts TCP (and TLS) connections, admits each one
//! ([`crate::admission`]: one slot from the accept on, deadlines per phase,
//! untrusted connections shed first), and serves the router with the peer
//! address, the shared socket and the admission ticket attached.
//!
//! WebSocket connections leave hyper once upgraded; the node's session
//! tracker owns them from then on. Plain HTTP requests still in flight when
//! the node stops are waited for by [`serve`]'s caller, within the drain deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::ResolvesServerCert;
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::admission::{Admission, Refused, Ticket};
use crate::metrics::Metrics;
use crate::wire::Wire;

/// The address a connection speaks for, before its request headers are
/// read: the TCP peer, or the client named by a trusted proxy's PROXY
/// header. The request's own client address is [`ClientAddr`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin(pub IpAddr);

/// The client a request comes from: [`Origin`], or behind a trusted proxy
/// the client its forwarding header names ([`crate::proxy`]). Per-address
/// limits and logs use this.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub IpAddr);

/// Per request: learns the client's address (behind trusted proxies, from
/// the forwarding header), counts the connection against it, and answers
/// at once a connection let in over a rate.
pub(crate) async fn admit_request(
    axum::extract::State(admission): axum::extract::State<Arc<Admission>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (Some(ticket), Some(Origin(origin))) = (req.extensions().get::<Arc<Ticket>>().cloned(), req.extensions().get::<Origin>().copied()) else {
        return next.run(req).await;
    };
    let client = admission.proxies().client_address(origin, req.headers());
    let refused = ticket.refused().or_else(|| ticket.readdress(client).err());
    let answer = match refused {
        None | Some(Refused::Full) => None,
        Some(Refused::Rate) => {
            Some((StatusCode::SERVICE_UNAVAILABLE, "this gateway node is taking too many new connections right now; retry in a few seconds\n"))
        }
        Some(Refused::RatePerIp) => Some((StatusCode::TOO_MANY_REQUESTS, "too many new connections from your address; retry in a few seconds\n")),
        Some(Refused::PerIp) => Some((StatusCode::TOO_MANY_REQUESTS, "too many unauthenticated connections from your address\n")),
    };
    if let Some((status, message)) = answer {
        let mut response = (status, message).into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    req.extensions_mut().insert(ClientAddr(client));
    next.run(req).await
}

/// What the listener needs to know of the limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenLimits {
    /// Request headers (and the TLS handshake) must arrive within this.
    pub header_timeout: Duration,
    /// A trusted (API-key) HTTP connection may idle this long between requests.
    pub idle_timeout: Duration,
    /// `SO_SNDBUF` of every connection (0: the kernel's sizing).
    pub send_buffer: usize,
}

/// Why the TLS certificate or key could not be loaded; the source error is kept.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or is not PEM.
    #[error("tls.cert_file {path} is not a readable PEM certificate chain")]
    Certificate {
        /// The file.
        path: String,
        /// What the PEM reader said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls.cert_file {0} holds no certificate")]
    NoCertificate(String),
    /// The key file could not be read or is not a PEM private key.
    #[error("tls.key_file {path} is not a PEM private key")]
    Key {
        /// The file.
        path: String,
        /// What the PEM reader said.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the pair.
    #[error("the TLS certificate and key do not fit together")]
    Mismatch(#[source] rustls::Error),
}

/// The public listener's certificate and key, reloadable without a
/// restart: [`watch_certificate`] loads the files again on SIGHUP and when
/// they change; a pair that does not load is refused and the previous one
/// kept. Every TLS handshake takes the current pair.
#[derive(Debug)]
pub(crate) struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when they were last read.
    stamp: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// Reads a certificate chain and its private key from PEM files.
fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_path = || cert_file.display().to_string();
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate { path: cert_path(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Key { path: key_file.display().to_string(), source })?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider()).map_err(TlsError::Mismatch)
}

/// The files' modification times (following symlinks, as Kubernetes swaps
/// a secret's files by moving a symlink).
fn stamp(cert_file: &Path, key_file: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert_file)?, modified(key_file)?))
}

impl Certificate {
    /// Loads the pair (errors name the file and what is wrong with it).
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificate>, TlsError> {
        let stamp_now = stamp(cert_file, key_file);
        let key = load_certified_key(cert_file, key_file)?;
        Ok(Arc::new(Certificate {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
            stamp: Mutex::new(stamp_now),
        }))
    }

    /// A TLS acceptor that serves whatever pair is current.
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Mismatch)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Loads the files again if they changed since they were last read
    /// (always when `force`, as on SIGHUP). `Ok(true)`: a new pair is in use.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamp(&self.cert_file, &self.key_file);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if !force && now == *last {
            return Ok(false);
        }
        // Tried once per change: a broken pair is not retried every tick.
        *last = now;
        drop(last);
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }
}

/// How often [`watch_certificate`] looks at the files' modification times.
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Reloads the certificate on SIGHUP and when its files change, until
/// `stop`; logs and counts each outcome (`telegraphy_tls_reloads_total`).
pub(crate) async fn watch_certificate(certificate: Arc<Certificate>, metrics: Arc<Metrics>, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let sighup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let sighup = std::future::pending::<Option<()>>();
        let force = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = sighup => true,
        };
        match certificate.reload(force) {
            Ok(false) => {}
            Ok(true) => {
                metrics.tls_reload(true);
                tracing::info!(cert_file = %certificate.cert_file.display(), "TLS certificate reloaded; new connections get it");
            }
            Err(e) => {
                metrics.tls_reload(false);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use. Fix the files, then send SIGHUP or save them again");
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then waits for
/// in-flight HTTP requests (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    stop: CancellationToken,
    admission: Arc<Admission>,
    limits: ListenLimits,
    metrics: Arc<Metrics>,
) {
    let header_timeout = limits.header_timeout;
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: WebSockets upgrade over HTTP/1, and the header timeout
    // (slowloris guard) applies to HTTP/1 connections.
    let mut accept_errors = Throttle::new(ACCEPT_WARNING_EVERY);
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually out of file descriptors: make room by closing
                    // the oldest unauthenticated connection, so logins keep
                    // working while an attacker holds idle sockets.
                    if is_out_of_files(&e) && admission.shed_oldest() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    // Otherwise back off instead of spinning, and say so once
                    // in a while, not 20 times a second.
                    if let Some(unlogged) = accept_errors.hit(std::time::Instant::now()) {
                        tracing::warn!(
                            error = %e,
                            "accept failed ({unlogged} more failure(s) since the last warning); new clients wait in the \
                             listen queue. Usually out of file descriptors: raise the open-files limit or lower \
                             limits.max_connections"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Counted from now on, before the client has sent a byte.
        let ticket = match admission.admit(peer.ip(), header_timeout) {
            Ok(t) => t,
            Err(refused) => {
                tracing::debug!(%peer, ?refused, "connection closed at accept");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if limits.send_buffer > 0 {
            let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(limits.send_buffer);
        }
        // The request handlers get the connection's shared socket (a
        // WebSocket session writes its frames straight to it) and its
        // admission ticket.
        let app = app.clone();
        let service = move |wire: Arc<Wire>, ticket: Arc<Ticket>, origin: Origin| {
            let during = ticket.clone();
            TowerToHyperService::new(
                app.map_request(move |mut req: axum::http::Request<Incoming>| {
                    // Headers are in: the handler bounds what comes next.
                    during.set_deadline(None);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req.extensions_mut().insert(origin);
                    req.extensions_mut().insert(wire.clone());
                    req.extensions_mut().insert(during.clone());
                    req
                })
                .map_response(move |response: axum::response::Response| {
                    // A WebSocket's task keeps its own deadlines; a kept-alive
                    // HTTP connection must send its next request in time.
                    if response.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
                        let wait = if ticket.is_trusted() { limits.idle_timeout } else { header_timeout };
                        ticket.set_deadline(Some(tokio::time::Instant::now() + wait));
                    }
                    response
                }),
            )
        };
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let expects_proxy_header = admission.proxies().expects_proxy_header(peer.ip());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tcp = tcp;
            // Who the connection speaks for: its TCP peer, or the client a
            // trusted balancer names in its PROXY header.
            let mut origin = peer.ip();
            if expects_proxy_header {
                match before_the_headers(&ticket, header_timeout, crate::proxy::read_proxy_header(&mut tcp)).await {
                    None => return,
                    Some(Ok(Ok(client))) => origin = client.map_or(origin, |c| c.ip().to_canonical()),
                    Some(Ok(Err(e))) => {
                        metrics.refused("proxy_protocol");
                        tracing::info!(%peer, error = %e, "connection from a trusted proxy closed: proxies.proxy_protocol expects a PROXY header first");
                        return;
                    }
                    Some(Err(_)) => {
                        metrics.refused("proxy_protocol");
                        tracing::info!(%peer, "connection from a trusted proxy closed: no PROXY header within limits.http_header_timeout");
                        return;
                    }
                }
            }
            let origin = Origin(origin);
            let wire = match &tls {
                None => Wire::tcp(tcp),
                Some(acceptor) => {
                    let Some(handshake) = before_the_headers(&ticket, header_timeout, acceptor.accept(tcp)).await else { return };
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    Wire::tls(stream)
                }
            };
            let io = TokioIo::new(wire.io());
            let conn = builder.serve_connection_with_upgrades(io, service(wire, ticket.clone(), origin)).into_owned();
            tokio::select! {
                _ = watcher.watch(conn) => {}
                // Shed, or too slow for its phase: dropping the
                // connection closes the socket.
                _ = ticket.expired() => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Runs a step that comes before the request headers (the PROXY header,
/// the TLS handshake) within the header timeout; `None` when the connection
/// is shed meanwhile.
async fn before_the_headers<F: std::future::Future>(
    ticket: &Ticket,
    header_timeout: Duration,
    step: F,
) -> Option<Result<F::Output, tokio::time::error::Elapsed>> {
    tokio::select! {
        r = tokio::time::timeout(header_timeout, step) => Some(r),
        _ = ticket.shed() => None,
    }
}

/// Whether an accept error means the process (or system) is out of file descriptors.
fn is_out_of_files(e: &std::io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// At most one warning this often while `accept` keeps failing.
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Lets a repeated event through at most once per period, and counts what
/// it held back in between.
struct Throttle {
    period: Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    fn new(period: Duration) -> Throttle {
        Throttle { period, last: None, held_back: 0 }
    }

    /// An event at `now`: `Some(n)` if it should be reported, with `n`
    /// events held back since the last report; `None` to stay quiet.
    fn hit(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < self.period) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_reports_once_per_period_with_the_count_held_back() {
        let start = std::time::Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(start), Some(0));
        for i in 1..=199u64 {
            assert_eq!(t.hit(start + Duration::from_millis(50 * i)), None);
        }
        assert_eq!(t.hit(start + Duration::from_secs(10)), Some(199));
        assert_eq!(t.hit(start + Duration::from_secs(11)), None);
        assert_eq!(t.hit(start + Duration::from_secs(60)), Some(1));
    }
}
