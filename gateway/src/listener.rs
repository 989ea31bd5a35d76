//! The public listener: accepts TCP (and TLS) connections, gives clients a
//! bounded time to send their HTTP request headers (slowloris guard), and
//! serves the router with the peer address attached (`ConnectInfo`).
//!
//! WebSocket connections leave hyper once upgraded; the node's session
//! tracker owns them from then on. Plain HTTP requests still in flight when
//! the node stops are waited for by [`serve`]'s caller, within the drain deadline.

use std::net::SocketAddr;
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
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::wire::Wire;

/// Loads a TLS acceptor from PEM files (certificate chain, private key).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    let certs = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("cannot read tls.cert_file {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.cert_file {} is not a PEM certificate chain", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "tls.cert_file {} holds no certificate", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| format!("tls.key_file {} is not a PEM private key", key_file.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `stop` is cancelled, then waits for
/// in-flight HTTP requests (the caller bounds that wait).
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, app: Router, stop: CancellationToken, header_timeout: Duration) {
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
                    // Usually out of file descriptors: back off instead of
                    // spinning, and say so once in a while, not 20 times a second.
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
        let _ = tcp.set_nodelay(true);
        // The request handlers get the connection's shared socket: a
        // WebSocket session writes its frames straight to it.
        let app = app.clone();
        let service = move |wire: Arc<Wire>| {
            TowerToHyperService::new(app.map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.extensions_mut().insert(wire.clone());
                req
            }))
        };
        let builder = builder.clone();
        match &tls {
            None => {
                let wire = Wire::tcp(tcp);
                let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(wire.io()), service(wire)).into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
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
                    let wire = Wire::tls(stream);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(wire.io()), service(wire)).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
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
