//! WAMP messages in msgpack (binary frames): decode never panics, and
//! whatever decodes encodes again, stably.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telegraphy_wamp::Serialization;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Serialization::Msgpack.decode(data) {
        let bytes = Serialization::Msgpack.encode(&msg).expect("a decoded message encodes");
        let again = Serialization::Msgpack.decode(&bytes).expect("an encoded message decodes");
        // Compare bytes, not values: NaN is a valid msgpack float and never equals itself.
        assert_eq!(Serialization::Msgpack.encode(&again).unwrap(), bytes, "encoding is stable");
    }
});
