//! A small WebSocket client made for load generation: one socket, one read
//! buffer, frames parsed in place, no task or allocation per message.
//!
//! Client frames are masked (with a zero key, which RFC 6455 allows and
//! every server must unmask anyway); server frames are never masked.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where a router listens: `ws://HOST:PORT/PATH`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The socket address (numeric host only: this is a loopback benchmark).
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The request path, e.g. `/ws`.
    pub path: String,
}

impl Target {
    /// Parses `ws://127.0.0.1:8080/ws`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("ws://").context("only ws:// URLs are supported (loopback benchmarks)")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let host = host.replace("localhost", "127.0.0.1");
        let addr: SocketAddr = host.parse().with_context(|| format!("`{host}` is not IP:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("the benchmark only targets loopback addresses (127.0.0.0/8), not {addr}");
        }
        Ok(Target { addr, host, path: path.to_string() })
    }
}

/// Frame opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0;
    /// Text.
    pub const TEXT: u8 = 1;
    /// Binary.
    pub const BINARY: u8 = 2;
    /// Close.
    pub const CLOSE: u8 = 8;
    /// Ping.
    pub const PING: u8 = 9;
    /// Pong.
    pub const PONG: u8 = 10;
}

/// A client WebSocket connection.
pub struct Ws {
    stream: TcpStream,
    rbuf: Vec<u8>,
    /// Parsed up to here.
    rpos: usize,
    /// A fragmented message being assembled (rare: our peers do not fragment).
    partial: Option<(u8, Vec<u8>)>,
    /// Control replies (pongs) to send after parsing.
    pending_out: Vec<u8>,
    /// Whether the server sent a close frame.
    pub closed: bool,
}

/// Opens a TCP connection from `source` (any 127.0.0.x) and upgrades it.
pub async fn connect(target: &Target, source: Option<IpAddr>, subprotocol: &str) -> anyhow::Result<Ws> {
    let stream = match source {
        None => TcpSocket::new_v4()?.connect(target.addr).await.with_context(|| format!("connect {}", target.addr))?,
        Some(ip) => connect_from(ip, target.addr).await?,
    };
    stream.set_nodelay(true)?;
    let key = {
        use base64_lite::encode;
        let raw: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        encode(&raw)
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
        target.path, target.host
    );
    let mut ws = Ws { stream, rbuf: Vec::with_capacity(4096), rpos: 0, partial: None, pending_out: Vec::new(), closed: false };
    ws.stream.write_all(req.as_bytes()).await?;
    loop {
        if let Some(end) = find(&ws.rbuf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&ws.rbuf[..end]).unwrap_or("");
            let status = head.lines().next().unwrap_or("");
            if !status.starts_with("HTTP/1.1 101") {
                bail!("upgrade refused: {status}");
            }
            ws.rpos = end + 4;
            break;
        }
        if ws.rbuf.len() > 16384 {
            bail!("no end of HTTP response headers");
        }
        if ws.read_more().await? == 0 {
            bail!("connection closed during the upgrade");
        }
    }
    Ok(ws)
}

/// Source ports handed out round-robin, below the kernel's ephemeral range
/// (32768–60999), so they never collide with ports the kernel picks for
/// listeners and other programs.
const SOURCE_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// Connects from `ip` and a port of our own choosing. Letting the kernel
/// pick (`bind(ip:0)`) costs a scan of its port table per socket, which
/// grows with every socket still in TIME_WAIT from the previous run: after
/// a few 10,000-session runs the load generator spent both cores in there.
async fn connect_from(ip: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: std::sync::OnceLock<AtomicUsize> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicUsize::new(fastrand::usize(..)));
    let span = SOURCE_PORTS.len();
    let mut last_error = None;
    for _ in 0..256 {
        let port = SOURCE_PORTS.start + (next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let socket = TcpSocket::new_v4()?;
        // A port whose last connection is in TIME_WAIT can be bound again (the
        // 4-tuple differs: each run's router listens on a fresh port).
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(SocketAddr::new(ip, port)) {
            last_error = Some(anyhow::Error::from(e).context(format!("bind {ip}:{port}")));
            continue;
        }
        match socket.connect(to).await {
            Ok(stream) => return Ok(stream),
            // This 4-tuple is still in TIME_WAIT, or taken: next port.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable) => {
                last_error = Some(anyhow::Error::from(e).context(format!("connect {ip}:{port} → {to}")));
            }
            Err(e) => return Err(anyhow::Error::from(e).context(format!("connect {to}"))),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free source port on {ip}")))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Ws {
    /// Reads whatever the socket has (at least one byte, or 0 at EOF).
    pub async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 && self.rbuf.capacity() - self.rbuf.len() < 2048 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 2048 {
            self.rbuf.reserve(self.rbuf.capacity().max(4096));
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Calls `f(opcode, payload)` for every complete data message in the
    /// buffer; answers pings. Returns the number of data messages.
    pub fn parse(&mut self, mut f: impl FnMut(u8, &[u8])) -> anyhow::Result<usize> {
        let mut n = 0;
        loop {
            let buf = &self.rbuf[self.rpos..];
            if buf.len() < 2 {
                break;
            }
            let fin = buf[0] & 0x80 != 0;
            let opcode = buf[0] & 0x0f;
            let masked = buf[1] & 0x80 != 0;
            let (len, mut hdr) = match buf[1] & 0x7f {
                126 => {
                    if buf.len() < 4 {
                        break;
                    }
                    (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
                }
                127 => {
                    if buf.len() < 10 {
                        break;
                    }
                    (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10)
                }
                l => (l as usize, 2),
            };
            if masked {
                bail!("the server sent a masked frame");
            }
            if buf.len() < hdr + len {
                break;
            }
            let payload = &buf[hdr..hdr + len];
            hdr += len;
            match opcode {
                op::TEXT | op::BINARY if fin => {
                    f(opcode, payload);
                    n += 1;
                }
                op::TEXT | op::BINARY => self.partial = Some((opcode, payload.to_vec())),
                op::CONT => {
                    if let Some((_, data)) = &mut self.partial {
                        data.extend_from_slice(payload);
                    }
                    if fin {
                        if let Some((o, data)) = self.partial.take() {
                            f(o, &data);
                            n += 1;
                        }
                    }
                }
                op::PING => {
                    let p = payload.to_vec();
                    frame_into(&mut self.pending_out, op::PONG, &p);
                }
                op::CLOSE => self.closed = true,
                _ => {}
            }
            self.rpos += hdr;
        }
        Ok(n)
    }

    /// Sends queued control replies (pongs), if any.
    pub async fn flush_control(&mut self) -> std::io::Result<()> {
        if !self.pending_out.is_empty() {
            let out = std::mem::take(&mut self.pending_out);
            self.stream.write_all(&out).await?;
        }
        Ok(())
    }

    /// Sends one data message.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut out = std::mem::take(&mut self.pending_out);
        frame_into(&mut out, opcode, payload);
        let r = self.stream.write_all(&out).await;
        out.clear();
        self.pending_out = out;
        r
    }

    /// Sends pre-framed bytes (one or many frames built with [`frame_into`]).
    pub async fn send_raw(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.flush_control().await?;
        self.stream.write_all(frames).await
    }

    /// Waits for the next complete data message and returns a copy of it
    /// (for the handshake and setup; the hot path uses [`Ws::parse`]).
    pub async fn next_message(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            while let Some((opcode, start, end, fin)) = peek_frame(&self.rbuf[self.rpos..])? {
                let payload = self.rbuf[self.rpos + start..self.rpos + end].to_vec();
                self.rpos += end;
                match opcode {
                    op::TEXT | op::BINARY if fin => {
                        self.flush_control().await?;
                        return Ok((opcode, payload));
                    }
                    op::PING => frame_into(&mut self.pending_out, op::PONG, &payload),
                    op::CLOSE => self.closed = true,
                    op::PONG => {}
                    _ => bail!("fragmented messages are not supported during setup"),
                }
            }
            self.flush_control().await?;
            if self.closed {
                bail!("the server closed the WebSocket");
            }
            if self.read_more().await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

/// (opcode, payload start, frame end, fin) of the first complete frame.
fn peek_frame(buf: &[u8]) -> anyhow::Result<Option<(u8, usize, usize, bool)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (len, hdr) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
        126 | 127 => return Ok(None),
        l => (l as usize, 2),
    };
    if buf[1] & 0x80 != 0 {
        bail!("the server sent a masked frame");
    }
    if buf.len() < hdr + len {
        return Ok(None);
    }
    Ok(Some((buf[0] & 0x0f, hdr, hdr + len, buf[0] & 0x80 != 0)))
}

/// Appends one client frame (masked with a zero key) to `out`.
pub fn frame_into(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Base64 for the 16-byte handshake key (no dependency needed for that).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(data: &[u8]) -> String {
        let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            s.push(T[(n >> 18) as usize & 63] as char);
            s.push(T[(n >> 12) as usize & 63] as char);
            s.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
            s.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
        }
        s
    }

    #[cfg(test)]
    #[test]
    fn known_values() {
        assert_eq!(encode(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(encode(b"ab"), "YWI=");
    }
}
