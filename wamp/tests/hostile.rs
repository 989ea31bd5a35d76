//! Property tests: arbitrary and mutated bytes never panic the decoders, and
//! every value survives a round trip through both serializers.

use proptest::prelude::*;
use telegraphy_wamp::{Dict, Message, Serialization, Value};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (i64::MIN..0i64).prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan() && f.is_finite()).prop_map(Value::Float),
        ".{0,40}".prop_filter("strings starting with NUL are binary in JSON", |s| !s.starts_with('\0')).prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bin),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::btree_map(".{0,12}", inner, 0..8).prop_map(Value::Dict),
        ]
    })
}

fn dict() -> impl Strategy<Value = Dict> {
    proptest::collection::btree_map("[a-z_]{1,10}", value(), 0..4).prop_map(|m| m.into_iter().collect::<Dict>())
}

fn args() -> impl Strategy<Value = Vec<Value>> {
    proptest::collection::vec(value(), 0..4)
}

fn id() -> std::ops::RangeInclusive<u64> {
    0u64..=(1 << 53)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        ("[a-z.]{1,20}", dict()).prop_map(|(realm, details)| Message::Hello { realm, details }),
        (id(), dict(), "[a-z.]{1,20}", args(), dict()).prop_map(|(request, options, topic, args, kwargs)| Message::Publish {
            request,
            options,
            topic,
            args,
            kwargs
        }),
        (id(), dict(), "[a-z.]{1,20}").prop_map(|(request, options, topic)| Message::Subscribe { request, options, topic }),
        (id(), id(), dict(), args(), dict()).prop_map(|(subscription, publication, details, args, kwargs)| Message::Event {
            subscription,
            publication,
            details,
            args,
            kwargs
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for ser in Serialization::ALL {
            let _ = ser.decode(&bytes);
        }
    }

    #[test]
    fn values_round_trip(v in value()) {
        for ser in Serialization::ALL {
            let bytes = ser.encode(&v).unwrap();
            prop_assert_eq!(ser.decode_value(&bytes).unwrap(), v.clone());
        }
    }

    #[test]
    fn messages_round_trip(m in message()) {
        for ser in Serialization::ALL {
            let bytes = ser.encode(&m).unwrap();
            prop_assert_eq!(ser.decode(&bytes).unwrap(), m.clone());
        }
    }

    #[test]
    fn mutated_messages_never_panic(m in message(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8)) {
        for ser in Serialization::ALL {
            let mut bytes = ser.encode(&m).unwrap().to_vec();
            for (at, byte, op) in &edits {
                if bytes.is_empty() { break; }
                let i = at % bytes.len();
                match op {
                    0 => bytes[i] = *byte,
                    1 => bytes.insert(i, *byte),
                    _ => { bytes.remove(i); }
                }
            }
            // Decoding either fails cleanly or yields a message that encodes again.
            if let Ok(decoded) = ser.decode(&bytes) {
                prop_assert!(ser.encode(&decoded).is_ok());
            }
        }
    }
}
