//! The shared close-code and error-URI vectors (`tests/vectors/codes.json`)
//! against `src/codes.rs`: the same names and values in both directions,
//! and `close::should_reconnect` answering as the vectors say for every
//! close code.

use std::collections::BTreeMap;

use serde_json::Value;
use telegraphy_wamp::codes::close;
use telegraphy_wamp::{uri, UriKind, UriRules};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/codes.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
}

fn code_of(v: &Value, key: &str) -> u16 {
    v[key].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| panic!("`{key}` is not a close code in {v}"))
}

fn reconnects(action: &str) -> bool {
    match action {
        "reconnect" => true,
        "do_not_reconnect" => false,
        other => panic!("unknown action `{other}` (reconnect, do_not_reconnect)"),
    }
}

/// `pub const NAME: TYPE = VALUE;` lines of one `pub mod` in `src/codes.rs`,
/// read from the source so that a constant added there without a vector
/// entry is noticed.
fn constants(module: &str) -> BTreeMap<String, String> {
    let source = include_str!("../src/codes.rs");
    let start = source.find(&format!("pub mod {module} {{")).unwrap_or_else(|| panic!("no `pub mod {module}` in codes.rs"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("the module ends")];
    let mut found = BTreeMap::new();
    for line in body.lines().map(str::trim).filter(|l| l.starts_with("pub const ")) {
        let (name, rest) = line["pub const ".len()..].split_once(':').expect("pub const NAME: TYPE = VALUE;");
        let value = rest.split_once('=').expect("pub const NAME: TYPE = VALUE;").1.trim().trim_end_matches(';').trim();
        let previous = found.insert(name.trim().to_string(), value.trim_matches('"').to_string());
        assert!(previous.is_none(), "{module}::{name} twice");
    }
    assert!(!found.is_empty(), "no constants found in `pub mod {module}`");
    found
}

/// Panics with the names that differ between the constants of `src/codes.rs`
/// and a list of the vectors.
fn same(module: &str, constants: &BTreeMap<String, String>, list: &str, listed: &BTreeMap<String, String>) {
    let mut wrong = Vec::new();
    for (name, value) in constants {
        match listed.get(name) {
            None => wrong.push(format!("{module}::{name} = {value} is not in {list}")),
            Some(v) if v != value => wrong.push(format!("{module}::{name} is {value}, {list} says {v}")),
            Some(_) => {}
        }
    }
    for (name, value) in listed.iter().filter(|(name, _)| !constants.contains_key(*name)) {
        wrong.push(format!("{list} has {name} = {value}, {module} has no such constant"));
    }
    assert!(wrong.is_empty(), "src/codes.rs and tests/vectors/codes.json differ:\n{}", wrong.join("\n"));
}

#[test]
fn every_close_code_constant_is_in_the_vectors_and_back() {
    let v = vectors();
    let listed: BTreeMap<String, String> =
        v["close"]["codes"].as_array().unwrap().iter().map(|c| (str_of(c, "name").to_string(), code_of(c, "code").to_string())).collect();
    same("codes::close", &constants("close"), "close.codes", &listed);
}

#[test]
fn every_uri_constant_is_in_the_vectors_and_back() {
    let v = vectors();
    let listed: BTreeMap<String, String> =
        v["uris"].as_array().unwrap().iter().map(|u| (str_of(u, "name").to_string(), str_of(u, "uri").to_string())).collect();
    same("codes::uri", &constants("uri"), "uris", &listed);
}

#[test]
fn should_reconnect_follows_the_vectors_for_every_code() {
    let v = vectors();
    let mut listed = BTreeMap::new();
    for c in v["close"]["codes"].as_array().unwrap() {
        let code = code_of(c, "code");
        assert!(listed.insert(code, reconnects(str_of(c, "action"))).is_none(), "close code {code} listed twice");
    }
    let rule = &v["close"]["rule"];
    let ranges: Vec<(u16, u16, bool)> =
        rule["ranges"].as_array().unwrap().iter().map(|r| (code_of(r, "from"), code_of(r, "to"), reconnects(str_of(r, "action")))).collect();
    let otherwise = reconnects(rule["otherwise"].as_str().expect("close.rule.otherwise"));
    for code in 0..=u16::MAX {
        let ranged = ranges.iter().find(|(from, to, _)| (*from..=*to).contains(&code)).map(|r| r.2);
        let want = listed.get(&code).copied().or(ranged).unwrap_or(otherwise);
        assert_eq!(close::should_reconnect(code), want, "close code {code}: should_reconnect disagrees with tests/vectors/codes.json");
        if let (Some(one), Some(two)) = (listed.get(&code), ranged) {
            assert_eq!(*one, two, "close code {code}: its entry and its range in close.rule disagree");
        }
    }
}

#[test]
fn uris_name_the_close_codes_that_follow_them() {
    let v = vectors();
    let codes: Vec<u16> = v["close"]["codes"].as_array().unwrap().iter().map(|c| code_of(c, "code")).collect();
    for u in v["uris"].as_array().unwrap() {
        let uri = str_of(u, "uri");
        assert!(uri::is_valid(uri, UriRules::Strict, UriKind::Concrete), "{uri} is not a strict WAMP URI");
        for m in u["messages"].as_array().unwrap() {
            assert!(matches!(m.as_str(), Some("ERROR" | "ABORT" | "GOODBYE")), "{uri}: unknown message {m}");
        }
        for c in u["close"].as_array().unwrap() {
            let code = c.as_u64().and_then(|n| u16::try_from(n).ok()).expect("a close code");
            assert!(codes.contains(&code), "{uri} is followed by close code {code}, which close.codes does not list");
        }
    }
}
