//! WAMP messages in msgpack (binary frames): decode never panics, and
//! whatever decodes round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telegraphy_wamp::Serialization;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Serialization::Msgpack.decode(data) {
        let bytes = Serialization::Msgpack.encode(&msg).expect("a decoded message encodes");
        let again = Serialization::Msgpack.decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again, msg, "msgpack round trip");
    }
});
