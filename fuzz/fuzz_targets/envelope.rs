//! Bus envelopes (bytes from Redis / RabbitMQ, written by anyone who can
//! publish there): decode never panics; what decodes re-encodes canonically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telegraphy_bus::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let bytes = env.encode();
        let again = Envelope::decode(&bytes).expect("canonical bytes decode");
        // Compare bytes, not values: NaN never equals itself.
        assert_eq!(again.encode(), bytes, "canonical encoding is stable");
    }
});
