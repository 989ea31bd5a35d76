//! URI validation and topic matching (WAMP v2 basic profile "URIs" and the
//! advanced profile's pattern-based subscriptions).
//!
//! * **Loose** rules (the default): components are non-empty and contain no
//!   whitespace, `.` or `#`.
//! * **Strict** rules: components use only `0-9`, `a-z` and `_`.
//!
//! Patterns relax the rules: a `wildcard` pattern may have empty components
//! (`com..update` matches `com.anything.update`), a `prefix` pattern may end
//! in a dot (`com.myapp.` matches everything below `com.myapp`).

use std::fmt;

/// Which URI rules a router enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UriRules {
    /// Non-empty components without whitespace, `.` or `#`.
    #[default]
    Loose,
    /// Components of `[0-9a-z_]` only.
    Strict,
}

/// How a subscription matches topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchPolicy {
    /// The topic equals the subscription URI.
    Exact,
    /// The topic starts with the subscription URI.
    Prefix,
    /// The topic has as many components as the pattern and equals it in
    /// each non-empty pattern component.
    Wildcard,
}

impl MatchPolicy {
    /// The name used in SUBSCRIBE options (`match`).
    pub fn as_str(self) -> &'static str {
        match self {
            MatchPolicy::Exact => "exact",
            MatchPolicy::Prefix => "prefix",
            MatchPolicy::Wildcard => "wildcard",
        }
    }

    /// Parses the `match` option of SUBSCRIBE.
    pub fn parse(s: &str) -> Option<MatchPolicy> {
        match s {
            "exact" => Some(MatchPolicy::Exact),
            "prefix" => Some(MatchPolicy::Prefix),
            "wildcard" => Some(MatchPolicy::Wildcard),
            _ => None,
        }
    }

    /// Whether `topic` (a concrete URI) is matched by `pattern` under this policy.
    pub fn matches(self, pattern: &str, topic: &str) -> bool {
        match self {
            MatchPolicy::Exact => pattern == topic,
            MatchPolicy::Prefix => topic.starts_with(pattern),
            MatchPolicy::Wildcard => wildcard_matches(pattern, topic),
        }
    }
}

impl fmt::Display for MatchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn wildcard_matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(pc), Some(tc)) => {
                if !pc.is_empty() && pc != tc {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// What kind of URI is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriKind {
    /// A concrete URI: a topic to publish to, a realm, an error.
    Concrete,
    /// The URI of a subscription with the given policy.
    Pattern(MatchPolicy),
}

fn component_ok(c: &str, rules: UriRules) -> bool {
    match rules {
        UriRules::Loose => c.chars().all(|ch| !ch.is_whitespace() && ch != '#' && ch != '.'),
        UriRules::Strict => c.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'_'),
    }
}

/// Checks `uri` against the rules. Empty URIs are never valid.
pub fn is_valid(uri: &str, rules: UriRules, kind: UriKind) -> bool {
    if uri.is_empty() {
        return false;
    }
    let count = uri.split('.').count();
    uri.split('.').enumerate().all(|(i, c)| {
        if c.is_empty() {
            match kind {
                UriKind::Concrete | UriKind::Pattern(MatchPolicy::Exact) => false,
                UriKind::Pattern(MatchPolicy::Wildcard) => true,
                UriKind::Pattern(MatchPolicy::Prefix) => i + 1 == count && count > 1,
            }
        } else {
            component_ok(c, rules)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatchPolicy::*;

    #[test]
    fn loose_and_strict() {
        let c = UriKind::Concrete;
        assert!(is_valid("com.myapp.topic1", UriRules::Strict, c));
        assert!(!is_valid("com.myApp.topic1", UriRules::Strict, c));
        assert!(is_valid("com.myApp.topic-1", UriRules::Loose, c));
        assert!(!is_valid("com.my app", UriRules::Loose, c));
        assert!(!is_valid("com.my#app", UriRules::Loose, c));
        assert!(!is_valid("com..app", UriRules::Loose, c));
        assert!(!is_valid("", UriRules::Loose, c));
        assert!(!is_valid(".com", UriRules::Loose, c));
        assert!(!is_valid("com.", UriRules::Loose, c));
    }

    #[test]
    fn patterns() {
        assert!(is_valid("com..update", UriRules::Strict, UriKind::Pattern(Wildcard)));
        assert!(is_valid(".a.", UriRules::Loose, UriKind::Pattern(Wildcard)));
        assert!(is_valid("com.myapp.", UriRules::Loose, UriKind::Pattern(Prefix)));
        assert!(!is_valid("com..myapp", UriRules::Loose, UriKind::Pattern(Prefix)));
        assert!(!is_valid(".", UriRules::Loose, UriKind::Pattern(Prefix)));
        assert!(!is_valid("com..x", UriRules::Loose, UriKind::Pattern(Exact)));
    }

    #[test]
    fn matching() {
        assert!(Exact.matches("a.b", "a.b"));
        assert!(!Exact.matches("a.b", "a.b.c"));
        assert!(Prefix.matches("a.b", "a.b.c"));
        assert!(Prefix.matches("a.b", "a.bc"));
        assert!(!Prefix.matches("a.b", "a.c"));
        assert!(Wildcard.matches("a..c", "a.b.c"));
        assert!(!Wildcard.matches("a..c", "a.b.d"));
        assert!(!Wildcard.matches("a..c", "a.b.c.d"));
        assert!(!Wildcard.matches("a..c", "a.c"));
        assert!(Wildcard.matches("..", "x.y.z"));
    }
}
