//! The shared envelope test vectors (`tests/vectors/envelope/`): each JSON
//! file describes an envelope, the `.msgpack` file beside it holds its exact
//! bytes. Every publisher implementation (Rust here, Python in
//! `tests/vectors/check_vectors.py`) must produce those bytes and read them back.
//!
//! `TELEGRAPHY_WRITE_VECTORS=1 cargo test -p telegraphy-bus --test vectors`
//! writes missing `.msgpack` files (review them with the Python check).

use std::path::PathBuf;

use telegraphy_bus::{Envelope, Filter, Publisher};
use telegraphy_wamp::{Serialization, Value};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/envelope")
}

fn envelope_from(description: &Value) -> Envelope {
    let Value::Dict(d) = description else { panic!("a vector is a JSON object") };
    let str_list = |v: &Value| -> Vec<String> {
        let Value::List(l) = v else { panic!("list expected") };
        l.iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let id_list = |v: &Value| -> Vec<u64> {
        let Value::List(l) = v else { panic!("list expected") };
        l.iter().map(|s| s.as_u64().unwrap()).collect()
    };
    let Value::Dict(f) = &d["filter"] else { panic!("filter") };
    let filter = Filter {
        exclude: f.get("exclude").map(id_list).unwrap_or_default(),
        eligible: f.get("eligible").map(id_list),
        exclude_authid: f.get("exclude_authid").map(str_list).unwrap_or_default(),
        eligible_authid: f.get("eligible_authid").map(str_list),
        exclude_authrole: f.get("exclude_authrole").map(str_list).unwrap_or_default(),
        eligible_authrole: f.get("eligible_authrole").map(str_list),
    };
    let publisher = match &d["publisher"] {
        Value::Null => None,
        Value::Dict(p) => Some(Publisher {
            node: p["node"].as_u64().unwrap(),
            session: p["session"].as_u64().unwrap(),
            authid: p["authid"].as_str().unwrap().into(),
            authrole: p["authrole"].as_str().unwrap().into(),
            exclude_me: p["exclude_me"].as_bool().unwrap(),
            disclose_me: p["disclose_me"].as_bool().unwrap(),
        }),
        _ => panic!("publisher"),
    };
    let Value::List(args) = d["args"].clone() else { panic!("args") };
    let Value::Dict(kwargs) = d["kwargs"].clone() else { panic!("kwargs") };
    Envelope {
        realm: d["realm"].as_str().unwrap().into(),
        publication: d["publication"].as_u64().unwrap(),
        topic: d["topic"].as_str().unwrap().into(),
        args,
        kwargs,
        filter,
        publisher,
        published_at_us: d["published_at_us"].as_u64().unwrap(),
        retain: false,
        position: None,
    }
}

#[test]
fn rust_encoder_reproduces_every_vector() {
    let write = std::env::var_os("TELEGRAPHY_WRITE_VECTORS").is_some();
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir()).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let description = Serialization::Json.decode_value(&std::fs::read(&path).unwrap()).unwrap();
        let envelope = envelope_from(&description);
        let bytes = envelope.encode();
        let expected_path = path.with_extension("msgpack");
        if write && !expected_path.exists() {
            std::fs::write(&expected_path, &bytes).unwrap();
        }
        let expected = std::fs::read(&expected_path).unwrap_or_else(|_| panic!("{} has no .msgpack beside it", path.display()));
        assert_eq!(bytes, expected, "{}: encoded bytes differ from the vector", path.display());
        assert_eq!(Envelope::decode(&expected).unwrap(), envelope, "{}: decoding the vector", path.display());
        checked += 1;
    }
    assert!(checked >= 4, "expected the shared vectors, found {checked}");
}

#[test]
fn newer_major_versions_and_garbage_are_refused_with_a_cause() {
    let minimal = std::fs::read(dir().join("minimal.msgpack")).unwrap();
    let mut newer = minimal.clone();
    assert_eq!(newer[1], 0x01, "version is the first element");
    newer[1] = 0x02;
    let err = Envelope::decode(&newer).unwrap_err();
    assert_eq!(err.cause(), "unsupported_version");
    assert!(err.to_string().contains("upgrade"), "{err}");
    // A newer minor revision appends fields: still readable.
    let mut appended = minimal.clone();
    assert_eq!(appended[0], 0x99, "fixarray of 9");
    appended[0] = 0x9a;
    appended.push(0xc0);
    assert!(Envelope::decode(&appended).is_ok());
    for garbage in [&b""[..], b"probe", &[0x91, 0x01], &minimal[..minimal.len() - 1], &[0xdd, 0xff, 0xff, 0xff, 0xff]] {
        assert_eq!(Envelope::decode(garbage).unwrap_err().cause(), "malformed", "{garbage:?}");
    }
}
