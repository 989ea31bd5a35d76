//! WAMP messages in JSON (text frames from browsers): decode never panics,
//! and whatever decodes encodes again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telegraphy_wamp::Serialization;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Serialization::Json.decode(data) {
        let bytes = Serialization::Json.encode(&msg).expect("a decoded message encodes");
        let again = Serialization::Json.decode(&bytes).expect("an encoded message decodes");
        assert_eq!(Serialization::Json.encode(&again).unwrap(), bytes, "encoding is stable");
    }
});
