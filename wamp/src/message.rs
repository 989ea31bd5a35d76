//! WAMP v2 messages as typed values, and their conversion from and to the
//! generic list form every serializer shares (`[CODE, field, ...]`).

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::value::{Dict, Value};

/// A WAMP ID (session, publication, subscription, request). Always in `0..=2^53`.
pub type Id = u64;

/// The largest valid WAMP ID, 2^53.
pub const MAX_ID: Id = 1 << 53;

/// Message type codes.
#[allow(missing_docs)]
pub mod code {
    pub const HELLO: u64 = 1;
    pub const WELCOME: u64 = 2;
    pub const ABORT: u64 = 3;
    pub const CHALLENGE: u64 = 4;
    pub const AUTHENTICATE: u64 = 5;
    pub const GOODBYE: u64 = 6;
    pub const ERROR: u64 = 8;
    pub const PUBLISH: u64 = 16;
    pub const PUBLISHED: u64 = 17;
    pub const SUBSCRIBE: u64 = 32;
    pub const SUBSCRIBED: u64 = 33;
    pub const UNSUBSCRIBE: u64 = 34;
    pub const UNSUBSCRIBED: u64 = 35;
    pub const EVENT: u64 = 36;
    pub const CALL: u64 = 48;
    pub const CANCEL: u64 = 49;
    pub const RESULT: u64 = 50;
    pub const REGISTER: u64 = 64;
    pub const REGISTERED: u64 = 65;
    pub const UNREGISTER: u64 = 66;
    pub const UNREGISTERED: u64 = 67;
    pub const INVOCATION: u64 = 68;
    pub const INTERRUPT: u64 = 69;
    pub const YIELD: u64 = 70;
}

/// A WAMP message.
///
/// `args` and `kwargs` are empty when absent on the wire; encoding omits them
/// again when empty, as the spec asks.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Message {
    Hello {
        realm: String,
        details: Dict,
    },
    Welcome {
        session: Id,
        details: Dict,
    },
    Abort {
        details: Dict,
        reason: String,
    },
    Challenge {
        authmethod: String,
        extra: Dict,
    },
    Authenticate {
        signature: String,
        extra: Dict,
    },
    Goodbye {
        details: Dict,
        reason: String,
    },
    Error {
        request_type: u64,
        request: Id,
        details: Dict,
        error: String,
        args: Vec<Value>,
        kwargs: Dict,
    },
    Publish {
        request: Id,
        options: Dict,
        topic: String,
        args: Vec<Value>,
        kwargs: Dict,
    },
    Published {
        request: Id,
        publication: Id,
    },
    Subscribe {
        request: Id,
        options: Dict,
        topic: String,
    },
    Subscribed {
        request: Id,
        subscription: Id,
    },
    Unsubscribe {
        request: Id,
        subscription: Id,
    },
    Unsubscribed {
        request: Id,
    },
    Event {
        subscription: Id,
        publication: Id,
        details: Dict,
        args: Vec<Value>,
        kwargs: Dict,
    },
    /// A call of a procedure (the router answers its meta procedures).
    Call {
        request: Id,
        options: Dict,
        procedure: String,
        args: Vec<Value>,
        kwargs: Dict,
    },
    /// The answer to a CALL.
    Result {
        request: Id,
        details: Dict,
        args: Vec<Value>,
        kwargs: Dict,
    },
    /// A cancel of a CALL in flight (`mode`: skip, kill, killnowait).
    Cancel {
        request: Id,
        options: Dict,
    },
    /// A callee offers a procedure (or a pattern of them).
    Register {
        request: Id,
        options: Dict,
        procedure: String,
    },
    /// The answer to REGISTER.
    Registered {
        request: Id,
        registration: Id,
    },
    /// A callee withdraws a registration.
    Unregister {
        request: Id,
        registration: Id,
    },
    /// The answer to UNREGISTER; with request 0 and `details.registration`,
    /// the router revoking a registration.
    Unregistered {
        request: Id,
        details: Dict,
    },
    /// A call handed to a callee.
    Invocation {
        request: Id,
        registration: Id,
        details: Dict,
        args: Vec<Value>,
        kwargs: Dict,
    },
    /// The router asks a callee to stop an invocation.
    Interrupt {
        request: Id,
        options: Dict,
    },
    /// A callee's (progressive or final) result of an invocation.
    Yield {
        request: Id,
        options: Dict,
        args: Vec<Value>,
        kwargs: Dict,
    },
}

/// Why a list could not be read as a WAMP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The frame is not a non-empty list starting with an integer code.
    #[error("a WAMP message must be a list that starts with an integer message code")]
    NotAMessage,
    /// The code is not a WAMP v2 message code.
    #[error("unknown WAMP message code {0}")]
    UnknownCode(u64),
    /// Too few or too many fields for the message type.
    #[error("{name} takes {expected} fields, got {got}")]
    Arity {
        /// The message type.
        name: &'static str,
        /// What the spec allows, for the message.
        expected: &'static str,
        /// How many fields came.
        got: usize,
    },
    /// A field has the wrong type or an out-of-range value.
    #[error("{name}: field {field} must be {expected}, got {got}")]
    FieldType {
        /// The message type.
        name: &'static str,
        /// The field's name in the spec.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
}

impl Message {
    /// The message's type code.
    pub fn code(&self) -> u64 {
        use code::*;
        match self {
            Message::Hello { .. } => HELLO,
            Message::Welcome { .. } => WELCOME,
            Message::Abort { .. } => ABORT,
            Message::Challenge { .. } => CHALLENGE,
            Message::Authenticate { .. } => AUTHENTICATE,
            Message::Goodbye { .. } => GOODBYE,
            Message::Error { .. } => ERROR,
            Message::Publish { .. } => PUBLISH,
            Message::Call { .. } => CALL,
            Message::Result { .. } => RESULT,
            Message::Published { .. } => PUBLISHED,
            Message::Subscribe { .. } => SUBSCRIBE,
            Message::Subscribed { .. } => SUBSCRIBED,
            Message::Unsubscribe { .. } => UNSUBSCRIBE,
            Message::Unsubscribed { .. } => UNSUBSCRIBED,
            Message::Event { .. } => EVENT,
            Message::Cancel { .. } => CANCEL,
            Message::Register { .. } => REGISTER,
            Message::Registered { .. } => REGISTERED,
            Message::Unregister { .. } => UNREGISTER,
            Message::Unregistered { .. } => UNREGISTERED,
            Message::Invocation { .. } => INVOCATION,
            Message::Interrupt { .. } => INTERRUPT,
            Message::Yield { .. } => YIELD,
        }
    }

    /// The spec's name of the message type.
    pub fn name(&self) -> &'static str {
        name_of(self.code())
    }

    /// Reads a message from its list form.
    pub fn from_list(fields: Vec<Value>) -> Result<Message, MessageError> {
        let mut it = fields.into_iter();
        let code = match it.next() {
            Some(Value::UInt(c)) => c,
            _ => return Err(MessageError::NotAMessage),
        };
        let name = name_of(code);
        if name == "UNKNOWN" {
            return Err(MessageError::UnknownCode(code));
        }
        let rest: Vec<Value> = it.collect();
        let mut r = Reader { name, fields: rest.into_iter(), index: 0 };
        let got = r.fields.len();
        let arity = |min: usize, max: usize, expected: &'static str| {
            if got < min || got > max {
                Err(MessageError::Arity { name, expected, got })
            } else {
                Ok(())
            }
        };
        use code::*;
        let msg = match code {
            HELLO => {
                arity(2, 2, "2 (Realm, Details)")?;
                Message::Hello { realm: r.string("Realm")?, details: r.dict("Details")? }
            }
            WELCOME => {
                arity(2, 2, "2 (Session, Details)")?;
                Message::Welcome { session: r.id("Session")?, details: r.dict("Details")? }
            }
            ABORT => {
                arity(2, 2, "2 (Details, Reason)")?;
                Message::Abort { details: r.dict("Details")?, reason: r.string("Reason")? }
            }
            CHALLENGE => {
                arity(2, 2, "2 (AuthMethod, Extra)")?;
                Message::Challenge { authmethod: r.string("AuthMethod")?, extra: r.dict("Extra")? }
            }
            AUTHENTICATE => {
                arity(2, 2, "2 (Signature, Extra)")?;
                Message::Authenticate { signature: r.string("Signature")?, extra: r.dict("Extra")? }
            }
            GOODBYE => {
                arity(2, 2, "2 (Details, Reason)")?;
                Message::Goodbye { details: r.dict("Details")?, reason: r.string("Reason")? }
            }
            ERROR => {
                arity(4, 6, "4 to 6 (REQUEST.Type, REQUEST.Request, Details, Error, Arguments, ArgumentsKw)")?;
                Message::Error {
                    request_type: r.id("REQUEST.Type")?,
                    request: r.id("REQUEST.Request")?,
                    details: r.dict("Details")?,
                    error: r.string("Error")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            PUBLISH => {
                arity(3, 5, "3 to 5 (Request, Options, Topic, Arguments, ArgumentsKw)")?;
                Message::Publish {
                    request: r.id("Request")?,
                    options: r.dict("Options")?,
                    topic: r.string("Topic")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            PUBLISHED => {
                arity(2, 2, "2 (PUBLISH.Request, Publication)")?;
                Message::Published { request: r.id("PUBLISH.Request")?, publication: r.id("Publication")? }
            }
            SUBSCRIBE => {
                arity(3, 3, "3 (Request, Options, Topic)")?;
                Message::Subscribe { request: r.id("Request")?, options: r.dict("Options")?, topic: r.string("Topic")? }
            }
            SUBSCRIBED => {
                arity(2, 2, "2 (SUBSCRIBE.Request, Subscription)")?;
                Message::Subscribed { request: r.id("SUBSCRIBE.Request")?, subscription: r.id("Subscription")? }
            }
            UNSUBSCRIBE => {
                arity(2, 2, "2 (Request, SUBSCRIBED.Subscription)")?;
                Message::Unsubscribe { request: r.id("Request")?, subscription: r.id("SUBSCRIBED.Subscription")? }
            }
            UNSUBSCRIBED => {
                arity(1, 2, "1 or 2 (UNSUBSCRIBE.Request, Details)")?;
                Message::Unsubscribed { request: r.id("UNSUBSCRIBE.Request")? }
            }
            EVENT => {
                arity(3, 5, "3 to 5 (Subscription, Publication, Details, Arguments, ArgumentsKw)")?;
                Message::Event {
                    subscription: r.id("SUBSCRIBED.Subscription")?,
                    publication: r.id("PUBLISHED.Publication")?,
                    details: r.dict("Details")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            CALL => {
                arity(3, 5, "3 to 5 (Request, Options, Procedure, Arguments, ArgumentsKw)")?;
                Message::Call {
                    request: r.id("Request")?,
                    options: r.dict("Options")?,
                    procedure: r.string("Procedure")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            RESULT => {
                arity(2, 4, "2 to 4 (CALL.Request, Details, Arguments, ArgumentsKw)")?;
                Message::Result {
                    request: r.id("CALL.Request")?,
                    details: r.dict("Details")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            CANCEL => {
                arity(2, 2, "2 (CALL.Request, Options)")?;
                Message::Cancel { request: r.id("CALL.Request")?, options: r.dict("Options")? }
            }
            REGISTER => {
                arity(3, 3, "3 (Request, Options, Procedure)")?;
                Message::Register { request: r.id("Request")?, options: r.dict("Options")?, procedure: r.string("Procedure")? }
            }
            REGISTERED => {
                arity(2, 2, "2 (REGISTER.Request, Registration)")?;
                Message::Registered { request: r.id("REGISTER.Request")?, registration: r.id("Registration")? }
            }
            UNREGISTER => {
                arity(2, 2, "2 (Request, REGISTERED.Registration)")?;
                Message::Unregister { request: r.id("Request")?, registration: r.id("REGISTERED.Registration")? }
            }
            UNREGISTERED => {
                arity(1, 2, "1 or 2 (UNREGISTER.Request, Details)")?;
                Message::Unregistered { request: r.id("UNREGISTER.Request")?, details: r.opt_dict("Details")? }
            }
            INVOCATION => {
                arity(3, 5, "3 to 5 (Request, REGISTERED.Registration, Details, Arguments, ArgumentsKw)")?;
                Message::Invocation {
                    request: r.id("Request")?,
                    registration: r.id("REGISTERED.Registration")?,
                    details: r.dict("Details")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            INTERRUPT => {
                arity(2, 2, "2 (INVOCATION.Request, Options)")?;
                Message::Interrupt { request: r.id("INVOCATION.Request")?, options: r.dict("Options")? }
            }
            YIELD => {
                arity(2, 4, "2 to 4 (INVOCATION.Request, Options, Arguments, ArgumentsKw)")?;
                Message::Yield {
                    request: r.id("INVOCATION.Request")?,
                    options: r.dict("Options")?,
                    args: r.opt_list("Arguments")?,
                    kwargs: r.opt_dict("ArgumentsKw")?,
                }
            }
            _ => return Err(MessageError::UnknownCode(code)),
        };
        Ok(msg)
    }
}

/// The spec's name for a message code, or `UNKNOWN`.
pub fn name_of(code: u64) -> &'static str {
    use code::*;
    match code {
        HELLO => "HELLO",
        WELCOME => "WELCOME",
        ABORT => "ABORT",
        CHALLENGE => "CHALLENGE",
        AUTHENTICATE => "AUTHENTICATE",
        GOODBYE => "GOODBYE",
        ERROR => "ERROR",
        PUBLISH => "PUBLISH",
        PUBLISHED => "PUBLISHED",
        SUBSCRIBE => "SUBSCRIBE",
        SUBSCRIBED => "SUBSCRIBED",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        UNSUBSCRIBED => "UNSUBSCRIBED",
        EVENT => "EVENT",
        CALL => "CALL",
        CANCEL => "CANCEL",
        RESULT => "RESULT",
        REGISTER => "REGISTER",
        REGISTERED => "REGISTERED",
        UNREGISTER => "UNREGISTER",
        UNREGISTERED => "UNREGISTERED",
        INVOCATION => "INVOCATION",
        INTERRUPT => "INTERRUPT",
        YIELD => "YIELD",
        _ => "UNKNOWN",
    }
}

struct Reader {
    name: &'static str,
    fields: std::vec::IntoIter<Value>,
    index: usize,
}

impl Reader {
    fn next(&mut self) -> Option<Value> {
        self.index += 1;
        self.fields.next()
    }
    fn err(&self, field: &'static str, expected: &'static str, got: &Value) -> MessageError {
        MessageError::FieldType { name: self.name, field, expected, got: got.type_name() }
    }
    fn id(&mut self, field: &'static str) -> Result<Id, MessageError> {
        match self.next() {
            Some(Value::UInt(n)) if n <= MAX_ID => Ok(n),
            Some(Value::UInt(_)) => {
                Err(MessageError::FieldType { name: self.name, field, expected: "an integer in 0..=2^53", got: "an integer above 2^53" })
            }
            Some(other) => Err(self.err(field, "an integer in 0..=2^53", &other)),
            None => Err(MessageError::FieldType { name: self.name, field, expected: "present", got: "nothing" }),
        }
    }
    fn string(&mut self, field: &'static str) -> Result<String, MessageError> {
        match self.next() {
            Some(Value::Str(s)) => Ok(s),
            Some(other) => Err(self.err(field, "a string", &other)),
            None => Err(MessageError::FieldType { name: self.name, field, expected: "present", got: "nothing" }),
        }
    }
    fn dict(&mut self, field: &'static str) -> Result<Dict, MessageError> {
        match self.next() {
            Some(Value::Dict(d)) => Ok(d),
            Some(other) => Err(self.err(field, "a dictionary", &other)),
            None => Err(MessageError::FieldType { name: self.name, field, expected: "present", got: "nothing" }),
        }
    }
    fn opt_list(&mut self, field: &'static str) -> Result<Vec<Value>, MessageError> {
        match self.next() {
            None => Ok(Vec::new()),
            Some(Value::List(l)) => Ok(l),
            Some(other) => Err(self.err(field, "a list", &other)),
        }
    }
    fn opt_dict(&mut self, field: &'static str) -> Result<Dict, MessageError> {
        match self.next() {
            None => Ok(Dict::new()),
            Some(Value::Dict(d)) => Ok(d),
            Some(other) => Err(self.err(field, "a dictionary", &other)),
        }
    }
}

/// Serializes the trailing `Arguments, ArgumentsKw` pair the way the spec
/// wants: both omitted when empty, `[]` for arguments when only keyword
/// arguments are present.
fn payload<S: SerializeSeq>(seq: &mut S, args: &[Value], kwargs: &Dict) -> Result<(), S::Error> {
    if !kwargs.is_empty() {
        seq.serialize_element(args)?;
        seq.serialize_element(kwargs)?;
    } else if !args.is_empty() {
        seq.serialize_element(args)?;
    }
    Ok(())
}

fn payload_len(args: &[Value], kwargs: &Dict) -> usize {
    if !kwargs.is_empty() {
        2
    } else if !args.is_empty() {
        1
    } else {
        0
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let code = self.code();
        match self {
            Message::Hello { realm, details } => (code, realm, details).serialize(s),
            Message::Welcome { session, details } => (code, session, details).serialize(s),
            Message::Abort { details, reason } => (code, details, reason).serialize(s),
            Message::Challenge { authmethod, extra } => (code, authmethod, extra).serialize(s),
            Message::Authenticate { signature, extra } => (code, signature, extra).serialize(s),
            Message::Goodbye { details, reason } => (code, details, reason).serialize(s),
            Message::Error { request_type, request, details, error, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(5 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request_type)?;
                seq.serialize_element(request)?;
                seq.serialize_element(details)?;
                seq.serialize_element(error)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
            Message::Publish { request, options, topic, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(4 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request)?;
                seq.serialize_element(options)?;
                seq.serialize_element(topic)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
            Message::Published { request, publication } => (code, request, publication).serialize(s),
            Message::Subscribe { request, options, topic } => (code, request, options, topic).serialize(s),
            Message::Subscribed { request, subscription } => (code, request, subscription).serialize(s),
            Message::Unsubscribe { request, subscription } => (code, request, subscription).serialize(s),
            Message::Unsubscribed { request } => (code, request).serialize(s),
            Message::Event { subscription, publication, details, args, kwargs } => {
                EventRef { subscription: *subscription, publication: *publication, details, args, kwargs }.serialize(s)
            }
            Message::Call { request, options, procedure, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(4 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request)?;
                seq.serialize_element(options)?;
                seq.serialize_element(procedure)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
            Message::Result { request, details, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(3 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request)?;
                seq.serialize_element(details)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
            Message::Cancel { request, options } => (code, request, options).serialize(s),
            Message::Register { request, options, procedure } => (code, request, options, procedure).serialize(s),
            Message::Registered { request, registration } => (code, request, registration).serialize(s),
            Message::Unregister { request, registration } => (code, request, registration).serialize(s),
            Message::Unregistered { request, details } if details.is_empty() => (code, request).serialize(s),
            Message::Unregistered { request, details } => (code, request, details).serialize(s),
            Message::Invocation { request, registration, details, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(4 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request)?;
                seq.serialize_element(registration)?;
                seq.serialize_element(details)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
            Message::Interrupt { request, options } => (code, request, options).serialize(s),
            Message::Yield { request, options, args, kwargs } => {
                let mut seq = s.serialize_seq(Some(3 + payload_len(args, kwargs)))?;
                seq.serialize_element(&code)?;
                seq.serialize_element(request)?;
                seq.serialize_element(options)?;
                payload(&mut seq, args, kwargs)?;
                seq.end()
            }
        }
    }
}

/// An EVENT that borrows its parts, so the hub can encode one event for a
/// subscription without cloning the payload.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The subscription the event is delivered for.
    pub subscription: Id,
    /// The publication id.
    pub publication: Id,
    /// Event details (`topic` for pattern subscriptions, `publisher`...).
    pub details: &'a Dict,
    /// Positional payload.
    pub args: &'a [Value],
    /// Keyword payload.
    pub kwargs: &'a Dict,
}

impl Serialize for EventRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(4 + payload_len(self.args, self.kwargs)))?;
        seq.serialize_element(&code::EVENT)?;
        seq.serialize_element(&self.subscription)?;
        seq.serialize_element(&self.publication)?;
        seq.serialize_element(self.details)?;
        payload(&mut seq, self.args, self.kwargs)?;
        seq.end()
    }
}

/// A WELCOME whose `Details.roles` is borrowed: a router announces the same
/// roles to every session, so it builds them once and writes them into each
/// WELCOME without copying (`details` must not hold a `roles` key).
#[derive(Debug, Clone, Copy)]
pub struct WelcomeRef<'a> {
    /// The session id.
    pub session: Id,
    /// The session's own details (`authid`, `authrole`, ...).
    pub details: &'a Dict,
    /// `Details.roles`.
    pub roles: &'a Value,
}

impl Serialize for WelcomeRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Details<'a>(&'a Dict, &'a Value);
        impl Serialize for Details<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(self.0.len() + 1))?;
                for (k, v) in self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.serialize_entry("roles", self.1)?;
                map.end()
            }
        }
        (code::WELCOME, self.session, Details(self.details, self.roles)).serialize(s)
    }
}
