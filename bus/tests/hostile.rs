//! Property tests for the bus envelope: arbitrary and mutated bytes never
//! panic the decoder; random envelopes survive a round trip.

use proptest::prelude::*;
use telegraphy_bus::{Envelope, Filter, Publisher};
use telegraphy_wamp::Value;

fn envelope() -> impl Strategy<Value = Envelope> {
    let ids = proptest::collection::vec(0u64..=(1 << 53), 0..4);
    let names = proptest::collection::vec("[a-z]{1,8}", 0..4);
    let filter =
        (ids.clone(), proptest::option::of(ids), names.clone(), proptest::option::of(names.clone()), names.clone(), proptest::option::of(names))
            .prop_map(|(exclude, eligible, exclude_authid, eligible_authid, exclude_authrole, eligible_authrole)| Filter {
                exclude,
                eligible,
                exclude_authid,
                eligible_authid,
                exclude_authrole,
                eligible_authrole,
            });
    let publisher = proptest::option::of((any::<u64>(), 0u64..=(1 << 53), "[a-z]{0,8}", "[a-z]{0,8}", any::<bool>(), any::<bool>()).prop_map(
        |(node, session, authid, authrole, exclude_me, disclose_me)| Publisher { node, session, authid, authrole, exclude_me, disclose_me },
    ));
    let args = proptest::collection::vec(prop_oneof![any::<u64>().prop_map(Value::UInt), ".{0,20}".prop_map(Value::Str)], 0..4);
    ("[a-z0-9]{1,10}", 1u64..=(1 << 53), "[a-z.]{1,30}", args, filter, publisher, any::<u64>()).prop_map(
        |(realm, publication, topic, args, filter, publisher, published_at_us)| Envelope {
            realm,
            publication,
            topic,
            args,
            kwargs: Default::default(),
            filter,
            publisher,
            published_at_us,
            retain: false,
            position: None,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn envelopes_round_trip(e in envelope()) {
        prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn mutated_envelopes_never_panic(e in envelope(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = e.encode();
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        if let Err(err) = Envelope::decode(&bytes) {
            prop_assert!(matches!(err.cause(), "malformed" | "unsupported_version"));
        }
    }
}

/// Fields a newer format revision appends are skipped, however deep (the
/// decoder's depth limit holds there too), and a newer major version is
/// named as such whatever follows it.
#[test]
fn appended_fields_are_skipped_and_bounded() {
    let e = Envelope {
        realm: "realm1".into(),
        publication: 7,
        topic: "a.b".into(),
        args: vec![Value::UInt(1)],
        kwargs: Default::default(),
        filter: Filter::default(),
        publisher: None,
        published_at_us: 1,
        retain: false,
        position: None,
    };
    let mut bytes = e.encode();
    // The list header 0x99 (9 fields) becomes 0x9a (10), then an extra field.
    assert_eq!(bytes[0], 0x99);
    bytes[0] = 0x9a;
    let mut one_more = bytes.clone();
    one_more.push(0xc0);
    assert_eq!(Envelope::decode(&one_more).unwrap(), e, "an appended field is skipped");
    // A hostile appended field nested 100,000 levels deep: refused, no stack overflow.
    let mut deep = bytes.clone();
    deep.extend(std::iter::repeat_n(0x91u8, 100_000));
    deep.push(0xc0);
    assert!(Envelope::decode(&deep).is_err());
    // Version 2 with anything after it: unsupported, not malformed.
    let mut v2 = bytes;
    v2[1] = 2;
    v2.push(0xc0);
    assert_eq!(Envelope::decode(&v2).unwrap_err().cause(), "unsupported_version");
}

/// Unknown keys in the filter and publisher maps are skipped, however deep
/// their values (depth-limited, never a stack overflow).
#[test]
fn unknown_map_keys_are_skipped_and_bounded() {
    // [1, 7, "r", "a.b", 1, [], {}, {"x": <deep>}, nil]
    let mut bytes = vec![0x99, 0x01, 0x07, 0xa1, b'r', 0xa3, b'a', b'.', b'b', 0x01, 0x90, 0x80, 0x81, 0xa1, b'x'];
    let mut shallow = bytes.clone();
    shallow.extend([0x91, 0xc0, 0xc0]);
    let e = Envelope::decode(&shallow).unwrap();
    assert_eq!((e.realm.as_str(), e.topic.as_str(), e.filter.is_open()), ("r", "a.b", true));
    bytes.extend(std::iter::repeat_n(0x91u8, 100_000));
    bytes.push(0xc0);
    assert!(Envelope::decode(&bytes).is_err());
}
