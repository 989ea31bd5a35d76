//! The socket of one client connection, shared by everything that writes to it.
//!
//! hyper reads requests from it and writes responses; after a WebSocket
//! upgrade, tungstenite reads the client's frames from it (and answers its
//! pings), and the gateway writes its own messages to it, framed once per
//! event and serializer ([`data_frame`]) and shared by every subscriber.
//!
//! Who writes a frame ([`When`]): the session's replies are written by the
//! caller at once (plain TCP, nothing waiting): one lock and one `send`, no
//! task woken. Events of subscriptions with few local subscribers are
//! queued by the fan-out and written by it once its batch of events is
//! done ([`Wire::flush`]): one `writev` per session per batch. Events of
//! large subscriptions are written by the write shards
//! ([`crate::outbox::WriteShards`]), one per core, each for its part of the
//! sessions: at once when a shard has one event to write
//! ([`Wire::send_first`]), else queued and written once per session. Over
//! TLS everything is queued for the connection's task (which encrypts).
//! What the kernel does not take at once is queued too, and the task
//! writes it, in one `writev`, when the socket is writable again.
//! (`docs/benchmarks.md` has the figures behind this split.)
//!
//! Order is kept by one rule under one lock: while earlier bytes wait, new
//! bytes wait behind them, whoever writes them. The queue's limits are the
//! caller's ([`crate::outbox`]); this module only keeps the bytes in order.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;

/// At most this many queued frames go into one vectored write.
const MAX_IOVECS: usize = 64;

/// What the connection runs over. Plain TCP is read without the queue's
/// lock: tokio's `TcpStream` reads and writes through `&self`, so the
/// connection's task reading never waits for the fan-out writing. A TLS
/// stream is one state machine for both directions, behind its own lock.
enum Io {
    Tcp(TcpStream),
    /// Boxed: a TLS stream is over a kilobyte, a plain connection's wire
    /// should not pay for it.
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
}

impl Io {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                match tcp.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    // Readiness was stale (and is now cleared): wait again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Io::Tls(t) => Pin::new(&mut *lock(t)).poll_read(cx, buf),
        }
    }

    fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write_vectored(bufs) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            Io::Tls(t) => Pin::new(&mut *lock(t)).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(_) => Poll::Ready(Ok(())),
            Io::Tls(t) => Pin::new(&mut *lock(t)).poll_flush(cx),
        }
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp(tcp) => Poll::Ready(match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            }),
            Io::Tls(t) => Pin::new(&mut *lock(t)).poll_shutdown(cx),
        }
    }
}

/// Locks, whether or not another holder panicked (the state stays usable:
/// every holder leaves it consistent between calls).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes waiting to be written, behind the wire's lock.
struct Queue {
    /// Bytes accepted but not yet taken by the kernel, in order. The front
    /// may be the rest of a partly written frame.
    pending: VecDeque<Chunk>,
    /// Their total size.
    pending_bytes: usize,
    /// Whether the front of `pending` was partly written already (it must
    /// then be finished, or the client would see a torn frame).
    front_started: bool,
    /// Whether a [`Wire::flush`] is promised (the wire was handed to a
    /// fan-out's flush list and not flushed since): a wire is on at most
    /// one list at a time, so those lists never hold more entries than
    /// there are sessions.
    listed: bool,
}

/// A frame that many sessions are sent (an EVENT of a fan-out): cloned
/// once per delivery, so an `Arc` (one atomic add) rather than `Bytes`
/// (a call through its vtable, twice as many instructions with the drop).
pub(crate) type SharedFrame = Arc<Bytes>;

/// One queued frame, or the rest of one.
enum Chunk {
    Shared(SharedFrame),
    Own(Bytes),
}

impl Chunk {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Own(b) => b,
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// What is left after the first `n` bytes were written.
    fn rest(&self, n: usize) -> Chunk {
        match self {
            Chunk::Shared(b) => Chunk::Own(b.slice(n..)),
            Chunk::Own(b) => Chunk::Own(b.slice(n..)),
        }
    }
}

/// The shared socket of one client connection.
pub struct Wire {
    io: Io,
    /// parking_lot's: taken once per delivery, and it has no poisoning to
    /// check (nothing panics while holding it).
    queue: parking_lot::Mutex<Queue>,
    /// Wakes the connection's task: bytes are waiting to be written, or
    /// (through [`crate::outbox::Outbox::close`]) the session must close.
    /// One waiter; `notify_one` keeps the wake-up if the task is busy.
    wake: Notify,
}

/// Who writes a frame that [`Wire::send`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// The caller, now, if nothing waits before the frame and the kernel
    /// takes it (plain TCP).
    Now,
    /// The connection's task: the frame is queued and the task woken.
    Task,
}

/// What [`Wire::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The kernel took all of it.
    Written,
    /// It waits in the queue; the connection's task writes it.
    Queued,
    /// ([`Wire::send_later`]) No flush was promised yet: the caller must
    /// see that the wire is [`Wire::flush`]ed.
    Deferred,
    /// The queue was at its limit: the frame was dropped.
    Full,
}

impl Wire {
    /// A plain TCP connection.
    pub fn tcp(tcp: TcpStream) -> Arc<Wire> {
        Wire::new(Io::Tcp(tcp))
    }

    /// A TLS connection (handshake done).
    pub(crate) fn tls(stream: TlsStream<TcpStream>) -> Arc<Wire> {
        Wire::new(Io::Tls(Box::new(Mutex::new(stream))))
    }

    fn new(io: Io) -> Arc<Wire> {
        Arc::new(Wire {
            io,
            queue: parking_lot::Mutex::new(Queue { pending: VecDeque::new(), pending_bytes: 0, front_started: false, listed: false }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Queue> {
        self.queue.lock()
    }

    /// The handle hyper and tungstenite read and write through.
    pub(crate) fn io(self: &Arc<Self>) -> WireIo {
        WireIo(self.clone())
    }

    /// Sends a complete frame, or queues it behind earlier bytes, unless
    /// the queue already holds `max_frames` frames or adding it would pass
    /// `max_bytes`. With `When::Now` on plain TCP and nothing waiting, it
    /// is written at once; over TLS frames are always queued for the
    /// connection's task (which encrypts).
    pub(crate) fn send(&self, frame: &Bytes, max_frames: usize, max_bytes: usize, when: When) -> Sent {
        match when {
            When::Now => self.send_now(frame, max_frames, max_bytes),
            When::Task => {
                let mut inner = self.lock();
                if !inner.has_room(frame.len(), max_frames, max_bytes) {
                    return Sent::Full;
                }
                self.queue(&mut inner, frame.clone(), false);
                Sent::Queued
            }
        }
    }

    fn send_now(&self, frame: &Bytes, max_frames: usize, max_bytes: usize) -> Sent {
        let mut inner = self.lock();
        if let (true, Io::Tcp(tcp)) = (inner.pending.is_empty(), &self.io) {
            match tcp.try_write(frame) {
                Ok(n) if n == frame.len() => return Sent::Written,
                // The rest must follow, whatever the limits say.
                Ok(n) => {
                    self.queue(&mut inner, frame.slice(n..), true);
                    return Sent::Queued;
                }
                // Full kernel buffer, or a broken connection: queued either
                // way; the task's write finds the error.
                Err(_) => {}
            }
        }
        if !inner.has_room(frame.len(), max_frames, max_bytes) {
            return Sent::Full;
        }
        self.queue(&mut inner, frame.clone(), false);
        Sent::Queued
    }

    /// The fan-out's path: queues the frame without waking the task; the
    /// caller promises a [`Wire::flush`] when told to ([`Sent::Deferred`]):
    /// the fan-out flushes once per batch of events, so a session gets a
    /// batch's events in one write. Runs once per delivery and is kept
    /// small (the instruction budgets in `bench/instructions` watch it).
    #[inline]
    pub(crate) fn send_later(&self, frame: &SharedFrame, max_frames: usize, max_bytes: usize) -> Sent {
        self.lock().queue_later(frame, max_frames, max_bytes)
    }

    /// A write shard's path for a session of a fan-out it walks alone: when
    /// nothing waits and the connection is plain TCP, the frame is written
    /// now, as the ceiling program would; otherwise as [`Wire::send_later`].
    /// Inlined into the shard's loop, with everything but the whole write
    /// out of line.
    #[inline(always)]
    pub(crate) fn send_first(&self, frame: &SharedFrame, max_frames: usize, max_bytes: usize) -> Sent {
        let mut inner = self.lock();
        if let (true, Io::Tcp(tcp)) = (inner.pending.is_empty(), &self.io) {
            let written = tcp.try_write(frame);
            if matches!(written, Ok(n) if n == frame.len()) {
                return Sent::Written;
            }
            return self.not_written_whole(&mut inner, frame, written, max_frames, max_bytes);
        }
        inner.queue_later(frame, max_frames, max_bytes)
    }

    /// [`Wire::send_first`]'s write that the kernel cut short or refused.
    #[cold]
    #[inline(never)]
    fn not_written_whole(&self, inner: &mut Queue, frame: &SharedFrame, written: io::Result<usize>, max_frames: usize, max_bytes: usize) -> Sent {
        match written {
            // The rest must follow, whatever the limits say.
            Ok(n) if n > 0 => {
                self.queue(inner, frame.slice(n..), true);
                Sent::Queued
            }
            // Full kernel buffer, or a broken connection: queued either
            // way; the task's write finds the error.
            _ => inner.queue_later(frame, max_frames, max_bytes),
        }
    }

    /// Writes what is queued, as far as the kernel takes it without
    /// waiting (plain TCP, vectored writes), and wakes the connection's
    /// task for the rest (and always over TLS). Called after frames were
    /// sent with [`Wire::send_later`].
    pub(crate) fn flush(&self) {
        let mut inner = self.lock();
        inner.listed = false;
        self.write_out(&mut inner);
    }

    /// Writes what is queued as far as the kernel takes it now (plain
    /// TCP) and wakes the connection's task for the rest (and always over
    /// TLS): a full kernel buffer or a broken connection is the task's to
    /// wait for or to find.
    #[inline]
    fn write_out(&self, inner: &mut Queue) {
        if let Io::Tcp(tcp) = &self.io {
            while !inner.pending.is_empty() {
                if !inner.try_write(tcp) {
                    break;
                }
            }
        }
        if !inner.pending.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Queues `frame` whatever the limits (the session's last words).
    pub(crate) fn push_unbounded(&self, frame: Bytes) {
        let mut inner = self.lock();
        self.queue(&mut inner, frame, false);
    }

    fn queue(&self, inner: &mut Queue, bytes: Bytes, started: bool) {
        let was_empty = inner.pending.is_empty();
        inner.pending_bytes += bytes.len();
        inner.pending.push_back(Chunk::Own(bytes));
        if was_empty {
            inner.front_started = started;
            self.wake.notify_one();
        }
    }

    /// Drops the queued frames the client has seen nothing of (a slow
    /// consumer's backlog); a partly written front frame is kept. Returns
    /// how many frames were dropped.
    pub(crate) fn discard_queued(&self) -> usize {
        let mut inner = self.lock();
        let keep = usize::from(inner.front_started);
        let dropped = inner.pending.len().saturating_sub(keep);
        inner.pending.truncate(keep);
        inner.front_started = keep == 1;
        inner.pending_bytes = inner.pending.iter().map(Chunk::len).sum();
        dropped
    }

    /// Drops everything queued, a partly written front frame included (the
    /// connection is given up); returns how many frames were dropped.
    pub(crate) fn discard_all(&self) -> usize {
        let mut inner = self.lock();
        let dropped = inner.pending.len();
        inner.pending.clear();
        inner.front_started = false;
        inner.pending_bytes = 0;
        dropped
    }

    /// How many frames wait in the queue (tests).
    #[cfg(test)]
    pub(crate) fn queued_frames(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether bytes are waiting for the socket to become writable.
    pub(crate) fn is_backed_up(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Writes out everything queued; resolves once the queue is empty.
    pub(crate) async fn drain(&self) -> io::Result<()> {
        poll_fn(|cx| self.lock().poll_drain(&self.io, cx)).await
    }

    /// Resolves on the next [`Wire::notify`] (or one that came while nobody
    /// waited).
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Wakes the connection's task.
    pub(crate) fn notify(&self) {
        self.wake.notify_one();
    }
}

impl Queue {
    /// [`Wire::send_later`] under the lock.
    #[inline]
    fn queue_later(&mut self, frame: &SharedFrame, max_frames: usize, max_bytes: usize) -> Sent {
        if !self.has_room(frame.len(), max_frames, max_bytes) {
            return Sent::Full;
        }
        if self.pending.is_empty() {
            self.front_started = false;
        }
        self.pending_bytes += frame.len();
        self.pending.push_back(Chunk::Shared(frame.clone()));
        if self.listed {
            // A flush is promised.
            Sent::Queued
        } else {
            self.listed = true;
            Sent::Deferred
        }
    }

    /// Whether `frame` fits within the limits.
    #[inline]
    fn has_room(&self, len: usize, max_frames: usize, max_bytes: usize) -> bool {
        self.pending.len() < max_frames && self.pending_bytes + len <= max_bytes
    }

    /// Writes what the kernel takes now (plain TCP); false when it took
    /// nothing. One frame (the fan-out's usual case) is written as it is;
    /// several in one vectored write.
    fn try_write(&mut self, tcp: &TcpStream) -> bool {
        let written = if self.pending.len() == 1 {
            let written = tcp.try_write(self.pending[0].bytes());
            if matches!(written, Ok(n) if n == self.pending_bytes) {
                // The fan-out's usual case, kept short: the frame went whole.
                self.pending.pop_front();
                self.pending_bytes = 0;
                self.front_started = false;
                return true;
            }
            written
        } else {
            self.try_write_vectored(tcp)
        };
        match written {
            Ok(n) if n > 0 => self.advance(n).is_ok(),
            _ => false,
        }
    }

    /// Kept out of line: its slice array would cost every caller of
    /// `try_write` its initialisation.
    #[inline(never)]
    fn try_write_vectored(&self, tcp: &TcpStream) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let k = gather(&self.pending, &mut slices);
        tcp.try_write_vectored(&slices[..k])
    }

    /// Writes queued bytes until none are left (then flushes TLS records).
    fn poll_drain(&mut self, io: &Io, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_pending(io, cx))?;
        io.poll_flush(cx)
    }

    fn poll_write_pending(&mut self, io: &Io, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let k = gather(&self.pending, &mut slices);
            let n = ready!(io.poll_write_vectored(cx, &slices[..k]))?;
            self.advance(n)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Drops the `n` bytes the kernel took from the front of the queue.
    fn advance(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n == self.pending_bytes {
            // All of it (the usual case): no frame to cut.
            if self.pending.len() == 1 {
                self.pending.pop_front();
            } else {
                self.pending.clear();
            }
            self.pending_bytes = 0;
            self.front_started = false;
            if self.pending.capacity() > 64 {
                self.pending = VecDeque::new();
            }
            return Ok(());
        }
        self.pending_bytes -= n;
        let mut left = n;
        while left > 0 {
            let front = self.pending.front_mut().expect("the kernel took no more than was queued");
            if left >= front.len() {
                left -= front.len();
                self.pending.pop_front();
                self.front_started = false;
            } else {
                *front = front.rest(left);
                self.front_started = true;
                left = 0;
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > 64 {
            // A burst is over: give its memory back.
            self.pending = VecDeque::new();
        }
        Ok(())
    }
}

/// The first queued frames, as slices for one vectored write.
fn gather<'a>(pending: &'a VecDeque<Chunk>, slices: &mut [IoSlice<'a>; MAX_IOVECS]) -> usize {
    let mut k = 0;
    for (slot, b) in slices.iter_mut().zip(pending) {
        *slot = IoSlice::new(b.bytes());
        k += 1;
    }
    k
}

/// The connection as hyper and tungstenite see it. Writes wait behind
/// whatever is queued in the [`Wire`], so they keep their place in order.
pub(crate) struct WireIo(Arc<Wire>);

impl AsyncRead for WireIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.0.io.poll_read(cx, buf)
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let wire = &self.0;
        let mut queue = wire.lock();
        ready!(queue.poll_write_pending(&wire.io, cx))?;
        wire.io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = &self.0;
        wire.lock().poll_drain(&wire.io, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let wire = &self.0;
        ready!(wire.lock().poll_drain(&wire.io, cx))?;
        wire.io.poll_shutdown(cx)
    }
}

/// One complete, unmasked WebSocket frame (server to client) carrying
/// `payload` as text or binary data.
pub fn data_frame(payload: impl Into<Bytes>, binary: bool) -> Bytes {
    let opcode = OpCode::Data(if binary { Data::Binary } else { Data::Text });
    format(Frame::message(payload, opcode, true))
}

/// Encodes a WAMP message into a complete WebSocket frame (text for JSON,
/// binary for msgpack), ready to be written to any session of that
/// serializer.
pub(crate) fn encode_frame<T: serde::Serialize + ?Sized>(s: telegraphy_wamp::Serialization, msg: &T) -> Option<Bytes> {
    match s.encode(msg) {
        // serde_json writes valid UTF-8, as a text frame must carry.
        Ok(payload) => Some(data_frame(payload, s.is_binary())),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a message; not sent");
            None
        }
    }
}

/// Reads one frame the gateway wrote (unmasked, under 64 KiB) from a test
/// client's socket and decodes its WAMP message.
#[cfg(test)]
pub(crate) async fn read_message(client: &mut TcpStream, ser: telegraphy_wamp::Serialization) -> telegraphy_wamp::Message {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    let mut len = usize::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        client.read_exact(&mut ext).await.unwrap();
        len = usize::from(u16::from_be_bytes(ext));
    }
    let mut payload = vec![0u8; len];
    client.read_exact(&mut payload).await.unwrap();
    ser.decode(&payload).unwrap()
}

/// A WebSocket ping frame with no payload.
pub(crate) fn ping_frame() -> Bytes {
    format(Frame::ping(Bytes::new()))
}

fn format(frame: Frame) -> Bytes {
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).expect("writing into a Vec cannot fail");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair over loopback: our wire, and the client's socket.
    async fn pair() -> (Arc<Wire>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Wire::tcp(server), client)
    }

    #[tokio::test]
    async fn a_shards_direct_write_the_kernel_refuses_is_queued_in_order() {
        let (wire, mut client) = pair().await;
        // The client reads nothing until the kernel refuses a frame; the
        // frames after it queue behind it (and the one cut short is finished).
        let mut sent = Vec::new();
        let mut deferred = 0;
        for i in 0..100_000u32 {
            let mut payload = vec![b'.'; 16 * 1024];
            payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
            let frame = Arc::new(data_frame(payload, false));
            match wire.send_first(&frame, usize::MAX, usize::MAX) {
                Sent::Written => {}
                Sent::Queued => {}
                Sent::Deferred => deferred += 1,
                Sent::Full => unreachable!("no limits"),
            }
            sent.extend_from_slice(&frame);
            if wire.is_backed_up() && i % 64 == 63 {
                break;
            }
        }
        assert!(wire.is_backed_up(), "1.6 GB fit in loopback buffers");
        assert!(deferred <= 1, "a flush is promised once, not per frame ({deferred})");
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; sent.len()];
            client.read_exact(&mut got).await.unwrap();
            got == sent
        });
        wire.flush();
        tokio::time::timeout(std::time::Duration::from_secs(20), wire.drain()).await.expect("the backlog drains").unwrap();
        assert!(tokio::time::timeout(std::time::Duration::from_secs(20), reader).await.unwrap().unwrap(), "bytes torn or out of order");
    }

    #[test]
    fn frames_are_what_a_client_parses() {
        let f = data_frame(b"[36,1,2,{}]".to_vec(), false);
        assert_eq!(&f[..2], &[0x81, 11]);
        assert_eq!(&f[2..], b"[36,1,2,{}]");
        let big = data_frame(vec![7; 300], true);
        assert_eq!(&big[..4], &[0x82, 126, 1, 44]);
        assert_eq!(big.len(), 304);
        assert_eq!(&ping_frame()[..], &[0x89, 0]);
    }

    #[tokio::test]
    async fn order_is_kept_when_the_kernel_buffer_fills() {
        let (wire, mut client) = pair().await;
        // The client does not read yet: sooner or later the kernel stops taking bytes.
        let frame = Bytes::from(vec![1u8; 64 * 1024]);
        let mut queued_at = None;
        for i in 0..1000u32 {
            let mut f = frame.to_vec();
            f[..4].copy_from_slice(&i.to_be_bytes());
            match wire.send(&Bytes::from(f), usize::MAX, usize::MAX, When::Now) {
                Sent::Written => {}
                Sent::Queued => {
                    queued_at.get_or_insert(i);
                }
                Sent::Full => unreachable!("no limits"),
                Sent::Deferred => unreachable!("only send_later and send_first defer"),
            }
        }
        let queued_at = queued_at.expect("64 MiB does not fit in loopback socket buffers");
        assert!(wire.is_backed_up());
        // Later writers (hyper, tungstenite) wait behind the queue.
        let mut io = wire.io();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            while all.len() < 1000 * 64 * 1024 + 3 {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed early");
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        let drain = wire.drain();
        let write = async {
            io.write_all(b"end").await.unwrap();
            io.flush().await.unwrap();
        };
        let within = std::time::Duration::from_secs(20);
        let (drained, ()) = tokio::time::timeout(within, async { tokio::join!(drain, write) }).await.expect("the backlog drains");
        drained.unwrap();
        assert!(!wire.is_backed_up());
        let all = tokio::time::timeout(within, reader).await.expect("the client reads it all").unwrap();
        for i in 0..1000usize {
            let at = i * 64 * 1024;
            assert_eq!(&all[at..at + 4], &(i as u32).to_be_bytes(), "frame {i} out of place (first queued: {queued_at})");
        }
        assert_eq!(&all[1000 * 64 * 1024..], b"end");
    }

    #[tokio::test]
    async fn deferred_frames_wait_for_the_flush_and_keep_their_order() {
        let (wire, mut client) = pair().await;
        let a = data_frame(b"[36,1,1,{}]".to_vec(), false);
        let b = data_frame(b"[36,1,2,{}]".to_vec(), false);
        let reply = data_frame(b"[17,5,9]".to_vec(), false);
        assert_eq!(wire.send_later(&Arc::new(a.clone()), 8, usize::MAX), Sent::Deferred, "the first deferred frame asks for a flush");
        assert_eq!(wire.send_later(&Arc::new(b.clone()), 8, usize::MAX), Sent::Queued, "later ones ride on the same flush");
        // A reply sent meanwhile waits behind them (order), without a write of its own.
        assert_eq!(wire.send(&reply, 8, usize::MAX, When::Now), Sent::Queued);
        assert!(wire.is_backed_up(), "nothing is written before the flush");
        wire.flush();
        assert!(!wire.is_backed_up(), "the kernel took all of it in the flush");
        let mut got = vec![0u8; a.len() + b.len() + reply.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [&a[..], &b[..], &reply[..]].concat());
        // Limits hold for deferred frames too.
        assert_eq!(wire.send_later(&Arc::new(a.clone()), 1, usize::MAX), Sent::Deferred);
        assert_eq!(wire.send_later(&Arc::new(b.clone()), 1, usize::MAX), Sent::Full);
        wire.flush();
    }

    #[tokio::test]
    async fn a_flush_the_kernel_cannot_take_wakes_the_task() {
        let (wire, _client) = pair().await;
        let frame = Bytes::from(vec![7u8; 256 * 1024]);
        // The client reads nothing: the socket buffers fill and the rest stays queued.
        for _ in 0..400 {
            wire.send_later(&Arc::new(frame.clone()), usize::MAX, usize::MAX);
        }
        wire.flush();
        assert!(wire.is_backed_up(), "100 MiB do not fit in loopback buffers");
        tokio::time::timeout(std::time::Duration::from_secs(5), wire.notified()).await.expect("the task is woken for the rest");
    }

    #[tokio::test]
    async fn frames_for_the_task_wait_for_it_within_the_limits() {
        let (wire, mut client) = pair().await;
        let frame = data_frame(b"[36,1,2,{}]".to_vec(), false);
        assert_eq!(wire.send(&frame, 2, usize::MAX, When::Task), Sent::Queued);
        assert!(wire.is_backed_up(), "not written by the caller");
        // Behind a queued frame, `Now` queues too (order).
        assert_eq!(wire.send(&frame, 2, usize::MAX, When::Now), Sent::Queued);
        assert_eq!(wire.send(&frame, 2, usize::MAX, When::Task), Sent::Full);
        tokio::time::timeout(std::time::Duration::from_secs(5), wire.notified()).await.expect("the task is woken");
        wire.drain().await.unwrap();
        let mut got = vec![0u8; 2 * frame.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [&frame[..], &frame[..]].concat());
        assert_eq!(wire.send(&frame, 2, usize::MAX, When::Now), Sent::Written);
    }

    #[tokio::test]
    async fn limits_refuse_whole_frames_and_discard_keeps_a_started_one() {
        let (wire, _client) = pair().await;
        let frame = Bytes::from(vec![0u8; 256 * 1024]);
        let mut sent = Vec::new();
        for _ in 0..400 {
            sent.push(wire.send(&frame, 3, usize::MAX, When::Now));
        }
        let queued = sent.iter().filter(|s| **s == Sent::Queued).count();
        assert!(queued <= 3, "{queued} queued past a limit of 3");
        assert!(sent.contains(&Sent::Full));
        wire.discard_queued();
        let inner = wire.lock();
        assert!(inner.pending.len() <= 1);
        assert_eq!(inner.pending.len(), usize::from(inner.front_started));
        assert_eq!(inner.pending_bytes, inner.pending.iter().map(Chunk::len).sum::<usize>());
    }
}
