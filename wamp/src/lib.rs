//! WAMP v2 for Telegraphy: messages, URI rules, error and close codes, and
//! the JSON and msgpack codecs. Bytes in, bytes out: nothing here does IO,
//! so the gateway, the load generator and tests share one implementation.
//!
//! # Layout
//!
//! * [`value`]: the dynamic [`Value`] carried in payloads and dictionaries
//!   (binary data per the spec in both serializers, bounded nesting).
//! * [`message`]: the typed [`Message`] enum and its list form.
//! * [`codec`]: [`Serialization`] (`wamp.2.json`, `wamp.2.msgpack`) decodes
//!   and encodes messages.
//! * [`uri`]: URI validation (loose / strict) and [`MatchPolicy`] matching.
//! * [`codes`]: every error URI and WebSocket close code the router sends,
//!   and the close codes a client must understand (`tests/vectors/codes.json`).

pub mod codec;
pub mod codes;
pub mod message;
pub mod uri;
pub mod value;

pub use codec::{DecodeError, EncodeError, Serialization};
pub use message::{code, EventRef, Id, Message, MessageError, WelcomeRef, MAX_ID};
pub use uri::{MatchPolicy, UriKind, UriRules};
pub use value::{Dict, Value};

/// Builds a [`Dict`] from `key => value` pairs.
#[macro_export]
macro_rules! dict {
    () => { $crate::Dict::new() };
    ($($k:expr => $v:expr),+ $(,)?) => {{
        let mut d = $crate::Dict::new();
        $( d.insert(::std::string::String::from($k), $crate::Value::from($v)); )+
        d
    }};
}
