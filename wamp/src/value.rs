//! The dynamic value carried in WAMP payloads (arguments, keyword arguments,
//! details and options dictionaries).
//!
//! One type serves both serializers. Binary data follows the WAMP spec: a
//! msgpack `bin` on the wire in msgpack, and a string made of a NUL character
//! followed by the base64 of the bytes in JSON.
//!
//! Decoding is depth limited ([`MAX_DEPTH`]) so a hostile, deeply nested
//! frame is a clean error instead of a stack overflow.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How deeply lists and dictionaries may nest inside one message.
pub const MAX_DEPTH: usize = 64;

/// A WAMP dictionary: string keys, any values.
pub type Dict = BTreeMap<String, Value>;

/// A WAMP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` / msgpack nil.
    Null,
    /// A boolean.
    Bool(bool),
    /// A negative integer (non-negative integers are always [`Value::UInt`]).
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A floating point number.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Binary data.
    Bin(Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A dictionary.
    Dict(Dict),
}

impl Value {
    /// The value as a non-negative integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "integer",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bin(_) => "binary",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::UInt(n)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::UInt(n) => s.serialize_u64(*n),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bin(b) => {
                if s.is_human_readable() {
                    let mut text = String::with_capacity(1 + b.len() * 4 / 3 + 4);
                    text.push('\0');
                    base64::engine::general_purpose::STANDARD.encode_string(b, &mut text);
                    s.serialize_str(&text)
                } else {
                    s.serialize_bytes(b)
                }
            }
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Dict(d) => {
                let mut map = s.serialize_map(Some(d.len()))?;
                for (k, v) in d {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ValueSeed { depth_left: MAX_DEPTH, text: true }.deserialize(d)
    }
}

/// Deserializes a [`Value`] with a bounded nesting depth.
#[derive(Clone, Copy)]
pub(crate) struct ValueSeed {
    pub(crate) depth_left: usize,
    /// Text formats (JSON) carry binary as NUL + base64 strings; binary
    /// formats (msgpack) have real binary, and strings are just strings.
    pub(crate) text: bool,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        let text = d.is_human_readable();
        d.deserialize_any(ValueSeed { text, ..self })
    }
}

impl ValueSeed {
    fn nested<E: de::Error>(self) -> Result<ValueSeed, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(ValueSeed { depth_left, text: self.text }),
            None => Err(E::custom(format_args!("lists and dictionaries nest deeper than {MAX_DEPTH} levels"))),
        }
    }
}

fn decode_string<E: de::Error>(s: &str) -> Result<Value, E> {
    match s.strip_prefix('\0') {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Value::Bin)
            .map_err(|_| E::custom("a string starting with NUL must carry base64 binary data")),
        None => Ok(Value::Str(s.to_owned())),
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a WAMP value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(if n >= 0 { Value::UInt(n as u64) } else { Value::Int(n) })
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::UInt(n))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        if self.text {
            decode_string(s)
        } else {
            Ok(Value::Str(s.to_owned()))
        }
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if self.text && s.starts_with('\0') {
            decode_string(&s)
        } else {
            Ok(Value::Str(s))
        }
    }
    fn visit_bytes<E>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(b.to_vec()))
    }
    fn visit_byte_buf<E>(self, b: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(b))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        // Never trust a declared length for preallocation beyond a small cap.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut dict = Dict::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(inner)?;
            dict.insert(key, value);
        }
        Ok(Value::Dict(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trips_in_both_serializers() {
        let v = Value::List(vec![Value::Bin(vec![0, 1, 2, 255]), "x".into()]);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "[\"\\u0000AAEC/w==\",\"x\"]");
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
        let mp = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(mp[1], 0xc4, "msgpack bin 8 marker");
        assert_eq!(rmp_serde::from_slice::<Value>(&mp).unwrap(), v);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = serde_json::from_str::<Value>(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion") || err.to_string().contains("nest"));
        let mut mp = vec![0x91u8; 100_000];
        mp.push(0xc0);
        assert!(rmp_serde::from_slice::<Value>(&mp).is_err());
        // Just under our own limit is fine.
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(serde_json::from_str::<Value>(&ok).is_ok());
        let too_deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(serde_json::from_str::<Value>(&too_deep).is_err());
    }

    #[test]
    fn msgpack_strings_starting_with_nul_stay_strings() {
        let v = Value::Str("\0not base64!".into());
        let mp = rmp_serde::to_vec(&v).unwrap();
        assert_eq!(rmp_serde::from_slice::<Value>(&mp).unwrap(), v);
    }

    #[test]
    fn bad_binary_string_is_rejected() {
        assert!(serde_json::from_str::<Value>("\"\\u0000!!!\"").is_err());
    }

    #[test]
    fn non_string_dict_keys_are_rejected() {
        // msgpack {1: 2}
        assert!(rmp_serde::from_slice::<Value>(&[0x81, 0x01, 0x02]).is_err());
    }
}
