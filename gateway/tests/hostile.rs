//! Property tests for the gateway's own decoders on network paths: the HTTP
//! publish body and the JWT ticket. Arbitrary and mutated input never
//! panics; it is refused with a message.

use proptest::prelude::*;
use telegraphy_gateway::harness::parse_body;
use telegraphy_gateway::harness::Authenticator;
use telegraphy_gateway::Config;
use telegraphy_wamp::UriRules;

fn authenticator() -> Authenticator {
    let mut c = Config::default();
    c.auth.jwt_secret = Some("a-test-secret-that-is-long-enough-0123456789".into());
    Authenticator::from_config(&c).unwrap()
}

const VALID_BODY: &str = r#"{"topic": "com.example.x", "args": [1, "two", {"k": [null, true, 1.5]}], "kwargs": {"a": "\u0000AAEC"}, "options": {"exclude": [1, 2], "eligible_authrole": ["admin"]}, "realm": "realm1"}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn publish_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_body(&bytes, "realm1", |r| r == "realm1", UriRules::Loose);
    }

    #[test]
    fn mutated_publish_bodies_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = VALID_BODY.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        match parse_body(&bytes, "realm1", |r| r == "realm1", UriRules::Loose) {
            Ok(req) => prop_assert!(!req.topic.is_empty()),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn tickets_never_panic(ticket in ".{0,300}") {
        let auth = authenticator();
        prop_assert!(auth.verify_ticket(&ticket, "realm1").is_err());
    }

    #[test]
    fn jwt_shaped_tickets_never_panic(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,80}") {
        let auth = authenticator();
        let ticket = format!("{a}.{b}.{c}");
        prop_assert!(auth.verify_ticket(&ticket, "realm1").is_err());
    }
}

#[test]
fn the_valid_body_parses() {
    let req = parse_body(VALID_BODY.as_bytes(), "realm1", |r| r == "realm1", UriRules::Loose).unwrap();
    assert_eq!(req.topic, "com.example.x");
    assert_eq!(req.filter.exclude, vec![1, 2]);
}
