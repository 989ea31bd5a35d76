//! WAMP on top of [`crate::ws`]: HELLO (anonymous or JWT ticket), SUBSCRIBE,
//! PUBLISH, and a fast decoder for the EVENTs the benchmark sends.
//!
//! Benchmark events carry `args = [published_at_us, seq, padding]`; the
//! receiver reads the first two and skips the rest without allocating.

use std::fmt;
use std::net::IpAddr;

use anyhow::{bail, Context as _};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use telegraphy_wamp::{Dict, Id, Message, Serialization, Value};

use crate::ws::{self, Target, Ws};

/// How a session authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    /// No credentials.
    Anonymous,
    /// WAMP ticket authentication with this JWT; `authid` is its `sub`.
    Ticket { authid: String, token: String },
}

/// One established WAMP session.
pub struct Session {
    /// The socket.
    pub ws: Ws,
    /// The serializer.
    pub ser: Serialization,
    /// The session id from WELCOME.
    pub id: Id,
    next_request: Id,
}

fn opcode(ser: Serialization) -> u8 {
    if ser.is_binary() {
        ws::op::BINARY
    } else {
        ws::op::TEXT
    }
}

/// Connects, says HELLO, authenticates, and waits for WELCOME.
pub async fn open(target: &Target, source: Option<IpAddr>, ser: Serialization, realm: &str, auth: &Auth) -> anyhow::Result<Session> {
    let ws = ws::connect(target, source, ser.subprotocol()).await?;
    let mut s = Session { ws, ser, id: 0, next_request: 1 };
    let mut roles = Dict::new();
    roles.insert("subscriber".into(), Value::Dict(Dict::new()));
    roles.insert("publisher".into(), Value::Dict(Dict::new()));
    let mut details = Dict::new();
    details.insert("roles".into(), Value::Dict(roles));
    if let Auth::Ticket { authid, .. } = auth {
        details.insert("authmethods".into(), Value::List(vec![Value::Str("ticket".into())]));
        details.insert("authid".into(), Value::Str(authid.clone()));
    }
    s.send(&Message::Hello { realm: realm.into(), details }).await?;
    loop {
        match s.recv().await? {
            Message::Welcome { session, .. } => {
                s.id = session;
                return Ok(s);
            }
            Message::Challenge { authmethod, .. } if authmethod == "ticket" => {
                let Auth::Ticket { token, .. } = auth else { bail!("the router asked for a ticket; run with --auth jwt") };
                s.send(&Message::Authenticate { signature: token.clone(), extra: Dict::new() }).await?;
            }
            Message::Abort { reason, details } => {
                let msg = details.get("message").and_then(Value::as_str).unwrap_or("");
                bail!("session refused: {reason} {msg}")
            }
            other => bail!("unexpected {} during the handshake", other.name()),
        }
    }
}

impl Session {
    /// Sends one message.
    pub async fn send(&mut self, msg: &Message) -> anyhow::Result<()> {
        let bytes = self.ser.encode(msg).map_err(|e| anyhow::anyhow!("encode: {}", e.0))?;
        self.ws.send(opcode(self.ser), &bytes).await?;
        Ok(())
    }

    /// Receives and fully decodes one message.
    pub async fn recv(&mut self) -> anyhow::Result<Message> {
        let (_, payload) = self.ws.next_message().await?;
        self.ser.decode(&payload).map_err(|e| anyhow::anyhow!("decode: {e:?}"))
    }

    /// Subscribes (exact match) and waits for SUBSCRIBED.
    pub async fn subscribe(&mut self, topic: &str) -> anyhow::Result<Id> {
        let request = self.next_request;
        self.next_request += 1;
        self.send(&Message::Subscribe { request, options: Dict::new(), topic: topic.into() }).await?;
        loop {
            match self.recv().await? {
                Message::Subscribed { request: r, subscription } if r == request => return Ok(subscription),
                Message::Error { error, .. } => bail!("SUBSCRIBE {topic} refused: {error}"),
                Message::Event { .. } => continue,
                other => bail!("unexpected {} after SUBSCRIBE", other.name()),
            }
        }
    }

    /// Appends one PUBLISH frame (ready to write) to `out`.
    pub fn publish_frame(&mut self, out: &mut Vec<u8>, topic: &str, ts_us: u64, seq: u64, pad: &str) -> anyhow::Result<()> {
        let request = self.next_request;
        self.next_request += 1;
        let bytes = self
            .ser
            .encode(&Message::Publish { request, options: Dict::new(), topic: topic.into(), args: event_args(ts_us, seq, pad), kwargs: Dict::new() })
            .map_err(|e| anyhow::anyhow!("encode: {}", e.0))?;
        ws::frame_into(out, opcode(self.ser), &bytes);
        Ok(())
    }
}

/// The benchmark's event payload.
pub fn event_args(ts_us: u64, seq: u64, pad: &str) -> Vec<Value> {
    vec![Value::UInt(ts_us), Value::UInt(seq), Value::Str(pad.to_string())]
}

/// The fields of a benchmark EVENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchEvent {
    /// When the publisher stamped it (µs since the Unix epoch).
    pub ts_us: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// What a payload turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A benchmark event.
    Event(BenchEvent),
    /// An EVENT without our payload.
    OtherEvent,
    /// Any other message: its type code.
    Other(u64),
}

struct IncomingVisitor;

impl<'de> Visitor<'de> for IncomingVisitor {
    type Value = Incoming;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a WAMP message")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Incoming, A::Error> {
        let code: u64 = seq.next_element()?.ok_or_else(|| de::Error::custom("empty message"))?;
        if code != telegraphy_wamp::code::EVENT {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Incoming::Other(code));
        }
        let _sub: IgnoredAny = seq.next_element()?.ok_or_else(|| de::Error::custom("short EVENT"))?;
        let _pub: IgnoredAny = seq.next_element()?.ok_or_else(|| de::Error::custom("short EVENT"))?;
        let _details: IgnoredAny = seq.next_element()?.ok_or_else(|| de::Error::custom("short EVENT"))?;
        let args: Option<Args> = seq.next_element()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(match args {
            Some(Args(Some(e))) => Incoming::Event(e),
            _ => Incoming::OtherEvent,
        })
    }
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Incoming, D::Error> {
        d.deserialize_seq(IncomingVisitor)
    }
}

struct Args(Option<BenchEvent>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Args, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("EVENT arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args, A::Error> {
                let ts: Option<u64> = seq.next_element::<Num>()?.and_then(|n| n.0);
                let s: Option<u64> = seq.next_element::<Num>()?.and_then(|n| n.0);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Args(match (ts, s) {
                    (Some(ts_us), Some(seq)) => Some(BenchEvent { ts_us, seq }),
                    _ => None,
                }))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A number of any encoding (a router may re-encode integers as floats).
struct Num(Option<u64>);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num((v >= 0.0).then_some(v as u64)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_unit<E>(self) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Num, E> {
                Ok(Num(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Num, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Num, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Num(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Decodes one payload cheaply.
pub fn decode_incoming(ser: Serialization, payload: &[u8]) -> anyhow::Result<Incoming> {
    match ser {
        Serialization::Json => serde_json::from_slice(payload).context("JSON"),
        Serialization::Msgpack => rmp_serde::from_slice(payload).context("msgpack"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegraphy_wamp::EventRef;

    #[test]
    fn decodes_events_in_both_serializers() {
        for ser in Serialization::ALL {
            let details = Dict::new();
            let args = event_args(1_700_000_000_000_000, 42, "xxxx");
            let kwargs = Dict::new();
            let ev = EventRef { subscription: 7, publication: 9, details: &details, args: &args, kwargs: &kwargs };
            let bytes = ser.encode(&ev).unwrap();
            assert_eq!(decode_incoming(ser, &bytes).unwrap(), Incoming::Event(BenchEvent { ts_us: 1_700_000_000_000_000, seq: 42 }));
            let mut kw = Dict::new();
            kw.insert("a".into(), Value::UInt(1));
            let ev = EventRef { subscription: 7, publication: 9, details: &details, args: &args, kwargs: &kw };
            assert!(matches!(decode_incoming(ser, &ser.encode(&ev).unwrap()).unwrap(), Incoming::Event(_)));
            let other = ser.encode(&Message::Goodbye { details: Dict::new(), reason: "x.y".into() }).unwrap();
            assert_eq!(decode_incoming(ser, &other).unwrap(), Incoming::Other(6));
        }
    }
}
