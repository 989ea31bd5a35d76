//! The two WAMP serializers: `wamp.2.json` (text frames) and
//! `wamp.2.msgpack` (binary frames). Bytes in, [`Message`] out, and back.

use bytes::Bytes;
use serde::de::DeserializeSeed;
use serde::Serialize;

use crate::message::{Message, MessageError};
use crate::value::{Value, ValueSeed, MAX_DEPTH};

/// A WAMP serializer, picked by WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serialization {
    /// `wamp.2.json`, sent in text frames.
    Json,
    /// `wamp.2.msgpack`, sent in binary frames.
    Msgpack,
}

impl Serialization {
    /// Every serializer, in the router's order of preference.
    pub const ALL: [Serialization; 2] = [Serialization::Json, Serialization::Msgpack];

    /// The WebSocket subprotocol name.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Serialization::Json => "wamp.2.json",
            Serialization::Msgpack => "wamp.2.msgpack",
        }
    }

    /// A short label (`json`, `msgpack`) for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Serialization::Json => "json",
            Serialization::Msgpack => "msgpack",
        }
    }

    /// The serializer for a subprotocol name.
    pub fn from_subprotocol(name: &str) -> Option<Serialization> {
        Serialization::ALL.into_iter().find(|s| s.subprotocol() == name)
    }

    /// Whether messages travel in binary (not text) WebSocket frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Serialization::Msgpack)
    }

    /// Small dense index (0 or 1), for per-serializer arrays.
    pub fn index(self) -> usize {
        match self {
            Serialization::Json => 0,
            Serialization::Msgpack => 1,
        }
    }

    /// Decodes one WebSocket message payload into a WAMP message.
    pub fn decode(self, bytes: &[u8]) -> Result<Message, DecodeError> {
        let value = self.decode_value(bytes)?;
        match value {
            Value::List(fields) => Ok(Message::from_list(fields)?),
            _ => Err(DecodeError::Message(MessageError::NotAMessage)),
        }
    }

    /// Decodes one payload into a generic value (no WAMP checks).
    pub fn decode_value(self, bytes: &[u8]) -> Result<Value, DecodeError> {
        let seed = ValueSeed { depth_left: MAX_DEPTH, text: true };
        match self {
            Serialization::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let v = seed.deserialize(&mut de).map_err(|e| DecodeError::Syntax(e.to_string()))?;
                de.end().map_err(|e| DecodeError::Syntax(e.to_string()))?;
                Ok(v)
            }
            Serialization::Msgpack => {
                let mut rest = bytes;
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                let v = seed.deserialize(&mut de).map_err(|e| DecodeError::Syntax(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(DecodeError::Syntax("trailing bytes after the msgpack message".into()));
                }
                Ok(v)
            }
        }
    }

    /// Encodes anything serializable (a [`Message`], an
    /// [`EventRef`](crate::EventRef)) into the payload of one WebSocket message.
    pub fn encode<T: Serialize + ?Sized>(self, msg: &T) -> Result<Bytes, EncodeError> {
        match self {
            Serialization::Json => serde_json::to_vec(msg).map(Bytes::from).map_err(|e| EncodeError(e.to_string())),
            Serialization::Msgpack => rmp_serde::to_vec(msg).map(Bytes::from).map_err(|e| EncodeError(e.to_string())),
        }
    }
}

/// A payload that is not a WAMP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON / msgpack, too deeply nested, or trailing bytes.
    #[error("malformed payload: {0}")]
    Syntax(String),
    /// Valid data, but not a valid WAMP message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// A message that could not be encoded (never expected with [`Value`]s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not encode message: {0}")]
pub struct EncodeError(pub String);
