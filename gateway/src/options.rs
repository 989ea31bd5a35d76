//! Reading PUBLISH options (from WAMP or from an HTTP publish body) into
//! what the bus carries. One parser, so both paths accept the same options.

use telegraphy_bus::Filter;
use telegraphy_wamp::{Dict, Id, Value, MAX_ID};

/// Publish options the router acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishOptions {
    /// Reply PUBLISHED / ERROR.
    pub acknowledge: bool,
    /// Do not deliver to the publishing session (default true).
    pub exclude_me: bool,
    /// Tell subscribers who published.
    pub disclose_me: bool,
    /// Black- and white-lists.
    pub filter: Filter,
}

/// Parses options; unknown keys are ignored (as the spec asks), known keys
/// with a wrong type are an error naming the key.
pub fn parse(options: &Dict) -> Result<PublishOptions, String> {
    let mut out = PublishOptions { acknowledge: false, exclude_me: true, disclose_me: false, filter: Filter::default() };
    for (key, value) in options {
        if matches!(value, Value::Null) {
            // Some clients (wampy under msgpack) send null for an unset
            // option: it means the default.
            continue;
        }
        match key.as_str() {
            "acknowledge" => out.acknowledge = flag(key, value)?,
            "exclude_me" => out.exclude_me = flag(key, value)?,
            "disclose_me" => out.disclose_me = flag(key, value)?,
            "exclude" => out.filter.exclude = ids(key, value)?,
            "eligible" => out.filter.eligible = Some(ids(key, value)?),
            "exclude_authid" => out.filter.exclude_authid = strings(key, value)?,
            "eligible_authid" => out.filter.eligible_authid = Some(strings(key, value)?),
            "exclude_authrole" => out.filter.exclude_authrole = strings(key, value)?,
            "eligible_authrole" => out.filter.eligible_authrole = Some(strings(key, value)?),
            // Other options (`retain`, payload passthrough, vendor `x_` keys)
            // are not implemented; the spec lets a broker ignore them.
            _ => {}
        }
    }
    Ok(out)
}

fn flag(key: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("option `{key}` must be a boolean, got {}", other.type_name())),
    }
}

fn ids(key: &str, v: &Value) -> Result<Vec<Id>, String> {
    let Value::List(items) = v else {
        return Err(format!("option `{key}` must be a list of session ids, got {}", v.type_name()));
    };
    items
        .iter()
        .map(|i| match i {
            Value::UInt(n) if *n <= MAX_ID => Ok(*n),
            other => Err(format!("option `{key}` must hold session ids (integers in 0..=2^53), got {}", other.type_name())),
        })
        .collect()
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>, String> {
    let Value::List(items) = v else {
        return Err(format!("option `{key}` must be a list of strings, got {}", v.type_name()));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Str(s) => Ok(s.clone()),
            other => Err(format!("option `{key}` must hold strings, got {}", other.type_name())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use telegraphy_wamp::dict;

    #[test]
    fn defaults() {
        let o = parse(&Dict::new()).unwrap();
        assert!(!o.acknowledge && o.exclude_me && !o.disclose_me && o.filter.is_open());
    }

    #[test]
    fn lists_and_flags() {
        let mut d = dict! {"acknowledge" => true, "exclude_me" => false, "disclose_me" => true, "future_option" => "x"};
        d.insert("exclude".into(), Value::List(vec![Value::UInt(7)]));
        d.insert("eligible_authrole".into(), Value::List(vec!["admin".into()]));
        let o = parse(&d).unwrap();
        assert!(o.acknowledge && !o.exclude_me && o.disclose_me);
        assert_eq!(o.filter.exclude, vec![7]);
        assert_eq!(o.filter.eligible_authrole, Some(vec!["admin".to_string()]));
    }

    #[test]
    fn wrong_types_name_the_option() {
        let err = parse(&dict! {"acknowledge" => "yes"}).unwrap_err();
        assert!(err.contains("acknowledge"), "{err}");
        let mut d = Dict::new();
        d.insert("eligible".into(), Value::List(vec!["x".into()]));
        assert!(parse(&d).unwrap_err().contains("eligible"));
        let mut d = Dict::new();
        d.insert("exclude".into(), Value::List(vec![Value::UInt(MAX_ID + 1)]));
        assert!(parse(&d).is_err());
    }

    #[test]
    fn null_options_take_their_defaults() {
        let mut d = Dict::new();
        d.insert("exclude_me".into(), Value::Null);
        d.insert("acknowledge".into(), Value::Null);
        d.insert("eligible".into(), Value::Null);
        let o = parse(&d).unwrap();
        assert!(o.exclude_me && !o.acknowledge && o.filter.is_open());
    }
}
