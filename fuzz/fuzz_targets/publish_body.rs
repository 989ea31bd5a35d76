//! `POST /publish` bodies: parsing never panics; refusals carry a message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telegraphy_gateway::harness::parse_body;
use telegraphy_wamp::UriRules;

fuzz_target!(|data: &[u8]| {
    match parse_body(data, "realm1", |r| r == "realm1", UriRules::Loose) {
        Ok(req) => assert!(!req.topic.is_empty()),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
