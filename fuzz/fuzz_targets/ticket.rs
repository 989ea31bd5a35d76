//! WAMP tickets (JWTs from browsers): verification never panics and never
//! accepts a token not signed with the configured secret.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use telegraphy_gateway::harness::Authenticator;
use telegraphy_gateway::Config;

fn auth() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let mut c = Config::default();
        c.auth.jwt_secret = Some("a-fuzzing-secret-that-is-long-enough-0123".into());
        Authenticator::from_config(&c).expect("valid config")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(ticket) = std::str::from_utf8(data) {
        assert!(auth().verify_ticket(ticket, "realm1").is_err(), "a forged ticket was accepted");
    }
});
