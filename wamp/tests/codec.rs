//! Codec fixtures: exact bytes for known messages, round trips of every
//! message type in both serializers, and the error each bad input gets.

use telegraphy_wamp::{dict, DecodeError, Dict, Message, MessageError, Serialization, Value};

const JSON: Serialization = Serialization::Json;
const MSGPACK: Serialization = Serialization::Msgpack;

fn every_message() -> Vec<Message> {
    let details = dict! {"message" => "m"};
    let args = vec![Value::UInt(1), Value::from("two"), Value::Bin(vec![0, 255]), Value::Int(-3), Value::Float(0.5)];
    let kwargs = dict! {"k" => true};
    vec![
        Message::Hello { realm: "realm1".into(), details: dict! {"agent" => "x"} },
        Message::Welcome { session: 9_007_199_254_740_992, details: details.clone() },
        Message::Abort { details: details.clone(), reason: "wamp.error.no_such_realm".into() },
        Message::Goodbye { details: Dict::new(), reason: "wamp.close.goodbye_and_out".into() },
        Message::Error {
            request_type: 32,
            request: 7,
            details: Dict::new(),
            error: "wamp.error.invalid_uri".into(),
            args: args.clone(),
            kwargs: Dict::new(),
        },
        Message::Publish { request: 1, options: dict! {"acknowledge" => true}, topic: "a.b".into(), args: Vec::new(), kwargs: kwargs.clone() },
        Message::Publish { request: 2, options: Dict::new(), topic: "a.b".into(), args: Vec::new(), kwargs: Dict::new() },
        Message::Published { request: 1, publication: 2 },
        Message::Subscribe { request: 3, options: dict! {"match" => "prefix"}, topic: "a".into() },
        Message::Subscribed { request: 3, subscription: 4 },
        Message::Unsubscribe { request: 5, subscription: 4 },
        Message::Unsubscribed { request: 5 },
        Message::Event { subscription: 4, publication: 2, details: dict! {"topic" => "a.b"}, args, kwargs },
    ]
}

#[test]
fn every_message_round_trips_in_both_serializers() {
    for ser in Serialization::ALL {
        for msg in every_message() {
            let bytes = ser.encode(&msg).unwrap();
            assert_eq!(ser.decode(&bytes).unwrap(), msg, "{} in {}", msg.name(), ser.label());
        }
    }
}

#[test]
fn exact_bytes_follow_the_spec() {
    // Empty args and kwargs are omitted; kwargs alone come with an empty args list.
    let publish = Message::Publish { request: 1, options: Dict::new(), topic: "a.b".into(), args: Vec::new(), kwargs: dict! {"k" => 1u64} };
    assert_eq!(&JSON.encode(&publish).unwrap()[..], br#"[16,1,{},"a.b",[],{"k":1}]"#);
    let event = Message::Event { subscription: 1, publication: 2, details: Dict::new(), args: Vec::new(), kwargs: Dict::new() };
    assert_eq!(&JSON.encode(&event).unwrap()[..], b"[36,1,2,{}]");
    // Binary in JSON: NUL + base64.
    let bin = Message::Event { subscription: 1, publication: 2, details: Dict::new(), args: vec![Value::Bin(b"hi".to_vec())], kwargs: Dict::new() };
    assert_eq!(&JSON.encode(&bin).unwrap()[..], br#"[36,1,2,{},["\u0000aGk="]]"#);
    // msgpack: fixarray of 3, positive fixint 33 (SUBSCRIBED), 1, 2.
    assert_eq!(&MSGPACK.encode(&Message::Subscribed { request: 1, subscription: 2 }).unwrap()[..], &[0x93, 0x21, 0x01, 0x02]);
    // msgpack binary is a bin 8, not a string.
    assert_eq!(&MSGPACK.encode(&Value::Bin(vec![7])).unwrap()[..], &[0xc4, 0x01, 0x07]);
}

#[test]
fn bad_input_gets_the_right_error() {
    let syntax = |ser: Serialization, bytes: &[u8]| matches!(ser.decode(bytes), Err(DecodeError::Syntax(_)));
    assert!(syntax(JSON, b"[1,"));
    assert!(syntax(JSON, b"[1] trailing"));
    assert!(syntax(JSON, b"[NaN]"));
    assert!(syntax(JSON, b"[\"\\u0000not base64!\"]"));
    assert!(syntax(MSGPACK, &[0xc1]));
    assert!(syntax(MSGPACK, &[0xdd, 0xff, 0xff, 0xff, 0xff]));
    assert!(syntax(MSGPACK, &[0x91, 0x01, 0x01]), "trailing byte");
    let message = |ser: Serialization, bytes: &[u8]| match ser.decode(bytes) {
        Err(DecodeError::Message(e)) => e,
        other => panic!("expected a message error, got {other:?}"),
    };
    assert_eq!(message(JSON, b"{}"), MessageError::NotAMessage);
    assert_eq!(message(JSON, b"[]"), MessageError::NotAMessage);
    assert_eq!(message(JSON, b"[-1]"), MessageError::NotAMessage);
    assert_eq!(message(JSON, b"[7, {}]"), MessageError::UnknownCode(7));
    assert!(matches!(message(JSON, br#"[1, "realm1"]"#), MessageError::Arity { name: "HELLO", got: 1, .. }));
    assert!(matches!(message(JSON, br#"[32, 1, {}, "a", "extra"]"#), MessageError::Arity { name: "SUBSCRIBE", got: 4, .. }));
    assert!(matches!(message(JSON, br#"[32, 1.5, {}, "a"]"#), MessageError::FieldType { field: "Request", .. }));
    assert!(matches!(message(JSON, br#"[32, 9007199254740993, {}, "a"]"#), MessageError::FieldType { field: "Request", .. }));
    assert!(matches!(message(JSON, br#"[16, 1, {}, "a", {}]"#), MessageError::FieldType { field: "Arguments", .. }));
    // The message names the field for a developer reading the ABORT.
    let text = message(JSON, br#"[1, 5, {}]"#).to_string();
    assert!(text.contains("HELLO") && text.contains("Realm") && text.contains("string"), "{text}");
}

#[test]
fn dealer_messages_are_recognised() {
    let call = Message::Call { request: 7, options: Dict::new(), procedure: "com.proc".into(), args: vec![Value::UInt(1)], kwargs: Dict::new() };
    assert_eq!(JSON.decode(br#"[48, 7, {}, "com.proc", [1]]"#).unwrap(), call);
    // The router answers calls: RESULT round trips in both serializers.
    let result = Message::Result { request: 7, details: Dict::new(), args: vec![Value::List(vec![])], kwargs: Dict::new() };
    for s in [JSON, MSGPACK] {
        assert_eq!(s.decode(&s.encode(&result).unwrap()).unwrap(), result);
    }
    assert_eq!(&JSON.encode(&result).unwrap()[..], br#"[50,7,{},[[]]]"#);
    assert!(JSON.decode(br#"[48, 7, {}]"#).is_err(), "CALL without a procedure");
    assert_eq!(
        JSON.decode(br#"[64, 7, {"match": "prefix"}, "com.proc"]"#).unwrap(),
        Message::Register { request: 7, options: dict! {"match" => "prefix"}, procedure: "com.proc".into() }
    );
    assert_eq!(JSON.decode(br#"[70, 7, {}]"#).unwrap(), Message::Yield { request: 7, options: Dict::new(), args: vec![], kwargs: Dict::new() });
    assert_eq!(JSON.decode(br#"[67, 3]"#).unwrap(), Message::Unregistered { request: 3, details: Dict::new() });
    assert!(JSON.decode(br#"[64, 7, {}]"#).is_err(), "REGISTER without a procedure");
    assert!(JSON.decode(br#"[49, 7]"#).is_err(), "CANCEL without options");
    // Every dealer message round trips in both serializers, in the spec's shape.
    let messages = [
        (Message::Register { request: 1, options: Dict::new(), procedure: "p".into() }, &br#"[64,1,{},"p"]"#[..]),
        (Message::Registered { request: 1, registration: 9 }, br#"[65,1,9]"#),
        (Message::Unregister { request: 2, registration: 9 }, br#"[66,2,9]"#),
        (Message::Unregistered { request: 2, details: Dict::new() }, br#"[67,2]"#),
        (Message::Unregistered { request: 0, details: dict! {"registration" => 9u64} }, br#"[67,0,{"registration":9}]"#),
        (
            Message::Invocation { request: 3, registration: 9, details: Dict::new(), args: vec![Value::UInt(1)], kwargs: Dict::new() },
            br#"[68,3,9,{},[1]]"#,
        ),
        (
            Message::Yield { request: 3, options: dict! {"progress" => true}, args: vec![], kwargs: dict! {"a" => 1u64} },
            br#"[70,3,{"progress":true},[],{"a":1}]"#,
        ),
        (Message::Cancel { request: 4, options: dict! {"mode" => "kill"} }, br#"[49,4,{"mode":"kill"}]"#),
        (Message::Interrupt { request: 3, options: Dict::new() }, br#"[69,3,{}]"#),
    ];
    for (msg, json) in messages {
        assert_eq!(&JSON.encode(&msg).unwrap()[..], json, "{}", msg.name());
        for s in [JSON, MSGPACK] {
            assert_eq!(s.decode(&s.encode(&msg).unwrap()).unwrap(), msg, "{} round trip", msg.name());
        }
    }
}

#[test]
fn a_borrowed_welcome_is_the_same_welcome() {
    let roles = Value::Dict(dict! {"broker" => Value::Dict(dict! {"features" => Value::Dict(dict! {"x" => true})})});
    let details = dict! {"authid" => "alice", "realm" => "realm1"};
    let mut whole = details.clone();
    whole.insert("roles".into(), roles.clone());
    for s in [JSON, MSGPACK] {
        let borrowed = s.encode(&telegraphy_wamp::WelcomeRef { session: 9, details: &details, roles: &roles }).unwrap();
        assert_eq!(s.decode(&borrowed).unwrap(), Message::Welcome { session: 9, details: whole.clone() });
    }
}
