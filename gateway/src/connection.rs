//! One WebSocket connection: the upgrade (subprotocol negotiation, limits)
//! and the one task that serves it.
//!
//! The task owns the WebSocket's reading side and the [`Session`]. Frames
//! to the client go to the connection's [`Wire`]: written there at once
//! when they can be, otherwise queued for this task (events of large
//! subscriptions, TLS, a full kernel buffer). It waits for whichever comes
//! first: a frame from the client (decoded and handled), queued frames to write,
//! its one timer (hello, idle and token deadlines, pings) or the node's
//! drain. On close it writes what is still queued (not for slow consumers),
//! the session's last words and the close frame.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use telegraphy_wamp::codes::{close, uri as err};
use telegraphy_wamp::Serialization;
use tokio::time::{sleep_until, Instant};

use std::net::IpAddr;

use crate::admission::{HandshakeSlot, Ticket, WebSocketSlot};
use crate::broker::SessionHandle;
use crate::listener::ClientAddr;
use crate::metrics::Violation;
use crate::node::{secure_random_id, Node};
use crate::outbox::{Ended, Outbox};
use crate::session::{Flow, Session};
use crate::wire::Wire;

/// How long the last flush, and then the wait for the peer's close reply, may take.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client shed as a slow consumer has to take its close frame
/// (its backlog is dropped; what is left is the kernel's send buffer,
/// `limits.socket_send_buffer`). A client that reads nothing for this long
/// sees the connection end without one (`telegraphy_close_unsent_total`).
const SLOW_CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read buffer of each WebSocket. tungstenite's default (128 KiB)
/// is zero-filled on the first read, so every idle session kept 128 KiB
/// resident; clients send small messages, and a larger one grows the buffer.
const READ_BUFFER: usize = 256;
/// Bytes tungstenite gathers before writing: it writes only pongs and the
/// close frame (every other frame goes straight to the [`Wire`]).
const WRITE_BUFFER: usize = 256;

/// `GET /ws`: negotiates the WAMP subprotocol and starts the session.
pub(crate) async fn upgrade(
    State(node): State<Arc<Node>>,
    Extension(ClientAddr(client)): Extension<ClientAddr>,
    Extension(wire): Extension<Arc<Wire>>,
    Extension(ticket): Extension<Arc<Ticket>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if node.lifecycle.is_draining() {
        node.metrics.refused("draining");
        return (StatusCode::SERVICE_UNAVAILABLE, "this gateway node is draining; connect to another node\n").into_response();
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !origin_allowed(&node.config.allowed_origins, &node.config.public_hosts, node.config.dev, origin) {
            node.metrics.refused("origin");
            node.metrics.auth_failure("origin");
            let origin = origin.to_str().unwrap_or("(not text)");
            tracing::info!(origin, %client, "WebSocket refused: origin not allowed");
            return (StatusCode::FORBIDDEN, format!("the page's origin {origin} may not open WebSockets here; add it to allowed_origins\n"))
                .into_response();
        }
    }
    let offered: Vec<&str> =
        headers.get_all("sec-websocket-protocol").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
    let Some(serialization) = offered.iter().find_map(|p| Serialization::from_subprotocol(p)) else {
        node.metrics.refused("subprotocol");
        let msg = format!(
            "Telegraphy speaks WAMP v2: offer the WebSocket subprotocol wamp.2.json or wamp.2.msgpack \
             (Sec-WebSocket-Protocol header); offered: {}\n",
            if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
        );
        return (StatusCode::BAD_REQUEST, msg).into_response();
    };
    if !ticket.has_slot() {
        node.metrics.refused("max_connections");
        return (StatusCode::SERVICE_UNAVAILABLE, "this gateway node is at its connection limit; retry later or connect to another node\n")
            .into_response();
    };
    let Some(pending) = node.admission.take_handshake() else {
        node.metrics.refused("pending_handshakes");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many WebSockets are still authenticating here; retry later\n").into_response();
    };
    let Some(per_ip) = node.admission.take_websocket_for(client) else {
        node.metrics.refused("per_ip");
        return (StatusCode::TOO_MANY_REQUESTS, "too many WebSockets from your address\n").into_response();
    };
    let limits = &node.config.limits;
    let mut ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limits.max_message_size)
        .max_frame_size(limits.max_message_size)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"));
    ws.set_selected_protocol(HeaderValue::from_static(serialization.subprotocol()));
    let tracker = node.lifecycle.sessions.clone();
    let guards = Guards { ticket, pending: Some(pending), _per_ip: per_ip };
    ws.on_upgrade(move |socket| tracker.track_future(run(node, socket, wire, serialization, client, guards)))
}

/// Whether a browser page from `origin` may open a WebSocket: listed in
/// `allowed`, `*` listed, served from one of the gateway's `public_hosts`,
/// or (in dev mode) from a loopback host. The request's `Host` header is not
/// consulted: a DNS-rebinding page controls it.
pub fn origin_allowed(allowed: &[String], public_hosts: &[String], dev: bool, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") || host.contains('/') {
        return false;
    }
    if public_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return true;
    }
    dev && matches!(without_port(host).to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

/// `host:port` without its port (`[::1]:8080` → `[::1]`).
fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// Slots a connection holds while it lives.
struct Guards {
    /// Its admission slot (shed while unauthenticated, trusted at WELCOME).
    ticket: Arc<Ticket>,
    /// Released once the session is established (or the connection ends).
    pending: Option<HandshakeSlot>,
    _per_ip: WebSocketSlot,
}

/// Runs one connection to its end, in one task: reading and handling
/// frames, writing what the kernel did not take at once, pings, and the
/// hello, idle and token deadlines. One task (not a reader and a writer)
/// because every idle connection pays for each task and its timers.
async fn run(node: Arc<Node>, mut socket: WebSocket, wire: Arc<Wire>, serialization: Serialization, client: IpAddr, mut guards: Guards) {
    // Counted by a guard, so that the gauge comes back on every way out,
    // a panic included.
    let _open = OpenConnection::count(&node);
    let limits = &node.config.limits;
    let outbox = Outbox::new(wire, serialization.index(), limits.outbound_queue_messages, limits.outbound_queue_bytes, node.metrics.clone());
    let handle = Arc::new(SessionHandle { id: secure_random_id(), serialization, identity: OnceLock::new(), outbox, client: Some(client) });
    let mut session = Session::new(node.clone(), handle.clone());
    let ended = serve(&node, &handle, &mut session, &mut socket, &mut guards).await;
    session.cleanup();
    drop(session);
    // Shed to make room: the socket is closed at once, without a word
    // (dropped with the task). Otherwise the close handshake, boxed like the
    // other once-per-connection work: it would otherwise take room in every
    // idle connection's task.
    if let End::Close { peer_closed } = ended {
        Box::pin(close_connection(&node, &handle, &mut socket, peer_closed)).await;
    }
}

/// One open WebSocket in `telegraphy_connections`, for as long as it lives.
struct OpenConnection<'a>(&'a Node);

impl<'a> OpenConnection<'a> {
    fn count(node: &'a Node) -> OpenConnection<'a> {
        node.metrics.connections.inc();
        OpenConnection(node)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// How [`serve`] ended.
enum End {
    /// The session closes: with a close handshake unless the peer closed
    /// (or vanished) already.
    Close { peer_closed: bool },
    /// The connection was shed before it authenticated.
    Shed,
}

/// When the connection's one timer must next fire: the hello or idle
/// deadline, the token's expiry, or the next ping.
struct Deadlines {
    /// Hello deadline until WELCOME, then the idle deadline (pushed back by
    /// every frame received).
    silence: Instant,
    next_ping: Instant,
}

impl Deadlines {
    fn earliest(&self, session: &Session) -> Instant {
        let t = self.silence.min(self.next_ping);
        session.expires_at().map_or(t, |e| e.min(t))
    }
}

/// What woke the connection's task.
enum Wake {
    Outbox(Ended),
    Shutdown,
    Timer,
    Shed,
    Frame(Option<Result<WsMessage, axum::Error>>),
}

/// Serves the session until it must close.
async fn serve(node: &Node, handle: &SessionHandle, session: &mut Session, socket: &mut WebSocket, guards: &mut Guards) -> End {
    let ticket = guards.ticket.clone();
    let limits = &node.config.limits;
    let now = Instant::now();
    let mut due = Deadlines { silence: now + limits.handshake_timeout, next_ping: now + limits.ping_interval };
    // One timer for every deadline. It is re-armed lazily: pushing a
    // deadline back (every frame received) leaves it alone; when it fires
    // early, it is armed again for what is due then.
    let mut armed = due.earliest(session);
    let timer = sleep_until(armed);
    tokio::pin!(timer);
    let mut draining = false;
    loop {
        // Not biased: a session busy receiving events still reads what its
        // client sends (and the other way round).
        let wake = tokio::select! {
            ended = handle.outbox.serve_writes() => Wake::Outbox(ended),
            _ = node.lifecycle.shutdown.cancelled(), if !draining => Wake::Shutdown,
            _ = &mut timer => Wake::Timer,
            _ = ticket.shed(), if guards.pending.is_some() => Wake::Shed,
            frame = socket.next() => Wake::Frame(frame),
        };
        let flow = match wake {
            Wake::Shed => return End::Shed,
            Wake::Outbox(Ended::Closing) => return End::Close { peer_closed: false },
            Wake::Outbox(Ended::Failed(e)) => {
                tracing::debug!(error = %e, "writing to the client failed; closing");
                handle.outbox.close(close::NORMAL);
                return End::Close { peer_closed: true };
            }
            Wake::Shutdown => {
                draining = true;
                session.shutdown()
            }
            Wake::Timer => on_timer(node, session, &mut due, handle.outbox.is_backed_up()),
            Wake::Frame(None) => {
                handle.outbox.close(close::NORMAL);
                return End::Close { peer_closed: true };
            }
            Wake::Frame(Some(Err(e))) => read_error(session, e),
            Wake::Frame(Some(Ok(frame))) => {
                if session.is_established() {
                    due.silence = Instant::now() + limits.idle_timeout;
                }
                match frame {
                    WsMessage::Text(t) if !handle.serialization.is_binary() => on_payload(node, handle, session, t.as_bytes(), &mut due).await,
                    WsMessage::Binary(b) if handle.serialization.is_binary() => on_payload(node, handle, session, &b, &mut due).await,
                    WsMessage::Text(_) | WsMessage::Binary(_) => {
                        let msg = if handle.serialization.is_binary() {
                            "text frame on a wamp.2.msgpack session; send msgpack in binary frames"
                        } else {
                            "binary frame on a wamp.2.json session; send JSON in text frames"
                        };
                        match session.violation(Violation::WrongFrameType, msg) {
                            Flow::Close(_) => Flow::Close(close::UNSUPPORTED_DATA),
                            f => f,
                        }
                    }
                    WsMessage::Close(_) => {
                        handle.outbox.close(close::NORMAL);
                        return End::Close { peer_closed: true };
                    }
                    WsMessage::Ping(_) | WsMessage::Pong(_) => Flow::Continue,
                }
            }
        };
        if guards.pending.is_some() && session.is_established() {
            // Authenticated: no longer counts against max_pending_handshakes,
            // and no longer shed to make room.
            guards.pending.take();
            ticket.trust();
        }
        if let Flow::Close(code) = flow {
            handle.outbox.close(code);
            return End::Close { peer_closed: false };
        }
        let next = due.earliest(session);
        if next < armed || timer.is_elapsed() {
            armed = next;
            timer.as_mut().reset(armed);
        }
    }
}

/// The timer fired: closes the session whose token expired or that stayed
/// silent too long, sends a ping when one is due (not while writes are
/// backed up: the peer is not reading anyway).
fn on_timer(node: &Node, session: &mut Session, due: &mut Deadlines, backed_up: bool) -> Flow {
    let now = Instant::now();
    if session.expires_at().is_some_and(|e| e <= now) {
        return session.expire();
    }
    if due.silence <= now {
        if session.is_established() {
            session.abort(err::IDLE_TIMEOUT, "nothing received within the idle timeout");
            return Flow::Close(close::IDLE_TIMEOUT);
        }
        node.metrics.violation(Violation::HelloTimeout);
        session.abort(err::HELLO_TIMEOUT, "the handshake (HELLO, then authentication) did not finish in time after the WebSocket opened");
        return Flow::Close(close::HELLO_TIMEOUT);
    }
    if due.next_ping <= now {
        if !backed_up {
            session.send_ping();
        }
        due.next_ping = now + node.config.limits.ping_interval;
    }
    Flow::Continue
}

/// One WAMP payload: counted, handled, and the idle deadline pushed back.
async fn on_payload(node: &Node, handle: &SessionHandle, session: &mut Session, payload: &[u8], due: &mut Deadlines) -> Flow {
    let si = handle.serialization.index();
    node.metrics.messages_in[si].inc();
    node.metrics.bytes_in[si].inc_by(payload.len() as u64);
    // Boxed: the handler's future is large and lives only while a message is
    // handled, so it should not sit inside every idle connection's task.
    let flow = Box::pin(session.handle_payload(payload)).await;
    if session.is_established() {
        due.silence = Instant::now() + node.config.limits.idle_timeout;
    }
    flow
}

fn read_error(session: &mut Session, e: axum::Error) -> Flow {
    match e.into_inner().downcast::<tungstenite::Error>().map(|b| *b) {
        Ok(tungstenite::Error::Capacity(c)) => {
            session.abort(err::MESSAGE_TOO_BIG, &format!("message too big: {c}"));
            session.count_violation(Violation::TooBig);
            Flow::Close(close::MESSAGE_TOO_BIG)
        }
        Ok(tungstenite::Error::Utf8(_)) => {
            session.count_violation(Violation::Malformed);
            session.abort(err::PROTOCOL_VIOLATION, "text frame is not valid UTF-8");
            Flow::Close(close::INVALID_PAYLOAD)
        }
        Ok(other) => {
            tracing::debug!(error = %other, "WebSocket read error; closing");
            session.cleanup();
            Flow::Close(close::PROTOCOL_ERROR)
        }
        Err(other) => {
            tracing::debug!(error = %other, "connection error; closing");
            session.cleanup();
            Flow::Close(close::PROTOCOL_ERROR)
        }
    }
}

/// The end of a connection: what is still queued (not for a slow consumer:
/// that is the problem), the session's last words and the close frame;
/// then, unless the peer already closed, its close reply (or the socket's
/// end) is awaited. Each step is bounded in time.
async fn close_connection(node: &Node, handle: &SessionHandle, socket: &mut WebSocket, peer_closed: bool) {
    let code = handle.outbox.close_code().unwrap_or(close::NORMAL);
    tracing::debug!(session = handle.id, code, reason = close_reason(code), "connection closing");
    let flush_timeout = if code == close::SLOW_CONSUMER { SLOW_CONSUMER_CLOSE_TIMEOUT } else { CLOSE_FLUSH_TIMEOUT };
    // Pushes are refused from now on (the outbox is closing).
    let finished = tokio::time::timeout(flush_timeout, async {
        handle.outbox.finish().await.map_err(axum::Error::new)?;
        match socket.send(WsMessage::Close(Some(CloseFrame { code, reason: close_reason(code).into() }))).await {
            // The client closed first: tungstenite answered its close frame
            // with its own; writing that answer out is the close.
            Err(e) if closing_already(&e) => futures_util::SinkExt::flush(socket).await,
            other => other,
        }
    })
    .await;
    // Counted as sent only once the kernel took the close frame.
    let sent = matches!(finished, Ok(Ok(())));
    node.metrics.disconnect(code, sent);
    if !sent {
        tracing::debug!(session = handle.id, code, "the close frame could not be written (the client is gone or not reading)");
        handle.outbox.abandon();
    }
    if !peer_closed && sent {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async { while let Some(Ok(_)) = socket.next().await {} }).await;
    }
}

/// Whether a send failed because the close handshake was already under way
/// (the client's close frame was received and answered).
fn closing_already(e: &axum::Error) -> bool {
    let inner: &(dyn std::error::Error + 'static) = e;
    let mut source = Some(inner);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing));
        }
        source = err.source();
    }
    false
}

/// The reason text sent with each close code (`docs/protocol.md`).
pub(crate) fn close_reason(code: u16) -> &'static str {
    match code {
        close::NORMAL => "normal closure",
        close::PROTOCOL_ERROR => "WAMP protocol violation",
        close::UNSUPPORTED_DATA => "wrong frame type for the negotiated serializer",
        close::INVALID_PAYLOAD => "text frame is not valid UTF-8",
        close::MESSAGE_TOO_BIG => "message too big",
        close::SERVICE_RESTART => "gateway node restarting: reconnect to another node",
        close::SLOW_CONSUMER => "slow consumer: outbound queue full, reconnect",
        close::IDLE_TIMEOUT => "idle timeout, reconnect",
        close::HELLO_TIMEOUT => "handshake (HELLO, authentication) not finished in time",
        close::TOKEN_EXPIRED => "token expired: reconnect with a fresh token",
        close::AUTH_FAILED => "authentication failed",
        _ => "",
    }
}
