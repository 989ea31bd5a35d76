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
