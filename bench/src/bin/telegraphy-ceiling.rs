//! The fan-out ceiling: the least a WAMP broker must do, done as cheaply as
//! this machine allows, so that every router's figure can be read as a
//! fraction of it.
//!
//! It speaks just enough WAMP for the load generator (HELLO → WELCOME,
//! SUBSCRIBE → SUBSCRIBED, PUBLISH, GOODBYE; no auth, no checks). For each
//! read from a publisher it decodes the PUBLISH messages, encodes each EVENT
//! once per serializer, puts the frames of that read into one buffer, and
//! writes the very same bytes to every subscriber of the topic with a
//! direct non-blocking `send` from the fan-out loop (no task wake-up, no
//! copy, no per-subscriber encoding; the subscriber list is split across
//! the cores). Only a socket whose kernel buffer is full gets a queue and a
//! wake-up of its own task.
//!
//! `telegraphy-ceiling --listen 127.0.0.1:PORT`

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use telegraphy_wamp::{Dict, EventRef, Message, Serialization, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

struct Conn {
    stream: TcpStream,
    ser: Serialization,
    /// Bytes the kernel did not take yet (rare).
    pending: Mutex<VecDeque<Bytes>>,
    wake: Notify,
}

impl Conn {
    /// Writes `bytes` now if the socket takes them, else queues the rest.
    fn send(&self, bytes: &Bytes) {
        let mut pending = self.pending.lock().expect("pending");
        if pending.is_empty() {
            match self.stream.try_write(bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => pending.push_back(bytes.slice(n..)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => pending.push_back(bytes.clone()),
                Err(_) => return,
            }
        } else {
            pending.push_back(bytes.clone());
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Writes the queue out (called by the connection's own task).
    async fn flush(&self) -> std::io::Result<()> {
        loop {
            {
                let mut pending = self.pending.lock().expect("pending");
                while let Some(front) = pending.front_mut() {
                    match self.stream.try_write(front) {
                        Ok(n) if n == front.len() => {
                            pending.pop_front();
                        }
                        Ok(n) => {
                            *front = front.slice(n..);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if pending.is_empty() {
                    return Ok(());
                }
            }
            self.stream.writable().await?;
        }
    }
}

#[derive(Default)]
struct Topic {
    id: u64,
    subscribers: Vec<Arc<Conn>>,
}

#[derive(Default)]
struct Broker {
    topics: Mutex<HashMap<String, Topic>>,
    next_id: Mutex<u64>,
}

fn server_frame(out: &mut Vec<u8>, binary: bool, payload: &[u8]) {
    out.push(0x80 | if binary { 2 } else { 1 });
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

fn encode(ser: Serialization, msg: &impl serde::Serialize) -> Bytes {
    let payload = ser.encode(msg).expect("encodable");
    let mut out = Vec::with_capacity(payload.len() + 10);
    server_frame(&mut out, ser.is_binary(), &payload);
    out.into()
}

fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:8099".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_default().parse()?,
            "-h" | "--help" => {
                println!("telegraphy-ceiling --listen 127.0.0.1:PORT");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(listen.ip().is_loopback(), "loopback addresses only");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // The same backlog as the gateway's public listener.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(4096)?;
        eprintln!("telegraphy-ceiling listening on ws://{listen}/ws");
        let broker = Arc::new(Broker::default());
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let broker = broker.clone();
            tokio::spawn(async move {
                let _ = connection(broker, tcp).await;
            });
        }
    })
}

async fn connection(broker: Arc<Broker>, mut tcp: TcpStream) -> anyhow::Result<()> {
    // The HTTP upgrade.
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let end = loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        anyhow::ensure!(buf.len() < 16384, "headers too long");
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let key = header("sec-websocket-key").unwrap_or_default();
    let protocols = header("sec-websocket-protocol").unwrap_or_default();
    let ser = protocols.split(',').find_map(|p| Serialization::from_subprotocol(p.trim())).unwrap_or(Serialization::Json);
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    tcp.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
            ser.subprotocol()
        )
        .as_bytes(),
    )
    .await?;
    let conn = Arc::new(Conn { stream: tcp, ser, pending: Mutex::new(VecDeque::new()), wake: Notify::new() });
    let mut subscribed: Vec<String> = Vec::new();
    let result = serve(&broker, &conn, &mut buf, &mut subscribed).await;
    let mut topics = broker.topics.lock().expect("topics");
    for t in subscribed {
        if let Some(topic) = topics.get_mut(&t) {
            topic.subscribers.retain(|c| !Arc::ptr_eq(c, &conn));
        }
    }
    result
}

async fn serve(broker: &Arc<Broker>, conn: &Arc<Conn>, buf: &mut Vec<u8>, subscribed: &mut Vec<String>) -> anyhow::Result<()> {
    let ser = conn.ser;
    let mut publishes: Vec<(String, Vec<Value>)> = Vec::new();
    loop {
        // Parse every complete client frame in the buffer.
        let mut pos = 0;
        loop {
            let b = &buf[pos..];
            if b.len() < 2 {
                break;
            }
            let opcode = b[0] & 0x0f;
            let (len, hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?) as usize, 10),
                126 | 127 => break,
                l => (l as usize, 2),
            };
            let masked = b[1] & 0x80 != 0;
            let total = hdr + if masked { 4 } else { 0 } + len;
            if b.len() < total {
                break;
            }
            let mut payload = b[hdr + if masked { 4 } else { 0 }..total].to_vec();
            if masked {
                let m = [b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]];
                for (i, x) in payload.iter_mut().enumerate() {
                    *x ^= m[i & 3];
                }
            }
            pos += total;
            match opcode {
                8 => {
                    conn.send(&Bytes::from_static(&[0x88, 0x02, 0x03, 0xe8]));
                    let _ = conn.flush().await;
                    return Ok(());
                }
                9 => {
                    let mut out = Vec::new();
                    out.push(0x8a);
                    out.push(payload.len() as u8);
                    out.extend_from_slice(&payload);
                    conn.send(&out.into());
                }
                1 | 2 => match ser.decode(&payload) {
                    Ok(Message::Hello { .. }) => {
                        let mut roles = Dict::new();
                        roles.insert("broker".into(), Value::Dict(Dict::new()));
                        let mut details = Dict::new();
                        details.insert("roles".into(), Value::Dict(roles));
                        details.insert("authrole".into(), Value::Str("anonymous".into()));
                        conn.send(&encode(ser, &Message::Welcome { session: fastrand::u64(1..1 << 53), details }));
                    }
                    Ok(Message::Subscribe { request, topic, .. }) => {
                        let id = {
                            let mut topics = broker.topics.lock().expect("topics");
                            let entry = topics.entry(topic.clone()).or_default();
                            if entry.id == 0 {
                                let mut next = broker.next_id.lock().expect("ids");
                                *next += 1;
                                entry.id = *next;
                            }
                            entry.subscribers.push(conn.clone());
                            entry.id
                        };
                        subscribed.push(topic);
                        conn.send(&encode(ser, &Message::Subscribed { request, subscription: id }));
                    }
                    Ok(Message::Publish { topic, args, .. }) => publishes.push((topic, args)),
                    Ok(Message::Goodbye { .. }) => {
                        conn.send(&encode(ser, &Message::Goodbye { details: Dict::new(), reason: "wamp.close.goodbye_and_out".into() }));
                        let _ = conn.flush().await;
                        return Ok(());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        buf.drain(..pos);
        if !publishes.is_empty() {
            fan_out(broker, &mut publishes).await;
        }
        // Wait for more input, or for queued output to write.
        tokio::select! {
            r = conn.stream.readable() => {
                r?;
                let mut scratch = [0u8; 16384];
                match conn.stream.try_read(&mut scratch) {
                    Ok(0) => return Ok(()),
                    Ok(n) => buf.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ = conn.wake.notified() => {
                conn.flush().await?;
            }
        }
    }
}

/// Encodes each event once per serializer, batches the frames of one read
/// per topic, and writes the same bytes to every subscriber.
async fn fan_out(broker: &Arc<Broker>, publishes: &mut Vec<(String, Vec<Value>)>) {
    let mut by_topic: HashMap<String, Vec<Vec<Value>>> = HashMap::new();
    for (topic, args) in publishes.drain(..) {
        by_topic.entry(topic).or_default().push(args);
    }
    for (topic, events) in by_topic {
        let (id, subscribers) = {
            let topics = broker.topics.lock().expect("topics");
            match topics.get(&topic) {
                Some(t) => (t.id, t.subscribers.clone()),
                None => continue,
            }
        };
        let details = Dict::new();
        let kwargs = Dict::new();
        let mut frames: [Option<Bytes>; 2] = [None, None];
        for ser in Serialization::ALL {
            if !subscribers.iter().any(|c| c.ser == ser) {
                continue;
            }
            let mut out = Vec::with_capacity(events.len() * 160);
            for args in &events {
                let ev = EventRef { subscription: id, publication: fastrand::u64(1..1 << 53), details: &details, args, kwargs: &kwargs };
                let payload = ser.encode(&ev).expect("encodable");
                server_frame(&mut out, ser.is_binary(), &payload);
            }
            frames[ser.index()] = Some(out.into());
        }
        let frames = Arc::new(frames);
        // Split the subscribers across the cores.
        // Cached: available_parallelism() reads cgroup files on every call.
        static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let workers = *WORKERS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        if subscribers.len() >= 512 && workers > 1 {
            let chunk = subscribers.len().div_ceil(workers);
            let subscribers = Arc::new(subscribers);
            let mut tasks = Vec::new();
            for w in 1..workers {
                let (subscribers, frames) = (subscribers.clone(), frames.clone());
                tasks.push(tokio::spawn(async move {
                    let end = ((w + 1) * chunk).min(subscribers.len());
                    for c in &subscribers[(w * chunk).min(end)..end] {
                        if let Some(f) = &frames[c.ser.index()] {
                            c.send(f);
                        }
                    }
                }));
            }
            for c in &subscribers[..chunk.min(subscribers.len())] {
                if let Some(f) = &frames[c.ser.index()] {
                    c.send(f);
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        } else {
            for c in &subscribers {
                if let Some(f) = &frames[c.ser.index()] {
                    c.send(f);
                }
            }
        }
    }
}
