//! What a publisher asks for, in every form it arrives in, read and written
//! in one place so that every path accepts the same input and explains a
//! refusal in the same words:
//!
//! * [`PublishRequest`]: the JSON object of a `POST /publish` body and of a
//!   `telegraphy-publish --stdin` line (`docs/protocol.md`, section 7);
//!   [`PublishRequest::from_json`] reads it, [`PublishRequest::to_json`]
//!   writes it (the Rust publisher's HTTP path).
//! * [`PublishOptions`]: the options dictionary of a WAMP PUBLISH
//!   ([`PublishOptions::from_wamp_options`]), which the HTTP body's
//!   `options` shares.
//! * [`Filter`]: the six subscriber black/white lists, read the same way
//!   from PUBLISH options, JSON requests and envelopes.
//! * [`check_topic`] / [`is_reserved_topic`]: which topics may be published to.
//!
//! Nothing here does IO; bad input is a typed error whose message says what
//! to fix.

use serde::ser::SerializeMap;
use telegraphy_wamp::{uri, DecodeError, Dict, Id, Serialization, UriKind, UriRules, Value, MAX_ID};

/// The prefix of the topics that belong to the router (the WAMP meta API).
pub const RESERVED_PREFIX: &str = "wamp.";

/// The prefix of the router's presence procedures and events (Telegraphy's
/// own meta API): reserved like `wamp.`.
pub const PRESENCE_PREFIX: &str = "telegraphy.presence.";

/// Whether `topic` belongs to the router (`wamp.`, `telegraphy.presence.`):
/// no publisher may publish to it, whatever its role allows, and only role
/// patterns that name it reach it.
pub fn is_reserved_topic(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX) || topic.starts_with(PRESENCE_PREFIX)
}

/// Checks a topic someone wants to publish to: a valid concrete URI under
/// `rules`, and not reserved.
pub fn check_topic(topic: &str, rules: UriRules) -> Result<(), TopicError> {
    if !uri::is_valid(topic, rules, UriKind::Concrete) {
        return Err(TopicError::Invalid { topic: topic.to_string(), rules });
    }
    if is_reserved_topic(topic) {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// A topic that cannot be published to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not a valid concrete URI under the rules in force (WAMP:
    /// `wamp.error.invalid_uri`).
    #[error("`{topic}` is not a valid topic URI ({})", uri_rules_hint(*.rules))]
    Invalid {
        /// The topic as given.
        topic: String,
        /// The rules it was checked against.
        rules: UriRules,
    },
    /// Under `wamp.` or `telegraphy.presence.` (WAMP: `wamp.error.not_authorized`).
    #[error("topics under `wamp.` and `telegraphy.presence.` are reserved for the router")]
    Reserved,
}

fn uri_rules_hint(rules: UriRules) -> &'static str {
    match rules {
        UriRules::Loose => "dot-separated words, no spaces, no `#`, no empty parts",
        UriRules::Strict => "dot-separated words of a-z, 0-9 and _, no empty parts",
    }
}

/// Subscriber black- and white-listing (WAMP advanced profile). A subscriber
/// receives the event when it is in no exclude list and, for each eligible
/// list that is set, in that list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Session ids that must not receive the event.
    pub exclude: Vec<Id>,
    /// When set, only these session ids may receive it.
    pub eligible: Option<Vec<Id>>,
    /// Authids that must not receive the event.
    pub exclude_authid: Vec<String>,
    /// When set, only these authids may receive it.
    pub eligible_authid: Option<Vec<String>>,
    /// Authroles that must not receive the event.
    pub exclude_authrole: Vec<String>,
    /// When set, only these authroles may receive it.
    pub eligible_authrole: Option<Vec<String>>,
}

/// The option keys of the six lists, in byte order.
const LIST_KEYS: &str = "eligible, eligible_authid, eligible_authrole, exclude, exclude_authid or exclude_authrole";

impl Filter {
    /// True when the filter lets everyone through (the common case, which
    /// the hub uses to skip per-subscriber checks).
    pub fn is_open(&self) -> bool {
        self.exclude.is_empty()
            && self.eligible.is_none()
            && self.exclude_authid.is_empty()
            && self.eligible_authid.is_none()
            && self.exclude_authrole.is_empty()
            && self.eligible_authrole.is_none()
    }

    /// Whether a subscriber with this identity may receive the event.
    pub fn admits(&self, session: Id, authid: &str, authrole: &str) -> bool {
        fn listed(list: &[String], s: &str) -> bool {
            list.iter().any(|x| x == s)
        }
        !self.exclude.contains(&session)
            && self.eligible.as_ref().is_none_or(|l| l.contains(&session))
            && !listed(&self.exclude_authid, authid)
            && self.eligible_authid.as_ref().is_none_or(|l| listed(l, authid))
            && !listed(&self.exclude_authrole, authrole)
            && self.eligible_authrole.as_ref().is_none_or(|l| listed(l, authrole))
    }

    /// Reads the lists from a dictionary (an envelope's filter map, or
    /// options): other keys are skipped, `null` means absent.
    pub fn from_dict(dict: &Dict) -> Result<Filter, OptionError> {
        let mut filter = Filter::default();
        for (key, value) in dict {
            if !matches!(value, Value::Null) {
                filter.read(key, value)?;
            }
        }
        Ok(filter)
    }

    /// Reads one option into the filter when `key` names one of the six
    /// lists; `Ok(false)` when it names none.
    fn read(&mut self, key: &str, value: &Value) -> Result<bool, OptionError> {
        match key {
            "exclude" => self.exclude = ids(key, value)?,
            "eligible" => self.eligible = Some(ids(key, value)?),
            "exclude_authid" => self.exclude_authid = strings(key, value)?,
            "eligible_authid" => self.eligible_authid = Some(strings(key, value)?),
            "exclude_authrole" => self.exclude_authrole = strings(key, value)?,
            "eligible_authrole" => self.eligible_authrole = Some(strings(key, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// How many lists [`Filter::serialize_lists`] writes.
    pub(crate) fn lists_set(&self) -> usize {
        usize::from(self.eligible.is_some())
            + usize::from(self.eligible_authid.is_some())
            + usize::from(self.eligible_authrole.is_some())
            + usize::from(!self.exclude.is_empty())
            + usize::from(!self.exclude_authid.is_empty())
            + usize::from(!self.exclude_authrole.is_empty())
    }

    /// Writes the lists that are set into a map, keys in byte order: the
    /// canonical form, in envelopes and in JSON requests alike.
    pub(crate) fn serialize_lists<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        if let Some(l) = &self.eligible {
            map.serialize_entry("eligible", l)?;
        }
        if let Some(l) = &self.eligible_authid {
            map.serialize_entry("eligible_authid", l)?;
        }
        if let Some(l) = &self.eligible_authrole {
            map.serialize_entry("eligible_authrole", l)?;
        }
        if !self.exclude.is_empty() {
            map.serialize_entry("exclude", &self.exclude)?;
        }
        if !self.exclude_authid.is_empty() {
            map.serialize_entry("exclude_authid", &self.exclude_authid)?;
        }
        if !self.exclude_authrole.is_empty() {
            map.serialize_entry("exclude_authrole", &self.exclude_authrole)?;
        }
        Ok(())
    }
}

/// A publish option the request cannot carry. The messages are the ones
/// WAMP clients see in `ERROR wamp.error.invalid_argument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// A known option whose value has the wrong type.
    #[error("option `{key}` must be {expected}, got {got}")]
    WrongType {
        /// The option.
        key: String,
        /// What it takes ("a boolean", "a list of session ids", "a list of strings").
        expected: &'static str,
        /// The type it had.
        got: &'static str,
    },
    /// A list option with an item of the wrong type (or a session id over 2^53).
    #[error("option `{key}` must hold {expected}, got {got}")]
    WrongItem {
        /// The option.
        key: String,
        /// What its items must be.
        expected: &'static str,
        /// The type of the offending item.
        got: &'static str,
    },
    /// A key that is not one of the six lists where only they are allowed
    /// ([`JsonOptions::ListsOnly`]).
    #[error("unknown option `{0}`; use {LIST_KEYS}")]
    Unknown(String),
}

fn flag(key: &str, value: &Value) -> Result<bool, OptionError> {
    match value {
        Value::Bool(b) => Ok(*b),
        other => Err(OptionError::WrongType { key: key.to_string(), expected: "a boolean", got: other.type_name() }),
    }
}

fn ids(key: &str, value: &Value) -> Result<Vec<Id>, OptionError> {
    let Value::List(items) = value else {
        return Err(OptionError::WrongType { key: key.to_string(), expected: "a list of session ids", got: value.type_name() });
    };
    items
        .iter()
        .map(|item| match item {
            Value::UInt(n) if *n <= MAX_ID => Ok(*n),
            other => Err(OptionError::WrongItem {
                key: key.to_string(),
                expected: "session ids (integers in 0..=2^53)",
                got: if matches!(other, Value::UInt(_)) { "an integer over 2^53" } else { other.type_name() },
            }),
        })
        .collect()
}

fn strings(key: &str, value: &Value) -> Result<Vec<String>, OptionError> {
    let Value::List(items) = value else {
        return Err(OptionError::WrongType { key: key.to_string(), expected: "a list of strings", got: value.type_name() });
    };
    items
        .iter()
        .map(|item| match item {
            Value::Str(s) => Ok(s.clone()),
            other => Err(OptionError::WrongItem { key: key.to_string(), expected: "strings", got: other.type_name() }),
        })
        .collect()
}

/// The PUBLISH options the router acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishOptions {
    /// Reply PUBLISHED / ERROR (default false).
    pub acknowledge: bool,
    /// Do not deliver to the publishing session (default true).
    pub exclude_me: bool,
    /// Tell subscribers who published (default false).
    pub disclose_me: bool,
    /// Black- and white-lists.
    pub filter: Filter,
    /// Keep the event as the topic's retained event (`retain`, default false).
    pub retain: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions { acknowledge: false, exclude_me: true, disclose_me: false, filter: Filter::default(), retain: false }
    }
}

impl PublishOptions {
    /// Reads a WAMP PUBLISH options dictionary. Unknown keys are ignored,
    /// as the spec asks (payload passthrough and vendor `x_` keys are not
    /// implemented); `null` means the default (some clients send it
    /// for an unset option); a known key with a wrong type is an error
    /// naming the key.
    pub fn from_wamp_options(options: &Dict) -> Result<PublishOptions, OptionError> {
        let mut out = PublishOptions::default();
        for (key, value) in options {
            if matches!(value, Value::Null) {
                continue;
            }
            match key.as_str() {
                "acknowledge" => out.acknowledge = flag(key, value)?,
                "exclude_me" => out.exclude_me = flag(key, value)?,
                "disclose_me" => out.disclose_me = flag(key, value)?,
                "retain" => out.retain = flag(key, value)?,
                _ => {
                    out.filter.read(key, value)?;
                }
            }
        }
        Ok(out)
    }

    /// Reads the options of a JSON request under `schema`.
    fn from_json_options(options: &Dict, schema: JsonOptions) -> Result<PublishOptions, OptionError> {
        match schema {
            JsonOptions::Wamp => PublishOptions::from_wamp_options(options),
            JsonOptions::ListsOnly => {
                let mut out = PublishOptions::default();
                for (key, value) in options {
                    if key == "retain" && !matches!(value, Value::Null) {
                        out.retain = flag(key, value)?;
                    } else if !matches!(value, Value::Null) && !out.filter.read(key, value)? {
                        return Err(OptionError::Unknown(key.clone()));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Writes the options that differ from their defaults, keys in byte order.
impl serde::Serialize for PublishOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = usize::from(self.acknowledge)
            + usize::from(self.disclose_me)
            + self.filter.lists_set()
            + usize::from(!self.exclude_me)
            + usize::from(self.retain);
        let mut map = s.serialize_map(Some(len))?;
        if self.acknowledge {
            map.serialize_entry("acknowledge", &true)?;
        }
        if self.disclose_me {
            map.serialize_entry("disclose_me", &true)?;
        }
        self.filter.serialize_lists(&mut map)?;
        if !self.exclude_me {
            map.serialize_entry("exclude_me", &false)?;
        }
        if self.retain {
            map.serialize_entry("retain", &true)?;
        }
        map.end()
    }
}

/// Which `options` a JSON request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonOptions {
    /// Every PUBLISH option, read as over WAMP
    /// ([`PublishOptions::from_wamp_options`]: unknown keys ignored). The
    /// `POST /publish` body.
    Wamp,
    /// Only the six lists (and `retain`); any other key is an error, so a
    /// misspelt list cannot silently widen an event's audience.
    /// `telegraphy-publish --stdin` lines.
    ListsOnly,
}

/// A publish request as JSON carries it: `{"topic": "...", "args": [...],
/// "kwargs": {...}, "options": {...}, "realm": "...", "require_subscriber":
/// true}`, only `topic` required, `null` meaning absent. The optional
/// fields stay `None` when absent so that each path applies its own
/// default (the gateway's first realm, the CLI's flags).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishRequest {
    /// The topic URI (checked by [`check_topic`], not by the codec: the
    /// rules depend on who reads it).
    pub topic: String,
    /// Positional payload (`[]` when absent).
    pub args: Vec<Value>,
    /// Keyword payload (`{}` when absent).
    pub kwargs: Dict,
    /// PUBLISH options.
    pub options: Option<PublishOptions>,
    /// The realm.
    pub realm: Option<String>,
    /// Succeed only if a node subscribed to the topic got the event.
    pub require_subscriber: Option<bool>,
}

/// The fields a JSON request takes, for the "unknown field" message.
const FIELDS: &str = "topic, args, kwargs, options, realm and require_subscriber";

/// Why bytes are not a publish request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON (or nested too deeply).
    #[error("not valid JSON: {}", json_detail(.0))]
    Json(#[source] DecodeError),
    /// JSON, but not an object.
    #[error("a publish request is a JSON object with at least a \"topic\", got {0}")]
    NotAnObject(&'static str),
    /// No `topic` field.
    #[error("\"topic\" is missing")]
    MissingTopic,
    /// A field with the wrong type.
    #[error("\"{field}\" must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it takes.
        expected: &'static str,
        /// The type it had.
        got: &'static str,
    },
    /// A field the request does not take.
    #[error("unknown field \"{0}\"; a publish request takes {FIELDS}")]
    UnknownField(String),
    /// A bad option in `options`.
    #[error(transparent)]
    Option(#[from] OptionError),
}

/// The parser's own words, without the "malformed payload" wrapper.
fn json_detail(e: &DecodeError) -> String {
    match e {
        DecodeError::Syntax(s) => s.clone(),
        other => other.to_string(),
    }
}

impl PublishRequest {
    /// A request to publish on `topic`, with no payload and nothing else set.
    pub fn new(topic: impl Into<String>) -> PublishRequest {
        PublishRequest { topic: topic.into(), ..PublishRequest::default() }
    }

    /// Reads a JSON request; `options` says which options it may carry.
    /// Checks the shape only: the topic's URI rules and whether the realm
    /// exists are for the reader to check.
    pub fn from_json(bytes: &[u8], options: JsonOptions) -> Result<PublishRequest, RequestError> {
        let value = Serialization::Json.decode_value(bytes).map_err(RequestError::Json)?;
        let Value::Dict(mut fields) = value else {
            return Err(RequestError::NotAnObject(value.type_name()));
        };
        let take = |fields: &mut Dict, field: &str| fields.remove(field).filter(|v| !matches!(v, Value::Null));
        let wrong = |field: &'static str, expected: &'static str, got: &Value| RequestError::WrongType { field, expected, got: got.type_name() };
        let topic = match fields.remove("topic") {
            Some(Value::Str(t)) => t,
            Some(other) => return Err(wrong("topic", "a string", &other)),
            None => return Err(RequestError::MissingTopic),
        };
        let args = match take(&mut fields, "args") {
            None => Vec::new(),
            Some(Value::List(l)) => l,
            Some(other) => return Err(wrong("args", "a list", &other)),
        };
        let kwargs = match take(&mut fields, "kwargs") {
            None => Dict::new(),
            Some(Value::Dict(d)) => d,
            Some(other) => return Err(wrong("kwargs", "an object", &other)),
        };
        let options = match take(&mut fields, "options") {
            None => None,
            Some(Value::Dict(d)) => Some(PublishOptions::from_json_options(&d, options)?),
            Some(other) => return Err(wrong("options", "an object", &other)),
        };
        let realm = match take(&mut fields, "realm") {
            None => None,
            Some(Value::Str(r)) => Some(r),
            Some(other) => return Err(wrong("realm", "a string", &other)),
        };
        let require_subscriber = match take(&mut fields, "require_subscriber") {
            None => None,
            Some(Value::Bool(b)) => Some(b),
            Some(other) => return Err(wrong("require_subscriber", "true or false", &other)),
        };
        if let Some(key) = fields.into_keys().next() {
            return Err(RequestError::UnknownField(key));
        }
        Ok(PublishRequest { topic, args, kwargs, options, realm, require_subscriber })
    }

    /// The request as compact JSON: `topic`, `args` and `kwargs` always,
    /// the other fields when set, object keys in byte order, binary values
    /// in the WAMP JSON form. [`PublishRequest::from_json`] with
    /// [`JsonOptions::Wamp`] reads it back unchanged.
    pub fn to_json(&self) -> Vec<u8> {
        Serialization::Json.encode(self).expect("a publish request always encodes as JSON").into()
    }
}

impl serde::Serialize for PublishRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 3 + usize::from(self.options.is_some()) + usize::from(self.realm.is_some()) + usize::from(self.require_subscriber.is_some());
        let mut map = s.serialize_map(Some(len))?;
        map.serialize_entry("args", &self.args)?;
        map.serialize_entry("kwargs", &self.kwargs)?;
        if let Some(options) = &self.options {
            map.serialize_entry("options", options)?;
        }
        if let Some(realm) = &self.realm {
            map.serialize_entry("realm", realm)?;
        }
        if let Some(yes) = &self.require_subscriber {
            map.serialize_entry("require_subscriber", yes)?;
        }
        map.serialize_entry("topic", &self.topic)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegraphy_wamp::dict;

    fn list(items: Vec<Value>) -> Value {
        Value::List(items)
    }

    fn json(text: &str, options: JsonOptions) -> Result<PublishRequest, RequestError> {
        PublishRequest::from_json(text.as_bytes(), options)
    }

    fn err(text: &str, options: JsonOptions) -> String {
        json(text, options).unwrap_err().to_string()
    }

    fn full_filter() -> Filter {
        Filter {
            exclude: vec![1, MAX_ID],
            eligible: Some(vec![0, 3]),
            exclude_authid: vec!["mallory".into()],
            eligible_authid: Some(vec!["alice".into(), "bob".into()]),
            exclude_authrole: vec!["guest".into()],
            eligible_authrole: Some(vec![]),
        }
    }

    #[test]
    fn filter_lists() {
        let open = Filter::default();
        assert!(open.is_open() && open.admits(1, "a", "r"));
        let f = Filter { exclude: vec![1], ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(2, "a", "r"));
        let f = Filter { eligible: Some(vec![2]), ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(2, "a", "r"));
        let f = Filter { eligible: Some(vec![]), ..Default::default() };
        assert!(!f.admits(2, "a", "r"), "an empty eligible list admits nobody");
        let f = Filter { exclude_authid: vec!["a".into()], ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(1, "b", "r"));
        let f = Filter { eligible_authrole: Some(vec!["admin".into()]), ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(1, "a", "admin"));
        let f = Filter { eligible: Some(vec![1]), exclude: vec![1], ..Default::default() };
        assert!(!f.admits(1, "a", "r"), "exclusion wins over eligibility");
    }

    #[test]
    fn wamp_options_default() {
        let o = PublishOptions::from_wamp_options(&Dict::new()).unwrap();
        assert_eq!(o, PublishOptions::default());
        assert!(!o.acknowledge && o.exclude_me && !o.disclose_me && o.filter.is_open());
    }

    #[test]
    fn wamp_options_every_option() {
        let mut d = dict! {"acknowledge" => true, "exclude_me" => false, "disclose_me" => true, "future_option" => "x", "x_vendor" => 1u64};
        d.insert("exclude".into(), list(vec![Value::UInt(1), Value::UInt(MAX_ID)]));
        d.insert("eligible".into(), list(vec![Value::UInt(0), Value::UInt(3)]));
        d.insert("exclude_authid".into(), list(vec!["mallory".into()]));
        d.insert("eligible_authid".into(), list(vec!["alice".into(), "bob".into()]));
        d.insert("exclude_authrole".into(), list(vec!["guest".into()]));
        d.insert("eligible_authrole".into(), list(vec![]));
        let o = PublishOptions::from_wamp_options(&d).unwrap();
        assert_eq!(o, PublishOptions { acknowledge: true, exclude_me: false, disclose_me: true, filter: full_filter(), retain: false });
    }

    #[test]
    fn null_options_take_their_defaults() {
        let mut d = Dict::new();
        for key in ["acknowledge", "exclude_me", "disclose_me", "exclude", "eligible", "eligible_authrole"] {
            d.insert(key.into(), Value::Null);
        }
        assert_eq!(PublishOptions::from_wamp_options(&d).unwrap(), PublishOptions::default());
        assert_eq!(PublishOptions::from_json_options(&d, JsonOptions::Wamp).unwrap(), PublishOptions::default());
        d.retain(|k, _| k.starts_with('e'));
        assert_eq!(PublishOptions::from_json_options(&d, JsonOptions::ListsOnly).unwrap(), PublishOptions::default());
    }

    #[test]
    fn every_option_error_names_the_option() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("acknowledge", "yes".into(), "option `acknowledge` must be a boolean, got string"),
            ("exclude_me", Value::UInt(1), "option `exclude_me` must be a boolean, got integer"),
            ("disclose_me", list(vec![]), "option `disclose_me` must be a boolean, got list"),
            ("exclude", "x".into(), "option `exclude` must be a list of session ids, got string"),
            ("eligible", list(vec!["x".into()]), "option `eligible` must hold session ids (integers in 0..=2^53), got string"),
            (
                "eligible",
                list(vec![Value::UInt(MAX_ID + 1)]),
                "option `eligible` must hold session ids (integers in 0..=2^53), got an integer over 2^53",
            ),
            ("exclude", list(vec![Value::Int(-1)]), "option `exclude` must hold session ids (integers in 0..=2^53), got integer"),
            ("exclude_authid", Value::Dict(Dict::new()), "option `exclude_authid` must be a list of strings, got dict"),
            ("eligible_authid", list(vec![Value::UInt(1)]), "option `eligible_authid` must hold strings, got integer"),
            ("exclude_authrole", true.into(), "option `exclude_authrole` must be a list of strings, got bool"),
            ("eligible_authrole", list(vec![Value::Null]), "option `eligible_authrole` must hold strings, got null"),
        ];
        for (key, value, message) in cases {
            let mut d = Dict::new();
            d.insert(key.into(), value);
            let e = PublishOptions::from_wamp_options(&d).unwrap_err();
            assert_eq!(e.to_string(), message);
            assert!(matches!(&e, OptionError::WrongType { key: k, .. } | OptionError::WrongItem { key: k, .. } if k == key), "{e:?}");
        }
    }

    #[test]
    fn lists_only_refuses_other_options() {
        for key in ["acknowledge", "eligable", "x_vendor"] {
            let mut d = Dict::new();
            d.insert(key.into(), true.into());
            let e = PublishOptions::from_json_options(&d, JsonOptions::ListsOnly).unwrap_err();
            assert_eq!(e, OptionError::Unknown(key.into()));
            assert_eq!(
                e.to_string(),
                format!("unknown option `{key}`; use eligible, eligible_authid, eligible_authrole, exclude, exclude_authid or exclude_authrole")
            );
            assert!(PublishOptions::from_json_options(&d, JsonOptions::Wamp).is_ok(), "over WAMP and HTTP `{key}` is allowed");
        }
    }

    #[test]
    fn filter_from_dict_skips_other_keys_and_nulls() {
        let mut d = dict! {"acknowledge" => "not checked here"};
        d.insert("exclude".into(), list(vec![Value::UInt(4)]));
        d.insert("eligible".into(), Value::Null);
        assert_eq!(Filter::from_dict(&d).unwrap(), Filter { exclude: vec![4], ..Default::default() });
        d.insert("eligible_authid".into(), "x".into());
        assert!(matches!(Filter::from_dict(&d), Err(OptionError::WrongType { .. })));
    }

    #[test]
    fn json_minimal_and_full() {
        let r = json(r#"{"topic": "a.b"}"#, JsonOptions::Wamp).unwrap();
        assert_eq!(r, PublishRequest::new("a.b"));
        let nulls = r#"{"topic": "a.b", "args": null, "kwargs": null, "options": null, "realm": null, "require_subscriber": null}"#;
        assert_eq!(json(nulls, JsonOptions::ListsOnly).unwrap(), PublishRequest::new("a.b"));
        let text = r#"{"topic": "a.b", "args": [1, "two", "\u0000AAEC"], "kwargs": {"k": [null, true, 1.5]},
            "options": {"exclude": [1], "eligible_authrole": ["admin"], "acknowledge": true},
            "realm": "r2", "require_subscriber": false}"#;
        let r = json(text, JsonOptions::Wamp).unwrap();
        assert_eq!(r.args, vec![Value::UInt(1), "two".into(), Value::Bin(vec![0, 1, 2])]);
        assert_eq!(r.kwargs["k"], list(vec![Value::Null, true.into(), Value::Float(1.5)]));
        let options = r.options.unwrap();
        assert!(options.acknowledge && options.exclude_me);
        assert_eq!(options.filter, Filter { exclude: vec![1], eligible_authrole: Some(vec!["admin".into()]), ..Default::default() });
        assert_eq!((r.realm.as_deref(), r.require_subscriber), (Some("r2"), Some(false)));
    }

    #[test]
    fn every_request_error() {
        use JsonOptions::{ListsOnly, Wamp};
        let cases = [
            ("", "not valid JSON: EOF while parsing a value at line 1 column 0"),
            ("{\"topic\": ", "not valid JSON: EOF while parsing a value at line 1 column 10"),
            ("{\"topic\": \"a\"} x", "not valid JSON: trailing characters at line 1 column 16"),
            ("[1]", "a publish request is a JSON object with at least a \"topic\", got list"),
            ("{}", "\"topic\" is missing"),
            ("{\"topic\": null}", "\"topic\" must be a string, got null"),
            ("{\"topic\": 3}", "\"topic\" must be a string, got integer"),
            ("{\"topic\": \"a.b\", \"args\": {}}", "\"args\" must be a list, got dict"),
            ("{\"topic\": \"a.b\", \"kwargs\": []}", "\"kwargs\" must be an object, got list"),
            ("{\"topic\": \"a.b\", \"options\": \"x\"}", "\"options\" must be an object, got string"),
            ("{\"topic\": \"a.b\", \"realm\": 1}", "\"realm\" must be a string, got integer"),
            ("{\"topic\": \"a.b\", \"require_subscriber\": \"yes\"}", "\"require_subscriber\" must be true or false, got string"),
            (
                "{\"topic\": \"a.b\", \"extra\": 1}",
                "unknown field \"extra\"; a publish request takes topic, args, kwargs, options, realm and require_subscriber",
            ),
            ("{\"topic\": \"a.b\", \"options\": {\"eligible\": \"x\"}}", "option `eligible` must be a list of session ids, got string"),
        ];
        for (text, message) in cases {
            for schema in [Wamp, ListsOnly] {
                assert_eq!(err(text, schema), message, "{text}");
            }
        }
        assert!(matches!(json("", Wamp), Err(RequestError::Json(_))));
        assert!(std::error::Error::source(&json("", Wamp).unwrap_err()).is_some(), "the parser's error is kept");
        assert_eq!(json("{}", Wamp), Err(RequestError::MissingTopic));
        assert!(matches!(json("{\"topic\": \"a.b\", \"x\": 1}", Wamp), Err(RequestError::UnknownField(k)) if k == "x"));
        let deep = format!("{{\"topic\": \"a.b\", \"args\": {}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(err(&deep, Wamp).contains("nest deeper than 64"), "{}", err(&deep, Wamp));
        assert_eq!(
            err("{\"topic\": \"a.b\", \"options\": {\"acknowledge\": true}}", ListsOnly),
            "unknown option `acknowledge`; use eligible, eligible_authid, eligible_authrole, exclude, exclude_authid or exclude_authrole"
        );
        assert!(matches!(
            json("{\"topic\": \"a.b\", \"options\": {\"acknowledge\": 1}}", Wamp),
            Err(RequestError::Option(OptionError::WrongType { .. }))
        ));
    }

    #[test]
    fn to_json_is_compact_and_canonical() {
        assert_eq!(String::from_utf8(PublishRequest::new("a.b").to_json()).unwrap(), r#"{"args":[],"kwargs":{},"topic":"a.b"}"#);
        let r = PublishRequest {
            topic: "a.b".into(),
            args: vec![Value::UInt(1), Value::Bin(vec![0, 1, 2]), Value::Float(1.5), Value::Int(-2)],
            kwargs: dict! {"z" => true, "a" => "x"},
            options: Some(PublishOptions { filter: full_filter(), ..PublishOptions::default() }),
            realm: Some("realm1".into()),
            require_subscriber: Some(true),
        };
        assert_eq!(
            String::from_utf8(r.to_json()).unwrap(),
            concat!(
                r#"{"args":[1,"\u0000AAEC",1.5,-2],"kwargs":{"a":"x","z":true},"#,
                r#""options":{"eligible":[0,3],"eligible_authid":["alice","bob"],"eligible_authrole":[],"exclude":[1,9007199254740992],"#,
                r#""exclude_authid":["mallory"],"exclude_authrole":["guest"]},"realm":"realm1","require_subscriber":true,"topic":"a.b"}"#
            )
        );
        let flags = PublishRequest {
            options: Some(PublishOptions { acknowledge: true, exclude_me: false, disclose_me: true, filter: Filter::default(), retain: false }),
            ..PublishRequest::new("a.b")
        };
        assert_eq!(
            String::from_utf8(flags.to_json()).unwrap(),
            r#"{"args":[],"kwargs":{},"options":{"acknowledge":true,"disclose_me":true,"exclude_me":false},"topic":"a.b"}"#
        );
    }

    #[test]
    fn json_round_trips() {
        let mut requests = vec![PublishRequest::new("a.b")];
        requests.push(PublishRequest {
            topic: "com.example.x".into(),
            args: vec![Value::Null, Value::Bin(vec![255; 5]), list(vec![Value::Dict(dict! {"k" => "v"})]), Value::Float(-0.25)],
            kwargs: dict! {"n" => 7u64},
            options: Some(PublishOptions { acknowledge: true, exclude_me: false, disclose_me: true, filter: full_filter(), retain: false }),
            realm: Some("r".into()),
            require_subscriber: Some(false),
        });
        requests.push(PublishRequest { options: Some(PublishOptions::default()), require_subscriber: Some(true), ..PublishRequest::new("a.c") });
        for r in requests {
            let back = PublishRequest::from_json(&r.to_json(), JsonOptions::Wamp).unwrap();
            assert_eq!(back, r);
        }
        // Options that are only lists read back under the CLI's schema too.
        let lists =
            PublishRequest { options: Some(PublishOptions { filter: full_filter(), ..PublishOptions::default() }), ..PublishRequest::new("a.b") };
        assert_eq!(PublishRequest::from_json(&lists.to_json(), JsonOptions::ListsOnly).unwrap(), lists);
    }

    #[test]
    fn topics() {
        assert_eq!(check_topic("com.example.x", UriRules::Loose), Ok(()));
        assert_eq!(check_topic("com.Example-x.y", UriRules::Loose), Ok(()));
        assert!(is_reserved_topic("wamp.session.on_join"));
        assert!(!is_reserved_topic("wampus.x") && !is_reserved_topic("com.wamp.x"));
        assert!(is_reserved_topic("telegraphy.presence.shop.order.7") && !is_reserved_topic("telegraphy.shop.order"));
        assert_eq!(check_topic("wamp.session.on_join", UriRules::Loose), Err(TopicError::Reserved));
        assert_eq!(TopicError::Reserved.to_string(), "topics under `wamp.` and `telegraphy.presence.` are reserved for the router");
        let e = check_topic("com..x", UriRules::Loose).unwrap_err();
        assert_eq!(e.to_string(), "`com..x` is not a valid topic URI (dot-separated words, no spaces, no `#`, no empty parts)");
        let e = check_topic("com.Example", UriRules::Strict).unwrap_err();
        assert_eq!(e.to_string(), "`com.Example` is not a valid topic URI (dot-separated words of a-z, 0-9 and _, no empty parts)");
        assert!(matches!(check_topic("", UriRules::Loose), Err(TopicError::Invalid { .. })));
        assert!(matches!(check_topic("wamp..x", UriRules::Loose), Err(TopicError::Invalid { .. })), "validity is checked first");
    }
}
