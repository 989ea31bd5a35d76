//! One event on the bus, with what every node needs to route it.

use std::time::{SystemTime, UNIX_EPOCH};

use telegraphy_wamp::{Dict, Id, Value};

use crate::history::Position;
use crate::request::Filter;

/// An event as it travels from a publisher to every node.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The realm the event belongs to.
    pub realm: String,
    /// Publication id, unique across the cluster (random in `1..=2^53`).
    pub publication: Id,
    /// The concrete topic URI.
    pub topic: String,
    /// Positional payload.
    pub args: Vec<Value>,
    /// Keyword payload.
    pub kwargs: Dict,
    /// Which subscribers may receive it.
    pub filter: Filter,
    /// Who published it, when a WAMP session did (for `exclude_me` and
    /// `disclose_me`); `None` for HTTP and CLI publishes.
    pub publisher: Option<Publisher>,
    /// Publish time, microseconds since the Unix epoch (for latency
    /// figures): [`now_us`] when the event was published.
    pub published_at_us: u64,
    /// The publisher asked the broker to keep it as the topic's retained
    /// event (`retain`).
    pub retain: bool,
    /// Its place in the topic's history, when the topic keeps history
    /// (set by the store; then `publication` is `position.publication()`).
    pub position: Option<Position>,
}

/// Microseconds since the Unix epoch, the clock of
/// [`Envelope::published_at_us`] (0 if the system clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The publishing session, as other nodes need to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    /// Id of the node the session is on.
    pub node: u64,
    /// The session id.
    pub session: Id,
    /// The session's authid.
    pub authid: String,
    /// The session's authrole.
    pub authrole: String,
    /// Exclude the publisher from receiving its own event (`exclude_me`).
    pub exclude_me: bool,
    /// Disclose the publisher to subscribers (`disclose_me`).
    pub disclose_me: bool,
}

/// The envelope format's major version. Readers refuse a newer major
/// version; a newer minor revision only appends fields, which readers skip.
pub const FORMAT_VERSION: u64 = 1;

/// Fields in a version-1 envelope.
const V1_FIELDS: usize = 9;

/// Fields in a version-1.1 envelope: `options` (a map: `retain`) and
/// `position` (nil or `[epoch, offset]`) appended. Written only when one
/// is set, so events without them keep the 1.0 bytes.
const V1_1_FIELDS: usize = 11;

/// Why bytes from the bus are not an envelope this node can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not msgpack, or not the envelope layout.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// Written by a newer Telegraphy with an incompatible format.
    #[error("envelope format version {0} is newer than this node understands ({FORMAT_VERSION}); upgrade this node")]
    UnsupportedVersion(u64),
}

impl EnvelopeError {
    /// A fixed word for the metric label and the log-once key.
    pub fn cause(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(_) => "malformed",
            EnvelopeError::UnsupportedVersion(_) => "unsupported_version",
        }
    }
}

struct FilterFields<'a>(&'a Filter);

impl serde::Serialize for FilterFields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Keys in byte order, absent lists left out: the canonical form.
        let mut map = s.serialize_map(Some(self.0.lists_set()))?;
        self.0.serialize_lists(&mut map)?;
        map.end()
    }
}

struct OptionFields {
    retain: bool,
}

impl serde::Serialize for OptionFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(usize::from(self.retain)))?;
        if self.retain {
            map.serialize_entry("retain", &true)?;
        }
        map.end()
    }
}

struct PublisherFields<'a>(&'a Publisher);

impl serde::Serialize for PublisherFields<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let p = self.0;
        let mut map = s.serialize_map(Some(6))?;
        map.serialize_entry("authid", &p.authid)?;
        map.serialize_entry("authrole", &p.authrole)?;
        map.serialize_entry("disclose_me", &p.disclose_me)?;
        map.serialize_entry("exclude_me", &p.exclude_me)?;
        map.serialize_entry("node", &p.node)?;
        map.serialize_entry("session", &p.session)?;
        map.end()
    }
}

impl serde::Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let extended = self.retain || self.position.is_some();
        let mut seq = s.serialize_seq(Some(if extended { V1_1_FIELDS } else { V1_FIELDS }))?;
        seq.serialize_element(&FORMAT_VERSION)?;
        seq.serialize_element(&self.publication)?;
        seq.serialize_element(&self.realm)?;
        seq.serialize_element(&self.topic)?;
        seq.serialize_element(&self.published_at_us)?;
        seq.serialize_element(&self.args)?;
        seq.serialize_element(&self.kwargs)?;
        seq.serialize_element(&FilterFields(&self.filter))?;
        match &self.publisher {
            Some(p) => seq.serialize_element(&PublisherFields(p))?,
            None => seq.serialize_element(&())?,
        }
        if extended {
            seq.serialize_element(&OptionFields { retain: self.retain })?;
            match self.position {
                Some(p) => seq.serialize_element(&(p.epoch, p.offset))?,
                None => seq.serialize_element(&())?,
            }
        }
        seq.end()
    }
}

impl Envelope {
    /// About how many bytes of memory the envelope holds: the struct and
    /// what it owns on the heap (strings, lists, maps, with a per-node
    /// estimate for maps). Cheaper than [`Envelope::encode`], and closer to
    /// what keeping the event costs a store.
    pub fn footprint(&self) -> u64 {
        let strings = |v: &[String]| v.iter().map(|s| (std::mem::size_of::<String>() + s.capacity()) as u64).sum::<u64>();
        let f = &self.filter;
        let mut n = std::mem::size_of::<Envelope>() as u64 + self.realm.capacity() as u64 + self.topic.capacity() as u64;
        n += list_footprint(&self.args) + dict_footprint(&self.kwargs);
        n += (f.exclude.capacity() + f.eligible.as_ref().map_or(0, Vec::capacity)) as u64 * 8;
        n += strings(&f.exclude_authid) + strings(&f.exclude_authrole);
        n += [&f.eligible_authid, &f.eligible_authrole].into_iter().flatten().map(|v| strings(v)).sum::<u64>();
        if let Some(p) = &self.publisher {
            n += (std::mem::size_of::<Publisher>() + p.authid.capacity() + p.authrole.capacity()) as u64;
        }
        n
    }

    /// The envelope's bytes on the bus (msgpack, canonical: see `docs/envelope.md`).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("encoding values into a Vec cannot fail")
    }

    /// Reads an envelope from the bus.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let bad = |m: &str| EnvelopeError::Malformed(m.to_string());
        let value = telegraphy_wamp::Serialization::Msgpack.decode_value(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        let Value::List(fields) = value else { return Err(bad("not a list")) };
        let mut it = fields.into_iter();
        let version = it.next().and_then(|v| v.as_u64()).ok_or_else(|| bad("no format version"))?;
        if version != FORMAT_VERSION {
            return Err(if version > FORMAT_VERSION { EnvelopeError::UnsupportedVersion(version) } else { bad("unknown format version") });
        }
        let mut next = |name: &str| it.next().ok_or_else(|| EnvelopeError::Malformed(format!("missing field {name}")));
        let publication = next("publication")?.as_u64().ok_or_else(|| bad("publication is not an id"))?;
        let realm = string(next("realm")?, "realm")?;
        let topic = string(next("topic")?, "topic")?;
        let published_at_us = next("published_at_us")?.as_u64().ok_or_else(|| bad("published_at_us is not an integer"))?;
        let Value::List(args) = next("args")? else { return Err(bad("args is not a list")) };
        let Value::Dict(kwargs) = next("kwargs")? else { return Err(bad("kwargs is not a map")) };
        let Value::Dict(filter) = next("filter")? else { return Err(bad("filter is not a map")) };
        let publisher = match next("publisher")? {
            Value::Null => None,
            Value::Dict(p) => Some(Publisher {
                node: p.get("node").and_then(Value::as_u64).ok_or_else(|| bad("publisher.node"))?,
                session: p.get("session").and_then(Value::as_u64).ok_or_else(|| bad("publisher.session"))?,
                authid: p.get("authid").and_then(Value::as_str).ok_or_else(|| bad("publisher.authid"))?.to_string(),
                authrole: p.get("authrole").and_then(Value::as_str).ok_or_else(|| bad("publisher.authrole"))?.to_string(),
                exclude_me: p.get("exclude_me").and_then(Value::as_bool).ok_or_else(|| bad("publisher.exclude_me"))?,
                disclose_me: p.get("disclose_me").and_then(Value::as_bool).ok_or_else(|| bad("publisher.disclose_me"))?,
            }),
            _ => return Err(bad("publisher is neither nil nor a map")),
        };
        let filter = Filter::from_dict(&filter).map_err(|e| EnvelopeError::Malformed(format!("filter: {e}")))?;
        // 1.1: options and position (absent in 1.0 envelopes).
        let retain = match it.next() {
            None | Some(Value::Null) => false,
            Some(Value::Dict(options)) => match options.get("retain") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| bad("options.retain is not a boolean"))?,
            },
            Some(_) => return Err(bad("options is not a map")),
        };
        let position = match it.next() {
            None | Some(Value::Null) => None,
            Some(Value::List(p)) => match p.as_slice() {
                [epoch, offset] => {
                    let epoch = epoch.as_u64().and_then(|e| u16::try_from(e).ok()).filter(|e| *e != 0).ok_or_else(|| bad("position.epoch"))?;
                    let offset = offset.as_u64().filter(|o| (1..=crate::history::MAX_OFFSET).contains(o)).ok_or_else(|| bad("position.offset"))?;
                    Some(Position { epoch, offset })
                }
                _ => return Err(bad("position is not [epoch, offset]")),
            },
            Some(_) => return Err(bad("position is neither nil nor a list")),
        };
        // A kept event's id is its position, whoever assigned the position.
        let publication = position.map(Position::publication).unwrap_or(publication);
        Ok(Envelope { realm, publication, topic, args, kwargs, filter, publisher, published_at_us, retain, position })
    }
}

fn string(v: Value, name: &str) -> Result<String, EnvelopeError> {
    match v {
        Value::Str(s) => Ok(s),
        _ => Err(EnvelopeError::Malformed(format!("{name} is not a string"))),
    }
}

/// Heap bytes of a list of values (see [`Envelope::footprint`]).
fn list_footprint(values: &[Value]) -> u64 {
    values.iter().map(|v| std::mem::size_of::<Value>() as u64 + value_heap(v)).sum()
}

/// Heap bytes of a map: each entry is a B-tree slot (key, value, and about
/// 16 bytes of node bookkeeping) plus what key and value own.
fn dict_footprint(dict: &Dict) -> u64 {
    dict.iter().map(|(k, v)| (std::mem::size_of::<String>() + std::mem::size_of::<Value>() + 16 + k.capacity()) as u64 + value_heap(v)).sum()
}

fn value_heap(v: &Value) -> u64 {
    match v {
        Value::Str(s) => s.capacity() as u64,
        Value::Bin(b) => b.capacity() as u64,
        Value::List(l) => list_footprint(l),
        Value::Dict(d) => dict_footprint(d),
        _ => 0,
    }
}
